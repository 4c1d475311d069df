//! How the proxy copes with a shard that is down, hung or slow, as `shards.yaml` says it:
//! `breaker:` (the circuit breaker's thresholds) and `pool: tcp_keepalive:` (keepalive on
//! backend sockets), checked. The timeouts (`pool: query_timeout_ms`,
//! `idle_transaction_timeout_ms`) are plain numbers read with the rest.
//!
//! Defaults follow the usual breaker shape (5 failures, 30 s open, 2 successful probes to
//! close); the timeouts are off unless set, as PgBouncer's `query_timeout` and
//! `idle_transaction_timeout` are.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::validate::{positive, Problems};

/// `breaker:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<Spanned<u32>>,
    pub open_ms: Option<Spanned<u64>>,
    pub successes: Option<Spanned<u32>>,
}

/// `pool: tcp_keepalive:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepalive {
    pub idle_s: Option<u64>,
    pub interval_s: Option<Spanned<u64>>,
    pub count: Option<Spanned<u32>>,
}

/// When a shard's circuit breaker opens and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures to reach the shard that open the breaker.
    pub failures: u32,
    /// How long an open breaker refuses statements before probing the shard again.
    pub open: Duration,
    /// Consecutive successful probes that close it again.
    pub successes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            open: Duration::from_secs(30),
            successes: 2,
        }
    }
}

/// TCP keepalive on backend sockets, so a peer that vanished from an established connection
/// (a crashed host, a dropped route) is noticed without waiting for a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection is dead.
    pub count: u32,
}

/// Keepalive when `pool: tcp_keepalive:` does not say: a vanished peer is noticed within
/// about a minute of silence (30 s idle, then 3 probes 10 s apart).
pub const DEFAULT_KEEPALIVE: Keepalive = Keepalive {
    idle: Duration::from_secs(30),
    interval: Duration::from_secs(10),
    count: 3,
};

/// `breaker:`, checked; defaults for whatever is absent.
pub(super) fn breaker_settings(
    raw: Option<&RawBreaker>,
    problems: &mut Problems,
) -> BreakerSettings {
    let defaults = BreakerSettings::default();
    let Some(raw) = raw else {
        return defaults;
    };
    let open_ms = positive(&raw.open_ms, "breaker.open_ms", problems)
        .map_or(defaults.open, Duration::from_millis);
    BreakerSettings {
        failures: positive(&raw.failures, "breaker.failures", problems)
            .unwrap_or(defaults.failures),
        open: open_ms,
        successes: positive(&raw.successes, "breaker.successes", problems)
            .unwrap_or(defaults.successes),
    }
}

/// `pool: tcp_keepalive:`, checked; `None` when `idle_s` is 0.
pub(super) fn keepalive(raw: Option<&RawKeepalive>, problems: &mut Problems) -> Option<Keepalive> {
    let Some(raw) = raw else {
        return Some(DEFAULT_KEEPALIVE);
    };
    if raw.idle_s == Some(0) {
        return None;
    }
    Some(Keepalive {
        idle: raw
            .idle_s
            .map_or(DEFAULT_KEEPALIVE.idle, Duration::from_secs),
        interval: positive(&raw.interval_s, "pool.tcp_keepalive.interval_s", problems)
            .map_or(DEFAULT_KEEPALIVE.interval, Duration::from_secs),
        count: positive(&raw.count, "pool.tcp_keepalive.count", problems)
            .unwrap_or(DEFAULT_KEEPALIVE.count),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::minimal_with as with;

    #[test]
    fn nothing_said_means_the_defaults() {
        let config = with("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.breaker, BreakerSettings::default());
        assert_eq!(config.breaker.failures, 5);
        assert_eq!(config.pool.query_timeout, None);
        assert_eq!(config.idle_transaction_timeout, None);
        assert_eq!(config.pool.keepalive, Some(DEFAULT_KEEPALIVE));
        assert_eq!(config.pool.max_waiting_clients, 1_000);
    }

    #[test]
    fn every_field_is_read() {
        let config = with(
            "breaker: {failures: 3, open_ms: 2000, successes: 1}\nidle_transaction_timeout_ms: 0\npool:\n  query_timeout_ms: 1500\n  tcp_keepalive: {idle_s: 5, interval_s: 2, count: 4}\n  max_waiting_clients: 8\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.breaker,
            BreakerSettings {
                failures: 3,
                open: Duration::from_secs(2),
                successes: 1
            }
        );
        assert_eq!(config.pool.query_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config.idle_transaction_timeout, None, "0 turns it off");
        assert_eq!(
            config.pool.keepalive,
            Some(Keepalive {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                count: 4
            })
        );
        assert_eq!(config.pool.max_waiting_clients, 8);
        let off = with("pool: {tcp_keepalive: {idle_s: 0}}\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(off.pool.keepalive, None);
    }

    #[test]
    fn zero_thresholds_are_reported_with_their_line() {
        for (yaml, expected) in [
            (
                "breaker: {failures: 0}\n",
                "breaker.failures must be above 0",
            ),
            (
                "breaker:\n  open_ms: 0\n",
                "breaker.open_ms must be above 0",
            ),
            (
                "pool: {tcp_keepalive: {count: 0}}\n",
                "tcp_keepalive.count must be above 0",
            ),
            (
                "pool: {max_waiting_clients: 0}\n",
                "max_waiting_clients must be at least 1",
            ),
            ("breaker: {retries: 3}\n", "unknown field"),
        ] {
            let error = with(yaml).err().unwrap_or_default();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        let error = with("breaker:\n  open_ms: 0\n").err().unwrap_or_default();
        assert!(error.starts_with("line 5:"), "{error}");
    }
}
