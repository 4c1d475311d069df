//! Two-phase commits a crash left in doubt, against real PostgreSQL shards: a multi-shard
//! commit records its decision on the deciding shard, a prepared part is finished from that
//! record (never from the decider's transaction id alone, which a crashed decider can hand out
//! again), and decision rows are deleted only once no prepared part can need them. Each test
//! builds the in-doubt state directly on the shards, as a proxy killed mid-commit leaves it.

use std::collections::BTreeSet;
use std::time::Duration;

use shardline_tests::ops::{console, eventually, ops_yaml, show, ConfigFile};
use shardline_tests::txn::{keys_on_distinct_shards, users_table};
use shardline_tests::{connect, TestCluster};
use tokio_postgres::Client;

/// How long the resolvers (a pass every 10 s, taking over after 5 s) may take.
const RESOLVER_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `statements` in one transaction through `client`, and commits it.
async fn commit_across(client: &Client, statements: &[String]) -> anyhow::Result<()> {
    client.simple_query("BEGIN").await?;
    for sql in statements {
        client.simple_query(sql).await?;
    }
    client.simple_query("COMMIT").await?;
    Ok(())
}

/// Statements that write user `keys`, one each.
fn each(keys: &[i64], sql: impl Fn(i64) -> String) -> Vec<String> {
    keys.iter().map(|key| sql(*key)).collect()
}

/// A decider's transaction as the participants' names see it.
struct Decided {
    xid: String,
    /// `<digest>:<server>:<database oid>` of its decision row (the digest of its nonce when
    /// it recorded none).
    recorded_in: String,
}

/// In `decider`'s own transaction: records a decision under `nonce` for participant s1 (or
/// records none, with `record` false), then ends the transaction with `end` (`None`: leaves it
/// running).
async fn decider_transaction(
    decider: &Client,
    nonce: &str,
    record: bool,
    end: Option<&str>,
) -> anyhow::Result<Decided> {
    decider.batch_execute("BEGIN").await?;
    if record {
        decider
            .execute(
                "INSERT INTO shardline.decisions (nonce, participants) VALUES ($1, ARRAY['s1'])",
                &[&nonce],
            )
            .await?;
    }
    let row = decider
        .query_one(
            "SELECT pg_current_xact_id()::text, left(encode(sha256($1::text::bytea), 'hex'), 22) \
             || ':' || (SELECT lpad(to_hex(system_identifier & 4294967295), 8, '0') \
                        FROM pg_control_system()) \
             || ':' || (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&nonce],
        )
        .await?;
    if let Some(end) = end {
        decider.batch_execute(end).await?;
    }
    Ok(Decided {
        xid: row.get(0),
        recorded_in: row.get(1),
    })
}

/// Prepares, on `participant`, a part that inserts user `id` under `gid`.
async fn prepare_part(participant: &Client, id: i64, gid: &str) -> anyhow::Result<()> {
    participant
        .batch_execute(&format!(
            "BEGIN; INSERT INTO users (id) VALUES ({id}); PREPARE TRANSACTION '{gid}'"
        ))
        .await?;
    Ok(())
}

/// Waits until `shard` holds no prepared transaction.
async fn until_none_prepared(shard: &Client) -> anyhow::Result<()> {
    until_prepared(shard, &[]).await
}

/// Waits until the prepared transactions on `shard` are exactly `left`.
async fn until_prepared(shard: &Client, left: &[&str]) -> anyhow::Result<()> {
    eventually(
        "the prepared transactions left",
        RESOLVER_DEADLINE,
        || async {
            let prepared: Vec<String> = shard
                .query("SELECT gid FROM pg_prepared_xacts ORDER BY gid", &[])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            Ok((prepared == left).then_some(()))
        },
    )
    .await
}

