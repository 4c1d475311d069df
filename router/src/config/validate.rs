//! Turns a [`RawConfig`] into a [`Config`], collecting every problem with its line number.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde_saphyr::Spanned;

use super::raw::RawConfig;
use super::{AuthMethod, Config, PoolMode, PoolSettings, Shard, User};

/// Why a `shards.yaml` was rejected: each problem with the line it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match p.line {
                Some(line) => write!(f, "line {line}: {}", p.message)?,
                None => f.write_str(&p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Default largest frontend message: 64 MiB, enough for big COPY rows and bulk INSERTs.
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 64 * 1024 * 1024;
/// A million rows: a few hundred megabytes in one backend's temporary tables at most.
const DEFAULT_MAX_PULL_ROWS: u64 = 1_000_000;

/// Default time a graceful shutdown gives transactions to finish.
const DEFAULT_SHUTDOWN_GRACE_S: u64 = 30;
/// The longest graceful shutdown (or admin `PAUSE`) wait: a day.
const MAX_SHUTDOWN_GRACE_S: u64 = 86_400;

/// Collects problems while validating, so an operator sees all of them at once.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let line = spanned.referenced.line() as usize;
        self.0.push(Problem {
            line: (line > 0).then_some(line),
            message: message.into(),
        });
    }

    pub(super) fn general(&mut self, message: impl Into<String>) {
        self.0.push(Problem {
            line: None,
            message: message.into(),
        });
    }
}

/// A threshold that must be above zero, or a problem on its line.
pub(super) fn positive<T: Copy + PartialEq + Default>(
    value: &Option<Spanned<T>>,
    name: &str,
    problems: &mut Problems,
) -> Option<T> {
    let v = value.as_ref()?;
    if v.value == T::default() {
        problems.at(v, format!("{name} must be above 0"));
        return None;
    }
    Some(v.value)
}

pub(super) fn build(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError {
        problems: vec![Problem {
            line: None,
            message: e.to_string(),
        }],
    })?;
    let mut problems = Problems::default();

    if !is_host_port(&raw.listen.value) {
        problems.at(
            &raw.listen,
            format!("listen {:?} is not host:port", raw.listen.value),
        );
    }

    if let Some(metrics) = &raw.metrics_listen {
        if !is_host_port(&metrics.value) {
            problems.at(
                metrics,
                format!("metrics_listen {:?} is not host:port", metrics.value),
            );
        } else if metrics.value == raw.listen.value && !metrics.value.ends_with(":0") {
            problems.at(
                metrics,
                "metrics_listen must differ from listen (the metrics server is HTTP)",
            );
        }
    }

    let pool = pool_settings(&raw, &mut problems);
    let tls = super::tls::client_tls(raw.tls.as_ref(), &mut problems);
    let login_timeout = super::tls::login_timeout(&raw.login_timeout_ms, &mut problems);
    let breaker = super::faults::breaker_settings(raw.breaker.as_ref(), &mut problems);
    let users = users(&raw, &mut problems);

    let mut shards = Vec::new();
    let mut shard_ids = HashMap::new();
    for s in &raw.shards {
        if shard_ids
            .insert(s.name.value.clone(), shards.len())
            .is_some()
        {
            problems.at(
                &s.name,
                format!("shard {:?} is defined twice", s.name.value),
            );
        }
        if !valid_shard_name(&s.name.value) {
            problems.at(
                &s.name,
                format!(
                    "shard name {:?} must be 1 to {MAX_SHARD_NAME} letters, digits, '_', '-' or '.' (it is part of the names of the shard's prepared transactions)",
                    s.name.value
                ),
            );
        }
        shards.push(Shard {
            name: s.name.value.clone(),
            host: s.host.clone(),
            port: s.port,
            database: s.database.clone(),
            tls: super::tls::shard_tls(s.tls.as_ref(), raw.shard_tls.as_ref(), &mut problems),
        });
    }
    if shards.is_empty() {
        problems.general("`shards:` is empty; list at least one shard");
    }

    let default_shard = match &raw.default_shard {
        Some(name) => shard_ids.get(&name.value).copied().unwrap_or_else(|| {
            problems.at(
                name,
                format!("default_shard {:?} is not one of the shards", name.value),
            );
            0
        }),
        None => 0,
    };

    let mut tables = FxHashMap::default();
    for t in &raw.tables {
        let key = t
            .name
            .value
            .rsplit('.')
            .next()
            .unwrap_or(&t.name.value)
            .to_ascii_lowercase();
        if let Some(rule) = super::table_rules::table_rule(t, &shard_ids, &mut problems) {
            if tables.insert(key, rule).is_some() {
                problems.at(&t.name, format!("table {:?} is listed twice", t.name.value));
            }
        }
    }

    let shutdown_grace_s = raw.shutdown_grace_s.unwrap_or(DEFAULT_SHUTDOWN_GRACE_S);
    if shutdown_grace_s > MAX_SHUTDOWN_GRACE_S {
        problems.general(format!(
            "shutdown_grace_s {shutdown_grace_s} is more than a day; give at most {MAX_SHUTDOWN_GRACE_S}"
        ));
    }

    if !problems.0.is_empty() {
        return Err(ConfigError {
            problems: problems.0,
        });
    }
    Ok(Config {
        listen: raw.listen.value,
        max_message_bytes: raw.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        pool,
        users,
        shards,
        default_shard,
        tables,
        metrics_listen: raw.metrics_listen.map(|m| m.value),
        shutdown_grace: Duration::from_secs(shutdown_grace_s),
        cross_shard_transactions: raw.cross_shard_transactions.unwrap_or(true),
        max_pull_rows: raw.max_pull_rows.unwrap_or(DEFAULT_MAX_PULL_ROWS),
        tls,
        login_timeout,
        max_client_connections: raw
            .max_client_connections
            .unwrap_or(super::tls::DEFAULT_MAX_CLIENT_CONNECTIONS),
        breaker,
        idle_transaction_timeout: optional_ms(raw.idle_transaction_timeout_ms),
    })
}

