//! Connections from the resharder to the shards of a layout, and what it reads about a table
//! before moving its rows.

use anyhow::{bail, Context};
use shardline::backend::tls::{control_tls, open_control};
use shardline_router::migration::images::{ident, TableShape};
use shardline_router::migration::Layout;
use shardline_router::Config;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::{Client, Row};

/// How the resharder logs in to shards.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    /// Database for shards whose entry in shards.yaml names none.
    pub database: String,
}

impl Login {
    /// The login of `user` (or of the first non-admin user) from `config`.
    pub fn from_config(config: &Config, user: Option<&str>) -> anyhow::Result<Login> {
        let found = match user {
            Some(name) => config.user(name),
            None => config.users.iter().find(|u| !u.admin),
        };
        let Some(found) = found else {
            bail!("no such user in the source shards.yaml; pass --user with one of its users");
        };
        Ok(Login {
            user: found.name.clone(),
            password: found.backend_password().map(str::to_owned),
            database: found.name.clone(),
        })
    }
}

/// A connection to shard `name` of `config`.
pub async fn connect(config: &Config, name: &str, login: &Login) -> anyhow::Result<Client> {
    let shard = config
        .shards
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("shard {name} is not in the layout"))?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&shard.host)
        .port(shard.port)
        .user(&login.user)
        .dbname(shard.database.as_deref().unwrap_or(&login.database))
        .application_name("shardline-reshard");
    if let Some(password) = &login.password {
        pg.password(password);
    }
    // Encrypted as the shard's `tls` in shards.yaml says, as the proxies reach it.
    let tls = control_tls(&mut pg, &shard.tls).map_err(anyhow::Error::msg)?;
    let (client, _connection) = open_control(&pg, tls).await.with_context(|| {
        format!(
            "could not connect to shard {name} at {}:{}",
            shard.host, shard.port
        )
    })?;
    Ok(client)
}

/// Reads the shape of `table` on a shard; an error naming the fix when the table has no
/// primary or unique key (rows could not be copied idempotently).
pub async fn read_shape(client: &Client, table: &str) -> anyhow::Result<TableShape> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&ident(table)])
        .await?
        .get(0);
    if exists.is_none() {
        bail!("table {table} does not exist on the source shard");
    }
    let columns = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&ident(table)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
    let unique_key: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indexrelid = ( \
                     SELECT indexrelid FROM pg_index \
                     WHERE indrelid = $1::text::regclass AND indisunique AND indpred IS NULL AND indexprs IS NULL \
                     ORDER BY indisprimary DESC, indexrelid LIMIT 1) \
                 ORDER BY k.pos",
                &[&ident(table)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
    if unique_key.is_empty() {
        bail!("table {table} has no primary key or unique key; resharding copies rows by key and needs one: add a primary key first");
    }
    Ok(TableShape {
        columns,
        unique_key,
    })
}

/// Connections to the shards of both layouts, opened once and reused: the cutover's pause
/// must not wait for logins.
pub struct Connections<'a> {
    layout: &'a Layout,
    login: &'a Login,
    open: tokio::sync::Mutex<HashMap<String, Arc<Client>>>,
}

impl<'a> Connections<'a> {
    /// No connection is opened until one is asked for.
    pub fn new(layout: &'a Layout, login: &'a Login) -> Connections<'a> {
        Connections {
            layout,
            login,
            open: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The connection to shard `name` (of either layout).
    pub async fn get(&self, name: &str) -> anyhow::Result<Arc<Client>> {
        let mut open = self.open.lock().await;
        if let Some(client) = open.get(name) {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let config = if self.layout.source.shard_id(name).is_some() {
            &self.layout.source
        } else {
            &self.layout.target
        };
        let client = Arc::new(connect(config, name, self.login).await?);
        open.insert(name.to_owned(), client.clone());
        Ok(client)
    }
}

/// The shard key of a row of `table` read as `key::text` in its first column. The reads leave
/// out rows whose key is NULL (no shard owns one in either layout, so it stays where it is);
/// one that comes anyway stops the command with what to do, not a panic.
pub fn row_key(row: &Row, table: &str) -> anyhow::Result<String> {
    row.try_get::<_, Option<String>>(0)?.with_context(|| {
        format!(
            "table {table} has a row whose shard key is NULL, which no shard owns; give it a key \
             or delete it on its shard, then run this again"
        )
    })
}

/// Drops the rows of `rows` whose shard key is `key`: a batch cut off by its row limit ends at
/// its last key, and the caller reads all of that key's rows again.
pub fn drop_key(rows: &mut Vec<Row>, key: &str, table: &str) -> anyhow::Result<()> {
    let keys = rows
        .iter()
        .map(|r| row_key(r, table))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut keys = keys.into_iter();
    // `retain` visits every row once, in order.
    rows.retain(|_| keys.next().is_some_and(|k| k != key));
    Ok(())
}
