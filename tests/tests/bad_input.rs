//! Bad input gets a clean `ErrorResponse` with the right SQLSTATE, and the proxy keeps serving
//! everyone else: wrong passwords, unknown databases, malformed startup packets, oversized and
//! garbage messages, SQL the router cannot parse, and a shard that is down.

use std::time::Duration;

use shardline_tests::{connect, sqlstate, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

/// Reads backend messages until an `ErrorResponse`, returning its SQLSTATE.
async fn read_error_code(stream: &mut TcpStream) -> anyhow::Result<String> {
    loop {
        let mut header = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header)).await??;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).await?;
        if header[0] == b'E' {
            let mut fields = body.split(|b| *b == 0);
            let code = fields
                .find(|f| f.first() == Some(&b'C'))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                .unwrap_or_default();
            return Ok(code);
        }
    }
}

fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

async fn assert_still_serving(cluster: &TestCluster) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_logins_are_refused_cleanly() -> anyhow::Result<()> {
    let cluster = TestCluster::start("badlogin", 2).await?;
    let port = cluster.port();
    let wrong = connect(&format!(
        "host=127.0.0.1 port={port} user=app password=nope dbname=app"
    ))
    .await;
    let code = wrong.err().and_then(|e| sqlstate(&e));
    assert_eq!(code, Some(SqlState::INVALID_PASSWORD));

    let unknown_user = connect(&format!(
        "host=127.0.0.1 port={port} user=mallory password=x dbname=app"
    ))
    .await;
    let code = unknown_user.err().and_then(|e| sqlstate(&e));
    assert_eq!(code, Some(SqlState::INVALID_PASSWORD));

    let md5 = connect(&format!(
        "host=127.0.0.1 port={port} user=md5user password=app dbname=app"
    ))
    .await;
    // md5user authenticates to the proxy with md5, but has no role on the shards: the shard's
    // own refusal (28P01 or 28000) comes back, not a hang or a proxy crash.
    let code = md5.err().and_then(|e| sqlstate(&e));
    assert!(
        matches!(
            code,
            Some(SqlState::INVALID_PASSWORD) | Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        ),
        "{code:?}"
    );

    let unknown_db = connect(&format!(
        "host=127.0.0.1 port={port} user=app password=app dbname=nosuchdb"
    ))
    .await;
    let code = unknown_db.err().and_then(|e| sqlstate(&e));
    // Shards pin `database: app`: that is the one database the proxy serves; another name is
    // refused at login, as PostgreSQL refuses a database it does not have.
    assert_eq!(code, Some(SqlState::INVALID_CATALOG_NAME));

    // Malformed startup packets.
    let mut stream = TcpStream::connect(cluster.proxy.addr).await?;
    stream.write_all(&[0, 0, 0, 3]).await?;
    assert_eq!(read_error_code(&mut stream).await?, "08P01");
    let mut stream = TcpStream::connect(cluster.proxy.addr).await?;
    stream
        .write_all(&[0, 0, 0, 12, 0, 9, 0, 0, b'x', 0, 0, 0])
        .await?;
    assert_eq!(read_error_code(&mut stream).await?, "08P01");
    assert_still_serving(&cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_database_gets_3d000() -> anyhow::Result<()> {
    // Shards without a pinned database use the client's.
    let cluster = TestCluster::start("baddb", 1).await?;
    let yaml = cluster.yaml.replace(", database: app}", "}");
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let port = proxy.addr.port();
    let unknown_db = connect(&format!(
        "host=127.0.0.1 port={port} user=app password=app dbname=nosuchdb"
    ))
    .await;
    let code = unknown_db.err().and_then(|e| sqlstate(&e));
    assert_eq!(code, Some(SqlState::INVALID_CATALOG_NAME));
    let ok = connect(&format!(
        "host=127.0.0.1 port={port} user=app password=app dbname=app"
    ))
    .await?;
    assert_eq!(ok.query_one("SELECT 2", &[]).await?.get::<_, i32>(0), 2);
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_and_sql_get_errors_not_crashes() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with("badmsg", 2, "max_message_bytes: 65536\n").await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;

    // SQL the router cannot parse that touches a sharded table: refused with 42601.
    let err = client
        .batch_execute("SELECT * FROM users WHERE id = = 1")
        .await
        .err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::SYNTAX_ERROR)
    );
    // Unparseable SQL without sharded tables goes to the default shard; PostgreSQL answers.
    let err = client.batch_execute("SELEC 1").await.err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::SYNTAX_ERROR)
    );
    // The session is still fine.
    assert_eq!(client.query_one("SELECT 3", &[]).await?.get::<_, i32>(0), 3);

    // A value the proxy itself reads from client text, which used to panic the session's
    // task: a HAVING compared by the proxy, with a multi-byte character where the timestamp's
    // date ends. It is refused with an error, and the session goes on. An average over values
    // finer than PostgreSQL's division keeps (1,000 digits) is answered as PostgreSQL answers.
    let fine = format!("0.{}", "1".repeat(1001));
    let rows: Vec<String> = (1..=8)
        .map(|id| format!("({id}, '2024-01-01 0{id}:00:00+00', {fine})"))
        .collect();
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, amount numeric)",
        )
        .await?;
    client
        .batch_execute(&format!(
            "INSERT INTO events (id, at, amount) VALUES {}",
            rows.join(", ")
        ))
        .await?;
    let sql = "SELECT max(at) FROM events HAVING max(at) > '2024-01-0\u{e9}'";
    let err = client.simple_query(sql).await.err();
    assert!(
        err.as_ref().is_some_and(|e| e.code().is_some()),
        "{sql}: {err:?}"
    );
    assert_eq!(client.query_one("SELECT 4", &[]).await?.get::<_, i32>(0), 4);
    // The average is PostgreSQL's, digit for digit.
    let text = |rows: Vec<SimpleQueryMessage>| {
        rows.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    };
    let averaged = text(
        client
            .simple_query("SELECT avg(amount) FROM events")
            .await?,
    );
    let one_server = cluster.shard(0).await?;
    let expected = text(
        one_server
            .simple_query(&format!(
                "SELECT avg(x) FROM (SELECT {fine}::numeric AS x FROM generate_series(1, 8)) t"
            ))
            .await?,
    );
    assert!(expected.is_some());
    assert_eq!(averaged, expected);

    // Oversized message: 54000, connection closed, proxy fine.
    let huge = "x".repeat(100_000);
    let err = client
        .batch_execute(&format!("SELECT '{huge}'"))
        .await
        .err();
    let code = err.as_ref().and_then(|e| e.code().cloned());
    assert_eq!(code, Some(SqlState::PROGRAM_LIMIT_EXCEEDED), "{err:?}");

    // Garbage mid-session: a real login, then bytes that are not a protocol message.
    let mut stream = TcpStream::connect(cluster.proxy.addr).await?;
    stream.write_all(&startup_packet("appx", "app")).await?;
    assert_eq!(read_error_code(&mut stream).await?, "28P01");
    let raw = connect(&cluster.proxy_conninfo()).await?;
    drop(raw);
    let mut stream = TcpStream::connect(cluster.proxy.addr).await?;
    stream
        .write_all(b"\x01\x02\x03garbage that is not a startup packet at all")
        .await?;
    assert_eq!(read_error_code(&mut stream).await?, "08P01");
    assert_still_serving(&cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_shard_fails_only_its_statements() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start("down", 2).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    let rule = cluster.rule("users")?;
    let on = |shard: usize| {
        (1..1000i64)
            .find(|k| rule.shard_for(&shardline_router::KeyValue::Int(*k)).ok() == Some(shard))
            .unwrap_or(0)
    };
    let (k0, k1) = (on(0), on(1));
    client
        .execute("INSERT INTO users (id, name) VALUES ($1, 'zero')", &[&k0])
        .await?;
    client
        .execute("INSERT INTO users (id, name) VALUES ($1, 'one')", &[&k1])
        .await?;

    // Stop shard 1 (not the default shard).
    tokio::task::block_in_place(|| cluster.pg.stop_one(1))?;
    let fresh = cluster.client().await?;
    let err = fresh
        .query("SELECT name FROM users WHERE id = $1", &[&k1])
        .await
        .err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::CONNECTION_FAILURE)
    );
    let err = fresh.query("SELECT name FROM users", &[]).await.err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(SqlState::CONNECTION_FAILURE)
    );
    // Shard 0 keeps serving, on this connection and on new ones.
    let name: String = fresh
        .query_one("SELECT name FROM users WHERE id = $1", &[&k0])
        .await?
        .get(0);
    assert_eq!(name, "zero");
    assert_still_serving(&cluster).await
}

