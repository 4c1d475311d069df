//! Table-driven tests of the decision: statements in, [`Target`]s out ([`route`]); routed
//! requests and session states in, [`Action`]s out ([`decide`]). Expected shards come from the
//! config (`shard_for`), never from hard-coded hash results.

use shardline_router::{plan, Config, KeyValue, Param, ShardId, StatementKind};

use super::*;
use crate::client::auth::Credentials;

const CONFIG: &str = "
users:
  - name: app
    password: app
shards:
  - {name: s0, port: 5432}
  - {name: s1, port: 5433}
  - {name: s2, port: 5434}
  - {name: s3, port: 5435}
tables:
  - {name: users, sharding: hash, column: id, type: int8}
  - name: events
    sharding: range
    column: id
    type: int8
    ranges:
      - {to: 1000, shard: s0}
      - {from: 1000, to: 2000, shard: s1}
      - {from: 2000, shard: s2}
  - {name: countries, sharding: reference}
";

fn loaded() -> Loaded {
    let config = match Config::from_yaml(CONFIG) {
        Ok(config) => config,
        Err(e) => panic!("test config rejected: {e}"),
    };
    Loaded {
        credentials: Credentials::from_config(&config),
        config,
        migration: None,
        version: 1,
    }
}

/// The shard that owns `key` of `table`, as the config computes it.
fn owner(loaded: &Loaded, table: &str, key: i64) -> ShardId {
    match loaded
        .config
        .table(table)
        .map(|rule| rule.shard_for(&KeyValue::Int(key)))
    {
        Some(Ok(shard)) => shard,
        other => panic!("no owner for {table} key {key}: {other:?}"),
    }
}

/// Two keys of `users` that live on different shards.
fn keys_on_two_shards(loaded: &Loaded) -> (i64, i64) {
    let first = owner(loaded, "users", 1);
    let other = (2..100)
        .find(|k| owner(loaded, "users", *k) != first)
        .unwrap_or_else(|| panic!("every key on one shard"));
    (1, other)
}

fn names(shards: &[ShardId]) -> String {
    let names: Vec<String> = shards.iter().map(|s| format!("s{s}")).collect();
    names.join(",")
}

/// A target as a short text, for tables.
fn target_text(loaded: &Loaded, target: &Target) -> String {
    let shards = names(&target.shards(&loaded.config).unwrap_or_default());
    match target {
        Target::Session => "session".to_owned(),
        Target::Shard(_) => format!("shard {shards}"),
        Target::Scatter(_) => format!("scatter {shards}"),
        Target::Gather(_) => format!("gather {shards}"),
        Target::Split(_) => format!("split {shards}"),
        Target::Copy(_) => format!("copy {shards}"),
    }
}

/// An action as a short text, for tables.
fn action_text(action: &Action<'_>) -> String {
    match action {
        Action::Local => "local".to_owned(),
        Action::EndFailed { shard } => format!("end-failed s{shard}"),
        Action::CommitDual { old } => format!("commit-dual s{old}"),
        Action::AwaitCutover => "await-cutover".to_owned(),
        Action::Single {
            shard,
            starts_transaction: true,
        } => format!("single s{shard}"),
        Action::Single {
            shard,
            starts_transaction: false,
        } => format!("single s{shard} (no data)"),
        Action::DualWrite { old } => format!("dual-write s{old}"),
        Action::Scatter(shards) => format!("scatter {}", names(shards)),
        Action::Gather(shards) => format!("gather {}", names(shards)),
        Action::Split(_) => "split".to_owned(),
        Action::Copy(_) => "copy".to_owned(),
        Action::Spread => "spread".to_owned(),
        Action::Refuse(error) => format!("refuse {}", error.sqlstate),
    }
}

