//! tokio-postgres through shardline: `tokio_postgres_client URL`.
//!
//! The common scenario of docs/compatibility.md. tokio-postgres prepares every statement with
//! parameters as a named statement (Parse + Describe, then Bind/Execute), pipelines requests
//! whose futures are polled together, runs `batch_execute` through the simple protocol and
//! cancels with a CancelRequest from its `CancelToken`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rust_decimal::Decimal;
use shardline_client_tests::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls};

fn params(row: &Row) -> anyhow::Result<Vec<Box<dyn ToSql + Sync + Send>>> {
    let amount: Option<Decimal> = row.amount.as_deref().map(str::parse).transpose()?;
    Ok(vec![
        Box::new(row.id),
        Box::new(row.n4),
        Box::new(row.name.clone()),
        Box::new(row.uid),
        Box::new(amount),
        Box::new(row.ts),
        Box::new(row.flag),
        Box::new(row.blob.clone()),
        Box::new(row.doc.clone()),
        Box::new(row.tags.clone()),
        Box::new(row.nums.clone()),
    ])
}

async fn insert(client: &impl GenericClient, row: &Row) -> anyhow::Result<u64> {
    let values = params(row)?;
    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as _).collect();
    Ok(client.execute(INSERT, &refs).await?)
}

async fn read(client: &impl GenericClient, key: i64) -> anyhow::Result<Vec<Row>> {
    let rows = client.query(SELECT_ROW, &[&key]).await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            id: r.get(0),
            n4: r.get(1),
            name: r.get(2),
            uid: r.get(3),
            amount: r.get::<_, Option<Decimal>>(4).map(|d| d.to_string()),
            ts: r.get(5),
            flag: r.get(6),
            blob: r.get(7),
            doc: r.get(8),
            tags: r.get(9),
            nums: r.get(10),
        })
        .collect())
}

async fn names(client: &impl GenericClient, key: i64) -> anyhow::Result<Vec<Option<String>>> {
    let rows = client.query(SELECT_NAME, &[&key]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn insert_named(client: &impl GenericClient, key: i64, name: &str) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&key, &name],
        )
        .await?;
    Ok(())
}

/// How many users have a key between the first and the last of `ids`.
async fn count_range(client: &impl GenericClient, ids: &[i64]) -> anyhow::Result<i64> {
    let row = client
        .query_one(COUNT_RANGE, &[&ids[0], &ids[ids.len() - 1]])
        .await?;
    Ok(row.get(0))
}

