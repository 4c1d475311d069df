//! The checked cluster model built from `shards.yaml`.
//!
//! [`Config::from_yaml`] parses the file (serde-saphyr) and validates everything a running
//! proxy relies on — unique names, resolvable shards, non-overlapping ranges, usable
//! credentials — so that a config that loads is a config that can serve. Every problem is
//! reported with the line it comes from.

mod buckets;
mod directory;
mod faults;
mod raw;
mod table_rules;
mod tls;
mod validate;

use std::fmt;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::key::{KeyType, KeyValue};

pub use buckets::{bucket_runs, is_bucketed, MAX_BUCKETS};
pub use directory::{reload_moves_a_key, Directory};
pub use faults::{BreakerSettings, Keepalive};
pub use tls::{ClientTls, ShardTls, ShardTlsMode, TlsMode};
pub use validate::ConfigError;

/// Index of a shard in [`Config::shards`]; stable for the life of one config version.
pub type ShardId = usize;

/// The validated cluster description a proxy serves from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address clients connect to, as `host:port`.
    pub listen: String,
    /// Largest frontend message the proxy accepts, in bytes.
    pub max_message_bytes: u32,
    pub pool: PoolSettings,
    pub users: Vec<User>,
    pub shards: Vec<Shard>,
    /// Shard for tables not named in the config, catalog queries and table-less statements.
    pub default_shard: ShardId,
    /// Sharding rules by unqualified, lower-cased table name. Fx-hashed: routing looks a rule
    /// up for every statement, and the names are the operator's, not the clients'.
    pub tables: FxHashMap<String, TableRule>,
    /// Address of the HTTP server for `/metrics` and `/health`, as `host:port`; none if unset.
    pub metrics_listen: Option<String>,
    /// How long a graceful shutdown lets transactions finish before closing them.
    pub shutdown_grace: Duration,
    /// A transaction block may span shards (two-phase commit when several wrote); when false,
    /// a statement that needs another shard than the transaction's is refused.
    pub cross_shard_transactions: bool,
    /// Most rows one statement may pull from the shards into one backend when the merge cannot
    /// answer it (a pull-up read); past it the statement is refused (SQLSTATE 54000).
    pub max_pull_rows: u64,
    /// TLS towards clients.
    pub tls: ClientTls,
    /// A client that has not logged in within this time is disconnected.
    pub login_timeout: Duration,
    /// Application clients served at once; a client beyond it is refused (SQLSTATE 53300),
    /// while admins may still reach the console.
    pub max_client_connections: usize,
    /// When a shard's circuit breaker opens (statements for it fail at once) and closes.
    pub breaker: BreakerSettings,
    /// A client idle inside a transaction for longer is disconnected (SQLSTATE 25P03) and its
    /// transaction rolled back, so it cannot hold backends forever; `None`: no limit.
    pub idle_transaction_timeout: Option<Duration>,
}

/// How backends are shared between clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A backend serves one transaction, then returns to the pool.
    Transaction,
    /// A backend serves one client for its whole session.
    Session,
}

/// Sizes and timeouts of the backend pools (one pool per shard, user and database).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub min_idle: usize,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// Clients that may queue for one pool; one more is refused at once (SQLSTATE 53300), so
    /// a hung shard cannot gather every client of the proxy behind it.
    pub max_waiting_clients: usize,
    /// A statement that runs longer on a shard is cancelled there (SQLSTATE 57014) and its
    /// backend closed; `None`: no limit.
    pub query_timeout: Option<Duration>,
    /// TCP keepalive on backend sockets, so a peer that vanished from an established
    /// connection is noticed; `None`: off.
    pub keepalive: Option<Keepalive>,
}

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    /// A client certificate (verified against `tls: client_ca`) whose common name is the
    /// user name, as PostgreSQL's `cert` method.
    Cert,
    Trust,
}

/// A user clients may log in as; the proxy logs in to shards as the same user.
///
/// `Debug` leaves the secrets out, so a user (or a whole [`Config`]) can be logged safely.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub auth: AuthMethod,
    /// Cleartext password, when the config has one.
    pub password: Option<String>,
    /// SCRAM verifier (`SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`), when given instead.
    pub scram_verifier: Option<String>,
    /// Password the proxy uses to log in to shards as this user.
    pub server_password: Option<String>,
    /// Overrides the pool mode for this user.
    pub pool_mode: Option<PoolMode>,
    /// An operator of the admin console (database `shardline`); such a user reaches no shard.
    pub admin: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("User")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("password", &hidden(&self.password))
            .field("scram_verifier", &hidden(&self.scram_verifier))
            .field("server_password", &hidden(&self.server_password))
            .field("pool_mode", &self.pool_mode)
            .field("admin", &self.admin)
            .finish()
    }
}

/// One shard: a plain PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Database to use on the shard; `None` means the database the client asked for.
    pub database: Option<String>,
    /// How the proxy secures its connections to the shard.
    pub tls: ShardTls,
}

