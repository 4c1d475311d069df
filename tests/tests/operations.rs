//! Operations end to end: the admin console (documented columns, refusals), `/metrics` and
//! `/health`, and graceful shutdown. Reloads are in `reload.rs`.

use std::time::{Duration, Instant};

use shardline::reload::ReloadOutcome;
use shardline_tests::ops::{
    config_value, console, eventually, http_get, metric, ops_yaml, scrape, show, ConfigFile,
};
use shardline_tests::{connect, sqlstate, TestCluster};
use tokio_postgres::error::SqlState;

/// Columns of each `SHOW`, as the README documents them.
const COLUMNS: &[(&str, &[&str])] = &[
    (
        "SHOW SHARDS",
        &[
            "name", "host", "port", "database", "default", "paused", "health", "breaker",
        ],
    ),
    (
        "SHOW POOLS",
        &[
            "pool_id", "shard", "host", "port", "database", "user", "state", "max_size", "in_use",
            "idle", "waiting",
        ],
    ),
    (
        "SHOW CLIENTS",
        &[
            "id",
            "user",
            "database",
            "addr",
            "tls",
            "kind",
            "state",
            "backend_pids",
            "connected_s",
        ],
    ),
    (
        "SHOW SERVERS",
        &[
            "pid",
            "shard",
            "host",
            "port",
            "database",
            "user",
            "state",
            "client_id",
            "pool_id",
            "age_s",
        ],
    ),
    (
        "SHOW STATS",
        &[
            "shard",
            "transactions",
            "queries",
            "single_shard",
            "scatter",
            "errors",
            "avg_query_ms",
        ],
    ),
    ("SHOW CONFIG", &["key", "value"]),
    ("SHOW VERSION", &["version"]),
    (
        "SHOW INDOUBT",
        &["shard", "gid", "age_s", "decider", "decider_status", "fate"],
    ),
];

const SCHEMA: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";

