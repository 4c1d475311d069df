//! One statement or one pipeline, inside and outside transaction blocks: local answers, one shard,
//! several shards, failed transactions and refusals.

use shardline_router::StatementKind;

use super::*;

#[test]
fn decides_statements_and_pipelines() {
    use StatementKind::{Begin, Commit, DiscardAll, Read, ResetAll, Rollback, SetLocal, Write};
    let loaded = loaded();
    let cases = vec![
        // Answered by the proxy.
        simple("BEGIN is held", idle(), Begin, None).expect("local"),
        simple("COMMIT outside a transaction", idle(), Commit, None).expect("local"),
        simple("ROLLBACK of a held BEGIN", held(), Rollback, None).expect("local"),
        simple("SET inside a held BEGIN", held(), set(), None).expect("local"),
        simple(
            "SET of a reported setting inside a held BEGIN",
            held(),
            datestyle(),
            None,
        )
        .expect("single s0"),
        segment(
            "BEGIN and a SET of a reported setting before one Sync (pgjdbc)",
            idle(),
            vec![Begin, datestyle()],
            vec![],
        )
        .expect("single s0"),
        simple(
            "the same, one-shard transactions",
            held(),
            datestyle(),
            None,
        )
        .one_shard_transactions()
        .expect("local"),
        simple(
            "RESET ALL inside a held BEGIN (it resets reported settings)",
            held(),
            ResetAll,
            None,
        )
        .expect("single s0"),
        simple(
            "DISCARD ALL outside a transaction",
            idle(),
            DiscardAll,
            None,
        )
        .expect("local"),
        segment(
            "BEGIN; SET LOCAL; COMMIT in one segment",
            idle(),
            vec![Begin, SetLocal, Commit],
            vec![],
        )
        .expect("local"),
        simple(
            "COMMIT of a failed held transaction",
            State {
                failed: true,
                ..held()
            },
            Commit,
            None,
        )
        .expect("local"),
        segment(
            "a Sync alone in a failed transaction (psycopg after an error in a pipeline)",
            State {
                failed: true,
                ..pinned(2)
            },
            vec![],
            vec![],
        )
        .expect("single s2 (no data)"),
        segment(
            "a statement in a failed transaction",
            State {
                failed: true,
                ..pinned(2)
            },
            vec![Read],
            vec![Target::Shard(2)],
        )
        .expect("refuse 25P02"),
        segment(
            "DEALLOCATE name beside a query before one Sync",
            idle(),
            vec![
                StatementKind::Deallocate {
                    name: "_pg3_0".into(),
                },
                Read,
            ],
            vec![Target::Shard(0)],
        )
        .expect("refuse 0A000"),
        simple(
            "PREPARE TRANSACTION of a failed transaction",
            State {
                failed: true,
                ..pinned(0)
            },
            StatementKind::PrepareTransaction,
            None,
        )
        .expect("finish rollback"),
        // Session statements go where the session is.
        simple("SET outside a transaction", idle(), set(), None).expect("single s0 (no data)"),
        simple(
            "SET with a backend held",
            State {
                held_backend: Some(3),
                ..idle()
            },
            set(),
            None,
        )
        .expect("single s3 (no data)"),
        simple("BEGIN inside a running transaction", pinned(2), Begin, None)
            .expect("single s2 (no data)"),
        simple(
            "DISCARD ALL inside a transaction",
            pinned(1),
            DiscardAll,
            None,
        )
        .expect("single s1 (no data)"),
        segment("a lone Parse", idle(), vec![], vec![]).expect("single s0 (no data)"),
        // One shard.
        simple("keyed read", idle(), Read, one(2)).expect("single s2"),
        simple("keyed read after a held BEGIN", held(), Read, one(2)).expect("single s2"),
        simple("keyed read on the pinned shard", pinned(1), Read, one(1)).expect("single s1"),
        segment(
            "BEGIN then a keyed read",
            idle(),
            vec![Begin, Read],
            vec![Target::Shard(1)],
        )
        .expect("single s1"),
        segment(
            "two statements on one shard",
            idle(),
            vec![Read, Write],
            vec![Target::Shard(3), Target::Shard(3)],
        )
        .expect("single s3"),
        segment(
            "after an extended COPY, the backend waiting for Sync",
            State {
                awaiting_sync: true,
                held_backend: Some(2),
                ..idle()
            },
            vec![Read],
            vec![Target::Shard(1)],
        )
        .expect("single s2"),
        // Several shards.
        simple("keyless read", idle(), Read, Some(scatter())).expect("scatter s0,s1,s2,s3"),
        simple("ordered read", idle(), Read, Some(gather())).expect("gather s0,s1,s2,s3"),
        simple(
            "multi-row INSERT over shards",
            idle(),
            Write,
            Some(split(&loaded)),
        )
        .expect("split"),
        simple(
            "COPY into a sharded table",
            idle(),
            StatementKind::CopyIn,
            Some(copy(&loaded)),
        )
        .expect("copy"),
        simple(
            "a read only gathered rows can answer",
            idle(),
            Read,
            Some(pull(&loaded)),
        )
        .expect("pull users"),
        simple(
            "an INSERT … SELECT into a sharded table",
            idle(),
            Write,
            Some(insert_select(&loaded)),
        )
        .expect("insert-select pulling users"),
        segment(
            "a pipeline over two shards",
            idle(),
            vec![Write, Write],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .expect("spread"),
        segment(
            "a pipeline whose earlier part ran elsewhere",
            State {
                unsynced: vec![0],
                ..idle()
            },
            vec![Write],
            vec![Target::Shard(2)],
        )
        .expect("spread"),
        segment(
            "a spread pipeline goes on",
            State {
                spread: true,
                ..idle()
            },
            vec![Write],
            vec![Target::Shard(2)],
        )
        .expect("spread"),
        // Transactions that failed.
        simple(
            "COMMIT of a failed transaction",
            State {
                failed: true,
                ..pinned(2)
            },
            Commit,
            None,
        )
        .expect("finish rollback"),
        simple(
            "a read in a failed transaction",
            State {
                failed: true,
                ..pinned(2)
            },
            Read,
            one(2),
        )
        .expect("refuse 25P02"),
        simple(
            "a statement the router refused, in a failed transaction",
            State {
                failed: true,
                ..pinned(2)
            },
            Read,
            None,
        )
        .refused_by_router("22P02")
        .expect("refuse 25P02"),
        // Refusals.
        simple("the router refused", idle(), Read, None)
            .refused_by_router("22P02")
            .expect("refuse 22P02"),
        segment(
            "the router refused the first message of a segment",
            idle(),
            vec![],
            vec![],
        )
        .refused_by_router("26000")
        .expect("refuse 26000"),
        // A refusal after other messages: those run first where aborting the pipeline at its
        // `Sync` undoes them.
        segment(
            "the router refused after a statement on one shard",
            idle(),
            vec![Write],
            vec![Target::Shard(1)],
        )
        .refused_after_others("26000")
        .expect("run, then refuse 26000"),
        segment(
            "the same inside a transaction",
            pinned(1),
            vec![Write],
            vec![Target::Shard(1)],
        )
        .refused_after_others("26000")
        .expect("run, then refuse 26000"),
        segment(
            "the router refused after statements on two shards",
            idle(),
            vec![Write, Write],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .refused_after_others("26000")
        .expect("run, then refuse 26000"),
        segment(
            "the router refused after a split INSERT, which commits on its own",
            idle(),
            vec![Write],
            vec![split(&loaded)],
        )
        .refused_after_others("26000")
        .expect("refuse 26000"),
        segment(
            "the router refused after a BEGIN, which the proxy answers",
            idle(),
            vec![Begin],
            vec![],
        )
        .refused_after_others("26000")
        .expect("refuse 26000"),
        segment(
            "the router refused after a COMMIT",
            pinned(1),
            vec![Write, Commit],
            vec![Target::Shard(1)],
        )
        .refused_after_others("26000")
        .expect("refuse 26000"),
        segment(
            "the router refused after a SET, which the session records as it completes",
            idle(),
            vec![set(), Read],
            vec![Target::Shard(1)],
        )
        .refused_after_others("26000")
        .expect("refuse 26000"),
        segment(
            "the router refused after a COPY into one shard",
            idle(),
            vec![StatementKind::CopyIn],
            vec![Target::Shard(1)],
        )
        .refused_after_others("26000")
        .expect("refuse 26000"),
        segment(
            "the router refused after a write of moving keys",
            idle(),
            vec![Write],
            vec![Target::Shard(1)],
        )
        .dual()
        .refused_after_others("26000")
        .expect("refuse 26000"),
        segment(
            "the router refused after a statement, in a failed transaction",
            State {
                failed: true,
                ..pinned(2)
            },
            vec![Read],
            vec![Target::Shard(2)],
        )
        .refused_after_others("26000")
        .expect("refuse 25P02"),
        segment(
            "the router refused after a ROLLBACK of a failed transaction",
            State {
                failed: true,
                ..pinned(2)
            },
            vec![Rollback],
            vec![],
        )
        .refused_after_others("26000")
        .expect("refuse 25P02"),
        simple(
            "DEALLOCATE ALL inside a transaction",
            pinned(1),
            StatementKind::DeallocateAll,
            None,
        )
        .expect("local"),
        segment(
            "DEALLOCATE ALL in the middle of a pipeline",
            State {
                unsynced: vec![2],
                held_backend: Some(2),
                ..idle()
            },
            vec![StatementKind::DeallocateAll],
            vec![],
        )
        .expect("local"),
        segment(
            "BEGIN in the middle of a pipeline on one shard",
            State {
                unsynced: vec![2],
                held_backend: Some(2),
                ..idle()
            },
            vec![Begin],
            vec![],
        )
        .expect("single s2 (no data)"),
        segment(
            "BEGIN in a pipeline spread over shards",
            State {
                spread: true,
                unsynced: vec![1, 2],
                held_backend: Some(1),
                ..idle()
            },
            vec![Begin, Write],
            vec![Target::Shard(3)],
        )
        .expect("spread"),
        segment(
            "COMMIT in a pipeline spread over shards (refused in its place)",
            State {
                spread: true,
                unsynced: vec![1, 2],
                held_backend: Some(1),
                ..idle()
            },
            vec![Commit],
            vec![],
        )
        .expect("spread"),
    ];
    check(&loaded, cases);
}
