//! `shardline-reshard` against real shards: hash 2 → 4 for `users`. The plan's counts agree
//! with PostgreSQL's own hash partitioning; `start` creates the table on the new shards with
//! its indexes and copies exactly the moving rows, also when killed (SIGKILL) mid-copy and
//! started again; `abort` leaves the source as it was and the new shards without copies.
//! And bucketed hash 3 → 5: only the rows of the reassigned buckets move, as many as the plan
//! says, each to the shard PostgreSQL's partitioning and the bucket map name.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shardline_router::{Config, KeyValue};
use shardline_tests::buckets::{bucketed_rule, holder, FIVE_SHARDS, THREE_SHARDS};
use shardline_tests::{connect, scratch_dir, TestCluster};

const USERS_ALL: &str = "{name: users, sharding: hash, column: id, type: int8}";
const USERS_TWO: &str = "{name: users, sharding: hash, column: id, type: int8, shards: [s0, s1]}";
const DDL: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, score int CHECK (score >= 0), created timestamptz DEFAULT now()); CREATE INDEX users_name ON users (name)";

fn reshard(args: &[&str], dir: &Path) -> anyhow::Result<(bool, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_shardline-reshard"))
        .args(args)
        .args(["--from", &dir.join("from.yaml").to_string_lossy()])
        .current_dir(dir)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// Row images (`row_to_json`) of `users` on shard `i`, by id.
async fn images(cluster: &TestCluster, i: usize) -> anyhow::Result<BTreeMap<i64, String>> {
    let shard = cluster.shard(i).await?;
    let rows = shard
        .query("SELECT id, row_to_json(u)::text FROM users u", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Creates `users` on the first `shards` shards and inserts 3,000 rows through a proxy serving
/// `source`; returns the proxy (it must outlive the test's use of it) and the ids.
async fn load_users(
    cluster: &TestCluster,
    source: &Config,
    shards: usize,
) -> anyhow::Result<(shardline::Proxy, Vec<i64>)> {
    for i in 0..shards {
        cluster.shard(i).await?.batch_execute(DDL).await?;
    }
    let proxy = shardline::Proxy::start(source.clone()).await?;
    let app = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    ))
    .await?;
    let ids: Vec<i64> = (1..=3000).map(|i| i * 7 + (i % 13)).collect();
    for chunk in ids.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|id| format!("({id}, 'user {id}', {})", id % 100))
            .collect();
        app.batch_execute(&format!(
            "INSERT INTO users (id, name, score) VALUES {}",
            values.join(", ")
        ))
        .await?;
    }
    Ok((proxy, ids))
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_two_to_four_plan_start_resume_abort() -> anyhow::Result<()> {
    let cluster = TestCluster::start("reshard-cli", 4).await?;
    let dir = scratch_dir("reshard-cli-files");
    std::fs::create_dir_all(&dir)?;
    let source_yaml = cluster.yaml.replace(USERS_ALL, USERS_TWO);
    std::fs::write(dir.join("from.yaml"), &source_yaml)?;
    std::fs::write(dir.join("to.yaml"), &cluster.yaml)?;
    let source = Config::from_yaml(&source_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = cluster.config.clone();

    // The table exists on the two source shards only; rows arrive through a proxy serving the
    // source layout.
    let (_proxy, ids) = load_users(&cluster, &source, 2).await?;
    let before: Vec<BTreeMap<i64, String>> =
        futures::future::try_join_all((0..2).map(|i| images(&cluster, i))).await?;
    assert_eq!(before.iter().map(BTreeMap::len).sum::<usize>(), ids.len());

    // Oracle: PostgreSQL's own hash partitioning into 4 says which keys leave each shard.
    let oracle = cluster.shard(0).await?;
    oracle
        .batch_execute(
            "CREATE TABLE oracle_parts (id bigint) PARTITION BY HASH (id); \
             CREATE TABLE oracle_p0 PARTITION OF oracle_parts FOR VALUES WITH (MODULUS 4, REMAINDER 0); \
             CREATE TABLE oracle_p1 PARTITION OF oracle_parts FOR VALUES WITH (MODULUS 4, REMAINDER 1); \
             CREATE TABLE oracle_p2 PARTITION OF oracle_parts FOR VALUES WITH (MODULUS 4, REMAINDER 2); \
             CREATE TABLE oracle_p3 PARTITION OF oracle_parts FOR VALUES WITH (MODULUS 4, REMAINDER 3);",
        )
        .await?;
    oracle
        .execute(
            "INSERT INTO oracle_parts SELECT unnest($1::int8[])",
            &[&ids],
        )
        .await?;
    let mut expected_moves = Vec::new();
    for (from, to) in [("s0", "s2"), ("s1", "s3")] {
        let n: i64 = oracle
            .query_one(&format!("SELECT count(*) FROM oracle_p{}", &to[1..]), &[])
            .await?
            .get(0);
        expected_moves.push(format!("users      {from:<10} {to:<10} {n}"));
    }

    let (ok, plan) = reshard(&["plan", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{plan}");
    for line in &expected_moves {
        assert!(plan.contains(line), "plan lacks {line:?}:\n{plan}");
    }

    // Start slowly, kill it mid-copy, start again: it resumes and finishes.
    let mut slow = Command::new(env!("CARGO_BIN_EXE_shardline-reshard"))
        .args(["start", "--to", "to.yaml", "--batch", "50", "--rate", "600"])
        .args(["--from", &dir.join("from.yaml").to_string_lossy()])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    slow.kill()?; // SIGKILL
    slow.wait()?;
    let (ok, status) = reshard(&["status"], &dir)?;
    assert!(ok && status.contains("Started"), "{status}");
    let (ok, out) = reshard(&["start", "--to", "to.yaml", "--batch", "200"], &dir)?;
    assert!(ok, "{out}");
    let (ok, status) = reshard(&["status"], &dir)?;
    assert!(ok && status.contains("Backfilled"), "{status}");

    // Every moving row is on its new owner with the same image; the new shards hold nothing
    // else; the table was created there with its index and check constraint.
    let mut copied = 0;
    for i in 2..4 {
        let on_target = images(&cluster, i).await?;
        for (id, image) in &on_target {
            let owner = target.tables["users"].shard_for(&KeyValue::Int(*id))?;
            assert_eq!(
                owner, i,
                "row {id} copied to shard {i}, which does not own it"
            );
            let original = before.iter().find_map(|m| m.get(id));
            assert_eq!(original, Some(image), "row {id} differs from its source");
        }
        copied += on_target.len();
        let shard = cluster.shard(i).await?;
        let index: i64 = shard
            .query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'users' AND indexname = 'users_name'", &[])
            .await?
            .get(0);
        assert_eq!(index, 1, "index users_name created on shard {i}");
        let refused = shard
            .execute(
                "INSERT INTO users (id, name, score) VALUES (-1, 'x', -5)",
                &[],
            )
            .await;
        assert!(
            refused.is_err(),
            "the check constraint must exist on shard {i}"
        );
    }
    let moving = ids
        .iter()
        .filter(|id| {
            let key = KeyValue::Int(**id);
            source.tables["users"].shard_for(&key).ok()
                != target.tables["users"].shard_for(&key).ok()
        })
        .count();
    assert_eq!(copied, moving, "exactly the moving rows are copied, once");

    // Verify finds nothing to repair; then damage the copies three ways and it repairs them.
    let (ok, out) = reshard(&["verify", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{out}");
    assert!(out.contains("\n0 rows repaired"), "{out}");
    let s2 = cluster.shard(2).await?;
    let damaged = s2
        .query("SELECT id FROM users ORDER BY id LIMIT 3", &[])
        .await?;
    let damaged: Vec<i64> = damaged.iter().map(|r| r.get(0)).collect();
    s2.execute("DELETE FROM users WHERE id = $1", &[&damaged[0]])
        .await?;
    s2.execute(
        "UPDATE users SET name = 'wrong' WHERE id = $1",
        &[&damaged[1]],
    )
    .await?;
    cluster
        .shard(0)
        .await?
        .execute("DELETE FROM users WHERE id = $1", &[&damaged[2]])
        .await?;
    let (ok, out) = reshard(&["verify", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("users") && l.contains("s2"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        line.ends_with("1 1 1"),
        "missing 1, differing 1, extra 1: {out}"
    );
    let (ok, out) = reshard(&["verify", "--to", "to.yaml"], &dir)?;
    assert!(ok && out.contains("\n0 rows repaired"), "repaired: {out}");
    let repaired = images(&cluster, 2).await?;
    assert_eq!(repaired.get(&damaged[0]), before[0].get(&damaged[0]));
    assert_eq!(repaired.get(&damaged[1]), before[0].get(&damaged[1]));
    assert!(
        !repaired.contains_key(&damaged[2]),
        "the copy of a deleted row goes"
    );
    let before = {
        let mut now = before;
        now[0].remove(&damaged[2]);
        now
    };

    // Abort: the copies go, the source is untouched.
    let (ok, out) = reshard(&["abort", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{out}");
    for i in 2..4 {
        assert!(
            images(&cluster, i).await?.is_empty(),
            "copies left on shard {i}"
        );
    }
    for (i, image) in before.iter().enumerate() {
        assert_eq!(
            &images(&cluster, i).await?,
            image,
            "source shard {i} changed"
        );
    }
    let (ok, status) = reshard(&["status"], &dir)?;
    assert!(
        ok && status.contains("no migration in progress"),
        "{status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bucketed_three_to_five_moves_only_the_reassigned_buckets() -> anyhow::Result<()> {
    let cluster = TestCluster::start("reshard-buckets", 5).await?;
    let dir = scratch_dir("reshard-buckets-files");
    std::fs::create_dir_all(&dir)?;
    let source_yaml = cluster
        .yaml
        .replace(USERS_ALL, &bucketed_rule("users", "id", THREE_SHARDS));
    let target_yaml = cluster
        .yaml
        .replace(USERS_ALL, &bucketed_rule("users", "id", FIVE_SHARDS));
    std::fs::write(dir.join("from.yaml"), &source_yaml)?;
    std::fs::write(dir.join("to.yaml"), &target_yaml)?;
    let source = Config::from_yaml(&source_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_proxy, ids) = load_users(&cluster, &source, 3).await?;

    // Oracle: PostgreSQL's hash partitioning with MODULUS 60 gives each id its bucket; the
    // maps say where the bucket was and where it goes.
    let oracle = cluster.shard(0).await?;
    let mut ddl = String::from("CREATE TABLE oracle_parts (id bigint) PARTITION BY HASH (id);");
    for r in 0..60 {
        ddl.push_str(&format!(
            "CREATE TABLE oracle_b{r} PARTITION OF oracle_parts FOR VALUES WITH (MODULUS 60, REMAINDER {r});"
        ));
    }
    oracle.batch_execute(&ddl).await?;
    oracle
        .execute(
            "INSERT INTO oracle_parts SELECT unnest($1::int8[])",
            &[&ids],
        )
        .await?;
    let mut owner_after = BTreeMap::new();
    let mut moving = 0;
    for row in oracle
        .query("SELECT id, tableoid::regclass::text FROM oracle_parts", &[])
        .await?
    {
        let id: i64 = row.get(0);
        let partition: String = row.get(1);
        let bucket: usize = partition.trim_start_matches("oracle_b").parse()?;
        let (from, to) = (holder(THREE_SHARDS, bucket), holder(FIVE_SHARDS, bucket));
        if from != to {
            moving += 1;
        }
        owner_after.insert(id, to);
    }

    // The plan counts exactly the rows of the reassigned buckets, about 40% of them.
    let (ok, plan) = reshard(&["plan", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{plan}");
    let share = moving as f64 * 100.0 / ids.len() as f64;
    let summary = format!("{moving} of {} rows move ({share:.1}%)", ids.len());
    assert!(plan.contains(&summary), "plan lacks {summary:?}:\n{plan}");
    assert!((30.0..50.0).contains(&share), "{summary}");
    println!("{plan}");

    // Backfill copies exactly those rows, each to the shard its bucket now belongs to.
    let (ok, out) = reshard(&["start", "--to", "to.yaml", "--batch", "500"], &dir)?;
    assert!(ok, "{out}");
    let mut copied = 0;
    for i in 3..5 {
        for id in images(&cluster, i).await?.keys() {
            assert_eq!(
                owner_after.get(id).copied(),
                Some(format!("s{i}").as_str()),
                "row {id} copied to s{i}"
            );
            copied += 1;
        }
    }
    assert_eq!(
        copied, moving,
        "exactly the rows of the moved buckets are copied"
    );
    let (ok, out) = reshard(&["verify", "--to", "to.yaml"], &dir)?;
    assert!(ok && out.contains("\n0 rows repaired"), "{out}");
    let (ok, out) = reshard(&["abort", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{out}");
    Ok(())
}

/// A directory table keyed by text: `acme` already lives on s2, `beta` moves there. Cleanup
/// deletes exactly `beta`'s rows from its old shard and none of `acme`'s: the ownership SQL
/// compares text keys as their own text.
#[tokio::test(flavor = "multi_thread")]
async fn a_text_directory_key_moves_and_cleanup_keeps_the_keys_already_listed() -> anyhow::Result<()>
{
    let cluster = TestCluster::start("reshard-directory-text", 3).await?;
    let dir = scratch_dir("reshard-directory-text-files");
    std::fs::create_dir_all(&dir)?;
    let rule = |entries: &str| {
        format!("  - {{name: docs, sharding: directory, fallback: hash, column: owner, type: text, shards: [s0, s1], directory: [{entries}]}}\n")
    };
    let with = |entries: &str| {
        cluster
            .yaml
            .replacen("tables:\n", &format!("tables:\n{}", rule(entries)), 1)
            .replacen(
                "users:\n",
                "users:\n  - {name: admin, password: admin, admin: true}\n",
                1,
            )
    };
    let (source_yaml, target_yaml) = (
        with("{key: acme, shard: s2}"),
        with("{key: acme, shard: s2}, {key: beta, shard: s2}"),
    );
    std::fs::write(dir.join("from.yaml"), &source_yaml)?;
    std::fs::write(dir.join("to.yaml"), &target_yaml)?;
    let source = Config::from_yaml(&source_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = Config::from_yaml(&target_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..3 {
        cluster
            .shard(i)
            .await?
            .batch_execute(
                "CREATE TABLE docs (owner text, n int, body text, PRIMARY KEY (owner, n))",
            )
            .await?;
    }
    let proxy = shardline::Proxy::start(source.clone()).await?;
    let app = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    ))
    .await?;
    for owner in ["acme", "beta", "gamma", "it's"] {
        app.execute(
            "INSERT INTO docs (owner, n, body) SELECT $1::text, g, 'doc ' || g FROM generate_series(1, 20) g",
            &[&owner],
        )
        .await?;
    }
    let beta_from = source
        .table("docs")
        .ok_or_else(|| anyhow::anyhow!("no docs rule"))?
        .shard_for(&KeyValue::Text("beta".into()))?;
    let console = format!("127.0.0.1:{}", proxy.addr.port());
    let (ok, out) = reshard(
        &[
            "start", "--to", "to.yaml", "--batch", "7", "--proxy", &console,
        ],
        &dir,
    )?;
    assert!(ok, "start: {out}");
    // Batches of 7 cut inside every owner's 20 rows; the copies are whole, so verify finds
    // nothing to repair.
    let (ok, out) = reshard(&["verify", "--to", "to.yaml"], &dir)?;
    assert!(ok && out.contains("\n0 rows repaired"), "{out}");
    // Dual writes to the moving text key reach its new owner as exact row images.
    app.batch_execute("UPDATE docs SET body = 'changed' WHERE owner = 'beta' AND n = 1")
        .await?;
    app.batch_execute("INSERT INTO docs (owner, n, body) VALUES ('beta', 21, 'new')")
        .await?;
    app.batch_execute("DELETE FROM docs WHERE owner = 'beta' AND n = 2")
        .await?;
    let beta = "SELECT n, body FROM docs WHERE owner = 'beta' ORDER BY n";
    let rows = |client: tokio_postgres::Client| async move {
        let rows = client.query(beta, &[]).await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>(),
        )
    };
    let (old, new) = (
        rows(cluster.shard(beta_from).await?).await?,
        rows(cluster.shard(2).await?).await?,
    );
    assert_eq!(old.len(), 20);
    assert_eq!(new, old, "the new owner's copy of beta after dual writes");
    // The copy is damaged behind the proxy's back, and verify restores it.
    cluster
        .shard(2)
        .await?
        .batch_execute(
            "DELETE FROM docs WHERE owner = 'beta' AND n = 5;
             UPDATE docs SET body = 'damaged' WHERE owner = 'beta' AND n = 6;
             INSERT INTO docs VALUES ('beta', 99, 'stray')",
        )
        .await?;
    let (ok, out) = reshard(&["verify", "--to", "to.yaml"], &dir)?;
    // Rows of one key are paired as they come: a missing and an extra row count as differing.
    assert!(ok && out.contains("\n2 rows repaired"), "{out}");
    let new = rows(cluster.shard(2).await?).await?;
    assert_eq!(new, old, "the new owner's copy of beta after verify");
    for (step, proxies) in [("cutover", true), ("cleanup", false)] {
        let mut args = vec![step, "--to", "to.yaml"];
        if proxies {
            args.extend(["--proxy", console.as_str()]);
        }
        let (ok, out) = reshard(&args, &dir)?;
        assert!(ok, "{step}: {out}");
    }
    // Every owner's 20 rows are on exactly the shard the target layout names.
    let rule = target
        .table("docs")
        .ok_or_else(|| anyhow::anyhow!("no docs rule"))?;
    for owner in ["acme", "beta", "gamma", "it's"] {
        let home = rule.shard_for(&KeyValue::Text(owner.into()))?;
        for i in 0..3 {
            let n: i64 = cluster
                .shard(i)
                .await?
                .query_one("SELECT count(*) FROM docs WHERE owner = $1", &[&owner])
                .await?
                .get(0);
            let want = if i == home { 20 } else { 0 };
            assert_eq!(n, want, "{owner} on s{i} (beta came from s{beta_from})");
        }
    }
    drop(proxy);
    Ok(())
}

/// A row whose shard key is NULL (written on a shard directly: the proxy refuses one) belongs
/// to no shard in either layout. Moving `users` from s0 and s1 wholly to s2 and s3, the plan
/// counts it nowhere, `start` and `verify` copy the other rows as usual, and `cleanup` deletes
/// every moved row but that one, though s0 and s1 keep no keys at all. Before, a NULL key among
/// the first rows read panicked the resharder, and the cleanup of a shard that keeps no keys
/// deleted the keyless rows with the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_null_shard_key_stays_where_it_is() -> anyhow::Result<()> {
    const USERS_MOVED: &str =
        "{name: users, sharding: hash, column: id, type: int8, shards: [s2, s3]}";
    let cluster = TestCluster::start("reshard-null-key", 4).await?;
    let dir = scratch_dir("reshard-null-key-files");
    std::fs::create_dir_all(&dir)?;
    let with_admin = |yaml: String| {
        yaml.replacen(
            "users:\n",
            "users:\n  - {name: admin, password: admin, admin: true}\n",
            1,
        )
    };
    let source_yaml = with_admin(cluster.yaml.replace(USERS_ALL, USERS_TWO));
    let target_yaml = with_admin(cluster.yaml.replace(USERS_ALL, USERS_MOVED));
    std::fs::write(dir.join("from.yaml"), &source_yaml)?;
    std::fs::write(dir.join("to.yaml"), &target_yaml)?;
    let source = Config::from_yaml(&source_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = Config::from_yaml(&target_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..2 {
        let shard = cluster.shard(i).await?;
        shard
            .batch_execute("CREATE TABLE users (id bigint UNIQUE, name text NOT NULL)")
            .await?;
        // Each source shard gets the keys it owns, and one row without a key.
        let owned: Vec<i64> = (1..=200)
            .filter(|id| source.tables["users"].shard_for(&KeyValue::Int(*id)).ok() == Some(i))
            .collect();
        shard
            .execute(
                "INSERT INTO users SELECT id, 'user ' || id FROM unnest($1::int8[]) id",
                &[&owned],
            )
            .await?;
        shard
            .execute("INSERT INTO users VALUES (NULL, 'no key')", &[])
            .await?;
    }
    let proxy = shardline::Proxy::start(source.clone()).await?;
    let console = format!("127.0.0.1:{}", proxy.addr.port());

    let (ok, plan) = reshard(&["plan", "--to", "to.yaml"], &dir)?;
    assert!(ok, "{plan}");
    assert!(plan.contains("\n200 of 200 rows move"), "{plan}");
    for shard in ["s0", "s1"] {
        let line = format!("1 row of users on {shard} has a NULL shard key");
        assert!(plan.contains(&line), "plan lacks {line:?}:\n{plan}");
    }
    let steps: [&[&str]; 4] = [
        &[
            "start", "--to", "to.yaml", "--batch", "500", "--proxy", &console,
        ],
        &["verify", "--to", "to.yaml"],
        &["cutover", "--to", "to.yaml", "--proxy", &console],
        &["cleanup", "--to", "to.yaml"],
    ];
    for args in steps {
        let (ok, out) = reshard(args, &dir)?;
        assert!(ok && !out.contains("panicked"), "{}: {out}", args[0]);
    }

    let mut copied = 0;
    for i in 0..4 {
        let shard = cluster.shard(i).await?;
        let keyless: i64 = shard
            .query_one("SELECT count(*) FROM users WHERE id IS NULL", &[])
            .await?
            .get(0);
        assert_eq!(keyless, i64::from(i < 2), "rows without a key on shard {i}");
        for row in shard
            .query("SELECT id FROM users WHERE id IS NOT NULL", &[])
            .await?
        {
            let id: i64 = row.get(0);
            let owner = target.tables["users"].shard_for(&KeyValue::Int(id))?;
            assert_eq!(owner, i, "row {id} on shard {i}, which does not own it");
            copied += 1;
        }
    }
    assert_eq!(copied, 200, "every keyed row once, on its owner");
    drop(proxy);
    Ok(())
}
