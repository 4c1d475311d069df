//! Answers the proxy gives itself: the [`LocalAnswer`]s the decision chose (a held `BEGIN` and
//! what follows it before any shard, `DISCARD ALL`, `COMMIT` outside a transaction), applied to
//! the session's state, and route introspection ([`explain`]).

pub(crate) mod explain;

use bytes::{BufMut, Bytes, BytesMut};
use shardline_router::{SavepointOp, StatementKind};

use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::encoding::{ClientEncoding, TextError};
use crate::session::decide::{local_answer, LocalAnswer, TxPhase};
use crate::session::state::settings::{apply_effects, effect_of};
use crate::session::Session;

/// A simple-protocol `Query` message.
pub fn query_message(sql: &str) -> Bytes {
    query_message_bytes(sql.as_bytes())
}

/// A `Query` message of text already in the backend's encoding.
fn query_message_bytes(sql: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(sql.len() + 6);
    buf.put_u8(b'Q');
    buf.put_i32(sql.len() as i32 + 5);
    buf.put_slice(sql);
    buf.put_u8(0);
    buf.freeze()
}

/// A `Query` message running `sql` (the client's text, or SQL made from it) in `encoding`,
/// the `client_encoding` of the backend it goes to.
pub fn query_message_in(encoding: ClientEncoding, sql: &str) -> Result<Bytes, TextError> {
    if sql.is_ascii() {
        return Ok(query_message(sql));
    }
    encoding
        .encode(sql)
        .map(|bytes| query_message_bytes(&bytes))
}

impl Session {
    /// Answers `kind` (whose text is `sql`) without a backend when the proxy can, updating the
    /// session's state, and returns what the client is sent.
    pub(crate) fn answer_locally(&mut self, kind: &StatementKind, sql: &str) -> Option<Bytes> {
        let answer = local_answer(kind, TxPhase::of(&self.tx))?;
        let tag = match answer {
            LocalAnswer::HoldBegin => {
                self.tx.begin = Some(sql.to_owned());
                self.tx.settings_before = Some(self.settings.clone());
                "BEGIN"
            }
            LocalAnswer::HoldSetting { tag } => {
                self.tx.replay.push(sql.to_owned());
                if self.tx.settings_before.is_none() {
                    self.tx.settings_before = Some(self.settings.clone());
                }
                if let Some(effect) = effect_of(kind) {
                    apply_effects(&mut self.settings, &[effect]);
                }
                tag
            }
            LocalAnswer::HoldSavepoint { op } => {
                let StatementKind::Savepoint { name, .. } = kind else {
                    return None;
                };
                if op != SavepointOp::Define && !self.tx.has_savepoint(name) {
                    self.tx.fail();
                    return Some(msg::error(
                        sqlstate::INVALID_SAVEPOINT_SPECIFICATION,
                        &format!("savepoint \"{name}\" does not exist"),
                    ));
                }
                let restored = self.tx.record_savepoint(op, name, &self.settings);
                self.restore_settings(restored);
                self.tx.failed = false;
                match op {
                    SavepointOp::Define => "SAVEPOINT",
                    SavepointOp::Release => "RELEASE",
                    SavepointOp::RollbackTo => "ROLLBACK",
                }
            }
            LocalAnswer::EndHeld { commit } => {
                let tx = std::mem::take(&mut self.tx);
                if commit {
                    "COMMIT"
                } else {
                    if let Some(before) = tx.settings_before {
                        self.settings = before;
                    }
                    "ROLLBACK"
                }
            }
            LocalAnswer::NoTransaction { tag } => {
                let mut reply = BytesMut::new();
                reply.extend_from_slice(&msg::warning(
                    sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                    "there is no transaction in progress",
                ));
                reply.extend_from_slice(&msg::command_complete(tag));
                return Some(reply.freeze());
            }
            LocalAnswer::DiscardAll => {
                self.statements.clear();
                let before =
                    std::mem::replace(&mut self.settings, self.identity.startup_settings.clone());
                // As PostgreSQL, report the reported settings the reset changed, with the
                // values the client was told at login.
                let mut reply = BytesMut::new();
                for (name, value) in self.identity.reported.iter() {
                    let key = name.to_ascii_lowercase();
                    if before.get(&key) != self.settings.get(&key) {
                        reply.extend_from_slice(&msg::parameter_status(name, value));
                    }
                }
                reply.extend_from_slice(&msg::command_complete("DISCARD ALL"));
                return Some(reply.freeze());
            }
            LocalAnswer::DeallocateAll => {
                self.statements.clear();
                "DEALLOCATE ALL"
            }
            LocalAnswer::Deallocate => {
                let StatementKind::Deallocate { name } = kind else {
                    return None;
                };
                if self.statements.get(name.as_bytes()).is_none() {
                    // As PostgreSQL: the error fails a transaction block.
                    self.tx.fail();
                    return Some(msg::error(
                        sqlstate::INVALID_SQL_STATEMENT_NAME,
                        &format!("prepared statement \"{name}\" does not exist"),
                    ));
                }
                self.statements.close(name.as_bytes());
                "DEALLOCATE"
            }
        };
        Some(msg::command_complete(tag))
    }
}
