//! Test harness: real PostgreSQL shards on free loopback ports (run as the `postgres` OS user
//! when the tests run as root), the proxy in front of them, and clients for both.
//!
//! Everything started here is stopped and deleted when the [`TestCluster`] is dropped.

pub mod buckets;
pub mod fault;
pub mod ops;
pub mod oracle;
pub mod txn;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use fault::FaultProxy;
use shardline::localpg::{free_ports, ClusterOptions, LocalCluster};
use shardline::Proxy;
use shardline_router::config::TableRule;
use shardline_router::{Config, KeyValue};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, NoTls};

/// Sends the proxy's log to the test's captured output, so a failing test shows what the
/// proxy did (`RUST_LOG` filters it; warnings and up by default). Once per test binary.
fn show_proxy_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // An error only means a subscriber is already installed: the first test's stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Shards plus a proxy, for one test.
pub struct TestCluster {
    pub pg: LocalCluster,
    pub proxy: Proxy,
    pub config: Config,
    pub yaml: String,
    /// The fault proxy in front of one shard, for clusters started with
    /// [`TestCluster::start_faulty`].
    pub fault: Option<FaultProxy>,
}

/// The tables every test cluster shards (the same shapes as the repository's `shards.yaml`,
/// plus `accounts` keyed by text and `devices` keyed by uuid).
pub fn tables_yaml(shards: usize) -> String {
    let mut yaml = String::from(
        "tables:\n\
         \x20 - {name: users, sharding: hash, column: id, type: int8}\n\
         \x20 - {name: orders, sharding: hash, column: user_id, type: int8}\n\
         \x20 - {name: accounts, sharding: hash, column: email, type: text}\n\
         \x20 - {name: devices, sharding: hash, column: id, type: uuid}\n\
         \x20 - {name: pgbench_accounts, sharding: hash, column: aid, type: int4}\n\
         \x20 - {name: countries, sharding: reference}\n\
         \x20 - name: events\n    sharding: range\n    column: id\n    type: int8\n    ranges:\n",
    );
    for i in 0..shards {
        let from = if i == 0 {
            String::new()
        } else {
            format!("from: {}, ", i * 1000)
        };
        let to = if i + 1 == shards {
            String::new()
        } else {
            format!("to: {}, ", (i + 1) * 1000)
        };
        yaml.push_str(&format!("      - {{{from}{to}shard: s{i}}}\n"));
    }
    yaml
}

/// A unique scratch directory for one test's servers.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("shardline-test-{label}-{}-{n}", std::process::id()))
}

impl TestCluster {
    /// Starts `shards` PostgreSQL servers and a proxy in transaction pooling mode.
    pub async fn start(label: &str, shards: usize) -> anyhow::Result<TestCluster> {
        Self::start_with(label, shards, "").await
    }

    /// Like [`TestCluster::start`], with extra top-level YAML (e.g. a `pool:` section).
    pub async fn start_with(
        label: &str,
        shards: usize,
        extra_yaml: &str,
    ) -> anyhow::Result<TestCluster> {
        Self::start_serving(label, shards, extra_yaml, None).await
    }

    /// Like [`TestCluster::start_with`], the shards serving TLS with `shard_identity` (a
    /// certificate and key) when given.
    pub async fn start_serving(
        label: &str,
        shards: usize,
        extra_yaml: &str,
        shard_identity: Option<shardline::tls::authority::Issued>,
    ) -> anyhow::Result<TestCluster> {
        Self::launch(label, shards, extra_yaml, shard_identity, None).await
    }

    /// Like [`TestCluster::start_with`], the proxy reaching shard `faulty` through a
    /// [`FaultProxy`] (in [`TestCluster::fault`]) that tests make misbehave.
    pub async fn start_faulty(
        label: &str,
        shards: usize,
        extra_yaml: &str,
        faulty: usize,
    ) -> anyhow::Result<TestCluster> {
        Self::launch(label, shards, extra_yaml, None, Some(faulty)).await
    }