/// True for `host:port` with a numeric port.
fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_some()
}

fn pool_mode(name: &Spanned<String>, problems: &mut Problems) -> PoolMode {
    match name.value.as_str() {
        "transaction" => PoolMode::Transaction,
        "session" => PoolMode::Session,
        other => {
            problems.at(
                name,
                format!("pool mode {other:?} is not `transaction` or `session`"),
            );
            PoolMode::Transaction
        }
    }
}

/// A limit in milliseconds where 0 (or nothing) means none.
fn optional_ms(ms: Option<u64>) -> Option<Duration> {
    ms.filter(|ms| *ms > 0).map(Duration::from_millis)
}

/// Clients that may queue for one pool when the `pool:` section does not say.
const DEFAULT_MAX_WAITING_CLIENTS: usize = 1_000;

fn pool_settings(raw: &RawConfig, problems: &mut Problems) -> PoolSettings {
    let p = &raw.pool;
    let settings = PoolSettings {
        mode: p
            .mode
            .as_ref()
            .map_or(PoolMode::Transaction, |m| pool_mode(m, problems)),
        size: p.size.unwrap_or(20),
        min_idle: p.min_idle.unwrap_or(0),
        checkout_timeout: Duration::from_millis(p.checkout_timeout_ms.unwrap_or(5_000)),
        connect_timeout: Duration::from_millis(p.connect_timeout_ms.unwrap_or(5_000)),
        idle_timeout: Duration::from_secs(p.idle_timeout_s.unwrap_or(600)),
        max_lifetime: Duration::from_secs(p.max_lifetime_s.unwrap_or(3_600)),
        max_waiting_clients: p.max_waiting_clients.unwrap_or(DEFAULT_MAX_WAITING_CLIENTS),
        query_timeout: optional_ms(p.query_timeout_ms),
        keepalive: super::faults::keepalive(p.tcp_keepalive.as_ref(), problems),
    };
    if settings.max_waiting_clients == 0 {
        problems.general("pool.max_waiting_clients must be at least 1");
    }
    if settings.size == 0 {
        problems.general("pool.size must be at least 1");
    }
    if settings.min_idle > settings.size {
        problems.general("pool.min_idle cannot exceed pool.size");
    }
    settings
}

