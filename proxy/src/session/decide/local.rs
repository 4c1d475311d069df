//! Statements the proxy answers itself: a `BEGIN` it holds until the first statement that
//! needs a shard, the end of a transaction that never reached one, `SET`s inside such a
//! transaction, `COMMIT`/`ROLLBACK` outside any, and `DISCARD ALL` / `DEALLOCATE ALL`, which in
//! transaction pooling must clear the client's state, not a shared backend's.

use shardline_router::{SavepointOp, StatementKind};

use crate::protocol::backend::sqlstate;
use crate::session::state::transaction::Transaction;
use crate::session::ClientError;

/// Where the client's transaction stands, as far as local answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxPhase {
    /// No transaction block.
    Idle,
    /// `BEGIN` held: no statement has reached a shard yet.
    Held { failed: bool },
    /// The transaction runs on shards.
    Started { failed: bool },
}

impl TxPhase {
    /// The phase of `tx`.
    pub(crate) fn of(tx: &Transaction) -> TxPhase {
        match (tx.home(), tx.begin.is_some()) {
            (Some(_), _) => TxPhase::Started { failed: tx.failed },
            (None, true) => TxPhase::Held { failed: tx.failed },
            (None, false) => TxPhase::Idle,
        }
    }
}

/// An answer the proxy gives without a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalAnswer {
    /// `BEGIN`: held, answered `BEGIN`.
    HoldBegin,
    /// `SET`, `RESET`, `SET LOCAL` inside a held transaction: held with it, replayed when it
    /// reaches a shard, undone if it rolls back.
    HoldSetting { tag: &'static str },
    /// A savepoint command inside a held transaction: recorded, replayed when it reaches a
    /// shard. `ROLLBACK TO` also ends a failure of the held transaction.
    HoldSavepoint { op: SavepointOp },
    /// `COMMIT`/`ROLLBACK` of a held transaction: it ends without a shard. A failed one, or a
    /// `ROLLBACK`, undoes its settings and answers `ROLLBACK`.
    EndHeld { commit: bool },
    /// `COMMIT`/`ROLLBACK` outside a transaction: PostgreSQL's warning and the tag.
    NoTransaction { tag: &'static str },
    /// `DISCARD ALL` outside a transaction: the client's statements and settings are reset.
    DiscardAll,
    /// `DEALLOCATE ALL` outside a failed transaction: the client's statements are forgotten
    /// (the proxy's statements on shared backends stay, under their proxy names).
    DeallocateAll,
    /// `DEALLOCATE name` outside a failed transaction: that client statement is forgotten.
    Deallocate,
}

impl LocalAnswer {
    /// The transaction's phase after the answer.
    pub(crate) fn next_phase(self, phase: TxPhase) -> TxPhase {
        match self {
            LocalAnswer::HoldBegin => TxPhase::Held { failed: false },
            LocalAnswer::HoldSetting { .. } => phase,
            LocalAnswer::HoldSavepoint { .. } => TxPhase::Held { failed: false },
            LocalAnswer::DeallocateAll | LocalAnswer::Deallocate => phase,
            LocalAnswer::EndHeld { .. }
            | LocalAnswer::NoTransaction { .. }
            | LocalAnswer::DiscardAll => TxPhase::Idle,
        }
    }
}

/// The answer the proxy gives `kind` itself in `phase`, if it does.
pub(crate) fn local_answer(kind: &StatementKind, phase: TxPhase) -> Option<LocalAnswer> {
    let held = matches!(phase, TxPhase::Held { failed: false });
    Some(match (kind, phase) {
        (StatementKind::Begin, TxPhase::Idle) => LocalAnswer::HoldBegin,
        (StatementKind::Commit | StatementKind::Rollback, TxPhase::Held { failed }) => {
            LocalAnswer::EndHeld {
                commit: *kind == StatementKind::Commit && !failed,
            }
        }
        (StatementKind::Commit, TxPhase::Idle) => LocalAnswer::NoTransaction { tag: "COMMIT" },
        (StatementKind::Rollback, TxPhase::Idle) => LocalAnswer::NoTransaction { tag: "ROLLBACK" },
        (StatementKind::SetLocal | StatementKind::Set { .. }, _) if held => {
            LocalAnswer::HoldSetting { tag: "SET" }
        }
        (StatementKind::Reset { .. } | StatementKind::ResetAll, _) if held => {
            LocalAnswer::HoldSetting { tag: "RESET" }
        }
        (StatementKind::Savepoint { op, .. }, _) if held => LocalAnswer::HoldSavepoint { op: *op },
        (
            StatementKind::Savepoint {
                op: SavepointOp::RollbackTo,
                ..
            },
            TxPhase::Held { failed: true },
        ) => LocalAnswer::HoldSavepoint {
            op: SavepointOp::RollbackTo,
        },
        (StatementKind::DiscardAll, TxPhase::Idle) => LocalAnswer::DiscardAll,
        (
            StatementKind::DeallocateAll,
            TxPhase::Idle | TxPhase::Held { failed: false } | TxPhase::Started { failed: false },
        ) => LocalAnswer::DeallocateAll,
        (
            StatementKind::Deallocate { .. },
            TxPhase::Idle | TxPhase::Held { failed: false } | TxPhase::Started { failed: false },
        ) => LocalAnswer::Deallocate,
        _ => return None,
    })
}

/// The error for statements sent after the transaction failed.
pub(crate) fn aborted() -> ClientError {
    ClientError::new(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}
