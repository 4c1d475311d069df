//! A multi-row INSERT whose rows belong to different shards is split into one INSERT per
//! shard, committed atomically: every row lands on exactly its shard (checked on each shard
//! directly), RETURNING rows come back merged, and a failure on one shard leaves no row on any.

use shardline_router::KeyValue;
use shardline_tests::TestCluster;
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

fn rows_and_tag(messages: &[SimpleQueryMessage]) -> (Vec<String>, Option<u64>) {
    let mut rows = Vec::new();
    let mut tag = None;
    for m in messages {
        match m {
            SimpleQueryMessage::Row(row) => rows.push(row.get(0).unwrap_or_default().to_owned()),
            SimpleQueryMessage::CommandComplete(n) => tag = Some(*n),
            _ => {}
        }
    }
    (rows, tag)
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_row_insert_is_split_by_shard_and_atomic() -> anyhow::Result<()> {
    let cluster = TestCluster::start("split", 4).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await?;
    let rule = cluster.rule("users")?;

    let ids: Vec<i64> = (1..=40).map(|i| i * 31 - 7).collect();
    let values: Vec<String> = ids.iter().map(|i| format!("({i}, 'n{i}')")).collect();
    let sql = format!(
        "INSERT INTO users (id, name) VALUES {} RETURNING id",
        values.join(", ")
    );
    let messages = client.simple_query(&sql).await?;
    let (mut returned, tag) = rows_and_tag(&messages);
    returned.sort_by_key(|r| r.parse::<i64>().unwrap_or_default());
    let expected: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(returned, expected, "RETURNING rows from every shard");
    assert_eq!(
        tag,
        Some(ids.len() as u64),
        "one CommandComplete with the total count"
    );

    let mut total = 0;
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        for row in shard.query("SELECT id FROM users", &[]).await? {
            let id: i64 = row.get(0);
            assert_eq!(
                rule.shard_for(&KeyValue::Int(id))?,
                i,
                "row {id} on shard {i}"
            );
            total += 1;
        }
        let prepared: i64 = shard
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?
            .get(0);
        assert_eq!(
            prepared, 0,
            "no prepared transaction left behind on shard {i}"
        );
    }
    assert_eq!(total, ids.len());

    // One row collides on its shard: the whole statement fails and no new row appears anywhere.
    let fresh: Vec<i64> = (1..=20).map(|i| 100_000 + i).collect();
    let mut values: Vec<String> = fresh.iter().map(|i| format!("({i}, 'fresh')")).collect();
    values.push(format!("({}, 'duplicate')", ids[0]));
    let err = client
        .simple_query(&format!(
            "INSERT INTO users (id, name) VALUES {}",
            values.join(", ")
        ))
        .await
        .err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::UNIQUE_VIOLATION)
    );
    let mut after = 0;
    for i in 0..cluster.shard_count() {
        let n: i64 = cluster
            .shard(i)
            .await?
            .query_one("SELECT count(*) FROM users", &[])
            .await?
            .get(0);
        after += n;
    }
    assert_eq!(
        after as usize,
        ids.len(),
        "a failed split INSERT must not leave rows behind"
    );

    // NULL keys are refused before anything runs.
    let err = client
        .simple_query("INSERT INTO users (id, name) VALUES (1, 'a'), (NULL, 'b')")
        .await
        .err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::NOT_NULL_VIOLATION)
    );

    // Inside a transaction block a statement needing several shards is refused, not split.
    let mut tx_client = cluster.client().await?;
    let tx = tx_client.transaction().await?;
    let err = tx.simple_query("INSERT INTO users (id, name) VALUES (900001, 'a'), (900002, 'b'), (900003, 'c'), (900004, 'd')").await.err();
    let code = err.and_then(|e| e.code().cloned());
    assert!(
        code == Some(SqlState::FEATURE_NOT_SUPPORTED) || code.is_none(),
        "{code:?}"
    );
    tx.rollback().await?;
    Ok(())
}
