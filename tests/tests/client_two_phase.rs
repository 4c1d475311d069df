//! Two-phase commit issued by the client (`PREPARE TRANSACTION`, `COMMIT/ROLLBACK PREPARED`,
//! `pg_prepared_xacts`, as psycopg's `tpc_*` and XA transaction managers use it): it works for
//! transactions on the default shard, where those statements are served, and is refused with
//! 0A000 for a transaction on another shard, leaving nothing prepared; shardline's own names
//! (`sl_tx:…`, `sl_dw:…`) are refused with 42939. Both pool modes.

use shardline_tests::txn::{query, users_table};
use shardline_tests::{sqlstate, TestCluster};
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread")]
async fn client_two_phase_commit_works_on_the_default_shard() -> anyhow::Result<()> {
    for mode in ["transaction", "session"] {
        let yaml = format!("pool:\n  mode: {mode}\n");
        let cluster = TestCluster::start_with(&format!("client-2pc-{mode}"), 2, &yaml).await?;
        let client = cluster.client().await?;
        users_table(&client).await?;
        client
            .batch_execute("CREATE TABLE notes (id int PRIMARY KEY)")
            .await?;
        let prepared = || query(&client, "SELECT gid FROM pg_prepared_xacts ORDER BY gid");

        // A transaction on the default shard (an unlisted table lives there).
        client.simple_query("BEGIN").await?;
        client.simple_query("INSERT INTO notes VALUES (1)").await?;
        client.simple_query("PREPARE TRANSACTION 'app_1'").await?;
        assert_eq!(prepared().await?, ["app_1"], "{mode}");
        assert_eq!(query(&client, "SELECT count(*) FROM notes").await?, ["0"]);
        client.simple_query("COMMIT PREPARED 'app_1'").await?;
        assert_eq!(query(&client, "SELECT count(*) FROM notes").await?, ["1"]);

        // An empty transaction can be prepared too (the held BEGIN reaches the shard).
        client.simple_query("BEGIN").await?;
        client.simple_query("PREPARE TRANSACTION 'empty'").await?;
        assert_eq!(prepared().await?, ["empty"], "{mode}");
        client.simple_query("ROLLBACK PREPARED 'empty'").await?;
        assert!(prepared().await?.is_empty(), "{mode}");

        // shardline's own names are refused: its resolver would finish them.
        client.simple_query("BEGIN").await?;
        client.simple_query("INSERT INTO notes VALUES (2)").await?;
        let taken = client
            .simple_query("PREPARE TRANSACTION 'sl_tx:1:2:s0:s1'")
            .await;
        let error = anyhow::Error::from(taken.expect_err("a reserved name"));
        assert_eq!(sqlstate(&error), Some(SqlState::RESERVED_NAME), "{mode}");
        client.simple_query("ROLLBACK").await?;
        assert!(prepared().await?.is_empty(), "{mode}");

        // A transaction on another shard: refused, and it fails until ROLLBACK.
        let elsewhere = (1..1000)
            .find(|k| cluster.shard_of("users", *k).ok() == Some(1))
            .ok_or_else(|| anyhow::anyhow!("no key on shard 1"))?;
        client.simple_query("BEGIN").await?;
        client
            .simple_query(&format!("INSERT INTO users (id) VALUES ({elsewhere})"))
            .await?;
        let refused = client.simple_query("PREPARE TRANSACTION 'app_2'").await;
        let error = anyhow::Error::from(refused.expect_err("PREPARE on shard 1"));
        assert_eq!(
            sqlstate(&error),
            Some(SqlState::FEATURE_NOT_SUPPORTED),
            "{mode}"
        );
        client.simple_query("ROLLBACK").await?;
        let on_shard = cluster
            .shard(1)
            .await?
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?;
        assert_eq!(on_shard.get::<_, i64>(0), 0, "{mode}");
        assert_eq!(query(&client, "SELECT count(*) FROM users").await?, ["0"]);
    }
    Ok(())
}
