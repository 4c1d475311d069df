//! Extended-protocol pipelines (many statements before one `Sync`) through the proxy, compared
//! message by message with the same bytes sent to a plain PostgreSQL database (the oracle):
//! batches whose statements need different shards commit on every shard or on none, an error
//! ends the pipeline with exactly one `ReadyForQuery`, and named statements that run on every
//! shard can be prepared by many connections and executed again.

use shardline_tests::oracle::{error_code, proxy_and_oracle, transcript, Answer, Sides, Until};
use shardline_tests::wire::{
    bind, close_statement, cstr, describe_portal, execute, flush, login, login_socket, message,
    parse, read_message, run_once, sync, unsynced,
};
use shardline_tests::{connect, TestCluster};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

const INSERT: &str = "INSERT INTO users (id, name) VALUES ($1, $2)";

/// `Bind` + `Execute` of the unnamed INSERT for each key.
fn inserts(keys: &[i64], name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        out.extend(bind("", &[&key.to_string(), name]));
        out.extend(execute(0));
    }
    out
}

/// A 4-shard cluster with an empty sharded `users` table, a trusting proxy for the byte-level
/// client, and the oracle: database `oracle` on shard 0's server with the same table.
async fn users_cluster(
    label: &str,
) -> anyhow::Result<(TestCluster, shardline::Proxy, Sides<TcpStream, UnixStream>)> {
    let cluster = TestCluster::start(label, 4).await?;
    let ddl = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)";
    cluster.client().await?.batch_execute(ddl).await?;
    let (wire_proxy, mut sides) = proxy_and_oracle(&cluster).await?;
    transcript(&mut sides.oracle, &run_once(ddl), Until::Syncs(1)).await?;
    Ok((cluster, wire_proxy, sides))
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_answer_like_postgres_and_commit_on_every_shard_or_none() -> anyhow::Result<()> {
    let (cluster, _wire_proxy, mut sides) = users_cluster("pipelines").await?;

    // Twelve keys over all four shards, one Sync: every row commits.
    let keys: Vec<i64> = (1..=12).map(|i| i * 7919).collect();
    let shards: std::collections::BTreeSet<usize> = keys
        .iter()
        .map(|k| cluster.shard_of("users", *k))
        .collect::<Result<_, _>>()?;
    assert_eq!(shards.len(), 4, "the batch must need every shard");
    let mut batch = parse("", INSERT);
    batch.extend(inserts(&keys, "batch"));
    batch.extend(sync());
    let answers = sides.same("a batch over four shards", &batch, 1).await?;
    assert_eq!(answers.last(), Some(&Answer::Ready('I')));
    assert_eq!(cluster.placed_rows("users", "id", false).await?, keys.len());

    // A duplicate key in the middle of a batch: the error, nothing after it, one
    // ReadyForQuery — and no row of the batch on any shard.
    let fresh: Vec<i64> = (1..=6).map(|i| 1_000_000 + i * 104_729).collect();
    let mut failing = parse("", INSERT);
    failing.extend(inserts(&fresh[..3], "fresh"));
    failing.extend(inserts(&keys[..1], "duplicate"));
    failing.extend(inserts(&fresh[3..], "fresh"));
    failing.extend(sync());
    let answers = sides
        .same("a batch with a duplicate key", &failing, 1)
        .await?;
    assert!(
        answers.contains(&Answer::Error("23505".into())),
        "{answers:?}"
    );
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        keys.len(),
        "a failed batch must leave no row on any shard"
    );

    // A pipeline spread over Flushes: answers arrive at each Flush, the Sync commits all.
    let spread: Vec<i64> = (1..=4).map(|i| 2_000_000 + i * 15_485_863).collect();
    let mut first = parse("", INSERT);
    first.extend(inserts(&spread[..2], "flushed"));
    first.extend(flush());
    sides
        .same_flushed("answers up to the first Flush", &first, 5)
        .await?;
    let mut rest = inserts(&spread[2..], "flushed");
    rest.extend(sync());
    sides
        .same("the rest of a flushed pipeline", &rest, 1)
        .await?;
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        keys.len() + spread.len()
    );

    // A statement the proxy answers itself after a Flush: the Sync after it still ends (and
    // commits) what the pipeline ran before on one shard, and on several.
    let mut placed = keys.len() + spread.len();
    for batch in [
        &[6_000_001_i64][..],
        &[6_000_002, 6_000_003, 6_000_004, 6_000_005][..],
    ] {
        let mut first = parse("", INSERT);
        first.extend(inserts(batch, "before a local answer"));
        first.extend(flush());
        sides
            .same_flushed("inserts before a Flush", &first, 1 + 2 * batch.len())
            .await?;
        sides
            .same("DEALLOCATE ALL and Sync", &run_once("DEALLOCATE ALL"), 1)
            .await?;
        placed += batch.len();
        assert_eq!(cluster.placed_rows("users", "id", false).await?, placed);
    }

    // Inside a transaction block no shard has joined yet, a pipeline that starts with a
    // SAVEPOINT and spreads: the savepoint is answered and reaches the shards that join.
    sides.same("BEGIN", &run_once("BEGIN"), 1).await?;
    let mut nested = parse("", "SAVEPOINT nested");
    nested.extend(bind("", &[]));
    nested.extend(execute(0));
    nested.extend(parse("", INSERT));
    nested.extend(inserts(
        &[7_000_001, 7_000_002, 7_000_003, 7_000_004],
        "nested",
    ));
    nested.extend(sync());
    sides
        .same("a savepoint first in a spread pipeline", &nested, 1)
        .await?;
    for sql in ["ROLLBACK TO SAVEPOINT nested", "COMMIT"] {
        sides.same(sql, &run_once(sql), 1).await?;
    }
    assert_eq!(cluster.placed_rows("users", "id", false).await?, placed);

    // An error after a Flush rolls back what ran before it on other shards.
    let doomed: Vec<i64> = (1..=3).map(|i| 3_000_000 + i * 32_452_843).collect();
    let mut first = parse("", INSERT);
    first.extend(inserts(&doomed, "doomed"));
    first.extend(flush());
    sides
        .same_flushed("answers up to the Flush", &first, 7)
        .await?;
    let mut rest = inserts(&keys[1..2], "duplicate");
    rest.extend(inserts(&[4_000_000], "skipped"));
    rest.extend(sync());
    sides.same("an error after a Flush", &rest, 1).await?;
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        placed,
        "rows of a pipeline that failed after a Flush must be rolled back on every shard"
    );

    // pgjdbc's rewritten batch: one multi-row INSERT executed with a row limit of 1.
    let rewritten = "INSERT INTO users (id, name) VALUES ($1, $2), ($3, $4), ($5, $6)";
    let ids = ["5000011", "5000012", "5000013"];
    let mut jdbc = parse("", rewritten);
    jdbc.extend(bind("", &[ids[0], "jdbc", ids[1], "jdbc", ids[2], "jdbc"]));
    jdbc.extend(describe_portal());
    jdbc.extend(execute(1));
    jdbc.extend(sync());
    sides
        .same("a multi-row INSERT with a row limit", &jdbc, 1)
        .await?;

    // The same rows on both sides.
    let every_row = run_once("SELECT id, name FROM users ORDER BY id");
    sides.same("every row", &every_row, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_before_sync_and_statements_on_every_shard() -> anyhow::Result<()> {
    let (cluster, wire_proxy, mut sides) = users_cluster("pipeline-errors").await?;
    let port = wire_proxy.addr.port();
    let server = &cluster.pg.servers()[0];
    let mut rows = parse("", INSERT);
    rows.extend(inserts(&[11, 22, 33, 44, 55, 66], "same"));
    rows.extend(sync());
    sides.same("rows", &rows, 1).await?;

    // A named statement that runs on every shard (no key), prepared by one connection and
    // then by a second one, as a connection pool does; then executed again without Parse.
    let lookup = "SELECT id FROM users WHERE name = $1 ORDER BY id";
    let unordered = "SELECT count(*) FROM users WHERE name = $1";
    for round in 0..2 {
        let mut named = parse("s_every", unordered);
        named.extend(bind("s_every", &["same"]));
        named.extend(describe_portal());
        named.extend(execute(0));
        named.extend(sync());
        sides
            .same(&format!("named statement, connection {round}"), &named, 1)
            .await?;
        let mut again = bind("s_every", &["same"]);
        again.extend(execute(0));
        again.extend(sync());
        sides
            .same(
                &format!("named statement executed again, connection {round}"),
                &again,
                1,
            )
            .await?;
        let mut merged = parse("s_merged", lookup);
        merged.extend(bind("s_merged", &["same"]));
        merged.extend(describe_portal());
        merged.extend(execute(0));
        merged.extend(sync());
        sides
            .same(
                &format!("named merged statement, connection {round}"),
                &merged,
                1,
            )
            .await?;
        sides = Sides {
            proxy: login(port).await?,
            oracle: login_socket(server, "app", "oracle").await?,
        };
    }

    // The proxy refuses a key it cannot read before the Sync: the `Parse` before it answered
    // (as PostgreSQL answers it before failing the `Bind`), one error, the rest ignored up to
    // the Sync, one ReadyForQuery, and the connection in step afterwards.
    let mut refused = parse("", INSERT);
    refused.extend(bind("", &["not a number", "bad"]));
    refused.extend(execute(0));
    refused.extend(inserts(&[77], "skipped"));
    refused.extend(flush());
    sides.proxy.write_all(&refused).await?;
    let (tag, _) = read_message(&mut sides.proxy).await?;
    assert_eq!(tag, b'1', "the Parse before the refused Bind is answered");
    let (tag, body) = read_message(&mut sides.proxy).await?;
    assert_eq!((tag, error_code(&body).as_str()), (b'E', "22P02"));
    let count = run_once("SELECT count(*) FROM users");
    let mut after = sync();
    after.extend(count.clone());
    let answers = transcript(&mut sides.proxy, &after, Until::Syncs(2)).await?;
    let want = transcript(&mut sides.oracle, &count, Until::Syncs(1)).await?;
    assert_eq!(
        answers[0],
        Answer::Ready('I'),
        "one ReadyForQuery for the Sync"
    );
    assert_eq!(
        answers[1..],
        want[..],
        "the next statement answered in step"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_deallocate_of_a_driver_statement_works_as_in_postgres() -> anyhow::Result<()> {
    let (_cluster, _wire_proxy, mut sides) = users_cluster("deallocate").await?;
    let query = |sql: &str| message(b'Q', &cstr(sql));
    let mut define = parse("s1", "SELECT 1");
    define.extend(sync());
    let mut use_it = bind("s1", &[]);
    use_it.extend(execute(0));
    use_it.extend(sync());

    // Defined by the protocol, dropped by SQL (as psycopg's statement cache does), by both
    // protocols; then gone, and free to be defined again.
    for deallocate in [query("DEALLOCATE s1"), run_once("DEALLOCATE PREPARE s1")] {
        sides.same("Parse s1", &define, 1).await?;
        sides.same("Bind s1", &use_it, 1).await?;
        sides.same("DEALLOCATE s1", &deallocate, 1).await?;
        let answers = sides.same("Bind s1 after DEALLOCATE", &use_it, 1).await?;
        assert!(
            answers.contains(&Answer::Error("26000".into())),
            "{answers:?}"
        );
    }
    // DEALLOCATE ALL after another statement before one Sync runs on the backend: the
    // proxy's statements there are gone too, and a statement parsed again works.
    sides.same("Parse s1", &define, 1).await?;
    sides.same("Bind s1", &use_it, 1).await?;
    let mut both = parse("", "SELECT 1");
    both.extend(bind("", &[]));
    both.extend(execute(0));
    both.extend(parse("", "DEALLOCATE ALL"));
    both.extend(bind("", &[]));
    both.extend(execute(0));
    both.extend(sync());
    sides.same("SELECT 1 and DEALLOCATE ALL", &both, 1).await?;
    sides.same("Parse s1 again", &define, 1).await?;
    sides.same("Bind s1 again", &use_it, 1).await?;
    // An unknown name fails, and inside a transaction block fails the block.
    sides
        .same("DEALLOCATE nope", &query("DEALLOCATE nope"), 1)
        .await?;
    for sql in ["BEGIN", "DEALLOCATE nope", "SELECT 1", "ROLLBACK"] {
        sides.same(sql, &query(sql), 1).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_parsed_after_a_schema_change_sees_the_new_schema() -> anyhow::Result<()> {
    let (_cluster, _wire_proxy, mut sides) = users_cluster("schema-change").await?;
    let query = |sql: &str| message(b'Q', &cstr(sql));
    let create = "CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE TABLE moods (m mood[])";
    // A named statement, as psycopg prepares it; psycopg deallocates it after a DROP.
    let mut insert = parse("ins", "INSERT INTO moods VALUES ($1::mood[])");
    insert.extend(bind("ins", &["{ok}"]));
    insert.extend(execute(0));
    insert.extend(sync());
    sides.same("create", &query(create), 1).await?;
    sides.same("insert", &insert, 1).await?;
    // The type is dropped and made again under a new OID: a statement prepared before on a
    // backend still names the old one; the same text parsed now must not reuse it.
    let again = format!("DROP TABLE moods; DROP TYPE mood; {create}");
    sides.same("re-create", &query(&again), 1).await?;
    sides
        .same("deallocate", &query("DEALLOCATE ins"), 1)
        .await?;
    let answers = sides.same("insert after the change", &insert, 1).await?;
    assert!(
        answers.iter().all(|a| !matches!(a, Answer::Error(_))),
        "{answers:?}"
    );
    // psycopg's test_change_type_execute: the type and table made inside a transaction (on
    // every shard) that rolls back, three times; each round's statement names that round's type.
    sides
        .same("drop", &query("DROP TABLE moods; DROP TYPE mood"), 1)
        .await?;
    for round in 0..3 {
        sides
            .same("deallocate", &query("DEALLOCATE ins"), 1)
            .await?;
        for sql in [
            "BEGIN",
            "CREATE TYPE mood AS ENUM ('ok', 'sad')",
            "CREATE TABLE moods (m mood[])",
        ] {
            sides
                .same(&format!("round {round}: {sql}"), &query(sql), 1)
                .await?;
        }
        let answers = sides
            .same(&format!("round {round}: insert"), &insert, 1)
            .await?;
        assert!(
            answers.iter().all(|a| !matches!(a, Answer::Error(_))),
            "round {round}: {answers:?}"
        );
        sides
            .same(&format!("round {round}: rollback"), &query("ROLLBACK"), 1)
            .await?;
        sides
            .same("deallocate", &query("DEALLOCATE ins"), 1)
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_in_a_pipelined_transaction_then_rollback_as_psycopg_sends_it(
) -> anyhow::Result<()> {
    let (cluster, _wire_proxy, mut sides) = users_cluster("pipeline-tx-error").await?;
    let statement = |sql: &str| {
        let mut out = parse("", sql);
        out.extend(bind("", &[]));
        out.extend(execute(0));
        out
    };
    // psycopg's pipeline, not autocommit, as its trace shows it: BEGIN synced alone; the
    // failing query and COMMIT before one Sync; then a Sync alone; then ROLLBACK; then a new
    // transaction.
    let synced = |sqls: &[&str]| {
        let mut out: Vec<u8> = sqls.iter().flat_map(|sql| statement(sql)).collect();
        out.extend(sync());
        out
    };
    sides.same("BEGIN", &synced(&["BEGIN"]), 1).await?;
    let failing = synced(&["SELECT 1 FROM nosuchtable", "COMMIT"]);
    sides
        .same("a failing query and COMMIT", &failing, 1)
        .await?;
    sides.same("a Sync alone", &sync(), 1).await?;
    sides.same("ROLLBACK", &synced(&["ROLLBACK"]), 1).await?;
    sides.same("BEGIN again", &synced(&["BEGIN"]), 1).await?;
    sides.same("a query", &synced(&["SELECT 1"]), 1).await?;
    sides.same("COMMIT", &synced(&["COMMIT"]), 1).await?;

    // A nested `conn.transaction()` whose body fails: ROLLBACK TO and RELEASE before one Sync
    // end the failure, and the outer transaction goes on.
    sides.same("BEGIN", &synced(&["BEGIN"]), 1).await?;
    sides
        .same("SAVEPOINT", &synced(&["SAVEPOINT \"_pg3_2\""]), 1)
        .await?;
    let failing = synced(&["SELECT 1 FROM nosuchtable"]);
    sides.same("a failing query", &failing, 1).await?;
    let back = synced(&["ROLLBACK TO \"_pg3_2\"", "RELEASE \"_pg3_2\""]);
    sides.same("ROLLBACK TO and RELEASE", &back, 1).await?;
    sides
        .same("a query after", &synced(&["SELECT 1"]), 1)
        .await?;
    sides.same("COMMIT", &synced(&["COMMIT"]), 1).await?;

    // A transaction that failed on one shard while another holds a healthy backend: a Sync
    // alone still reports the failed transaction (E), as one PostgreSQL would.
    let home = cluster.shard_of("users", 1)?;
    let other = (2..1000)
        .find(|k| cluster.shard_of("users", *k).ok() != Some(home))
        .ok_or_else(|| anyhow::anyhow!("every key on one shard"))?;
    let insert = |key: i64| format!("INSERT INTO users (id, name) VALUES ({key}, 'x')");
    sides.same("a row", &synced(&[&insert(other)]), 1).await?;
    sides.same("BEGIN", &synced(&["BEGIN"]), 1).await?;
    sides.same("a write", &synced(&[&insert(1)]), 1).await?;
    sides
        .same("a duplicate", &synced(&[&insert(other)]), 1)
        .await?;
    let answers = sides.same("a Sync alone", &sync(), 1).await?;
    assert_eq!(answers.last(), Some(&Answer::Ready('E')));
    sides.same("ROLLBACK", &synced(&["ROLLBACK"]), 1).await?;

    // `with conn.transaction()` around nothing but a pipeline sync: BEGIN, Syncs, a Flush
    // alone, COMMIT: the transaction ends (a Flush alone starts no pipeline on a backend).
    sides.same("BEGIN", &synced(&["BEGIN"]), 1).await?;
    sides.same("a Sync alone", &sync(), 1).await?;
    let mut sync_flush = sync();
    sync_flush.extend(flush());
    sides.same("Sync and Flush", &sync_flush, 1).await?;
    let mut commit = synced(&["COMMIT"]);
    commit.extend(flush());
    let answers = sides.same("COMMIT", &commit, 1).await?;
    assert_eq!(answers.last(), Some(&Answer::Ready('I')));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_for_several_shards_share_a_pipeline_as_on_one_server() -> anyhow::Result<()> {
    let (cluster, _wire_proxy, mut sides) = users_cluster("pipeline-every-shard").await?;
    let exists = "SELECT count(*) FROM pg_tables WHERE tablename = 'voila'";
    let tables_on_shards = || async {
        let mut found = 0;
        for server in cluster.pg.servers() {
            let direct = connect(&server.app_conninfo()).await?;
            found += direct.query_one(exists, &[]).await?.get::<_, i64>(0);
        }
        anyhow::Ok(found)
    };

    // psycopg's test_pipeline_errors_processed_at_exit: the first error is PostgreSQL's
    // (not a refusal of the DDL beside it), and the DDL after it never runs.
    for first in ["SELECT * FROM nosuchtable", "SELECT error"] {
        let mut failing = unsynced(first);
        failing.extend(unsynced("CREATE TABLE voila ()"));
        failing.extend(sync());
        sides
            .same(&format!("{first} before a DDL statement"), &failing, 1)
            .await?;
        assert_eq!(tables_on_shards().await?, 0, "the DDL after an error ran");
    }

    // DDL beside keyed writes for two shards and a keyless UPDATE: one implicit transaction
    // over every shard, committed at the Sync.
    let keys = [8_000_001_i64, 8_000_002, 8_000_003, 8_000_004];
    let shards: std::collections::BTreeSet<usize> = keys
        .iter()
        .map(|k| cluster.shard_of("users", *k))
        .collect::<Result<_, _>>()?;
    assert!(shards.len() > 1, "the writes must need several shards");
    let mut mixed = unsynced("CREATE TABLE voila (id int)");
    mixed.extend(parse("", INSERT));
    mixed.extend(inserts(&keys, "mixed"));
    mixed.extend(parse(
        "",
        "UPDATE users SET name = 'updated' WHERE name = $1",
    ));
    mixed.extend(bind("", &["mixed"]));
    mixed.extend(execute(0));
    mixed.extend(sync());
    sides
        .same("DDL, writes and a keyless UPDATE", &mixed, 1)
        .await?;
    assert_eq!(tables_on_shards().await?, 4, "the DDL reached every shard");
    assert_eq!(cluster.placed_rows("users", "id", false).await?, keys.len());

    // The same inside a transaction block begun in the pipeline, then a failure: everything
    // the pipeline ran is rolled back on every shard.
    let more = [8_100_001_i64, 8_100_002, 8_100_003];
    let mut doomed = unsynced("BEGIN");
    doomed.extend(parse("", INSERT));
    doomed.extend(inserts(&more, "doomed"));
    doomed.extend(parse("", "DELETE FROM users WHERE name = $1"));
    doomed.extend(bind("", &["updated"]));
    doomed.extend(execute(0));
    doomed.extend(sync());
    sides
        .same("BEGIN, writes and a keyless DELETE", &doomed, 1)
        .await?;
    sides
        .same("a failing statement", &run_once("SELECT 1/0"), 1)
        .await?;
    sides.same("COMMIT of it", &run_once("COMMIT"), 1).await?;
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        keys.len(),
        "a failed transaction left rows behind"
    );
    let every_row = run_once("SELECT id, name FROM users ORDER BY id");
    sides.same("every row", &every_row, 1).await?;

    // asyncpg's way: Parse + Describe + Flush, then Bind + Execute + Sync of a statement whose
    // rows the proxy merges from every shard; it runs as it is, not as part of a pipeline.
    for sql in [
        "SELECT id, name FROM users ORDER BY id",
        "SELECT count(*) FROM users",
        "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b') RETURNING id",
    ] {
        let mut prepare = parse("s_asyncpg", sql);
        prepare.extend(message(b'D', &[b"S".to_vec(), cstr("s_asyncpg")].concat()));
        prepare.extend(flush());
        // ParseComplete, ParameterDescription, RowDescription.
        sides
            .same_flushed(&format!("{sql}: prepared with a Flush"), &prepare, 3)
            .await?;
        let params: &[&str] = if sql.contains("$1") {
            &["8200001", "8200002"]
        } else {
            &[]
        };
        let mut run = bind("s_asyncpg", params);
        run.extend(execute(0));
        run.extend(sync());
        run.extend(close_statement("s_asyncpg"));
        run.extend(sync());
        sides
            .same(&format!("{sql}: executed after the Flush"), &run, 2)
            .await?;
    }

    // A COMMIT among statements on several shards cannot end one shard's part alone: refused
    // in its place, and nothing of the transaction commits.
    let mut refused = unsynced("BEGIN");
    refused.extend(parse("", INSERT));
    refused.extend(inserts(&more, "refused"));
    refused.extend(unsynced("COMMIT"));
    refused.extend(sync());
    let answers = transcript(&mut sides.proxy, &refused, Until::Syncs(1)).await?;
    assert!(
        answers.contains(&Answer::Error("0A000".into())),
        "{answers:?}"
    );
    assert_eq!(answers.last(), Some(&Answer::Ready('E')), "{answers:?}");
    let rollback = transcript(&mut sides.proxy, &run_once("ROLLBACK"), Until::Syncs(1)).await?;
    assert_eq!(rollback.last(), Some(&Answer::Ready('I')), "{rollback:?}");
    assert_eq!(
        cluster.placed_rows("users", "id", false).await?,
        keys.len() + 2
    );
    Ok(())
}
