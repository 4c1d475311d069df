//! Differential test of pull-up reads: reads the merge cannot combine (window functions,
//! `count(DISTINCT …)`, non-co-located joins, set operations, ordered aggregates, grouping
//! sets, LATERAL, correlated subqueries, …) are answered by gathering the rows of their sharded
//! tables on one backend. The same rows are loaded into one plain PostgreSQL database and,
//! through the proxy, into four shards; every query must return the same rows from both (in
//! the same order when it orders them, as multisets otherwise). Then the limits: the row
//! budget, transaction blocks, the extended protocol and names in schemas other than public
//! are refused with clear errors, and nothing a pull creates outlives its statement.

use shardline_tests::{
    binary_rows, failure_code, sqlstate, temporary_tables, text_rows, TestCluster, TextRows,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Tables of the test: `users` and `orders` sharded by different keys (never co-located for a
/// join on `orders.id`), `countries` a reference table, `events` range-sharded. `label` sorts
/// in a non-C collation; `ratio` holds binary fractions, so float sums are exact in any order.
const DDL: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, name text, score int, balance numeric(12,2),
                    ratio float8, created timestamptz, flag bool, country text,
                    label text COLLATE \"en-US-x-icu\");
CREATE TABLE orders (id bigint, user_id bigint, total numeric(10,2), status text);
CREATE TABLE countries (code text PRIMARY KEY, region text);
CREATE TABLE events (id bigint, user_id bigint, kind text);";

/// Deterministic rows with NULLs, ties, negative and fractional values.
fn inserts() -> Vec<String> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let names = ["ann", "bob", "Cy", "dee", "éva", "zed", "Ann", "émile"];
    let countries = ["de", "fr", "us", "in", "xx"];
    let mut users = Vec::new();
    for id in 1..=600i64 {
        let r = next();
        let name = if r % 13 == 0 {
            "NULL".to_owned()
        } else {
            format!("'{}'", names[(r % 8) as usize])
        };
        let score = if r % 11 == 0 {
            "NULL".to_owned()
        } else {
            ((r % 40) as i64 - 10).to_string()
        };
        let balance = format!("{}.{:02}", (r % 2000) as i64 - 1000, (r >> 8) % 100);
        let ratio = if r % 17 == 0 {
            "NULL".to_owned()
        } else {
            format!("{}", ((r >> 12) % 64) as f64 / 8.0 - 2.0)
        };
        let created = format!(
            "'2024-0{}-1{} {:02}:00:00+00'",
            1 + (r >> 24) % 9,
            (r >> 28) % 9,
            (r >> 16) % 24
        );
        let country = countries[((r >> 32) % 5) as usize];
        users.push(format!(
            "({id}, {name}, {score}, {balance}, {ratio}, {created}, {}, '{country}', {name})",
            r % 2 == 0
        ));
    }
    let mut orders = Vec::new();
    for id in 1..=900i64 {
        let r = next();
        // Some orders point at users that do not exist (anti-joins have something to find).
        let user = (r % 650) as i64 + 1;
        let status = ["new", "paid", "shipped"][(r % 3) as usize];
        orders.push(format!(
            "({id}, {user}, {}.{:02}, '{status}')",
            (r >> 8) % 500,
            (r >> 20) % 100
        ));
    }
    let mut events = Vec::new();
    for id in (0..4000i64).step_by(9) {
        let r = next();
        events.push(format!(
            "({id}, {}, '{}')",
            (r % 600) as i64 + 1,
            ["click", "view", "buy"][(r % 3) as usize]
        ));
    }
    let mut statements: Vec<String> = users
        .chunks(100)
        .map(|c| {
            format!(
                "INSERT INTO users (id, name, score, balance, ratio, created, flag, country, label) VALUES {}",
                c.join(", ")
            )
        })
        .collect();
    statements.extend(orders.chunks(150).map(|c| {
        format!(
            "INSERT INTO orders (id, user_id, total, status) VALUES {}",
            c.join(", ")
        )
    }));
    statements.extend(events.chunks(150).map(|c| {
        format!(
            "INSERT INTO events (id, user_id, kind) VALUES {}",
            c.join(", ")
        )
    }));
    statements.push(
        "INSERT INTO countries (code, region) VALUES ('de', 'eu'), ('fr', 'eu'), ('us', 'na'), ('in', 'as')".to_owned(),
    );
    statements
}

/// Reads the merge cannot answer, each with whether its row order is defined.
fn queries() -> Vec<(String, bool)> {
    let mut q: Vec<(String, bool)> = [
        // count(DISTINCT …) and DISTINCT ON
        ("SELECT count(DISTINCT name) FROM users", true),
        ("SELECT count(DISTINCT name), count(DISTINCT score), count(DISTINCT country) FROM users WHERE flag", true),
        ("SELECT country, count(DISTINCT name) FROM users GROUP BY country ORDER BY country", true),
        ("SELECT DISTINCT ON (name) name, id, score FROM users ORDER BY name NULLS FIRST, id DESC", true),
        ("SELECT DISTINCT ON (country) country, balance FROM users ORDER BY country, balance DESC, id", true),
        // window functions
        ("SELECT id, row_number() OVER (ORDER BY created, id) FROM users ORDER BY id", true),
        ("SELECT id, rank() OVER (PARTITION BY name ORDER BY score DESC NULLS LAST) FROM users ORDER BY id", true),
        ("SELECT id, dense_rank() OVER (ORDER BY balance) FROM users ORDER BY id", true),
        ("SELECT id, lag(id) OVER (ORDER BY id), lead(score, 2) OVER (ORDER BY id) FROM users ORDER BY id", true),
        ("SELECT id, sum(balance) OVER (PARTITION BY country ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM users ORDER BY id", true),
        ("SELECT country, id, ntile(4) OVER (PARTITION BY country ORDER BY id) FROM users ORDER BY country, id", true),
        ("SELECT id, first_value(name) OVER w, last_value(name) OVER w FROM users WINDOW w AS (PARTITION BY flag ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) ORDER BY id", true),
        ("SELECT * FROM (SELECT id, score, row_number() OVER (PARTITION BY country ORDER BY score DESC NULLS LAST, id) AS rn FROM users) t WHERE rn <= 2 ORDER BY id", true),
        ("SELECT user_id, total, percent_rank() OVER (PARTITION BY user_id ORDER BY total) FROM orders ORDER BY user_id, total, 3", true),
        // CTEs and subqueries in FROM that aggregate or limit
        ("WITH top AS (SELECT id FROM users ORDER BY balance DESC, id LIMIT 10) SELECT count(*) FROM top", true),
        ("WITH per AS (SELECT country, avg(balance) AS a FROM users GROUP BY country) SELECT country, round(a, 4) FROM per ORDER BY a DESC", true),
        ("SELECT t.name, t.n FROM (SELECT name, count(*) AS n FROM users GROUP BY name) t WHERE t.n > 70 ORDER BY 1 NULLS FIRST", true),
        ("SELECT max(s) FROM (SELECT sum(total) AS s FROM orders GROUP BY user_id) t", true),
        ("SELECT count(*) FROM (SELECT * FROM users ORDER BY id LIMIT 50 OFFSET 20) t WHERE score > 0", true),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT r.n, count(u.id) FROM r LEFT JOIN users u ON u.score = r.n GROUP BY r.n ORDER BY r.n", true),
        // joins that are not co-located
        ("SELECT u.id, o.id FROM users u JOIN orders o ON o.id = u.id ORDER BY 1, 2", true),
        ("SELECT count(*) FROM users u JOIN orders o ON o.total > u.balance AND o.id = u.id", true),
        ("SELECT u.name, sum(o.total) FROM users u JOIN orders o ON o.user_id = u.id WHERE o.status = 'paid' GROUP BY u.name ORDER BY 1 NULLS FIRST", true),
        ("SELECT o.id FROM orders o LEFT JOIN users u ON u.id = o.user_id WHERE u.id IS NULL ORDER BY o.id", true),
        ("SELECT u.id FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id) ORDER BY 1", true),
        ("SELECT e.kind, count(*) FROM events e JOIN users u ON u.id = e.user_id GROUP BY e.kind ORDER BY 1", true),
        ("SELECT u.id, e.id FROM users u FULL JOIN events e ON e.id = u.id WHERE coalesce(u.id, e.id) < 40 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST", true),
        ("SELECT c.region, count(DISTINCT u.id) FROM users u JOIN countries c ON c.code = u.country GROUP BY c.region ORDER BY 1", true),
        // conditions applied on the shards (and where they must not be)
        ("SELECT u.id, o.id FROM users u JOIN orders o ON o.id = u.id WHERE u.score > 5 AND o.status = 'paid' ORDER BY 1, 2", true),
        ("SELECT count(DISTINCT name) FROM users WHERE flag AND balance BETWEEN -100 AND 100", true),
        ("SELECT id, rank() OVER (ORDER BY ratio) FROM users WHERE ratio IS NOT NULL AND country IN ('de', 'fr') ORDER BY id", true),
        ("SELECT u.id, o.id FROM users u LEFT JOIN orders o ON o.id = u.id WHERE o.status IS NULL ORDER BY 1", true),
        ("SELECT count(DISTINCT u.name) FROM users u, orders o WHERE o.id = u.id AND o.total > 100 AND NOT u.flag", true),
        ("SELECT DISTINCT ON (country) country, id FROM users WHERE name ILIKE 'a%' OR score < 0 ORDER BY country, id", true),
        // set operations
        ("SELECT name FROM users UNION SELECT status FROM orders", false),
        ("SELECT user_id FROM orders INTERSECT SELECT id FROM users", false),
        ("SELECT id FROM users EXCEPT SELECT user_id FROM orders", false),
        ("SELECT score FROM users EXCEPT ALL SELECT score FROM users WHERE flag", false),
        ("(SELECT id FROM users ORDER BY id DESC LIMIT 3) UNION ALL (SELECT id FROM orders ORDER BY id LIMIT 3) ORDER BY 1", true),
        // ordered and statistical aggregates
        ("SELECT string_agg(name, ',' ORDER BY id) FROM users WHERE id < 60", true),
        ("SELECT country, array_agg(id ORDER BY id DESC) FROM users WHERE score > 25 GROUP BY country ORDER BY 1", true),
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY balance), percentile_disc(0.9) WITHIN GROUP (ORDER BY score) FROM users", true),
        ("SELECT mode() WITHIN GROUP (ORDER BY name) FROM users", true),
        ("SELECT sum(ratio), avg(ratio), min(ratio), max(ratio) FROM users", true),
        ("SELECT country, sum(ratio), avg(ratio) FROM users GROUP BY country ORDER BY 1", true),
        ("SELECT stddev_samp(score), var_pop(score) FROM users", true),
        ("SELECT bool_and(flag), bool_or(score > 28), every(id > 0) FROM users", true),
        ("SELECT json_agg(id ORDER BY id) FROM users WHERE id % 97 = 0", true),
        // grouping sets
        ("SELECT country, flag, count(*) FROM users GROUP BY ROLLUP (country, flag) ORDER BY 1 NULLS LAST, 2 NULLS LAST", true),
        ("SELECT country, flag, sum(score) FROM users GROUP BY CUBE (country, flag) ORDER BY 1 NULLS LAST, 2 NULLS LAST", true),
        ("SELECT name, country, count(*) FROM users GROUP BY GROUPING SETS ((name), (country), ()) ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3", true),
        // LATERAL and correlated subqueries
        ("SELECT u.id, l.id FROM users u CROSS JOIN LATERAL (SELECT o.id FROM orders o WHERE o.user_id = u.id ORDER BY o.total DESC, o.id LIMIT 1) l ORDER BY 1", true),
        ("SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u WHERE u.id < 100 ORDER BY 1", true),
        ("SELECT id FROM users WHERE balance > (SELECT avg(balance) FROM users) ORDER BY id", true),
        ("SELECT id FROM users u WHERE score = (SELECT max(score) FROM users v WHERE v.country = u.country) ORDER BY id", true),
        // collations and text
        ("SELECT label FROM users ORDER BY label NULLS FIRST, id", true),
        ("SELECT DISTINCT ON (label) label, id FROM users ORDER BY label, id", true),
        ("SELECT min(label), max(label), count(DISTINCT label) FROM users", true),
        ("SELECT min(label), max(label) FROM users", true),
        ("SELECT id, name FROM users ORDER BY name COLLATE \"en-US-x-icu\" NULLS FIRST, id LIMIT 40", true),
        ("SELECT max(name COLLATE \"en-US-x-icu\") FROM users", true),
        // empty inputs and edge cases
        ("SELECT count(DISTINCT name), sum(ratio) FROM users WHERE id < 0", true),
        ("SELECT id, row_number() OVER () FROM users WHERE id < 0", true),
        ("SELECT u.id FROM users u JOIN orders o ON o.id = u.id WHERE false", true),
    ]
    .iter()
    .map(|(sql, ordered)| ((*sql).to_owned(), *ordered))
    .collect();
    // The same shapes over ranges of keys (some shards with no matching rows).
    for (lo, hi) in [(1, 5), (100, 180), (590, 700), (1000, 2000)] {
        q.push((
            format!("SELECT id, rank() OVER (ORDER BY balance DESC, id) FROM users WHERE id BETWEEN {lo} AND {hi} ORDER BY id"),
            true,
        ));
        q.push((
            format!("SELECT count(DISTINCT user_id), sum(total) FROM orders WHERE id BETWEEN {lo} AND {hi}"),
            true,
        ));
        q.push((
            format!("SELECT e.id, u.name FROM events e LEFT JOIN users u ON u.id = e.id WHERE e.id BETWEEN {lo} AND {hi} ORDER BY e.id"),
            true,
        ));
    }
    q.extend(matrix().into_iter().map(|sql| (sql, true)));
    q.extend(set_operations().into_iter().map(|sql| (sql, false)));
    // Names in schema public, as BI tools write them: read from the gathered rows.
    q.extend(
        [
            "SELECT count(DISTINCT name) FROM public.users",
            "SELECT \"public\".\"users\".\"country\", count(DISTINCT o.status) FROM \"public\".\"users\" JOIN public.orders o ON o.user_id = \"public\".\"users\".id GROUP BY 1 ORDER BY 1",
            "SELECT u.id, rank() OVER (ORDER BY u.balance DESC NULLS LAST, u.id) FROM public.users u JOIN public.countries c ON c.code = u.country ORDER BY u.id",
        ]
        .map(|sql| (sql.to_owned(), true)),
    );
    q
}

