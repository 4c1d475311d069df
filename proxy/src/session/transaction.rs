//! Transactions as the client sees them: a held `BEGIN`, the shard a transaction is pinned
//! to, and the failed state after the proxy refused a statement inside one.

use shardline_router::ShardId;

use super::dual::DualKeys;
use super::settings::Settings;
use super::{ClientError, Session};
use crate::protocol::backend::sqlstate;

/// Transaction state as the client sees it.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// `BEGIN` (and `SET LOCAL`s) held until the first routed statement.
    pub(super) held: Vec<String>,
    /// Shard the open transaction runs on.
    pub(super) shard: Option<ShardId>,
    /// The proxy refused a statement inside the transaction: like PostgreSQL, everything but
    /// `ROLLBACK` now fails.
    pub(super) failed: bool,
    /// Client settings when the transaction began, restored if it rolls back.
    pub(super) settings_before: Option<Settings>,
    /// Moving keys the transaction wrote during a resharding migration, copied to their new
    /// owners when it commits.
    pub(super) dual: DualKeys,
    /// The shard reported the transaction failed (`ReadyForQuery` status `E`): its `COMMIT`
    /// only rolls back.
    pub(super) failed_on_shard: bool,
}

impl Transaction {
    pub(super) fn open(&self) -> bool {
        !self.held.is_empty() || self.shard.is_some()
    }

    pub(super) fn status(&self) -> u8 {
        match (self.failed, self.open()) {
            (true, _) => b'E',
            (false, true) => b'T',
            (false, false) => b'I',
        }
    }
}

impl Session {
    /// Refuses a statement inside a transaction: the transaction is failed, as in PostgreSQL.
    pub(super) fn fail_transaction(&mut self) {
        if self.tx.open() {
            self.tx.failed = true;
        }
    }

    /// A multi-shard statement cannot join a single-shard transaction (two-phase commit is
    /// not built yet).
    pub(super) fn check_scatter_allowed(&mut self, shards: &[ShardId]) -> Result<(), ClientError> {
        if !self.tx.open() {
            return Ok(());
        }
        self.fail_transaction();
        let names = self.shard_names(shards);
        Err(ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "this statement needs shards {names}, but a transaction can only use one shard; run it outside the transaction block"
            ),
        ))
    }

    pub(super) fn shard_names(&self, shards: &[ShardId]) -> String {
        let loaded = self.ctx.snapshot();
        let names: Vec<&str> = shards
            .iter()
            .filter_map(|s| loaded.config.shards.get(*s).map(|s| s.name.as_str()))
            .collect();
        names.join(", ")
    }

    /// Checks that a statement for `shard` may run in the current transaction.
    pub(super) fn check_pinned(&mut self, shard: ShardId) -> Result<(), ClientError> {
        match self.tx.shard {
            Some(pinned) if pinned != shard => {
                self.fail_transaction();
                let (pinned_name, wanted) =
                    (self.shard_names(&[pinned]), self.shard_names(&[shard]));
                Err(ClientError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "this transaction runs on shard {pinned_name}, but this statement needs shard {wanted}; a transaction must stay on one shard (keep its statements on one shard key, or split it)"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}
