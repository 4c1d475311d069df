//! The decision rows of two-phase commits (`schema/decisions.sql`; the argument is in
//! `shardline_router::indoubt`): installed on a shard before it first decides, read to settle a
//! prepared part its proxy left behind, deleted once no prepared part can need them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardline_router::indoubt::{self, Prepared, Recorded, Verdict};
use shardline_router::Config;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::migration::catalog;
use crate::protocol::backend::sqlstate;
use crate::session::ClientError;

/// The table of decisions, with its schema and grants.
const DECISIONS_SQL: &str = include_str!("../../../schema/decisions.sql");

/// How long a failed install is not tried again: commits meanwhile fail at once, instead of
/// each opening a control connection that fails the same way.
const RETRY_INSTALL: Duration = Duration::from_secs(10);

/// Where this proxy installed (or found) `shardline.decisions`: shard name, address and
/// database, so a commit pays for the control connection that installs it once per shard
/// database, not once per commit, and a shard name moved to another server is looked at again.
type Place = (String, String, u16, String);

/// The shard databases known to hold the table two-phase commits record their decisions in,
/// each with its location as prepared names carry it (`<server>:<database oid>`).
#[derive(Default)]
pub struct DecisionTables {
    installed: Mutex<HashMap<Place, String>>,
    /// Places whose install failed, when, and why.
    failed: Mutex<HashMap<Place, (Instant, String)>>,
    /// Held while one session installs, so concurrent first commits do not all connect.
    installing: tokio::sync::Mutex<()>,
}

impl DecisionTables {
    /// Makes sure shard `name` has the table, in `database` (the decider's backend's), before
    /// it decides a commit: installed as the config's first user, who then owns it and whose
    /// resolver deletes old rows. Returns the location prepared names carry.
    pub async fn ensure(
        &self,
        config: &Config,
        name: &str,
        database: &str,
    ) -> Result<String, ClientError> {
        let failed = |e: &str| {
            ClientError::new(
                sqlstate::OBJECT_NOT_IN_STATE,
                format!("shardline.decisions, which commits across shards record their decision in, is missing in database {database} of shard {name} and could not be installed ({e}); the transaction was rolled back. Let the first user of shards.yaml create schemas there, or run schema/decisions.sql there as its owner"),
            )
        };
        let shard = config
            .shards
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| failed("the shard is not in shards.yaml"))?;
        let place = (
            name.to_owned(),
            shard.host.clone(),
            shard.port,
            database.to_owned(),
        );
        if let Some(location) = lock(&self.installed).get(&place) {
            return Ok(location.clone());
        }
        let _installing = self.installing.lock().await;
        if let Some(location) = lock(&self.installed).get(&place) {
            return Ok(location.clone());
        }
        if let Some((at, why)) = lock(&self.failed).get(&place) {
            if at.elapsed() < RETRY_INSTALL {
                return Err(failed(why));
            }
        }
        match install(config, shard, database).await {
            Ok(location) => {
                lock(&self.failed).remove(&place);
                lock(&self.installed).insert(place, location.clone());
                Ok(location)
            }
            Err(why) => {
                let error = failed(&why);
                lock(&self.failed).insert(place, (Instant::now(), why));
                Err(error)
            }
        }
    }

    /// Forgets every database of shard `name`: a decider found the table missing there
    /// (dropped since); the next commit installs it again.
    pub fn forget(&self, name: &str) {
        lock(&self.installed).retain(|place, _| place.0 != name);
    }

    /// The (shard, database) places this proxy knows the table in, where its resolver looks
    /// for rows to delete besides each shard's own database.
    pub fn places(&self) -> Vec<(String, String)> {
        lock(&self.installed)
            .keys()
            .map(|(shard, _, _, database)| (shard.clone(), database.clone()))
            .collect()
    }
}

/// Installs the table in `database` of `shard` unless it is there; returns that database's
/// location.
async fn install(
    config: &Config,
    shard: &shardline_router::config::Shard,
    database: &str,
) -> Result<String, String> {
    let (client, _connection) = catalog::connect_to(config, shard, Some(database), None)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let present: bool = client
        .query_one("SELECT to_regclass('shardline.decisions') IS NOT NULL", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !present {
        catalog::install(&client, DECISIONS_SQL)
            .await
            .map_err(|e| e.to_string())?;
    }
    client
        .query_one(indoubt::LOCATION_SQL, &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a decider says of one prepared transaction.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The status of the decider's transaction (`committed`, `aborted`, `in progress`), `None`
    /// when too old to tell.
    pub status: Option<String>,
    /// Whether its decision row exists; `None` when not asked (still running, an older name)
    /// or not yet answerable (asked in another database, or before the snapshot sees it over).
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
    if let (Verdict::AskRecord, Some(place)) = (&settled.verdict, prepared.recorded_in) {
        let asked: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&prepared.xid, &place.digest, &place.database, &place.server];
        let recorded: Option<bool> = decider
            .query_one(indoubt::RECORDED_SQL, &asked)
            .await?
            .get(0);
        settled.verdict = match recorded {
            Some(_) => indoubt::verdict(gid, settled.status.as_deref(), recorded),
            // Not answerable here or yet: look again next time.
            None => Verdict::Wait,
        };
        settled.recorded = recorded;
    }
    Ok(settled)
}

/// What finishing one prepared transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Committed,
    RolledBack,
    /// Its decider has not decided yet (or its name is not one of shardline's).
    Pending,
    /// Someone else (its proxy, another resolver) finished it first.
    AlreadyFinished,
}

/// Finishes prepared transaction `gid` on `participant` (connected to its database) if its
/// decider (`decider`, connected to the decider's database) decided.
pub async fn finish(
    participant: &Client,
    decider: &Client,
    gid: &str,
) -> Result<Finished, tokio_postgres::Error> {
    let Some(prepared) = indoubt::parse_gid(gid) else {
        return Ok(Finished::Pending);
    };
    let Verdict::Finish(sql) = settle(decider, gid, &prepared).await?.verdict else {
        return Ok(Finished::Pending);
    };
    match participant.batch_execute(&sql).await {
        Ok(()) if sql.starts_with("COMMIT") => Ok(Finished::Committed),
        Ok(()) => Ok(Finished::RolledBack),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(Finished::AlreadyFinished),
        Err(e) => Err(e),
    }
}

/// `shard`'s decision rows older than a minute; none where the table is not installed.
pub async fn stale(shard: &Client) -> Result<Vec<Recorded>, tokio_postgres::Error> {
    match shard.query(indoubt::STALE_SQL, &[]).await {
        Ok(rows) => Ok(rows
            .iter()
            .map(|row| Recorded {
                digest: row.get(0),
                participants: row.get(1),
            })
            .collect()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes `shard`'s decision rows with these digests.
pub async fn forget(shard: &Client, digests: &[String]) -> Result<u64, tokio_postgres::Error> {
    if digests.is_empty() {
        return Ok(0);
    }
    shard.execute(indoubt::FORGET_SQL, &[&digests]).await
}
