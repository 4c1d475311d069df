//! Routed requests and session states decided into actions.

use shardline_router::{plan, KeyValue, SavepointOp, ShardId, StatementKind};

use super::*;

/// The session state of a case.
#[derive(Default)]
struct State {
    /// `BEGIN` held, nothing routed yet.
    held: bool,
    /// Shards taking part in the transaction.
    joined: Vec<ShardId>,
    failed: bool,
    /// The transaction wrote moving keys.
    wrote_moving: bool,
    held_backend: Option<ShardId>,
    unsynced: Vec<ShardId>,
    spread: bool,
    awaiting_sync: bool,
    segment_open: bool,
    cutover_holds: bool,
}

impl State {
    fn transaction(&self) -> Transaction {
        let mut tx = Transaction::default();
        tx.failed = self.failed;
        tx.shards.extend(self.joined.iter().copied());
        if self.held {
            tx.begin = Some("BEGIN".to_owned());
        }
        if self.wrote_moving {
            tx.dual
                .tables
                .insert("users".to_owned(), vec![(KeyValue::Int(1), 1)]);
        }
        tx
    }
}

fn idle() -> State {
    State::default()
}

fn held() -> State {
    State {
        held: true,
        ..State::default()
    }
}

fn pinned(shard: ShardId) -> State {
    State {
        joined: vec![shard],
        held: true,
        ..State::default()
    }
}

fn across(shards: &[ShardId]) -> State {
    State {
        joined: shards.to_vec(),
        held: true,
        ..State::default()
    }
}

/// One decision case: what the client sent and the state it found.
struct Case {
    name: &'static str,
    state: State,
    extended: bool,
    kinds: Vec<StatementKind>,
    /// The statements of a multi-statement query string.
    parts: Vec<StatementKind>,
    routed: Vec<Target>,
    dual: bool,
    refusal: Option<&'static str>,
    /// Served with `cross_shard_transactions: false`.
    one_shard_transactions: bool,
    expected: &'static str,
}

fn simple(name: &'static str, state: State, kind: StatementKind, target: Option<Target>) -> Case {
    Case {
        name,
        state,
        extended: false,
        kinds: vec![kind],
        parts: Vec::new(),
        routed: target.into_iter().collect(),
        dual: false,
        refusal: None,
        one_shard_transactions: false,
        expected: "",
    }
}

fn segment(
    name: &'static str,
    state: State,
    kinds: Vec<StatementKind>,
    routed: Vec<Target>,
) -> Case {
    Case {
        extended: true,
        kinds,
        routed,
        ..simple(name, state, StatementKind::Empty, None)
    }
}

impl Case {
    fn expect(mut self, expected: &'static str) -> Case {
        self.expected = expected;
        self
    }

    fn one_shard_transactions(mut self) -> Case {
        self.one_shard_transactions = true;
        self
    }

    /// A multi-statement query string of these statements.
    fn compound(mut self, parts: Vec<StatementKind>) -> Case {
        self.kinds = vec![StatementKind::Compound];
        self.parts = parts;
        self
    }

    fn dual(mut self) -> Case {
        self.dual = true;
        self
    }

    fn refused_by_router(mut self, sqlstate: &'static str) -> Case {
        self.refusal = Some(sqlstate);
        self
    }
}

#[test]
fn decides_every_action_and_refusal() {
    use StatementKind::{Begin, Commit, DiscardAll, Read, ResetAll, Rollback, SetLocal, Write};
    let loaded = loaded();
    let config = &loaded.config;
    let datestyle = || StatementKind::Set {
        name: "datestyle".into(),
        value: "German".into(),
    };
    let set = || StatementKind::Set {
        name: "search_path".into(),
        value: "app".into(),
    };
    let routed = |sql: &str| route(&loaded, &plan(config, sql), sql, &());
    let split = match routed("INSERT INTO users (id) VALUES (1), (2), (3), (4), (5), (6)") {
        Ok((target @ Target::Split(_), _)) => target,
        other => panic!("not a split: {other:?}"),
    };
    let copy = match routed("COPY users FROM STDIN") {
        Ok((target @ Target::Copy(_), _)) => target,
        other => panic!("not a copy: {other:?}"),
    };
    let mut one_shard = config.clone();
    one_shard.cross_shard_transactions = false;
    let savepoint = |op| StatementKind::Savepoint {
        op,
        name: "s1".into(),
    };
    let scatter = || Target::Scatter(vec![0, 1, 2, 3]);
    let gather = || Target::Gather(vec![0, 1, 2, 3]);
    let one = |shard| Some(Target::Shard(shard));
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
            Some(split.clone()),
        )
        .expect("split"),
        simple(
            "COPY into a sharded table",
            idle(),
            StatementKind::CopyIn,
            Some(copy.clone()),
        )
        .expect("copy"),
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
            "the router refused after a BEGIN",
            idle(),
            vec![Begin],
            vec![],
        )
        .refused_by_router("26000")
        .expect("refuse 26000"),
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
            "COMMIT in a pipeline spread over shards",
            State {
                spread: true,
                unsynced: vec![1, 2],
                held_backend: Some(1),
                ..idle()
            },
            vec![Commit],
            vec![],
        )
        .expect("refuse 0A000"),
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
            Some(split.clone()),
        )
        .expect("split"),
        simple(
            "a COPY inside a transaction",
            held(),
            StatementKind::CopyIn,
            Some(copy.clone()),
        )
        .expect("copy"),
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
            Some(split),
        )
        .one_shard_transactions()
        .expect("refuse 0A000"),
        simple(
            "a COPY, one-shard transactions",
            held(),
            StatementKind::CopyIn,
            Some(copy),
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
            "a scatter beside another statement",
            idle(),
            vec![Read, Read],
            vec![Target::Shard(1), scatter()],
        )
        .expect("refuse 0A000"),
        segment(
            "ROLLBACK inside a spread pipeline",
            State {
                spread: true,
                ..idle()
            },
            vec![Rollback, Write],
            vec![Target::Shard(2)],
        )
        .expect("refuse 0A000"),
        segment(
            "a scatter inside a spread pipeline",
            State {
                spread: true,
                ..idle()
            },
            vec![Read],
            vec![scatter()],
        )
        .expect("refuse 0A000"),
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
    for case in cases {
        let tx = case.state.transaction();
        let refusal = case.refusal.map(|code| ClientError::new(code, "refused"));
        let routed: Vec<(usize, Target)> = case.routed.into_iter().enumerate().collect();
        let request = Request {
            extended: case.extended,
            kinds: &case.kinds,
            parts: &case.parts,
            routed: &routed,
            dual: case.dual,
            refusal: refusal.as_ref(),
        };
        let facts = Facts {
            config: if case.one_shard_transactions {
                &one_shard
            } else {
                config
            },
            tx: &tx,
            held: case.state.held_backend,
            unsynced: case.state.unsynced,
            spread: case.state.spread,
            awaiting_sync: case.state.awaiting_sync,
            segment_open: case.state.segment_open,
            cutover_holds: case.state.cutover_holds,
        };
        let got = action_text(&decide(&request, &facts));
        assert_eq!(got, case.expected, "{}", case.name);
    }
}
