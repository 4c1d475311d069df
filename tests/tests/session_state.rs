//! What a session carries across the proxy as one PostgreSQL would show it, checked byte by
//! byte against a shard spoken to directly: the `ParameterStatus` a setting change produces,
//! including a `SET` the proxy held inside a transaction that had not reached a shard yet, and
//! its revert at `ROLLBACK` (told before the client reads rows written under it).

use shardline_tests::wire::{cstr, login, login_socket, message, read_message, trusting_proxy};
use shardline_tests::TestCluster;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Runs `sql` and returns the `DateStyle` values reported on the way, and the rows' first
/// column.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    stream.write_all(&message(b'Q', &cstr(sql))).await?;
    let (mut reported, mut rows) = (Vec::new(), Vec::new());
    loop {
        let (tag, body) = read_message(stream).await?;
        match tag {
            b'S' => {
                let mut fields = body.split(|b| *b == 0);
                if fields.next() == Some(b"DateStyle") {
                    let value = fields.next().unwrap_or_default();
                    reported.push(String::from_utf8_lossy(value).into_owned());
                }
            }
            b'D' => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                rows.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'E' => anyhow::bail!("{sql}: {}", String::from_utf8_lossy(&body)),
            b'Z' => return Ok((reported, rows)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_set_reports_its_parameter_status_like_postgres() -> anyhow::Result<()> {
    let cluster = TestCluster::start("session-state", 2).await?;
    let proxy = trusting_proxy(&cluster).await?;
    let mut through = login(proxy.addr.port()).await?;
    let server = &cluster.pg.servers()[0];
    let mut direct = login_socket(server, "app", "app").await?;
    let script = [
        "BEGIN",
        "SET datestyle = German, YMD",
        "SELECT '2000-01-10 12:00'::timestamp::text",
        "ROLLBACK",
        "SELECT '2000-01-10 12:00'::timestamp::text",
    ];
    // What the client has been told DateStyle is, after each statement, and the rows.
    let (mut told_direct, mut told_through) = (String::new(), String::new());
    for sql in script {
        let (reported, rows) = run(&mut direct, sql).await?;
        told_direct = reported.last().cloned().unwrap_or(told_direct);
        let (reported, proxied_rows) = run(&mut through, sql).await?;
        told_through = reported.last().cloned().unwrap_or(told_through);
        assert_eq!(proxied_rows, rows, "{sql}");
        if !rows.is_empty() {
            assert_eq!(
                told_through, told_direct,
                "the client must know the DateStyle its rows are written in ({sql})"
            );
        }
    }
    assert_eq!(told_through, told_direct, "after ROLLBACK");

    // Told at the SET itself, as PostgreSQL tells it: a driver encodes its next query by
    // client_encoding (psycopg does), so learning it later is too late.
    for sql in ["BEGIN", "SET client_encoding = latin9", "ROLLBACK"] {
        let direct_told = report_of(&mut direct, sql, "client_encoding").await?;
        let through_told = report_of(&mut through, sql, "client_encoding").await?;
        assert_eq!(through_told, direct_told, "{sql}");
    }
    Ok(())
}

/// Runs `sql` and returns the values of `setting` it reported.
async fn report_of<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
    setting: &str,
) -> anyhow::Result<Vec<String>> {
    stream.write_all(&message(b'Q', &cstr(sql))).await?;
    let mut reported = Vec::new();
    loop {
        let (tag, body) = read_message(stream).await?;
        match tag {
            b'S' => {
                let mut fields = body.split(|b| *b == 0);
                if fields.next() == Some(setting.as_bytes()) {
                    let value = fields.next().unwrap_or_default();
                    reported.push(String::from_utf8_lossy(value).into_owned());
                }
            }
            b'E' => anyhow::bail!("{sql}: {}", String::from_utf8_lossy(&body)),
            b'Z' => return Ok(reported),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_across_shards_reports_the_reverted_setting() -> anyhow::Result<()> {
    let cluster = TestCluster::start("session-revert", 2).await?;
    let proxy = trusting_proxy(&cluster).await?;
    let mut through = login(proxy.addr.port()).await?;
    run(&mut through, "CREATE TABLE users (id bigint PRIMARY KEY)").await?;
    let first = cluster.shard_of("users", 1)?;
    let other = (2..1000)
        .find(|k| cluster.shard_of("users", *k).ok() != Some(first))
        .ok_or_else(|| anyhow::anyhow!("every key on one shard"))?;
    let mut direct = login_socket(&cluster.pg.servers()[0], "app", "app").await?;
    for sql in ["BEGIN", "SET datestyle = German, YMD", "ROLLBACK"] {
        run(&mut direct, sql).await?;
    }
    let (reverted, _) = run(&mut direct, "SHOW datestyle").await?;
    let mut told = Vec::new();
    for sql in [
        "BEGIN".to_owned(),
        "SET datestyle = German, YMD".to_owned(),
        "INSERT INTO users (id) VALUES (1)".to_owned(),
        format!("INSERT INTO users (id) VALUES ({other})"),
        "ROLLBACK".to_owned(),
    ] {
        told.extend(run(&mut through, &sql).await?.0);
    }
    // The client may learn of the revert at the ROLLBACK, as from PostgreSQL, or at the latest
    // before the next rows it reads, which are written in the reverted style.
    let (before_rows, shown) = run(&mut through, "SHOW datestyle").await?;
    told.extend(before_rows);
    let (_, shown_direct) = run(&mut direct, "SHOW datestyle").await?;
    assert_eq!(shown, shown_direct);
    assert!(reverted.is_empty(), "SHOW reports nothing new");
    assert_eq!(
        told.last(),
        Some(&shown_direct[0]),
        "the client was told the setting went back: {told:?}"
    );

    // The same with ROLLBACK TO SAVEPOINT in a transaction on both shards: told at once.
    let mut told = Vec::new();
    for sql in [
        "BEGIN".to_owned(),
        "INSERT INTO users (id) VALUES (1)".to_owned(),
        format!("INSERT INTO users (id) VALUES ({other})"),
        "SAVEPOINT a".to_owned(),
        "SET datestyle = German, YMD".to_owned(),
        "ROLLBACK TO SAVEPOINT a".to_owned(),
    ] {
        told.extend(run(&mut through, &sql).await?.0);
    }
    assert_eq!(told.last(), Some(&shown_direct[0]), "{told:?}");
    run(&mut through, "ROLLBACK").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_to_savepoint_undoes_a_set_on_every_shard_later() -> anyhow::Result<()> {
    use shardline_tests::txn::{keys_on_distinct_shards, query, users_table};
    let cluster = TestCluster::start("savepoint-settings", 2).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    for key in &keys {
        client
            .simple_query(&format!("INSERT INTO users (id) VALUES ({key})"))
            .await?;
    }
    let before = query(&client, "SHOW DateStyle").await?;
    // The SET after the savepoint is undone by ROLLBACK TO, as on one PostgreSQL; the SET
    // before it stays.
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!(
            "UPDATE users SET name = 'x' WHERE id = {}",
            keys[0]
        ))
        .await?;
    client
        .simple_query("SET search_path = public, pg_catalog")
        .await?;
    client.simple_query("SAVEPOINT a").await?;
    client.simple_query("SET DateStyle = 'German, DMY'").await?;
    client.simple_query("ROLLBACK TO SAVEPOINT a").await?;
    client.simple_query("COMMIT").await?;
    // Every shard's backend, in later transactions, has the client's settings as they are now.
    for key in &keys {
        let sql = format!(
            "SELECT current_setting('DateStyle') || ' / ' || current_setting('search_path') FROM users WHERE id = {key}"
        );
        let expected = format!("{} / public, pg_catalog", before[0]);
        assert_eq!(query(&client, &sql).await?, [expected], "key {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn show_inside_a_transaction_sees_what_the_transaction_set() -> anyhow::Result<()> {
    use shardline_tests::txn::query;
    let cluster = TestCluster::start("show-in-tx", 2).await?;
    let through = cluster.client().await?;
    let direct = cluster.shard(0).await?;
    let script = [
        "BEGIN",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET LOCAL statement_timeout = '7s'",
        "SHOW transaction_isolation",
        "SHOW statement_timeout",
        "COMMIT",
        "SHOW transaction_isolation",
        "SHOW statement_timeout",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "SHOW transaction_isolation",
        "ROLLBACK",
    ];
    for sql in script {
        assert_eq!(
            query(&through, sql).await?,
            query(&direct, sql).await?,
            "{sql}"
        );
    }
    Ok(())
}
