//! The client's transaction as the proxy tracks it: a held `BEGIN`, the shard the transaction
//! runs on, and the failed state after the proxy refused a statement inside one.

use std::collections::BTreeMap;

use shardline_router::{KeyValue, ShardId};

use crate::session::state::settings::Settings;

/// Transaction state as the client sees it.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// `BEGIN` (and `SET LOCAL`s) held until the first routed statement.
    pub(crate) held: Vec<String>,
    /// Shard the open transaction runs on.
    pub(crate) shard: Option<ShardId>,
    /// The proxy refused a statement inside the transaction: like PostgreSQL, everything but
    /// `ROLLBACK` now fails.
    pub(crate) failed: bool,
    /// Client settings when the transaction began, restored if it rolls back.
    pub(crate) settings_before: Option<Settings>,
    /// Moving keys the transaction wrote during a resharding migration, copied to their new
    /// owners when it commits.
    pub(crate) dual: DualKeys,
    /// The shard reported the transaction failed (`ReadyForQuery` status `E`): its `COMMIT`
    /// only rolls back.
    pub(crate) failed_on_shard: bool,
}

impl Transaction {
    /// A transaction block is open (held or running on a shard).
    pub(crate) fn open(&self) -> bool {
        !self.held.is_empty() || self.shard.is_some()
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
