//! Differential test of the ordered merge and the combined aggregates: the same rows loaded
//! into one plain PostgreSQL database and, through the proxy, into four shards; every query must
//! return the same rows (in the same order when it has one) from both, in the simple protocol,
//! in the extended protocol with text results, and in the extended protocol with binary
//! results (compared byte for byte).

use shardline_tests::wire::{extended_text, trusting_proxy};
use shardline_tests::{binary_rows, text_rows, TestCluster, TextRows};
use tokio::net::TcpStream;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// A parameterised query: its text, its parameters as text and as typed values, and the same
/// query with the values written in.
type BoundCase<'a> = (&'a str, Vec<String>, Vec<&'a (dyn ToSql + Sync)>, String);

/// The proxy and the oracle, reached in every protocol the test compares.
struct Sides {
    oracle: Client,
    proxy: Client,
    /// A byte-level connection to a proxy over the same shards (text extended protocol).
    wire: TcpStream,
    _wire_proxy: shardline::Proxy,
}

impl Sides {
    /// Checks one query in all three protocols; `literal` is `sql` with the parameters
    /// written in, for the oracle's simple protocol.
    async fn check(
        &mut self,
        sql: &str,
        text_params: &[Option<&str>],
        params: &[&(dyn ToSql + Sync)],
        literal: &str,
        ordered: bool,
    ) -> anyhow::Result<()> {
        let settle = |mut rows: TextRows| {
            if !ordered {
                rows.sort();
            }
            rows
        };
        let want = settle(text_rows(&self.oracle, literal).await?);
        if text_params.is_empty() {
            let got = settle(text_rows(&self.proxy, sql).await?);
            anyhow::ensure!(
                got == want,
                "simple protocol: {sql}\n got {got:?}\nwant {want:?}"
            );
        }
        let got = extended_text(&mut self.wire, sql, text_params)
            .await?
            .map_err(|e| anyhow::anyhow!("extended text: {sql}: {e}"))?;
        let got = settle(got);
        anyhow::ensure!(
            got == want,
            "extended protocol, text: {sql}\n got {got:?}\nwant {want:?}"
        );
        let (mut want, want_types) = binary_rows(&self.oracle, sql, params).await?;
        let (mut got, got_types) = binary_rows(&self.proxy, sql, params).await?;
        if !ordered {
            want.sort();
            got.sort();
        }
        anyhow::ensure!(
            got_types == want_types || got.is_empty(),
            "column types of {sql}: {got_types:?} vs {want_types:?}"
        );
        anyhow::ensure!(
            got == want,
            "extended protocol, binary: {sql}\n got {got:?}\nwant {want:?}"
        );
        Ok(())
    }
}

/// Deterministic test data: ties, NULLs, negative numbers, several time zones.
fn inserts() -> Vec<String> {
    let mut statements = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for chunk in 0..20 {
        let mut values = Vec::new();
        for i in 0..100 {
            let id = chunk * 100 + i + 1;
            let r = next();
            let score = if r % 11 == 0 {
                "NULL".to_owned()
            } else {
                ((r % 50) as i64 - 10).to_string()
            };
            let name = if r % 13 == 0 {
                "NULL".to_owned()
            } else {
                format!(
                    "'{}'",
                    ["ann", "bob", "Cy", "dee", "éva", "zed"][(r % 6) as usize]
                )
            };
            let balance = format!("{}.{:02}", (r % 2000) as i64 - 1000, (r >> 8) % 100);
            let hour = (r >> 16) % 24;
            let zone = ["+00", "+02", "-05", "+05:30"][((r >> 20) % 4) as usize];
            let created = format!(
                "'2024-0{}-1{} {hour:02}:00:00{zone}'",
                1 + (r >> 24) % 9,
                (r >> 28) % 9
            );
            values.push(format!(
                "({id}, {name}, {score}, {balance}, {created}, {})",
                r % 2 == 0
            ));
        }
        statements.push(format!(
            "INSERT INTO users (id, name, score, balance, created, flag) VALUES {}",
            values.join(", ")
        ));
    }
    statements
}