/// Each construct crossed with the columns, frames and filters it reads (every result with a
/// defined order).
fn matrix() -> Vec<String> {
    let mut q = Vec::new();
    let functions = [
        "row_number()",
        "rank()",
        "dense_rank()",
        "percent_rank()",
        "cume_dist()",
        "ntile(3)",
        "lag(score)",
        "lead(balance, 2)",
        "first_value(name)",
        "sum(balance)",
        "count(*)",
        "avg(score)",
    ];
    let windows = [
        "PARTITION BY country ORDER BY id",
        "ORDER BY balance, id",
        "PARTITION BY flag ORDER BY created, id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING",
        "PARTITION BY name ORDER BY score NULLS FIRST, id RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
    ];
    for function in functions {
        for window in windows {
            q.push(format!(
                "SELECT id, {function} OVER ({window}) FROM users ORDER BY id"
            ));
        }
    }
    let columns = [
        "name",
        "score",
        "balance",
        "country",
        "flag",
        "label",
        "created::date",
    ];
    let filters = ["", " WHERE flag", " WHERE score > 10", " WHERE id > 300"];
    for column in columns {
        for filter in filters {
            q.push(format!(
                "SELECT count(DISTINCT {column}) FROM users{filter}"
            ));
            q.push(format!(
                "SELECT country, count(DISTINCT {column}) FROM users{filter} GROUP BY country ORDER BY country"
            ));
        }
    }
    let joins = [
        "o.id = u.id",
        "o.user_id = u.id AND o.total > u.balance",
        "o.id = u.score",
        "o.id BETWEEN u.id AND u.id + 1",
    ];
    let outputs = ["count(*)", "sum(o.total)", "count(DISTINCT u.country)"];
    let join_filters = ["", " WHERE o.status = 'new'", " WHERE u.flag"];
    for join in joins {
        for output in outputs {
            for filter in join_filters {
                q.push(format!(
                    "SELECT {output} FROM users u JOIN orders o ON {join}{filter}"
                ));
            }
        }
    }
    for column in ["balance", "score", "created"] {
        for direction in ["", " DESC NULLS LAST"] {
            for limit in [1, 10, 100] {
                q.push(format!(
                    "WITH t AS (SELECT * FROM users ORDER BY {column}{direction}, id LIMIT {limit}) SELECT count(*), sum(score), min(id) FROM t"
                ));
            }
        }
    }
    for column in ["name", "country", "flag", "score"] {
        for order in ["id", "id DESC", "balance, id"] {
            q.push(format!(
                "SELECT DISTINCT ON ({column}) {column}, id FROM users ORDER BY {column} NULLS FIRST, {order}"
            ));
        }
    }
    for fraction in ["0", "0.25", "0.5", "0.75", "1"] {
        q.push(format!(
            "SELECT percentile_cont({fraction}) WITHIN GROUP (ORDER BY balance), percentile_disc({fraction}) WITHIN GROUP (ORDER BY score) FROM users"
        ));
    }
    for key in ["country", "flag"] {
        q.push(format!(
            "SELECT {key}, string_agg(name, ',' ORDER BY id), array_agg(score ORDER BY score DESC NULLS LAST, id) FROM users GROUP BY {key} ORDER BY {key}"
        ));
    }
    for sets in [
        "ROLLUP (country, flag)",
        "CUBE (country, flag)",
        "ROLLUP (name, flag)",
        "CUBE (flag, score)",
    ] {
        for aggregate in ["count(*)", "sum(balance)"] {
            q.push(format!(
                "SELECT {}, {aggregate} FROM users GROUP BY {sets} ORDER BY 1 NULLS LAST, 2 NULLS LAST, 3",
                sets.split(['(', ')']).nth(1).unwrap_or("country, flag")
            ));
        }
    }
    for k in [7, 13, 31] {
        q.push(format!("SELECT id, (SELECT max(total) FROM orders o WHERE o.user_id = u.id) FROM users u WHERE u.id % {k} = 0 ORDER BY id"));
        q.push(format!("SELECT id FROM users u WHERE u.id % {k} = 1 AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.status = 'paid') ORDER BY id"));
        q.push(format!("SELECT count(*) FROM orders o WHERE o.id % {k} = 2 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = o.user_id)"));
    }
    // The range-sharded table: some shards hold none of a range's rows.
    for (lo, hi) in [
        (0, 999),
        (500, 1500),
        (990, 3010),
        (2000, 2999),
        (3900, 5000),
    ] {
        q.push(format!("SELECT count(DISTINCT kind), count(DISTINCT user_id) FROM events WHERE id BETWEEN {lo} AND {hi}"));
        q.push(format!("SELECT kind, count(DISTINCT user_id), min(id) FROM events WHERE id BETWEEN {lo} AND {hi} GROUP BY kind ORDER BY kind"));
    }
    for n in [1, 2, 3] {
        q.push(format!("SELECT u.id, l.total FROM users u CROSS JOIN LATERAL (SELECT total FROM orders o WHERE o.user_id = u.id ORDER BY total DESC, id LIMIT {n}) l WHERE u.id < 60 ORDER BY 1, 2"));
    }
    q
}

