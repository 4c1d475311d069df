//! The resharding workload and checker without a migration, on `items` hashed over 4 shards,
//! so that a failure of a resharding test using them is about the migration:
//!
//! - 8 clients (simple and extended protocol) through the proxy for 3 s: every answer matches
//!   the acknowledged states, nothing fails, every key ends exactly as acknowledged on its
//!   owner; then rows damaged on the shards directly are counted as lost, duplicated, left on
//!   a non-owner, wrong and resurrected;
//! - the proxy cut off mid-load (every client connection closed at once) and started again on
//!   the same port: the clients reconnect, settle the outcomes they lost by reading, and the
//!   keys still end exactly as acknowledged.

mod support;

use std::time::{Duration, Instant};

use shardline_router::Config;
use shardline_tests::TestCluster;
use support::{
    check_placement, owner_by, with_table, Report, Workload, WorkloadSpec, ITEMS_DDL,
    ITEMS_HASH_ALL,
};
use tokio_postgres::Client;

/// A 4-shard cluster whose config also hashes `items`, the table created on every shard, and
/// direct clients of the shards.
async fn setup(label: &str, listen: &str) -> anyhow::Result<(TestCluster, Config, Vec<Client>)> {
    let cluster = TestCluster::start(label, 4).await?;
    let yaml = with_table(&cluster.yaml, ITEMS_HASH_ALL).replace("listen: 127.0.0.1:0", listen);
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut shards = Vec::new();
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        shard.batch_execute(ITEMS_DDL).await?;
        shards.push(shard);
    }
    Ok((cluster, config, shards))
}

fn conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app dbname=app")
}

fn print_report(label: &str, report: &Report, elapsed: Duration) {
    println!("{label}: {report} in {elapsed:.1?}");
    for (code, message) in &report.error_examples {
        println!("  error {code}: {message}");
    }
    for line in report
        .read_mismatches
        .iter()
        .chain(&report.violations)
        .take(20)
    {
        println!("  {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_without_migration_is_exact() -> anyhow::Result<()> {
    let (_cluster, config, shards) = setup("workload-sanity", "listen: 127.0.0.1:0").await?;
    let proxy = shardline::Proxy::start(config.clone()).await?;
    let started = Instant::now();
    let workload = Workload::start(conninfo(proxy.addr.port()), WorkloadSpec::default()).await?;
    workload.progress(200, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = workload.stop().await?;
    print_report("workload", &report, started.elapsed());

    let rule = config
        .table("items")
        .ok_or_else(|| anyhow::anyhow!("no items rule"))?;
    let owner = owner_by(rule);
    let placement = check_placement(&report, &shards, &owner).await?;
    println!("placement: {placement}");
    for line in placement.problems.iter().take(20) {
        println!("  {line}");
    }
    let s = &report.stats;
    assert!(s.simple > 0 && s.extended > 0, "{report}");
    assert!(
        s.committed > 0 && s.rolled_back > 0 && s.provoked > 0,
        "{report}"
    );
    assert!(report.is_clean(), "{report}");
    assert!(
        report.errors.is_empty(),
        "no errors without a migration: {:?}",
        report.error_examples
    );
    assert_eq!(report.ambiguous, 0, "{report}");
    assert!(placement.is_perfect(), "{placement}");
    assert_eq!((placement.keys, placement.exact), (800, 800));
    assert_eq!(placement.other_row_count(), 0);

    // The checker sees damage: a present key deleted on its owner (lost), copied to another
    // shard (duplicated and left behind), changed (wrong value); an absent key inserted on
    // its owner (resurrected); and a row of no client's on a shard that does not own it.
    let present: Vec<i64> = report
        .states
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(id, _)| *id)
        .take(3)
        .collect();
    let absent = report
        .states
        .iter()
        .find(|(_, s)| s.is_none())
        .map(|(id, _)| *id)
        .ok_or_else(|| anyhow::anyhow!("no absent key"))?;
    let [lost, copied, changed] = present[..] else {
        anyhow::bail!("fewer than 3 present keys");
    };
    shards[owner(lost)]
        .execute("DELETE FROM items WHERE id = $1", &[&lost])
        .await?;
    shards[(owner(copied) + 1) % 4]
        .execute("INSERT INTO items VALUES ($1, 0, 1, 'copy')", &[&copied])
        .await?;
    shards[owner(changed)]
        .execute("UPDATE items SET val = val + 1 WHERE id = $1", &[&changed])
        .await?;
    shards[owner(absent)]
        .execute("INSERT INTO items VALUES ($1, 0, 1, 'back')", &[&absent])
        .await?;
    let stray = -5;
    shards[(owner(stray) + 1) % 4]
        .execute("INSERT INTO items VALUES ($1, 0, 1, 'stray')", &[&stray])
        .await?;
    let damaged = check_placement(&report, &shards, &owner).await?;
    println!("damaged: {damaged}");
    assert_eq!(
        damaged.to_string(),
        "keys 800: exact 796, lost 1, duplicated 1, resurrected 1, wrong value 1, left on old owner 1; other rows 1 (misplaced 1, duplicated 0)"
    );
    assert!(!damaged.is_perfect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_settles_outcomes_lost_to_a_proxy_cut() -> anyhow::Result<()> {
    let port = shardline::localpg::free_ports(1)[0];
    let listen = format!("listen: 127.0.0.1:{port}");
    let (_cluster, config, shards) = setup("workload-cut", &listen).await?;
    let proxy = shardline::Proxy::start(config.clone()).await?;
    let started = Instant::now();
    let spec = WorkloadSpec {
        pause: Duration::from_millis(1),
        ..WorkloadSpec::default()
    };
    let workload = Workload::start(conninfo(port), spec).await?;
    workload.progress(300, Duration::from_secs(20)).await?;
    // Every client connection closed at once, whatever it was doing; back 300 ms later.
    proxy.ctx.shutdown.close_now();
    proxy.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let proxy = shardline::Proxy::start(config.clone()).await?;
    workload.progress(300, Duration::from_secs(20)).await?;
    let report = workload.stop().await?;
    print_report("workload across a proxy cut", &report, started.elapsed());
    let rule = config
        .table("items")
        .ok_or_else(|| anyhow::anyhow!("no items rule"))?;
    let placement = check_placement(&report, &shards, owner_by(rule)).await?;
    println!("placement: {placement}");
    for line in placement.problems.iter().take(20) {
        println!("  {line}");
    }
    assert!(report.stats.reconnects > 0, "{report}");
    assert!(report.is_clean(), "{report}");
    assert!(placement.is_perfect(), "{placement}");
    proxy.stop().await;
    Ok(())
}
