//! Differential test of `INSERT … SELECT` into sharded tables: the `SELECT` runs on one backend
//! (after pulling the sharded tables it reads) and its rows are loaded into their shards. The
//! same statements run on one plain PostgreSQL database holding the same rows; afterwards
//! every table must hold the same rows on both, every row on the shard the router places it
//! on, with no prepared transaction left behind. A failing statement loads nothing; the
//! forms that cannot run exactly are refused. `ON CONFLICT` is decided on each shard, and the
//! rows `RETURNING` asks for come back from each shard (compared as multisets). Inside a
//! transaction block the statement sees the block's writes and commits or rolls back with it.

use shardline_tests::{failure_code, temporary_tables, text_rows, TestCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const DDL: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, name text, score numeric, ratio float8,
                    created timestamptz);
CREATE TABLE orders (id bigint, user_id bigint, total numeric(10,2), note text DEFAULT 'none');
CREATE TABLE accounts (email text PRIMARY KEY, user_id bigint);
CREATE TABLE events (id bigint PRIMARY KEY, user_id bigint);
CREATE TABLE countries (code text PRIMARY KEY, region text);";

const DATA: &[&str] = &[
    "INSERT INTO users (id, name, score, ratio, created) VALUES
       (1, 'ann', 10.5, 0.1, '2024-01-01 10:00+00'), (2, 'bob', NULL, -2.25, NULL),
       (3, NULL, 7, 1e-300, '2024-03-01 00:00+00'), (4, 'émile', -3.333, 1.5, '2023-12-31 23:59+00'),
       (5, 'cy', 0, NULL, '2024-06-01 12:00+00'), (6, 'dee', 99.99, 3.0, '2024-02-29 00:00+00')",
    "INSERT INTO orders (id, user_id, total) VALUES (1, 1, 5.25), (2, 1, 7), (3, 2, 100),
       (4, 3, 0.5), (5, 5, 12), (6, 6, 1), (7, 6, 2), (8, 9, 3)",
    "INSERT INTO countries (code, region) VALUES ('de', 'eu'), ('fr', 'eu'), ('us', 'na')",
];

/// Statements run on both sides, each expected to succeed.
const INSERTS: &[&str] = &[
    // From another sharded table, filtered (pushed down), with an assignment cast.
    "INSERT INTO orders (id, user_id, total) SELECT id + 100, id, score / 3 FROM users WHERE score > 5",
    // From the target itself joined with a table sharded by another key.
    "INSERT INTO orders SELECT o.id + 200, u.id, o.total * 2 FROM orders o JOIN users u ON u.id = o.user_id % 3 + 1",
    // From no table: floats, timestamps and text made on the spot.
    "INSERT INTO users (id, name, score, ratio, created) SELECT g + 1000, 'g' || g, g / 3.0, g / 7.0, '2024-01-01 00:00+00'::timestamptz + g * interval '1 hour' FROM generate_series(1, 300) g",
    // Into a range-sharded table, across its ranges.
    "INSERT INTO events (id, user_id) SELECT id * 3, id FROM users",
    // Into a table sharded by text.
    "INSERT INTO accounts SELECT lower(coalesce(name, 'nobody')) || id || '@example.org', id FROM users",
    // A window function in a CTE: one row per user, the largest order.
    "INSERT INTO orders (id, user_id, total) WITH ranked AS (SELECT id, user_id, total, row_number() OVER (PARTITION BY user_id ORDER BY total DESC, id) AS r FROM orders) SELECT id + 1000, user_id, total FROM ranked WHERE r = 1",
    // From a reference table; the rest of the columns take their defaults.
    "INSERT INTO users (id, name) SELECT 5000 + row_number() OVER (ORDER BY code), code FROM countries",
    // A SELECT narrower than the table: the columns it leaves out take their defaults.
    "INSERT INTO orders SELECT 7000, 1",
    // From a table named in schema public, as BI tools write it.
    "INSERT INTO orders (id, user_id, total) SELECT id + 40000, id, score FROM public.users WHERE score IS NOT NULL",
    // ON CONFLICT DO NOTHING: keys 3..8 exist already, only the new ones count.
    "INSERT INTO users (id, name) SELECT id + 2, 'shifted' FROM users WHERE id <= 8 ON CONFLICT DO NOTHING",
    // ON CONFLICT DO UPDATE reading the existing row and the proposed one, with a WHERE.
    "INSERT INTO users (id, name, score) SELECT id, upper(name), 1 FROM users WHERE id < 1010 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, score = coalesce(users.score, 0) + EXCLUDED.score WHERE users.id % 2 = 0",
    // On a table sharded by text, every column, new and old keys mixed.
    "INSERT INTO accounts SELECT email, user_id + 1 FROM accounts UNION ALL SELECT 'new' || id || '@example.org', id FROM users WHERE id < 5 ON CONFLICT (email) DO UPDATE SET user_id = EXCLUDED.user_id",
];

