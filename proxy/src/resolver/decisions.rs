//! The decision rows of two-phase commits (`schema/decisions.sql`; the argument is in
//! `shardline_router::indoubt`): installed on a shard before it first decides, read to settle a
//! prepared part its proxy left behind, deleted once no prepared part names them.

use std::collections::HashSet;
use std::sync::Mutex;

use shardline_router::indoubt::{self, Prepared, Verdict};
use shardline_router::Config;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::migration::catalog;
use crate::protocol::backend::sqlstate;
use crate::session::ClientError;

/// The table of decisions, with its schema and grants.
const DECISIONS_SQL: &str = include_str!("../../../schema/decisions.sql");

/// The shards on which this proxy installed (or found) `shardline.decisions`, so a commit
/// pays for the control connection that installs it once per shard, not once per commit.
#[derive(Default)]
pub struct DecisionTables {
    installed: Mutex<HashSet<String>>,
}

impl DecisionTables {
    /// Makes sure shard `name` has the table before it decides a commit.
    pub async fn ensure(&self, config: &Config, name: &str) -> Result<(), ClientError> {
        if self.lock().contains(name) {
            return Ok(());
        }
        let failed = |e: String| {
            ClientError::new(
                sqlstate::CONNECTION_FAILURE,
                format!("could not install shardline.decisions on shard {name}, which two-phase commits need ({e}); the transaction was rolled back. Let the proxy's first user create schemas there, or run schema/decisions.sql on it"),
            )
        };
        let shard = config
            .shards
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| failed("the shard is not in shards.yaml".to_owned()))?;
        let (client, _connection) = catalog::connect(config, shard)
            .await
            .map_err(|e| failed(format!("{e:#}")))?;
        catalog::install(&client, DECISIONS_SQL)
            .await
            .map_err(|e| failed(e.to_string()))?;
        self.lock().insert(name.to_owned());
        Ok(())
    }

    /// Forgets that shard `name` has the table: a decider found it missing (dropped, or the
    /// shard moved to a new server under the same name); the next commit installs it again.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a decider says of one prepared transaction.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The status of the decider's transaction (`committed`, `aborted`, `in progress`), `None`
    /// when too old to tell.
    pub status: Option<String>,
    /// Whether its decision row exists; `None` when not asked (still running, or an older name).
    pub recorded: Option<bool>,
    /// What to do.
    pub verdict: Verdict,
}

/// Asks `decider` about prepared transaction `gid` (named as `prepared` says): its
/// transaction's status first, then, once that is over, in a statement of its own (whose
/// snapshot sees that commit), whether the decision row exists.
pub async fn settle(
    decider: &Client,
    gid: &str,
    prepared: &Prepared<'_>,
) -> Result<Settled, tokio_postgres::Error> {
    let status: Option<String> = decider
        .query_one(indoubt::STATUS_SQL, &[&prepared.xid])
        .await?
        .get(0);
    let mut settled = Settled {
        verdict: indoubt::verdict(gid, status.as_deref(), None),
        status,
        recorded: None,
    };
    if let (Verdict::AskRecord, Some(nonce)) = (&settled.verdict, prepared.nonce) {
        let recorded: bool = decider
            .query_one(indoubt::RECORDED_SQL, &[&prepared.xid, &nonce])
            .await?
            .get(0);
        settled.verdict = indoubt::verdict(gid, settled.status.as_deref(), Some(recorded));
        settled.recorded = Some(recorded);
    }
    Ok(settled)
}

/// The nonces of `shard`'s decision rows older than a minute; none where the table is not
/// installed.
pub async fn stale(shard: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    match shard.query(indoubt::STALE_SQL, &[]).await {
        Ok(rows) => Ok(rows.iter().map(|row| row.get(0)).collect()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes `shard`'s decision rows under `nonces`.
pub async fn forget(shard: &Client, nonces: &[String]) -> Result<u64, tokio_postgres::Error> {
    if nonces.is_empty() {
        return Ok(0);
    }
    shard.execute(indoubt::FORGET_SQL, &[&nonces]).await
}
