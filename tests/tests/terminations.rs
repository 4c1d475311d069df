//! A backend that the server ends — `pg_terminate_backend`, an idle-in-transaction timeout —
//! reaches the client as PostgreSQL would send it: the `FATAL` error with its SQLSTATE, then the
//! connection closes. In both pool modes; the proxy goes on serving everyone else.

use std::time::Duration;

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
        // the backend; the client hears 25P03 at its next statement.
        let client = cluster.client().await?;
        client
            .simple_query("SET idle_in_transaction_session_timeout = '200ms'")
            .await?;
        client.simple_query("BEGIN").await?;
        client.simple_query("SELECT 1").await?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (code, closed) = failure(&client, "SELECT 1").await;
        assert_eq!(
            code,
            Some(SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT),
            "{mode}"
        );
        assert!(closed, "{mode}: the session ends with its backend");

        // Everyone else goes on.
        let other = cluster.client().await?;
        let two: i32 = other.query_one("SELECT 2", &[]).await?.get(0);
        assert_eq!(two, 2, "{mode}");
    }
    Ok(())
}