/// Every table's rows, in a defined order.
async fn contents(client: &Client) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut rows = Vec::new();
    for table in ["users", "orders", "accounts", "events", "countries"] {
        rows.extend(
            text_rows(
                client,
                &format!("SELECT '{table}', t::text FROM {table} t ORDER BY 2"),
            )
            .await?,
        );
    }
    Ok(rows)
}

async fn loaded(label: &str) -> anyhow::Result<(TestCluster, Client, Client)> {
    let cluster = TestCluster::start(label, 4).await?;
    let oracle = cluster.oracle().await?;
    let proxy = cluster.client().await?;
    oracle.batch_execute(DDL).await?;
    proxy.batch_execute(DDL).await?;
    for statement in DATA {
        oracle.batch_execute(statement).await?;
        proxy.batch_execute(statement).await?;
    }
    Ok((cluster, oracle, proxy))
}

async fn placed(cluster: &TestCluster) -> anyhow::Result<usize> {
    Ok(cluster.placed_rows("users", "id", false).await?
        + cluster.placed_rows("orders", "user_id", false).await?
        + cluster.placed_rows("accounts", "email", true).await?
        + cluster.placed_rows("events", "id", false).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_select_matches_one_postgres() -> anyhow::Result<()> {
    let (cluster, oracle, proxy) = loaded("insert-select").await?;
    for sql in INSERTS {
        let want = oracle.execute(*sql, &[]).await?;
        let got = proxy
            .simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?;
        let count = got.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        });
        assert_eq!(count, Some(want), "{sql}: rows inserted");
        assert_eq!(
            contents(&proxy).await?,
            contents(&oracle).await?,
            "after {sql}"
        );
    }

    // The extended protocol, with the SELECT's parameters bound (a prepared statement, run
    // twice with different values).
    let sql = "INSERT INTO orders (id, user_id, total) SELECT id + $1, id, $2::int FROM users WHERE id <= $3";
    let statement = proxy.prepare(sql).await?;
    for (offset, total, upto) in [(20_000i64, 7i32, 4i64), (30_000, 9, 1_500)] {
        let want = oracle.execute(sql, &[&offset, &total, &upto]).await?;
        let got = proxy.execute(&statement, &[&offset, &total, &upto]).await?;
        assert_eq!(got, want, "extended INSERT … SELECT rows inserted");
    }
    assert_eq!(
        contents(&proxy).await?,
        contents(&oracle).await?,
        "after the extended protocol"
    );

    // A statement that fails on one shard (a duplicate key) loads nothing anywhere.
    let dup = "INSERT INTO users (id, name) SELECT id + 10000, 'copy' FROM users UNION ALL SELECT 1, 'dup'";
    for side in [&oracle, &proxy] {
        assert_eq!(
            failure_code(side, dup).await,
            Some(SqlState::UNIQUE_VIOLATION)
        );
    }
    assert_eq!(
        contents(&proxy).await?,
        contents(&oracle).await?,
        "after a failed statement"
    );

    // The tables the ON CONFLICT statements applied their rows through are gone.
    for i in 0..cluster.shard_count() {
        let left = text_rows(
            &cluster.shard(i).await?,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'shardline_rows_%'",
        )
        .await?;
        assert_eq!(left, vec![vec![Some("0".to_owned())]], "shard {i}");
    }

    let rows = placed(&cluster).await?;
    let total: i64 = text_rows(
        &oracle,
        "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM orders) + (SELECT count(*) FROM accounts) + (SELECT count(*) FROM events)",
    )
    .await?
    .first()
    .and_then(|row| row.first().cloned().flatten())
    .ok_or_else(|| anyhow::anyhow!("no count"))?
    .parse()?;
    assert_eq!(
        rows as i64, total,
        "every row placed where the router puts it"
    );
    Ok(())
}

