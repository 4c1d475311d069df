//! The client's transaction as the proxy tracks it: what a shard joining it must replay (the
//! client's `BEGIN`, `SET LOCAL`s and savepoints still in force), the shards taking part, and
//! the failed state after a shard or the proxy refused a statement inside it.

use std::collections::{BTreeMap, BTreeSet};

use shardline_router::{KeyValue, SavepointOp, ShardId, StatementKind};

use crate::session::state::settings::Settings;

/// What a joining shard is sent when the client's `BEGIN` text is not known (the client began
/// its transaction inside a multi-statement query string).
const PLAIN_BEGIN: &str = "BEGIN";

/// Transaction state as the client sees it.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// The client's `BEGIN` (with its options), once it asked for a transaction block.
    pub(crate) begin: Option<String>,
    /// The transaction-scoped statements still in force after `BEGIN` (`SET LOCAL`, `SET`
    /// inside the block, savepoints), in order. With `begin`, what a shard that joins the
    /// transaction runs first, so it behaves as if it had been there from the start.
    pub(crate) replay: Vec<String>,
    /// Shards taking part, each through a backend this session holds.
    pub(crate) shards: BTreeSet<ShardId>,
    /// A statement inside the transaction failed (on a shard, or refused by the proxy): like
    /// PostgreSQL, everything but its end or `ROLLBACK TO SAVEPOINT` now fails.
    pub(crate) failed: bool,
    /// Client settings when the transaction began, restored if it rolls back.
    pub(crate) settings_before: Option<Settings>,
    /// Client settings when each savepoint still in force was defined, in order: `ROLLBACK TO`
    /// restores them, as PostgreSQL undoes the `SET`s made after the savepoint.
    settings_at_savepoints: Vec<Settings>,
    /// Moving keys the transaction wrote during a resharding migration, copied to their new
    /// owners when it commits.
    pub(crate) dual: DualKeys,
}

impl Transaction {
    /// A transaction block is open (held or running on shards).
    pub(crate) fn open(&self) -> bool {
        self.begin.is_some() || !self.shards.is_empty()
    }

    /// The shard the transaction started on, where statements about the session go.
    pub(crate) fn home(&self) -> Option<ShardId> {
        self.shards.first().copied()
    }

    /// What a shard joining the transaction runs first, as one query string.
    pub(crate) fn join_sql(&self) -> String {
        let begin = self.begin.as_deref().unwrap_or(PLAIN_BEGIN);
        std::iter::once(begin)
            .chain(self.replay.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Records a savepoint command that reached every shard (or was held), so later joiners
    /// replay what is still in force: `RELEASE` keeps what the savepoint covered but not the
    /// savepoint; `ROLLBACK TO` forgets everything after it, as PostgreSQL does, and returns
    /// the client's settings as they were at the savepoint. `current`: the settings now.
    pub(crate) fn record_savepoint(
        &mut self,
        op: SavepointOp,
        name: &str,
        current: &Settings,
    ) -> Option<Settings> {
        let defines = |entry: &String| savepoint_defined(entry).is_some_and(|n| n == name);
        let at = match op {
            SavepointOp::Define => {
                self.replay.push(format!("SAVEPOINT {}", quote_name(name)));
                self.settings_at_savepoints.push(current.clone());
                return None;
            }
            _ => self.replay.iter().rposition(defines)?,
        };
        // The savepoint's place among those in force, where its settings are kept.
        let index = self.replay[..at]
            .iter()
            .filter(|entry| savepoint_defined(entry).is_some())
            .count();
        if op == SavepointOp::Release {
            let mut kept: Vec<String> = self.replay.drain(at..).collect();
            kept.retain(|entry| savepoint_defined(entry).is_none());
            self.replay.extend(kept);
            self.settings_at_savepoints.truncate(index);
            return None;
        }
        self.replay.truncate(at + 1);
        self.settings_at_savepoints.truncate(index + 1);
        self.settings_at_savepoints.get(index).cloned()
    }

    /// Records a statement that ran on every shard of the transaction: a savepoint command, or
    /// a `SET LOCAL` (text `sql`) that shards joining later replay. Returns the settings a
    /// `ROLLBACK TO` restores.
    pub(crate) fn record(
        &mut self,
        kind: &StatementKind,
        sql: &str,
        current: &Settings,
    ) -> Option<Settings> {
        match kind {
            StatementKind::Savepoint { op, name } => self.record_savepoint(*op, name, current),
            StatementKind::SetLocal => {
                self.replay.push(sql.to_owned());
                None
            }
            _ => None,
        }
    }

    /// Whether a savepoint of this name is in force.
    pub(crate) fn has_savepoint(&self, name: &str) -> bool {
        self.replay
            .iter()
            .any(|entry| savepoint_defined(entry).is_some_and(|n| n == name))
    }

    /// Fails an open transaction, as PostgreSQL does on an error: everything but its end is
    /// refused from now on.
    pub(crate) fn fail(&mut self) {
        if self.open() {
            self.failed = true;
        }
    }

    /// The status byte of `ReadyForQuery`: idle, in a transaction, or in a failed one.
    pub(crate) fn status(&self) -> u8 {
        match (self.failed, self.open()) {
            (true, _) => b'E',
            (false, true) => b'T',
            (false, false) => b'I',
        }
    }
}

/// The savepoint a replayed `SAVEPOINT` entry defines.
fn savepoint_defined(entry: &str) -> Option<String> {
    let quoted = entry.strip_prefix("SAVEPOINT \"")?.strip_suffix('"')?;
    Some(quoted.replace("\"\"", "\""))
}

/// A savepoint name as a quoted identifier.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Moving keys a transaction wrote, by table, each with its new owner.
#[derive(Debug, Default)]
pub(crate) struct DualKeys {
    pub(crate) tables: BTreeMap<String, Vec<(KeyValue, ShardId)>>,
}

impl DualKeys {
    pub(crate) fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub(crate) fn merge(&mut self, other: DualKeys) {
        for (table, keys) in other.tables {
            let mine = self.tables.entry(table).or_default();
            for key in keys {
                if !mine.contains(&key) {
                    mine.push(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_datestyle(value: &str) -> Settings {
        [("datestyle".to_owned(), value.to_owned())]
            .into_iter()
            .collect()
    }

    #[test]
    fn rollback_to_restores_the_settings_of_its_savepoint() {
        let mut tx = Transaction::default();
        let (iso, german, sql) = (
            with_datestyle("ISO"),
            with_datestyle("German"),
            with_datestyle("SQL"),
        );
        assert_eq!(tx.record_savepoint(SavepointOp::Define, "a", &iso), None);
        assert_eq!(tx.record_savepoint(SavepointOp::Define, "b", &german), None);
        // Back to b: the settings when b was defined; b stays, so again later.
        assert_eq!(
            tx.record_savepoint(SavepointOp::RollbackTo, "b", &sql),
            Some(german.clone())
        );
        assert_eq!(
            tx.record_savepoint(SavepointOp::RollbackTo, "b", &sql),
            Some(german)
        );
        // Releasing b keeps what it covered; back to a restores a's settings.
        assert_eq!(tx.record_savepoint(SavepointOp::Release, "b", &sql), None);
        assert_eq!(
            tx.record_savepoint(SavepointOp::RollbackTo, "a", &sql),
            Some(iso)
        );
        assert_eq!(tx.replay, ["SAVEPOINT \"a\""]);
        // An unknown savepoint changes nothing.
        assert_eq!(
            tx.record_savepoint(SavepointOp::RollbackTo, "zz", &sql),
            None
        );
        assert_eq!(tx.replay, ["SAVEPOINT \"a\""]);
    }
}
