//! Reloading `shards.yaml` while clients run: dozens of valid and invalid versions written by
//! rename and in place (the watcher), and delivered by SIGHUP and `RELOAD`, without one failed
//! client transaction; and re-addressing one shard, which rebuilds its pool only.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shardline_tests::fault::FaultProxy;
use shardline_tests::ops::{config_value, console, eventually, ops_yaml, show, ConfigFile, Load};
use shardline_tests::{connect, TestCluster};
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";

fn app_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app dbname=app")
}

/// One rewrite of the file in the reload test.
enum Variant {
    /// A valid config with this pool size.
    Valid(usize),
    /// An invalid config; the rejection must mention the text.
    Invalid(String, String),
}

/// The `step`-th config of the reload test: two valid versions, then an invalid one of three
/// kinds (a value out of range, broken YAML, a misspelt sharding with its line number).
fn variant(cluster: &TestCluster, step: usize) -> Variant {
    let valid = |size: usize| ops_yaml(cluster, &format!("pool:\n  size: {size}\n"));
    match (step % 3, step / 3 % 3) {
        (0 | 1, _) => Variant::Valid(5 + step),
        (_, 0) => Variant::Invalid(valid(0), "pool.size must be at least 1".into()),
        (_, 1) => Variant::Invalid(format!("{}  - {{name: broken", valid(99)), "broken".into()),
        _ => {
            let text = valid(99).replace("sharding: reference", "sharding: refrence");
            let line = text
                .lines()
                .position(|l| l.contains("refrence"))
                .map_or(0, |i| i + 1);
            Variant::Invalid(text, format!("line {line}: sharding"))
        }
    }
}

fn text_of(cluster: &TestCluster, variant: &Variant) -> String {
    match variant {
        Variant::Valid(size) => ops_yaml(cluster, &format!("pool:\n  size: {size}\n")),
        Variant::Invalid(text, _) => text.clone(),
    }
}

