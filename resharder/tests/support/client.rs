//! One workload client: its keys, its model of their acknowledged states, and the loop that
//! runs random statements and transactions on them through the proxy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ops::{state_of, Conn, Kind, Observed, Op, Protocol, Rng, State};
use super::{Stats, WorkloadSpec};

/// How long an ambiguous outcome is left to settle before the key is read: a `COMMIT` the
/// proxy lost track of may still be finishing on the shard.
const SETTLE: Duration = Duration::from_millis(200);

/// Why a statement failed.
enum Failure {
    /// The server or the proxy answered with this SQLSTATE: the statement (or the whole
    /// transaction) did not happen.
    Refused { code: String, message: String },
    /// The outcome is unknown: the connection broke, the call timed out, or the SQLSTATE says
    /// so (40003, class 08). `code` is what the error count is kept under.
    Unknown { code: String, message: String },
}

/// SQLSTATEs after which a statement may or may not have happened.
fn outcome_unknown(code: &str) -> bool {
    code == "40003" || code.starts_with("08")
}

fn classify(error: &tokio_postgres::Error) -> Failure {
    let message = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => format!("{error:#}"),
    };
    match error.code() {
        Some(code) if !outcome_unknown(code.code()) => Failure::Refused {
            code: code.code().to_owned(),
            message,
        },
        Some(code) => Failure::Unknown {
            code: code.code().to_owned(),
            message,
        },
        None => Failure::Unknown {
            code: "connection".to_owned(),
            message,
        },
    }
}

/// A key whose state must be read before the client goes on.
struct Pending {
    id: i64,
    /// The states the key may be in; empty when any state is accepted (a resync after a
    /// statement answered something unexpected, which is already recorded).
    candidates: Vec<State>,
    why: String,
}

/// What one client hands back when it stops.
#[derive(Default)]
pub struct ClientReport {
    pub states: BTreeMap<i64, State>,
    pub unresolved: BTreeMap<i64, Vec<State>>,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
    pub ambiguous: u64,
    pub read_mismatches: Vec<String>,
    pub violations: Vec<String>,
    pub stats: Stats,
}

/// One client of the workload.
pub struct Client {
    pub index: usize,
    pub protocol: Protocol,
    pub conninfo: String,
    pub spec: WorkloadSpec,
    pub stop: Arc<AtomicBool>,
    pub acked: Arc<AtomicU64>,
    rng: Rng,
    keys: Vec<i64>,
    conn: Option<Conn>,
    pending: Vec<Pending>,
    notes: u64,
    out: ClientReport,
}

impl Client {
    /// A client owning `spec.keys_of(index)`, all believed absent.
    pub fn new(
        index: usize,
        conninfo: String,
        spec: WorkloadSpec,
        stop: Arc<AtomicBool>,
        acked: Arc<AtomicU64>,
    ) -> Client {
        let keys: Vec<i64> = spec.keys_of(index).collect();
        let protocol = match index % 2 {
            0 => Protocol::Simple,
            _ => Protocol::Extended,
        };
        let rng = Rng::new(spec.seed ^ (index as u64 + 1).wrapping_mul(0x1000_0001));
        let out = ClientReport {
            states: keys.iter().map(|k| (*k, None)).collect(),
            ..ClientReport::default()
        };
        Client {
            index,
            protocol,
            conninfo,
            spec,
            stop,
            acked,
            rng,
            keys,
            conn: None,
            pending: Vec::new(),
            notes: 0,
            out,
        }
    }

    fn owner(&self) -> i32 {
        i32::try_from(self.index).unwrap_or(i32::MAX)
    }

