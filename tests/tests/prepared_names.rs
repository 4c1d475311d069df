//! A client's named prepared statements live as on one PostgreSQL server: a `Parse` of a name
//! in use is refused (42P05), and a `Parse` that fails, or that PostgreSQL skips after an
//! earlier error, leaves no statement behind, so the name can be parsed again.

use shardline_tests::oracle::proxy_and_oracle;
use shardline_tests::wire::{bind, close_statement, execute, parse, run_once, sync};
use shardline_tests::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn named_statements_are_defined_and_refused_as_postgres_does() -> anyhow::Result<()> {
    let cluster = TestCluster::start("prepared_names", 2).await?;
    let (wire_proxy, mut sides) = proxy_and_oracle(&cluster).await?;
    // A sharded table, so a statement without its key runs on every shard.
    let ddl = [
        parse("", "CREATE TABLE users (id bigint PRIMARY KEY, name text)"),
        bind("", &[]),
        execute(0),
        sync(),
    ]
    .concat();
    sides.same("CREATE TABLE", &ddl, 1).await?;

    let run = |name: &str| [bind(name, &[]), execute(0)].concat();
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("define", [parse("dup", "SELECT 1"), sync()].concat()),
        (
            "the same again",
            [parse("dup", "SELECT 1"), sync()].concat(),
        ),
        ("other text", [parse("dup", "SELECT 2"), sync()].concat()),
        ("still the first", [run("dup"), sync()].concat()),
        ("closed", [close_statement("dup"), sync()].concat()),
        (
            "defined anew",
            [parse("dup", "SELECT 3"), run("dup"), sync()].concat(),
        ),
        (
            "a failing parse",
            [parse("bad", "SELECT nosuchfn()"), sync()].concat(),
        ),
        (
            "then parsed",
            [parse("bad", "SELECT 4"), run("bad"), sync()].concat(),
        ),
        (
            "skipped after an error",
            [
                parse("e0", "SELECT nosuchfn()"),
                parse("e1", "SELECT 5"),
                sync(),
            ]
            .concat(),
        ),
        (
            "the skipped one parsed",
            [parse("e1", "SELECT 6"), run("e1"), sync()].concat(),
        ),
        (
            "one before an error",
            [
                parse("q1", "SELECT 7"),
                run("q1"),
                parse("q2", "SELECT nosuchfn()"),
                sync(),
            ]
            .concat(),
        ),
        (
            "the one before stays",
            [parse("q1", "SELECT 8"), sync()].concat(),
        ),
        (
            "the failed one parsed",
            [parse("q2", "SELECT 9"), run("q2"), sync()].concat(),
        ),
        (
            "on every shard, failing",
            [parse("all", "SELECT nosuch FROM users"), run("all"), sync()].concat(),
        ),
        (
            "on every shard, parsed",
            [parse("all", "SELECT name FROM users"), run("all"), sync()].concat(),
        ),
        (
            "on every shard, again",
            [parse("all", "SELECT 1 FROM users"), sync()].concat(),
        ),
        ("a transaction", run_once("BEGIN")),
        ("fails", run_once("SELECT nosuchfn()")),
        (
            "a parse in the failed transaction",
            [parse("n", "SELECT 12"), run("n"), sync()].concat(),
        ),
        ("rolled back", run_once("ROLLBACK")),
        (
            "the refused name parsed",
            [parse("n", "SELECT 13"), run("n"), sync()].concat(),
        ),
        (
            "closed and parsed in one segment",
            [
                close_statement("n"),
                parse("n", "SELECT 14"),
                run("n"),
                sync(),
            ]
            .concat(),
        ),
        ("another transaction", run_once("BEGIN")),
        (
            "a name in use, inside it",
            [parse("n", "SELECT 15"), sync()].concat(),
        ),
        ("ended", run_once("ROLLBACK")),
        ("deallocated", run_once("DEALLOCATE n")),
        (
            "parsed after DEALLOCATE",
            [parse("n", "SELECT 16"), run("n"), sync()].concat(),
        ),
    ];
    for (step, bytes) in &steps {
        sides.same(step, bytes, 1).await?;
    }
    wire_proxy.stop().await;
    Ok(())
}