/// How one table is spread over the shards.
#[derive(Debug, Clone)]
pub struct TableRule {
    pub name: String,
    pub sharding: Sharding,
    /// Keys placed explicitly ahead of `sharding` (`sharding: directory`); empty otherwise.
    pub directory: Directory,
}

/// The sharding of a table.
#[derive(Debug, Clone)]
pub enum Sharding {
    /// PostgreSQL hash partitioning on `column`: remainder `r` lives on `shards[r]`.
    Hash {
        column: String,
        key_type: KeyType,
        shards: Vec<ShardId>,
    },
    /// Ordered, non-overlapping `[from, to)` ranges of `column`.
    Range {
        column: String,
        key_type: KeyType,
        ranges: Vec<KeyRange>,
    },
    /// A copy on every shard.
    Reference,
}

/// One range of a range-sharded table; `None` bounds are open.
#[derive(Debug, Clone)]
pub struct KeyRange {
    pub from: Option<KeyValue>,
    pub to: Option<KeyValue>,
    pub shard: ShardId,
}

/// Why a key could not be placed on a shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("key {key} of table {table} is outside every range in shards.yaml; add a range that covers it")]
    OutsideRanges { table: String, key: String },
    #[error("key {key} does not match the type of the shard key of table {table}")]
    TypeMismatch { table: String, key: String },
}

impl Config {
    /// Parses and validates a `shards.yaml` document.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        validate::build(text)
    }

    /// The rule for a table, by its (possibly schema-qualified, any-case) name.
    pub fn table(&self, name: &str) -> Option<&TableRule> {
        let unqualified = name.rsplit('.').next().unwrap_or(name);
        self.tables.get(&unqualified.to_ascii_lowercase())
    }

    /// Reads `text` (the contents of `shards.yaml`) with the files it names (certificates,
    /// keys, CAs) made relative to `dir`, the file's directory, when they are not absolute.
    pub fn from_file_text(text: &str, dir: &std::path::Path) -> Result<Config, ConfigError> {
        let mut config = Config::from_yaml(text)?;
        let resolve = |path: &mut Option<String>| {
            if let Some(p) = path.as_mut() {
                *p = dir.join(&*p).display().to_string();
            }
        };
        resolve(&mut config.tls.cert);
        resolve(&mut config.tls.key);
        resolve(&mut config.tls.client_ca);
        for shard in &mut config.shards {
            resolve(&mut shard.tls.ca);
        }
        Ok(config)
    }

    /// A user by login name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Looks a shard up by name.
    pub fn shard_id(&self, name: &str) -> Option<ShardId> {
        self.shards.iter().position(|s| s.name == name)
    }

    /// Every shard id.
    pub fn all_shards(&self) -> impl Iterator<Item = ShardId> {
        0..self.shards.len()
    }
}

impl User {
    /// The pool mode that applies to this user.
    pub fn effective_pool_mode(&self, settings: &PoolSettings) -> PoolMode {
        self.pool_mode.unwrap_or(settings.mode)
    }

    /// Password used to log in to shards.
    pub fn backend_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}

impl Sharding {
    /// The type of the shard key column, if the table is split by key.
    pub fn key_type(&self) -> Option<KeyType> {
        match self {
            Sharding::Hash { key_type, .. } | Sharding::Range { key_type, .. } => Some(*key_type),
            Sharding::Reference => None,
        }
    }
}

impl TableRule {
    /// The shard key column, if the table is split by key.
    pub fn key_column(&self) -> Option<&str> {
        match &self.sharding {
            Sharding::Hash { column, .. } | Sharding::Range { column, .. } => Some(column),
            Sharding::Reference => None,
        }
    }

    /// The type of the shard key column, if the table is split by key.
    pub fn key_type(&self) -> Option<KeyType> {
        self.sharding.key_type()
    }

