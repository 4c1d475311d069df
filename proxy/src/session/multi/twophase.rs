//! The kit every multi-shard write commits with: each shard's part runs in a transaction of its
//! own; when every part succeeded, one part (the decider) commits and the others follow its
//! decision through two-phase commit ([`commit_parts`]), so the work happens on every shard or
//! on none, even across a crash of the proxy. One part commits in one phase, as PostgreSQL
//! would.

use bytes::Bytes;
use shardline_router::indoubt::{self, Kind};
use shardline_router::ShardId;

use crate::backend::pool::{Pooled, Pools};
use crate::context::ProxyContext;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::Frame;
use crate::session::multi::ordered::field;
use crate::session::state::settings::quote_literal;
use crate::session::state::statements;
use crate::session::{local, ClientError, Session};

/// One shard's part of a multi-shard write, running inside a transaction on its backend.
pub(crate) struct Part {
    pub(crate) shard: ShardId,
    pub(crate) name: String,
    pub(crate) conn: Pooled,
}

/// What a backend answered to the statements it was sent.
#[derive(Default)]
pub(crate) struct Answer {
    /// The last statement's row description, rows and tag.
    pub(crate) row_description: Option<Bytes>,
    pub(crate) rows: Vec<Bytes>,
    pub(crate) tag: Option<String>,
    /// The first error of any statement.
    pub(crate) error: Option<Bytes>,
    /// `ParameterStatus` messages: settings the statements changed (or a rollback reverted).
    pub(crate) reported: Vec<Bytes>,
}

/// Why a one-phase commit did not succeed.
pub(crate) enum CommitError {
    /// The shard refused to commit: its part is rolled back.
    Aborted(ClientError),
    /// The connection broke while the shard committed: whether it did is not known.
    Unknown(ClientError),
}

impl CommitError {
    /// The error the client is told.
    pub(crate) fn into_error(self) -> ClientError {
        match self {
            CommitError::Aborted(error) | CommitError::Unknown(error) => error,
        }
    }
}

/// Commits every part: in one phase when there is one; else the first part decides. The
/// decider's transaction records the decision ([`record_decision`]), the others are prepared
/// (`PREPARE TRANSACTION`) under names that carry the decider's xid and the decision row's digest
/// (`shardline_router::indoubt`), the decider commits in one phase, and the others are then
/// committed (`COMMIT PREPARED`). A failure before the decision rolls every part back (the
/// decider too) and is returned. After the decision the transaction is committed whatever
/// happens: a part whose `COMMIT PREPARED` fails stays prepared until the resolver finishes it
/// from the decider's record, which is logged, not returned. When the decider's own commit has
/// an unknown outcome (its connection broke), the prepared parts are left to the resolver,
/// which follows whatever the decider did, and the unknown outcome is returned.
pub(crate) async fn commit_parts(ctx: &ProxyContext, parts: &mut [Part]) -> Option<ClientError> {
    let (decider, others) = parts.split_first_mut()?;
    if others.is_empty() {
        return commit_one(decider).await.err().map(CommitError::into_error);
    }
    let participants: Vec<&str> = others.iter().map(|part| part.name.as_str()).collect();
    let recorded = record_decision(ctx, &mut decider.conn, &decider.name, &participants).await;
    let decision = match recorded {
        Ok(decision) => decision,
        Err(error) => {
            roll_back_parts(parts).await;
            return Some(error);
        }
    };
    let decider_name = decider.name.clone();
    let gid = |part: &Part| decision.gid(Kind::Transaction, &decider_name, &part.name);
    let mut prepared = 0;
    let mut failure = None;
    for part in others.iter_mut() {
        let sql = format!("PREPARE TRANSACTION {}", quote_literal(&gid(part)));
        match end_transaction(&mut part.conn, &sql, "PREPARE TRANSACTION").await {
            Ok(None) => prepared += 1,
            Ok(Some(error)) => {
                failure = Some(ClientError::from_shard(&error, &part.name));
                break;
            }
            Err(e) => {
                part.conn.broken = true;
                failure = Some(ClientError::lost_shard(&part.name, e));
                break;
            }
        }
    }
    if failure.is_some() {
        // Nothing was decided: the decider's transaction is still open on its backend.
        finish_quietly(&mut decider.conn, "ROLLBACK").await;
    } else {
        match commit_one(decider).await {
            Ok(()) => {}
            Err(CommitError::Aborted(error)) => failure = Some(error),
            Err(CommitError::Unknown(error)) => {
                for part in others.iter() {
                    tracing::warn!(shard = %part.name, transaction = %gid(part), "the decider's commit has an unknown outcome; the resolver finishes this prepared transaction from its record");
                }
                return Some(error);
            }
        }
    }
    let committed = failure.is_none();
    let verb = if committed { "COMMIT" } else { "ROLLBACK" };
    for (i, part) in others.iter_mut().enumerate() {
        if i >= prepared {
            finish_quietly(&mut part.conn, "ROLLBACK").await;
            continue;
        }
        let name = gid(part);
        let sql = format!("{verb} PREPARED {}", quote_literal(&name));
        if !matches!(run(&mut part.conn, &sql).await, Ok(None)) {
            part.conn.broken = true;
            tracing::error!(shard = %part.name, transaction = %name, "{verb} PREPARED failed; the resolver finishes it from the decider's record");
        }
    }
    failure
}