#[test]
fn routes_each_kind_of_statement() {
    let loaded = loaded();
    let (a, b) = keys_on_two_shards(&loaded);
    let (sa, sb) = (owner(&loaded, "users", a), owner(&loaded, "users", b));
    let mut both = vec![sa, sb];
    both.sort_unstable();
    let all = names(&[0, 1, 2, 3]);
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        ("BEGIN".into(), vec![], "session".into()),
        ("SET search_path = app".into(), vec![], "session".into()),
        ("SHOW search_path".into(), vec![], "session".into()),
        (
            format!("SELECT * FROM users WHERE id = {a}"),
            vec![],
            format!("shard s{sa}"),
        ),
        (
            "SELECT * FROM users WHERE id = $1".into(),
            vec!["5"],
            format!("shard s{}", owner(&loaded, "users", 5)),
        ),
        (
            "SELECT * FROM events WHERE id = 1500".into(),
            vec![],
            "shard s1".into(),
        ),
        (
            "SELECT name FROM users".into(),
            vec![],
            format!("scatter {all}"),
        ),
        (
            "UPDATE users SET name = 'x'".into(),
            vec![],
            format!("scatter {all}"),
        ),
        (
            "SELECT id FROM users ORDER BY id LIMIT 5".into(),
            vec![],
            format!("gather {all}"),
        ),
        (
            "SELECT count(*) FROM users".into(),
            vec![],
            format!("gather {all}"),
        ),
        (
            format!("INSERT INTO users (id, name) VALUES ({a}, 'a'), ({b}, 'b')"),
            vec![],
            format!("split {}", names(&both)),
        ),
        (
            "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')".into(),
            vec!["1", "2"],
            "split".into(),
        ),
        (
            "COPY users (id, name) FROM STDIN".into(),
            vec![],
            format!("copy {all}"),
        ),
        (
            "SELECT * FROM users WHERE id = 'x'".into(),
            vec![],
            "error 22P02".into(),
        ),
        (
            "SELECT * FROM events WHERE id = -5".into(),
            vec![],
            "shard s0".into(),
        ),
        (
            "INSERT INTO users (name) VALUES ('a')".into(),
            vec![],
            "error".into(),
        ),
        (
            "COPY users FROM STDIN (FORMAT binary)".into(),
            vec![],
            "error".into(),
        ),
    ];
    for (sql, params, expected) in cases {
        let plan = plan(&loaded.config, &sql);
        let params: Vec<Param<'_>> = params.iter().map(|p| Param::Text(p.as_bytes())).collect();
        let got = match route(&loaded, &plan, &sql, &params) {
            Ok((target, dual)) => {
                assert!(dual.is_none(), "{sql}: no migration, no dual write");
                target_text(&loaded, &target)
            }
            Err(e) => format!("error {}", e.sqlstate),
        };
        assert!(
            got.starts_with(&expected),
            "{sql}: got {got}, expected {expected}"
        );
    }
}

/// The session state of a case.
#[derive(Default)]
struct State {
    /// `BEGIN` held, nothing routed yet.
    held: bool,
    /// The transaction runs on this shard.
    pinned: Option<ShardId>,
    failed: bool,
    failed_on_shard: bool,
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
        let mut tx = Transaction {
            shard: self.pinned,
            failed: self.failed,
            failed_on_shard: self.failed_on_shard,
            ..Transaction::default()
        };
        if self.held {
            tx.held.push("BEGIN".to_owned());
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
        pinned: Some(shard),
        ..State::default()
    }
}

/// One decision case: what the client sent and the state it found.
struct Case {
    name: &'static str,
    state: State,
    extended: bool,
    kinds: Vec<StatementKind>,
    routed: Vec<Target>,
    dual: bool,
    refusal: Option<&'static str>,
    expected: &'static str,
}

