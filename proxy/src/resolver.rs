//! The resolver: finishes the two-phase commits whose proxy went away between preparing a
//! participant and finishing it (`shardline_router::indoubt` says how the decider's own commit
//! decides). It looks at start and then periodically on every shard; without it a crashed
//! proxy's prepared transactions would hold their row locks until an operator stepped in. The
//! admin console's `SHOW INDOUBT` lists what it sees ([`in_doubt`]).

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

/// One of shardline's prepared transactions, and what its decider says of it.
#[derive(Debug, Clone)]
pub struct InDoubt {
    /// The shard it is prepared on.
    pub shard: String,
    /// Its name (`sl_tx:…` or `sl_dw:…`).
    pub gid: String,
    /// Seconds since it was prepared.
    pub age_s: f64,
    /// The decider's shard.
    pub decider: String,
    /// `pg_xact_status` of the decider's transaction (`committed`, `aborted`,
    /// `in progress`), or why it could not be asked.
    pub decider_status: String,
    /// The statement that finishes it, once the decider has decided.
    pub verdict: Option<String>,
}

/// Runs the resolver until the proxy begins to shut down.
pub async fn run(ctx: Arc<ProxyContext>) {
    let mut warned = false;
    loop {
        let loaded = ctx.snapshot();
        if !warned {
            warn_without_prepared_transactions(&loaded.config).await;
            warned = true;
        }
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

/// Every prepared transaction of shardline's on `config`'s shards, with its decider's fate.
/// Shards that cannot be reached are listed with the reason.
pub async fn in_doubt(config: &Config) -> Vec<InDoubt> {
    let mut found = Vec::new();
    for shard in &config.shards {
        match list_on(config, shard, 0.0).await {
            Ok(listed) => found.extend(listed),
            Err(e) => found.push(InDoubt {
                shard: shard.name.clone(),
                gid: String::new(),
                age_s: 0.0,
                decider: String::new(),
                decider_status: format!("shard not reachable: {e:#}"),
                verdict: None,
            }),
        }
    }
    found
}

/// Finishes the settled in-doubt prepared transactions on `shard`.
async fn resolve_on(config: &Config, shard: &Shard) -> anyhow::Result<()> {
    let listed = list_on(config, shard, SETTLED_SECONDS).await?;
    if listed.iter().all(|t| t.verdict.is_none()) {
        return Ok(());
    }
    let (client, _connection) = connect(config, shard).await?;
    for transaction in listed {
        let Some(sql) = transaction.verdict else {
            continue;
        };
        // Another proxy or the resharder may finish it first; that is fine.
        match client.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(transaction = %transaction.gid, "finished an in-doubt prepared transaction: {sql}")
            }
            Err(e) => {
                tracing::debug!(transaction = %transaction.gid, error = %e, "in-doubt prepared transaction already finished")
            }
        }
    }
    Ok(())
}

/// shardline's prepared transactions on `shard` at least `min_age` seconds old, each with its
/// decider's status.
async fn list_on(config: &Config, shard: &Shard, min_age: f64) -> anyhow::Result<Vec<InDoubt>> {
    let (client, _connection) = connect(config, shard).await?;
    let rows = client.query(indoubt::LIST_SQL, &[&min_age]).await?;
    let mut listed = Vec::with_capacity(rows.len());
    for row in rows {
        let (gid, age_s): (String, f64) = (row.get(0), row.get(1));
        let Some((xid, decider)) = indoubt::parse_gid(&gid) else {
            continue;
        };
        let status = decider_status(config, xid, decider).await;
        let (decider_status, verdict) = match status {
            Ok(status) => (
                status.clone().unwrap_or_else(|| "unknown".to_owned()),
                indoubt::verdict(&gid, status.as_deref()),
            ),
            Err(e) => (format!("decider not reachable: {e:#}"), None),
        };
        listed.push(InDoubt {
            shard: shard.name.clone(),
            decider: decider.to_owned(),
            gid,
            age_s,
            decider_status,
            verdict,
        });
    }
    Ok(listed)
}

/// `pg_xact_status` of transaction `xid` on shard `decider`.
async fn decider_status(
    config: &Config,
    xid: &str,
    decider: &str,
) -> anyhow::Result<Option<String>> {
    let shard = config
        .shards
        .iter()
        .find(|s| s.name == decider)
        .with_context(|| format!("shard {decider} is not in shards.yaml"))?;
    let (client, _connection) = connect(config, shard).await?;
    Ok(client.query_one(indoubt::STATUS_SQL, &[&xid]).await?.get(0))
}

/// Logs once, at start, each shard whose `max_prepared_transactions` is 0: a transaction that
/// writes on it and another shard cannot commit (it is refused and rolled back, never half
/// committed).
async fn warn_without_prepared_transactions(config: &Config) {
    for shard in &config.shards {
        let Ok((client, _connection)) = connect(config, shard).await else {
            continue;
        };
        let setting = client
            .query_one(
                "SELECT current_setting('max_prepared_transactions')::int",
                &[],
            )
            .await
            .map(|row| row.get::<_, i32>(0));
        if let Ok(0) = setting {
            tracing::warn!(shard = %shard.name, "max_prepared_transactions is 0 on this shard: transactions that write on it and on another shard will be refused at COMMIT; set it above 0 (e.g. to max_connections)");
        }
    }
}