/// Waits until the console reports `version` (valid) or a rejection mentioning `needle`
/// (invalid, version unchanged); returns how long the change took to show.
async fn settled(admin: &Client, variant: &Variant, version: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually("the reload to settle", Duration::from_secs(10), || async {
        let served: u64 = config_value(admin, "version").await?.parse()?;
        let result = config_value(admin, "last_reload_result").await?;
        let error = config_value(admin, "last_reload_error").await?;
        Ok(match variant {
            Variant::Valid(_) => (served == version).then_some(()),
            Variant::Invalid(_, needle) => {
                anyhow::ensure!(served == version, "an invalid config took effect");
                (result == "rejected" && error.contains(needle.as_str())).then_some(())
            }
        })
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_by_every_trigger_fail_no_transaction() -> anyhow::Result<()> {
    let cluster = TestCluster::start("reload", 2).await?;
    cluster.client().await?.batch_execute(SCHEMA).await?;
    // One proxy watches its file (rewritten by rename and in place); the other only reloads
    // on SIGHUP and RELOAD, so each trigger is seen working on its own.
    let watched = ConfigFile::new("watched", &ops_yaml(&cluster, ""))?;
    let signalled = ConfigFile::new("signalled", &ops_yaml(&cluster, ""))?;
    let watching = watched.serve(true).await?;
    let listening = signalled.serve(false).await?;
    shardline::signals::reload_on_hangup(listening.ctx.clone())?;
    let load_watched = Load::start(&app_conninfo(watching.addr.port()), 3, 0).await?;
    let load_signalled = Load::start(&app_conninfo(listening.addr.port()), 3, 100_000_000).await?;
    let admin_watched = console(watching.addr.port()).await?;
    let admin_signalled = console(listening.addr.port()).await?;
    load_watched.progress(10).await?;
    load_signalled.progress(10).await?;

    let (mut version, mut slowest, mut rejected) = (1u64, Duration::ZERO, 0);
    for step in 0..30 {
        let change = variant(&cluster, step);
        let text = text_of(&cluster, &change);
        if matches!(change, Variant::Valid(_)) {
            version += 1;
        } else {
            rejected += 1;
        }
        if step % 2 == 0 {
            watched.replace(&text)?;
        } else {
            watched.overwrite(&text)?;
        }
        signalled.replace(&text)?;
        if step % 2 == 0 {
            let status = std::process::Command::new("kill")
                .args(["-HUP", &std::process::id().to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill -HUP failed");
        } else {
            let answer = admin_signalled.simple_query("RELOAD").await;
            match (&change, answer) {
                (Variant::Valid(_), Err(e)) => anyhow::bail!("valid RELOAD refused: {e}"),
                (Variant::Invalid(_, needle), Err(e)) => {
                    let db = e.as_db_error();
                    assert_eq!(db.map(|d| d.code().code()), Some("F0000"));
                    assert!(
                        db.is_some_and(|d| d.message().contains(needle.as_str())),
                        "{e:?}"
                    );
                }
                (Variant::Invalid(..), Ok(_)) => anyhow::bail!("invalid RELOAD accepted"),
                (Variant::Valid(_), Ok(_)) => {}
            }
        }
        slowest = slowest.max(settled(&admin_watched, &change, version).await?);
        slowest = slowest.max(settled(&admin_signalled, &change, version).await?);
        if let Variant::Valid(size) = change {
            for admin in [&admin_watched, &admin_signalled] {
                assert_eq!(config_value(admin, "pool_size").await?, size.to_string());
            }
        }
    }
    eprintln!("30 rewrites ({rejected} rejected) per proxy; slowest to show: {slowest:?}");

    // The final version is live: its pool size reaches the pools, and a table it adds is
    // routed by it (a reference table's DDL reaches every shard).
    let last = format!(
        "{}  - {{name: marker, sharding: reference}}\n",
        ops_yaml(&cluster, "pool:\n  size: 7\n")
    );
    watched.replace(&last)?;
    signalled.replace(&last)?;
    admin_signalled.simple_query("RELOAD").await?;
    version += 1;
    for (proxy, admin) in [(&watching, &admin_watched), (&listening, &admin_signalled)] {
        settled(admin, &Variant::Valid(7), version).await?;
        eventually("pools resized to 7", Duration::from_secs(10), || async {
            let sizes = show(admin, "SHOW POOLS").await?.column("max_size");
            Ok(sizes.iter().all(|s| s == "7").then_some(()))
        })
        .await?;
        let app = connect(&app_conninfo(proxy.addr.port())).await?;
        app.batch_execute("CREATE TABLE IF NOT EXISTS marker (id int)")
            .await?;
    }
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        let n: i64 = shard
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'marker'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(n, 1, "marker table missing on shard {i}");
    }

    for load in [load_watched, load_signalled] {
        let (committed, failures) = load.stop().await?;
        eprintln!("{committed} transactions committed during the reloads");
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            failures
        );
        assert!(committed > 30);
    }
    watching.stop().await;
    listening.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readdressing_a_shard_rebuilds_only_its_pool() -> anyhow::Result<()> {
    let cluster = TestCluster::start("readdress", 2).await?;
    cluster.client().await?.batch_execute(SCHEMA).await?;
    let yaml = ops_yaml(&cluster, "");
    let file = ConfigFile::new("readdress", &yaml)?;
    let proxy = file.serve(false).await?;
    let load = Load::start(&app_conninfo(proxy.addr.port()), 4, 0).await?;
    load.progress(40).await?;
    let admin = console(proxy.addr.port()).await?;

    let open_pools = |shard: &'static str| {
        let admin = &admin;
        async move {
            let pools = show(admin, "SHOW POOLS").await?.records();
            anyhow::Ok(
                pools
                    .into_iter()
                    .filter(|p| p["shard"] == shard && p["state"] == "open")
                    .collect::<Vec<_>>(),
            )
        }
    };
    let pids = |shard: &'static str| {
        let admin = &admin;
        async move {
            let servers = show(admin, "SHOW SERVERS").await?.records();
            anyhow::Ok(
                servers
                    .into_iter()
                    .filter(|s| s["shard"] == shard)
                    .map(|s| s["pid"].clone())
                    .collect::<BTreeSet<_>>(),
            )
        }
    };
    let s0_before = open_pools("s0").await?;
    let s1_before = open_pools("s1").await?;
    assert_eq!((s0_before.len(), s1_before.len()), (1, 1));
    let s0_pids_before = pids("s0").await?;

    // Move s1 to a forwarder's port while the clients keep going.
    let old_port = cluster.pg.servers()[1].port();
    let forwarder = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], old_port))).await?;
    let moved = yaml.replace(
        &format!("port: {old_port},"),
        &format!("port: {},", forwarder.port),
    );
    assert_ne!(moved, yaml);
    file.replace(&moved)?;
    admin.simple_query("RELOAD").await?;
    load.progress(40).await?;

    // s1's pool is rebuilt at the new address and the old one drains away; s0's pool and its
    // connections are the ones it had.
    let old = old_port.to_string();
    let s1_after = eventually(
        "s1's old pool to drain",
        Duration::from_secs(15),
        || async {
            let pools = show(&admin, "SHOW POOLS").await?.records();
            let drained = pools.iter().all(|p| p["port"] != old);
            let rebuilt = open_pools("s1").await?;
            Ok((drained && rebuilt.len() == 1).then_some(rebuilt))
        },
    )
    .await?;
    assert_eq!(s1_after[0]["port"], forwarder.port.to_string());
    assert_ne!(s1_after[0]["pool_id"], s1_before[0]["pool_id"]);
    assert!(forwarder.connections() > 0);
    let s0_after = open_pools("s0").await?;
    assert_eq!(s0_after.len(), 1);
    assert_eq!(s0_after[0]["pool_id"], s0_before[0]["pool_id"]);
    let s0_pids_after = pids("s0").await?;
    assert!(
        s0_pids_before.is_subset(&s0_pids_after),
        "s0 lost connections: {s0_pids_before:?} -> {s0_pids_after:?}"
    );

    let (committed, failures) = load.stop().await?;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures
    );
    eprintln!("{committed} transactions committed across the move");
    proxy.stop().await;
    Ok(())
}

