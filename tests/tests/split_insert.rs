//! A multi-row INSERT whose rows belong to different shards is split into one INSERT per
//! shard, committed atomically: every row lands on exactly its shard (checked on each shard
//! directly), RETURNING rows come back merged, and a failure on one shard leaves no row on any.

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

    let total = cluster.placed_rows("users", "id", false).await?;
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
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
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

#[tokio::test(flavor = "multi_thread")]
async fn bound_multi_row_insert_is_split_in_the_extended_protocol() -> anyhow::Result<()> {
    let cluster = TestCluster::start("split-extended", 4).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await?;
    let rows = 30;
    let placeholders: Vec<String> = (0..rows)
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let insert = client
        .prepare(&format!(
            "INSERT INTO users (id, name) VALUES {} RETURNING id, name",
            placeholders.join(", ")
        ))
        .await?;
    let mut expected = Vec::new();
    for batch in 0..3i64 {
        let ids: Vec<i64> = (0..rows as i64)
            .map(|i| batch * 1000 + i * 17 + 3)
            .collect();
        let names: Vec<String> = ids.iter().map(|id| format!("user {id}")).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = ids
            .iter()
            .zip(&names)
            .flat_map(|(id, name)| [id as _, name as _])
            .collect();
        let returned = client.query(&insert, &params).await?;
        let mut got: Vec<(i64, String)> = returned.iter().map(|r| (r.get(0), r.get(1))).collect();
        got.sort();
        let want: Vec<(i64, String)> = ids.iter().copied().zip(names).collect();
        assert_eq!(
            got, want,
            "RETURNING rows of batch {batch} from every shard"
        );
        expected.extend(ids);
    }
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        expected.len()
    );

    // A duplicate on one shard fails the whole statement; the client keeps working.
    let two = client
        .prepare("INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b'), ($3, 'c')")
        .await?;
    let err = client
        .execute(&two, &[&5_000_001i64, &5_000_002i64, &expected[0]])
        .await
        .err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        expected.len()
    );
    let inserted = client
        .execute(&two, &[&5_000_001i64, &5_000_002i64, &5_000_003i64])
        .await?;
    assert_eq!(inserted, 3, "summed row count");
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        expected.len() + 3
    );
    Ok(())
}