async fn ids(shard: &Client) -> anyhow::Result<Vec<i64>> {
    Ok(shard
        .query("SELECT id FROM users ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The nonces of the decision rows on `shard`.
async fn decision_rows(shard: &Client) -> anyhow::Result<BTreeSet<String>> {
    Ok(shard
        .query("SELECT nonce FROM shardline.decisions", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// A commit across shards records its decision on the deciding shard, and every prepared part
/// is finished from that record: committed when the decider's transaction recorded it, rolled
/// back when that transaction is over without it — also when the transaction id committed, as
/// after a decider crashed and handed the id to a later transaction (which recorded a decision
/// of its own), and when a row has the nonce but another transaction's id — and left alone
/// while it runs. Names of the older format follow the status alone.
#[tokio::test(flavor = "multi_thread")]
async fn in_doubt_parts_follow_the_recorded_decision_not_the_transaction_id() -> anyhow::Result<()>
{
    let cluster = TestCluster::start("in-doubt-record", 2).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    let insert = |key| format!("INSERT INTO users (id, name) VALUES ({key}, 'proxy')");
    commit_across(&client, &each(&keys, insert)).await?;
    let decider = cluster.shard(0).await?;
    let participant = cluster.shard(1).await?;
    assert_eq!(
        decision_rows(&decider).await?.len(),
        1,
        "the commit recorded its decision on the first shard"
    );
    client.simple_query("DELETE FROM users").await?;
    // The admin console of a second proxy, started before anything is prepared so that it
    // lists each part well before any resolver may take it over.
    let file = ConfigFile::new("in-doubt-record", &ops_yaml(&cluster, ""))?;
    let proxy = file.serve(false).await?;
    let admin = console(proxy.addr.port()).await?;

    let recorded = decider_transaction(&decider, "aaaa", true, Some("COMMIT")).await?;
    // A later transaction handed the same id records a decision of its own.
    let reused = decider_transaction(&decider, "ffff", true, Some("COMMIT")).await?;
    let aborted = decider_transaction(&decider, "cccc", true, Some("ROLLBACK")).await?;
    let other_id = decider_transaction(&decider, "gggg", false, Some("COMMIT")).await?;
    let running_on = cluster.shard(0).await?;
    let running = decider_transaction(&running_on, "dddd", true, None).await?;
    let legacy = decider_transaction(&decider, "", false, Some("COMMIT")).await?;
    let bbbb = decider_transaction(&decider, "bbbb", false, Some("ROLLBACK")).await?;
    let name =
        |kind: &str, xid: &str, recorded_in: &str| format!("{kind}:{xid}:{recorded_in}:s0:s1");
    let foreign = |xid: &str, recorded_in: &str| {
        let (digest, rest) = recorded_in.split_once(':').unwrap_or_default();
        let oid = rest.rsplit(':').next().unwrap_or_default();
        format!("sl_tx:{xid}:{digest}:ffffffff:{oid}:s0:s1")
    };
    let parts = [
        (
            21,
            name("sl_tx", &recorded.xid, &recorded.recorded_in),
            "commit",
        ),
        (
            22,
            name("sl_tx", &reused.xid, &bbbb.recorded_in),
            "roll back",
        ),
        (
            23,
            name("sl_dw", &aborted.xid, &aborted.recorded_in),
            "roll back",
        ),
        (
            24,
            name("sl_tx", &running.xid, &running.recorded_in),
            "wait for the decider",
        ),
        (25, format!("sl_tx:{}:s0:s1", legacy.xid), "commit"),
        // Recorded in another server's database that has the decider's oid here.
        (
            27,
            foreign(&other_id.xid, &bbbb.recorded_in),
            "wait for the decider",
        ),
        (
            26,
            name("sl_tx", &other_id.xid, &recorded.recorded_in),
            "roll back",
        ),
    ];
    for (id, gid, _) in &parts {
        prepare_part(&participant, *id, gid).await?;
    }

    let mut listed: Vec<(String, String)> = show(&admin, "SHOW INDOUBT")
        .await?
        .records()
        .iter()
        .map(|r| (r["gid"].clone(), r["fate"].clone()))
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = parts
        .iter()
        .map(|(_, gid, fate)| (gid.clone(), (*fate).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // The running decider commits; the resolvers then finish everything they can tell, and
    // leave the part whose decision is on a server they do not reach.
    running_on.batch_execute("COMMIT").await?;
    let elsewhere = parts
        .iter()
        .find(|(id, _, _)| *id == 27)
        .map(|(_, gid, _)| gid.as_str())
        .unwrap_or_default();
    until_prepared(&participant, &[elsewhere]).await?;
    participant
        .batch_execute(&format!("ROLLBACK PREPARED '{elsewhere}'"))
        .await?;
    assert_eq!(ids(&participant).await?, [21, 24, 25]);
    Ok(())
}

/// The resolver deletes decision rows older than a minute once no prepared part names them
/// and every participant's shard was looked at; it never deletes one a prepared part still
/// names (that part would then be rolled back although its decider committed), one whose
/// participant is a shard it does not know, or a fresh one.
#[tokio::test(flavor = "multi_thread")]
async fn decision_rows_outlive_every_part_that_can_need_them() -> anyhow::Result<()> {
    let cluster = TestCluster::start("in-doubt-forget", 2).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    let insert = |key| format!("INSERT INTO users (id, name) VALUES ({key}, 'proxy')");
    commit_across(&client, &each(&keys, insert)).await?;
    for round in 0..2 {
        let update = |key| format!("UPDATE users SET name = 'round {round}' WHERE id = {key}");
        commit_across(&client, &each(&keys, update)).await?;
    }
    let decider = cluster.shard(0).await?;
    let participant = cluster.shard(1).await?;
    assert_eq!(decision_rows(&decider).await?.len(), 3);

    // A part whose decider still runs, named after a row that is already stale: the resolver
    // cannot settle the part yet, so the row must stay while passes delete the others.
    let running_on = cluster.shard(0).await?;
    let running = decider_transaction(&running_on, "eeee", false, None).await?;
    decider
        .execute(
            "INSERT INTO shardline.decisions (nonce, xid, participants) \
             VALUES ('eeee', $1::text::xid8, ARRAY['s1'])",
            &[&running.xid],
        )
        .await?;
    let gid = format!("sl_tx:{}:{}:s0:s1", running.xid, running.recorded_in);
    prepare_part(&participant, 31, &gid).await?;
    decider
        .batch_execute(
            "INSERT INTO shardline.decisions (nonce, participants) VALUES ('far', ARRAY['s9']); \
             UPDATE shardline.decisions SET decided_at = decided_at - interval '2 minutes'; \
             INSERT INTO shardline.decisions (nonce, participants) VALUES ('fresh', ARRAY['s1'])",
        )
        .await?;
    let kept = |nonces: &[&str]| {
        nonces
            .iter()
            .map(|n| n.to_string())
            .collect::<BTreeSet<_>>()
    };
    eventually("unneeded rows deleted", RESOLVER_DEADLINE, || async {
        let left = decision_rows(&decider).await?;
        Ok((left.len() <= 3).then_some(left))
    })
    .await
    .and_then(|left| {
        anyhow::ensure!(left == kept(&["eeee", "far", "fresh"]), "{left:?}");
        Ok(())
    })?;

    // Once the decider commits, the part is committed from the row, and the row goes.
    running_on.batch_execute("COMMIT").await?;
    until_none_prepared(&participant).await?;
    assert!(ids(&participant).await?.contains(&31));
    eventually("the named row deleted", RESOLVER_DEADLINE, || async {
        let left = decision_rows(&decider).await?;
        Ok((left == kept(&["far", "fresh"])).then_some(()))
    })
    .await
}

/// With shards that name no database, each client reaches the database it asks for: a
/// decision is recorded in the decider's, and the resolver reads it there, not in its own.
#[tokio::test(flavor = "multi_thread")]
async fn decisions_are_read_in_the_database_of_their_decider() -> anyhow::Result<()> {
    let cluster = TestCluster::start("in-doubt-databases", 2).await?;
    let mut sales = Vec::new();
    for server in cluster.pg.servers() {
        connect(&server.superuser_conninfo())
            .await?
            .batch_execute("CREATE DATABASE sales OWNER app")
            .await?;
        sales.push(connect(&server.app_conninfo().replace("dbname=app", "dbname=sales")).await?);
    }
    let yaml = cluster.yaml.replace(", database: app", "");
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let client = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=sales",
        proxy.addr.port()
    ))
    .await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    let insert = |key| format!("INSERT INTO users (id, name) VALUES ({key}, 'proxy')");
    commit_across(&client, &each(&keys, insert)).await?;
    let (decider, participant) = (&sales[0], &sales[1]);
    assert_eq!(decision_rows(decider).await?.len(), 1, "recorded in sales");

    // What a proxy killed after the decision leaves in sales.
    let decided = decider_transaction(decider, "aaaa", true, Some("COMMIT")).await?;
    let gid = format!("sl_tx:{}:{}:s0:s1", decided.xid, decided.recorded_in);
    prepare_part(participant, 41, &gid).await?;
    until_none_prepared(participant).await?;
    assert!(
        ids(participant).await?.contains(&41),
        "committed from its row in sales"
    );
    proxy.stop().await;
    Ok(())
}

/// A part prepared by another user of shards.yaml is finished as that user: PostgreSQL lets
/// only the user who prepared a transaction (or a superuser) finish it.
#[tokio::test(flavor = "multi_thread")]
async fn parts_are_finished_as_the_user_who_prepared_them() -> anyhow::Result<()> {
    let cluster = TestCluster::start("in-doubt-owner", 2).await?;
    let client = cluster.client().await?;
    users_table(&client).await?;
    let keys = keys_on_distinct_shards(&cluster, 2)?;
    let insert = |key| format!("INSERT INTO users (id, name) VALUES ({key}, 'proxy')");
    commit_across(&client, &each(&keys, insert)).await?;
    for server in cluster.pg.servers() {
        connect(&server.superuser_conninfo_db("app"))
            .await?
            .batch_execute("CREATE ROLE clerk LOGIN PASSWORD 'clerk'; GRANT ALL ON users TO clerk")
            .await?;
    }
    let yaml = cluster.yaml.replace(
        "shards:\n",
        "  - {name: clerk, password: clerk, server_password: clerk}\nshards:\n",
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;

    let decider = cluster.shard(0).await?;
    let decided = decider_transaction(&decider, "aaaa", true, Some("COMMIT")).await?;
    let clerk_conninfo = cluster.pg.servers()[1]
        .app_conninfo()
        .replace("user=app password=app", "user=clerk password=clerk");
    let as_clerk = connect(&clerk_conninfo).await?;
    let gid = format!("sl_tx:{}:{}:s0:s1", decided.xid, decided.recorded_in);
    prepare_part(&as_clerk, 51, &gid).await?;

    let proxy = shardline::Proxy::start(config).await?;
    let participant = cluster.shard(1).await?;
    until_none_prepared(&participant).await?;
    assert!(ids(&participant).await?.contains(&51), "committed as clerk");
    proxy.stop().await;
    Ok(())
}