fn simple(name: &'static str, state: State, kind: StatementKind, target: Option<Target>) -> Case {
    Case {
        name,
        state,
        extended: false,
        kinds: vec![kind],
        routed: target.into_iter().collect(),
        dual: false,
        refusal: None,
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
    let scatter = || Target::Scatter(vec![0, 1, 2, 3]);
    let gather = || Target::Gather(vec![0, 1, 2, 3]);
    let one = |shard| Some(Target::Shard(shard));
    let cases = vec![
        // Answered by the proxy.
        simple("BEGIN is held", idle(), Begin, None).expect("local"),
        simple("COMMIT outside a transaction", idle(), Commit, None).expect("local"),
        simple("ROLLBACK of a held BEGIN", held(), Rollback, None).expect("local"),
        simple("SET inside a held BEGIN", held(), set(), None).expect("local"),
        simple("RESET ALL inside a held BEGIN", held(), ResetAll, None).expect("local"),
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
        .expect("end-failed s2"),
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
        simple("another shard than the pinned one", pinned(1), Read, one(2)).expect("refuse 0A000"),
        simple(
            "a scatter inside a transaction",
            pinned(1),
            Read,
            Some(scatter()),
        )
        .expect("refuse 0A000"),
        simple("a gather after a held BEGIN", held(), Read, Some(gather())).expect("refuse 0A000"),
        simple(
            "a split INSERT inside a transaction",
            pinned(0),
            Write,
            Some(split),
        )
        .expect("refuse 0A000"),
        simple(
            "a COPY inside a transaction",
            held(),
            StatementKind::CopyIn,
            Some(copy),
        )
        .expect("refuse 0A000"),
        segment(
            "two shards inside a transaction",
            held(),
            vec![Read, Read],
            vec![Target::Shard(1), Target::Shard(2)],
        )
        .expect("refuse 0A000"),
        segment(
            "a scatter beside another statement",
            idle(),
            vec![Read, Read],
            vec![Target::Shard(1), scatter()],
        )
        .expect("refuse 0A000"),
        segment(
            "BEGIN inside a spread pipeline",
            State {
                spread: true,
                ..idle()
            },
            vec![Begin, Write],
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
            "COMMIT of such a transaction the shard failed",
            State {
                wrote_moving: true,
                failed_on_shard: true,
                ..pinned(1)
            },
            Commit,
            None,
        )
        .expect("single s1 (no data)"),
    ];
    for case in cases {
        let tx = case.state.transaction();
        let refusal = case.refusal.map(|code| ClientError::new(code, "refused"));
        let routed: Vec<(usize, Target)> = case.routed.into_iter().enumerate().collect();
        let request = Request {
            extended: case.extended,
            kinds: &case.kinds,
            routed: &routed,
            dual: case.dual,
            refusal: refusal.as_ref(),
        };
        let facts = Facts {
            config,
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

#[test]
fn local_answers_follow_the_transaction_phase() {
    use StatementKind::{Begin, Commit, DiscardAll, Read, Rollback, SetLocal};
    let held = TxPhase::Held { failed: false };
    let failed = TxPhase::Held { failed: true };
    let cases = [
        (Begin, TxPhase::Idle, Some(LocalAnswer::HoldBegin)),
        (Begin, held, None),
        (Begin, TxPhase::Started, None),
        (Commit, held, Some(LocalAnswer::EndHeld { commit: true })),
        (Commit, failed, Some(LocalAnswer::EndHeld { commit: false })),
        (Rollback, held, Some(LocalAnswer::EndHeld { commit: false })),
        (Commit, TxPhase::Started, None),
        (
            Commit,
            TxPhase::Idle,
            Some(LocalAnswer::NoTransaction { tag: "COMMIT" }),
        ),
        (
            SetLocal,
            held,
            Some(LocalAnswer::HoldSetting { tag: "SET" }),
        ),
        (SetLocal, failed, None),
        (SetLocal, TxPhase::Idle, None),
        (
            DiscardAll,
            TxPhase::Idle,
            Some(LocalAnswer::Discard { tag: "DISCARD ALL" }),
        ),
        (DiscardAll, held, None),
        (Read, TxPhase::Idle, None),
        (Read, held, None),
    ];
    for (kind, phase, expected) in cases {
        assert_eq!(
            local_answer(&kind, "", phase),
            expected,
            "{kind:?} in {phase:?}"
        );
    }
    assert_eq!(
        local_answer(&DiscardAll, "deallocate all", TxPhase::Idle),
        Some(LocalAnswer::Discard {
            tag: "DEALLOCATE ALL"
        })
    );
}
