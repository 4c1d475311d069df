//! Workload and checker for resharding integrity tests.
//!
//! [`Workload`] runs concurrent clients through the proxy on the table [`ITEMS_DDL`] creates:
//! half in the simple protocol (literal SQL), half in the extended protocol (`$n`
//! parameters, statements prepared per execution or cached per connection). Each client owns
//! its keys (see [`WorkloadSpec::keys_of`]) and loops over random `INSERT`s, relative
//! `UPDATE`s, `DELETE`s and relative upserts, reads, and transactions of 2–3 statements on one
//! key (committed, or rolled back on purpose). It keeps each key's last acknowledged state,
//! checks every answer (row counts, `RETURNING` rows, reads) against it, and after an
//! unknown outcome (a broken connection, SQLSTATE 40003 or class 08) reconnects and reads
//! the key to settle which state it is in.
//!
//! [`check_placement`] then reads every shard directly and counts keys that are exactly as
//! acknowledged on their owner, lost, duplicated, resurrected, wrong or left behind.
//!
//! ```ignore
//! let workload = Workload::start(conninfo, WorkloadSpec::default()).await?;
//! workload.progress(500, Duration::from_secs(30)).await?;
//! // ... migrate ...
//! let report = workload.stop().await?;
//! println!("{report}");
//! let placement = check_placement(&report, &shards, owner_by(&rule)).await?;
//! println!("{placement}");
//! assert!(report.is_clean() && placement.is_perfect());
//! ```

// Each test crate that includes this module uses (and re-exports) a different part of it.
#![allow(dead_code, unused_imports)]

mod client;
mod ops;
mod placement;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

pub use ops::{Row, State};
pub use placement::{check_placement, owner_by, FoundRow, Placement};

/// The table the workload writes.
pub const ITEMS_DDL: &str =
    "CREATE TABLE items (id bigint PRIMARY KEY, owner int NOT NULL, val bigint NOT NULL, note text)";

/// The `items` rule hashing on `id` over every shard of the test cluster, for `tables:`.
pub const ITEMS_HASH_ALL: &str = "{name: items, sharding: hash, column: id, type: int8}";

/// Adds `rule` (a flow-style table rule such as [`ITEMS_HASH_ALL`]) to the `tables:` of a
/// cluster YAML.
pub fn with_table(yaml: &str, rule: &str) -> String {
    yaml.replacen("tables:\n", &format!("tables:\n  - {rule}\n"), 1)
}

/// Distance between the key ranges of consecutive clients.
pub const CLIENT_STRIDE: i64 = 1_000_000;

/// What the workload does.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Concurrent clients; even-numbered ones use the simple protocol, odd ones the extended.
    pub clients: usize,
    /// Keys each client owns.
    pub keys_per_client: usize,
    /// Keys each client inserts before [`Workload::start`] returns (its first ones).
    pub initial_rows: usize,
    /// Mean pause between a client's operations (each pause is uniform in `0..=2 * pause`).
    pub pause: Duration,
    /// Seed of the clients' random choices.
    pub seed: u64,
    /// Client `i` owns `key_base + i * CLIENT_STRIDE + 1 ..= … + keys_per_client`.
    pub key_base: i64,
    /// A statement without an answer for this long counts as an unknown outcome.
    pub op_timeout: Duration,
    /// How long a client keeps trying to reconnect (and read back keys whose outcome is
    /// unknown) before it gives up and records a violation.
    pub reconnect_for: Duration,
}

impl Default for WorkloadSpec {
    fn default() -> WorkloadSpec {
        WorkloadSpec {
            clients: 8,
            keys_per_client: 100,
            initial_rows: 50,
            pause: Duration::from_millis(3),
            seed: 0x5eed,
            key_base: 0,
            op_timeout: Duration::from_secs(30),
            reconnect_for: Duration::from_secs(20),
        }
    }
}

impl WorkloadSpec {
    /// The keys client `client` owns.
    pub fn keys_of(&self, client: usize) -> impl Iterator<Item = i64> {
        let first = self.key_base + client as i64 * CLIENT_STRIDE + 1;
        first..first + self.keys_per_client as i64
    }

    /// Every key of every client.
    pub fn keys(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.clients).flat_map(|c| self.keys_of(c))
    }

    /// Whether a client of this workload owns `id`.
    pub fn owns(&self, id: i64) -> bool {
        let offset = id - self.key_base - 1;
        offset >= 0
            && offset / CLIENT_STRIDE < self.clients as i64
            && offset % CLIENT_STRIDE < self.keys_per_client as i64
    }
}

/// Acknowledged operations by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Autocommit writes (including each client's initial inserts).
    pub writes: u64,
    /// Reads that matched.
    pub reads: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions rolled back on purpose.
    pub rolled_back: u64,
    /// `INSERT`s of present keys refused with 23505, as they must be.
    pub provoked: u64,
    /// Acknowledged operations of simple-protocol clients.
    pub simple: u64,
    /// Acknowledged operations of extended-protocol clients.
    pub extended: u64,
    /// Reconnections after a broken connection.
    pub reconnects: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.writes += other.writes;
        self.reads += other.reads;
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.provoked += other.provoked;
        self.simple += other.simple;
        self.extended += other.extended;
        self.reconnects += other.reconnects;
    }
}

