//! The integrity test of resharding: concurrent clients (simple and extended protocol, some in
//! multi-statement transactions) insert, update, delete and upsert keys that move and keys
//! that do not, through the proxy, across plan → start → verify → cutover → cleanup. Then every
//! key must be on exactly its new owner with exactly its last acknowledged state (0 lost, 0
//! duplicated, 0 resurrected, nothing left on an old owner) and every read during the
//! migration must have returned an acknowledged value.
//!
//! - hash 2 → 4, with the resharder SIGKILLed mid-backfill and resumed, and the proxy
//!   restarted while it dual-writes;
//! - a range split, with a second proxy that is never told about the cutover: its write to a
//!   moved key fails on the fence and leaves nothing on the old owner;
//! - bucketed hash 3 → 5 shards (whole buckets reassigned, about 40% of the rows);
//! - a directory table moving one hot key (written by a client all the time) to a shard of its
//!   own, next to a key the directory already placed.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardline_router::{Config, KeyValue};
use shardline_tests::buckets::{bucketed_rule, FIVE_SHARDS, THREE_SHARDS};
use shardline_tests::{scratch_dir, TestCluster};
use support::{check_placement, owner_by, with_table, Workload, WorkloadSpec, ITEMS_DDL};
use tokio_postgres::Client;

const ADMIN: &str = "  - {name: admin, password: admin, admin: true}\n";

/// The files and processes of one migration.
struct Migration {
    dir: std::path::PathBuf,
    proxy_admin: String,
}

impl Migration {
    fn command(&self, step: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardline-reshard"));
        command
            .arg(step)
            .args(["--from", &self.dir.join("from.yaml").to_string_lossy()])
            .args(extra)
            .current_dir(&self.dir);
        if step != "status" {
            command.args(["--to", &self.dir.join("to.yaml").to_string_lossy()]);
        }
        if matches!(step, "start" | "cutover" | "abort") {
            command.args(["--proxy", &self.proxy_admin]);
        }
        command
    }

    /// Runs a step to completion; its output, or an error with it.
    fn run(&self, step: &str, extra: &[&str]) -> anyhow::Result<String> {
        let output = self.command(step, extra).output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("$ shardline-reshard {step} {}\n{text}", extra.join(" "));
        anyhow::ensure!(output.status.success(), "{step} failed:\n{text}");
        Ok(text)
    }

    fn spawn(&self, step: &str, extra: &[&str]) -> anyhow::Result<Child> {
        Ok(self
            .command(step, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }
}

fn parse(yaml: &str) -> anyhow::Result<Config> {
    Config::from_yaml(yaml).map_err(|e| anyhow::anyhow!("{e}\n{yaml}"))
}

/// Source and target configs for `items`, the table created on the source shards, the files
/// written, and direct clients of every shard.
async fn setup(
    cluster: &TestCluster,
    label: &str,
    source_rule: &str,
    target_rule: &str,
    port: u16,
) -> anyhow::Result<(Migration, Config, Config, Vec<Client>)> {
    let base = cluster
        .yaml
        // A restarted proxy should not keep its old clients waiting long.
        .replace(
            "listen: 127.0.0.1:0",
            &format!("listen: 127.0.0.1:{port}\nshutdown_grace_s: 2"),
        )
        .replacen("users:\n", &format!("users:\n{ADMIN}"), 1);
    let source_yaml = with_table(&base, source_rule);
    let target_yaml = with_table(&base, target_rule);
    let (source, target) = (parse(&source_yaml)?, parse(&target_yaml)?);
    let dir = scratch_dir(label);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("from.yaml"), &source_yaml)?;
    std::fs::write(dir.join("to.yaml"), &target_yaml)?;
    let rule = source
        .table("items")
        .ok_or_else(|| anyhow::anyhow!("no items rule"))?;
    let mut shards = Vec::new();
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        if rule.shards(source.shards.len()).contains(&i) {
            shard.batch_execute(ITEMS_DDL).await?;
        }
        shards.push(shard);
    }
    let migration = Migration {
        dir,
        proxy_admin: format!("127.0.0.1:{port}"),
    };
    Ok((migration, source, target, shards))
}

fn conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app dbname=app")
}

/// Waits for a spawned `start` to finish successfully.
async fn wait_for(mut child: Child) -> anyhow::Result<()> {
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    anyhow::ensure!(status.success(), "start exited with {status}");
    Ok(())
}

/// Asserts the outcome and prints the counts the issue asks for.
async fn check(workload: Workload, shards: &[Client], target: &Config) -> anyhow::Result<()> {
    let report = workload.stop().await?;
    println!("{report}");
    for (code, example) in &report.error_examples {
        println!("  error {code}: {example}");
    }
    let rule = target
        .table("items")
        .ok_or_else(|| anyhow::anyhow!("no items rule"))?;
    let placement = check_placement(&report, shards, owner_by(rule)).await?;
    println!("{placement}");
    assert!(report.acked > 500, "the workload barely ran: {report}");
    assert!(
        report.is_clean(),
        "the workload saw a wrong answer: {report}"
    );
    assert!(placement.is_perfect(), "{placement}");
    Ok(())
}

