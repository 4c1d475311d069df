//! The kit every multi-shard write commits with: each shard's part runs in a transaction of its
//! own; when every part succeeded they are prepared (`PREPARE TRANSACTION`) and then committed
//! (`COMMIT PREPARED`), so the work happens on every shard or on none. One part commits in one
//! phase, as PostgreSQL would.
//!
//! A prepared transaction whose `COMMIT PREPARED` fails (the shard went away between the two
//! phases) stays durable on its shard under a `shardline_` name; the client is told which, so an
//! operator can commit it.

use bytes::Bytes;
use shardline_router::ShardId;

use crate::backend::pool::{Pooled, Pools};
use crate::protocol::backend::{self as msg, sqlstate, tag};
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
}

/// A fresh name for one distributed transaction; part `i` is prepared as `<name>_<i>`.
pub(crate) fn transaction_name() -> String {
    format!("shardline_{:016x}", rand::random::<u64>())
}

/// Commits every part: in one phase when there is one, else prepared everywhere first. On a
/// failure before the decision every part is rolled back; the error says what happened.
pub(crate) async fn commit_parts(parts: &mut [Part]) -> Option<ClientError> {
    if let [only] = parts {
        return match run(&mut only.conn, "COMMIT").await {
            Ok(None) => None,
            Ok(Some(error)) => Some(ClientError::from_shard(&error, &only.name)),
            Err(e) => {
                only.conn.broken = true;
                Some(ClientError::lost_shard(&only.name, e))
            }
        };
    }
    let gid = transaction_name();
    prepare_all(parts, &gid)
        .await
        .or(commit_all(parts, &gid).await)
}

/// Phase one: every part's transaction is prepared, or every one is rolled back.
async fn prepare_all(parts: &mut [Part], gid: &str) -> Option<ClientError> {
    let mut failure = None;
    let mut prepared = Vec::new();
    for (i, part) in parts.iter_mut().enumerate() {
        let sql = format!("PREPARE TRANSACTION '{gid}_{i}'");
        match run(&mut part.conn, &sql).await {
            Ok(None) => prepared.push(i),
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
        for (i, part) in parts.iter_mut().enumerate() {
            if prepared.contains(&i) {
                finish_quietly(&mut part.conn, &format!("ROLLBACK PREPARED '{gid}_{i}'")).await;
            } else {
                finish_quietly(&mut part.conn, "ROLLBACK").await;
            }
        }
    }
    failure
}

/// Phase two: commits every prepared part. A failure here leaves that part prepared (durable,
/// awaiting `COMMIT PREPARED`), which the error names.
async fn commit_all(parts: &mut [Part], gid: &str) -> Option<ClientError> {
    let mut in_doubt = Vec::new();
    for (i, part) in parts.iter_mut().enumerate() {
        let name = format!("{gid}_{i}");
        let committed = matches!(
            run(&mut part.conn, &format!("COMMIT PREPARED '{name}'")).await,
            Ok(None)
        );
        if !committed {
            part.conn.broken = true;
            tracing::error!(shard = %part.name, transaction = %name, "COMMIT PREPARED failed; the transaction stays prepared on the shard");
            in_doubt.push(format!("{name} on shard {}", part.name));
        }
    }
    (!in_doubt.is_empty()).then(|| {
        ClientError::new(
            sqlstate::STATEMENT_COMPLETION_UNKNOWN,
            format!(
                "the transaction was prepared on every shard but could not be committed on all: run COMMIT PREPARED for {} (its changes are durable there, nothing was lost)",
                in_doubt.join(", ")
            ),
        )
    })
}

/// Rolls every part back, quietly.
pub(crate) async fn roll_back_parts(parts: &mut [Part]) {
    for part in parts {
        finish_quietly(&mut part.conn, "ROLLBACK").await;
    }
}

/// Runs one statement; `Ok(Some(error))` when the shard answered with an error.
pub(crate) async fn run(conn: &mut Pooled, sql: &str) -> Result<Option<Bytes>, String> {
    conn.send(&local::query_message(sql))
        .await
        .map_err(|e| e.to_string())?;
    collect(conn, 1).await.map(|r| r.error)
}

/// Sends a statement that must not fail the caller (cleanup); a failure marks the connection
/// broken so the pool drops it.
pub(crate) async fn finish_quietly(conn: &mut Pooled, sql: &str) {
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
            tag::ROW_DESCRIPTION if last => answer.row_description = Some(frame.into_bytes()),
            tag::DATA_ROW if last => answer.rows.push(frame.into_bytes()),
            tag::COMMAND_COMPLETE if last => answer.tag = Some(msg::command_tag(&frame).to_owned()),
            _ => {}
        }
    }
    Ok(answer)
}

impl Session {
    /// Gives the parts' backends back: broken ones are closed, the rest released (or kept in
    /// session mode).
    pub(crate) fn release_parts(&mut self, parts: Vec<Part>) {
        for part in parts {
            if part.conn.broken {
                self.forget_cancel_key(&part.conn);
                Pools::discard(part.conn);
            } else {
                self.keep_or_release(part.shard, part.conn, false);
            }
        }
    }
}
