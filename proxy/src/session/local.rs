//! Statements the proxy answers itself: a held `BEGIN`, the end of a transaction that never
//! reached a shard, `SET LOCAL` before the first routed statement, and `DISCARD ALL` /
//! `DEALLOCATE ALL`, which in transaction pooling must clear the client's state, not a shared
//! backend's.

use bytes::{BufMut, Bytes, BytesMut};
use shardline_router::StatementKind;

use super::{ClientError, Session};
use crate::protocol::backend as msg;

/// The error for statements sent after the transaction failed.
pub fn aborted() -> ClientError {
    ClientError::new(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// A simple-protocol `Query` message.
pub fn query_message(sql: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(sql.len() + 6);
    buf.put_u8(b'Q');
    buf.put_i32(sql.len() as i32 + 5);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
    buf.freeze()
}

impl Session {
    /// Answers `kind` without a backend when the proxy can, returning the `CommandComplete`.
    pub(super) fn answer_locally(&mut self, kind: &StatementKind, sql: &str) -> Option<Bytes> {
        let reached_shard = self.tx.shard.is_some();
        let tag = match kind {
            StatementKind::Begin if !self.tx.open() => {
                self.tx.held.push(sql.to_owned());
                self.tx.settings_before = Some(self.settings.clone());
                "BEGIN"
            }
            StatementKind::Commit | StatementKind::Rollback if self.tx.open() && !reached_shard => {
                let tx = std::mem::take(&mut self.tx);
                if tx.failed || *kind == StatementKind::Rollback {
                    if let Some(before) = tx.settings_before {
                        self.settings = before;
                    }
                    "ROLLBACK"
                } else {
                    "COMMIT"
                }
            }
            StatementKind::Commit | StatementKind::Rollback
                if !self.tx.open() && !self.tx.failed =>
            {
                // PostgreSQL answers with a warning and the tag; so does the proxy, without
                // taking a backend for it.
                let tag = if *kind == StatementKind::Commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                let mut reply = BytesMut::new();
                reply.extend_from_slice(&msg::warning(
                    "25P01",
                    "there is no transaction in progress",
                ));
                reply.extend_from_slice(&msg::command_complete(tag));
                return Some(reply.freeze());
            }
            StatementKind::SetLocal if !self.tx.held.is_empty() && !self.tx.failed => {
                self.tx.held.push(sql.to_owned());
                "SET"
            }
            // A session SET inside a transaction that has not reached a shard yet: replayed
            // inside the transaction, and undone with it if it rolls back.
            StatementKind::Set { .. } | StatementKind::Reset { .. } | StatementKind::ResetAll
                if !self.tx.held.is_empty() && !self.tx.failed =>
            {
                self.tx.held.push(sql.to_owned());
                if self.tx.settings_before.is_none() {
                    self.tx.settings_before = Some(self.settings.clone());
                }
                if let Some(effect) = super::effect_of(kind) {
                    super::exchange::apply_effects(&mut self.settings, &[effect]);
                }
                if matches!(kind, StatementKind::Set { .. }) {
                    "SET"
                } else {
                    "RESET"
                }
            }
            StatementKind::DiscardAll if !self.tx.open() => {
                self.statements.clear();
                self.settings = self.identity.startup_settings.clone();
                if sql
                    .trim_start()
                    .get(..10)
                    .is_some_and(|w| w.eq_ignore_ascii_case("deallocate"))
                {
                    "DEALLOCATE ALL"
                } else {
                    "DISCARD ALL"
                }
            }
            _ => return None,
        };
        Some(msg::command_complete(tag))
    }
}
