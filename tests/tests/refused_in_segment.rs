//! A message the proxy refuses in the middle of an extended-protocol segment is answered where
//! PostgreSQL would fail it: the messages before it run and are answered first, the refusal
//! follows, the rest is skipped up to `Sync`, and what the segment did is rolled back with its
//! implicit transaction, or fails the client's transaction block. Messages whose work would
//! not wait for the `Sync` (a multi-row `INSERT` over shards) are refused with the rest.

use shardline_tests::oracle::{proxy_and_oracle, transcript, Answer, Until};
use shardline_tests::wire::{bind, execute, flush, parse, run_once, sync, unsynced};
use shardline_tests::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn messages_before_a_refused_one_run_as_on_postgres() -> anyhow::Result<()> {
    let cluster = TestCluster::start("refused_in_segment", 2).await?;
    let (wire_proxy, mut sides) = proxy_and_oracle(&cluster).await?;
    // An unsharded table, whose rows live on the default shard, and a sharded one.
    sides
        .same("a table", &run_once("CREATE TABLE notes (n int)"), 1)
        .await?;
    let users = "CREATE TABLE users (id bigint PRIMARY KEY, name text)";
    sides.same("a sharded table", &run_once(users), 1).await?;
    // A `Bind` of a statement that does not exist is refused by the proxy as it reads the
    // segment (26000), where PostgreSQL fails it when it reaches it.
    let unknown = [bind("nosuch", &[]), execute(0)].concat();
    let count = run_once("SELECT count(*) FROM notes");
    let count_users = run_once("SELECT count(*) FROM users");
    let steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "a read, then an unknown statement",
            [unsynced("SELECT 1"), unknown.clone(), sync()].concat(),
        ),
        (
            "an insert, then an unknown statement",
            [
                unsynced("INSERT INTO notes VALUES (1)"),
                unknown.clone(),
                sync(),
            ]
            .concat(),
        ),
        ("the insert was rolled back", count.clone()),
        (
            "a keyed insert, then an unknown statement",
            [
                unsynced("INSERT INTO users (id, name) VALUES (7, 'seven')"),
                unknown.clone(),
                sync(),
            ]
            .concat(),
        ),
        ("the keyed insert was rolled back", count_users.clone()),
        (
            "keyed inserts on both shards, then an unknown statement",
            [
                unsynced("INSERT INTO users (id, name) VALUES (1, 'one')"),
                unsynced("INSERT INTO users (id, name) VALUES (2, 'two')"),
                unsynced("INSERT INTO users (id, name) VALUES (3, 'three')"),
                unsynced("INSERT INTO users (id, name) VALUES (4, 'four')"),
                unknown.clone(),
                sync(),
            ]
            .concat(),
        ),
        ("none of them was kept", count_users.clone()),
        ("a transaction", run_once("BEGIN")),
        (
            "an insert in it, then an unknown statement",
            [
                unsynced("INSERT INTO notes VALUES (2)"),
                unknown.clone(),
                sync(),
            ]
            .concat(),
        ),
        ("the transaction failed", run_once("SELECT 1")),
        ("rolled back", run_once("ROLLBACK")),
        ("nothing was kept", count.clone()),
        (
            "BEGIN and an insert, then an unknown statement",
            [
                unsynced("BEGIN"),
                unsynced("INSERT INTO notes VALUES (3)"),
                unknown.clone(),
                sync(),
            ]
            .concat(),
        ),
        ("that transaction failed", run_once("SELECT 1")),
        ("and rolled back", run_once("ROLLBACK")),
        ("still nothing kept", count.clone()),
        (
            "a failing statement before an unknown one",
            [unsynced("SELECT nosuchfn()"), unknown.clone(), sync()].concat(),
        ),
        (
            "the same name parsed twice",
            [
                parse("twice", "SELECT 1"),
                parse("twice", "SELECT 2"),
                sync(),
            ]
            .concat(),
        ),
        (
            "the first one stays",
            [bind("twice", &[]), execute(0), sync()].concat(),
        ),
        (
            "and is refused again",
            [parse("twice", "SELECT 3"), sync()].concat(),
        ),
    ];
    for (step, bytes) in &steps {
        sides.same(step, bytes, 1).await?;
    }
    // A multi-row INSERT over both shards commits on its own (two-phase), so it does not run
    // before the refusal: the client gets the refusal alone, and nothing is written, as on
    // PostgreSQL.
    let split = [
        unsynced(
            "INSERT INTO users (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four')",
        ),
        unknown.clone(),
        sync(),
    ]
    .concat();
    let refused = [Answer::Error("26000".into()), Answer::Ready('I')];
    let got = transcript(&mut sides.proxy, &split, Until::Syncs(1)).await?;
    assert_eq!(got, refused, "a split INSERT, then an unknown statement");
    let want = transcript(&mut sides.oracle, &split, Until::Syncs(1)).await?;
    assert!(want.ends_with(&refused), "PostgreSQL answered {want:?}");
    sides
        .same("the split INSERT was not kept", &count_users, 1)
        .await?;
    // In a failed transaction, its `ROLLBACK` before a refused message: the client gets an
    // error and `ReadyForQuery` (where PostgreSQL would run the `ROLLBACK` first, the proxy
    // refuses the segment whole and the transaction stays failed), and a `ROLLBACK` ends it.
    sides
        .same("a transaction again", &run_once("BEGIN"), 1)
        .await?;
    sides
        .same("it fails", &run_once("SELECT nosuchfn()"), 1)
        .await?;
    let rollback_then_unknown = [unsynced("ROLLBACK"), unknown.clone(), sync()].concat();
    let got = transcript(&mut sides.proxy, &rollback_then_unknown, Until::Syncs(1)).await?;
    assert!(
        matches!(got.as_slice(), [Answer::Error(_), Answer::Ready(_)]),
        "ROLLBACK of a failed transaction, then an unknown statement: {got:?}"
    );
    transcript(&mut sides.oracle, &rollback_then_unknown, Until::Syncs(1)).await?;
    sides.same("ended", &run_once("ROLLBACK"), 1).await?;
    // A segment that ends with `Flush`: the answers up to the refusal, then nothing until the
    // client's `Sync`, which ends the pipeline that failed.
    sides
        .same_flushed(
            "an insert, then an unknown statement, then Flush",
            &[unsynced("INSERT INTO notes VALUES (4)"), unknown, flush()].concat(),
            4,
        )
        .await?;
    sides.same("its Sync", &sync(), 1).await?;
    sides
        .same("the flushed insert was rolled back", &count, 1)
        .await?;
    wire_proxy.stop().await;
    Ok(())
}
