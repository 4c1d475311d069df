//! Tables whose shard key is `bigserial`, `serial`, an identity column or a
//! `gen_random_uuid()` default, filled through two proxies at once by `INSERT`s that leave the
//! key out, in the simple protocol, the extended protocol and with prepared statements: every
//! key is unique, every row sits on the shard PostgreSQL's hash of its key names, and what
//! `RETURNING` said is what is stored. A proxy started again hands out no key twice, and a
//! COPY that leaves the key out gets one per row.

use std::collections::{BTreeMap, BTreeSet};

use futures::SinkExt;
use shardline_router::KeyValue;
use shardline_tests::{connect, sqlstate, TestCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Rows each client inserts.
const ROWS: i32 = 5_000;
/// Clients, half on each proxy.
const CLIENTS: i32 = 8;

/// Inserts `ROWS` rows without a key, cycling through the simple protocol, the extended
/// protocol and a prepared statement; returns the key `RETURNING` gave each (client, seq).
async fn fill(client: Client, who: i32) -> anyhow::Result<Vec<(i64, i32, i32)>> {
    let prepared = client
        .prepare("INSERT INTO users (name, client, seq) VALUES ($1, $2, $3) RETURNING id")
        .await?;
    let mut returned = Vec::with_capacity(ROWS as usize);
    for seq in 0..ROWS {
        let name = format!("c{who}-{seq}");
        let id: i64 = match seq % 3 {
            0 => {
                let sql = format!(
                    "INSERT INTO users (name, client, seq) VALUES ('{name}', {who}, {seq}) RETURNING id"
                );
                let rows = client.simple_query(&sql).await?;
                let id = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                });
                id.ok_or_else(|| anyhow::anyhow!("no RETURNING row"))?
                    .parse()?
            }
            1 => client
                .query_one(
                    "INSERT INTO users (name, client, seq) VALUES ($1, $2, $3) RETURNING id",
                    &[&name, &who, &seq],
                )
                .await?
                .get(0),
            _ => client
                .query_one(&prepared, &[&name, &who, &seq])
                .await?
                .get(0),
        };
        returned.push((id, who, seq));
    }
    Ok(returned)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_left_to_the_default_are_generated_unique_and_routed() -> anyhow::Result<()> {
    let cluster = TestCluster::start("genkeys", 4).await?;
    let setup = cluster.client().await?;
    setup
        .batch_execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, name text, client int, seq int);
             CREATE TABLE pgbench_accounts (aid serial PRIMARY KEY, filler text);
             CREATE TABLE orders (user_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
             CREATE TABLE devices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text);
             CREATE TABLE events (id bigint PRIMARY KEY, what text)",
        )
        .await?;
    let second = shardline::Proxy::start(cluster.config.clone()).await?;
    let second_conninfo = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        second.addr.port()
    );

    let mut tasks = Vec::new();
    for who in 0..CLIENTS {
        let client = if who % 2 == 0 {
            cluster.client().await?
        } else {
            connect(&second_conninfo).await?
        };
        tasks.push(tokio::spawn(fill(client, who)));
    }
    let mut returned: BTreeMap<i64, (i32, i32)> = BTreeMap::new();
    for task in tasks {
        for (id, who, seq) in task.await?? {
            anyhow::ensure!(
                returned.insert(id, (who, seq)).is_none(),
                "key {id} was returned twice"
            );
        }
    }
    let total = (ROWS * CLIENTS) as usize;
    assert_eq!(returned.len(), total);
    // Every row on its shard (checked on each shard directly), and as RETURNING said.
    assert_eq!(cluster.placed_rows("users", "id", false).await?, total);
    let mut stored = BTreeMap::new();
    for row in setup
        .query("SELECT id, client, seq FROM users", &[])
        .await?
    {
        stored.insert(row.get::<_, i64>(0), (row.get(1), row.get(2)));
    }
    assert_eq!(stored, returned, "RETURNING disagrees with what is stored");

    // A proxy started again (a new process would do the same) skips what its predecessor
    // held: no key is handed out twice.
    second.stop().await;
    let third = shardline::Proxy::start(cluster.config.clone()).await?;
    let again = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        third.addr.port()
    ))
    .await?;
    for _ in 0..10 {
        let id: i64 = again
            .query_one(
                "INSERT INTO users (name) VALUES ('after restart') RETURNING id",
                &[],
            )
            .await?
            .get(0);
        assert!(!returned.contains_key(&id), "key {id} handed out again");
    }

    // A multi-row INSERT over several shards returns its keys in VALUES order.
    let rows = setup
        .query(
            "INSERT INTO users (name, seq) VALUES ('m', 1), ('m', 2), ('m', 3), ('m', 4), ('m', 5), ('m', 6) RETURNING id, seq",
            &[],
        )
        .await?;
    let seqs: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let ids: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(cluster.placed_rows("users", "id", false).await?, total + 16);

    // COPY without the key column (text, and CSV with a header): every row gets a key.
    for (sql, header, delimiter) in [
        ("COPY users (name, client, seq) FROM STDIN", "", '\t'),
        (
            "COPY users (name, client, seq) FROM STDIN WITH (FORMAT csv, HEADER true)",
            "name,client,seq\n",
            ',',
        ),
    ] {
        let mut data = header.to_owned();
        for seq in 0..1000 {
            data.push_str(&format!("copied{delimiter}{CLIENTS}{delimiter}{seq}\n"));
        }
        let sink = setup.copy_in(sql).await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await?;
        assert_eq!(sink.finish().await?, 1000, "{sql}");
    }
    // DEFAULT for the key, and DEFAULT VALUES (Django's insert of a model with no fields).
    for sql in [
        "INSERT INTO users (id, name) VALUES (DEFAULT, $1) RETURNING id",
        "INSERT INTO users DEFAULT VALUES RETURNING id",
    ] {
        let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
            if sql.contains("$1") { &[&"d"] } else { &[] };
        let id: i64 = setup.query_one(sql, params).await?.get(0);
        assert!(
            !returned.contains_key(&id),
            "{sql}: key {id} handed out again"
        );
    }
    let copied = total + 16 + 2000 + 2;
    assert_eq!(cluster.placed_rows("users", "id", false).await?, copied);
    let ids: BTreeSet<i64> = setup
        .query("SELECT id FROM users", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), copied, "a key was given to two rows");

    // int4 serial, GENERATED ALWAYS identity, and uuid keys.
    for _ in 0..20 {
        setup
            .execute("INSERT INTO pgbench_accounts (filler) VALUES ('x')", &[])
            .await?;
        setup
            .execute("INSERT INTO orders (note) VALUES ($1)", &[&"n"])
            .await?;
    }
    assert_eq!(
        cluster
            .placed_rows("pgbench_accounts", "aid", false)
            .await?,
        20
    );
    // The same table made again with a GENERATED ALWAYS key: the proxy reads the new default.
    setup
        .batch_execute(
            "DROP TABLE pgbench_accounts;
             CREATE TABLE pgbench_accounts (aid int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, filler text)",
        )
        .await?;
    setup
        .execute("INSERT INTO pgbench_accounts (filler) VALUES ('y')", &[])
        .await?;
    assert_eq!(
        cluster
            .placed_rows("pgbench_accounts", "aid", false)
            .await?,
        1
    );
    assert_eq!(cluster.placed_rows("orders", "user_id", false).await?, 20);
    let rule = cluster.rule("devices")?;
    let mut devices = BTreeSet::new();
    for _ in 0..20 {
        let id: uuid_text::Uuid = setup
            .query_one(
                "INSERT INTO devices (name) VALUES ('d') RETURNING id::text",
                &[],
            )
            .await?
            .get(0);
        let key = KeyValue::Uuid(id.bytes()?);
        let shard = rule.shard_for(&key)?;
        let on_shard: i64 = cluster
            .shard(shard)
            .await?
            .query_one("SELECT count(*) FROM devices WHERE id::text = $1", &[&id.0])
            .await?
            .get(0);
        assert_eq!(on_shard, 1, "device {} is not on shard {shard}", id.0);
        devices.insert(id.0);
    }
    assert_eq!(devices.len(), 20);

    // EXPLAIN (ROUTE) says the key will be generated.
    let explained = setup
        .simple_query("EXPLAIN (ROUTE) INSERT INTO users (name) VALUES ('x')")
        .await?;
    let explanation = explained.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(1).map(str::to_owned),
        _ => None,
    });
    assert!(
        explanation
            .as_deref()
            .is_some_and(|e| e.contains("generates each row's key")),
        "{explanation:?}"
    );

    // `shardline check` and SHOW CONFIG list the tables whose keys are generated.
    let survey = cluster.proxy.ctx.keys.survey(&cluster.config).await;
    let listed = shardline::keys::generated_list(&survey.map_err(|e| anyhow::anyhow!("{e:?}"))?);
    for table in [
        "users.id (sequence)",
        "pgbench_accounts.aid (identity, always)",
        "orders.user_id (identity, always)",
        "devices.id (uuid v7)",
    ] {
        assert!(listed.contains(table), "{table} missing from {listed}");
    }
    assert!(!listed.contains("events"), "{listed}");

    // A key without a default must still be sent.
    let refused = setup
        .execute("INSERT INTO events (what) VALUES ('x')", &[])
        .await
        .map_err(anyhow::Error::from);
    let error = refused.err().ok_or_else(|| anyhow::anyhow!("accepted"))?;
    assert_eq!(sqlstate(&error), Some(SqlState::FEATURE_NOT_SUPPORTED));
    third.stop().await;
    Ok(())
}

/// A UUID read back as text.
mod uuid_text {
    use tokio_postgres::types::{FromSql, Type};

    pub struct Uuid(pub String);

    impl Uuid {
        /// The 16 bytes of the UUID.
        pub fn bytes(&self) -> anyhow::Result<[u8; 16]> {
            let hex: String = self.0.chars().filter(|c| *c != '-').collect();
            let mut bytes = [0u8; 16];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)?;
            }
            Ok(bytes)
        }
    }

    impl<'a> FromSql<'a> for Uuid {
        fn from_sql(
            ty: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            String::from_sql(ty, raw).map(Uuid)
        }

        fn accepts(ty: &Type) -> bool {
            <String as FromSql>::accepts(ty)
        }
    }
}
