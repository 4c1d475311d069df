//! Statements about the client's transaction block once shards take part in it: savepoints
//! and `SET LOCAL`, which reach every shard of the transaction and are recorded for shards that
//! join later ([`Session::everywhere`]), and its end ([`Session::finish_transaction`]).
//!
//! `ROLLBACK` (or the end of a failed transaction) rolls every shard back. `COMMIT` first asks
//! each shard whether the transaction wrote there (`pg_current_xact_id_if_assigned()`): shards
//! that wrote nothing commit in one phase first (a failure there still rolls everything back);
//! then the shards that wrote commit together — in one phase when only one wrote, else through
//! two-phase commit decided by one of them ([`twophase::commit_parts`]). The client hears
//! `COMMIT` only once the decision is durable.

use std::collections::BTreeSet;

use bytes::Bytes;
use shardline_router::{SavepointOp, ShardId, StatementKind};

use crate::backend::conn::Backend;
use crate::context::{Loaded, ProxyContext};
use crate::protocol::backend::sqlstate;
use crate::session::link::outgoing::Outgoing;
use crate::session::multi::twophase::{
    self, commit_parts, roll_back_parts, roll_back_reporting, Part,
};
use crate::session::state::settings::Settings;
use crate::session::state::statements;
use crate::session::state::transaction::Transaction;
use crate::session::SessionEnd;
use crate::session::{ClientError, Session};

/// Whether a shard's transaction has written anything.
const WROTE_SQL: &str = "SELECT pg_current_xact_id_if_assigned() IS NOT NULL";

impl Session {
    /// Runs savepoint commands or `SET LOCAL`s (`statements`: each kind with its text) on every
    /// shard of the transaction, with the messages `build` makes, and records them for shards
    /// that join later. A `ROLLBACK TO` ends the transaction's failure when every shard accepts
    /// it.
    pub(crate) async fn everywhere<F>(
        &mut self,
        loaded: &Loaded,
        statements: &[(&StatementKind, &str)],
        mut build: F,
    ) -> Result<(), SessionEnd>
    where
        F: FnMut(&mut Backend, &mut Outgoing),
    {
        let rolls_back_to = |kind: &StatementKind| {
            matches!(
                kind,
                StatementKind::Savepoint {
                    op: SavepointOp::RollbackTo,
                    ..
                }
            )
        };
        if statements.iter().any(|(kind, _)| rolls_back_to(kind)) {
            // A shard that refuses it fails the transaction again.
            self.tx.failed = false;
        }
        let shards: Vec<ShardId> = self.tx.shards.iter().copied().collect();
        match shards.as_slice() {
            [only] => {
                self.exchange(loaded, *only, |conn, out| build(conn, out))
                    .await?
            }
            _ => self.scatter(loaded, &shards, false, build).await?,
        }
        if !self.tx.failed {
            for (kind, sql) in statements {
                self.record_in_transaction(kind, sql);
            }
        }
        Ok(())
    }

    /// Records a savepoint command or `SET LOCAL` that ran on every shard of the transaction
    /// (text `sql`) for shards that join later; a `ROLLBACK TO` also restores the client's
    /// settings to what they were at the savepoint.
    pub(crate) fn record_in_transaction(&mut self, kind: &StatementKind, sql: &str) {
        let restored = self.tx.record(kind, sql, &self.settings);
        self.restore_settings(restored);
    }

    /// Puts back the client's settings a `ROLLBACK TO` restored. The participants' backends
    /// reverted theirs too; they are synced afresh before their next statement.
    pub(crate) fn restore_settings(&mut self, restored: Option<Settings>) {
        let Some(restored) = restored.filter(|r| *r != self.settings) else {
            return;
        };
        self.settings = restored;
        for shard in &self.tx.shards {
            if let Some(conn) = self.conns.get_mut(shard) {
                conn.settings = None;
            }
        }
    }

