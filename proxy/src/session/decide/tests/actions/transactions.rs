//! Transactions across shards (joining, ending, savepoints, client two-phase commit), the
//! one-shard configuration, and writes of keys a resharding migration moves.

use shardline_router::{SavepointOp, StatementKind};

use super::*;

#[test]
fn decides_transactions_across_shards() {
    use StatementKind::{Commit, Read, Rollback, SetLocal, Write};
    let loaded = loaded();
    let cases = vec![
        // Transactions across shards.
        simple(
            "another shard joins the transaction",
            pinned(1),
            Read,
            one(2),
        )
        .expect("single s2"),
        simple(
            "a scatter inside a transaction",
            pinned(1),
            Read,
            Some(scatter()),
        )
        .expect("scatter s0,s1,s2,s3"),
        simple("a gather after a held BEGIN", held(), Read, Some(gather()))
            .expect("gather s0,s1,s2,s3"),
        simple(
            "a split INSERT inside a transaction",
            pinned(0),
            Write,
            Some(split(&loaded)),
        )
        .expect("split"),
        simple(
            "a COPY inside a transaction",
            held(),
            StatementKind::CopyIn,
            Some(copy(&loaded)),
        )
        .expect("copy"),
        simple(
            "a read only gathered rows can answer, inside a transaction",
            pinned(0),
            Read,
            Some(pull(&loaded)),
        )
        .expect("pull users"),
        simple(
            "an INSERT … SELECT into a sharded table, inside a transaction",
            held(),
            Write,
            Some(insert_select(&loaded)),
        )
        .expect("insert-select pulling users"),
        segment(
            "two shards in one segment of a transaction",
            held(),
            vec![Read, Read],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .expect("spread"),
        segment(
            "two statements on one new shard of a transaction",
            pinned(0),
            vec![Read, Write],
            vec![Target::Shard(2), Target::Shard(2)],
        )
        .expect("single s2"),
        simple(
            "COMMIT of a transaction on two shards",
            across(&[0, 2]),
            Commit,
            None,
        )
        .expect("finish commit"),
        simple(
            "ROLLBACK of a transaction on two shards",
            across(&[0, 2]),
            Rollback,
            None,
        )
        .expect("finish rollback"),
        simple(
            "COMMIT of a transaction on one shard",
            pinned(2),
            Commit,
            None,
        )
        .expect("single s2 (no data)"),
        simple(
            "SAVEPOINT in a running transaction",
            pinned(2),
            savepoint(SavepointOp::Define),
            None,
        )
        .expect("everywhere"),
        simple("SET LOCAL on two shards", across(&[1, 3]), SetLocal, None).expect("everywhere"),
        simple(
            "SAVEPOINT after a held BEGIN",
            held(),
            savepoint(SavepointOp::Define),
            None,
        )
        .expect("local"),
        simple(
            "ROLLBACK TO in a failed transaction",
            State {
                failed: true,
                ..across(&[0, 1])
            },
            savepoint(SavepointOp::RollbackTo),
            None,
        )
        .expect("everywhere"),
        segment(
            "ROLLBACK TO and RELEASE before one Sync in a failed transaction (psycopg)",
            State {
                failed: true,
                ..across(&[0, 1])
            },
            vec![
                savepoint(SavepointOp::RollbackTo),
                savepoint(SavepointOp::Release),
            ],
            vec![],
        )
        .expect("everywhere"),
        simple(
            "RELEASE in a failed transaction",
            State {
                failed: true,
                ..across(&[0, 1])
            },
            savepoint(SavepointOp::Release),
            None,
        )
        .expect("refuse 25P02"),
        simple(
            "ROLLBACK TO in a failed held transaction",
            State {
                failed: true,
                ..held()
            },
            savepoint(SavepointOp::RollbackTo),
            None,
        )
        .expect("local"),
        segment(
            "SAVEPOINT beside a write, on two shards",
            across(&[0, 1]),
            vec![savepoint(SavepointOp::Define), Write],
            vec![Target::Shard(1)],
        )
        .expect("spread"),
        // A transaction's end reaches every shard of it, or is refused: never one shard alone.
        simple(
            "COMMIT in a query string, transaction on two shards",
            across(&[0, 1]),
            Write,
            one(1),
        )
        .compound(vec![Write, Commit])
        .expect("refuse 0A000"),
        simple(
            "ROLLBACK in a query string, transaction on two shards",
            across(&[0, 1]),
            Read,
            one(0),
        )
        .compound(vec![Read, Rollback])
        .expect("refuse 0A000"),
        simple(
            "COMMIT in a query string on the one shard of the transaction",
            pinned(1),
            Write,
            one(1),
        )
        .compound(vec![Write, Commit])
        .expect("single s1"),
        simple(
            "COMMIT in a query string on a shard joining the transaction",
            pinned(0),
            Write,
            one(1),
        )
        .compound(vec![Write, Commit])
        .expect("refuse 0A000"),
        simple(
            "SAVEPOINT in a query string, transaction on two shards",
            across(&[0, 1]),
            Write,
            one(1),
        )
        .compound(vec![savepoint(SavepointOp::Define), Write])
        .expect("refuse 0A000"),
        segment(
            "COMMIT after a write before one Sync, transaction on two shards",
            across(&[0, 1]),
            vec![Write, Commit],
            vec![Target::Shard(0)],
        )
        .expect("refuse 0A000"),
        segment(
            "COMMIT after a write before one Sync, on a shard joining",
            pinned(0),
            vec![Write, Commit],
            vec![Target::Shard(2)],
        )
        .expect("refuse 0A000"),
        segment(
            "COMMIT before a Flush, transaction on two shards",
            State {
                segment_open: true,
                ..across(&[0, 1])
            },
            vec![Commit],
            vec![],
        )
        .expect("refuse 0A000"),
        simple(
            "PREPARE TRANSACTION, transaction on two shards",
            across(&[0, 1]),
            StatementKind::PrepareTransaction,
            None,
        )
        .expect("refuse 0A000"),
        simple(
            "PREPARE TRANSACTION, transaction on the default shard",
            pinned(0),
            StatementKind::PrepareTransaction,
            None,
        )
        .expect("single s0"),
        simple(
            "PREPARE TRANSACTION, transaction on another shard",
            pinned(1),
            StatementKind::PrepareTransaction,
            None,
        )
        .expect("refuse 0A000"),
        simple(
            "SHOW in a held transaction",
            held(),
            StatementKind::Show,
            None,
        )
        .expect("single s0"),
        simple(
            "SHOW outside a transaction",
            idle(),
            StatementKind::Show,
            None,
        )
        .expect("single s0"),
        simple(
            "SHOW, one-shard transactions",
            held(),
            StatementKind::Show,
            None,
        )
        .one_shard_transactions()
        .expect("single s0 (no data)"),
        simple(
            "PREPARE TRANSACTION of a held transaction",
            held(),
            StatementKind::PrepareTransaction,
            None,
        )
        .expect("single s0"),
        simple(
            "a write of moving keys, transaction on two shards",
            across(&[0, 1]),
            Write,
            one(1),
        )
        .dual()
        .expect("refuse 0A000"),
        // ... or refused, as configured.
        simple(
            "another shard, one-shard transactions",
            pinned(1),
            Read,
            one(2),
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        simple(
            "a scatter, one-shard transactions",
            pinned(1),
            Read,
            Some(scatter()),
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        simple(
            "a gather after BEGIN, one-shard transactions",
            held(),
            Read,
            Some(gather()),
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        simple(
            "a split INSERT, one-shard transactions",
            pinned(0),
            Write,
            Some(split(&loaded)),
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        simple(
            "a COPY, one-shard transactions",
            held(),
            StatementKind::CopyIn,
            Some(copy(&loaded)),
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        segment(
            "two shards in a segment, one-shard transactions",
            held(),
            vec![Read, Read],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        segment(
            "a scatter beside another statement spreads (DDL, keyless writes)",
            idle(),
            vec![Read, Read],
            vec![Target::Shard(1), scatter()],
        )
        .expect("spread"),
        segment(
            "a scatter beside another statement, one-shard transactions",
            held(),
            vec![Read, Read],
            vec![Target::Shard(1), scatter()],
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        segment(
            "a scatter after a statement the pipeline ran elsewhere runs as it is",
            State {
                unsynced: vec![1],
                ..idle()
            },
            vec![Read],
            vec![scatter()],
        )
        .expect("scatter s0,s1,s2,s3"),
        segment(
            "an ordered read after a Flush (a driver's prepare) runs as it is",
            State {
                unsynced: vec![0],
                ..idle()
            },
            vec![Read],
            vec![gather()],
        )
        .expect("gather s0,s1,s2,s3"),
        segment(
            "a scatter alone before its Sync runs as it is",
            idle(),
            vec![Read],
            vec![scatter()],
        )
        .expect("scatter s0,s1,s2,s3"),
        segment(
            "an ordered read beside another statement (refused in its place)",
            idle(),
            vec![Read, Read],
            vec![Target::Shard(1), gather()],
        )
        .expect("spread"),
        segment(
            "BEGIN and writes for two shards in one segment",
            idle(),
            vec![StatementKind::Begin, Write, Write],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .expect("spread"),
        segment(
            "BEGIN and writes for two shards, one-shard transactions",
            idle(),
            vec![StatementKind::Begin, Write, Write],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        segment(
            "ROLLBACK inside a spread pipeline (refused in its place)",
            State {
                spread: true,
                ..idle()
            },
            vec![Rollback, Write],
            vec![Target::Shard(2)],
        )
        .expect("spread"),
        segment(
            "a scatter inside a spread pipeline",
            State {
                spread: true,
                ..idle()
            },
            vec![Read],
            vec![scatter()],
        )
        .expect("spread"),
        // Resharding: writes of moving keys.
        simple("a write of a moving key", idle(), Write, one(1))
            .dual()
            .expect("dual-write s1"),
        simple(
            "a write of a moving key while a cutover holds them",
            State {
                cutover_holds: true,
                ..idle()
            },
            Write,
            one(1),
        )
        .dual()
        .expect("await-cutover"),
        simple(
            "a write of moving keys on several shards",
            idle(),
            Write,
            Some(scatter()),
        )
        .dual()
        .expect("refuse 0A000"),
        segment(
            "a pipeline of moving keys over two shards",
            idle(),
            vec![Write, Write],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .dual()
        .expect("refuse 0A000"),
        simple(
            "COMMIT of a transaction that wrote moving keys",
            State {
                wrote_moving: true,
                ..pinned(1)
            },
            Commit,
            None,
        )
        .expect("commit-dual s1"),
        simple(
            "COMMIT of such a transaction that failed",
            State {
                wrote_moving: true,
                failed: true,
                ..pinned(1)
            },
            Commit,
            None,
        )
        .expect("finish rollback"),
        simple(
            "a write of a moving key in a transaction on another shard",
            pinned(0),
            Write,
            one(1),
        )
        .dual()
        .expect("refuse 0A000"),
        simple(
            "another shard after writing moving keys",
            State {
                wrote_moving: true,
                ..pinned(1)
            },
            Read,
            one(2),
        )
        .expect("refuse 0A000"),
    ];
    check(&loaded, cases);
}