fn paused_ms(cutover_output: &str) -> Option<u64> {
    let after = cutover_output.split("paused for ").nth(1)?;
    after.split(' ').next()?.parse().ok()
}

/// A proxy serving `source` on `port` and the workload running through it (300 acknowledged
/// operations in).
async fn serve_under_load(
    source: &Config,
    port: u16,
) -> anyhow::Result<(shardline::Proxy, Workload)> {
    let proxy = shardline::Proxy::start(source.clone()).await?;
    let spec = WorkloadSpec {
        initial_rows: 60,
        ..WorkloadSpec::default()
    };
    let workload = Workload::start(conninfo(port), spec).await?;
    workload.progress(300, Duration::from_secs(60)).await?;
    Ok((proxy, workload))
}

/// Backfills to the end, verifies, cuts over (printing the write pause) and cleans up while
/// the workload writes, then checks the outcome.
async fn finish(
    migration: &Migration,
    workload: Workload,
    shards: &[Client],
    target: &Config,
) -> anyhow::Result<()> {
    wait_for(migration.spawn("start", &["--batch", "200"])?).await?;
    workload.progress(200, Duration::from_secs(60)).await?;
    let verified = migration.run("verify", &[])?;
    assert!(!verified.contains("STILL DIFFERS"), "{verified}");
    let cutover = migration.run("cutover", &[])?;
    let paused =
        paused_ms(&cutover).ok_or_else(|| anyhow::anyhow!("no pause printed: {cutover}"))?;
    println!("cutover paused writes to moving keys for {paused} ms");
    workload.progress(300, Duration::from_secs(60)).await?;
    migration.run("cleanup", &["--batch", "100"])?;
    workload.progress(200, Duration::from_secs(60)).await?;
    check(workload, shards, target).await
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_two_to_four_under_load_with_resharder_killed_and_proxy_restarted(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start("integrity-hash", 4).await?;
    let port = shardline::localpg::free_port();
    let (migration, source, target, shards) = setup(
        &cluster,
        "integrity-hash-files",
        "{name: items, sharding: hash, column: id, type: int8, shards: [s0, s1]}",
        "{name: items, sharding: hash, column: id, type: int8}",
        port,
    )
    .await?;
    let (mut proxy, workload) = serve_under_load(&source, port).await?;

    let plan = migration.run("plan", &[])?;
    assert!(plan.contains("items"), "{plan}");

    // Killed mid-backfill, while clients write; the migration stays recorded and dual writes
    // stay on.
    let killed = migration.spawn("start", &["--batch", "10", "--rate", "50"])?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut killed = killed;
    killed.kill()?;
    killed.wait()?;
    let status = migration.run("status", &[])?;
    assert!(
        status.contains("Started") || status.contains("started"),
        "{status}"
    );
    workload.progress(200, Duration::from_secs(60)).await?;

    // The proxy restarts during dual writes and comes back dual-writing from the catalog.
    proxy.stop().await;
    proxy = shardline::Proxy::start(source.clone()).await?;
    let served = proxy.ctx.snapshot();
    let phase = served.migration.as_ref().map(|m| m.phase.as_str());
    assert_eq!(
        phase,
        Some("started"),
        "a restarted proxy serves the catalog's phase"
    );
    workload.progress(200, Duration::from_secs(60)).await?;

    finish(&migration, workload, &shards, &target).await?;
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn range_split_under_load_and_a_stale_proxy_is_fenced() -> anyhow::Result<()> {
    let cluster = TestCluster::start("integrity-range", 4).await?;
    let port = shardline::localpg::free_port();
    let (migration, source, target, shards) = setup(
        &cluster,
        "integrity-range-files",
        "{name: items, sharding: range, column: id, type: int8, ranges: [{to: 4000000, shard: s0}, {from: 4000000, shard: s1}]}",
        "{name: items, sharding: range, column: id, type: int8, ranges: [{to: 2000000, shard: s0}, {from: 2000000, to: 4000000, shard: s2}, {from: 4000000, to: 6000000, shard: s1}, {from: 6000000, shard: s3}]}",
        port,
    )
    .await?;
    let proxy = shardline::Proxy::start(source.clone()).await?;
    let workload = Workload::start(conninfo(port), WorkloadSpec::default()).await?;
    workload.progress(300, Duration::from_secs(60)).await?;
    migration.run("plan", &[])?;
    migration.run("start", &["--batch", "100"])?;
    workload.progress(300, Duration::from_secs(60)).await?;
    migration.run("verify", &[])?;

    // A second proxy nobody lists: it learns of the migration at start, never of the cutover.
    let mut stale_config = source.clone();
    stale_config.listen = "127.0.0.1:0".to_owned();
    let stale = shardline::Proxy::start(stale_config).await?;
    let cutover = migration.run("cutover", &[])?;
    let paused =
        paused_ms(&cutover).ok_or_else(|| anyhow::anyhow!("no pause printed: {cutover}"))?;
    println!("cutover paused writes to moving keys for {paused} ms");
    workload.progress(300, Duration::from_secs(60)).await?;
    migration.run("cleanup", &[])?;

    // Key 2_500_001 moved from s0 to s2 (no workload client owns it).
    let moved = 2_500_001_i64;
    let old = source
        .table("items")
        .ok_or_else(|| anyhow::anyhow!("no items rule"))?
        .shard_for(&KeyValue::Int(moved))?;
    let stale_client = shardline_tests::connect(&conninfo(stale.addr.port())).await?;
    let refused = stale_client
        .execute(
            "INSERT INTO items (id, owner, val, note) VALUES ($1, 99, 1, 'stale')",
            &[&moved],
        )
        .await;
    let error = refused
        .err()
        .ok_or_else(|| anyhow::anyhow!("the stale proxy wrote a moved key"))?;
    println!("stale proxy: {error:?}");
    assert_eq!(error.code().map(|c| c.code()), Some("55000"), "{error:?}");
    let left: i64 = shards[old]
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&moved])
        .await?
        .get(0);
    assert_eq!(left, 0, "the fence let a stale write reach the old owner");

    workload.progress(200, Duration::from_secs(60)).await?;
    check(workload, &shards, &target).await?;
    stale.stop().await;
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bucketed_three_to_five_under_load() -> anyhow::Result<()> {
    let cluster = TestCluster::start("integrity-buckets", 5).await?;
    let port = shardline::localpg::free_port();
    let (migration, source, target, shards) = setup(
        &cluster,
        "integrity-buckets-files",
        &bucketed_rule("items", "id", THREE_SHARDS),
        &bucketed_rule("items", "id", FIVE_SHARDS),
        port,
    )
    .await?;
    let (proxy, workload) = serve_under_load(&source, port).await?;

    let plan = migration.run("plan", &[])?;
    println!("{plan}");
    assert!(plan.contains("rows move ("), "{plan}");
    finish(&migration, workload, &shards, &target).await?;
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_hot_directory_key_moves_to_its_own_shard_under_load() -> anyhow::Result<()> {
    let cluster = TestCluster::start("integrity-directory", 4).await?;
    let port = shardline::localpg::free_port();
    let rule = |entries: &str| {
        format!("{{name: items, sharding: directory, fallback: hash, column: id, type: int8, shards: [s0, s1], directory: [{entries}]}}")
    };
    let (migration, source, target, shards) = setup(
        &cluster,
        "integrity-directory-files",
        &rule("{key: 2, shard: s3}"),
        &rule("{key: 2, shard: s3}, {key: 1, shard: s2}"),
        port,
    )
    .await?;
    let proxy = shardline::Proxy::start(source.clone()).await?;
    // Few keys per client, so key 1 (client 0's first) is written all the time.
    let spec = WorkloadSpec {
        keys_per_client: 6,
        initial_rows: 6,
        ..WorkloadSpec::default()
    };
    let workload = Workload::start(conninfo(port), spec).await?;
    workload.progress(300, Duration::from_secs(60)).await?;

    let plan = migration.run("plan", &[])?;
    // Key 1 is the only key that moves: one row, or none while its client has it deleted.
    let moving = plan.lines().find(|l| l.contains("rows move"));
    assert!(
        moving.is_some_and(|l| l.starts_with("1 of ") || l.starts_with("0 of ")),
        "only key 1 moves: {plan}"
    );
    let directory = admin_show(port, "SHOW DIRECTORY").await?;
    assert_eq!(directory, [["items", "2", "s3"]]);
    finish(&migration, workload, &shards, &target).await?;
    let directory = admin_show(port, "SHOW DIRECTORY").await?;
    assert_eq!(directory, [["items", "1", "s2"], ["items", "2", "s3"]]);
    let others: i64 = shards[2]
        .query_one("SELECT count(*) FROM items WHERE id <> 1", &[])
        .await?
        .get(0);
    assert_eq!(others, 0, "s2 holds the hot key's row and nothing else");
    proxy.stop().await;
    Ok(())
}

/// The rows of an admin console `SHOW` on the proxy listening on `port`.
async fn admin_show(port: u16, command: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let admin = shardline_tests::connect(&format!(
        "host=127.0.0.1 port={port} user=admin password=admin dbname=shardline"
    ))
    .await?;
    let mut rows = Vec::new();
    for message in admin.simple_query(command).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            );
        }
    }
    Ok(rows)
}