/// An expression chaining a hundred thousand operators (`a AND b AND …`, 1.6 MB of SQL), or
/// nine nested chains of 3,990, is refused, in the simple and the extended protocol, and the
/// proxy goes on serving. sqlparser
/// builds such a chain as a tree as deep as it is long: before, the plan cache's check that a
/// statement's shape parses built that tree, and dropping it overflowed the worker's stack,
/// which aborted the whole proxy.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_chained_operators_are_refused_not_fatal() -> anyhow::Result<()> {
    let cluster = TestCluster::start("deepchain", 2).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    let conditions: Vec<String> = (0..100_000).map(|i| format!("id <> {i}")).collect();
    let sql = format!(
        "SELECT count(*) FROM users WHERE {}",
        conditions.join(" AND ")
    );
    // Chains nested in parentheses add up: nine levels of 3,990 operators, none over the
    // limit alone, make a tree 35,910 deep.
    let mut nested = String::from("id");
    for _ in 0..9 {
        nested = format!("({nested}{})", " + 1".repeat(3990));
    }
    let nested = format!("SELECT count(*) FROM users WHERE {nested} > 0");
    // Refused as too complex (54001) when they run, in either protocol.
    for sql in [&sql, &nested] {
        let simple = client.simple_query(sql).await.err();
        let extended = client.query(sql, &[]).await.err();
        for err in [simple, extended] {
            let code = err.as_ref().and_then(|e| e.code().cloned());
            assert_eq!(code, Some(SqlState::STATEMENT_TOO_COMPLEX), "{err:?}");
        }
    }
    assert_eq!(client.query_one("SELECT 5", &[]).await?.get::<_, i32>(0), 5);
    assert_still_serving(&cluster).await
}
