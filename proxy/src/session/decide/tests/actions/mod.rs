//! Routed requests and session states decided into actions: the cases of one statement or
//! pipeline (`single.rs`) and of transactions across shards and resharding (`transactions.rs`),
//! each a table run through [`check`].

mod single;
mod transactions;

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
    /// Messages were read before the refused one.
    read_before_refusal: bool,
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
        read_before_refusal: false,
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

    /// The router refused a message after others of the segment were read.
    fn refused_after_others(mut self, sqlstate: &'static str) -> Case {
        self.refusal = Some(sqlstate);
        self.read_before_refusal = true;
        self
    }
}

/// `INSERT` rows for several shards, routed.
fn split(loaded: &Loaded) -> Target {
    let sql = "INSERT INTO users (id) VALUES (1), (2), (3), (4), (5), (6)";
    match route(loaded, &plan(&loaded.config, sql), sql, &()) {
        Ok((target @ Target::Split(_), _)) => target,
        other => panic!("not a split: {other:?}"),
    }
}

/// `COPY` into a sharded table, routed.
fn copy(loaded: &Loaded) -> Target {
    let sql = "COPY users FROM STDIN";
    match route(loaded, &plan(&loaded.config, sql), sql, &()) {
        Ok((target @ Target::Copy(_), _)) => target,
        other => panic!("not a copy: {other:?}"),
    }
}

/// A read only PostgreSQL can answer once the rows are in one place, routed.
fn pull(loaded: &Loaded) -> Target {
    let sql = "SELECT count(DISTINCT name) FROM users";
    match route(loaded, &plan(&loaded.config, sql), sql, &()) {
        Ok((target @ Target::Pull { .. }, _)) => target,
        other => panic!("not a pull-up: {other:?}"),
    }
}

/// An `INSERT … SELECT` into a sharded table, routed.
fn insert_select(loaded: &Loaded) -> Target {
    let sql = "INSERT INTO events SELECT * FROM users";
    match route(loaded, &plan(&loaded.config, sql), sql, &()) {
        Ok((target @ Target::InsertSelect(_), _)) => target,
        other => panic!("not an INSERT … SELECT: {other:?}"),
    }
}

/// A `SET` of a setting PostgreSQL reports to the client.
fn datestyle() -> StatementKind {
    StatementKind::Set {
        name: "datestyle".into(),
        value: "German".into(),
    }
}

/// A `SET` of a setting PostgreSQL does not report.
fn set() -> StatementKind {
    StatementKind::Set {
        name: "search_path".into(),
        value: "app".into(),
    }
}

fn savepoint(op: SavepointOp) -> StatementKind {
    StatementKind::Savepoint {
        op,
        name: "s1".into(),
    }
}

fn scatter() -> Target {
    Target::Scatter(vec![0, 1, 2, 3])
}

fn gather() -> Target {
    Target::Gather(vec![0, 1, 2, 3])
}

fn one(shard: ShardId) -> Option<Target> {
    Some(Target::Shard(shard))
}

/// Decides every case and compares the action with the expected one.
fn check(loaded: &Loaded, cases: Vec<Case>) {
    let config = &loaded.config;
    let mut one_shard = config.clone();
    one_shard.cross_shard_transactions = false;
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
            read_before_refusal: case.read_before_refusal,
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
