//! End to end through the proxy with tokio-postgres: DDL reaches every shard, rows land on the
//! shard the router names (checked on each shard directly), named prepared statements with
//! binary parameters survive transaction pooling, transactions stay on one shard, and
//! session settings follow the client across backends.

use shardline_tests::{connect, TestCluster};
use tokio_postgres::error::SqlState;

const SCHEMA: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, balance numeric DEFAULT 0);
                      CREATE TABLE orders (id bigserial, user_id bigint NOT NULL, amount int NOT NULL, PRIMARY KEY (user_id, id));
                      CREATE TABLE countries (code text PRIMARY KEY, name text);";

#[tokio::test(flavor = "multi_thread")]
async fn rows_land_on_their_shard_and_read_back() -> anyhow::Result<()> {
    let cluster = TestCluster::start("placement", 4).await?;
    let client = cluster.client().await?;
    client.batch_execute(SCHEMA).await?;
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        let n: i64 = shard
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename IN ('users','orders','countries')",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(n, 3, "DDL did not reach shard {i}");
    }

    // Named prepared statement, binary int8 parameter, one transaction per row (autocommit):
    // every execution may get a different backend.
    let insert = client
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await?;
    let ids: Vec<i64> = (1..=400).map(|i| i * 7919 - 1000).collect();
    for id in &ids {
        client
            .execute(&insert, &[id, &format!("user {id}")])
            .await?;
    }
    let select = client
        .prepare("SELECT name FROM users WHERE id = $1")
        .await?;
    for id in &ids {
        let row = client.query_one(&select, &[id]).await?;
        assert_eq!(row.get::<_, String>(0), format!("user {id}"));
    }

    // Placement: each shard holds exactly the ids the router assigns to it.
    let mut total = 0;
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        let rows = shard.query("SELECT id FROM users", &[]).await?;
        for row in &rows {
            let id: i64 = row.get(0);
            assert_eq!(
                cluster.shard_of("users", id)?,
                i,
                "user {id} is on shard {i}"
            );
        }
        total += rows.len();
    }
    assert_eq!(total, ids.len());

    // Keyless read: all shards, rows concatenated, summed count tag.
    let all = client.query("SELECT id FROM users", &[]).await?;
    assert_eq!(all.len(), ids.len());
    let updated = client
        .execute("UPDATE users SET balance = balance + 1", &[])
        .await?;
    assert_eq!(updated, ids.len() as u64);

    // Reference table: written everywhere, read from one.
    client
        .execute("INSERT INTO countries VALUES ('FR', 'France')", &[])
        .await?;
    for i in 0..cluster.shard_count() {
        let n: i64 = cluster
            .shard(i)
            .await?
            .query_one("SELECT count(*) FROM countries", &[])
            .await?
            .get(0);
        assert_eq!(n, 1, "reference row missing on shard {i}");
    }
    let countries = client.query("SELECT name FROM countries", &[]).await?;
    assert_eq!(countries.len(), 1);

    // Co-located join on the key runs on one shard and sees both tables.
    let uid = ids[3];
    client
        .execute(
            "INSERT INTO orders (user_id, amount) VALUES ($1, 5), ($1, 7)",
            &[&uid],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT u.name, sum(o.amount)::int8 FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1 GROUP BY u.name",
            &[&uid],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(1), 12);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_fail_whole_and_errors_keep_their_sqlstate() -> anyhow::Result<()> {
    let cluster = TestCluster::start("tx", 4).await?;
    let mut client = cluster.client().await?;
    client.batch_execute(SCHEMA).await?;
    // Two ids on the same shard and one elsewhere.
    let a = 1i64;
    let same = (2..10_000)
        .find(|k| cluster.shard_of("users", *k).ok() == cluster.shard_of("users", a).ok())
        .unwrap_or(0);
    let other = (2..10_000)
        .find(|k| cluster.shard_of("users", *k).ok() != cluster.shard_of("users", a).ok())
        .unwrap_or(0);

    let tx = client.transaction().await?;
    tx.execute("INSERT INTO users (id, name) VALUES ($1, 'a')", &[&a])
        .await?;
    tx.execute("INSERT INTO users (id, name) VALUES ($1, 'b')", &[&same])
        .await?;
    tx.commit().await?;

    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO users (id, name) VALUES ($1, 'c')",
        &[&(same + 100_000)],
    )
    .await
    .ok();
    tx.rollback().await?;

    // Another shard joins the transaction; a failure on one shard fails all of it, and
    // nothing of it is committed on either.
    let tx = client.transaction().await?;
    tx.execute("UPDATE users SET name = 'changed' WHERE id = $1", &[&a])
        .await?;
    tx.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", &[&other])
        .await?;
    let err = tx
        .execute("INSERT INTO users (id, name) VALUES ($1, 'dup')", &[&same])
        .await;
    let code = err.as_ref().err().and_then(|e| e.code().cloned());
    assert_eq!(code, Some(SqlState::UNIQUE_VIOLATION), "{err:?}");
    let after = tx.query("SELECT 1", &[]).await;
    assert_eq!(
        after.err().and_then(|e| e.code().cloned()),
        Some(SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    tx.rollback().await?;
    let name: String = client
        .query_one("SELECT name FROM users WHERE id = $1", &[&a])
        .await?
        .get(0);
    assert_eq!(name, "a", "the failed transaction must not commit");
    let missing = client
        .query("SELECT 1 FROM users WHERE id = $1", &[&other])
        .await?;
    assert!(missing.is_empty());

    // SQLSTATE from the shard arrives unchanged; the connection stays usable.
    let dup = client
        .execute("INSERT INTO users (id, name) VALUES ($1, 'dup')", &[&a])
        .await;
    assert_eq!(
        dup.err().and_then(|e| e.code().cloned()),
        Some(SqlState::UNIQUE_VIOLATION)
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM users WHERE id = $1", &[&a])
        .await?
        .get(0);
    assert_eq!(n, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_settings_follow_the_client_across_backends() -> anyhow::Result<()> {
    let cluster = TestCluster::start("settings", 2).await?;
    // Other clients keep backends busy and dirty, so ours gets different ones.
    let noisy = cluster.client().await?;
    noisy.batch_execute("SET statement_timeout = '7s'").await?;
    let client = cluster.client().await?;
    client
        .batch_execute("SET statement_timeout = '1234ms'; SET application_name = 'settings-test'")
        .await?;
    for _ in 0..30 {
        let tx_noise = noisy.query_one("SHOW statement_timeout", &[]).await?;
        assert_eq!(tx_noise.get::<_, String>(0), "7s");
        let row = client.query_one("SHOW statement_timeout", &[]).await?;
        assert_eq!(row.get::<_, String>(0), "1234ms");
        let row = client
            .query_one("SELECT current_setting('application_name')", &[])
            .await?;
        assert_eq!(row.get::<_, String>(0), "settings-test");
    }
    // Startup parameters (application_name, options -c …) hold in every transaction too.
    let conninfo = format!(
        "{} application_name=startup-app options='-c statement_timeout=4321 -c DateStyle=German'",
        cluster.proxy_conninfo()
    );
    let started = connect(&conninfo).await?;
    for _ in 0..10 {
        noisy
            .batch_execute("SET application_name = 'noise'; SET DateStyle = 'ISO'")
            .await?;
        let row = started
            .query_one("SELECT current_setting('statement_timeout'), current_setting('application_name'), current_setting('DateStyle')", &[])
            .await?;
        assert_eq!(row.get::<_, String>(0), "4321ms");
        assert_eq!(row.get::<_, String>(1), "startup-app");
        assert_eq!(row.get::<_, String>(2), "German, DMY");
    }
    client.batch_execute("RESET statement_timeout").await?;
    let row = client.query_one("SHOW statement_timeout", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "0");
    // A SET rolled back with its transaction does not stick.
    client
        .batch_execute("BEGIN; SET statement_timeout = '9s'; SELECT 1; ROLLBACK;")
        .await?;
    let row = client.query_one("SHOW statement_timeout", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "0");
    Ok(())
}
