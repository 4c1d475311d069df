//! The resolver: finishes the two-phase commits whose proxy went away between preparing a
//! participant and finishing it (`shardline_router::indoubt` says how the decider's own commit
//! decides), and deletes the decision rows no prepared participant needs any more
//! ([`decisions`]). It looks at start and then periodically on every shard; without it a
//! crashed proxy's prepared transactions would hold their row locks until an operator stepped
//! in. The admin console's `SHOW INDOUBT` lists what it sees ([`in_doubt`]).

pub mod decisions;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use shardline_router::indoubt::{self, Prepared, Verdict};
use shardline_router::Config;
use tokio_postgres::Client;

use crate::context::ProxyContext;
use crate::migration::catalog::{connect, connect_to};
use crate::resolver::decisions::Finished;
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
    /// `pg_xact_status` of the decider's transaction and whether it recorded its decision, or
    /// why the decider could not be asked.
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
        resolve_pass(&loaded.config, &ctx.decisions.places()).await;
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
    let mut control = Control::new(config);
    let mut found = Vec::new();
    for shard in &config.shards {
        match list(&mut control, &shard.name, 0.0).await {
            Ok(listed) => {
                for prepared in listed {
                    found.push(ask(&mut control, &shard.name, prepared).await);
                }
            }
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

/// One prepared transaction as a shard lists it.
struct Listed {
    gid: String,
    age_s: f64,
    /// The database it belongs to, where it is finished.
    database: String,
    /// The user who prepared it, who finishes it (shards.yaml has its password).
    owner: String,
}

/// One pass: finishes every settled in-doubt prepared transaction the deciders have decided,
/// then deletes the decision rows no prepared transaction can need any more
/// (`shardline_router::indoubt::forgettable`: the stale rows — of each shard's own database
/// and of the `places` this proxy recorded decisions in — are read before the prepared
/// transactions of every database are listed, and a row goes only when all its participants'
/// shards were listed and none names it).
async fn resolve_pass(config: &Config, places: &[(String, String)]) {
    let mut control = Control::new(config);
    let mut databases: Vec<(&str, Option<&str>)> = config
        .shards
        .iter()
        .map(|s| (s.name.as_str(), None))
        .collect();
    databases.extend(places.iter().map(|(s, d)| (s.as_str(), Some(d.as_str()))));
    let mut stale = Vec::new();
    for &(shard, database) in &databases {
        match control.with(shard, database, decisions::stale).await {
            Ok(rows) => stale.push((shard, database, rows)),
            Err(e) => {
                tracing::debug!(shard = %shard, error = %format!("{e:#}"), "could not read old decision rows")
            }
        }
    }
    let mut listed = BTreeSet::new();
    let mut named = BTreeSet::new();
    for shard in &config.shards {
        match list(&mut control, &shard.name, 0.0).await {
            Ok(prepared) => {
                listed.insert(shard.name.as_str());
                for one in prepared {
                    let parsed = indoubt::parse_gid(&one.gid);
                    if let Some(place) = parsed.and_then(|p| p.recorded_in) {
                        named.insert(place.digest.to_owned());
                    }
                    if one.age_s >= SETTLED_SECONDS {
                        finish_on(&mut control, &shard.name, &one).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = %shard.name, error = %format!("{e:#}"), "could not resolve in-doubt prepared transactions");
            }
        }
    }
    let named: BTreeSet<&str> = named.iter().map(String::as_str).collect();
    for (shard, database, rows) in stale {
        let unneeded = indoubt::forgettable(rows, &listed, &named);
        let forget = async |client: &Client| decisions::forget(client, &unneeded).await;
        match control.with(shard, database, forget).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(shard = %shard, rows = n, "deleted decision rows no prepared transaction needs")
            }
            Err(e) => {
                tracing::warn!(shard = %shard, error = %format!("{e:#}"), "could not delete old decision rows (the resolver's user must own shardline.decisions)")
            }
        }
    }
}

/// Finishes prepared transaction `one` on `shard` if its decider has decided.
async fn finish_on(control: &mut Control<'_>, shard: &str, one: &Listed) {
    let Some(prepared) = indoubt::parse_gid(&one.gid) else {
        return;
    };
    let participant = Login {
        database: Some(&one.database),
        user: Some(&one.owner),
    };
    let opened = async {
        let decider = control.decider(&prepared).await?;
        control.open_as(shard, participant).await?;
        anyhow::Ok((
            control.get_as(shard, participant)?,
            control.get(prepared.decider, decider.as_deref())?,
        ))
    };
    let finished = match opened.await {
        Ok((participant, decider)) => decisions::finish(participant, decider, &one.gid)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match finished {
        Ok(Finished::Committed) => {
            tracing::info!(transaction = %one.gid, "committed an in-doubt prepared transaction")
        }
        Ok(Finished::RolledBack) => {
            tracing::info!(transaction = %one.gid, "rolled back an in-doubt prepared transaction")
        }
        Ok(Finished::Pending | Finished::AlreadyFinished) => {}
        Err(e) => {
            tracing::warn!(transaction = %one.gid, error = %format!("{e:#}"), "could not finish an in-doubt prepared transaction")
        }
    }
}

/// shardline's prepared transactions on `shard`, in every database, at least `min_age`
/// seconds old.
async fn list(control: &mut Control<'_>, shard: &str, min_age: f64) -> anyhow::Result<Vec<Listed>> {
    let client = control.open(shard, None).await?;
    let rows = client.query(indoubt::LIST_SQL, &[&min_age]).await?;
    Ok(rows
        .iter()
        .map(|row| Listed {
            gid: row.get(0),
            age_s: row.get(1),
            database: row.get(2),
            owner: row.get(3),
        })
        .collect())
}

/// What the decider of prepared transaction `one` on `shard` says of it.
async fn ask(control: &mut Control<'_>, shard: &str, one: Listed) -> InDoubt {
    let mut found = InDoubt {
        shard: shard.to_owned(),
        decider: String::new(),
        decider_status: "not one of shardline's names".to_owned(),
        verdict: None,
        gid: one.gid,
        age_s: one.age_s,
    };
    let Some(prepared) = indoubt::parse_gid(&found.gid) else {
        return found;
    };
    found.decider = prepared.decider.to_owned();
    let gid = found.gid.clone();
    let settled = match control.decider(&prepared).await {
        Ok(database) => {
            let settle = async |decider: &Client| decisions::settle(decider, &gid, &prepared).await;
            control
                .with(prepared.decider, database.as_deref(), settle)
                .await
        }
        Err(e) => Err(e),
    };
    match settled {
        Ok(settled) => {
            let recorded = match settled.recorded {
                Some(true) => ", decision recorded",
                Some(false) => ", no decision recorded",
                None => "",
            };
            let status = settled.status.as_deref().unwrap_or("unknown");
            found.decider_status = format!("{status}{recorded}");
            if let Verdict::Finish(sql) = settled.verdict {
                found.verdict = Some(sql);
            }
        }
        Err(e) => found.decider_status = format!("decider not reachable: {e:#}"),
    }
    found
}

/// Which database of a shard, as which user, a control connection logs in to (`None`: the
/// shard's own database, or the first user's; the first non-admin user of shards.yaml).
#[derive(Debug, Clone, Copy, Default)]
struct Login<'a> {
    database: Option<&'a str>,
    user: Option<&'a str>,
}

/// A control connection's shard, database and user, owned.
type LoginKey = (String, Option<String>, Option<String>);

impl Login<'_> {
    fn key(&self, shard: &str) -> LoginKey {
        (
            shard.to_owned(),
            self.database.map(str::to_owned),
            self.user.map(str::to_owned),
        )
    }
}

