//! The proxy driven by PostgreSQL's own command-line clients: a psql script, and pgbench in
//! simple, extended and prepared mode against a sharded pgbench-style table.

use std::process::Command;

use shardline_router::KeyValue;
use shardline_tests::{run, TestCluster};

#[tokio::test(flavor = "multi_thread")]
async fn psql_script_runs_through_the_proxy() -> anyhow::Result<()> {
    let cluster = TestCluster::start("psql", 3).await?;
    let script = "
        CREATE TABLE users (id bigint PRIMARY KEY, name text);
        INSERT INTO users (id, name) VALUES (1, 'ada'), (1001, 'bob');
        BEGIN;
        INSERT INTO users (id, name) VALUES (2, 'cy');
        COMMIT;
        \\copy (SELECT id, name FROM users WHERE id = 1) TO STDOUT
        SELECT name FROM users WHERE id = 2;
        SELECT id FROM users WHERE id IN (1, 2);
        UPDATE users SET name = upper(name);
        SELECT current_database(), current_user;
    ";
    // The multi-row INSERT may span shards: it is split and committed atomically.
    let (ok, out, err) = cluster.psql(&["-At", "-c", "SELECT 1"])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1");
    let path = std::env::temp_dir().join(format!("shardline-psql-{}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let (ok, out, err) = cluster.psql(&["-At", "-f", &path.to_string_lossy()])?;
    let _ = std::fs::remove_file(&path);
    assert!(ok, "psql failed: {err}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"1\tada"), "{out}");
    assert!(lines.contains(&"cy"), "{out}");
    assert!(lines.contains(&"1") && lines.contains(&"2"), "{out}");
    assert!(lines.contains(&"UPDATE 3"), "{out}");
    assert!(lines.contains(&"app|app"), "{out}");
    // An aggregate the merge cannot combine is answered by gathering the rows in one place.
    let (ok, out, err) = cluster.psql(&["-At", "-c", "SELECT count(DISTINCT name) FROM users"])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "3");
    Ok(())
}

/// Loads `pgbench_accounts` (sharded by `aid`) with `rows` rows, each inserted on its own shard
/// directly.
async fn load_pgbench_accounts(cluster: &TestCluster, rows: i32) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int NOT NULL DEFAULT 0, filler char(84))")
        .await?;
    let rule = cluster.rule("pgbench_accounts")?;
    let mut per_shard = vec![Vec::new(); cluster.shard_count()];
    for aid in 1..=rows {
        per_shard[rule.shard_for(&KeyValue::Int(aid.into()))?].push(aid.to_string());
    }
    for (i, aids) in per_shard.iter().enumerate() {
        let shard = cluster.shard(i).await?;
        shard
            .batch_execute(&format!(
                "INSERT INTO pgbench_accounts (aid, bid) SELECT a, 1 FROM unnest('{{{}}}'::int[]) a",
                aids.join(",")
            ))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_in_every_protocol_mode() -> anyhow::Result<()> {
    let cluster = TestCluster::start("pgbench", 4).await?;
    let rows = 4000;
    load_pgbench_accounts(&cluster, rows).await?;
    let script = std::env::temp_dir().join(format!("shardline-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set aid random(1, {rows})\n\
             \\set delta random(-5, 5)\n\
             BEGIN;\n\
             UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
             SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
             END;\n"
        ),
    )?;
    let mut transactions = 0;
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run(Command::new("pgbench")
            .env("PGPASSWORD", "app")
            .args([
                "-n",
                "-h",
                "127.0.0.1",
                "-U",
                "app",
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                "200",
                "-M",
                mode,
                "-f",
            ])
            .arg(&script)
            .arg("-p")
            .arg(cluster.port().to_string())
            .arg("app"))?;
        assert!(ok, "pgbench -M {mode} failed:\n{out}\n{err}");
        assert!(
            out.contains("number of failed transactions: 0"),
            "pgbench -M {mode}:\n{out}"
        );
        assert!(
            out.contains("number of transactions actually processed: 800/800"),
            "pgbench -M {mode}:\n{out}"
        );
        transactions += 800;
    }
    // Every committed delta is on the shards: total balance equals the sum pgbench applied is
    // unknowable, but rows must still be exactly where the router puts them, and the sum read
    // through the proxy must equal the sum of the shards' sums.
    let client = cluster.client().await?;
    let through_proxy: i64 = client
        .query("SELECT abalance FROM pgbench_accounts", &[])
        .await?
        .iter()
        .map(|r| i64::from(r.get::<_, i32>(0)))
        .sum();
    let mut direct = 0i64;
    for i in 0..cluster.shard_count() {
        let row = cluster
            .shard(i)
            .await?
            .query_one(
                "SELECT coalesce(sum(abalance), 0)::int8 FROM pgbench_accounts",
                &[],
            )
            .await?;
        direct += row.get::<_, i64>(0);
    }
    assert_eq!(through_proxy, direct);
    let _ = std::fs::remove_file(&script);
    println!("pgbench: {transactions} transactions in simple, extended and prepared mode");
    Ok(())
}
