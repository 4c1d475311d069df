//! Reading the migration from the catalog (`schema/catalog.sql`) on the default shard: at
//! start, so a restarted proxy comes back in the phase the migration is in, and on the admin
//! `RESHARD`, which the resharder sends at every phase change.

use std::collections::HashMap;

use crate::backend::tls;
use anyhow::{bail, Context};
use shardline_router::config::Shard;
use shardline_router::migration::images::TableShape;
use shardline_router::migration::{Layout, Phase};
use shardline_router::Config;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::Active;

/// The latest migration that was not aborted, if the catalog records one. `config` is the
/// proxy's own `shards.yaml`: the catalog lives on its default shard, read as its first
/// non-admin user.
pub async fn read(config: &Config) -> anyhow::Result<Option<Active>> {
    let shard = config
        .shards
        .get(config.default_shard)
        .context("the config has no default shard")?;
    let (client, connection) = connect(config, shard).await?;
    let result = async {
        let row = match client
            .query_opt(
                "SELECT id, source_yaml, target_yaml, phase FROM shardline.migrations \
                 WHERE phase <> 'aborted' ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
        {
            Ok(row) => row,
            // No catalog: no migration ever ran.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.get(0);
        let phase_text: String = row.get(3);
        let Some(phase) = Phase::parse(&phase_text) else {
            bail!("the catalog holds phase {phase_text:?}, which this shardline does not know");
        };
        let parse = |text: &str, which: &str| {
            Config::from_yaml(text)
                .map_err(|e| anyhow::anyhow!("the {which} layout of migration {id} is invalid: {e}"))
        };
        let source = parse(row.get(1), "source")?;
        let target = parse(row.get(2), "target")?;
        let layout = Layout::between(source, target)
            .with_context(|| format!("migration {id} in the catalog"))?;
        let shapes = client
            .query(
                "SELECT table_name, columns, unique_key FROM shardline.moving_tables WHERE migration = $1",
                &[&id],
            )
            .await?
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    TableShape {
                        columns: row.get(1),
                        unique_key: row.get(2),
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        Ok(Some(Active {
            id,
            phase,
            layout,
            shapes,
        }))
    }
    .await;
    drop(client);
    let _ = connection.await;
    result
}

/// Runs `sql`, a script of idempotent `CREATE … IF NOT EXISTS` statements, on `client`.
/// Another session creating one of the same objects at the same moment (another proxy, or
/// another script creating the same schema) makes `IF NOT EXISTS` fail with a duplicate
/// error; the script is then run once more, when those objects exist.
pub async fn install(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    const RACED: [SqlState; 3] = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_SCHEMA,
    ];
    match client.batch_execute(sql).await {
        Err(e) if e.code().is_some_and(|code| RACED.contains(code)) => {
            // A script with a transaction block of its own leaves it failed.
            client.batch_execute("ROLLBACK").await?;
            client.batch_execute(sql).await
        }
        done => done,
    }
}

/// A control connection (not pooled) to `shard` as the first non-admin user of `config`; the
/// task driving it ends when the client is dropped.
pub async fn connect(
    config: &Config,
    shard: &Shard,
) -> anyhow::Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>)> {
    connect_to(config, shard, None, None).await
}

/// [`connect`] to `database` instead of the shard's own (or the user's), as `user` (one of
/// shards.yaml's, with its password for the shards) instead of the first.
pub async fn connect_to(
    config: &Config,
    shard: &Shard,
    database: Option<&str>,
    user: Option<&str>,
) -> anyhow::Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>)> {
    let user =
        match user {
            Some(name) => config
                .users
                .iter()
                .find(|u| u.name == name)
                .with_context(|| format!("user {name} is not in shards.yaml"))?,
            None => config.users.iter().find(|u| !u.admin).context(
                "shards.yaml lists no non-admin user for the proxy's control connections",
            )?,
        };
    let mut pg = tokio_postgres::Config::new();
    pg.host(&shard.host)
        .port(shard.port)
        .user(&user.name)
        .dbname(database.or(shard.database.as_deref()).unwrap_or(&user.name))
        .application_name("shardline")
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(password) = user.backend_password() {
        pg.password(password);
    }
    let unreachable = || {
        format!(
            "could not reach shard {} at {}:{}",
            shard.name, shard.host, shard.port
        )
    };
    // Encrypted as the shard's `tls` says, like the proxy's pooled connections.
    let tls = tls::control_tls(&mut pg, &shard.tls).map_err(anyhow::Error::msg)?;
    tls::open_control(&pg, tls).await.with_context(unreachable)
}