fn app_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app dbname=app")
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_console_answers_with_the_documented_columns() -> anyhow::Result<()> {
    let cluster = TestCluster::start("admin", 2).await?;
    let file = ConfigFile::new("admin", &ops_yaml(&cluster, ""))?;
    let proxy = file.serve(false).await?;
    let port = proxy.addr.port();
    let app = connect(&app_conninfo(port)).await?;
    app.batch_execute(SCHEMA).await?;
    app.execute("INSERT INTO users (id, name) VALUES (1, 'a')", &[])
        .await?;
    app.batch_execute("BEGIN; SELECT * FROM users WHERE id = 1")
        .await?;

    let admin = console(port).await?;
    for (command, columns) in COLUMNS {
        let table = show(&admin, command).await?;
        assert_eq!(&table.columns, columns, "{command}");
        // Lower case works as well.
        let lower = show(&admin, &command.to_lowercase()).await?;
        assert_eq!(&lower.columns, columns, "{command}");
    }
    let shards = show(&admin, "SHOW SHARDS").await?;
    assert_eq!(shards.column("name"), ["s0", "s1"]);
    assert_eq!(shards.column("default"), ["yes", "no"]);
    let health = eventually("both shards up", Duration::from_secs(10), || async {
        let health = show(&admin, "SHOW SHARDS").await?.column("health");
        Ok(health.iter().all(|h| h == "up").then_some(health))
    })
    .await?;
    assert_eq!(health.len(), 2);

    // The app client sits in a transaction: it holds one backend, which SHOW SERVERS links
    // to it, and SHOW CLIENTS lists both clients.
    let clients = show(&admin, "SHOW CLIENTS").await?.records();
    let app_row = clients
        .iter()
        .find(|c| c["kind"] == "app")
        .ok_or_else(|| anyhow::anyhow!("no app client in {clients:?}"))?;
    assert_eq!(app_row["state"], "active");
    assert_eq!(app_row["user"], "app");
    assert!(clients
        .iter()
        .any(|c| c["kind"] == "console" && c["user"] == "admin"));
    let servers = show(&admin, "SHOW SERVERS").await?.records();
    let serving: Vec<_> = servers
        .iter()
        .filter(|s| s["client_id"] == app_row["id"])
        .collect();
    assert_eq!(serving.len(), 1, "{servers:?}");
    assert_eq!(serving[0]["state"], "active");
    assert_eq!(serving[0]["pid"], app_row["backend_pids"]);
    let backend_pid = serving[0]["pid"].clone();
    app.batch_execute("COMMIT").await?;
    // Once committed, the backend goes back to its pool (just after the client hears
    // `ReadyForQuery`): it serves nobody, and the client holds nothing.
    eventually(
        "the backend back in its pool",
        Duration::from_secs(5),
        || async {
            let servers = show(&admin, "SHOW SERVERS").await?.records();
            let back = servers
                .iter()
                .find(|s| s["pid"] == backend_pid)
                .ok_or_else(|| anyhow::anyhow!("backend {backend_pid} gone from {servers:?}"))?;
            let clients = show(&admin, "SHOW CLIENTS").await?.records();
            let app_row = clients
                .iter()
                .find(|c| c["kind"] == "app")
                .ok_or_else(|| anyhow::anyhow!("no app client in {clients:?}"))?;
            let server_free = back["state"] == "idle" && back["client_id"].is_empty();
            let client_free = app_row["state"] == "idle" && app_row["backend_pids"].is_empty();
            Ok((server_free && client_free).then_some(()))
        },
    )
    .await?;

    let pools = show(&admin, "SHOW POOLS").await?.records();
    assert!(pools
        .iter()
        .any(|p| p["shard"] == "s0" && p["user"] == "app" && p["state"] == "open"));
    assert_eq!(config_value(&admin, "version").await?, "1");
    assert_eq!(
        config_value(&admin, "file").await?,
        file.path.display().to_string()
    );
    let version = show(&admin, "SHOW VERSION").await?.column("version");
    assert!(version[0].starts_with("shardline "), "{version:?}");

    // Errors: unknown commands get a hint listing the commands; unknown shards name the known.
    let err = admin.simple_query("SHOW TABLES").await.err();
    let db = err.as_ref().and_then(|e| e.as_db_error());
    assert_eq!(db.map(|e| e.code()), Some(&SqlState::SYNTAX_ERROR));
    assert!(db
        .and_then(|e| e.hint())
        .is_some_and(|h| h.contains("SHOW SHARDS")));
    let err = admin.simple_query("PAUSE nowhere").await.err();
    let db = err.as_ref().and_then(|e| e.as_db_error());
    assert_eq!(db.map(|e| e.code()), Some(&SqlState::UNDEFINED_OBJECT));
    assert!(db
        .and_then(|e| e.hint())
        .is_some_and(|h| h.contains("s0, s1")));
    // Extended protocol is refused, and the console keeps working.
    let err = admin.query("SHOW SHARDS", &[]).await.err();
    assert!(err.is_some());
    // Two commands in one query: one version row, then two shard rows.
    assert_eq!(
        show(&admin, "SHOW VERSION; SHOW SHARDS").await?.rows.len(),
        3
    );

    // PAUSE and RESUME show in SHOW SHARDS; RESUME of a shard that is not paused is refused.
    admin.simple_query("PAUSE s1").await?;
    assert_eq!(
        show(&admin, "SHOW SHARDS").await?.column("paused"),
        ["no", "yes"]
    );
    admin.simple_query("RESUME s1").await?;
    assert_eq!(
        show(&admin, "SHOW SHARDS").await?.column("paused"),
        ["no", "no"]
    );
    let err = admin.simple_query("RESUME s1").await.err();
    assert_eq!(
        err.as_ref().and_then(|e| e.code()),
        Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
    );

    // Non-admin users may not use the console; admin users may use nothing else.
    let refused = connect(&format!(
        "host=127.0.0.1 port={port} user=app password=app dbname=shardline"
    ))
    .await;
    assert_eq!(
        refused.err().and_then(|e| sqlstate(&e)),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    let refused = connect(&format!(
        "host=127.0.0.1 port={port} user=admin password=admin dbname=app"
    ))
    .await;
    assert_eq!(
        refused.err().and_then(|e| sqlstate(&e)),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    let wrong = connect(&format!(
        "host=127.0.0.1 port={port} user=admin password=nope dbname=shardline"
    ))
    .await;
    assert_eq!(
        wrong.err().and_then(|e| sqlstate(&e)),
        Some(SqlState::INVALID_PASSWORD)
    );
    proxy.stop().await;
    Ok(())
}

/// The pool keeps `min_idle` connections open, grows to its size under load, and closes
/// connections idle past `idle_timeout_s` (back down to `min_idle`); what it counts, what
/// `SHOW SERVERS` lists and what the shard itself has open agree throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_keep_min_idle_open_and_close_connections_idle_too_long() -> anyhow::Result<()> {
    let cluster = TestCluster::start("pool-idle", 1).await?;
    let extra = "pool:\n  size: 4\n  min_idle: 2\n  idle_timeout_s: 1\n";
    let shard = cluster.shard(0).await?;
    let app_sessions = || async {
        let rows = shard
            .query(
                "SELECT pid::text FROM pg_stat_activity \
                 WHERE usename = 'app' AND pid <> pg_backend_pid() \
                 AND application_name <> 'shardline'",
                &[],
            )
            .await?;
        anyhow::Ok(
            rows.iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<Vec<_>>(),
        )
    };
    // Sessions of the cluster's own proxy, not this test's (nor either proxy's resolver, whose
    // control connections come and go as it looks for in-doubt transactions). That proxy warms
    // its pool (one connection) in its first maintenance pass, which on a loaded machine may
    // come after this test began: it is waited for, or it would count as this proxy's.
    let others = eventually(
        "the cluster's proxy warmed",
        Duration::from_secs(10),
        || async {
            let sessions = app_sessions().await?;
            Ok((!sessions.is_empty()).then_some(sessions))
        },
    )
    .await?;
    let file = ConfigFile::new("pool-idle", &ops_yaml(&cluster, extra))?;
    let proxy = file.serve(false).await?;
    let port = proxy.addr.port();
    let admin = console(port).await?;
    // The pool's open connections as it counts them, as SHOW SERVERS lists them, and as the
    // shard sees them (the proxy's backends log in as `app`).
    let counts = || async {
        let pool = show(&admin, "SHOW POOLS")
            .await?
            .records()
            .into_iter()
            .find(|p| p["user"] == "app")
            .map(|p| {
                let number = |c: &str| p[c].parse::<usize>().unwrap_or(usize::MAX);
                number("in_use") + number("idle")
            });
        let mut listed: Vec<String> = show(&admin, "SHOW SERVERS").await?.column("pid");
        listed.sort();
        let mut on_shard: Vec<String> = app_sessions()
            .await?
            .into_iter()
            .filter(|pid| !others.contains(pid))
            .collect();
        on_shard.sort();
        anyhow::Ok((pool, listed, on_shard))
    };
    let settled_at = |size: usize| {
        let counts = &counts;
        async move {
            let (pool, listed, on_shard) = counts().await?;
            Ok(
                (pool == Some(size) && listed.len() == size && listed == on_shard)
                    .then_some(listed),
            )
        }
    };
    // Once a client used the pool, it keeps min_idle connections open.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&app_conninfo(port)).await?);
    }
    clients[0].batch_execute("SELECT 1").await?;
    eventually("min_idle connections open", Duration::from_secs(10), || {
        settled_at(2)
    })
    .await?;

    // Four transactions at once need four connections.
    let held = futures::future::try_join_all(
        clients
            .iter()
            .map(|c| c.batch_execute("BEGIN; SELECT pg_sleep(0.5); COMMIT")),
    );
    held.await?;
    let grown = counts().await?;
    assert_eq!(grown.0, Some(4), "{grown:?}");
    assert_eq!(grown.1, grown.2, "{grown:?}");

    // Idle past a second, the extra ones close; min_idle stays.
    let kept = eventually("idle connections closed", Duration::from_secs(15), || {
        settled_at(2)
    })
    .await?;
    assert_eq!(kept.len(), 2);
    // The pool still serves.
    let row = clients[0].query_one("SELECT 1::int4", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() -> anyhow::Result<()> {
    let cluster = TestCluster::start("metrics", 2).await?;
    let file = ConfigFile::new("metrics", &ops_yaml(&cluster, ""))?;
    let proxy = file.serve(false).await?;
    let metrics = proxy
        .metrics_addr
        .ok_or_else(|| anyhow::anyhow!("metrics are configured"))?;
    eventually("/health to turn ready", Duration::from_secs(10), || async {
        Ok((http_get(metrics, "/health").await?.0 == 200).then_some(()))
    })
    .await?;

    let before = scrape(&proxy).await?;
    assert_eq!(metric(&before, "shardline_config_version", &[]), 1.0);
    assert_eq!(
        metric(&before, "shardline_shard_up", &[("shard", "s1")]),
        1.0
    );
    let checkouts = |s| metric(s, "shardline_pool_checkout_wait_seconds_count", &[]);
    let logins = |s| metric(s, "shardline_client_logins_total", &[("outcome", "ok")]);

    let app = connect(&app_conninfo(proxy.addr.port())).await?;
    app.batch_execute(SCHEMA).await?;
    for id in 0..20i64 {
        app.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&id])
            .await?;
    }
    let bad = connect(&format!(
        "host=127.0.0.1 port={} user=app password=wrong dbname=app",
        proxy.addr.port()
    ))
    .await;
    assert!(bad.is_err());

    let after = scrape(&proxy).await?;
    assert!(checkouts(&after) >= checkouts(&before) + 20.0);
    assert_eq!(logins(&after), logins(&before) + 1.0);
    assert_eq!(
        metric(
            &after,
            "shardline_client_logins_total",
            &[("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(metric(&after, "shardline_clients", &[("kind", "app")]), 1.0);
    assert!(
        metric(
            &after,
            "shardline_pool_connections",
            &[("shard", "s0"), ("state", "idle")]
        ) >= 1.0
    );
    for name in [
        "shardline_query_duration_seconds_count",
        "shardline_pool_waiting",
        "shardline_pool_max_size",
        "shardline_config_last_reload_ok",
        "shardline_shutting_down",
    ] {
        assert!(after.iter().any(|s| s.name == name), "{name} is missing");
    }

    // A rejected reload shows in the metrics and makes /health unready until fixed.
    file.replace("users: [")?;
    assert!(matches!(
        proxy.reload().await,
        ReloadOutcome::Rejected { .. }
    ));
    let rejected = scrape(&proxy).await?;
    assert_eq!(
        metric(&rejected, "shardline_config_last_reload_ok", &[]),
        0.0
    );
    assert_eq!(
        metric(
            &rejected,
            "shardline_config_reloads_total",
            &[("outcome", "rejected")]
        ),
        1.0
    );
    let (status, body) = http_get(metrics, "/health").await?;
    assert_eq!(status, 503);
    assert!(body.contains("rejected"), "{body}");
    file.replace(&ops_yaml(&cluster, "shutdown_grace_s: 7\n"))?;
    assert_eq!(proxy.reload().await, ReloadOutcome::Loaded { version: 2 });
    let fixed = scrape(&proxy).await?;
    assert_eq!(metric(&fixed, "shardline_config_version", &[]), 2.0);
    assert_eq!(http_get(metrics, "/health").await?.0, 200);
    assert_eq!(http_get(metrics, "/nothing").await?.0, 404);
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_an_open_transaction_commit() -> anyhow::Result<()> {
    let cluster = TestCluster::start("shutdown", 2).await?;
    cluster.client().await?.batch_execute(SCHEMA).await?;
    let file = ConfigFile::new("shutdown", &ops_yaml(&cluster, "shutdown_grace_s: 30\n"))?;
    let proxy = file.serve(false).await?;
    let port = proxy.addr.port();
    let open = connect(&app_conninfo(port)).await?;
    open.batch_execute("BEGIN; INSERT INTO users (id, name) VALUES (7, 'before')")
        .await?;
    let idle = connect(&app_conninfo(port)).await?;
    let admin = console(port).await?;
    admin.simple_query("SHUTDOWN").await?;

    // New connections are refused while the transaction is still open.
    eventually("the listener to close", Duration::from_secs(5), || async {
        Ok(connect(&app_conninfo(port)).await.is_err().then_some(()))
    })
    .await?;
    // The open transaction keeps working and commits.
    open.execute("UPDATE users SET name = 'committed' WHERE id = 7", &[])
        .await?;
    open.batch_execute("COMMIT").await?;
    let started = Instant::now();
    proxy.wait().await;
    // It closed once the transaction ended, not at the end of the grace period.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(idle.simple_query("SELECT 1").await.is_err());

    let mut names: Vec<String> = Vec::new();
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        for row in shard
            .query("SELECT name FROM users WHERE id = 7", &[])
            .await?
        {
            names.push(row.get::<_, String>(0));
        }
    }
    assert_eq!(names, ["committed"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_transactions_left_open_after_the_grace_period() -> anyhow::Result<()> {
    let cluster = TestCluster::start("grace", 1).await?;
    cluster.client().await?.batch_execute(SCHEMA).await?;
    let file = ConfigFile::new("grace", &ops_yaml(&cluster, "shutdown_grace_s: 1\n"))?;
    let proxy = file.serve(false).await?;
    let open = connect(&app_conninfo(proxy.addr.port())).await?;
    open.batch_execute("BEGIN; INSERT INTO users (id, name) VALUES (1, 'left open')")
        .await?;
    proxy.shutdown();
    proxy.wait().await;
    // The client is cut off. (Sending COMMIT here would race the cut: a COMMIT that reaches the
    // shard just before the connection drops commits, as it would on PostgreSQL itself.)
    eventually(
        "the client to be disconnected",
        Duration::from_secs(10),
        || async { Ok(open.is_closed().then_some(())) },
    )
    .await?;
    let shard = cluster.shard(0).await?;
    let n: i64 = eventually(
        "the backend to roll back",
        Duration::from_secs(10),
        || async {
            let n: i64 = shard
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
                    &[],
                )
                .await?
                .get(0);
            Ok((n == 0).then_some(n))
        },
    )
    .await?;
    assert_eq!(n, 0);
    let rows: i64 = shard
        .query_one("SELECT count(*) FROM users", &[])
        .await?
        .get(0);
    assert_eq!(rows, 0);
    Ok(())
}

#[test]
fn shipped_configs_enable_the_console_and_metrics() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (file, metrics) in [
        ("shards.yaml", "127.0.0.1:7432"),
        ("docker/shards.yaml", "0.0.0.0:7432"),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}"))?;
        let config = shardline_router::Config::from_yaml(&text)
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        assert!(config.user("admin").is_some_and(|u| u.admin), "{file}");
        assert_eq!(config.metrics_listen.as_deref(), Some(metrics), "{file}");
    }
    let compose = std::fs::read_to_string(format!("{root}/docker/compose.yaml"))?;
    assert!(
        compose.contains("\"7432:7432\""),
        "compose publishes the metrics port"
    );
    Ok(())
}
