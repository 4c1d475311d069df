//! Tests of the local clusters: finding binaries, picking ports, quoting connection strings,
//! and real two-server clusters (password auth, data kept or discarded, stop on drop).

use anyhow::Result;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::server::conninfo_value;
use super::tools::{is_executable, parse_version, SERVER_BINARIES};
use super::{find_pg_bindir, free_port, free_ports, ClusterOptions, LocalCluster};

/// A fresh directory under the system temp dir, removed (best effort) when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> Result<TestDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "shardline-localpg-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path)?;
        Ok(TestDir(path))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Connects with tokio-postgres and drives the connection on a background task.
async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Starts a cluster off the async runtime's worker threads.
async fn start(opts: ClusterOptions) -> Result<LocalCluster> {
    tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await?
}

#[test]
fn finds_a_bindir_with_all_three_programs() -> Result<()> {
    let bindir = find_pg_bindir()?;
    for program in SERVER_BINARIES {
        assert!(is_executable(&bindir.join(program)), "{program} missing");
    }
    Ok(())
}

#[test]
fn versions_sort_numerically() {
    let mut versions = vec![
        parse_version("9.6"),
        parse_version("16"),
        parse_version("15"),
    ];
    versions.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        versions,
        vec![Some(vec![16]), Some(vec![15]), Some(vec![9, 6])]
    );
    assert_eq!(parse_version("main"), None);
}

#[test]
fn free_ports_are_distinct_and_nonzero() {
    let ports = free_ports(8);
    assert_eq!(ports.len(), 8);
    for (i, port) in ports.iter().enumerate() {
        assert_ne!(*port, 0);
        assert!(!ports[..i].contains(port));
    }
    assert_ne!(free_port(), 0);
}

#[test]
fn conninfo_values_are_quoted_when_needed() {
    assert_eq!(conninfo_value("app"), "app");
    assert_eq!(conninfo_value(""), "''");
    assert_eq!(conninfo_value("a b"), "'a b'");
    assert_eq!(conninfo_value("it's"), "'it\\'s'");
    assert_eq!(conninfo_value("back\\slash"), "'back\\\\slash'");
}

#[test]
fn bad_options_are_rejected_before_anything_runs() {
    let mut opts = ClusterOptions::new("/nonexistent/shardline", vec![]);
    assert!(LocalCluster::start(&opts).is_err());
    opts.ports = vec![5000, 5000];
    assert!(LocalCluster::start(&opts).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_password_auth_and_data_reuse() -> Result<()> {
    let tmp = TestDir::new("reuse")?;
    let dir = tmp.0.join("cluster");
    let ports = free_ports(2);

    // First run: fresh data directories, kept after stop.
    let mut opts = ClusterOptions::new(&dir, ports.clone());
    opts.max_connections = 20;
    opts.reuse_existing = true;
    opts.keep_data = true;
    let mut cluster = start(opts.clone()).await?;
    assert_eq!(cluster.ports(), ports);
    assert_eq!(cluster.servers().len(), 2);

    for server in cluster.servers() {
        assert_eq!(server.host(), "127.0.0.1");
        let client = connect(&server.app_conninfo()).await?;
        let row = client.query_one("SELECT 1::int4", &[]).await?;
        assert_eq!(row.get::<_, i32>(0), 1);
        // The app role owns schema public, so it can create tables there.
        client
            .batch_execute(&format!(
                "CREATE TABLE kept (shard int); INSERT INTO kept VALUES ({})",
                server.index()
            ))
            .await?;

        // TCP requires the right password.
        let wrong = format!(
            "host=127.0.0.1 port={} user=app password=wrong dbname=app",
            server.port()
        );
        let err = match connect(&wrong).await {
            Ok(_) => anyhow::bail!("a wrong password was accepted on port {}", server.port()),
            Err(err) => err,
        };
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{err}"
        );

        // The superuser reaches the server over the unix socket without a password.
        let admin = connect(&server.superuser_conninfo()).await?;
        let row = admin
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        assert!(row.get::<_, bool>(0));
        let row = admin
            .query_one("SHOW max_prepared_transactions", &[])
            .await?;
        assert_eq!(row.get::<_, String>(0), "20");
    }
    let data_dir = cluster.servers()[0].data_dir().to_path_buf();
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "keep_data kept the data"
    );

    // Second run on the same directory: data reused, then everything removed.
    opts.keep_data = false;
    let mut cluster = start(opts).await?;
    for server in cluster.servers() {
        let client = connect(&server.app_conninfo()).await?;
        let row = client.query_one("SELECT shard FROM kept", &[]).await?;
        assert_eq!(row.get::<_, i32>(0), server.index() as i32);
    }
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    assert!(
        !dir.exists(),
        "keep_data=false removed the cluster directory"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_start_discards_old_data_and_drop_stops_servers() -> Result<()> {
    let tmp = TestDir::new("fresh")?;
    let dir = tmp.0.join("cluster");
    let ports = free_ports(1);
    let mut opts = ClusterOptions::new(&dir, ports);
    opts.max_connections = 20;
    opts.keep_data = true;

    let cluster = start(opts.clone()).await?;
    {
        let client = connect(&cluster.servers()[0].app_conninfo()).await?;
        client.batch_execute("CREATE TABLE old (x int)").await?;
    }
    let data_dir = cluster.servers()[0].data_dir().to_path_buf();
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "dropping the cluster stopped the server"
    );

    opts.reuse_existing = false;
    opts.keep_data = false;
    let cluster = start(opts).await?;
    let client = connect(&cluster.servers()[0].app_conninfo()).await?;
    let row = client
        .query_one("SELECT to_regclass('public.old') IS NULL", &[])
        .await?;
    assert!(
        row.get::<_, bool>(0),
        "reuse_existing=false started from scratch"
    );
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    assert!(!dir.exists());
    Ok(())
}