fn queries() -> Vec<String> {
    let mut queries = Vec::new();
    let columns = ["id", "name", "score", "balance", "created", "flag"];
    for column in columns {
        for direction in ["", " DESC"] {
            for nulls in ["", " NULLS FIRST", " NULLS LAST"] {
                for (limit, offset) in [
                    (None, None),
                    (Some(7), None),
                    (Some(25), Some(10)),
                    (None, Some(1990)),
                ] {
                    let mut q = format!(
                        "SELECT id, {column} FROM users ORDER BY {column}{direction}{nulls}, id"
                    );
                    if let Some(l) = limit {
                        q.push_str(&format!(" LIMIT {l}"));
                    }
                    if let Some(o) = offset {
                        q.push_str(&format!(" OFFSET {o}"));
                    }
                    queries.push(q);
                }
            }
        }
    }
    queries.extend(
        [
            "SELECT * FROM users ORDER BY score DESC NULLS LAST, id LIMIT 50",
            "SELECT id FROM users ORDER BY balance, id",
            "SELECT id, name FROM users WHERE score > 20 ORDER BY name DESC, id DESC",
            "SELECT id AS k, score FROM users ORDER BY k DESC LIMIT 3",
            "SELECT id, score FROM users ORDER BY 2, 1 LIMIT 40 OFFSET 40",
            "SELECT id FROM users ORDER BY score * 2 - id, id LIMIT 30",
            "SELECT name, id FROM users WHERE flag ORDER BY created DESC, id",
            "SELECT id FROM users ORDER BY id LIMIT 0",
            "SELECT id FROM users WHERE id < 0 ORDER BY id",
            "SELECT id, created FROM users ORDER BY created, id OFFSET 1000 LIMIT 5",
        ]
        .map(str::to_owned),
    );
    queries
}