    /// Connects and inserts the first `spec.initial_rows` keys; any failure is an error.
    pub async fn setup(&mut self) -> anyhow::Result<()> {
        let client = tokio::time::timeout(
            self.spec.op_timeout,
            shardline_tests::connect(&self.conninfo),
        )
        .await
        .map_err(|_| anyhow::anyhow!("client {}: connecting timed out", self.index))??;
        self.conn = Some(Conn::new(client));
        let initial: Vec<i64> = self
            .keys
            .iter()
            .copied()
            .take(self.spec.initial_rows)
            .collect();
        for id in initial {
            let note = self.note();
            let op = Op {
                kind: Kind::Insert {
                    val: 1 + self.rng.below(1000) as i64,
                    note,
                },
                returning: self.rng.chance(50),
            };
            let before = self.state(id);
            let seen = match self.exec(&op, id).await {
                Ok(seen) => seen,
                Err(Failure::Refused { code, message } | Failure::Unknown { code, message }) => {
                    anyhow::bail!(
                        "client {}: initial {op} of key {id} failed: {code} {message}",
                        self.index
                    )
                }
            };
            if let Some(wrong) = op.check(id, &before, &seen) {
                anyhow::bail!("client {}: initial insert: {wrong}", self.index);
            }
            self.out.states.insert(id, op.after(&before));
            self.ack(|s| s.writes += 1);
        }
        Ok(())
    }

    /// Runs until stopped; returns what the client saw.
    pub async fn run(mut self) -> ClientReport {
        while !self.stop.load(Ordering::Relaxed) {
            if !self.ready().await {
                return self.finish();
            }
            let roll = self.rng.below(100);
            if roll < 25 {
                self.transaction().await;
            } else if roll < 40 {
                let id = self.pick();
                self.read(id).await;
            } else {
                self.single_write().await;
            }
            let pause = self.spec.pause.as_micros() as u64;
            if pause > 0 {
                let jitter = self.rng.below(2 * pause + 1);
                tokio::time::sleep(Duration::from_micros(jitter)).await;
            }
        }
        if !self.pending.is_empty() {
            self.ready().await;
        }
        self.finish()
    }

    fn finish(mut self) -> ClientReport {
        for pending in std::mem::take(&mut self.pending) {
            self.out.violations.push(format!(
                "client {}: key {} still unresolved when the client ended ({})",
                self.index, pending.id, pending.why
            ));
            self.out.unresolved.insert(pending.id, pending.candidates);
        }
        self.out
    }

    fn pick(&mut self) -> i64 {
        let i = self.rng.below(self.keys.len() as u64) as usize;
        self.keys[i]
    }

    fn state(&self, id: i64) -> State {
        self.out.states.get(&id).cloned().flatten()
    }

    fn note(&mut self) -> String {
        self.notes += 1;
        format!("c{}-n{}", self.index, self.notes)
    }

