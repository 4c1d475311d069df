//! Operations that rely on the session reporting to the proxy: per-shard statistics
//! (`SHOW STATS`, `shardline_queries_total`) and `PAUSE` holding new transactions while the
//! running ones finish.

use std::time::Duration;

use shardline_tests::ops::{console, eventually, metric, ops_yaml, scrape, show, ConfigFile};
use shardline_tests::{connect, TestCluster};

const SCHEMA: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";

fn app_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app dbname=app")
}

/// The shard the router puts `users.id = key` on, by name.
fn shard_of(cluster: &TestCluster, key: i64) -> String {
    let id = cluster
        .config
        .table("users")
        .and_then(|t| t.shard_for(&shardline_router::KeyValue::Int(key)).ok())
        .unwrap_or(0);
    format!("s{id}")
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_count_queries_per_shard_and_route_kind() -> anyhow::Result<()> {
    let cluster = TestCluster::start("stats", 2).await?;
    let file = ConfigFile::new("stats", &ops_yaml(&cluster, ""))?;
    let proxy = file.serve(false).await?;
    let app = connect(&app_conninfo(proxy.addr.port())).await?;
    app.batch_execute(SCHEMA).await?;
    let admin = console(proxy.addr.port()).await?;
    let before = scrape(&proxy).await?;
    let stats_before = show(&admin, "SHOW STATS").await?.records();

    let key = 42i64;
    let shard = shard_of(&cluster, key);
    for _ in 0..5 {
        app.query("SELECT name FROM users WHERE id = $1", &[&key])
            .await?;
    }
    app.query("SELECT id FROM users", &[]).await?;
    assert!(app
        .simple_query("SELECT no_such_column FROM users WHERE id = 42")
        .await
        .is_err());
    // A request's statistics are recorded after its answer is flushed, before the session
    // reads the next one: once this answer arrives, the error above is counted.
    app.simple_query("SELECT 1").await?;

    let after = scrape(&proxy).await?;
    let queries = |s, route| {
        metric(
            s,
            "shardline_queries_total",
            &[("shard", shard.as_str()), ("route", route)],
        )
    };
    assert!(queries(&after, "single") >= queries(&before, "single") + 6.0);
    assert!(queries(&after, "scatter") >= queries(&before, "scatter") + 1.0);
    let errors = |s| {
        metric(
            s,
            "shardline_query_errors_total",
            &[("shard", shard.as_str())],
        )
    };
    assert!(errors(&after) > errors(&before));
    assert!(
        metric(
            &after,
            "shardline_query_duration_seconds_count",
            &[("route", "single")]
        ) >= metric(
            &before,
            "shardline_query_duration_seconds_count",
            &[("route", "single")]
        ) + 6.0
    );

    let count = |rows: &[std::collections::BTreeMap<String, String>], column: &str| {
        rows.iter()
            .find(|r| r["shard"] == shard)
            .and_then(|r| r[column].parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stats_after = show(&admin, "SHOW STATS").await?.records();
    for (column, at_least) in [
        ("single_shard", 6),
        ("scatter", 1),
        ("transactions", 7),
        ("errors", 1),
    ] {
        assert!(
            count(&stats_after, column) >= count(&stats_before, column) + at_least,
            "{column}: {stats_before:?} -> {stats_after:?}"
        );
    }
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_new_transactions_until_resume() -> anyhow::Result<()> {
    let cluster = TestCluster::start("pause", 2).await?;
    let file = ConfigFile::new("pause", &ops_yaml(&cluster, ""))?;
    let proxy = file.serve(false).await?;
    let port = proxy.addr.port();
    let setup = connect(&app_conninfo(port)).await?;
    setup.batch_execute(SCHEMA).await?;
    // s1 is paused; s0 is the default shard, where drivers' statement preparation goes.
    let key = (1i64..).find(|k| shard_of(&cluster, *k) == "s1");
    let other = (1i64..).find(|k| shard_of(&cluster, *k) == "s0");
    let (Some(key), Some(other)) = (key, other) else {
        anyhow::bail!("no keys for both shards");
    };

    // A transaction running on s1 when PAUSE s1 arrives: PAUSE waits for it.
    let running = connect(&app_conninfo(port)).await?;
    running.batch_execute("BEGIN").await?;
    running
        .execute(
            "INSERT INTO users (id, name) VALUES ($1, 'running')",
            &[&key],
        )
        .await?;
    let admin = console(port).await?;
    let pause = tokio::spawn(async move {
        admin.simple_query("PAUSE s1").await?;
        anyhow::Ok(admin)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction running"
    );
    running.batch_execute("COMMIT").await?;
    let admin = tokio::time::timeout(Duration::from_secs(10), pause).await???;
    assert_eq!(
        show(&admin, "SHOW SHARDS").await?.column("paused"),
        ["no", "yes"]
    );

    // New work on s1 waits; s0 is not paused.
    let waiting = connect(&app_conninfo(port)).await?;
    let held = tokio::spawn(async move {
        waiting
            .query_one("SELECT name FROM users WHERE id = $1", &[&key])
            .await
            .map(|row| row.get::<_, String>(0))
    });
    let free = connect(&app_conninfo(port)).await?;
    free.query("SELECT name FROM users WHERE id = $1", &[&other])
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a new transaction ran on a paused shard"
    );
    admin.simple_query("RESUME s1").await?;
    let name = tokio::time::timeout(Duration::from_secs(10), held).await???;
    assert_eq!(name, "running");
    eventually("nothing paused", Duration::from_secs(5), || async {
        let paused = show(&admin, "SHOW SHARDS").await?.column("paused");
        Ok(paused.iter().all(|p| p == "no").then_some(()))
    })
    .await?;
    proxy.stop().await;
    Ok(())
}
