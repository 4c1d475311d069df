//! The resolver: finishes the two-phase commits whose proxy went away between preparing a
//! participant and finishing it (`shardline_router::indoubt` says how the decider's own commit
//! decides). It looks at start and then periodically on every shard; without it a crashed
//! proxy's prepared transactions would hold their row locks until an operator stepped in.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardline_router::config::Shard;
use shardline_router::{indoubt, Config};

use crate::context::ProxyContext;
use crate::migration::catalog::connect;
use crate::shutdown::Phase;

/// How often the resolver looks while a resharding migration dual-writes.
const MIGRATION_INTERVAL: Duration = Duration::from_secs(2);

/// How often it looks otherwise.
const INTERVAL: Duration = Duration::from_secs(10);

/// How old a prepared transaction must be before the resolver takes it over from its proxy,
/// which normally finishes it within milliseconds.
const SETTLED_SECONDS: f64 = 5.0;

/// Runs the resolver until the proxy begins to shut down.
pub async fn run(ctx: Arc<ProxyContext>) {
    loop {
        let loaded = ctx.snapshot();
        for shard in &loaded.config.shards {
            if let Err(e) = resolve_on(&loaded.config, shard).await {
                tracing::warn!(shard = %shard.name, error = %format!("{e:#}"), "could not resolve in-doubt prepared transactions");
            }
        }
        let pause = if loaded.migration.is_some() {
            MIGRATION_INTERVAL
        } else {
            INTERVAL
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = ctx.shutdown.reached(Phase::Draining) => return,
        }
    }
}

/// Finishes the settled in-doubt prepared transactions on `shard`.
async fn resolve_on(config: &Config, shard: &Shard) -> anyhow::Result<()> {
    let (client, _connection) = connect(config, shard).await?;
    let gids: Vec<String> = client
        .query(indoubt::LIST_SQL, &[&SETTLED_SECONDS])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for gid in gids {
        let Some((xid, decider)) = indoubt::parse_gid(&gid) else {
            continue;
        };
        let decider_shard = config
            .shards
            .iter()
            .find(|s| s.name == decider)
            .with_context(|| format!("{gid} names shard {decider}, which shards.yaml lacks"))?;
        let (source, _source_connection) = connect(config, decider_shard).await?;
        let status: Option<String> = source.query_one(indoubt::STATUS_SQL, &[&xid]).await?.get(0);
        if let Some(sql) = indoubt::verdict(&gid, status.as_deref()) {
            // Another proxy or the resharder may finish it first; that is fine.
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(transaction = %gid, "finished an in-doubt prepared transaction: {sql}")
                }
                Err(e) => {
                    tracing::debug!(transaction = %gid, error = %e, "in-doubt prepared transaction already finished")
                }
            }
        }
    }
    Ok(())
}
