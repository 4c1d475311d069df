//! sqlx through shardline: `sqlx_client URL`.
//!
//! The common scenario of docs/compatibility.md. sqlx runs every `sqlx::query` as a named
//! prepared statement cached per connection (so repeating a query only binds it again), and its
//! bulk insert is `QueryBuilder::push_values`, one multi-row INSERT. sqlx has no API to cancel a
//! running query, so that step is skipped.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rust_decimal::Decimal;
use shardline_client_tests::*;
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::Query;
use sqlx::{Connection, Executor as _, Postgres, QueryBuilder, Row as _, Statement as _};

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

fn bind_row<'q>(query: PgQuery<'q>, row: &Row) -> anyhow::Result<PgQuery<'q>> {
    let amount: Option<Decimal> = row.amount.as_deref().map(str::parse).transpose()?;
    Ok(query
        .bind(row.id)
        .bind(row.n4)
        .bind(row.name.clone())
        .bind(row.uid)
        .bind(amount)
        .bind(row.ts)
        .bind(row.flag)
        .bind(row.blob.clone())
        .bind(row.doc.clone())
        .bind(row.tags.clone())
        .bind(row.nums.clone()))
}

fn to_row(r: &PgRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        id: r.try_get(0)?,
        n4: r.try_get(1)?,
        name: r.try_get(2)?,
        uid: r.try_get(3)?,
        amount: r.try_get::<Option<Decimal>, _>(4)?.map(|d| d.to_string()),
        ts: r.try_get(5)?,
        flag: r.try_get(6)?,
        blob: r.try_get(7)?,
        doc: r.try_get(8)?,
        tags: r.try_get(9)?,
        nums: r.try_get(10)?,
    })
}

async fn read(conn: &mut PgConnection, key: i64) -> anyhow::Result<Vec<Row>> {
    let rows = sqlx::query(SELECT_ROW).bind(key).fetch_all(conn).await?;
    Ok(rows.iter().map(to_row).collect::<Result<_, _>>()?)
}

async fn names(conn: &mut PgConnection, key: i64) -> anyhow::Result<Vec<Option<String>>> {
    Ok(sqlx::query_scalar(SELECT_NAME)
        .bind(key)
        .fetch_all(conn)
        .await?)
}

async fn insert_named(conn: &mut PgConnection, key: i64, name: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)")
        .bind(key)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many users have a key between the first and the last of `ids`.
async fn count_range(conn: &mut PgConnection, ids: &[i64]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(COUNT_RANGE)
        .bind(ids[0])
        .bind(ids[ids.len() - 1])
        .fetch_one(conn)
        .await?)
}

async fn setting(conn: &mut PgConnection, key: i64) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(SHOW_TIMEOUT)
        .bind(key)
        .fetch_all(conn)
        .await?)
}

/// DateStyle is `value`: the timestamp read through sqlx (binary, so DateStyle, which matters
/// only to drivers that parse dates as text, changes nothing: the read checks the value and that
/// nothing breaks), its text, and SHOW DateStyle. sqlx does not expose ParameterStatus.
async fn datestyle_is(conn: &mut PgConnection, value: &str, place: &str) -> anyhow::Result<()> {
    let got: chrono::NaiveDateTime = sqlx::query_scalar(TS_NATIVE).fetch_one(&mut *conn).await?;
    ensure!(
        got == ts_value(),
        "{place}: read {got} under DateStyle {value}"
    );
    let text: String = sqlx::query_scalar(TS_TEXT).fetch_one(&mut *conn).await?;
    ensure!(
        text == ts_text(value),
        "{place}: the text of the timestamp is {text}, expected {}",
        ts_text(value)
    );
    let shown: String = sqlx::query_scalar("SHOW DateStyle")
        .fetch_one(&mut *conn)
        .await?;
    ensure!(
        shown == value,
        "{place}: SHOW DateStyle is {shown}, expected {value}"
    );
    Ok(())
}