/// Set operations between reads of different tables (compared as multisets).
fn set_operations() -> Vec<String> {
    let pairs = [
        (
            "SELECT score FROM users",
            "SELECT (id % 50)::int FROM orders",
        ),
        ("SELECT name FROM users", "SELECT status FROM orders"),
        ("SELECT id FROM users", "SELECT user_id FROM orders"),
    ];
    let mut q = Vec::new();
    for (left, right) in pairs {
        for op in [
            "UNION",
            "UNION ALL",
            "INTERSECT",
            "INTERSECT ALL",
            "EXCEPT",
            "EXCEPT ALL",
        ] {
            q.push(format!("{left} {op} {right}"));
        }
    }
    q
}

/// A 4-shard cluster (with `extra_yaml`) and a plain database `oracle` on shard 0's server,
/// loaded with the same rows (the cluster through the proxy).
async fn loaded(label: &str, extra_yaml: &str) -> anyhow::Result<(TestCluster, Client, Client)> {
    let cluster = TestCluster::start_with(label, 4, extra_yaml).await?;
    let oracle = cluster.oracle().await?;
    let proxy = cluster.client().await?;
    oracle.batch_execute(DDL).await?;
    proxy.batch_execute(DDL).await?;
    for statement in inserts() {
        oracle.batch_execute(&statement).await?;
        proxy.batch_execute(&statement).await?;
    }
    Ok((cluster, oracle, proxy))
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_the_merge_cannot_answer_match_one_postgres() -> anyhow::Result<()> {
    let (cluster, oracle, proxy) = loaded("pull-oracle", "").await?;
    let queries = queries();
    for (sql, ordered) in &queries {
        let settle = |mut rows: TextRows| {
            if !ordered {
                rows.sort();
            }
            rows
        };
        let want = settle(text_rows(&oracle, sql).await?);
        let got = settle(text_rows(&proxy, sql).await?);
        anyhow::ensure!(got == want, "{sql}\n got {got:?}\nwant {want:?}");
        // The extended protocol with binary results, byte for byte.
        let (mut want, want_types) = binary_rows(&oracle, sql, &[]).await?;
        let (mut got, got_types) = binary_rows(&proxy, sql, &[]).await?;
        if !ordered {
            want.sort();
            got.sort();
        }
        anyhow::ensure!(got_types == want_types, "types of {sql}");
        anyhow::ensure!(got == want, "binary: {sql}\n got {got:?}\nwant {want:?}");
    }
    // Bound parameters in the extended protocol, unnamed and prepared.
    for (low, high) in [(1i64, 50i64), (200, 400), (900, 1000)] {
        let sql = "SELECT id, dense_rank() OVER (ORDER BY balance DESC, id) FROM users WHERE id BETWEEN $1 AND $2 ORDER BY id";
        let (want, _) = binary_rows(&oracle, sql, &[&low, &high]).await?;
        let (got, _) = binary_rows(&proxy, sql, &[&low, &high]).await?;
        anyhow::ensure!(got == want, "{sql} with {low}, {high}");
        let prepared = proxy.prepare(sql).await?;
        let again = proxy.query(&prepared, &[&low, &high]).await?;
        anyhow::ensure!(
            again.len() == want.len(),
            "{sql} prepared, with {low}, {high}"
        );
    }
    // Each statement's temporary tables went with it: the default shard's `users` is the
    // real table again (its own share of the rows, not everything pulled).
    let total = text_rows(&proxy, "SELECT count(*) FROM users").await?;
    anyhow::ensure!(total == vec![vec![Some("600".to_owned())]], "{total:?}");
    let mut planned = 0;
    for (sql, _) in &queries {
        let explained = text_rows(&proxy, &format!("EXPLAIN (ROUTE) {sql}")).await?;
        let first = explained
            .first()
            .and_then(|row| row.get(1).cloned().flatten());
        planned += usize::from(first.is_some_and(|why| why.starts_with("pull-up")));
    }
    println!(
        "{} reads matched one PostgreSQL; {planned} planned as pull-ups, the rest merged or pulled up when the shards' answers showed the merge could not be exact",
        queries.len()
    );
    // Clients pulling at the same time each get their own backend and temporary tables.
    let sql = "SELECT u.country, count(DISTINCT o.status), sum(o.total) FROM users u JOIN orders o ON o.id = u.id GROUP BY 1 ORDER BY 1";
    let want = text_rows(&oracle, sql).await?;
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = cluster.client().await?;
        runs.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..5 {
                answers.push(text_rows(&client, sql).await?);
            }
            anyhow::Ok(answers)
        });
    }
    while let Some(run) = runs.join_next().await {
        for got in run?? {
            anyhow::ensure!(
                got == want,
                "concurrent: {sql}\n got {got:?}\nwant {want:?}"
            );
        }
    }
    Ok(())
}