/// A reload may not move a directory key: a file that re-points one is refused, the proxy keeps
/// routing the key to the shard holding its row, and `SHOW DIRECTORY` is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_would_move_a_directory_key_is_refused() -> anyhow::Result<()> {
    let cluster = TestCluster::start("reload-directory", 3).await?;
    let yaml = |shard: &str| {
        ops_yaml(&cluster, "").replacen(
            "tables:\n",
            &format!("tables:\n  - {{name: tenants, sharding: directory, fallback: hash, column: id, type: int8, shards: [s0, s1], directory: [{{key: 42, shard: {shard}}}]}}\n"),
            1,
        )
    };
    let file = ConfigFile::new("directory", &yaml("s2"))?;
    let proxy = file.serve(false).await?;
    let app = connect(&app_conninfo(proxy.addr.port())).await?;
    app.batch_execute("CREATE TABLE tenants (id bigint PRIMARY KEY, name text NOT NULL)")
        .await?;
    app.batch_execute("INSERT INTO tenants (id, name) VALUES (42, 'hot'), (7, 'cold')")
        .await?;
    let on_s2 = |shard: Client| async move {
        let rows = shard
            .query("SELECT id FROM tenants ORDER BY id", &[])
            .await?;
        anyhow::Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
    };
    assert_eq!(on_s2(cluster.shard(2).await?).await?, [42]);

    file.replace(&yaml("s0"))?;
    let outcome = proxy.reload().await;
    let refused = match &outcome {
        shardline::reload::ReloadOutcome::Rejected { error } => error.clone(),
        other => anyhow::bail!("a reload moved a directory key: {other:?}"),
    };
    assert!(
        refused.contains("key 42") && refused.contains("shardline-reshard"),
        "{refused}"
    );
    let admin = console(proxy.addr.port()).await?;
    let directory = show(&admin, "SHOW DIRECTORY").await?;
    assert_eq!(directory.rows, [["tenants", "42", "s2"]]);
    let name: String = app
        .query_one("SELECT name FROM tenants WHERE id = 42", &[])
        .await?
        .get(0);
    assert_eq!(name, "hot");
    proxy.stop().await;
    Ok(())
}