/// What the workload saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The last acknowledged state of every key the clients own (`None`: no row).
    pub states: BTreeMap<i64, State>,
    /// Keys whose last outcome is still unknown (the client could not read them back), with
    /// the states they may be in; [`check_placement`] accepts any of them. Each is also a
    /// violation.
    pub unresolved: BTreeMap<i64, Vec<State>>,
    /// Acknowledged operations.
    pub acked: u64,
    /// The same, by kind.
    pub stats: Stats,
    /// Failed statements by SQLSTATE (`connection` when the connection broke without one,
    /// `timeout` when no answer came); the 23505s the workload provokes are not counted.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each key of `errors`.
    pub error_examples: BTreeMap<String, String>,
    /// Writes and commits whose outcome was unknown (settled by reading the key).
    pub ambiguous: u64,
    /// Answers (reads, row counts, `RETURNING` rows) that differed from the acknowledged
    /// state.
    pub read_mismatches: Vec<String>,
    /// Everything else that cannot happen: a write that must fail succeeding, a key settled
    /// in a state no outcome explains, a client unable to reconnect.
    pub violations: Vec<String>,
}

impl Report {
    /// No mismatch, no violation, nothing unresolved. (Errors are not judged here: a test
    /// decides which SQLSTATEs it tolerates during a migration.)
    pub fn is_clean(&self) -> bool {
        self.read_mismatches.is_empty() && self.violations.is_empty() && self.unresolved.is_empty()
    }

    /// Keys whose acknowledged state has a row.
    pub fn present(&self) -> usize {
        self.states.values().filter(|s| s.is_some()).count()
    }

    /// Total failed statements.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "acked {} (simple {}, extended {}: writes {}, reads {}, committed {}, rolled back {}, provoked 23505 {}); keys {} ({} present); errors {:?}; ambiguous {}; reconnects {}; read mismatches {}; violations {}",
            self.acked,
            s.simple,
            s.extended,
            s.writes,
            s.reads,
            s.committed,
            s.rolled_back,
            s.provoked,
            self.states.len(),
            self.present(),
            self.errors,
            self.ambiguous,
            s.reconnects,
            self.read_mismatches.len(),
            self.violations.len(),
        )
    }
}

/// Clients running until [`Workload::stop`].
pub struct Workload {
    spec: WorkloadSpec,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<client::ClientReport>>,
}

impl Workload {
    /// Connects `spec.clients` clients to `conninfo` (the proxy), has each insert its first
    /// `spec.initial_rows` keys, then lets them loop. Fails if a client cannot connect or an
    /// initial insert fails (e.g. `items` is missing or not empty).
    pub async fn start(conninfo: String, spec: WorkloadSpec) -> anyhow::Result<Workload> {
        anyhow::ensure!(spec.clients > 0, "a workload needs clients");
        anyhow::ensure!(
            spec.keys_per_client > 0 && spec.keys_per_client as i64 <= CLIENT_STRIDE,
            "keys_per_client must be in 1..={CLIENT_STRIDE}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut clients: Vec<client::Client> = (0..spec.clients)
            .map(|i| {
                client::Client::new(
                    i,
                    conninfo.clone(),
                    spec.clone(),
                    stop.clone(),
                    acked.clone(),
                )
            })
            .collect();
        futures::future::try_join_all(clients.iter_mut().map(client::Client::setup)).await?;
        let tasks = clients.into_iter().map(|c| tokio::spawn(c.run())).collect();
        Ok(Workload {
            spec,
            stop,
            acked,
            tasks,
        })
    }

    /// What the workload was started with.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// Operations acknowledged so far.
    pub fn acked_ops(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` further operations have been acknowledged; fails after `limit`.
    pub async fn progress(&self, more: u64, limit: Duration) -> anyhow::Result<()> {
        let target = self.acked_ops() + more;
        let started = Instant::now();
        while self.acked_ops() < target {
            if started.elapsed() > limit {
                anyhow::bail!(
                    "the workload acknowledged {} of {more} operations in {limit:?}",
                    more + self.acked_ops() - target
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops the clients, waits for them (each finishes its current operation and settles any
    /// unknown outcome first) and merges what they saw.
    pub async fn stop(mut self) -> anyhow::Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        let limit = self.spec.op_timeout * 3 + self.spec.reconnect_for + Duration::from_secs(5);
        let mut report = Report::default();
        for (i, task) in std::mem::take(&mut self.tasks).into_iter().enumerate() {
            let client = tokio::time::timeout(limit, task)
                .await
                .map_err(|_| anyhow::anyhow!("workload client {i} did not stop within {limit:?}"))?
                .map_err(|e| anyhow::anyhow!("workload client {i} failed: {e}"))?;
            report.states.extend(client.states);
            report.unresolved.extend(client.unresolved);
            for (code, n) in client.errors {
                *report.errors.entry(code).or_default() += n;
            }
            for (code, message) in client.error_examples {
                report.error_examples.entry(code).or_insert(message);
            }
            report.ambiguous += client.ambiguous;
            report.read_mismatches.extend(client.read_mismatches);
            report.violations.extend(client.violations);
            report.stats.add(&client.stats);
        }
        report.acked = self.acked.load(Ordering::Relaxed);
        Ok(report)
    }
}

impl Drop for Workload {
    /// A workload dropped without [`Workload::stop`] (a test failing early) stops its clients.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