/// Runs `sql` on both sides and requires the same rows (sorted: the reads below either order
/// their rows fully or are compared as multisets).
async fn same_rows(oracle: &Client, proxy: &Client, sql: &str) -> anyhow::Result<()> {
    let mut want = text_rows(oracle, sql).await?;
    let mut got = text_rows(proxy, sql).await?;
    want.sort();
    got.sort();
    anyhow::ensure!(
        got == want,
        "{sql}: the proxy answered {got:?}, one server {want:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_ups_inside_transactions_see_their_writes() -> anyhow::Result<()> {
    let (cluster, oracle, proxy) = loaded("pull-tx", "default_shard: s2\n").await?;
    let writes = [
        "INSERT INTO users (id, name, score, country) VALUES (1001, 'new', 5, 'de'), (1002, 'newer', 6, 'fr'), (1003, 'zed', NULL, 'us')",
        "UPDATE users SET name = 'renamed' WHERE id % 7 = 0",
        "DELETE FROM orders WHERE id % 5 = 0",
        "INSERT INTO orders (id, user_id, total, status) VALUES (5001, 1001, 10, 'new'), (5002, 1002, 20, 'paid')",
    ];
    let reads = [
        "SELECT count(DISTINCT name), count(DISTINCT country) FROM users",
        "SELECT id, name, row_number() OVER (PARTITION BY country ORDER BY id) FROM users WHERE id > 990 OR id % 50 = 0",
        "SELECT u.country, count(*), sum(o.total) FROM orders o JOIN users u ON u.id = o.user_id GROUP BY u.country",
        "SELECT status, count(DISTINCT user_id) FROM orders GROUP BY status",
    ];
    // Committed: the reads see the block's own writes, plain reads after them see the real
    // tables again, and the commit (over every shard, the default one holding the pull's
    // temporary tables) keeps the writes.
    for side in [&oracle, &proxy] {
        side.batch_execute("BEGIN").await?;
        for write in writes {
            side.batch_execute(write).await?;
        }
    }
    for read in reads {
        same_rows(&oracle, &proxy, read).await?;
        same_rows(&oracle, &proxy, "SELECT count(*), sum(score) FROM users").await?;
    }
    // In the extended protocol, with bound parameters.
    let sql = "SELECT count(DISTINCT name) FROM users WHERE id > $1";
    let want: i64 = oracle.query_one(sql, &[&500i64]).await?.get(0);
    let got: i64 = proxy.query_one(sql, &[&500i64]).await?.get(0);
    assert_eq!(got, want, "{sql}");
    // A savepoint rolled back after a pull-up takes the block's later writes with it.
    for side in [&oracle, &proxy] {
        side.batch_execute("SAVEPOINT before_more").await?;
        side.batch_execute("DELETE FROM users WHERE id = 1003")
            .await?;
    }
    same_rows(&oracle, &proxy, reads[0]).await?;
    for side in [&oracle, &proxy] {
        side.batch_execute("ROLLBACK TO SAVEPOINT before_more")
            .await?;
    }
    same_rows(&oracle, &proxy, reads[0]).await?;
    oracle.batch_execute("COMMIT").await?;
    proxy.batch_execute("COMMIT").await?;
    for read in reads {
        same_rows(&oracle, &proxy, read).await?;
    }
    same_rows(&oracle, &proxy, "SELECT id, name FROM users WHERE id > 990").await?;

    // Rolled back: the writes the pull-up saw are gone.
    proxy.batch_execute("BEGIN").await?;
    proxy
        .batch_execute("DELETE FROM users WHERE id > 1000")
        .await?;
    let inside = text_rows(
        &proxy,
        "SELECT count(DISTINCT id) FROM users WHERE id > 990",
    )
    .await?;
    assert_eq!(inside, vec![vec![Some("0".to_owned())]]);
    proxy.batch_execute("ROLLBACK").await?;
    same_rows(
        &oracle,
        &proxy,
        "SELECT count(DISTINCT id) FROM users WHERE id > 990",
    )
    .await?;

    // A pull-up that fails fails the block; ROLLBACK ends it cleanly.
    proxy
        .batch_execute("BEGIN; UPDATE users SET score = 0 WHERE id = 1001")
        .await?;
    assert_eq!(
        failure_code(&proxy, "SELECT id / 0, row_number() OVER () FROM users").await,
        Some(SqlState::DIVISION_BY_ZERO)
    );
    proxy.batch_execute("ROLLBACK").await?;
    same_rows(
        &oracle,
        &proxy,
        "SELECT id, score FROM users WHERE id > 1000",
    )
    .await?;

    // No prepared transaction, no temporary table is left behind.
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 603);
    assert_eq!(temporary_tables(&proxy).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_ups_are_refused_where_they_cannot_run_exactly() -> anyhow::Result<()> {
    let (cluster, _oracle, proxy) = loaded("pull-limits", "max_pull_rows: 700\n").await?;
    // The budget: 900 orders would move; the statement is refused, the session goes on.
    let over = proxy
        .simple_query("SELECT count(DISTINCT status) FROM orders")
        .await;
    let error = over.err().map(anyhow::Error::from);
    assert_eq!(
        error.as_ref().and_then(sqlstate),
        Some(SqlState::PROGRAM_LIMIT_EXCEEDED),
        "{error:?}"
    );
    let message = format!("{:?}", error);
    assert!(message.contains("max_pull_rows"), "{message}");
    let under = text_rows(
        &proxy,
        "SELECT count(DISTINCT name) FROM users WHERE id <= 400",
    )
    .await?;
    assert_eq!(under.len(), 1);
    // Conditions on the table alone are applied on the shards: 300 of the 900 orders move.
    let pushed = text_rows(
        &proxy,
        "SELECT count(DISTINCT status), count(*) FROM orders WHERE id <= 300 AND total >= 0",
    )
    .await?;
    assert_eq!(
        pushed,
        vec![vec![Some("3".to_owned()), Some("300".to_owned())]]
    );
    // EXPLAIN (ROUTE) shows the pull-up: where it runs and what moves.
    let explained = text_rows(
        &proxy,
        "EXPLAIN (ROUTE) SELECT u.id FROM users u JOIN orders o ON o.id = u.id",
    )
    .await?;
    let text = format!("{explained:?}");
    assert!(
        text.contains("pull-up")
            && text.contains("orders from s0")
            && text.contains("users from s0")
            && text.contains("the shards estimate"),
        "{text}"
    );
    // Inside a transaction block the budget fails the block, as any failing statement does.
    proxy.batch_execute("BEGIN").await?;
    assert_eq!(
        failure_code(&proxy, "SELECT count(DISTINCT status) FROM orders").await,
        Some(SqlState::PROGRAM_LIMIT_EXCEEDED)
    );
    assert_eq!(
        failure_code(&proxy, "SELECT 1").await,
        Some(SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    proxy.batch_execute("ROLLBACK").await?;
    // The budget holds in the extended protocol too, and the session goes on.
    let over = proxy
        .query(
            "SELECT count(DISTINCT status) FROM orders WHERE id > $1",
            &[&0i64],
        )
        .await
        .err()
        .map(anyhow::Error::from);
    assert_eq!(
        over.as_ref().and_then(sqlstate),
        Some(SqlState::PROGRAM_LIMIT_EXCEEDED),
        "{over:?}"
    );
    let counted = proxy
        .query_one(
            "SELECT count(DISTINCT id) FROM users WHERE id < $1",
            &[&100i64],
        )
        .await?;
    assert_eq!(counted.get::<_, i64>(0), 99);
    // A sharded table in another schema than public is not the table the rows are gathered of.
    let qualified = proxy
        .simple_query("SELECT count(DISTINCT name) FROM sales.users")
        .await
        .err()
        .map(anyhow::Error::from);
    assert_eq!(
        qualified.as_ref().and_then(sqlstate),
        Some(SqlState::FEATURE_NOT_SUPPORTED)
    );
    // A failing statement after the pull rolls it back; nothing is left on any backend.
    let failed = proxy
        .simple_query("SELECT id / 0, row_number() OVER () FROM users WHERE id < 10")
        .await
        .err()
        .map(anyhow::Error::from);
    assert_eq!(
        failed.as_ref().and_then(sqlstate),
        Some(SqlState::DIVISION_BY_ZERO)
    );
    for _ in 0..cluster.config.pool.size.min(8) {
        let fresh = cluster.client().await?;
        let again = text_rows(
            &fresh,
            "SELECT count(DISTINCT id) FROM users WHERE id <= 100",
        )
        .await?;
        assert_eq!(again, vec![vec![Some("100".to_owned())]]);
    }
    Ok(())
}