/// A 4-shard cluster and a plain database `oracle` on shard 0's server, loaded with the same
/// rows (the cluster through the proxy).
async fn loaded_cluster(label: &str) -> anyhow::Result<(TestCluster, Sides)> {
    let cluster = TestCluster::start(label, 4).await?;
    let oracle = cluster.oracle().await?;
    let proxy = cluster.client().await?;
    let ddl = "CREATE TABLE users (id bigint PRIMARY KEY, name text, score int, balance numeric(12,2), created timestamptz, flag bool)";
    oracle.batch_execute(ddl).await?;
    proxy.batch_execute(ddl).await?;
    for statement in inserts() {
        oracle.batch_execute(&statement).await?;
        proxy.batch_execute(&statement).await?;
    }
    let wire_proxy = trusting_proxy(&cluster).await?;
    let wire = shardline_tests::wire::login(wire_proxy.addr.port()).await?;
    let sides = Sides {
        oracle,
        proxy,
        wire,
        _wire_proxy: wire_proxy,
    };
    Ok((cluster, sides))
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_queries_match_one_postgres() -> anyhow::Result<()> {
    let (_cluster, mut sides) = loaded_cluster("ordered").await?;
    let queries = queries();
    for q in &queries {
        sides.check(q, &[], &[], q, true).await?;
    }
    // Key-restricted and IN-list reads (one shard or several).
    let mut keyed = Vec::new();
    for k in [1, 7, 150, 999, 1500, 2000, 2001] {
        keyed.push(format!("SELECT * FROM users WHERE id = {k}"));
        keyed.push(format!(
            "SELECT name, score FROM users WHERE id IN ({k}, {}, {}) ORDER BY id DESC",
            k + 1,
            k + 500
        ));
        keyed.push(format!(
            "SELECT count(*), sum(balance) FROM users WHERE id IN ({k}, {}, {}, {})",
            k + 3,
            k + 9,
            k + 27
        ));
        keyed.push(format!(
            "SELECT id FROM users WHERE id = {k} OR id = {} ORDER BY id",
            k * 2
        ));
        keyed.push(format!("SELECT id, created FROM users WHERE id BETWEEN {k} AND {} ORDER BY created DESC, id LIMIT 4", k + 40));
    }
    for q in &keyed {
        sides.check(q, &[], &[], q, true).await?;
    }
    // Bound parameters: keys, filters, LIMIT and OFFSET (an ORM's `id = ANY($1)`).
    let mut bound = 0;
    for (k, limit, offset) in [
        (1i64, 5i64, 0i64),
        (150, 20, 7),
        (999, 1, 300),
        (1500, 0, 0),
    ] {
        let ids: Vec<i64> = (0..12).map(|i| k + i * 37).collect();
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let (floor, above) = ((k % 40 - 10) as i32, 2000 - k);
        let cases: Vec<BoundCase> = vec![
            (
                "SELECT id, name FROM users WHERE id = ANY($1) ORDER BY name NULLS FIRST, id",
                vec![format!("{{{list}}}")],
                vec![&ids],
                format!("SELECT id, name FROM users WHERE id = ANY('{{{list}}}') ORDER BY name NULLS FIRST, id"),
            ),
            (
                "SELECT id, score, balance FROM users WHERE score > $1 ORDER BY balance DESC, id LIMIT $2 OFFSET $3",
                vec![(k % 40 - 10).to_string(), limit.to_string(), offset.to_string()],
                vec![&floor, &limit, &offset],
                format!("SELECT id, score, balance FROM users WHERE score > {} ORDER BY balance DESC, id LIMIT {limit} OFFSET {offset}", k % 40 - 10),
            ),
            (
                "SELECT name, count(*), sum(balance), avg(score), min(created) FROM users WHERE id = ANY($1) OR id > $2 GROUP BY name ORDER BY 2 DESC, 1 NULLS FIRST LIMIT $3",
                vec![format!("{{{list}}}"), (2000 - k).to_string(), limit.to_string()],
                vec![&ids, &above, &limit],
                format!("SELECT name, count(*), sum(balance), avg(score), min(created) FROM users WHERE id = ANY('{{{list}}}') OR id > {} GROUP BY name ORDER BY 2 DESC, 1 NULLS FIRST LIMIT {limit}", 2000 - k),
            ),
        ];
        for (sql, text, params, literal) in &cases {
            let text: Vec<Option<&str>> = text.iter().map(|t| Some(t.as_str())).collect();
            sides.check(sql, &text, params, literal, true).await?;
            bound += 1;
        }
    }
    println!(
        "differential: {} ordered, {} keyed and {bound} parameterised queries matched a single PostgreSQL in the simple protocol, the extended protocol with text results and with binary results",
        queries.len(),
        keyed.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregates_match_one_postgres() -> anyhow::Result<()> {
    let (_cluster, mut sides) = loaded_cluster("aggregates").await?;
    // (query, whether its order is defined; unordered results compare as multisets)
    let queries: &[(&str, bool)] = &[
        ("SELECT count(*) FROM users", true),
        ("SELECT count(score), sum(score), min(score), max(score), sum(balance), min(balance), max(balance), min(name), max(name), min(created), max(created), min(id), max(id) FROM users", true),
        ("SELECT count(*), sum(score), max(name) FROM users WHERE id < 0", true),
        ("SELECT name, count(*), sum(score), min(balance) FROM users GROUP BY name ORDER BY name NULLS FIRST", true),
        ("SELECT flag, count(*) FROM users GROUP BY flag ORDER BY 1", true),
        ("SELECT score, count(*) AS n FROM users WHERE id > 100 GROUP BY score ORDER BY n DESC, score LIMIT 5", true),
        ("SELECT name, max(balance) FROM users GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1 LIMIT 3 OFFSET 1", true),
        ("SELECT score, sum(balance), count(name) FROM users GROUP BY score", false),
        ("SELECT created::date AS day, count(*) FROM users GROUP BY 1 ORDER BY day DESC", true),
        ("SELECT count(*) FROM (SELECT DISTINCT id FROM users) t", true),
        ("SELECT DISTINCT name FROM users ORDER BY name NULLS FIRST", true),
        ("SELECT avg(score), avg(balance), avg(id) FROM users", true),
        ("SELECT avg(score) FROM users WHERE id < 0", true),
        ("SELECT name, avg(balance), avg(score) AS s, count(*) FROM users GROUP BY name ORDER BY s DESC NULLS LAST, name NULLS FIRST", true),
        ("SELECT DISTINCT flag, score FROM users", false),
        ("SELECT DISTINCT score FROM users WHERE score > 0 ORDER BY 1 DESC LIMIT 4 OFFSET 2", true),
        ("SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 300 ORDER BY 1 NULLS FIRST", true),
        ("SELECT score, sum(balance) FROM users GROUP BY score HAVING sum(balance) < 0 AND max(name) <> 'zed' OR score IS NULL", false),
        ("SELECT flag, count(*) FROM users GROUP BY flag HAVING min(created) > '2024-03-01 00:00:00+00'", false),
        ("SELECT score, count(*) FROM users GROUP BY score HAVING NOT (count(*) < 40) ORDER BY score NULLS FIRST", true),
        ("SELECT name, avg(score) FROM users GROUP BY name HAVING sum(score) >= -5.5 AND count(score) <> 0 ORDER BY 2 DESC", true),
    ];
    for (q, ordered) in queries {
        sides.check(q, &[], &[], q, *ordered).await?;
    }
    // HAVING with bound parameters.
    for (floor, at_least, limit) in [(0i64, 300i64, 3i64), (500, 1, 10), (1999, 0, 1)] {
        let sql = "SELECT name, count(*) FROM users WHERE id > $1 GROUP BY name HAVING count(*) >= $2 ORDER BY 2 DESC, 1 NULLS FIRST LIMIT $3";
        let literal = format!("SELECT name, count(*) FROM users WHERE id > {floor} GROUP BY name HAVING count(*) >= {at_least} ORDER BY 2 DESC, 1 NULLS FIRST LIMIT {limit}");
        let text = [floor, at_least, limit].map(|v| v.to_string());
        let text: Vec<Option<&str>> = text.iter().map(|t| Some(t.as_str())).collect();
        sides
            .check(sql, &text, &[&floor, &at_least, &limit], &literal, true)
            .await?;
    }
    // Aggregates that cannot be combined exactly are never approximated: PostgreSQL answers
    // them once the rows are gathered in one place (see pull_up.rs).
    for q in [
        "SELECT avg(score::float8) FROM users",
        "SELECT count(DISTINCT name) FROM users",
        "SELECT sum(score::float8) FROM users",
    ] {
        sides.check(q, &[], &[], q, true).await?;
    }
    Ok(())
}
