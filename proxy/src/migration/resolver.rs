//! The proxies' resolver: while a migration runs, every few seconds, finishes the dual writes
//! whose proxy went away between preparing the copy on the new owner and finishing it
//! (`shardline_router::migration::indoubt` says how). Without it a crashed proxy's prepared
//! copy would hold its row locks, and later writers of that key would wait, until the
//! resharder's next step.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardline_router::migration::indoubt;
use shardline_router::Config;

use super::catalog::connect;
use crate::context::ProxyContext;
use crate::shutdown::Phase;

/// How often the resolver looks.
const INTERVAL: Duration = Duration::from_secs(2);

/// How old a prepared copy must be before the resolver takes it over from its proxy.
const SETTLED_SECONDS: f64 = 5.0;

/// Runs the resolver until the proxy begins to shut down.
pub async fn run(ctx: Arc<ProxyContext>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = ctx.shutdown.reached(Phase::Draining) => return,
        }
        let loaded = ctx.snapshot();
        let Some(active) = loaded.migration.as_deref() else {
            continue;
        };
        for target in active.layout.receiving_shards() {
            if let Err(e) = resolve_on(&loaded.config, target).await {
                tracing::warn!(shard = %target, error = %format!("{e:#}"), "could not resolve in-doubt dual writes");
            }
        }
    }
}

/// Finishes the settled in-doubt dual writes prepared on shard `target`.
async fn resolve_on(config: &Config, target: &str) -> anyhow::Result<()> {
    let shard = config
        .shards
        .iter()
        .find(|s| s.name == target)
        .with_context(|| format!("shard {target} has no connection settings"))?;
    let (client, _connection) = connect(config, shard).await?;
    let gids: Vec<String> = client
        .query(indoubt::LIST_SQL, &[&SETTLED_SECONDS])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for gid in gids {
        let Some((xid, old)) = indoubt::parse_gid(&gid) else {
            continue;
        };
        let Some(old_shard) = config.shards.iter().find(|s| s.name == old) else {
            continue;
        };
        let (source, _source_connection) = connect(config, old_shard).await?;
        let status: Option<String> = source.query_one(indoubt::STATUS_SQL, &[&xid]).await?.get(0);
        if let Some(sql) = indoubt::verdict(&gid, status.as_deref()) {
            // Another proxy or the resharder may finish it first; that is fine.
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(transaction = %gid, "finished an in-doubt dual write: {sql}")
                }
                Err(e) => {
                    tracing::debug!(transaction = %gid, error = %e, "in-doubt dual write already finished")
                }
            }
        }
    }
    Ok(())
}
