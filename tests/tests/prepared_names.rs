//! A client's named prepared statements live as on one PostgreSQL server: a `Parse` of a name
//! in use is refused (42P05), and a `Parse` that fails, or that PostgreSQL skips after an
//! earlier error, leaves no statement behind, so the name can be parsed again.

use shardline_tests::wire::{
    bind, cstr, exchange, execute, message, parse, proxy_and_oracle, sync,
};
use shardline_tests::TestCluster;

/// `Close` of statement `name`.
fn close(name: &str) -> Vec<u8> {
    message(b'C', &[b"S".to_vec(), cstr(name)].concat())
}

#[tokio::test(flavor = "multi_thread")]
async fn named_statements_are_defined_and_refused_as_postgres_does() -> anyhow::Result<()> {
    let cluster = TestCluster::start("prepared_names", 2).await?;
    let (wire_proxy, mut proxy, mut oracle) = proxy_and_oracle(&cluster).await?;
    // A sharded table, so a statement without its key runs on every shard.
    let ddl = [
        parse("", "CREATE TABLE users (id bigint PRIMARY KEY, name text)"),
        bind("", &[]),
        execute(0),
        sync(),
    ]
    .concat();
    assert_eq!(
        exchange(&mut proxy, &ddl).await?,
        exchange(&mut oracle, &ddl).await?
    );

    let run = |name: &str| [bind(name, &[]), execute(0)].concat();
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("define", [parse("dup", "SELECT 1"), sync()].concat()),
        (
            "the same again",
            [parse("dup", "SELECT 1"), sync()].concat(),
        ),
        ("other text", [parse("dup", "SELECT 2"), sync()].concat()),
        ("still the first", [run("dup"), sync()].concat()),
        ("closed", [close("dup"), sync()].concat()),
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
    ];
    for (step, bytes) in &steps {
        assert_eq!(
            exchange(&mut proxy, bytes).await?,
            exchange(&mut oracle, bytes).await?,
            "{step}"
        );
    }
    wire_proxy.stop().await;
    Ok(())
}