    /// The shards that hold some of this table's rows.
    pub fn shards(&self, all: usize) -> Vec<ShardId> {
        let mut ids = match &self.sharding {
            Sharding::Hash { shards, .. } => shards.clone(),
            Sharding::Range { ranges, .. } => ranges.iter().map(|r| r.shard).collect(),
            Sharding::Reference => (0..all).collect(),
        };
        ids.extend(self.directory.shards());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The shard that owns `key`: the directory's entry when it lists the key, else the
    /// table's strategy.
    pub fn shard_for(&self, key: &KeyValue) -> Result<ShardId, PlacementError> {
        if let Some(shard) = self.directory.get(key) {
            return Ok(shard);
        }
        match &self.sharding {
            Sharding::Hash { shards, .. } => {
                let modulus = shards.len() as u64;
                let remainder = crate::hash::partition_remainder([key.partition_hash()], modulus);
                // `remainder < modulus == shards.len()`, so the index is in bounds.
                Ok(shards[remainder as usize])
            }
            Sharding::Range { ranges, .. } => {
                for range in ranges {
                    let above_from = match &range.from {
                        Some(from) => key.compare(from).ok_or_else(|| self.mismatch(key))?.is_ge(),
                        None => true,
                    };
                    let below_to = match &range.to {
                        Some(to) => key.compare(to).ok_or_else(|| self.mismatch(key))?.is_lt(),
                        None => true,
                    };
                    if above_from && below_to {
                        return Ok(range.shard);
                    }
                }
                Err(PlacementError::OutsideRanges {
                    table: self.name.clone(),
                    key: key.to_string(),
                })
            }
            Sharding::Reference => Ok(0),
        }
    }

    fn mismatch(&self, key: &KeyValue) -> PlacementError {
        PlacementError::TypeMismatch {
            table: self.name.clone(),
            key: key.to_string(),
        }
    }
}

impl fmt::Display for Config {
    /// A human summary of what the config means, printed by `shardline check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen: {}", self.listen)?;
        let metrics = self.metrics_listen.as_deref().unwrap_or("off");
        writeln!(f, "metrics and health: {metrics}")?;
        writeln!(f, "shutdown grace: {:?}", self.shutdown_grace)?;
        writeln!(
            f,
            "clients: TLS {}, login timeout {:?}, at most {} at once",
            self.tls.mode, self.login_timeout, self.max_client_connections
        )?;
        let p = &self.pool;
        writeln!(
            f,
            "pool: {:?} mode, size {}, min idle {}, checkout timeout {:?}, at most {} clients waiting",
            p.mode, p.size, p.min_idle, p.checkout_timeout, p.max_waiting_clients
        )?;
        let limit = |d: Option<Duration>| d.map_or("off".to_owned(), |d| format!("{d:?}"));
        writeln!(
            f,
            "shard faults: breaker opens after {} failures for {:?}, closes after {} probes; query timeout {}, idle-in-transaction timeout {}",
            self.breaker.failures,
            self.breaker.open,
            self.breaker.successes,
            limit(self.pool.query_timeout),
            limit(self.idle_transaction_timeout)
        )?;
        writeln!(f, "users:")?;
        for u in &self.users {
            let role = if u.admin { ", admin console only" } else { "" };
            writeln!(f, "  {} ({:?} auth{role})", u.name, u.auth)?;
        }
        writeln!(f, "shards:")?;
        for (id, s) in self.shards.iter().enumerate() {
            let default = if id == self.default_shard {
                "  [default]"
            } else {
                ""
            };
            let db = s.database.as_deref().unwrap_or("<client's database>");
            let tls = match s.tls.mode {
                ShardTlsMode::Disable => String::new(),
                mode => format!(" tls {mode}"),
            };
            writeln!(
                f,
                "  {id}: {} at {}:{} db {db}{tls}{default}",
                s.name, s.host, s.port
            )?;
        }
        writeln!(f, "tables:")?;
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        for name in names {
            let rule = &self.tables[name];
            match &rule.sharding {
                Sharding::Hash {
                    column,
                    key_type,
                    shards,
                } if is_bucketed(shards) => {
                    let mut held = vec![0usize; self.shards.len()];
                    for s in shards {
                        held[*s] += 1;
                    }
                    let shares: Vec<String> = held
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(s, n)| {
                            let share = *n as f64 * 100.0 / shards.len() as f64;
                            format!("{} {n} ({share:.1}%)", self.shards[s].name)
                        })
                        .collect();
                    writeln!(
                        f,
                        "  {name}: hash({column} {key_type}), {} buckets: {}",
                        shards.len(),
                        shares.join(", ")
                    )?;
                    for (from, to, shard) in bucket_runs(shards) {
                        writeln!(
                            f,
                            "    buckets [{from}, {to}) -> {}",
                            self.shards[shard].name
                        )?;
                    }
                }
                Sharding::Hash {
                    column,
                    key_type,
                    shards,
                } => {
                    let list: Vec<&str> = shards
                        .iter()
                        .map(|s| self.shards[*s].name.as_str())
                        .collect();
                    writeln!(
                        f,
                        "  {name}: hash({column} {key_type}) over {}",
                        list.join(", ")
                    )?;
                }
                Sharding::Range {
                    column,
                    key_type,
                    ranges,
                } => {
                    writeln!(f, "  {name}: range({column} {key_type})")?;
                    for r in ranges {
                        let show = |b: &Option<KeyValue>| {
                            b.as_ref().map_or("unbounded".to_owned(), |v| v.to_string())
                        };
                        writeln!(
                            f,
                            "    [{}, {}) -> {}",
                            show(&r.from),
                            show(&r.to),
                            self.shards[r.shard].name
                        )?;
                    }
                }
                Sharding::Reference => writeln!(f, "  {name}: reference (on every shard)")?,
            }
            let listed = rule.directory.sorted();
            if !listed.is_empty() {
                writeln!(
                    f,
                    "    directory keys ({}), placed ahead of the rule above:",
                    listed.len()
                )?;
                for (key, shard) in listed {
                    writeln!(f, "    key {key} -> {}", self.shards[shard].name)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Config;

    /// A config of one shard and one user, plus `extra` top-level YAML, or its error as text.
    pub(crate) fn minimal_with(extra: &str) -> Result<Config, String> {
        Config::from_yaml(&format!(
            "users: [{{name: app, password: app}}]\nshards:\n  - {{name: s0, port: 5432}}\n{extra}"
        ))
        .map_err(|e| e.to_string())
    }
}
