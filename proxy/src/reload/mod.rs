//! Reloading `shards.yaml` while serving: on a change to the file ([`watch`]), on SIGHUP and
//! on the admin `RELOAD`, all through [`reload`].
//!
//! The new file is read, parsed and validated completely before anything changes. An invalid
//! file is logged with the line and the problem and kept out: the running config keeps
//! serving, and the error is shown by `SHOW CONFIG`. So is a file that would move a directory
//! key (those move only with their rows, through the resharder). A valid one becomes the next version:
//! requests starting after the swap use it, requests already running finish on the snapshot
//! they took, and pools of backend targets the new config no longer names are retired (only
//! those: the other shards' pools keep their connections).

pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shardline_router::config::reload_moves_a_key;
use shardline_router::Config;

use crate::backend::conn::BackendTarget;
use crate::backend::registry::shard_at;
use crate::context::ProxyContext;

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file changed and is now served.
    Loaded {
        /// The new config version.
        version: u64,
    },
    /// The file is what is already served.
    Unchanged {
        /// The version still served.
        version: u64,
    },
    /// The file was refused; the previous config keeps serving.
    Rejected {
        /// Why, with the line number when the problem has one.
        error: String,
    },
}

impl ReloadOutcome {
    /// The label of this outcome in metrics and `SHOW CONFIG`.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Loaded { .. } => "loaded",
            ReloadOutcome::Unchanged { .. } => "unchanged",
            ReloadOutcome::Rejected { .. } => "rejected",
        }
    }
}

/// The latest reload attempt.
#[derive(Debug, Clone)]
pub struct LastReload {
    /// When it ran.
    pub at: SystemTime,
    /// What it did.
    pub outcome: ReloadOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Where the config comes from and how reloading it went.
pub struct ConfigSource {
    path: Option<PathBuf>,
    state: Mutex<SourceState>,
    reloads: Family<OutcomeLabel, Counter>,
}

#[derive(Default)]
struct SourceState {
    /// Text of the config being served.
    served: Option<String>,
    /// Text of the last rejected file, with why, so an unchanged bad file is not re-reported.
    rejected: Option<(String, String)>,
    last: Option<LastReload>,
}

impl ConfigSource {
    /// A config given in memory: there is no file to reload.
    pub fn in_memory() -> ConfigSource {
        ConfigSource {
            path: None,
            state: Mutex::default(),
            reloads: Family::default(),
        }
    }

    /// A config read from `path`, whose current text is `text`.
    pub fn file(path: PathBuf, text: String) -> ConfigSource {
        ConfigSource {
            path: Some(path),
            state: Mutex::new(SourceState {
                served: Some(text),
                ..SourceState::default()
            }),
            reloads: Family::default(),
        }
    }

    /// Adds the reload counter to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shardline_config_reloads",
            "Reloads of shards.yaml by outcome (loaded, unchanged, rejected)",
            self.reloads.clone(),
        );
    }

    /// The file the config is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The latest reload attempt, if there was one.
    pub fn last(&self) -> Option<LastReload> {
        self.lock().last.clone()
    }

    fn lock(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads `shards.yaml` again and serves it if it is valid. Blocking (file I/O and SCRAM key
/// derivation): call from a blocking thread.
pub fn reload(ctx: &ProxyContext) -> ReloadOutcome {
    let Some(path) = ctx.source.path() else {
        return ReloadOutcome::Rejected {
            error: "shardline was started without a config file, so there is nothing to reload"
                .to_owned(),
        };
    };
    // Holding the state for the whole reload serialises reloads from every trigger.
    let mut state = ctx.source.lock();
    let outcome = match std::fs::read_to_string(path) {
        Err(e) => reject(path, format!("could not read {}: {e}", path.display())),
        Ok(text) if state.served.as_ref() == Some(&text) => ReloadOutcome::Unchanged {
            version: ctx.snapshot().version,
        },
        Ok(text) => match state.rejected.as_ref().filter(|(bad, _)| *bad == text) {
            // The same bad file again (a second event for one write): same answer, no new log.
            Some((_, error)) => ReloadOutcome::Rejected {
                error: error.clone(),
            },
            None => match Config::from_file_text(&text, path.parent().unwrap_or(Path::new("/")))
                .map_err(|e| format!("{} is invalid: {e}", path.display()))
                .and_then(|config| {
                    let served = ctx.snapshot();
                    match reload_moves_a_key(&served.config, &ctx.would_serve(&config)) {
                        Some(refusal) => Err(format!("{} is refused: {refusal}", path.display())),
                        None => Ok(config),
                    }
                }) {
                Ok(config) => {
                    state.served = Some(text);
                    state.rejected = None;
                    ReloadOutcome::Loaded {
                        version: apply(ctx, config),
                    }
                }
                Err(error) => {
                    state.rejected = Some((text, error.clone()));
                    reject(path, error)
                }
            },
        },
    };
    ctx.source
        .reloads
        .get_or_create(&OutcomeLabel {
            outcome: outcome.label(),
        })
        .inc();
    state.last = Some(LastReload {
        at: SystemTime::now(),
        outcome: outcome.clone(),
    });
    outcome
}

fn reject(path: &Path, error: String) -> ReloadOutcome {
    tracing::warn!(
        path = %path.display(),
        %error,
        "config rejected; the previous version keeps serving"
    );
    ReloadOutcome::Rejected { error }
}

/// Serves `config` as the next version and retires pools it no longer uses.
fn apply(ctx: &ProxyContext, config: Config) -> u64 {
    let old = ctx.snapshot();
    if old.config.listen != config.listen {
        tracing::warn!(
            serving = %old.config.listen,
            configured = %config.listen,
            "listen changed in shards.yaml; restart shardline to listen on the new address"
        );
    }
    if old.config.metrics_listen != config.metrics_listen {
        tracing::warn!(
            configured = config.metrics_listen.as_deref().unwrap_or("off"),
            "metrics_listen changed in shards.yaml; restart shardline to apply it"
        );
    }
    let shards: Vec<String> = config.shards.iter().map(|s| s.name.clone()).collect();
    let version = ctx.replace(config);
    let retired = retire_unused(ctx);
    tracing::info!(
        version,
        shards = %shards.join(","),
        retired_pools = retired,
        "config reloaded"
    );
    version
}

/// Retires the pools of targets the current config no longer uses; returns how many. Run after
/// every reload and periodically (a request that started on the previous config may have
/// opened a pool for an old target after the reload).
pub fn retire_unused(ctx: &ProxyContext) -> usize {
    let loaded = ctx.snapshot();
    ctx.pools.retire(|target| serves(&loaded.config, target))
}

/// True when `config` still routes to `target`: a shard at its address and database, and a
/// user with its name and password.
fn serves(config: &Config, target: &BackendTarget) -> bool {
    let shard = shard_at(config, &target.host, target.port, &target.database).is_some();
    let user = config
        .user(&target.user)
        .is_some_and(|u| !u.admin && u.backend_password() == target.password.as_deref());
    shard && user
}