/// `result` must be a database error with SQLSTATE `want`.
fn expect_sqlstate<T>(result: Result<T, sqlx::Error>, want: &str) -> anyhow::Result<()> {
    match result {
        Ok(_) => bail!("expected SQLSTATE {want}, but the statement succeeded"),
        Err(e) => {
            let got = e
                .as_database_error()
                .and_then(|d| d.code().map(|c| c.into_owned()));
            ensure!(
                got.as_deref() == Some(want),
                "expected SQLSTATE {want}, got {got:?}: {e}"
            );
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).expect("usage: sqlx_client URL");
    let mut report = Report::default();
    report.version(env!("SQLX_VERSION"));
    let mut conn = match PgConnection::connect(&url).await {
        Ok(conn) => {
            report.record("connect", Ok(None));
            conn
        }
        Err(e) => {
            report.record("connect", Err(e.into()));
            report.exit();
        }
    };
    scenario(&url, &mut conn, &mut report).await;
    report.exit();
}

async fn scenario(url: &str, conn: &mut PgConnection, report: &mut Report) {
    let keys = keys();
    let rows = inserted_rows();
    let mut present = rows.clone(); // what the table should hold: the oracle of the later steps

    let r = async {
        for sql in DDL {
            sqlx::query(sql).execute(&mut *conn).await?;
        }
        Ok(None)
    };
    report.record("ddl", r.await);

    let r = async {
        for row in rows.values() {
            let done = bind_row(sqlx::query(INSERT), row)?
                .execute(&mut *conn)
                .await?;
            ensure!(done.rows_affected() == 1, "id {}: row count", row.id);
        }
        Ok(None)
    };
    report.record("insert", r.await);

    let r = async {
        for (key, row) in &rows {
            let got = read(conn, *key).await?;
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
        let done = sqlx::query("UPDATE users SET name = $1, n4 = n4 + 1 WHERE id = $2")
            .bind("renamed ✓")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        ensure!(done.rows_affected() == 1, "update count");
        let row = present.get_mut(&key).context("row")?;
        row.name = Some("renamed ✓".into());
        row.n4 = row.n4.map(|v| v + 1);
        let got = read(conn, key).await?;
        ensure!(got == [row.clone()], "after update: {got:?}");
        Ok(None)
    };
    report.record("update", r.await);

    let r = async {
        let key = keys[1];
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        ensure!(done.rows_affected() == 1, "delete count");
        present.remove(&key);
        ensure!(
            read(conn, key).await?.is_empty(),
            "row still there after delete"
        );
        Ok(None)
    };
    report.record("delete", r.await);

    let r = async {
        let mut tx = Connection::begin(&mut *conn).await?;
        sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)")
            .bind(TX_ID)
            .bind("in tx")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO orders (user_id, n) VALUES ($1, 1), ($1, 2)")
            .bind(TX_ID)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE users SET n4 = 7 WHERE id = $1")
            .bind(TX_ID)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let row = committed_row();
        let got = read(conn, TX_ID).await?;
        ensure!(got == [row.clone()], "committed row: {got:?}");
        present.insert(TX_ID, row);
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
            .bind(TX_ID)
            .fetch_one(&mut *conn)
            .await?;
        ensure!(orders == 2, "orders after commit: {orders}");
        Ok(None)
    };
    report.record("tx_commit", r.await);

    let r = async {
        let mut tx = Connection::begin(&mut *conn).await?;
        sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)")
            .bind(ROLLBACK_ID)
            .bind("rolled back")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO orders (user_id, n) VALUES ($1, 1)")
            .bind(ROLLBACK_ID)
            .execute(&mut *tx)
            .await?;
        ensure!(
            names(&mut tx, ROLLBACK_ID).await?.len() == 1,
            "row invisible inside its transaction"
        );
        tx.rollback().await?;
        ensure!(
            read(conn, ROLLBACK_ID).await?.is_empty(),
            "rolled-back row is there"
        );
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
            .bind(ROLLBACK_ID)
            .fetch_one(&mut *conn)
            .await?;
        ensure!(orders == 0, "orders after rollback: {orders}");
        Ok(None)
    };
    report.record("tx_rollback", r.await);

    let r = async {
        // One transaction holds a backend on each shard its keys need, reads its own writes
        // from all of them and commits them together.
        let mut tx = Connection::begin(&mut *conn).await?;
        for key in CROSS_IDS {
            insert_named(&mut tx, key, "cross shard").await?;
        }
        sqlx::query("UPDATE users SET n4 = 7 WHERE id = $1")
            .bind(CROSS_IDS[CROSS_IDS.len() - 1])
            .execute(&mut *tx)
            .await?;
        let inside = count_range(&mut tx, &CROSS_IDS).await?;
        ensure!(
            inside == CROSS_IDS.len() as i64,
            "count inside the transaction: {inside}"
        );
        tx.commit().await?;
        for key in CROSS_IDS {
            let row = cross_shard_row(key);
            present.insert(key, row.clone());
            let got = read(conn, key).await?;
            ensure!(got == [row], "id {key} after commit: {got:?}");
        }

        // A savepoint after the first insert: the shards that join later get it replayed, and
        // ROLLBACK TO SAVEPOINT undoes the two inserts after it on whichever shards they ran.
        // sqlx makes a transaction begun inside another a savepoint.
        let (first, rest) = CROSS_ROLLBACK_IDS.split_first().context("keys")?;
        let (last, middle) = rest.split_last().context("keys")?;
        let mut tx = Connection::begin(&mut *conn).await?;
        insert_named(&mut tx, *first, "rolled back").await?;
        let mut savepoint = Connection::begin(&mut *tx).await?;
        for &key in middle {
            insert_named(&mut savepoint, key, "rolled back").await?;
        }
        savepoint.rollback().await?;
        insert_named(&mut tx, *last, "rolled back").await?;
        let kept = count_range(&mut tx, &CROSS_ROLLBACK_IDS).await?;
        ensure!(kept == 2, "count after ROLLBACK TO SAVEPOINT: {kept}");
        tx.rollback().await?;
        let after = count_range(conn, &CROSS_ROLLBACK_IDS).await?;
        ensure!(after == 0, "count after ROLLBACK: {after}");
        Ok(None)
    };
    report.record("tx_cross_shard", r.await);

    let r = async {
        let got: Vec<i64> = sqlx::query_scalar("SELECT id FROM users ORDER BY id DESC LIMIT 5")
            .fetch_all(&mut *conn)
            .await?;
        let want: Vec<i64> = present.keys().rev().take(5).copied().collect();
        ensure!(got == want, "got {got:?}, expected {want:?}");
        Ok(None)
    };
    report.record("order_limit", r.await);

    let r = async {
        let got: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut *conn)
            .await?;
        ensure!(
            got == present.len() as i64,
            "count {got}, expected {}",
            present.len()
        );
        Ok(None)
    };
    report.record("count", r.await);

    let r = async {
        // sqlx caches the statement on the connection: prepared once, then bound in 24
        // transactions, so the proxy's backend changes in between.
        let ids: Vec<i64> = present.keys().copied().collect();
        for n in 0..24 {
            let key = ids[n % ids.len()];
            let mut tx = Connection::begin(&mut *conn).await?;
            let got = names(&mut tx, key).await?;
            tx.commit().await?;
            ensure!(got == [present[&key].name.clone()], "id {key}: {got:?}");
        }
        Ok(Some("statement cache".to_string()))
    };
    report.record("prepared_reuse", r.await);

    let r = async {
        // A statement over every shard (a lookup without the key) runs twice on this
        // connection, then on a second one, as an application's connection pool does, with
        // the count and a read by key: the proxy shares server-side prepared statements
        // between clients.
        let mut other = PgConnection::connect(url).await?;
        let name = present[&keys[2]].name.clone();
        for second in [false, false, true] {
            let c = if second { &mut other } else { &mut *conn };
            let ids: Vec<i64> = sqlx::query_scalar(LOOKUP).bind(&name).fetch_all(c).await?;
            ensure!(ids == [keys[2]], "lookup by name: {ids:?}");
        }
        let got: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut other)
            .await?;
        ensure!(
            got == present.len() as i64,
            "count {got}, expected {}",
            present.len()
        );
        let key = keys[2];
        let got = read(&mut other, key).await?;
        ensure!(got == [present[&key].clone()], "id {key}: read {got:?}");
        other.close().await?;
        Ok(None)
    };
    report.record("second_connection", r.await);

    let r = async {
        let key = keys[2];
        let inserted = sqlx::query("INSERT INTO users (id) VALUES ($1)")
            .bind(key)
            .execute(&mut *conn)
            .await;
        expect_sqlstate(inserted, "23505")?;
        ensure!(
            names(conn, key).await? == [present[&key].name.clone()],
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
        sqlx::query("SET statement_timeout = '150ms'")
            .execute(&mut *conn)
            .await?;
        let checked = async {
            for &key in &ids {
                let got = setting(conn, key).await?;
                ensure!(got == ["150ms"], "id {key}: statement_timeout is {got:?}");
            }
            for &key in &ids[..3] {
                let start = Instant::now();
                let slept = sqlx::query("SELECT pg_sleep(3) FROM users WHERE id = $1")
                    .bind(key)
                    .execute(&mut *conn)
                    .await;
                expect_sqlstate(slept, "57014")?;
                ensure!(
                    start.elapsed() < Duration::from_millis(2500),
                    "the timeout did not stop the sleep"
                );
            }
            Ok(())
        }
        .await;
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
        checked?;
        for &key in &ids {
            let got = setting(conn, key).await?;
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
        let before: String = sqlx::query_scalar("SHOW DateStyle")
            .fetch_one(&mut *conn)
            .await?;
        let set_german = format!("SET DateStyle = '{GERMAN}'");

        // 1. A setting changed inside a transaction, then rolled back; then outside one and reset.
        let mut tx = Connection::begin(&mut *conn).await?;
        sqlx::query(&set_german).execute(&mut *tx).await?;
        datestyle_is(&mut tx, GERMAN, "after SET inside a transaction").await?;
        tx.rollback().await?;
        datestyle_is(conn, &before, "after ROLLBACK").await?;
        sqlx::query(&set_german).execute(&mut *conn).await?;
        let checked = datestyle_is(conn, GERMAN, "after SET outside a transaction").await;
        sqlx::query("RESET DateStyle").execute(&mut *conn).await?;
        checked?;
        datestyle_is(conn, &before, "after RESET").await?;

        // 2. A transaction begun inside another (a savepoint) as the very first statement of a
        // transaction, rolled back.
        let [rolled_back, kept] = SAVEPOINT_IDS;
        let mut tx = Connection::begin(&mut *conn).await?;
        let mut savepoint = Connection::begin(&mut *tx).await?;
        insert_named(&mut savepoint, rolled_back, "after a savepoint").await?;
        savepoint.rollback().await?;
        insert_named(&mut tx, kept, "after a savepoint").await?;
        tx.commit().await?;
        present.insert(kept, savepoint_row(kept));
        ensure!(
            read(conn, rolled_back).await?.is_empty(),
            "id {rolled_back}, rolled back to the savepoint, is there"
        );
        let got = read(conn, kept).await?;
        ensure!(
            got == [savepoint_row(kept)],
            "id {kept} after commit: {got:?}"
        );
        let n = count_range(conn, &SAVEPOINT_IDS).await?;
        ensure!(n == 1, "count after commit: {n}");

        // 3. DISCARD ALL outside a transaction: it resets the settings and drops the prepared
        // statements; a prepared statement runs again.
        let key = keys[2];
        let want = vec![present[&key].name.clone()];
        let stmt = (&mut *conn).prepare(SELECT_NAME).await?;
        let got: Vec<Option<String>> = stmt.query_scalar().bind(key).fetch_all(&mut *conn).await?;
        ensure!(got == want, "before DISCARD ALL: {got:?}");
        sqlx::query(&set_german).execute(&mut *conn).await?;
        sqlx::query("DISCARD ALL").execute(&mut *conn).await?;
        // sqlx does not notice DISCARD ALL: its cached statements are gone from the server,
        // which says so (26000) as PostgreSQL does; the application clears sqlx's statement
        // cache and the statement is prepared again.
        let stale = stmt
            .query_scalar::<Option<String>>()
            .bind(key)
            .fetch_all(&mut *conn)
            .await;
        conn.clear_cached_statements().await?;
        expect_sqlstate(stale, "26000")?;
        datestyle_is(conn, &before, "after DISCARD ALL").await?;
        let stmt = (&mut *conn).prepare(SELECT_NAME).await?;
        let got: Vec<Option<String>> = stmt.query_scalar().bind(key).fetch_all(&mut *conn).await?;
        ensure!(got == want, "after DISCARD ALL, prepared again: {got:?}");
        ensure!(
            names(conn, key).await? == want,
            "a statement after DISCARD ALL"
        );
        Ok(Some(
            "binary timestamps; ParameterStatus not exposed: SHOW DateStyle checked; the cached \
             statement fails with 26000 after DISCARD ALL, clear_cached_statements and prepared again"
                .to_string(),
        ))
    };
    report.record("session_state", r.await);

    let r = async {
        // users.id is bigserial and these inserts leave it out: the proxy generates each key,
        // routes the row by it and returns it; a read by the returned key (routed to that key's
        // shard) must find the row. One insert of three rows (RETURNING in VALUES order), one
        // query run twice (prepared once, from sqlx's statement cache), one `prepare` run twice.
        let inserted = generated_names();
        let mut got = Vec::new();
        let ids: Vec<Option<i64>> = sqlx::query_scalar(INSERT_GENERATED_3)
            .bind(inserted[0].as_str())
            .bind(inserted[1].as_str())
            .bind(inserted[2].as_str())
            .fetch_all(&mut *conn)
            .await?;
        ensure!(ids.len() == 3, "3 rows inserted, returned {ids:?}");
        got.extend(ids.into_iter().zip(inserted[0..3].iter().cloned()));
        for name in &inserted[3..5] {
            let id: Option<i64> = sqlx::query_scalar(INSERT_GENERATED)
                .bind(name.as_str())
                .fetch_one(&mut *conn)
                .await?;
            got.push((id, name.clone()));
        }
        let stmt = (&mut *conn).prepare(INSERT_GENERATED).await?;
        for name in &inserted[5..7] {
            let id: Option<i64> = stmt
                .query_scalar()
                .bind(name.as_str())
                .fetch_one(&mut *conn)
                .await?;
            got.push((id, name.clone()));
        }
        for (id, name) in returned_ids(got)? {
            let read = names(conn, id).await?;
            ensure!(
                read == [Some(name.clone())],
                "id {id}: read {read:?}, inserted {name:?}"
            );
            present.insert(id, generated_row(id, &name));
        }
        Ok(None)
    };
    report.record("generated_keys", r.await);

    report.skip("cancel", "sqlx has no API to cancel a running query");

    let r = async {
        let batch: Vec<Row> = batch_keys()
            .iter()
            .zip(1..)
            .map(|(&k, i)| make_row(i, k))
            .collect();
        let mut builder = QueryBuilder::<Postgres>::new(
            "INSERT INTO users (id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums) ",
        );
        let mut bad_amount = None;
        builder.push_values(&batch, |mut b, row| {
            let amount: Option<Decimal> = row
                .amount
                .as_deref()
                .and_then(|a| a.parse().map_err(|e| bad_amount = Some(e)).ok());
            b.push_bind(row.id)
                .push_bind(row.n4)
                .push_bind(row.name.clone())
                .push_bind(row.uid)
                .push_bind(amount)
                .push_bind(row.ts)
                .push_bind(row.flag)
                .push_bind(row.blob.clone())
                .push_bind(row.doc.clone())
                .push_bind(row.tags.clone())
                .push_bind(row.nums.clone());
        });
        if let Some(e) = bad_amount {
            bail!("amount: {e}");
        }
        let done = builder.build().execute(&mut *conn).await?;
        ensure!(
            done.rows_affected() == batch.len() as u64,
            "row count {}",
            done.rows_affected()
        );
        for row in &batch {
            let got = read(conn, row.id).await?;
            ensure!(got == [row.clone()], "id {}: read {got:?}", row.id);
        }
        Ok(Some("QueryBuilder: one multi-row INSERT".to_string()))
    };
    report.record("batch_insert", r.await);
}