    async fn launch(
        label: &str,
        shards: usize,
        extra_yaml: &str,
        shard_identity: Option<shardline::tls::authority::Issued>,
        faulty: Option<usize>,
    ) -> anyhow::Result<TestCluster> {
        let ports = free_ports(shards);
        let mut opts = ClusterOptions::new(scratch_dir(label), ports.clone());
        opts.keep_data = false;
        opts.reuse_existing = false;
        opts.tls = shard_identity;
        let pg = tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
        let mut yaml = String::from(
            "listen: 127.0.0.1:0\nusers:\n  - {name: app, password: app}\n  - {name: md5user, password: app, auth: md5, server_password: app}\nshards:\n",
        );
        let mut fault = None;
        for (i, p) in ports.iter().enumerate() {
            let mut port = *p;
            if faulty == Some(i) {
                let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?;
                port = proxy.port;
                fault = Some(proxy);
            }
            yaml.push_str(&format!(
                "  - {{name: s{i}, host: 127.0.0.1, port: {port}, database: app}}\n"
            ));
        }
        yaml.push_str(extra_yaml);
        yaml.push_str(&tables_yaml(shards));
        let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}\n{yaml}"))?;
        show_proxy_logs();
        let proxy = Proxy::start(config.clone()).await?;
        Ok(TestCluster {
            pg,
            proxy,
            config,
            yaml,
            fault,
        })
    }

    /// libpq/tokio-postgres connection string for the proxy.
    pub fn proxy_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app dbname=app",
            self.proxy.addr.port()
        )
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// A tokio-postgres client through the proxy.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.proxy_conninfo()).await
    }

    /// A tokio-postgres client straight to shard `i`, bypassing the proxy.
    pub async fn shard(&self, i: usize) -> anyhow::Result<Client> {
        let server = self
            .pg
            .servers()
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("no shard {i}"))?;
        connect(&server.app_conninfo()).await
    }

    /// The sharding rule of `table` in this cluster's config.
    pub fn rule(&self, table: &str) -> anyhow::Result<TableRule> {
        self.config
            .table(table)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("table {table} is not in the test config"))
    }

    /// The shard the router places integer key `key` of `table` on.
    pub fn shard_of(&self, table: &str, key: i64) -> anyhow::Result<usize> {
        Ok(self.rule(table)?.shard_for(&KeyValue::Int(key))?)
    }

    /// Counts the rows of `table` on every shard, read from each shard directly, checking that
    /// each is on the shard the router places its `key` column on (`text_key`: the key is
    /// text, else an integer) and that no prepared transaction was left behind.
    pub async fn placed_rows(
        &self,
        table: &str,
        key: &str,
        text_key: bool,
    ) -> anyhow::Result<usize> {
        let rule = self.rule(table)?;
        let mut total = 0;
        for i in 0..self.shard_count() {
            let shard = self.shard(i).await?;
            for row in shard
                .query(&format!("SELECT {key}::text FROM {table}"), &[])
                .await?
            {
                let value: String = row.get(0);
                let key_value = if text_key {
                    KeyValue::Text(value.clone())
                } else {
                    KeyValue::Int(value.parse()?)
                };
                anyhow::ensure!(
                    rule.shard_for(&key_value)? == i,
                    "{table} row {value} is on shard {i}, not where the router places it"
                );
                total += 1;
            }
            let prepared: i64 = shard
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await?
                .get(0);
            anyhow::ensure!(prepared == 0, "prepared transactions left on shard {i}");
        }
        Ok(total)
    }

    /// Runs psql as app/app through the proxy (stopping at the first error) with extra
    /// arguments; returns (success, stdout, stderr).
    pub fn psql(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        psql_at(self.port(), &[("PGPASSWORD", "app")], args)
    }

    /// A plain database `oracle` on shard 0's server, the unsharded PostgreSQL a differential
    /// test compares the proxy with.
    pub async fn oracle(&self) -> anyhow::Result<Client> {
        let server = self
            .pg
            .servers()
            .first()
            .ok_or_else(|| anyhow::anyhow!("the cluster has no server"))?;
        let admin = connect(&server.superuser_conninfo()).await?;
        admin
            .batch_execute("CREATE DATABASE oracle OWNER app")
            .await?;
        connect(&server.app_conninfo().replace("dbname=app", "dbname=oracle")).await
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.pg.servers().len()
    }
}

/// Connects with tokio-postgres and drives the connection on a task.
pub async fn connect(conninfo: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Rows of a simple-protocol query as text (`None` for NULL), as a differential test compares
/// them with an oracle's.
pub type TextRows = Vec<Vec<Option<String>>>;

/// Runs `sql` in the simple protocol and returns its rows as text; the error names the query.
pub async fn text_rows(client: &Client, sql: &str) -> anyhow::Result<TextRows> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A value exactly as the server sent it in binary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Rows of an extended-protocol query with binary results, and the column types: what a
/// differential test compares byte for byte.
pub async fn binary_rows(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<(Vec<Vec<Raw>>, Vec<Type>)> {
    let rows = client
        .query(sql, params)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?;
    let types = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.type_().clone()).collect())
        .unwrap_or_default();
    let values = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.try_get::<_, Raw>(i)).collect())
        .collect::<Result<_, _>>()?;
    Ok((values, types))
}

/// Runs a command, returning (success, stdout, stderr).
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<(bool, String, String)> {
    let output = cmd.output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The SQLSTATE of a failed connection or query, if the server (or proxy) sent one.
pub fn sqlstate(error: &anyhow::Error) -> Option<tokio_postgres::error::SqlState> {
    error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code().cloned())
}

/// Runs psql as `app` on database `app` at 127.0.0.1:`port` (stopping at the first error)
/// with `env` (libpq's `PG…` variables: password, sslmode, certificates) and extra
/// arguments; returns (success, stdout, stderr). `PGPASSWORD` is unset unless `env` sets it.
pub fn psql_at(
    port: u16,
    env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut command = std::process::Command::new("psql");
    command.env_remove("PGPASSWORD").envs(env.iter().copied());
    run(command
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            "app",
            "-p",
        ])
        .arg(port.to_string())
        .args(args))
}

/// The SQLSTATE `sql` (simple protocol) fails with; `None` when it succeeds.
pub async fn failure_code(client: &Client, sql: &str) -> Option<tokio_postgres::error::SqlState> {
    client
        .simple_query(sql)
        .await
        .err()
        .and_then(|e| e.code().cloned())
}

/// Temporary tables in the database `client` reads, whoever made them: a statement that
/// staged rows in one must leave none behind.
pub async fn temporary_tables(client: &Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
            &[],
        )
        .await?
        .get(0))
}