fn users(raw: &RawConfig, problems: &mut Problems) -> Vec<User> {
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    for u in &raw.users {
        let name = &u.name;
        if !seen.insert(name.value.clone()) {
            problems.at(name, format!("user {:?} is listed twice", name.value));
        }
        let auth = match u.auth.as_ref().map(|a| a.value.as_str()) {
            None | Some("scram-sha-256") => AuthMethod::ScramSha256,
            Some("md5") => AuthMethod::Md5,
            Some("trust") => AuthMethod::Trust,
            Some("cert") => {
                if raw
                    .tls
                    .as_ref()
                    .and_then(|t| t.client_ca.as_ref())
                    .is_none()
                {
                    if let Some(a) = &u.auth {
                        problems.at(a, "auth: cert needs `tls: client_ca` (the CAs whose client certificates are accepted)");
                    }
                }
                AuthMethod::Cert
            }
            Some(other) => {
                if let Some(a) = &u.auth {
                    problems.at(
                        a,
                        format!("auth {other:?} is not scram-sha-256, md5, cert or trust"),
                    );
                }
                AuthMethod::Trust
            }
        };
        if let Some(verifier) = &u.scram_verifier {
            if !verifier.value.starts_with("SCRAM-SHA-256$") {
                problems.at(verifier, "scram_verifier must look like SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (as in pg_authid)");
            }
            if auth == AuthMethod::Md5 && u.password.is_none() {
                problems.at(
                    verifier,
                    "md5 auth needs a cleartext `password`, not a scram_verifier",
                );
            }
        }
        let proves_itself = matches!(auth, AuthMethod::Trust | AuthMethod::Cert);
        if !proves_itself && u.password.is_none() && u.scram_verifier.is_none() {
            problems.at(
                name,
                format!(
                    "user {:?} needs a `password` or a `scram_verifier` (or auth: cert or trust)",
                    name.value
                ),
            );
        }
        if !u.admin && u.password.is_none() && u.server_password.is_none() {
            problems.at(name, format!(
                "user {:?} has no cleartext password to log in to the shards with; set `server_password`",
                name.value
            ));
        }
        users.push(User {
            name: name.value.clone(),
            auth,
            password: u.password.clone(),
            scram_verifier: u.scram_verifier.as_ref().map(|v| v.value.clone()),
            server_password: u.server_password.clone(),
            pool_mode: u.pool_mode.as_ref().map(|m| pool_mode(m, problems)),
            admin: u.admin,
        });
    }
    if users.is_empty() {
        problems.general("`users:` is empty; list at least one user");
    }
    users
}

/// The longest shard name: two of them, a transaction id and a nonce must fit in a prepared
/// transaction's name (at most 200 bytes in PostgreSQL; 171 at most here).
const MAX_SHARD_NAME: usize = 63;