/// Statements with `RETURNING`, run on both sides: the rows they return (in any order: each
/// shard returns its own) and what they leave behind must match.
const RETURNING: &[&str] = &[
    "INSERT INTO orders (id, user_id, total) SELECT id + 500, id, score FROM users WHERE score IS NOT NULL RETURNING *",
    "INSERT INTO users (id, name) SELECT id + 2, 'shifted' FROM users WHERE id <= 8 ON CONFLICT DO NOTHING RETURNING id, name",
    "INSERT INTO users AS u (id, name, score) SELECT id, 'x', 1 FROM users WHERE id < 5 ON CONFLICT (id) DO UPDATE SET score = coalesce(u.score, 0) + EXCLUDED.score RETURNING u.id, u.score * 2 AS doubled, upper(u.name)",
    "INSERT INTO accounts SELECT 'r' || id || '@example.org', id FROM users WHERE id < 4 RETURNING email, user_id",
    "INSERT INTO orders (id, user_id) SELECT 800, 1 WHERE false RETURNING id",
];

#[tokio::test(flavor = "multi_thread")]
async fn insert_select_returning_matches_one_postgres() -> anyhow::Result<()> {
    let (_cluster, oracle, proxy) = loaded("insert-select-returning").await?;
    let sorted = |mut rows: Vec<Vec<Option<String>>>| {
        rows.sort();
        rows
    };
    for sql in RETURNING {
        let want = sorted(text_rows(&oracle, sql).await?);
        let got = sorted(
            text_rows(&proxy, sql)
                .await
                .map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?,
        );
        assert_eq!(got, want, "{sql}: rows returned");
        assert_eq!(
            contents(&proxy).await?,
            contents(&oracle).await?,
            "after {sql}"
        );
    }

    // The extended protocol, binary results, a described statement with parameters.
    let sql = "INSERT INTO orders (id, user_id, total) SELECT id + $1, id, 1 FROM users WHERE id <= $2 RETURNING id, user_id, total::text";
    let statement = proxy.prepare(sql).await?;
    let typed = |rows: Vec<tokio_postgres::Row>| {
        let mut rows: Vec<(i64, i64, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        rows.sort();
        rows
    };
    let want = typed(oracle.query(sql, &[&60_000i64, &4i64]).await?);
    let got = typed(proxy.query(&statement, &[&60_000i64, &4i64]).await?);
    assert_eq!(got, want, "extended INSERT … SELECT … RETURNING");
    assert_eq!(statement.columns().len(), 3);
    assert_eq!(contents(&proxy).await?, contents(&oracle).await?);

    // A statement that fails on one shard returns nothing and loads nothing.
    let dup = "INSERT INTO users (id, name) SELECT id + 20000, 'copy' FROM users UNION ALL SELECT 1, 'dup' RETURNING id";
    for side in [&oracle, &proxy] {
        assert_eq!(
            failure_code(side, dup).await,
            Some(SqlState::UNIQUE_VIOLATION)
        );
    }
    assert_eq!(contents(&proxy).await?, contents(&oracle).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_select_generates_keys_and_refuses_what_it_cannot_do_exactly() -> anyhow::Result<()>
{
    let (cluster, _oracle, proxy) = loaded("insert-select-limits").await?;

    // A column list without the serial key: the proxy generates unique keys and routes by them.
    let inserted = proxy
        .execute(
            "INSERT INTO users (name, score) SELECT 'gen' || g, g FROM generate_series(1, 200) g",
            &[],
        )
        .await?;
    assert_eq!(inserted, 200);
    let generated = text_rows(
        &proxy,
        "SELECT count(DISTINCT id), count(*), sum(score) FROM users WHERE name LIKE 'gen%'",
    )
    .await?;
    assert_eq!(
        generated,
        vec![vec![
            Some("200".to_owned()),
            Some("200".to_owned()),
            Some("20100".to_owned())
        ]]
    );
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 206);

    let before = contents(&proxy).await?;
    for (sql, code) in [
        // A key the SELECT leaves NULL cannot be routed.
        (
            "INSERT INTO orders SELECT 1, NULL",
            SqlState::INVALID_TEXT_REPRESENTATION,
        ),
        (
            "INSERT INTO users (name) SELECT name FROM users ON CONFLICT DO NOTHING",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // Moving a key by updating it would leave the row on a shard that does not own it.
        (
            "INSERT INTO users (id, name) SELECT id, name FROM users ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id + 100000",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // RETURNING with a key the proxy generates, or reading other rows.
        (
            "INSERT INTO users (name) SELECT name FROM users RETURNING id",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO orders SELECT * FROM orders RETURNING (SELECT count(*) FROM orders)",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO orders SELECT * FROM sales.orders",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO orders WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
    ] {
        assert_eq!(failure_code(&proxy, sql).await, Some(code), "{sql}");
    }
    assert_eq!(
        contents(&proxy).await?,
        before,
        "a refused statement changed something"
    );

    // Nothing the statements staged outlives them, and the session goes on.
    assert_eq!(temporary_tables(&proxy).await?, 0);
    Ok(())
}

/// Statements of one transaction block, run on both sides: the `INSERT … SELECT`s read the
/// block's own earlier writes (and a later statement reads theirs).
const IN_TRANSACTION: &[&str] = &[
    "UPDATE users SET score = 1000 WHERE id = 2",
    "INSERT INTO users (id, name, score) VALUES (70, 'in tx', 5), (71, 'also', 6)",
    "INSERT INTO orders (id, user_id, total) SELECT id + 500, id, score FROM users WHERE score >= 5",
    "INSERT INTO events (id, user_id) SELECT o.id * 7, o.user_id FROM orders o WHERE o.id > 500",
    "UPDATE orders SET total = total + 1 WHERE id > 500",
    "INSERT INTO users (id, name) SELECT id, 'again ' || id FROM users WHERE id <= 3 OR id = 70 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
];

#[tokio::test(flavor = "multi_thread")]
async fn insert_select_inside_a_transaction_block_sees_and_joins_it() -> anyhow::Result<()> {
    let (cluster, oracle, proxy) = loaded("insert-select-tx").await?;
    let digits = "SHOW extra_float_digits";
    let before_digits = text_rows(&proxy, digits).await?;

    // Rolled back: nothing stays, on any shard.
    let before = contents(&proxy).await?;
    proxy.batch_execute("BEGIN").await?;
    for sql in IN_TRANSACTION {
        proxy
            .batch_execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?;
    }
    // The staging's settings do not leak into the client's transaction.
    assert_eq!(text_rows(&proxy, digits).await?, before_digits);
    proxy.batch_execute("ROLLBACK").await?;
    assert_eq!(
        contents(&proxy).await?,
        before,
        "a rolled-back block left rows"
    );

    // Committed: the same rows as one PostgreSQL running the same block.
    for side in [&oracle, &proxy] {
        side.batch_execute("BEGIN").await?;
        for sql in IN_TRANSACTION {
            side.batch_execute(sql)
                .await
                .map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?;
        }
        side.batch_execute("COMMIT").await?;
    }
    assert_eq!(contents(&proxy).await?, contents(&oracle).await?);
    placed(&cluster).await?;

    // Past max_pull_rows inside a block: refused with 54000, and the block fails as a whole.
    let small =
        TestCluster::start_with("insert-select-tx-budget", 2, "max_pull_rows: 50\n").await?;
    let client = small.client().await?;
    client.batch_execute(DDL).await?;
    client.batch_execute("BEGIN").await?;
    assert_eq!(
        failure_code(
            &client,
            "INSERT INTO users (id, name) SELECT g, 'x' FROM generate_series(1, 80) g"
        )
        .await,
        Some(SqlState::PROGRAM_LIMIT_EXCEEDED)
    );
    assert_eq!(
        failure_code(&client, "SELECT 1").await,
        Some(SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    client.batch_execute("ROLLBACK").await?;
    assert_eq!(small.placed_rows("users", "id", false).await?, 0);
    assert_eq!(temporary_tables(&proxy).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_select_never_waits_for_its_own_pool() -> anyhow::Result<()> {
    // One connection per pool: the staging backend is the default shard's only one, so the rows
    // are held and loaded after it is free, instead of waiting for a second connection.
    let cluster = TestCluster::start_with(
        "insert-select-pool",
        2,
        "pool: {size: 1, checkout_timeout_ms: 2000}\n",
    )
    .await?;
    let client = cluster.client().await?;
    client.batch_execute(DDL).await?;
    let inserted = client
        .execute(
            "INSERT INTO users (id, name) SELECT g, 'n' || g FROM generate_series(1, 100) g",
            &[],
        )
        .await?;
    assert_eq!(inserted, 100);
    // As many concurrent statements as connections, on a pool of two: none waits for another.
    drop(client);
    let wide = TestCluster::start_with(
        "insert-select-pool-wide",
        2,
        "pool: {size: 2, checkout_timeout_ms: 2000}\n",
    )
    .await?;
    wide.client().await?.batch_execute(DDL).await?;
    let mut tasks = Vec::new();
    for i in 0..4i64 {
        let client = wide.client().await?;
        tasks.push(tokio::spawn(async move {
            client
                .execute(
                    "INSERT INTO users (id, name) SELECT $1::int8 * 1000 + g, 'w' FROM generate_series(1, 50) g",
                    &[&i],
                )
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await??, 50);
    }
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 100);
    assert_eq!(wide.placed_rows("users", "id", false).await?, 200);
    Ok(())
}
