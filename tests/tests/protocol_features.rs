//! Protocol features through the proxy: query cancel, COPY in and out on one shard,
//! pipelined extended-protocol queries, pool checkout timeouts, session pooling, and md5 /
//! SCRAM-verifier logins.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use shardline_tests::{connect, sqlstate, TestCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_running_backend() -> anyhow::Result<()> {
    let cluster = TestCluster::start("cancel", 2).await?;
    let client = cluster.client().await?;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let started = std::time::Instant::now();
    let result = client.batch_execute("SELECT pg_sleep(30)").await;
    canceller.await??;
    assert_eq!(
        result.err().and_then(|e| e.code().cloned()),
        Some(SqlState::QUERY_CANCELED)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the cancel did not reach the shard"
    );
    // The session is usable afterwards.
    assert_eq!(client.query_one("SELECT 5", &[]).await?.get::<_, i32>(0), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_does_not_follow_a_backend_back_to_its_pool() -> anyhow::Result<()> {
    // One backend for everyone: the client that used it last and the client using it now.
    let cluster = TestCluster::start_with("cancel-pool", 1, "pool:\n  size: 1\n").await?;
    let earlier = cluster.client().await?;
    let earlier_pid: i32 = earlier
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let stale = earlier.cancel_token();
    let now = cluster.client().await?;
    let running = tokio::spawn(async move { now.batch_execute("SELECT pg_sleep(1.5)").await });
    // The stale cancel is sent while the statement runs, on the backend the first client used.
    let shard = cluster.shard(0).await?;
    let sleeping = "SELECT count(*) FROM pg_stat_activity
                    WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep(1.5)%'";
    let started = std::time::Instant::now();
    while shard
        .query_one(sleeping, &[&earlier_pid])
        .await?
        .get::<_, i64>(0)
        == 0
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the second client's statement never ran on backend {earlier_pid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stale.cancel_query(NoTls).await?;
    // Not cancelled: it finishes.
    running.await??;
    // Its own cancel still reaches the backend it holds.
    let token = earlier.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let result = earlier.batch_execute("SELECT pg_sleep(30)").await;
    canceller.await??;
    assert_eq!(
        result.err().and_then(|e| e.code().cloned()),
        Some(SqlState::QUERY_CANCELED)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_on_one_shard() -> anyhow::Result<()> {
    let cluster = TestCluster::start("copy", 3).await?;
    let client = cluster.client().await?;
    // `notes` is not in shards.yaml: it lives on the default shard.
    client
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text); CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    let sink = client
        .copy_in("COPY notes (id, body) FROM STDIN")
        .await
        .map_err(|e| anyhow::anyhow!("copy_in start: {e}"))?;
    let mut sink = Box::pin(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\tnote {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await?;
    let copied = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| anyhow::anyhow!("copy_in finish: {e}"))?;
    assert_eq!(copied, 1000);
    let on_default: i64 = cluster
        .shard(0)
        .await?
        .query_one("SELECT count(*) FROM notes", &[])
        .await?
        .get(0);
    assert_eq!(on_default, 1000);

    let stream = client
        .copy_out("COPY (SELECT id, body FROM notes WHERE id < 3 ORDER BY id) TO STDOUT")
        .await?;
    let chunks: Vec<_> = stream.collect().await;
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&chunk?);
    }
    assert_eq!(String::from_utf8(out)?, "0\tnote 0\n1\tnote 1\n2\tnote 2\n");

    // Binary COPY into a table spread over several shards cannot be split by row: refused,
    // and the connection stays usable.
    let refused = client
        .batch_execute("COPY users FROM STDIN (FORMAT binary)")
        .await
        .err();
    assert_eq!(
        refused.and_then(|e| e.code().cloned()),
        Some(SqlState::FEATURE_NOT_SUPPORTED)
    );
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM notes", &[])
            .await?
            .get::<_, i64>(0),
        1000
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_keep_their_order() -> anyhow::Result<()> {
    let cluster = TestCluster::start("pipeline", 4).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    let insert = client
        .prepare("INSERT INTO users (id, name) VALUES ($1, $2)")
        .await?;
    // tokio-postgres pipelines concurrent queries on one connection.
    let inserts = (0..200i64).map(|i| {
        let (client, insert) = (&client, &insert);
        async move { client.execute(insert, &[&i, &format!("n{i}")]).await }
    });
    for result in futures::future::join_all(inserts).await {
        assert_eq!(result?, 1);
    }
    let select = client
        .prepare("SELECT name FROM users WHERE id = $1")
        .await?;
    let reads = (0..200i64).map(|i| {
        let (client, select) = (&client, &select);
        async move {
            client
                .query_one(select, &[&i])
                .await
                .map(|r| (i, r.get::<_, String>(0)))
        }
    });
    for result in futures::future::join_all(reads).await {
        let (i, name) = result?;
        assert_eq!(name, format!("n{i}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_pool_times_out_with_53300() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(
        "exhaust",
        1,
        "pool:\n  size: 1\n  checkout_timeout_ms: 300\n",
    )
    .await?;
    let holder = cluster.client().await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let waiter = cluster.client().await;
    // The login probe itself needs a connection; either the login or the first query must
    // fail with 53300, not hang.
    let code = match waiter {
        Err(e) => sqlstate(&e),
        Ok(client) => client
            .query_one("SELECT 1", &[])
            .await
            .err()
            .and_then(|e| e.code().cloned()),
    };
    assert_eq!(code, Some(SqlState::TOO_MANY_CONNECTIONS));
    holder.batch_execute("COMMIT").await?;
    let later = cluster.client().await?;
    assert_eq!(later.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_keeps_the_backend_and_resets_it_after() -> anyhow::Result<()> {
    let cluster =
        TestCluster::start_with("session", 1, "pool:\n  mode: session\n  size: 1\n").await?;
    let client = cluster.client().await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    client
        .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .await?;
    for _ in 0..5 {
        let again: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        assert_eq!(again, pid, "session mode must keep the same backend");
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM scratch", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next client may get the same backend, but not its temp table.
    let next = cluster.client().await?;
    let leftover = next
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'",
            &[],
        )
        .await?;
    assert_eq!(leftover.get::<_, i64>(0), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_and_scram_verifier_logins() -> anyhow::Result<()> {
    // The verifier of password "secret", in pg_authid format, computed by PostgreSQL itself.
    let cluster = TestCluster::start("auth", 1).await?;
    let admin = connect(&cluster.pg.servers()[0].superuser_conninfo_db("app")).await?;
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE veruser LOGIN PASSWORD 'secret'; CREATE ROLE md5user LOGIN PASSWORD 'app';",
        )
        .await?;
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'veruser'",
            &[],
        )
        .await?
        .get(0);
    let yaml = cluster.yaml.replace(
        "users:\n",
        &format!("users:\n  - {{name: veruser, scram_verifier: \"{verifier}\", server_password: secret}}\n"),
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let port = proxy.addr.port();

    let ok = connect(&format!(
        "host=127.0.0.1 port={port} user=veruser password=secret dbname=app"
    ))
    .await?;
    let who: String = ok.query_one("SELECT current_user::text", &[]).await?.get(0);
    assert_eq!(who, "veruser");
    let bad = connect(&format!(
        "host=127.0.0.1 port={port} user=veruser password=wrong dbname=app"
    ))
    .await;
    assert_eq!(
        bad.err().and_then(|e| sqlstate(&e)),
        Some(SqlState::INVALID_PASSWORD)
    );

    let md5 = connect(&format!(
        "host=127.0.0.1 port={port} user=md5user password=app dbname=app"
    ))
    .await?;
    let who: String = md5
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(who, "md5user");
    let bad = connect(&format!(
        "host=127.0.0.1 port={port} user=md5user password=nope dbname=app"
    ))
    .await;
    assert_eq!(
        bad.err().and_then(|e| sqlstate(&e)),
        Some(SqlState::INVALID_PASSWORD)
    );
    proxy.stop().await;
    Ok(())
}