/// Commits one part in one phase. If its connection breaks the outcome is unknown: the error
/// says so (the resolver settles the other parts from this part's record either way).
pub(crate) async fn commit_one(part: &mut Part) -> Result<(), CommitError> {
    match end_transaction(&mut part.conn, "COMMIT", "COMMIT").await {
        Ok(None) => Ok(()),
        Ok(Some(error)) => Err(CommitError::Aborted(ClientError::from_shard(
            &error, &part.name,
        ))),
        Err(e) => {
            part.conn.broken = true;
            Err(CommitError::Unknown(ClientError::new(
                sqlstate::STATEMENT_COMPLETION_UNKNOWN,
                format!(
                    "lost the connection to shard {} while it committed ({e}); whether the transaction committed is not known (the other shards follow its outcome)",
                    part.name
                ),
            )))
        }
    }
}

/// A decision recorded in a decider's transaction: the part of the participants' names that
/// finds it (`<xid>:<digest>:<server>:<database oid>`).
pub(crate) struct Decision(String);

impl Decision {
    /// The name `participant` prepares its part under.
    pub(crate) fn gid(&self, kind: Kind, decider: &str, participant: &str) -> String {
        indoubt::gid(kind, &self.0, decider, participant)
    }
}

/// Records, in the transaction open on `conn` (shard `shard`, the decider), the decision its
/// commit will make durable, naming the `participants`' shards (`schema/decisions.sql`,
/// installed first if this proxy has not seen it there). Runs just before they prepare.
pub(crate) async fn record_decision(
    ctx: &ProxyContext,
    conn: &mut Pooled,
    shard: &str,
    participants: &[&str],
) -> Result<Decision, ClientError> {
    let location = ctx
        .decisions
        .ensure(&ctx.snapshot().config, shard, &conn.target().database)
        .await?;
    let nonce = indoubt::nonce(rand::random());
    let sql = indoubt::record_sql(&nonce, participants);
    match query_value(conn, shard, &sql).await {
        Ok(recorded) => Ok(Decision(format!("{recorded}:{location}"))),
        Err(error) => {
            // Dropped since this proxy installed it.
            let missing = [sqlstate::UNDEFINED_TABLE, sqlstate::INVALID_SCHEMA_NAME];
            if missing.contains(&error.code().as_str()) {
                ctx.decisions.forget(shard);
            }
            Err(error)
        }
    }
}

/// The one value a one-row query returns on `conn`, a backend of shard `shard`.
pub(crate) async fn query_value(
    conn: &mut Pooled,
    shard: &str,
    sql: &str,
) -> Result<String, ClientError> {
    send_query(conn, shard, sql).await?;
    read_value(conn, shard, sql).await
}

/// Sends `sql` as a simple query, whose answer [`read_value`] reads (queries to several
/// backends are sent first and read after, one round trip for all).
pub(crate) async fn send_query(
    conn: &mut Pooled,
    shard: &str,
    sql: &str,
) -> Result<(), ClientError> {
    conn.send(&local::query_message(sql)).await.map_err(|e| {
        conn.broken = true;
        ClientError::lost_shard(shard, e)
    })
}

/// The one value the query `sql` sent to `conn` returns.
pub(crate) async fn read_value(
    conn: &mut Pooled,
    shard: &str,
    sql: &str,
) -> Result<String, ClientError> {
    let answer = collect(conn, 1).await.map_err(|e| {
        conn.broken = true;
        ClientError::lost_shard(shard, e)
    })?;
    if let Some(error) = answer.error {
        return Err(ClientError::from_shard(&error, shard));
    }
    answer
        .rows
        .first()
        .and_then(|row| {
            field(&Frame::from_bytes(row.clone()), 0)
                .flatten()
                .map(<[u8]>::to_vec)
        })
        .and_then(|value| String::from_utf8(value).ok())
        .ok_or_else(|| {
            ClientError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("shard {shard} answered {sql} without a value"),
            )
        })
}

/// Rolls every part back and returns the `ParameterStatus` messages of the first (the settings
/// the transaction changed, reverted; every part reverts the same ones).
pub(crate) async fn roll_back_reporting(parts: &mut [Part]) -> Vec<Bytes> {
    let mut reported = None;
    for part in parts {
        let sent = part.conn.send(&local::query_message("ROLLBACK")).await;
        let answer = match sent {
            Ok(()) => collect(&mut part.conn, 1).await.ok(),
            Err(_) => None,
        };
        match answer {
            Some(answer) if answer.error.is_none() => {
                reported.get_or_insert(answer.reported);
            }
            _ => part.conn.broken = true,
        }
    }
    reported.unwrap_or_default()
}

