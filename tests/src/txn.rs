//! Helpers of the transaction tests: keys on distinct shards, the rows each shard holds, read
//! directly, and the results of simple queries as text.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::TestCluster;

/// The rows of a simple query's first column.
pub fn column(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Runs one statement and returns its first column.
pub async fn query(client: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    Ok(column(&client.simple_query(sql).await?))
}

/// Keys of `users`, one on each of `count` different shards.
pub fn keys_on_distinct_shards(cluster: &TestCluster, count: usize) -> anyhow::Result<Vec<i64>> {
    let mut keys = Vec::new();
    let mut shards = Vec::new();
    for key in 1..10_000 {
        let shard = cluster.shard_of("users", key)?;
        if !shards.contains(&shard) {
            shards.push(shard);
            keys.push(key);
            if keys.len() == count {
                return Ok(keys);
            }
        }
    }
    anyhow::bail!("fewer than {count} shards hold users keys")
}

/// Every id of `users`, read from each shard directly.
pub async fn ids_on_shards(cluster: &TestCluster) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for i in 0..cluster.shard_count() {
        for row in cluster
            .shard(i)
            .await?
            .query("SELECT id FROM users", &[])
            .await?
        {
            ids.push(row.get::<_, i64>(0));
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates the `users` table the transaction tests write: a key, a name and a balance.
pub async fn users_table(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text, balance bigint NOT NULL DEFAULT 0)",
        )
        .await?;
    Ok(())
}
