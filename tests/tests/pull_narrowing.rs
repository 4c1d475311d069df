//! Pull-ups move only the columns their statement reads, as PostgreSQL itself resolves the
//! statement (`shardline_router::narrow`). Seen through column privileges: a role that may read
//! only some columns of a table on the shards the rows come from can run a pull-up that reads
//! those columns, while one that reads another column, a whole row, or a table by name or
//! through a view, is refused by the shard (42501) because the whole rows have to move. A `NOT NULL` domain column the statement
//! does not read still moves (a NULL left in its place would break the domain), and every
//! answer equals one plain PostgreSQL's.

use anyhow::Context;
use shardline_tests::{connect, sqlstate, TestCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The domain is made on each server directly (the proxy's parser does not know `CREATE
/// DOMAIN`); the table through the proxy.
const DOMAIN: &str = "CREATE DOMAIN label AS text NOT NULL";
const TABLE: &str =
    "CREATE TABLE users (id int8 PRIMARY KEY, name text, secret text, tag label DEFAULT 'x')";

/// The text of every row `sql` answers, in order.
async fn rows(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_ups_move_only_the_columns_their_statement_reads() -> anyhow::Result<()> {
    let cluster = TestCluster::start("pull-narrow", 3).await?;
    let owner = cluster.client().await?;
    let oracle = cluster.oracle().await?;
    let mut shards = Vec::new();
    for server in cluster.pg.servers() {
        let shard = connect(&server.superuser_conninfo_db("app")).await?;
        shard.batch_execute(DOMAIN).await?;
        shards.push(shard);
    }
    oracle.batch_execute(DOMAIN).await?;
    owner.batch_execute(TABLE).await?;
    oracle.batch_execute(TABLE).await?;
    let values: Vec<String> = (1..=60)
        .map(|i| format!("({i}, 'n{}', 's{i}')", i % 7))
        .collect();
    let insert = format!(
        "INSERT INTO users (id, name, secret) VALUES {}",
        values.join(", ")
    );
    owner.batch_execute(&insert).await?;
    oracle.batch_execute(&insert).await?;
    // The target (the default shard, s0) takes its own rows whole; the others only what the
    // role may read.
    for (i, shard) in shards.iter().enumerate() {
        let grant = if i == 0 {
            "GRANT SELECT ON users TO reader"
        } else {
            "GRANT SELECT (id, name, tag) ON users TO reader"
        };
        shard
            .batch_execute(&format!(
                "CREATE ROLE reader LOGIN PASSWORD 'app'; GRANT USAGE ON SCHEMA public TO reader; {grant}; \
                 CREATE FUNCTION names() RETURNS SETOF text LANGUAGE sql AS 'SELECT name FROM users'; \
                 CREATE VIEW names_view AS SELECT * FROM names() n(name); \
                 GRANT SELECT ON names_view TO reader"
            ))
            .await?;
    }
    let yaml = cluster.yaml.replace(
        "users:\n",
        "users:\n  - {name: reader, password: app, server_password: app}\n",
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let reader = connect(&format!(
        "host=127.0.0.1 port={} user=reader password=app dbname=app",
        proxy.addr.port()
    ))
    .await?;

    let readable = [
        "SELECT count(DISTINCT name) FROM users",
        "SELECT id, name, rank() OVER (PARTITION BY name ORDER BY id) FROM users ORDER BY id",
        "SELECT count(*) FROM users",
        "SELECT count(*) OVER () FROM users LIMIT 1",
        "SELECT a.nm, count(*) FROM users AS a(i, nm) JOIN users b ON b.id = a.i GROUP BY 1 ORDER BY 1",
        "SELECT count(DISTINCT name) FROM users ; -- a note; with a semicolon",
    ];
    for sql in readable {
        let through_proxy = rows(&reader, sql).await.with_context(|| sql.to_owned())?;
        assert_eq!(through_proxy, rows(&oracle, sql).await?, "{sql}");
    }
    // EXPLAIN (ROUTE) shows what each shard is asked for.
    let explained = rows(
        &owner,
        "EXPLAIN (ROUTE) SELECT count(DISTINCT name) FROM users",
    )
    .await?;
    let explained = format!("{explained:?}");
    assert!(
        explained.contains(r#"SELECT \"name\", \"tag\" FROM \"users\""#),
        "{explained}"
    );

    // The extended protocol narrows too.
    let counted: i64 = reader
        .query_one("SELECT count(DISTINCT name) FROM users", &[])
        .await?
        .get(0);
    assert_eq!(counted, 7);

    let refused = [
        "SELECT count(DISTINCT secret) FROM users",
        "SELECT count(DISTINCT u) FROM users u",
        "SELECT count(DISTINCT u.id) FROM users u WHERE u IS NOT NULL",
        // Tables read by name at run time, or through a view whose function reads them.
        "SELECT count(DISTINCT u.id), length(query_to_xml('SELECT name FROM users', true, false, '')::text) FROM users u",
        "SELECT count(DISTINCT u.id) FROM users u WHERE u.id::oid::regclass IS NOT NULL",
        "SELECT count(DISTINCT u.id), (SELECT count(*) FROM names_view) FROM users u",
    ];
    for sql in refused {
        let error = reader
            .simple_query(sql)
            .await
            .err()
            .map(anyhow::Error::from);
        assert_eq!(
            error.as_ref().and_then(sqlstate),
            Some(SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {error:?}"
        );
    }
    // A view cannot hold parameters: a statement with them moves whole rows.
    let with_parameter = reader
        .query(
            "SELECT count(DISTINCT name) FROM users WHERE id > $1",
            &[&0_i64],
        )
        .await
        .err()
        .map(anyhow::Error::from);
    assert_eq!(
        with_parameter.as_ref().and_then(sqlstate),
        Some(SqlState::INSUFFICIENT_PRIVILEGE)
    );
    proxy.stop().await;
    Ok(())
}