/// Rolls every part back, quietly.
pub(crate) async fn roll_back_parts(parts: &mut [Part]) {
    for part in parts {
        finish_quietly(&mut part.conn, "ROLLBACK").await;
    }
}

/// Runs one statement; `Ok(Some(error))` when the shard answered with an error.
pub(crate) async fn run(conn: &mut Pooled, sql: &str) -> Result<Option<Bytes>, String> {
    let message = local::query_message_in(conn.client_encoding(), sql)
        .map_err(|e| ClientError::from(e).message)?;
    conn.send(&message).await.map_err(|e| e.to_string())?;
    collect(conn, 1).await.map(|r| r.error)
}

/// Runs `COMMIT` or `PREPARE TRANSACTION` and checks that it did what it says: PostgreSQL
/// answers either, in a transaction that had failed, with the tag `ROLLBACK` and no error.
pub(crate) async fn end_transaction(
    conn: &mut Pooled,
    sql: &str,
    expected: &str,
) -> Result<Option<Bytes>, String> {
    conn.send(&local::query_message(sql))
        .await
        .map_err(|e| e.to_string())?;
    let answer = collect(conn, 1).await?;
    Ok(match (answer.error, answer.tag) {
        (Some(error), _) => Some(error),
        (None, Some(tag)) if tag == expected => None,
        (None, tag) => Some(msg::error(
            sqlstate::TRANSACTION_ROLLBACK,
            &format!(
                "{sql} answered {} instead of {expected}: the transaction had failed and was rolled back",
                tag.unwrap_or_default()
            ),
        )),
    })
}

/// Sends a statement that must not fail the caller (cleanup); a failure marks the connection
/// broken so the pool drops it.
pub(crate) async fn finish_quietly(conn: &mut Pooled, sql: &str) {
    if sql.starts_with("ROLLBACK") {
        statements::undone();
    }
    if !matches!(run(conn, sql).await, Ok(None)) {
        conn.broken = true;
    }
}

/// Reads `cycles` answers (each ending with `ReadyForQuery`), keeping the rows and tag of the
/// last and the first error of any.
pub(crate) async fn collect(conn: &mut Pooled, cycles: usize) -> Result<Answer, String> {
    let mut answer = Answer::default();
    let mut remaining = cycles;
    while remaining > 0 {
        let frame = conn.read().await.map_err(|e| e.to_string())?;
        let last = remaining == 1;
        match frame.tag() {
            tag::READY_FOR_QUERY => remaining -= 1,
            tag::ERROR_RESPONSE => {
                answer.error.get_or_insert_with(|| frame.bytes().clone());
            }
            tag::PARAMETER_STATUS => answer.reported.push(frame.into_bytes()),
            tag::ROW_DESCRIPTION if last => answer.row_description = Some(frame.into_bytes()),
            tag::DATA_ROW if last => answer.rows.push(frame.into_bytes()),
            tag::COMMAND_COMPLETE if last => {
                answer.tag = Some(msg::command_tag(frame.body()).to_owned())
            }
            _ => {}
        }
    }
    Ok(answer)
}

impl Session {
    /// What a part's backend is sent before its statement: `BEGIN` for a transaction of the
    /// statement's own, nothing inside the client's transaction (the shard joined it).
    pub(crate) fn part_begin(&self) -> Option<Bytes> {
        (!self.tx.open()).then(|| local::query_message("BEGIN"))
    }

    /// Ends the parts of a statement that succeeded everywhere: committed together, or, inside
    /// the client's transaction, left to its `COMMIT`. Returns the error that rolled them back.
    pub(crate) async fn settle_parts(&mut self, mut parts: Vec<Part>) -> Option<ClientError> {
        let failure = if self.tx.open() {
            None
        } else {
            commit_parts(&self.ctx, &mut parts).await
        };
        self.release_parts(parts);
        failure
    }

    /// Ends the parts of a statement that failed: rolled back, or, inside the client's
    /// transaction, left failed with it until its `ROLLBACK`.
    pub(crate) async fn abandon_parts(&mut self, mut parts: Vec<Part>) {
        if self.tx.open() {
            self.tx.fail();
        } else {
            roll_back_parts(&mut parts).await;
        }
        self.release_parts(parts);
    }

    /// Gives the parts' backends back: broken ones are closed, the rest released (or kept in
    /// session mode).
    pub(crate) fn release_parts(&mut self, parts: Vec<Part>) {
        for part in parts {
            if part.conn.broken {
                Pools::discard(part.conn);
            } else {
                self.keep_or_release(part.shard, part.conn, false);
            }
        }
    }
}
