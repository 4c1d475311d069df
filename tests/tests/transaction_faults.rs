//! Misuse and faults inside transactions that span shards, against real PostgreSQL shards: an
//! end of the transaction that would reach one shard alone is refused, a shard whose connection
//! is lost never runs what follows outside the transaction, and a commit that fails before its
//! decision leaves no shard inside it. Each test checks the shards directly.

use shardline_router::indoubt::STATUS_SQL;
use shardline_tests::txn::{ids_on_shards, keys_on_distinct_shards, query, users_table};
use shardline_tests::{sqlstate, TestCluster};
use tokio_postgres::error::SqlState;

/// Transactions prepared on any shard and not yet finished.
async fn prepared_anywhere(cluster: &TestCluster) -> anyhow::Result<i64> {
    let mut total = 0;
    for i in 0..cluster.shard_count() {
        let row = cluster
            .shard(i)
            .await?
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?;
        total += row.get::<_, i64>(0);
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_of_a_transaction_never_reaches_one_shard_alone() -> anyhow::Result<()> {
    let cluster = TestCluster::start("tx-end-alone", 3).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 3)?;
    let insert = |key: i64| format!("INSERT INTO users (id, name) VALUES ({key}, 'x')");

    // COMMIT in one query string with a statement for one shard: refused, the whole
    // transaction fails, and ending it rolls back on every shard.
    let ends_with_others = [
        format!("{}; COMMIT", insert(keys[2])),
        format!("UPDATE users SET name = 'y' WHERE id = {}; COMMIT", keys[0]),
        "PREPARE TRANSACTION 'by_the_client'".to_owned(),
    ];
    for sql in &ends_with_others {
        client.simple_query("BEGIN").await?;
        client.simple_query(&insert(keys[0])).await?;
        client.simple_query(&insert(keys[1])).await?;
        let refused = client.simple_query(sql).await;
        let error = anyhow::Error::from(refused.expect_err(sql));
        assert_eq!(
            sqlstate(&error),
            Some(SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}"
        );
        let after = client.simple_query("SELECT 1").await;
        assert!(after.is_err(), "the transaction failed with {sql}");
        client.simple_query("COMMIT").await?;
        assert!(ids_on_shards(&cluster).await?.is_empty(), "{sql}");
        assert_eq!(prepared_anywhere(&cluster).await?, 0, "{sql}");
    }

    // A query string that ends a transaction on its only shard still commits there.
    client.simple_query("BEGIN").await?;
    client.simple_query(&insert(keys[0])).await?;
    client
        .simple_query(&format!(
            "UPDATE users SET name = 'one' WHERE id = {}; COMMIT",
            keys[0]
        ))
        .await?;
    assert_eq!(ids_on_shards(&cluster).await?, [keys[0]]);
    // ... but one that would take another shard in and end there is refused.
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!(
            "UPDATE users SET name = 'two' WHERE id = {}",
            keys[0]
        ))
        .await?;
    let joined_and_ended = client
        .simple_query(&format!("{}; COMMIT", insert(keys[1])))
        .await;
    assert!(joined_and_ended.is_err());
    client.simple_query("ROLLBACK").await?;
    assert_eq!(ids_on_shards(&cluster).await?, [keys[0]]);
    assert_eq!(
        query(
            &client,
            &format!("SELECT name FROM users WHERE id = {}", keys[0])
        )
        .await?,
        ["one"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_lost_inside_a_transaction_never_runs_what_follows_outside_it() -> anyhow::Result<()>
{
    let mut cluster = TestCluster::start("tx-lost-shard", 3).await?;
    let mut client = cluster.client().await?;
    users_table(&client).await?;
    let key_on = |shard: usize| {
        (1..10_000)
            .find(|k| cluster.shard_of("users", *k).ok() == Some(shard))
            .ok_or_else(|| anyhow::anyhow!("no key on shard {shard}"))
    };
    let (first, second) = (key_on(0)?, key_on(1)?);
    let insert = |key: i64| format!("INSERT INTO users (id, name) VALUES ({key}, 'x')");

    // A shard the transaction holds has its backend terminated under it: the client hears
    // 57P01 from the next statement that reaches it and its connection ends, as PostgreSQL
    // ends it; nothing of the transaction stays.
    client.simple_query("BEGIN").await?;
    client.simple_query(&insert(first)).await?;
    client.simple_query(&insert(second)).await?;
    let terminated = cluster
        .shard(1)
        .await?
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await?;
    assert_eq!(terminated.get::<_, i64>(0), 1);
    let read = client.simple_query("SELECT name FROM users").await;
    let error = anyhow::Error::from(read.expect_err("a read over a terminated backend"));
    assert_eq!(sqlstate(&error), Some(SqlState::ADMIN_SHUTDOWN));
    assert!(client.simple_query("SELECT 1").await.is_err());
    assert!(
        client.is_closed(),
        "the session ends, as PostgreSQL ends it"
    );
    assert!(ids_on_shards(&cluster).await?.is_empty());

    // A shard that cannot be reached when a read needs it, after the read was sent to the
    // shards before it: the transaction's backend on those is kept, never run outside it.
    client = cluster.client().await?;
    client.simple_query("BEGIN").await?;
    client.simple_query(&insert(first)).await?;
    cluster.pg.stop_one(2)?;
    assert!(client.simple_query("SELECT name FROM users").await.is_err());
    let again = client.simple_query(&insert(first + 10_000)).await;
    assert!(
        again.is_err(),
        "a write after the failure ran outside the transaction"
    );
    client.simple_query("ROLLBACK").await?;
    let left = cluster
        .shard(0)
        .await?
        .query_one("SELECT count(*) FROM users", &[])
        .await?;
    assert_eq!(
        left.get::<_, i64>(0),
        0,
        "nothing committed on the first shard"
    );
    // The session goes on with the shards that are up.
    client.simple_query(&insert(first)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_fails_before_its_decision_leaves_no_shard_inside_it() -> anyhow::Result<()> {
    let cluster =
        TestCluster::start_with("tx-failed-prepare", 2, "pool:\n  mode: session\n").await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    // A deferred constraint is checked at PREPARE TRANSACTION: two rows with one name on the
    // shard that does not decide make its PREPARE fail after the decider was asked.
    client
        .batch_execute(
            "ALTER TABLE users ADD CONSTRAINT one_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED",
        )
        .await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    let twin = (keys[1] + 1..)
        .find(|k| cluster.shard_of("users", *k).ok() == cluster.shard_of("users", keys[1]).ok())
        .ok_or_else(|| anyhow::anyhow!("no second key on the shard"))?;
    client.simple_query("BEGIN").await?;
    for (key, name) in [(keys[0], "a"), (keys[1], "twin"), (twin, "twin")] {
        client
            .simple_query(&format!(
                "INSERT INTO users (id, name) VALUES ({key}, '{name}')"
            ))
            .await?;
    }
    let commit = client.simple_query("COMMIT").await;
    assert!(commit.is_err(), "a commit whose PREPARE failed succeeded");
    assert!(ids_on_shards(&cluster).await?.is_empty());
    assert_eq!(prepared_anywhere(&cluster).await?, 0);

    // The session's backends are out of that transaction: what it writes next commits alone.
    for key in &keys {
        client
            .simple_query(&format!(
                "INSERT INTO users (id, name) VALUES ({key}, 'after {key}')"
            ))
            .await?;
    }
    let mut expected = keys.clone();
    expected.sort_unstable();
    assert_eq!(ids_on_shards(&cluster).await?, expected);
    Ok(())
}

/// What the resolver asks a decider, on a real server: committed, aborted, in progress, and an
/// id the server has not handed out yet (a decider that crashed before the id reached its disk
/// comes back below it), which never committed and so must be rolled back, not waited for.
#[tokio::test(flavor = "multi_thread")]
async fn a_decider_reports_the_fate_of_each_transaction_id() -> anyhow::Result<()> {
    let cluster = TestCluster::start("decider-status", 1).await?;
    let shard = cluster.shard(0).await?;
    let other = cluster.shard(0).await?;
    let xid = |row: tokio_postgres::Row| row.get::<_, String>(0);
    let status = |id: String| {
        let shard = &shard;
        async move {
            let row = shard.query_one(STATUS_SQL, &[&id]).await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };

    shard.batch_execute("BEGIN").await?;
    let committed = xid(shard
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await?);
    shard.batch_execute("COMMIT; BEGIN").await?;
    let aborted = xid(shard
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await?);
    shard.batch_execute("ROLLBACK").await?;
    other.batch_execute("BEGIN").await?;
    let running = xid(other
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await?);
    let unassigned: i64 = running.parse::<i64>()? + 1_000;

    assert_eq!(status(committed).await?, "committed");
    assert_eq!(status(aborted).await?, "aborted");
    assert_eq!(status(running).await?, "in progress");
    assert_eq!(status(unassigned.to_string()).await?, "aborted");
    other.batch_execute("ROLLBACK").await?;
    Ok(())
}