/// Control connections to the shards for one pass, by shard, database and user, opened when
/// first needed; one that could not be opened is not tried again in the same pass.
struct Control<'a> {
    config: &'a Config,
    open: HashMap<LoginKey, Result<Client, String>>,
}

impl<'a> Control<'a> {
    fn new(config: &'a Config) -> Control<'a> {
        Control {
            config,
            open: HashMap::new(),
        }
    }

    /// The connection to `database` of shard `name`, opened if it is not yet.
    async fn open(&mut self, name: &str, database: Option<&str>) -> anyhow::Result<&Client> {
        let login = Login {
            database,
            user: None,
        };
        self.open_as(name, login).await
    }

    /// The connection to shard `name` as `login` says, opened if it is not yet.
    async fn open_as(&mut self, name: &str, login: Login<'_>) -> anyhow::Result<&Client> {
        let key = login.key(name);
        if !self.open.contains_key(&key) {
            let opened = match self.config.shards.iter().find(|s| s.name == name) {
                Some(shard) => connect_to(self.config, shard, login.database, login.user)
                    .await
                    .map(|(client, _connection)| client)
                    .map_err(|e| format!("{e:#}")),
                None => Err(format!("shard {name} is not in shards.yaml")),
            };
            self.open.insert(key, opened);
        }
        self.get_as(name, login)
    }

    /// What `run` makes of the connection to `database` of shard `name`.
    async fn with<T>(
        &mut self,
        name: &str,
        database: Option<&str>,
        run: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> anyhow::Result<T> {
        let client = self.open(name, database).await?;
        Ok(run(client).await?)
    }

    /// The connection to `database` of shard `name`, once opened.
    fn get(&self, name: &str, database: Option<&str>) -> anyhow::Result<&Client> {
        let login = Login {
            database,
            user: None,
        };
        self.get_as(name, login)
    }

    /// The connection to shard `name` as `login` says, once opened.
    fn get_as(&self, name: &str, login: Login<'_>) -> anyhow::Result<&Client> {
        match self.open.get(&login.key(name)) {
            Some(Ok(client)) => Ok(client),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Err(anyhow::anyhow!("no connection to shard {name}")),
        }
    }

    /// Opens the decider of `prepared` in the database its decision is recorded in, and
    /// returns that database's name (`None`: the shard's own, for an older name).
    async fn decider(&mut self, prepared: &Prepared<'_>) -> anyhow::Result<Option<String>> {
        let Some(oid) = prepared.recorded_in.map(|place| place.database) else {
            self.open(prepared.decider, None).await?;
            return Ok(None);
        };
        let client = self.open(prepared.decider, None).await?;
        let row = client.query_opt(indoubt::DATABASE_SQL, &[&oid]).await?;
        let name: String = row.map(|row| row.get(0)).ok_or_else(|| {
            anyhow::anyhow!(
                "the database with oid {oid} of shard {} is gone",
                prepared.decider
            )
        })?;
        self.open(prepared.decider, Some(&name)).await?;
        Ok(Some(name))
    }
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
