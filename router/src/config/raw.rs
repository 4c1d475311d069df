//! The `shards.yaml` file exactly as written: serde structs with source spans.
//!
//! Nothing here is validated beyond YAML syntax and field types; [`super::Config::from_yaml`]
//! turns a [`RawConfig`] into the checked model and reports problems with their line numbers.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Top level of `shards.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `host:port` the proxy accepts clients on.
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Largest frontend message accepted, in bytes.
    #[serde(default)]
    pub max_message_bytes: Option<u32>,
    #[serde(default)]
    pub pool: RawPool,
    pub users: Vec<RawUser>,
    pub shards: Vec<RawShard>,
    /// Shard that holds tables not named under `tables`.
    #[serde(default)]
    pub default_shard: Option<Spanned<String>>,
    #[serde(default)]
    pub tables: Vec<RawTable>,
    /// `host:port` of the HTTP server for `/metrics` and `/health`; none when absent.
    #[serde(default)]
    pub metrics_listen: Option<Spanned<String>>,
    /// Seconds a graceful shutdown waits for transactions to finish.
    #[serde(default)]
    pub shutdown_grace_s: Option<u64>,
    /// Whether a transaction block may span shards (default true).
    #[serde(default)]
    pub cross_shard_transactions: Option<bool>,
    /// Rows a pull-up read may move per statement.
    #[serde(default)]
    pub max_pull_rows: Option<u64>,
    /// TLS towards clients.
    #[serde(default)]
    pub tls: Option<super::tls::RawTls>,
    /// TLS towards every shard (a shard's own `tls:` overrides it).
    #[serde(default)]
    pub shard_tls: Option<super::tls::RawShardTls>,
    /// Milliseconds a client has to log in.
    #[serde(default)]
    pub login_timeout_ms: Option<Spanned<u64>>,
    /// Clients served at once.
    #[serde(default)]
    pub max_client_connections: Option<usize>,
    /// When a shard's circuit breaker opens and closes.
    #[serde(default)]
    pub breaker: Option<super::faults::RawBreaker>,
    /// Milliseconds a client may sit idle inside a transaction.
    #[serde(default)]
    pub idle_transaction_timeout_ms: Option<u64>,
}

fn default_listen() -> Spanned<String> {
    Spanned::new(
        "127.0.0.1:6432".to_owned(),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// `pool:` section; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub mode: Option<Spanned<String>>,
    pub size: Option<usize>,
    pub min_idle: Option<usize>,
    pub checkout_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub idle_timeout_s: Option<u64>,
    pub max_lifetime_s: Option<u64>,
    pub max_waiting_clients: Option<usize>,
    pub query_timeout_ms: Option<u64>,
    pub tcp_keepalive: Option<super::faults::RawKeepalive>,
}

/// One entry of `users:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: Spanned<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub scram_verifier: Option<Spanned<String>>,
    #[serde(default)]
    pub server_password: Option<String>,
    #[serde(default)]
    pub auth: Option<Spanned<String>>,
    #[serde(default)]
    pub pool_mode: Option<Spanned<String>>,
    /// May use the admin console (database `shardline`) and nothing else.
    #[serde(default)]
    pub admin: bool,
}

/// One entry of `shards:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    pub name: Spanned<String>,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    /// Database on the shard; by default the one the client asked for.
    #[serde(default)]
    pub database: Option<String>,
    /// TLS towards this shard, over `shard_tls:`.
    #[serde(default)]
    pub tls: Option<super::tls::RawShardTls>,
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}

/// One entry of `tables:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub name: Spanned<String>,
    pub sharding: Spanned<String>,
    #[serde(default)]
    pub column: Option<Spanned<String>>,
    #[serde(default, rename = "type")]
    pub key_type: Option<Spanned<String>>,
    /// For `hash`: the shards in remainder order (default: all shards in file order).
    #[serde(default)]
    pub shards: Option<Vec<Spanned<String>>>,
    /// For `range`: the ranges.
    #[serde(default)]
    pub ranges: Option<Vec<RawRange>>,
    /// For `hash`: the modulus of a bucketed hash (more buckets than shards).
    #[serde(default)]
    pub buckets: Option<Spanned<u32>>,
    /// For bucketed `hash`: which shard holds which buckets.
    #[serde(default)]
    pub bucket_map: Option<Vec<super::buckets::RawBucketRange>>,
    /// For `directory`: the strategy for keys the directory does not list.
    #[serde(default)]
    pub fallback: Option<Spanned<String>>,
    /// For `directory`: keys placed on a named shard.
    #[serde(default)]
    pub directory: Option<Vec<super::directory::RawDirectoryEntry>>,
}

/// One entry of a range table's `ranges:`: `[from, to)` on `shard`; a missing bound is open.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    #[serde(default)]
    pub from: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub to: Option<Spanned<Scalar>>,
    pub shard: Spanned<String>,
}

/// A range bound as written: a number or a string, interpreted by the key type.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Text(String),
}