async fn setting(client: &Client, key: i64) -> anyhow::Result<Vec<String>> {
    let rows = client.query(SHOW_TIMEOUT, &[&key]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// DateStyle is `value`: the timestamp read through tokio-postgres (binary, so DateStyle, which
/// matters only to drivers that parse dates as text, changes nothing: the read checks the value
/// and that nothing breaks), its text, and SHOW DateStyle. tokio-postgres keeps what the server
/// reported with ParameterStatus on the Connection task, out of reach of the client.
async fn datestyle_is(client: &impl GenericClient, value: &str, place: &str) -> anyhow::Result<()> {
    let got: chrono::NaiveDateTime = client.query_one(TS_NATIVE, &[]).await?.get(0);
    ensure!(
        got == ts_value(),
        "{place}: read {got} under DateStyle {value}"
    );
    let text: String = client.query_one(TS_TEXT, &[]).await?.get(0);
    ensure!(
        text == ts_text(value),
        "{place}: the text of the timestamp is {text}, expected {}",
        ts_text(value)
    );
    let shown: String = client.query_one("SHOW DateStyle", &[]).await?.get(0);
    ensure!(
        shown == value,
        "{place}: SHOW DateStyle is {shown}, expected {value}"
    );
    Ok(())
}

/// `result` must be an error with SQLSTATE `want`.
fn expect_sqlstate<T>(
    result: Result<T, tokio_postgres::Error>,
    want: &SqlState,
) -> anyhow::Result<()> {
    match result {
        Ok(_) => bail!(
            "expected SQLSTATE {}, but the statement succeeded",
            want.code()
        ),
        Err(e) => {
            let got = e.code().map(|c| c.code().to_string());
            ensure!(
                e.code() == Some(want),
                "expected SQLSTATE {}, got {got:?}: {e}",
                want.code()
            );
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: tokio_postgres_client URL");
    let mut report = Report::default();
    report.version(env!("TOKIO_POSTGRES_VERSION"));
    let connected = tokio_postgres::connect(&url, NoTls).await;
    let mut client = match connected {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            report.record("connect", Ok(None));
            client
        }
        Err(e) => {
            report.record("connect", Err(e.into()));
            report.exit();
        }
    };
    scenario(&url, &mut client, &mut report).await;
    report.exit();
}

async fn scenario(url: &str, client: &mut Client, report: &mut Report) {
    let keys = keys();
    let rows = inserted_rows();
    let mut present = rows.clone(); // what the table should hold: the oracle of the later steps

    let r = async {
        for sql in DDL {
            client.batch_execute(sql).await?;
        }
        Ok(None)
    };
    report.record("ddl", r.await);

    let r = async {
        for row in rows.values() {
            ensure!(insert(client, row).await? == 1, "id {}: row count", row.id);
        }
        Ok(None)
    };
    report.record("insert", r.await);

    let r = async {
        for (key, row) in &rows {
            let got = read(client, *key).await?;
            ensure!(
                got == [row.clone()],
                "id {key}: read {got:?}, inserted {row:?}"
            );
        }
        Ok(None)
    };
    report.record("read_back", r.await);

    let r = async {
        let key = keys[0];
        let n = client
            .execute(
                "UPDATE users SET name = $1, n4 = n4 + 1 WHERE id = $2",
                &[&"renamed ✓", &key],
            )
            .await?;
        ensure!(n == 1, "update count {n}");
        let row = present.get_mut(&key).context("row")?;
        row.name = Some("renamed ✓".into());
        row.n4 = row.n4.map(|v| v + 1);
        let got = read(client, key).await?;
        ensure!(got == [row.clone()], "after update: {got:?}");
        Ok(None)
    };
    report.record("update", r.await);

    let r = async {
        let key = keys[1];
        let n = client
            .execute("DELETE FROM users WHERE id = $1", &[&key])
            .await?;
        ensure!(n == 1, "delete count {n}");
        present.remove(&key);
        ensure!(
            read(client, key).await?.is_empty(),
            "row still there after delete"
        );
        Ok(None)
    };
    report.record("delete", r.await);

    let r = async {
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&TX_ID, &"in tx"],
        )
        .await?;
        tx.execute(
            "INSERT INTO orders (user_id, n) VALUES ($1, 1), ($1, 2)",
            &[&TX_ID],
        )
        .await?;
        tx.execute("UPDATE users SET n4 = 7 WHERE id = $1", &[&TX_ID])
            .await?;
        tx.commit().await?;
        let row = committed_row();
        let got = read(client, TX_ID).await?;
        ensure!(got == [row.clone()], "committed row: {got:?}");
        present.insert(TX_ID, row);
        let orders: i64 = client
            .query_one("SELECT count(*) FROM orders WHERE user_id = $1", &[&TX_ID])
            .await?
            .get(0);
        ensure!(orders == 2, "orders after commit: {orders}");
        Ok(None)
    };
    report.record("tx_commit", r.await);

    let r = async {
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&ROLLBACK_ID, &"rolled back"],
        )
        .await?;
        tx.execute(
            "INSERT INTO orders (user_id, n) VALUES ($1, 1)",
            &[&ROLLBACK_ID],
        )
        .await?;
        ensure!(
            names(&tx, ROLLBACK_ID).await?.len() == 1,
            "row invisible inside its transaction"
        );
        tx.rollback().await?;
        ensure!(
            read(client, ROLLBACK_ID).await?.is_empty(),
            "rolled-back row is there"
        );
        let orders: i64 = client
            .query_one(
                "SELECT count(*) FROM orders WHERE user_id = $1",
                &[&ROLLBACK_ID],
            )
            .await?
            .get(0);
        ensure!(orders == 0, "orders after rollback: {orders}");
        Ok(None)
    };
    report.record("tx_rollback", r.await);

    let r = async {
        // One transaction holds a backend on each shard its keys need, reads its own writes
        // from all of them and commits them together.
        let tx = client.transaction().await?;
        for key in CROSS_IDS {
            insert_named(&tx, key, "cross shard").await?;
        }
        tx.execute(
            "UPDATE users SET n4 = 7 WHERE id = $1",
            &[&CROSS_IDS[CROSS_IDS.len() - 1]],
        )
        .await?;
        let inside = count_range(&tx, &CROSS_IDS).await?;
        ensure!(
            inside == CROSS_IDS.len() as i64,
            "count inside the transaction: {inside}"
        );
        tx.commit().await?;
        for key in CROSS_IDS {
            let row = cross_shard_row(key);
            present.insert(key, row.clone());
            let got = read(client, key).await?;
            ensure!(got == [row], "id {key} after commit: {got:?}");
        }

        // A savepoint after the first insert: the shards that join later get it replayed, and
        // ROLLBACK TO SAVEPOINT undoes the two inserts after it on whichever shards they ran.
        let (first, rest) = CROSS_ROLLBACK_IDS.split_first().context("keys")?;
        let (last, middle) = rest.split_last().context("keys")?;
        let mut tx = client.transaction().await?;
        insert_named(&tx, *first, "rolled back").await?;
        let savepoint = tx.savepoint("cross_shard").await?;
        for &key in middle {
            insert_named(&savepoint, key, "rolled back").await?;
        }
        savepoint.rollback().await?;
        insert_named(&tx, *last, "rolled back").await?;
        let kept = count_range(&tx, &CROSS_ROLLBACK_IDS).await?;
        ensure!(kept == 2, "count after ROLLBACK TO SAVEPOINT: {kept}");
        tx.rollback().await?;
        let after = count_range(client, &CROSS_ROLLBACK_IDS).await?;
        ensure!(after == 0, "count after ROLLBACK: {after}");
        Ok(None)
    };
    report.record("tx_cross_shard", r.await);

    let r = async {
        let got: Vec<i64> = client
            .query("SELECT id FROM users ORDER BY id DESC LIMIT 5", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<i64> = present.keys().rev().take(5).copied().collect();
        ensure!(got == want, "got {got:?}, expected {want:?}");
        Ok(None)
    };
    report.record("order_limit", r.await);

    let r = async {
        let got: i64 = client
            .query_one("SELECT count(*) FROM users", &[])
            .await?
            .get(0);
        ensure!(
            got == present.len() as i64,
            "count {got}, expected {}",
            present.len()
        );
        Ok(None)
    };
    report.record("count", r.await);

    let r = async {
        // One prepared statement, executed in 24 transactions: the backend changes in between.
        let stmt = client.prepare(SELECT_NAME).await?;
        let ids: Vec<i64> = present.keys().copied().collect();
        for n in 0..24 {
            let key = ids[n % ids.len()];
            let tx = client.transaction().await?;
            let got: Vec<Option<String>> = tx
                .query(&stmt, &[&key])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.commit().await?;
            ensure!(got == [present[&key].name.clone()], "id {key}: {got:?}");
        }
        Ok(None)
    };
    report.record("prepared_reuse", r.await);

    let r = async {
        // A statement over every shard (a lookup without the key) runs twice on this
        // connection, then on a second one, as an application's connection pool does, with
        // the count and a read by key: the proxy shares server-side prepared statements
        // between clients.
        let (other, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        let name = present[&keys[2]].name.clone();
        for conn in [&*client, &*client, &other] {
            let ids: Vec<i64> = conn
                .query(LOOKUP, &[&name])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            ensure!(ids == [keys[2]], "lookup by name: {ids:?}");
        }
        let got: i64 = other
            .query_one("SELECT count(*) FROM users", &[])
            .await?
            .get(0);
        ensure!(
            got == present.len() as i64,
            "count {got}, expected {}",
            present.len()
        );
        let key = keys[2];
        let got = read(&other, key).await?;
        ensure!(got == [present[&key].clone()], "id {key}: read {got:?}");
        Ok(None)
    };
    report.record("second_connection", r.await);

    let r = async {
        let key = keys[2];
        expect_sqlstate(
            client
                .execute("INSERT INTO users (id) VALUES ($1)", &[&key])
                .await,
            &SqlState::UNIQUE_VIOLATION,
        )?;
        ensure!(
            names(client, key).await? == [present[&key].name.clone()],
            "connection unusable after the error"
        );
        Ok(None)
    };
    report.record("unique_violation", r.await);

    let r = async {
        // current_setting() from a row runs on that row's shard: the SET must follow the client.
        let ids: Vec<i64> = keys
            .iter()
            .filter(|k| present.contains_key(k))
            .take(6)
            .copied()
            .collect();
        client
            .batch_execute("SET statement_timeout = '150ms'")
            .await?;
        let checked = async {
            for &key in &ids {
                let got = setting(client, key).await?;
                ensure!(got == ["150ms"], "id {key}: statement_timeout is {got:?}");
            }
            for &key in &ids[..3] {
                let start = Instant::now();
                let slept = client
                    .query("SELECT pg_sleep(3) FROM users WHERE id = $1", &[&key])
                    .await;
                expect_sqlstate(slept, &SqlState::QUERY_CANCELED)?;
                ensure!(
                    start.elapsed() < Duration::from_millis(2500),
                    "the timeout did not stop the sleep"
                );
            }
            Ok(())
        }
        .await;
        client.batch_execute("RESET statement_timeout").await?;
        checked?;
        for &key in &ids {
            let got = setting(client, key).await?;
            ensure!(
                got == ["0"],
                "id {key}: after RESET statement_timeout is {got:?}"
            );
        }
        Ok(None)
    };
    report.record("set_timeout", r.await);

    let r = async {
        // Session state that the server reports or holds, which a pooling proxy must keep
        // straight: three cases psycopg's own test suite hit.
        let before: String = client.query_one("SHOW DateStyle", &[]).await?.get(0);

        // 1. A setting changed inside a transaction, then rolled back; then outside one and reset.
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET DateStyle = '{GERMAN}'"))
            .await?;
        datestyle_is(&tx, GERMAN, "after SET inside a transaction").await?;
        tx.rollback().await?;
        datestyle_is(&*client, &before, "after ROLLBACK").await?;
        client
            .batch_execute(&format!("SET DateStyle = '{GERMAN}'"))
            .await?;
        let checked = datestyle_is(&*client, GERMAN, "after SET outside a transaction").await;
        client.batch_execute("RESET DateStyle").await?;
        checked?;
        datestyle_is(&*client, &before, "after RESET").await?;

        // 2. Transaction::savepoint() as the very first statement of a transaction, rolled back.
        let [rolled_back, kept] = SAVEPOINT_IDS;
        let mut tx = client.transaction().await?;
        let savepoint = tx.savepoint("session_state").await?;
        insert_named(&savepoint, rolled_back, "after a savepoint").await?;
        savepoint.rollback().await?;
        insert_named(&tx, kept, "after a savepoint").await?;
        tx.commit().await?;
        present.insert(kept, savepoint_row(kept));
        ensure!(
            read(&*client, rolled_back).await?.is_empty(),
            "id {rolled_back}, rolled back to the savepoint, is there"
        );
        let got = read(&*client, kept).await?;
        ensure!(
            got == [savepoint_row(kept)],
            "id {kept} after commit: {got:?}"
        );
        let n = count_range(&*client, &SAVEPOINT_IDS).await?;
        ensure!(n == 1, "count after commit: {n}");

        // 3. DISCARD ALL outside a transaction: it resets the settings and drops the prepared
        // statements; a prepared statement runs again.
        let key = keys[2];
        let want = vec![present[&key].name.clone()];
        let stmt = client.prepare(SELECT_NAME).await?;
        let run = |rows: Vec<tokio_postgres::Row>| {
            rows.iter()
                .map(|r| r.get(0))
                .collect::<Vec<Option<String>>>()
        };
        let got = run(client.query(&stmt, &[&key]).await?);
        ensure!(got == want, "before DISCARD ALL: {got:?}");
        client
            .batch_execute(&format!("SET DateStyle = '{GERMAN}'"))
            .await?;
        client.batch_execute("DISCARD ALL").await?;
        datestyle_is(&*client, &before, "after DISCARD ALL").await?;
        // tokio-postgres does not notice DISCARD ALL: the old statement is gone from the server,
        // which says so (26000) as PostgreSQL does; the application prepares it again.
        expect_sqlstate(
            client.query(&stmt, &[&key]).await,
            &SqlState::INVALID_SQL_STATEMENT_NAME,
        )?;
        let stmt = client.prepare(SELECT_NAME).await?;
        let got = run(client.query(&stmt, &[&key]).await?);
        ensure!(got == want, "after DISCARD ALL, prepared again: {got:?}");
        Ok(Some(
            "binary timestamps; ParameterStatus not exposed by the client: SHOW DateStyle checked; \
             the old statement fails with 26000 after DISCARD ALL, prepared again"
                .to_string(),
        ))
    };
    report.record("session_state", r.await);

    let r = async {
        // users.id is bigserial and these inserts leave it out: the proxy generates each key,
        // routes the row by it and returns it; a read by the returned key (routed to that key's
        // shard) must find the row. One insert of three rows (RETURNING in VALUES order), two
        // with `query`, two with one prepared statement, their futures polled together.
        let inserted = generated_names();
        let mut got = Vec::new();
        let rows = client
            .query(
                INSERT_GENERATED_3,
                &[&inserted[0], &inserted[1], &inserted[2]],
            )
            .await?;
        ensure!(rows.len() == 3, "3 rows inserted, {} returned", rows.len());
        for (row, name) in rows.iter().zip(&inserted[0..3]) {
            got.push((row.try_get(0)?, name.clone()));
        }
        for name in &inserted[3..5] {
            let row = client.query_one(INSERT_GENERATED, &[name]).await?;
            got.push((row.try_get(0)?, name.clone()));
        }
        let (shared, stmt) = (&*client, &client.prepare(INSERT_GENERATED).await?);
        let rows = futures::future::try_join_all(
            inserted[5..7]
                .iter()
                .map(|name| async move { shared.query_one(stmt, &[name]).await }),
        )
        .await?;
        for (row, name) in rows.iter().zip(&inserted[5..7]) {
            got.push((row.try_get(0)?, name.clone()));
        }
        for (id, name) in returned_ids(got)? {
            let read = names(client, id).await?;
            ensure!(
                read == [Some(name.clone())],
                "id {id}: read {read:?}, inserted {name:?}"
            );
            present.insert(id, generated_row(id, &name));
        }
        Ok(None)
    };
    report.record("generated_keys", r.await);

    let r = async {
        let key = keys[2];
        let token = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(NoTls).await
        });
        let start = Instant::now();
        let slept = client
            .query("SELECT pg_sleep(5) FROM users WHERE id = $1", &[&key])
            .await;
        canceller.await??;
        expect_sqlstate(slept, &SqlState::QUERY_CANCELED)?;
        ensure!(
            start.elapsed() < Duration::from_secs(4),
            "the cancel did not stop the sleep"
        );
        ensure!(
            names(client, key).await? == [present[&key].name.clone()],
            "connection unusable after the cancel"
        );
        Ok(None)
    };
    report.record("cancel", r.await);

    let r = async {
        // Futures polled together: tokio-postgres pipelines them, each statement with its Sync.
        let batch: Vec<Row> = batch_keys()
            .iter()
            .zip(1..)
            .map(|(&k, i)| make_row(i, k))
            .collect();
        let counts =
            futures::future::try_join_all(batch.iter().map(|row| insert(&*client, row))).await?;
        ensure!(counts.iter().all(|&c| c == 1), "row counts {counts:?}");
        for row in &batch {
            let got = read(client, row.id).await?;
            ensure!(got == [row.clone()], "id {}: read {got:?}", row.id);
        }
        Ok(Some("pipelined futures".to_string()))
    };
    report.record("batch_insert", r.await);
}
