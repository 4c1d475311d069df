//! The `shardline` process and its signals, as an operator uses them: SIGHUP reloads the
//! config, SIGTERM lets an open transaction commit before the process exits, and a second
//! SIGTERM stops at once. With one serving thread and with three (clients spread over them);
//! and clients of two threads sharing a pool of one connection.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shardline::localpg::{free_port, free_ports, ClusterOptions, LocalCluster};
use support::{connect, connect_when_up, Shardline};
use tokio_postgres::{Client, SimpleQueryMessage};

fn config(port: u16, shard_port: u16, grace_s: u64, pool_size: usize) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nshutdown_grace_s: {grace_s}\npool:\n  size: {pool_size}\n\
         users:\n  - {{name: app, password: app}}\n  - {{name: admin, password: admin, admin: true}}\n\
         shards:\n  - {{name: s0, host: 127.0.0.1, port: {shard_port}, database: app}}\n"
    )
}

async fn config_value(admin: &Client, key: &str) -> anyhow::Result<String> {
    for message in admin.simple_query("SHOW CONFIG").await? {
        if let SimpleQueryMessage::Row(row) = message {
            if row.get(0) == Some(key) {
                return Ok(row.get(1).unwrap_or_default().to_owned());
            }
        }
    }
    anyhow::bail!("SHOW CONFIG has no {key}")
}

/// A `shardline` process in front of one shard, and the config file it was started with.
struct Running {
    cluster: LocalCluster,
    proxy: Shardline,
    port: u16,
    path: PathBuf,
    /// Holds the shard's data and the config file.
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts a shard and a proxy (with `args`) serving it, `grace_s` and `pool_size` in its
    /// config.
    async fn start(
        label: &str,
        grace_s: u64,
        pool_size: usize,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shardline-signals-{label}"))
            .tempdir()?;
        let mut opts = ClusterOptions::new(dir.path().join("data"), free_ports(1));
        opts.keep_data = false;
        opts.reuse_existing = false;
        let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
        let port = free_port();
        let path = dir.path().join("shards.yaml");
        std::fs::write(&path, config(port, cluster.ports()[0], grace_s, pool_size))?;
        let proxy = Shardline::start_with(&path, args)?;
        Ok(Running {
            cluster,
            proxy,
            port,
            path,
            _dir: dir,
        })
    }

    fn app_info(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app dbname=app",
            self.port
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_sigterm_lets_an_open_transaction_commit() -> anyhow::Result<()> {
    // The admin, the lock's holder and its waiter are served by three threads, one each.
    reload_wait_and_stop(&["--threads", "3"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_thread_reloads_serves_a_client_while_another_waits_and_stops() -> anyhow::Result<()> {
    reload_wait_and_stop(&["--threads", "1"]).await
}

/// SIGHUP reloads; a client waiting on a lock does not keep the one holding it from being
/// served; SIGTERM lets an open transaction commit, then the process exits.
async fn reload_wait_and_stop(args: &[&str]) -> anyhow::Result<()> {
    let Running {
        cluster,
        mut proxy,
        port,
        path,
        _dir,
    } = Running::start("term", 30, 20, args).await?;
    let shard_port = cluster.ports()[0];
    let app_info = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
    let admin_info =
        format!("host=127.0.0.1 port={port} user=admin password=admin dbname=shardline");
    let admin = connect_when_up(&admin_info).await?;
    assert_eq!(config_value(&admin, "version").await?, "1");

    // --no-watch: the edit waits for SIGHUP.
    std::fs::write(&path, config(port, shard_port, 30, 5))?;
    proxy.signal("HUP")?;
    let started = Instant::now();
    while config_value(&admin, "version").await? != "2" {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(config_value(&admin, "pool_size").await?, "5");

    // The waiter's statement waits on the shard for the holder's lock: only the holder's
    // COMMIT, served meanwhile, lets it finish.
    let direct = connect(&cluster.servers()[0].app_conninfo()).await?;
    let holder = connect_when_up(&app_info).await?;
    holder
        .batch_execute("CREATE TABLE held (id int); INSERT INTO held VALUES (0)")
        .await?;
    holder
        .batch_execute("BEGIN; UPDATE held SET id = id")
        .await?;
    let waiter = connect(&app_info).await?;
    let waiting = tokio::spawn(async move { waiter.batch_execute("UPDATE held SET id = 1").await });
    let started = Instant::now();
    while direct
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE 'UPDATE held SET id = 1%'",
            &[],
        )
        .await?
        .is_none()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the waiter never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), holder.batch_execute("COMMIT")).await??;
    tokio::time::timeout(Duration::from_secs(10), waiting).await???;

    let app = connect_when_up(&app_info).await?;
    app.batch_execute("CREATE TABLE t (id int); BEGIN; INSERT INTO t VALUES (1)")
        .await?;
    proxy.signal("TERM")?;
    let started = Instant::now();
    while connect(&app_info).await.is_ok() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(5),
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await?;
    let status = proxy.exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "{status}");

    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(n, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_stops_at_once() -> anyhow::Result<()> {
    let mut running = Running::start("twice", 600, 20, &[]).await?;
    let app = connect_when_up(&running.app_info()).await?;
    let proxy = &mut running.proxy;
    app.batch_execute("BEGIN; SELECT 1").await?;
    proxy.signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        proxy.0.try_wait()?.is_none(),
        "exited with a transaction open"
    );
    proxy.signal("TERM")?;
    let status = proxy.exit(Duration::from_secs(10)).await?;
    assert!(!status.success(), "a cut-short shutdown reports failure");
    assert!(app.batch_execute("COMMIT").await.is_err());
    Ok(())
}

/// With a pool of one, the connection one thread opened serves the other thread's client too:
/// in turn, and when that client waits for it to come back.
#[tokio::test(flavor = "multi_thread")]
async fn clients_of_two_threads_share_a_pool_of_one() -> anyhow::Result<()> {
    let running = Running::start("share", 30, 1, &["--threads", "2"]).await?;
    let app_info = running.app_info();
    // Accepted in turn: one client per thread.
    let first = connect_when_up(&app_info).await?;
    let second = connect(&app_info).await?;
    first.batch_execute("CREATE TABLE shared (id int)").await?;
    for i in 0..20 {
        first
            .batch_execute(&format!("INSERT INTO shared VALUES ({i})"))
            .await?;
        second
            .batch_execute(&format!(
                "BEGIN; INSERT INTO shared VALUES ({}); COMMIT",
                100 + i
            ))
            .await?;
    }
    // The second client waits for the one connection while the first holds it.
    first
        .batch_execute("BEGIN; INSERT INTO shared VALUES (-1)")
        .await?;
    let waiting = tokio::spawn(async move {
        second
            .query_one("SELECT count(*) FROM shared", &[])
            .await
            .map(|row| row.get::<_, i64>(0))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "served without the pool's one connection"
    );
    first.batch_execute("COMMIT").await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert_eq!(seen, 41, "the waiter sees every committed row");
    Ok(())
}