    /// Ends the client's transaction on every shard it spans; returns the command tag
    /// (`COMMIT`, or `ROLLBACK` when it was rolled back) or the error that rolled it back, and
    /// the `ParameterStatus` messages of the settings a rollback reverted, which the client is
    /// owed. Either way the transaction is over afterwards.
    pub(crate) async fn finish_transaction(
        &mut self,
        commit: bool,
    ) -> (Result<&'static str, ClientError>, Vec<Bytes>) {
        let commit = commit && !self.tx.failed;
        let tx = std::mem::take(&mut self.tx);
        let (mut parts, missing) = self.take_parts(&tx);
        let mut reported = Vec::new();
        let result = match (commit, missing) {
            (false, _) => {
                reported = roll_back_reporting(&mut parts).await;
                Ok("ROLLBACK")
            }
            (true, Some(shard)) => {
                roll_back_parts(&mut parts).await;
                Err(ClientError::new(
                    sqlstate::TRANSACTION_ROLLBACK,
                    format!("the connection to shard {shard} was lost during the transaction; it was rolled back on every shard"),
                ))
            }
            (true, None) if !tx.dual.is_empty() => {
                // Moving keys are copied to their new owners only by a one-shard commit; the
                // decision never lets such a transaction spread, so this is a backstop.
                roll_back_parts(&mut parts).await;
                Err(ClientError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "a transaction that wrote keys a resharding migration is moving cannot span shards; it was rolled back on every shard",
                ))
            }
            (true, None) => commit_everywhere(&self.ctx, &mut parts)
                .await
                .map(|()| "COMMIT"),
        };
        if result != Ok("COMMIT") {
            // What the transaction created is gone with it.
            statements::undone();
            // Settings changed inside the transaction are undone with it, on the client and on
            // the backends (which are synced afresh next time).
            if let Some(before) = tx.settings_before {
                self.settings = before;
            }
            for part in &mut parts {
                part.conn.settings = None;
            }
        }
        self.release_parts(parts);
        (result, reported)
    }

    /// The transaction's backends as parts, and the name of a shard whose backend is gone.
    /// The default shard comes first: the first part decides the commit (committing in one
    /// phase), and the default shard's may hold the temporary tables of a pull-up, with which
    /// PostgreSQL cannot `PREPARE TRANSACTION`.
    fn take_parts(&mut self, tx: &Transaction) -> (Vec<Part>, Option<String>) {
        let mut parts = Vec::with_capacity(tx.shards.len());
        let mut missing = None;
        let default = self.ctx.snapshot().config.default_shard;
        let (first, rest): (Vec<ShardId>, Vec<ShardId>) = tx
            .shards
            .iter()
            .copied()
            .partition(|shard| *shard == default);
        for shard in first.into_iter().chain(rest) {
            let name = self.shard_names(&[shard]);
            match self.conns.remove(&shard) {
                Some(conn) => parts.push(Part { shard, name, conn }),
                None => missing = Some(name),
            }
        }
        (parts, missing)
    }
}

/// Commits `parts`: those that wrote nothing first, then the writers together (no two-phase
/// commit, and no decision to record, for shards that only read).
pub(crate) async fn commit_everywhere(
    ctx: &ProxyContext,
    parts: &mut [Part],
) -> Result<(), ClientError> {
    // Asked of every shard at once, answers read after: one round trip.
    let mut asked = 0;
    let mut failure = None;
    for part in parts.iter_mut() {
        match twophase::send_query(&mut part.conn, &part.name, WROTE_SQL).await {
            Ok(()) => asked += 1,
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let mut writers = BTreeSet::new();
    for part in parts.iter_mut().take(asked) {
        match twophase::read_value(&mut part.conn, &part.name, WROTE_SQL).await {
            Ok(value) if value == "t" => {
                writers.insert(part.shard);
            }
            Ok(_) => {}
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failure {
        roll_back_parts(parts).await;
        return Err(error);
    }
    // Writers first, in shard order (the first decides), then the shards that only read.
    parts.sort_by_key(|part| !writers.contains(&part.shard));
    let (writing, reading) = parts.split_at_mut(writers.len());
    for i in 0..reading.len() {
        if let Err(error) = twophase::commit_one(&mut reading[i]).await {
            // A shard that only read decides nothing: whatever became of its commit, the
            // writers roll back.
            roll_back_parts(writing).await;
            roll_back_parts(&mut reading[i + 1..]).await;
            return Err(error.into_error());
        }
    }
    match commit_parts(ctx, writing).await {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
