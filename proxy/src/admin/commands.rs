//! The console's commands: parsing one statement and carrying it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reshard::Reshard;
use super::show;
use super::table::Reply;
use crate::backend::registry::shard_at;
use crate::context::ProxyContext;
use crate::reload::{reload, ReloadOutcome};
use shardline_router::sqlstate;

/// Every command, for the hint of an unknown one.
pub const HELP: &str = "commands: SHOW SHARDS | SHOW POOLS | SHOW CLIENTS | SHOW SERVERS | SHOW STATS | SHOW CONFIG | SHOW VERSION | SHOW INDOUBT | SHOW DIRECTORY | RELOAD | PAUSE [shard] | RESUME [shard] | RESHARD | RESHARD PAUSE [ms] | RESHARD RESUME | SHUTDOWN";

/// How often `PAUSE` checks whether running transactions finished.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// A parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW <topic>`.
    Show(Topic),
    /// `RELOAD`: read `shards.yaml` again.
    Reload,
    /// `PAUSE [shard]`: hold new transactions.
    Pause(Option<String>),
    /// `RESUME [shard]`: release them.
    Resume(Option<String>),
    /// `SHUTDOWN`: graceful shutdown.
    Shutdown,
    /// `RESHARD …`: resharding steps driven by the resharder.
    Reshard(Reshard),
    /// `SET ...`, which drivers send at connect; accepted and ignored.
    Set,
}

/// What `SHOW` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `SHOW SHARDS`.
    Shards,
    /// `SHOW POOLS`.
    Pools,
    /// `SHOW CLIENTS`.
    Clients,
    /// `SHOW SERVERS`.
    Servers,
    /// `SHOW STATS`.
    Stats,
    /// `SHOW CONFIG`.
    Config,
    /// `SHOW VERSION`.
    Version,
    /// `SHOW INDOUBT`: shardline's prepared transactions on the shards and their fate.
    InDoubt,
    /// `SHOW DIRECTORY`: the keys directory tables place explicitly.
    Directory,
}

/// Parses one statement (no `;`), case-insensitively; shard names keep their case.
pub fn parse(text: &str) -> Result<Command, Reply> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let shard = |w: Option<&&str>| w.map(|s| s.trim_matches('"').to_owned());
    let command = match upper.as_slice() {
        ["SHOW", topic] => Command::Show(match *topic {
            "SHARDS" => Topic::Shards,
            "POOLS" => Topic::Pools,
            "CLIENTS" => Topic::Clients,
            "SERVERS" => Topic::Servers,
            "STATS" => Topic::Stats,
            "CONFIG" => Topic::Config,
            "VERSION" => Topic::Version,
            "INDOUBT" => Topic::InDoubt,
            "DIRECTORY" => Topic::Directory,
            _ => return Err(unknown(text)),
        }),
        ["RELOAD"] => Command::Reload,
        ["PAUSE"] | ["PAUSE", _] => Command::Pause(shard(words.get(1))),
        ["RESUME"] | ["RESUME", _] => Command::Resume(shard(words.get(1))),
        ["SHUTDOWN"] => Command::Shutdown,
        ["RESHARD", rest @ ..] => {
            Command::Reshard(Reshard::parse(rest).ok_or_else(|| unknown(text))?)
        }
        ["SET", ..] => Command::Set,
        _ => return Err(unknown(text)),
    };
    Ok(command)
}

fn unknown(text: &str) -> Reply {
    Reply::Error {
        sqlstate: sqlstate::SYNTAX_ERROR,
        message: format!("unknown admin console command: {}", text.trim()),
        hint: Some(HELP.to_owned()),
    }
}

/// Carries out `command`.
pub async fn run(ctx: &Arc<ProxyContext>, command: Command) -> Reply {
    match command {
        Command::Show(topic) => Reply::Table(match topic {
            Topic::Shards => show::shards(ctx),
            Topic::Pools => show::pools(ctx),
            Topic::Clients => show::clients(ctx),
            Topic::Servers => show::servers(ctx),
            Topic::Stats => show::stats(ctx),
            Topic::Directory => show::directory(ctx),
            Topic::Config => {
                let mut table = show::config(ctx);
                let survey = ctx.keys.survey(&ctx.snapshot().config).await;
                let generated = match survey {
                    Ok(survey) => crate::keys::generated_list(&survey),
                    Err(e) => format!("unknown ({})", e.message),
                };
                table.push(vec!["generated_keys".to_owned(), generated]);
                table
            }
            Topic::Version => show::version(),
            Topic::InDoubt => show::in_doubt(ctx).await,
        }),
        Command::Reload => run_reload(ctx).await,
        Command::Pause(shard) => pause(ctx, shard).await,
        Command::Resume(shard) => {
            if let Some(reply) = check_shard(ctx, shard.as_deref()) {
                return reply;
            }
            match ctx.pause.resume(shard.as_deref()) {
                Ok(()) => {
                    tracing::info!(shard = shard.as_deref().unwrap_or("all"), "resumed");
                    Reply::done("RESUME")
                }
                Err(e) => Reply::error(sqlstate::OBJECT_NOT_IN_STATE, e.to_string()),
            }
        }
        Command::Shutdown => {
            let grace = ctx.snapshot().config.shutdown_grace;
            if ctx.shutdown.begin() {
                tracing::info!("shutdown requested from the admin console");
            }
            Reply::Done {
                tag: "SHUTDOWN",
                notices: vec![format!(
                    "shutting down: new connections are refused and transactions in flight have {}s to finish",
                    grace.as_secs()
                )],
            }
        }
        Command::Set => Reply::done("SET"),
        Command::Reshard(command) => super::reshard::run(ctx, command).await,
    }
}

