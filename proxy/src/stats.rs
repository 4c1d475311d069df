//! Query statistics per shard and route kind: what `SHOW STATS` prints and `/metrics` exports.
//!
//! The session reports each exchange once it ends ([`QueryStats::record_query`] for a
//! single-shard statement, [`QueryStats::record_scatter`] for one sent to several shards).
//! Each loaded config carries its shards' counters by shard id ([`ShardStats`], resolved when
//! it is loaded), so recording costs no lock, no hash and no shared load: a few additions,
//! each to the recording thread's own stripe of the counter (a plain load and store where the
//! thread owns the stripe; see [`crate::metrics::striped`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shardline_router::{Config, ShardId};

use crate::context::Loaded;
use crate::metrics::histogram::DurationHistogram;
use crate::metrics::striped::StripedCounter;

/// How a statement was routed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum RouteKind {
    /// To one shard.
    Single,
    /// To several shards at once, answers merged.
    Scatter,
}

impl RouteKind {
    /// The label value: `single` or `scatter`.
    fn as_str(self) -> &'static str {
        match self {
            RouteKind::Single => "single",
            RouteKind::Scatter => "scatter",
        }
    }
}

impl EncodeLabelValue for RouteKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardRoute {
    shard: String,
    route: RouteKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: RouteKind,
}

/// Counters of one shard, shared with the metric families.
struct ShardCounters {
    single: StripedCounter,
    scatter: StripedCounter,
    single_errors: StripedCounter,
    scatter_errors: StripedCounter,
    transactions: StripedCounter,
    busy_micros: StripedCounter,
}

/// Totals of one shard, as `SHOW STATS` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardTotals {
    /// Statements that went to this shard alone.
    pub single: u64,
    /// Multi-shard statements this shard took part in.
    pub scatter: u64,
    /// Statements (either kind) that failed on or because of this shard.
    pub errors: u64,
    /// Transactions that ended on this shard (an autocommit statement is one).
    pub transactions: u64,
    /// Time spent in statements on this shard, in microseconds.
    pub busy_micros: u64,
}

/// The counters of each shard of one loaded config, by shard id: found by name once, when the
/// config is loaded, and by index for every statement.
#[derive(Default)]
pub struct ShardStats(Vec<Arc<ShardCounters>>);

/// Statistics of every shard configured since the proxy started, by name (a shard renamed or
/// removed keeps its figures).
pub struct QueryStats {
    shards: RwLock<HashMap<String, Arc<ShardCounters>>>,
    queries: Family<ShardRoute, StripedCounter>,
    errors: Family<ShardRoute, StripedCounter>,
    transactions: Family<ShardLabel, StripedCounter>,
    single_latency: DurationHistogram,
    scatter_latency: DurationHistogram,
    latency: Family<RouteLabel, DurationHistogram, fn() -> DurationHistogram>,
}

fn latency_histogram() -> DurationHistogram {
    // 100 µs .. ~26 s
    DurationHistogram::exponential(Duration::from_micros(100), 4, 10)
}

impl Default for QueryStats {
    fn default() -> Self {
        let latency: Family<RouteLabel, DurationHistogram, fn() -> DurationHistogram> =
            Family::new_with_constructor(latency_histogram);
        QueryStats {
            shards: RwLock::default(),
            queries: Family::default(),
            errors: Family::default(),
            transactions: Family::default(),
            single_latency: latency.get_or_create_owned(&RouteLabel {
                route: RouteKind::Single,
            }),
            scatter_latency: latency.get_or_create_owned(&RouteLabel {
                route: RouteKind::Scatter,
            }),
            latency,
        }
    }
}

