//! Prometheus metrics, served as text on `/metrics` by [`http`].
//!
//! Counters and histograms live with what they count (pools, query statistics, clients,
//! reloads) and are registered here once. Values that describe the present (pool occupancy,
//! connected clients, config version, shard health) are read from the proxy at each scrape.

pub mod histogram;
pub mod http;
pub mod striped;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::backend::pool::Pools;
use crate::backend::registry::{shard_at, Health};
use crate::clients::{ClientKind, Clients};
use crate::context::ProxyContext;
use crate::reload::{ConfigSource, ReloadOutcome};
use crate::shutdown::Phase;
use crate::stats::QueryStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    shard: String,
    backend: String,
    user: String,
    database: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    shard: String,
    backend: String,
    user: String,
    database: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

/// Gauges set from the proxy's state at each scrape.
#[derive(Default)]
struct Present {
    config_version: Gauge,
    last_reload_ok: Gauge,
    draining: Gauge,
    clients: Family<KindLabel, Gauge>,
    pool_connections: Family<PoolStateLabels, Gauge>,
    pool_waiting: Family<PoolLabels, Gauge>,
    pool_max: Family<PoolLabels, Gauge>,
    shard_up: Family<ShardLabel, Gauge>,
}

/// The registry and the gauges refreshed at each scrape.
pub struct Metrics {
    registry: Registry,
    present: Present,
}

impl Metrics {
    /// Registers every metric of the proxy's parts.
    pub fn new(
        pools: &Pools,
        stats: &QueryStats,
        clients: &Clients,
        source: &ConfigSource,
    ) -> Metrics {
        let mut registry = Registry::default();
        pools.register(&mut registry);
        stats.register(&mut registry);
        clients.register(&mut registry);
        source.register(&mut registry);
        let present = Present::default();
        let r = &mut registry;
        r.register(
            "shardline_config_version",
            "Version of the config being served (1 at start, +1 per accepted change)",
            present.config_version.clone(),
        );
        r.register(
            "shardline_config_last_reload_ok",
            "1 unless the latest reload of shards.yaml was rejected",
            present.last_reload_ok.clone(),
        );
        r.register(
            "shardline_shutting_down",
            "1 while a graceful shutdown is under way",
            present.draining.clone(),
        );
        r.register(
            "shardline_clients",
            "Connected clients by kind (app, console)",
            present.clients.clone(),
        );
        r.register(
            "shardline_pool_connections",
            "Backend connections per pool by state (in_use, idle)",
            present.pool_connections.clone(),
        );
        r.register(
            "shardline_pool_waiting",
            "Sessions waiting for a connection of the pool",
            present.pool_waiting.clone(),
        );
        r.register(
            "shardline_pool_max_size",
            "Most connections the pool may open",
            present.pool_max.clone(),
        );
        r.register(
            "shardline_shard_up",
            "1 when the latest connection attempt to the shard succeeded",
            present.shard_up.clone(),
        );
        Metrics { registry, present }
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn render(&self, ctx: &ProxyContext) -> String {
        self.refresh(ctx);
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        text
    }

    fn refresh(&self, ctx: &ProxyContext) {
        let p = &self.present;
        let loaded = ctx.snapshot();
        let config = &loaded.config;
        p.config_version
            .set(i64::try_from(loaded.version).unwrap_or(i64::MAX));
        let rejected = matches!(
            ctx.source.last().map(|l| l.outcome),
            Some(ReloadOutcome::Rejected { .. })
        );
        p.last_reload_ok.set(i64::from(!rejected));
        p.draining
            .set(i64::from(ctx.shutdown.phase() != Phase::Running));

        let clients = ctx.clients.list();
        for (kind, label) in [(ClientKind::App, "app"), (ClientKind::Console, "console")] {
            let count = clients.iter().filter(|c| c.kind == kind).count();
            p.clients
                .get_or_create(&KindLabel { kind: label })
                .set(count as i64);
        }

        p.pool_connections.clear();
        p.pool_waiting.clear();
        p.pool_max.clear();
        for view in ctx.pools.views() {
            let labels = PoolLabels {
                shard: shard_at(config, &view.host, view.port, &view.database)
                    .unwrap_or("-")
                    .to_owned(),
                backend: format!("{}:{}", view.host, view.port),
                user: view.user.clone(),
                database: view.database.clone(),
            };
            let state = |state| PoolStateLabels {
                shard: labels.shard.clone(),
                backend: labels.backend.clone(),
                user: labels.user.clone(),
                database: labels.database.clone(),
                state,
            };
            let in_use = view.in_use();
            let idle = view.status.size.saturating_sub(in_use);
            p.pool_connections
                .get_or_create(&state("in_use"))
                .set(in_use as i64);
            p.pool_connections
                .get_or_create(&state("idle"))
                .set(idle as i64);
            p.pool_waiting
                .get_or_create(&labels)
                .set(view.status.waiting as i64);
            p.pool_max
                .get_or_create(&labels)
                .set(view.status.max_size as i64);
        }

        p.shard_up.clear();
        for shard in &config.shards {
            let up = ctx.pools.backends().health(&shard.host, shard.port) == Some(Health::Up);
            p.shard_up
                .get_or_create(&ShardLabel {
                    shard: shard.name.clone(),
                })
                .set(i64::from(up));
        }
    }
}