async fn run_reload(ctx: &Arc<ProxyContext>) -> Reply {
    let worker = ctx.clone();
    let outcome = match tokio::task::spawn_blocking(move || reload(&worker)).await {
        Ok(outcome) => outcome,
        Err(e) => ReloadOutcome::Rejected {
            error: format!("the reload task failed: {e}"),
        },
    };
    match outcome {
        ReloadOutcome::Loaded { version } => Reply::Done {
            tag: "RELOAD",
            notices: vec![format!("config version {version} loaded")],
        },
        ReloadOutcome::Unchanged { version } => Reply::Done {
            tag: "RELOAD",
            notices: vec![format!(
                "the file is unchanged; still serving version {version}"
            )],
        },
        ReloadOutcome::Rejected { error } => Reply::Error {
            sqlstate: sqlstate::CONFIG_FILE_ERROR,
            message: error,
            hint: Some(format!(
                "the previous config (version {}) keeps serving; fix the file and RELOAD again",
                ctx.snapshot().version
            )),
        },
    }
}

/// Pauses new transactions, then waits (up to the shutdown grace period) for the running
/// ones on the paused shards to finish, as PgBouncer's `PAUSE` does.
async fn pause(ctx: &ProxyContext, shard: Option<String>) -> Reply {
    if let Some(reply) = check_shard(ctx, shard.as_deref()) {
        return reply;
    }
    ctx.pause.pause(shard.as_deref());
    let what = shard.as_deref().unwrap_or("all");
    tracing::info!(shard = what, "paused");
    let grace = ctx.snapshot().config.shutdown_grace;
    let deadline = Instant::now() + grace;
    loop {
        let busy = busy_on(ctx, shard.as_deref());
        if busy == 0 {
            return Reply::done("PAUSE");
        }
        if Instant::now() >= deadline {
            return Reply::Done {
                tag: "PAUSE",
                notices: vec![format!(
                    "{busy} transactions on {what} are still running after {}s; new ones wait until RESUME",
                    grace.as_secs()
                )],
            };
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
}

/// Backend connections checked out for `shard` (every shard when `None`).
fn busy_on(ctx: &ProxyContext, shard: Option<&str>) -> usize {
    let loaded = ctx.snapshot();
    ctx.pools
        .views()
        .iter()
        .filter(|v| {
            shard.is_none() || shard_at(&loaded.config, &v.host, v.port, &v.database) == shard
        })
        .map(|v| v.in_use())
        .sum()
}

/// An error reply when `shard` names no configured shard.
fn check_shard(ctx: &ProxyContext, shard: Option<&str>) -> Option<Reply> {
    let name = shard?;
    let loaded = ctx.snapshot();
    if loaded.config.shard_id(name).is_some() {
        return None;
    }
    let names: Vec<&str> = loaded
        .config
        .shards
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    Some(Reply::Error {
        sqlstate: sqlstate::UNDEFINED_OBJECT,
        message: format!("there is no shard named {name}"),
        hint: Some(format!("the shards are: {}", names.join(", "))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(parse("show shards"), Ok(Command::Show(Topic::Shards)));
        assert_eq!(parse("  SHOW   Stats "), Ok(Command::Show(Topic::Stats)));
        assert_eq!(parse("pause s1"), Ok(Command::Pause(Some("s1".into()))));
        assert_eq!(parse("RESUME"), Ok(Command::Resume(None)));
        assert_eq!(parse("set extra_float_digits = 3"), Ok(Command::Set));
        for bad in ["", "SHOW TABLES", "SELECT 1", "PAUSE a b", "RELOAD now"] {
            match parse(bad) {
                Err(Reply::Error { sqlstate, hint, .. }) => {
                    assert_eq!(sqlstate, sqlstate::SYNTAX_ERROR);
                    assert_eq!(hint.as_deref(), Some(HELP));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
