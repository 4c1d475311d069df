//! A backend that the server ends — `pg_terminate_backend`, an idle-in-transaction timeout —
//! reaches the client as PostgreSQL would send it: the `FATAL` error with its SQLSTATE, then the
//! connection closes. In both pool modes; the proxy goes on serving everyone else.

use std::time::Duration;

use shardline_tests::wire::{cstr, login, message, read_message, trusting_proxy as wire_proxy};
use shardline_tests::{sqlstate, TestCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The SQLSTATE a statement failed with, and whether the client's connection ended.
async fn failure(client: &Client, sql: &str) -> (Option<SqlState>, bool) {
    let result = client.simple_query(sql).await;
    let code = result.err().and_then(|e| sqlstate(&anyhow::Error::from(e)));
    // The connection task notices the end a moment later.
    for _ in 0..50 {
        if client.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (code, client.is_closed())
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_backends_end_the_client_session_as_postgres_does() -> anyhow::Result<()> {
    for mode in ["transaction", "session"] {
        let yaml = format!("pool:\n  mode: {mode}\n");
        let cluster = TestCluster::start_with(&format!("terminate-{mode}"), 2, &yaml).await?;

        // The backend running the statement terminates itself.
        let client = cluster.client().await?;
        let (code, closed) =
            failure(&client, "SELECT pg_terminate_backend(pg_backend_pid())").await;
        assert_eq!(code, Some(SqlState::ADMIN_SHUTDOWN), "{mode}");
        assert!(closed, "{mode}: the session ends with its backend");

        // A transaction left idle beyond idle_in_transaction_session_timeout: the shard ends
        // the backend. And the same inside a transaction no statement has taken to a shard
        // yet (psycopg's non-autocommit connection: BEGIN, then the SET): the proxy keeps the
        // time itself. The client reads 25P03 when it next speaks, then the connection ends.
        let port = wire_proxy(&cluster).await?;
        let scripts: [&[&str]; 2] = [
            &[
                "SET idle_in_transaction_session_timeout = '200ms'",
                "BEGIN",
                "SELECT 1",
            ],
            &[
                "BEGIN",
                "SET SESSION idle_in_transaction_session_timeout = 100",
            ],
        ];
        for script in scripts {
            let (code, closed) = idle_ending(port.addr.port(), script).await?;
            assert_eq!(code, "25P03", "{mode}: {script:?}");
            assert!(closed, "{mode}: {script:?}: the session ends");
        }

        // Everyone else goes on.
        let other = cluster.client().await?;
        let two: i32 = other.query_one("SELECT 2", &[]).await?.get(0);
        assert_eq!(two, 2, "{mode}");
    }
    Ok(())
}

/// Runs `script` over the byte-level protocol, stays idle past the timeout it sets, then sends
/// one more query: the SQLSTATE of the error it reads, and whether the connection then ends.
async fn idle_ending(port: u16, script: &[&str]) -> anyhow::Result<(String, bool)> {
    use tokio::io::AsyncWriteExt;
    let mut stream = login(port).await?;
    for sql in script {
        stream.write_all(&message(b'Q', &cstr(sql))).await?;
        while read_message(&mut stream).await?.0 != b'Z' {}
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The write may already fail: the error is in the socket either way.
    let _ = stream.write_all(&message(b'Q', &cstr("SELECT 1"))).await;
    let (tag, body) = read_message(&mut stream).await?;
    anyhow::ensure!(tag == b'E', "expected an error, got {:?}", tag as char);
    let code = body
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default();
    let closed = read_message(&mut stream).await.is_err();
    Ok((code, closed))
}