impl QueryStats {
    /// Adds the query metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shardline_queries",
            "Statements sent to shards, by shard and route kind (a scatter counts on each shard)",
            self.queries.clone(),
        );
        registry.register(
            "shardline_query_errors",
            "Statements that failed, by shard and route kind",
            self.errors.clone(),
        );
        registry.register(
            "shardline_transactions",
            "Transactions that ended on each shard (autocommit statements included)",
            self.transactions.clone(),
        );
        registry.register(
            "shardline_query_duration_seconds",
            "Time from sending a statement to its last answer, by route kind",
            self.latency.clone(),
        );
    }

    /// Records one exchange with shard `shard`: whether it succeeded, whether the backend
    /// ended up outside a transaction (the transaction, or autocommit statement, ended), and
    /// how long it took.
    pub fn record_query(
        &self,
        loaded: &Loaded,
        shard: ShardId,
        ok: bool,
        ended_transaction: bool,
        elapsed: Duration,
    ) {
        Self::with_counters(loaded, shard, |counters| {
            counters.single.inc();
            if !ok {
                counters.single_errors.inc();
            }
            if ended_transaction {
                counters.transactions.inc();
            }
            counters.add_busy(elapsed);
        });
        self.single_latency.observe(elapsed);
    }

    /// Records one statement sent to every shard of `shards` at once (outside a transaction,
    /// so it ends one on each).
    pub fn record_scatter(&self, loaded: &Loaded, shards: &[ShardId], ok: bool, elapsed: Duration) {
        for shard in shards {
            Self::with_counters(loaded, *shard, |counters| {
                counters.scatter.inc();
                if !ok {
                    counters.scatter_errors.inc();
                }
                counters.transactions.inc();
                counters.add_busy(elapsed);
            });
        }
        self.scatter_latency.observe(elapsed);
    }

    /// Totals per shard name, sorted by name.
    pub fn totals(&self) -> Vec<(String, ShardTotals)> {
        let shards = self.shards.read().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<(String, ShardTotals)> = shards
            .iter()
            .map(|(name, c)| {
                let totals = ShardTotals {
                    single: c.single.get(),
                    scatter: c.scatter.get(),
                    errors: c.single_errors.get() + c.scatter_errors.get(),
                    transactions: c.transactions.get(),
                    busy_micros: c.busy_micros.get(),
                };
                (name.clone(), totals)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// The counters of `config`'s shards, for [`Loaded`] to carry.
    pub fn for_config(&self, config: &Config) -> ShardStats {
        ShardStats(
            config
                .shards
                .iter()
                .map(|s| self.counters(&s.name))
                .collect(),
        )
    }

    /// Runs `record` on the counters of `shard` under `loaded`'s config.
    fn with_counters(loaded: &Loaded, shard: ShardId, record: impl FnOnce(&ShardCounters)) {
        if let Some(counters) = loaded.stats.0.get(shard) {
            record(counters);
        }
    }

    fn counters(&self, shard: &str) -> Arc<ShardCounters> {
        if let Some(c) = self
            .shards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(shard)
        {
            return c.clone();
        }
        let route = |route| ShardRoute {
            shard: shard.to_owned(),
            route,
        };
        let created = Arc::new(ShardCounters {
            single: self.queries.get_or_create_owned(&route(RouteKind::Single)),
            scatter: self.queries.get_or_create_owned(&route(RouteKind::Scatter)),
            single_errors: self.errors.get_or_create_owned(&route(RouteKind::Single)),
            scatter_errors: self.errors.get_or_create_owned(&route(RouteKind::Scatter)),
            transactions: self.transactions.get_or_create_owned(&ShardLabel {
                shard: shard.to_owned(),
            }),
            busy_micros: StripedCounter::default(),
        });
        self.shards
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(shard.to_owned())
            .or_insert(created)
            .clone()
    }
}

impl ShardCounters {
    fn add_busy(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.busy_micros.inc_by(micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::auth::Credentials;

    fn loaded(stats: &QueryStats, shards: &[&str], version: u64) -> Loaded {
        let mut yaml = String::from("shards:\n");
        for (port, name) in shards.iter().enumerate() {
            yaml += &format!(
                "  - {{name: {name}, host: 127.0.0.1, port: {}}}\n",
                port + 1
            );
        }
        yaml += "users:\n  - {name: app, password: app}\n";
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        Loaded {
            stats: stats.for_config(&config),
            credentials: Credentials::from_config(&config),
            config,
            migration: None,
            version,
        }
    }

    #[test]
    fn a_shard_keeps_its_figures_by_name_across_configs() {
        let stats = QueryStats::default();
        let first = loaded(&stats, &["a", "b"], 1);
        stats.record_query(&first, 1, true, true, Duration::from_micros(30));
        stats.record_scatter(&first, &[0, 1], false, Duration::from_micros(50));
        // Reloaded with the shards in another order and one more: ids change, names do not.
        let second = loaded(&stats, &["c", "b", "a"], 2);
        stats.record_query(&second, 1, false, false, Duration::from_micros(20));
        let totals: HashMap<String, ShardTotals> = stats.totals().into_iter().collect();
        let b = &totals["b"];
        assert_eq!((b.single, b.scatter, b.errors), (2, 1, 2));
        assert_eq!((b.transactions, b.busy_micros), (2, 100));
        let a = &totals["a"];
        assert_eq!(
            (a.single, a.scatter, a.errors, a.transactions),
            (0, 1, 1, 1)
        );
        assert_eq!(totals["c"], ShardTotals::default());
    }
}