    /// Counts an acknowledged operation.
    fn ack(&mut self, count: impl FnOnce(&mut Stats)) {
        count(&mut self.out.stats);
        match self.protocol {
            Protocol::Simple => self.out.stats.simple += 1,
            Protocol::Extended => self.out.stats.extended += 1,
        }
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    fn record_error(&mut self, failure: &Failure) {
        let (code, message) = match failure {
            Failure::Refused { code, message } | Failure::Unknown { code, message } => {
                (code, message)
            }
        };
        *self.out.errors.entry(code.clone()).or_default() += 1;
        self.out
            .error_examples
            .entry(code.clone())
            .or_insert_with(|| message.clone());
    }

    /// A random write for a key in `state`; `conflicts` allows an `INSERT` of a present key,
    /// which must fail with 23505.
    fn choose_write(&mut self, state: &State, conflicts: bool) -> Op {
        let roll = self.rng.below(100);
        let kind = match state {
            None if roll < 45 => Kind::Insert {
                val: 1 + self.rng.below(1000) as i64,
                note: self.note(),
            },
            None if roll < 75 => Kind::Upsert {
                val: 1 + self.rng.below(1000) as i64,
                note: self.note(),
            },
            None if roll < 88 => self.update(),
            None => Kind::Delete,
            Some(_) if roll < 35 => self.update(),
            Some(_) if roll < 60 => Kind::Upsert {
                val: 1 + self.rng.below(1000) as i64,
                note: self.note(),
            },
            Some(_) if roll < 90 || !conflicts => Kind::Delete,
            Some(_) => Kind::Insert {
                val: 1 + self.rng.below(1000) as i64,
                note: self.note(),
            },
        };
        Op {
            kind,
            returning: self.rng.chance(50),
        }
    }

    fn update(&mut self) -> Kind {
        let magnitude = 1 + self.rng.below(1000) as i64;
        let delta = if self.rng.chance(50) {
            magnitude
        } else {
            -magnitude
        };
        let note = self.rng.chance(50).then(|| self.note());
        Kind::Update { delta, note }
    }

    /// Runs one statement with the op timeout; a timeout drops the connection.
    async fn exec(&mut self, op: &Op, id: i64) -> Result<Observed, Failure> {
        let owner = self.owner();
        let cached = self.rng.chance(50);
        let (protocol, limit) = (self.protocol, self.spec.op_timeout);
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Unknown {
                code: "connection".to_owned(),
                message: "not connected".to_owned(),
            });
        };
        let result = tokio::time::timeout(limit, conn.run(protocol, op, id, owner, cached)).await;
        self.settle_connection(result)
    }

    /// Sends `BEGIN`, `COMMIT` or `ROLLBACK` with the op timeout.
    async fn control(&mut self, sql: &str) -> Result<(), Failure> {
        let (protocol, limit) = (self.protocol, self.spec.op_timeout);
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Unknown {
                code: "connection".to_owned(),
                message: "not connected".to_owned(),
            });
        };
        let result = tokio::time::timeout(limit, conn.control(protocol, sql)).await;
        self.settle_connection(result)
    }

    /// Turns a timed call's result into ours, dropping the connection when it timed out,
    /// broke, or closed.
    fn settle_connection<T>(
        &mut self,
        result: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, Failure> {
        let outcome = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_) => Err(Failure::Unknown {
                code: "timeout".to_owned(),
                message: format!("no answer within {:?}", self.spec.op_timeout),
            }),
        };
        let closed = self.conn.as_ref().is_none_or(|c| c.client.is_closed());
        if closed || matches!(outcome, Err(Failure::Unknown { .. })) {
            self.conn = None;
        }
        outcome
    }

    /// Ends a transaction that failed; any trouble doing so drops the connection.
    async fn rollback(&mut self) {
        if self.conn.is_some() && self.control("ROLLBACK").await.is_err() {
            self.conn = None;
        }
    }

    /// Reconnects when needed and resolves pending keys; false when that could not be done
    /// within `spec.reconnect_for` (recorded as a violation).
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + self.spec.reconnect_for;
        let mut last = String::new();
        loop {
            if self.conn.is_none() {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    shardline_tests::connect(&self.conninfo),
                )
                .await
                {
                    Ok(Ok(client)) => {
                        self.out.stats.reconnects += 1;
                        self.conn = Some(Conn::new(client));
                    }
                    Ok(Err(e)) => last = format!("connecting: {e:#}"),
                    Err(_) => last = "connecting: timed out".to_owned(),
                }
            }
            if self.conn.is_some() {
                match self.resolve().await {
                    Ok(()) => return true,
                    Err(why) => last = why,
                }
            }
            if Instant::now() > deadline {
                self.out.violations.push(format!(
                    "client {}: could not reconnect and resolve {} pending key(s) within {:?}: {last}",
                    self.index,
                    self.pending.len(),
                    self.spec.reconnect_for
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads every pending key and takes what it finds as acknowledged: a violation unless it
    /// is one of the key's candidate states.
    async fn resolve(&mut self) -> Result<(), String> {
        if self.pending.iter().any(|p| !p.candidates.is_empty()) {
            tokio::time::sleep(SETTLE).await;
        }
        while let Some(pending) = self.pending.first() {
            let id = pending.id;
            let seen = match self.exec(&Op::read(), id).await {
                Ok(seen) => seen,
                Err(failure) => {
                    self.record_error(&failure);
                    self.rollback_if_refused(&failure).await;
                    return Err(format!("reading key {id}: {}", describe(&failure)));
                }
            };
            let pending = self.pending.remove(0);
            let rows = seen.rows.unwrap_or_default();
            let found = state_of(&rows);
            let expected = found
                .as_ref()
                .is_some_and(|s| pending.candidates.is_empty() || pending.candidates.contains(s));
            if !expected {
                self.out.violations.push(format!(
                    "client {}: key {id} read {rows:?} after {}, expected one of {:?}",
                    self.index, pending.why, pending.candidates
                ));
            }
            let state = found.unwrap_or_else(|| pending.candidates.first().cloned().flatten());
            self.out.states.insert(id, state);
        }
        Ok(())
    }

    async fn rollback_if_refused(&mut self, failure: &Failure) {
        if matches!(failure, Failure::Refused { .. }) {
            self.rollback().await;
        }
    }

    /// Queues a read of `id` that accepts whatever it finds (the statement that answered
    /// unexpectedly is already recorded).
    fn resync(&mut self, id: i64, why: String) {
        self.pending.push(Pending {
            id,
            candidates: Vec::new(),
            why,
        });
    }

    /// Records an unknown outcome of a write: the key is either in `before` or in `after`.
    fn ambiguous(&mut self, id: i64, before: State, after: State, why: String) {
        self.out.ambiguous += 1;
        self.pending.push(Pending {
            id,
            candidates: vec![before, after],
            why,
        });
    }

    /// A read compared with the acknowledged state.
    async fn read(&mut self, id: i64) {
        let op = Op::read();
        let before = self.state(id);
        match self.exec(&op, id).await {
            Ok(seen) => match op.check(id, &before, &seen) {
                None => self.ack(|s| s.reads += 1),
                Some(wrong) => {
                    self.out
                        .read_mismatches
                        .push(format!("client {}: {wrong}", self.index));
                    self.resync(id, "a read mismatch".to_owned());
                }
            },
            Err(failure) => self.record_error(&failure),
        }
    }

    /// One statement in autocommit mode.
    async fn single_write(&mut self) {
        let id = self.pick();
        let before = self.state(id);
        let op = self.choose_write(&before, true);
        let after = op.after(&before);
        match self.exec(&op, id).await {
            Ok(seen) => {
                if let Some(code) = op.expected_error(&before) {
                    self.out.violations.push(format!(
                        "client {}: key {id}: {op} on acknowledged state {before:?} succeeded, expected SQLSTATE {code}",
                        self.index
                    ));
                    self.resync(id, format!("{op} that should have failed"));
                } else if let Some(wrong) = op.check(id, &before, &seen) {
                    self.out
                        .read_mismatches
                        .push(format!("client {}: {wrong}", self.index));
                    self.resync(id, format!("{op} answering unexpectedly"));
                } else {
                    self.out.states.insert(id, after);
                    self.ack(|s| s.writes += 1);
                }
            }
            Err(failure) => self.write_failed(id, &op, before, after, failure),
        }
    }

    /// Books a failed autocommit write.
    fn write_failed(&mut self, id: i64, op: &Op, before: State, after: State, failure: Failure) {
        match &failure {
            Failure::Refused { code, .. } if Some(code.as_str()) == op.expected_error(&before) => {
                self.ack(|s| s.provoked += 1);
            }
            Failure::Refused { .. } => self.record_error(&failure),
            Failure::Unknown { .. } => {
                self.record_error(&failure);
                let why = format!("{op} with unknown outcome ({})", describe(&failure));
                self.ambiguous(id, before, after, why);
            }
        }
    }

    /// `BEGIN`, 2–3 statements on one key (maybe a read of it), then `COMMIT` (or, one time in
    /// five, `ROLLBACK`). Simple-protocol clients sometimes send it all as one query string.
    async fn transaction(&mut self) {
        let id = self.pick();
        let before = self.state(id);
        let commit = !self.rng.chance(20);
        if self.protocol == Protocol::Simple && self.rng.chance(30) {
            return self.one_string_transaction(id, before, commit).await;
        }
        if let Err(failure) = self.control("BEGIN").await {
            self.record_error(&failure);
            self.rollback_if_refused(&failure).await;
            return;
        }
        let mut state = before.clone();
        let statements = 2 + self.rng.below(2);
        for n in 0..statements {
            let op = if n > 0 && self.rng.chance(20) {
                Op::read()
            } else {
                self.choose_write(&state, true)
            };
            match self.exec(&op, id).await {
                Ok(seen) => {
                    if let Some(code) = op.expected_error(&state) {
                        self.out.violations.push(format!(
                            "client {}: key {id}: {op} in a transaction on state {state:?} succeeded, expected SQLSTATE {code}",
                            self.index
                        ));
                        self.rollback().await;
                        self.resync(id, format!("{op} that should have failed"));
                        return;
                    }
                    if let Some(wrong) = op.check(id, &state, &seen) {
                        self.out
                            .read_mismatches
                            .push(format!("client {}: in a transaction: {wrong}", self.index));
                        self.rollback().await;
                        self.resync(id, "a transaction answering unexpectedly".to_owned());
                        return;
                    }
                    state = op.after(&state);
                }
                Err(failure) => {
                    // Nothing was committed: whatever the failure, the key is as before.
                    match &failure {
                        Failure::Refused { code, .. }
                            if Some(code.as_str()) == op.expected_error(&state) =>
                        {
                            self.ack(|s| s.provoked += 1);
                        }
                        _ => self.record_error(&failure),
                    }
                    self.rollback().await;
                    return;
                }
            }
        }
        if !commit {
            match self.control("ROLLBACK").await {
                Ok(()) => self.ack(|s| s.rolled_back += 1),
                Err(failure) => self.record_error(&failure),
            }
            if self.rng.chance(50) {
                self.read(id).await;
            }
            return;
        }
        match self.control("COMMIT").await {
            Ok(()) => {
                self.out.states.insert(id, state);
                self.ack(|s| s.committed += 1);
            }
            Err(failure @ Failure::Refused { .. }) => {
                self.record_error(&failure);
                self.rollback().await;
            }
            Err(failure) => {
                self.record_error(&failure);
                let why = format!("COMMIT with unknown outcome ({})", describe(&failure));
                self.ambiguous(id, before, state, why);
            }
        }
    }

    /// `BEGIN; s1; s2[; s3]; COMMIT` (or `ROLLBACK`) as one simple query.
    async fn one_string_transaction(&mut self, id: i64, before: State, commit: bool) {
        let owner = self.owner();
        let mut state = before.clone();
        let mut ops = Vec::new();
        for _ in 0..2 + self.rng.below(2) {
            let op = self.choose_write(&state, false);
            state = op.after(&state);
            ops.push(op);
        }
        let mut sql = String::from("BEGIN; ");
        for op in &ops {
            sql.push_str(&op.simple_sql(id, owner));
            sql.push_str("; ");
        }
        sql.push_str(if commit { "COMMIT" } else { "ROLLBACK" });
        let limit = self.spec.op_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let result = tokio::time::timeout(limit, conn.simple(&sql)).await;
        match self.settle_connection(result) {
            Ok(results) => {
                let mut wrong = Vec::new();
                if results.len() != ops.len() + 2 {
                    wrong.push(format!(
                        "{} results for {} statements",
                        results.len(),
                        ops.len() + 2
                    ));
                }
                let mut tentative = before.clone();
                for (op, seen) in ops.iter().zip(results.iter().skip(1)) {
                    if let Some(w) = op.check(id, &tentative, seen) {
                        wrong.push(w);
                    }
                    tentative = op.after(&tentative);
                }
                if wrong.is_empty() {
                    if commit {
                        self.out.states.insert(id, state);
                        self.ack(|s| s.committed += 1);
                    } else {
                        self.ack(|s| s.rolled_back += 1);
                    }
                } else {
                    self.out.read_mismatches.push(format!(
                        "client {}: one-string transaction {sql:?}: {}",
                        self.index,
                        wrong.join("; ")
                    ));
                    self.resync(id, "a transaction answering unexpectedly".to_owned());
                }
            }
            Err(failure @ Failure::Refused { .. }) => {
                self.record_error(&failure);
                self.rollback().await;
            }
            Err(failure) => {
                self.record_error(&failure);
                if commit {
                    let why = format!(
                        "one-string transaction with unknown outcome ({})",
                        describe(&failure)
                    );
                    self.ambiguous(id, before, state, why);
                }
            }
        }
    }
}

fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Refused { code, message } | Failure::Unknown { code, message } => {
            format!("{code} {message}")
        }
    }
}
