//! Route introspection: `EXPLAIN (ROUTE) …` names the shards a statement would use without
//! running it, and `shardline.show_route` makes every statement announce its shards.

use std::time::{Duration, Instant};

use shardline_tests::TestCluster;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

fn first_row(messages: &[SimpleQueryMessage]) -> Option<(String, String)> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some((row.get(0)?.to_owned(), row.get(1)?.to_owned())),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_route_names_the_shards_without_running_the_statement() -> anyhow::Result<()> {
    let cluster = TestCluster::start("explain", 4).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    let names: Vec<String> = cluster
        .config
        .shards
        .iter()
        .map(|s| s.name.clone())
        .collect();

    for id in [1i64, 42, 1000, 77777] {
        let messages = client
            .simple_query(&format!(
                "EXPLAIN (ROUTE) SELECT name FROM users WHERE id = {id}"
            ))
            .await?;
        let (shards, why) = first_row(&messages).ok_or_else(|| anyhow::anyhow!("no row"))?;
        assert_eq!(shards, names[cluster.shard_of("users", id)?], "{why}");
        assert!(why.contains("hash"), "{why}");
    }
    let messages = client
        .simple_query("EXPLAIN (ROUTE) SELECT name FROM users")
        .await?;
    let (shards, _) = first_row(&messages).ok_or_else(|| anyhow::anyhow!("no row"))?;
    assert_eq!(shards, names.join(", "));

    // Nothing ran: an EXPLAIN (ROUTE) of a DELETE leaves the row in place.
    client
        .execute("INSERT INTO users (id, name) VALUES (5, 'kept')", &[])
        .await?;
    client
        .simple_query("EXPLAIN (ROUTE) DELETE FROM users WHERE id = 5")
        .await?;
    let kept: i64 = client
        .query_one("SELECT count(*) FROM users WHERE id = 5", &[])
        .await?
        .get(0);
    assert_eq!(kept, 1);

    // A statement that cannot be routed explains why instead of failing.
    let messages = client
        .simple_query("EXPLAIN (ROUTE) SELECT * FROM users WHERE id = 'x'")
        .await?;
    let (shards, why) = first_row(&messages).ok_or_else(|| anyhow::anyhow!("no row"))?;
    assert_eq!(shards, "error 22P02", "{why}");

    // A read only PostgreSQL can answer explains its pull-up.
    let messages = client
        .simple_query("EXPLAIN (ROUTE) SELECT count(DISTINCT name) FROM users WHERE id > 3")
        .await?;
    let (shards, why) = first_row(&messages).ok_or_else(|| anyhow::anyhow!("no row"))?;
    assert_eq!(shards, "s0 (rows gathered there)", "{why}");
    assert!(
        why.starts_with("pull-up: the rows of users from s0, s1") && why.contains("WHERE (id > 3)"),
        "{why}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_explain_route_waiting_on_a_shard() -> anyhow::Result<()> {
    let cluster = TestCluster::start("explain-cancel", 2).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    // Shard 1's `users` is locked, so the shards' estimate of a pull-up waits there.
    let holder = cluster.shard(1).await?;
    holder
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await?;
    let token = client.cancel_token();
    let explaining = tokio::spawn(async move {
        client
            .simple_query("EXPLAIN (ROUTE) SELECT count(DISTINCT name) FROM users")
            .await
    });
    let shard = cluster.shard(1).await?;
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND query LIKE 'EXPLAIN (FORMAT JSON)%'";
    let started = Instant::now();
    while shard.query_one(waiting, &[]).await?.get::<_, i64>(0) == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the estimate never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel_query(tokio_postgres::NoTls).await?;
    // Cancelled, the estimate is given up and the explanation comes at once; without the
    // cancel it would wait as long as the lock is held.
    let explained = tokio::time::timeout(Duration::from_secs(10), explaining).await;
    holder.batch_execute("ROLLBACK").await?;
    let messages =
        explained.map_err(|_| anyhow::anyhow!("the cancel did not reach the shard"))???;
    let (_, why) = first_row(&messages).ok_or_else(|| anyhow::anyhow!("no row"))?;
    assert!(why.contains("the shards gave no estimate"), "{why}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn show_route_setting_sends_a_notice_per_statement() -> anyhow::Result<()> {
    let cluster = TestCluster::start("shownotice", 2).await?;
    let (client, mut connection) =
        tokio_postgres::connect(&cluster.proxy_conninfo(), tokio_postgres::NoTls).await?;
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = tx.send(notice.message().to_owned());
            }
        }
    });
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    client.batch_execute("SELECT 1").await?;
    assert!(
        notices.try_recv().is_err(),
        "no notice while the setting is off"
    );
    client
        .batch_execute("SET shardline.show_route = on")
        .await?;
    client
        .batch_execute("SELECT name FROM users WHERE id = 3")
        .await?;
    let shard = cluster.config.shards[cluster.shard_of("users", 3)?]
        .name
        .clone();
    let notice = tokio::time::timeout(std::time::Duration::from_secs(5), notices.recv()).await?;
    let notice = notice.ok_or_else(|| anyhow::anyhow!("no notice"))?;
    assert!(
        notice.starts_with(&format!("shardline: {shard} (")),
        "{notice}"
    );
    Ok(())
}
