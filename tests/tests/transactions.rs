//! Transaction blocks that span shards, against real PostgreSQL shards: shards join as
//! statements need them, every kind of statement sees the transaction's own writes, savepoints
//! reach shards that join later, COMMIT happens on every shard or none (`in_doubt.rs`: what a
//! crash leaves in doubt). Each test checks the shards directly, never only through the
//! proxy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardline_tests::txn::{ids_on_shards, keys_on_distinct_shards, query, users_table};
use shardline_tests::{sqlstate, TestCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_spans_shards_sees_its_writes_and_commits_or_rolls_back_everywhere(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start("tx-span", 4).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 3)?;
    let (a, b, c) = (keys[0], keys[1], keys[2]);

    // Rolled back: nothing anywhere, though every kind of statement ran inside.
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!("INSERT INTO users (id, name) VALUES ({a}, 'a')"))
        .await?;
    client
        .simple_query(&format!("INSERT INTO users (id, name) VALUES ({b}, 'b')"))
        .await?;
    assert_eq!(query(&client, "SELECT count(*) FROM users").await?, ["2"]);
    assert_eq!(
        query(&client, "SELECT id FROM users ORDER BY id").await?,
        [a.min(b).to_string(), a.max(b).to_string()],
        "a merged read sees the transaction's own writes on both shards"
    );
    client
        .simple_query("UPDATE users SET name = 'scattered'")
        .await?;
    client
        .simple_query(&format!(
            "INSERT INTO users (id, name) VALUES ({c}, 'split'), ({}, 'split')",
            c + 10_000
        ))
        .await?;
    assert_eq!(query(&client, "SELECT count(*) FROM users").await?, ["4"]);
    client.simple_query("ROLLBACK").await?;
    assert!(
        ids_on_shards(&cluster).await?.is_empty(),
        "nothing left after ROLLBACK"
    );
    assert_eq!(query(&client, "SELECT count(*) FROM users").await?, ["0"]);

    // Committed: every row on its shard, nothing prepared left behind.
    client
        .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    for key in [a, b, c] {
        client
            .simple_query(&format!("INSERT INTO users (id, name) VALUES ({key}, 'k')"))
            .await?;
    }
    client.simple_query("COMMIT").await?;
    let mut expected = vec![a, b, c];
    expected.sort_unstable();
    assert_eq!(ids_on_shards(&cluster).await?, expected);
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3);

    // Schema changes and data in one transaction, rolled back: no table on any shard.
    client.simple_query("BEGIN").await?;
    client
        .simple_query("CREATE TABLE orders (user_id bigint, total int)")
        .await?;
    client
        .simple_query(&format!(
            "INSERT INTO orders (user_id, total) VALUES ({a}, 1), ({b}, 2)"
        ))
        .await?;
    client.simple_query("ROLLBACK").await?;
    for i in 0..cluster.shard_count() {
        let found: Option<String> = cluster
            .shard(i)
            .await?
            .query_one("SELECT to_regclass('orders')::text", &[])
            .await?
            .get(0);
        assert_eq!(found, None, "orders exists on shard {i} after ROLLBACK");
    }

    // A failure on one shard fails the whole transaction; its COMMIT rolls back everywhere.
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!("UPDATE users SET name = 'changed' WHERE id = {a}"))
        .await?;
    let duplicate = client
        .simple_query(&format!("INSERT INTO users (id) VALUES ({b})"))
        .await
        .err();
    assert_eq!(
        duplicate.as_ref().and_then(|e| e.code()),
        Some(&SqlState::UNIQUE_VIOLATION)
    );
    let after = client
        .simple_query(&format!("SELECT name FROM users WHERE id = {c}"))
        .await
        .err();
    assert_eq!(
        after.as_ref().and_then(|e| e.code()),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "another shard refuses to go on after a failure elsewhere"
    );
    let ended = client.simple_query("COMMIT").await?;
    assert!(ended
        .iter()
        .all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
    assert_eq!(
        query(&client, &format!("SELECT name FROM users WHERE id = {a}")).await?,
        ["k"],
        "the failed transaction's update on the other shard was rolled back"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn savepoints_reach_shards_that_join_later() -> anyhow::Result<()> {
    let cluster = TestCluster::start("tx-savepoint", 4).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 4)?;
    let (a, b, c, d) = (keys[0], keys[1], keys[2], keys[3]);
    let insert = |key: i64| format!("INSERT INTO users (id, name) VALUES ({key}, 'v')");

    client.simple_query("BEGIN").await?;
    client.simple_query("SAVEPOINT before_all").await?;
    client.simple_query(&insert(a)).await?;
    client.simple_query("SAVEPOINT s1").await?;
    // Shard of b joins now: s1 must exist there for the ROLLBACK TO below.
    client.simple_query(&insert(b)).await?;
    client.simple_query("ROLLBACK TO SAVEPOINT s1").await?;
    client.simple_query(&insert(c)).await?;
    client.simple_query("RELEASE SAVEPOINT s1").await?;
    // A failure, undone by ROLLBACK TO: the transaction goes on.
    client.simple_query("SAVEPOINT s2").await?;
    let duplicate = client.simple_query(&insert(a)).await.err();
    assert_eq!(
        duplicate.as_ref().and_then(|e| e.code()),
        Some(&SqlState::UNIQUE_VIOLATION)
    );
    client.simple_query("ROLLBACK TO s2").await?;
    // The shard of d joins after all of it and must know s2 but not s1.
    client.simple_query(&insert(d)).await?;
    client.simple_query("ROLLBACK TO s2").await?;
    client.simple_query(&insert(d)).await?;
    let released = client.simple_query("RELEASE s1").await.err();
    assert!(released.is_some(), "s1 was released and must be gone");
    client.simple_query("ROLLBACK TO before_all").await?;
    client.simple_query(&insert(b)).await?;
    client.simple_query("COMMIT").await?;
    assert_eq!(ids_on_shards(&cluster).await?, vec![b]);
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bank_transfers_across_shards_keep_the_total() -> anyhow::Result<()> {
    const ACCOUNTS: i64 = 24;
    const CLIENTS: usize = 8;
    const TRANSFERS: usize = 25;
    let cluster = TestCluster::start("tx-bank", 4).await?;
    let setup = cluster.client().await?;
    users_table(&setup).await?;
    let values: Vec<String> = (1..=ACCOUNTS).map(|i| format!("({i}, 1000)")).collect();
    setup
        .simple_query(&format!(
            "INSERT INTO users (id, balance) VALUES {}",
            values.join(", ")
        ))
        .await?;

    let mut tasks = Vec::new();
    for worker in 0..CLIENTS {
        let client = cluster.client().await?;
        tasks.push(tokio::spawn(async move {
            let mut deltas: BTreeMap<i64, i64> = BTreeMap::new();
            for n in 0..TRANSFERS {
                let seed = (worker * 7919 + n * 104_729) as i64;
                let from = seed % ACCOUNTS + 1;
                let to = (seed / 7 + 1) % ACCOUNTS + 1;
                if from == to {
                    continue;
                }
                let amount = seed % 50 + 1;
                let commit = n % 5 != 4;
                // Rows are locked in id order, so transfers cannot deadlock across shards.
                let mut moves = [(from, -amount), (to, amount)];
                moves.sort_unstable();
                if worker % 2 == 0 {
                    client.simple_query("BEGIN").await?;
                    for (id, delta) in moves {
                        client
                            .simple_query(&format!(
                                "UPDATE users SET balance = balance + {delta} WHERE id = {id}"
                            ))
                            .await?;
                    }
                    client
                        .simple_query(if commit { "COMMIT" } else { "ROLLBACK" })
                        .await?;
                } else {
                    // Extended protocol: a prepared statement bound per account.
                    let update = client
                        .prepare("UPDATE users SET balance = balance + $2 WHERE id = $1")
                        .await?;
                    client.batch_execute("BEGIN").await?;
                    for (id, delta) in moves {
                        client.execute(&update, &[&id, &delta]).await?;
                    }
                    client
                        .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
                        .await?;
                }
                if commit {
                    for (id, delta) in moves {
                        *deltas.entry(id).or_default() += delta;
                    }
                }
            }
            anyhow::Ok(deltas)
        }));
    }
    let mut expected: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|i| (i, 1000)).collect();
    for task in tasks {
        for (id, delta) in task.await?? {
            *expected.entry(id).or_default() += delta;
        }
    }
    let mut found = BTreeMap::new();
    for i in 0..cluster.shard_count() {
        for row in cluster
            .shard(i)
            .await?
            .query("SELECT id, balance FROM users", &[])
            .await?
        {
            found.insert(row.get::<_, i64>(0), row.get::<_, i64>(1));
        }
    }
    assert_eq!(
        found, expected,
        "every acknowledged transfer, and only those"
    );
    assert_eq!(
        query(&setup, "SELECT sum(balance) FROM users").await?,
        [(ACCOUNTS * 1000).to_string()]
    );
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        ACCOUNTS as usize
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_inside_a_transaction_spans_shards() -> anyhow::Result<()> {
    let cluster = TestCluster::start("tx-pipeline", 4).await?;
    let mut client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 3)?;
    let insert = client
        .prepare("INSERT INTO users (id, name) VALUES ($1, 'p')")
        .await?;
    client.batch_execute("BEGIN").await?;
    // tokio-postgres pipelines these: one segment whose statements need three shards.
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        keys.iter().map(|key| [key as _]).collect();
    let futures = params.iter().map(|p| client.execute(&insert, p));
    for done in futures::future::join_all(futures).await {
        assert_eq!(done?, 1);
    }
    let counted: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await?
        .get(0);
    assert_eq!(
        counted, 3,
        "the pipeline's writes are visible inside the transaction"
    );
    client.batch_execute("ROLLBACK").await?;
    assert!(ids_on_shards(&cluster).await?.is_empty());

    let transaction = client.build_transaction().start().await?;
    let futures = params.iter().map(|p| transaction.execute(&insert, p));
    for done in futures::future::join_all(futures).await {
        done?;
    }
    transaction.commit().await?;
    let mut expected = keys.clone();
    expected.sort_unstable();
    assert_eq!(ids_on_shards(&cluster).await?, expected);
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_shard_transactions_when_configured() -> anyhow::Result<()> {
    let cluster =
        TestCluster::start_with("tx-one-shard", 2, "cross_shard_transactions: false\n").await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!("INSERT INTO users (id) VALUES ({})", keys[0]))
        .await?;
    let refused = client
        .simple_query(&format!("INSERT INTO users (id) VALUES ({})", keys[1]))
        .await
        .err()
        .map(anyhow::Error::from);
    assert_eq!(
        refused.as_ref().and_then(sqlstate),
        Some(SqlState::FEATURE_NOT_SUPPORTED)
    );
    client.simple_query("ROLLBACK").await?;
    assert!(ids_on_shards(&cluster).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadlock_across_shards_is_broken_with_40p01() -> anyhow::Result<()> {
    let cluster = TestCluster::start("tx-deadlock", 2).await?;
    let setup = cluster.client().await?;
    users_table(&setup).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    let (a, b) = (keys[0], keys[1]);
    setup
        .simple_query(&format!(
            "INSERT INTO users (id, name) VALUES ({a}, 'a'), ({b}, 'b')"
        ))
        .await?;
    let first = cluster.client().await?;
    let second = cluster.client().await?;
    let update = |id: i64, name: &str| format!("UPDATE users SET name = '{name}' WHERE id = {id}");
    first.simple_query("BEGIN").await?;
    first.simple_query(&update(a, "first")).await?;
    second.simple_query("BEGIN").await?;
    second.simple_query(&update(b, "second")).await?;
    // Each now waits for the other, on the other shard: neither shard sees a cycle.
    let first_waits = tokio::spawn({
        let sql = update(b, "first");
        async move { first.simple_query(&sql).await.map(|_| first) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let broken = tokio::time::timeout(
        Duration::from_secs(20),
        second.simple_query(&update(a, "second")),
    )
    .await?;
    assert_eq!(
        broken.err().as_ref().and_then(|e| e.code()),
        Some(&SqlState::T_R_DEADLOCK_DETECTED),
        "the younger transaction is the victim"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    second.simple_query("ROLLBACK").await?;
    let first = tokio::time::timeout(Duration::from_secs(10), first_waits).await???;
    first.simple_query("COMMIT").await?;
    assert_eq!(
        query(
            &setup,
            &format!("SELECT name FROM users WHERE id IN ({a}, {b}) ORDER BY id")
        )
        .await?,
        ["first", "first"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_and_copy_in_one_transaction_as_pgbench_init_does() -> anyhow::Result<()> {
    use futures::SinkExt;
    let cluster = TestCluster::start("tx-copy", 4).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    client
        .simple_query("INSERT INTO users (id) VALUES (1), (2), (3), (4), (5)")
        .await?;
    for commit in [false, true] {
        client.batch_execute("BEGIN").await?;
        client.batch_execute("TRUNCATE users").await?;
        // FREEZE is only allowed because every shard truncated the table in this transaction.
        let sink = client
            .copy_in("COPY users (id, name) FROM STDIN WITH (FREEZE ON)")
            .await?;
        futures::pin_mut!(sink);
        let rows: String = (1..=500).map(|i| format!("{}\tcopied\n", i * 7)).collect();
        sink.send(bytes::Bytes::from(rows)).await?;
        assert_eq!(sink.finish().await?, 500);
        let seen: i64 = client
            .query_one("SELECT count(*) FROM users", &[])
            .await?
            .get(0);
        assert_eq!(seen, 500, "the transaction sees its own COPY");
        client
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await?;
        let expected = if commit { 500 } else { 5 };
        assert_eq!(
            cluster.placed_rows("users", "id", false).await?,
            expected,
            "after {}",
            if commit { "COMMIT" } else { "ROLLBACK" }
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_pooling_spans_shards_too() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with("tx-session", 3, "pool:\n  mode: session\n").await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 3)?;
    let insert = |key: i64| format!("INSERT INTO users (id, name) VALUES ({key}, 's')");
    for commit in [false, true] {
        client.simple_query("BEGIN").await?;
        client.simple_query(&insert(keys[0])).await?;
        client.simple_query("SAVEPOINT s").await?;
        client.simple_query(&insert(keys[1])).await?;
        client.simple_query("ROLLBACK TO SAVEPOINT s").await?;
        client.simple_query(&insert(keys[2])).await?;
        assert_eq!(query(&client, "SELECT count(*) FROM users").await?, ["2"]);
        client
            .simple_query(if commit { "COMMIT" } else { "ROLLBACK" })
            .await?;
    }
    let mut expected = vec![keys[0], keys[2]];
    expected.sort_unstable();
    assert_eq!(ids_on_shards(&cluster).await?, expected);
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 2);
    // The session keeps its backends, out of any transaction, and goes on.
    assert_eq!(query(&client, "SELECT count(*) FROM users").await?, ["2"]);
    Ok(())
}