/// Whether a shard name can be part of a prepared transaction's name, where `:` separates
/// the fields (`shardline_router::indoubt::gid`).
fn valid_shard_name(name: &str) -> bool {
    (1..=MAX_SHARD_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sharding;
    use crate::key::KeyValue;

    const BASE: &str = "users:\n  - name: app\n    password: app\nshards:\n  - name: s0\n    port: 5432\n  - name: s1\n    port: 5433\n";

    fn load(tables: &str) -> Result<Config, ConfigError> {
        build(&format!("{BASE}{tables}"))
    }

    #[test]
    fn accepts_every_sharding_kind() {
        let cfg = load(
            "tables:\n  - name: users\n    sharding: hash\n    column: id\n  - name: events\n    sharding: range\n    column: id\n    ranges:\n      - {to: 100, shard: s0}\n      - {from: 100, shard: s1}\n  - name: countries\n    sharding: reference\n",
        );
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("valid config rejected: {e}"),
        };
        assert_eq!(cfg.shards.len(), 2);
        assert!(matches!(
            cfg.table("public.USERS").map(|t| &t.sharding),
            Some(Sharding::Hash { .. })
        ));
        let events = cfg.table("events").map(|t| t.shard_for(&KeyValue::Int(99)));
        assert_eq!(events, Some(Ok(0)));
        let events = cfg
            .table("events")
            .map(|t| t.shard_for(&KeyValue::Int(100)));
        assert_eq!(events, Some(Ok(1)));
    }

    #[test]
    fn rejects_with_line_numbers() {
        let cases: &[(&str, usize, &str)] = &[
            ("tables:\n  - name: t\n    sharding: hsah\n    column: id\n", 11, "not hash, range, directory or reference"),
            ("tables:\n  - name: t\n    sharding: hash\n    column: id\n    type: float8\n", 13, "cannot be a shard key"),
            ("tables:\n  - name: t\n    sharding: hash\n    column: id\n    shards: [s0, s9]\n", 13, "not defined"),
            (
                "tables:\n  - name: t\n    sharding: range\n    column: id\n    ranges:\n      - {to: 100, shard: s0}\n      - {from: 50, shard: s1}\n",
                15,
                "overlap",
            ),
            ("default_shard: nope\n", 9, "not one of the shards"),
        ];
        for (tables, line, needle) in cases {
            let err = match load(tables) {
                Ok(_) => panic!("accepted invalid config:\n{tables}"),
                Err(e) => e,
            };
            let found = err.problems.iter().find(|p| p.message.contains(needle));
            assert_eq!(
                found.and_then(|p| p.line),
                Some(*line),
                "{err} for\n{tables}"
            );
        }
    }

    #[test]
    fn shard_names_fit_prepared_transaction_names() {
        let long = "s".repeat(MAX_SHARD_NAME + 1);
        for bad in ["\"s:1\"", "\"s 1\"", "\"\"", long.as_str()] {
            let err = build(&BASE.replace("name: s1", &format!("name: {bad}")));
            let lines = err.map(|_| Vec::new()).unwrap_or_else(|e| {
                e.problems
                    .iter()
                    .filter(|p| p.message.contains("shard name"))
                    .map(|p| p.line)
                    .collect()
            });
            assert_eq!(lines, [Some(7)], "{bad}");
        }
        assert!(build(&BASE.replace("name: s1", "name: east-1.b_2")).is_ok());
    }

    #[test]
    fn operations_settings_load_and_are_checked() {
        let with_admin = BASE.replace(
            "shards:",
            "  - name: ops\n    password: secret\n    admin: true\nshards:",
        );
        let cfg = build(&format!(
            "metrics_listen: 127.0.0.1:7432\nshutdown_grace_s: 5\n{with_admin}"
        ));
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("valid config rejected: {e}"),
        };
        assert_eq!(cfg.metrics_listen.as_deref(), Some("127.0.0.1:7432"));
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(5));
        assert!(cfg.user("ops").is_some_and(|u| u.admin));
        assert!(cfg.user("app").is_some_and(|u| !u.admin));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("secret"), "{debug}");

        let defaults = build(BASE).map(|c| (c.metrics_listen, c.shutdown_grace));
        assert_eq!(defaults, Ok((None, Duration::from_secs(30))));

        let err = build(&format!("metrics_listen: nowhere\n{BASE}")).err();
        assert_eq!(err.map(|e| e.problems[0].line), Some(Some(1)));
        let err = build(&format!(
            "listen: 127.0.0.1:6432\nmetrics_listen: 127.0.0.1:6432\n{BASE}"
        ));
        assert!(err.is_err());
        // A grace no clock can add (it would panic at shutdown) is refused at load.
        let err = build(&format!("shutdown_grace_s: 18446744073709551615\n{BASE}")).err();
        let message = err.map(|e| e.problems[0].message.clone());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("at most 86400")),
            "{message:?}"
        );
        assert!(build(&format!("shutdown_grace_s: 86400\n{BASE}")).is_ok());
    }

    #[test]
    fn syntax_errors_are_reported_not_panicked() {
        for text in [
            "users: [",
            "shards: 5",
            "\t- :",
            "users:\n  - name: a\n    unknown: 1\nshards: []",
        ] {
            assert!(build(text).is_err(), "{text:?}");
        }
    }
}
