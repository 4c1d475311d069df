//! A multi-row `INSERT` whose rows belong to different shards, run as one atomic statement.
//!
//! The router splits the statement into one `INSERT` per shard. Each part runs in its own
//! transaction on its shard; when every part succeeded, each transaction is prepared
//! (`PREPARE TRANSACTION`) and then committed (`COMMIT PREPARED`). If any part or any prepare
//! fails, every shard rolls back, so the client's statement either happened everywhere or
//! nowhere — never partly, as a multi-row `INSERT` on one server never does.
//!
//! A prepared transaction whose `COMMIT PREPARED` fails (the shard went away between the two
//! phases) stays durable on its shard under a `shardline_` name; the client is told which, so an
//! operator can commit it.

use bytes::{Bytes, BytesMut};
use shardline_router::split::InsertPart;
use shardline_router::ShardId;

use super::gather::{Delivery, Source};
use super::ordered::MergeFailure;
use super::{local, ClientError, Session, SessionEnd};
use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};

/// What one shard answered to its part.
#[derive(Default)]
struct PartResult {
    row_description: Option<Bytes>,
    rows: Vec<Bytes>,
    tag: Option<String>,
    error: Option<Bytes>,
}

/// One shard's part in flight.
pub(super) struct Part {
    pub(super) shard: ShardId,
    pub(super) name: String,
    pub(super) conn: Pooled,
}

impl Session {
    /// Runs the parts of a split `INSERT` atomically across their shards, in the client's
    /// protocol (`source`), answering as `delivery` says.
    pub(super) async fn insert_split(
        &mut self,
        loaded: &Loaded,
        parts: Vec<InsertPart>,
        source: &Source<'_>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        let shards: Vec<ShardId> = parts.iter().map(|p| p.shard).collect();
        if let Err(e) = self.check_scatter_allowed(&shards) {
            return self.complete(Err(MergeFailure::Query(e)), delivery).await;
        }
        let started = std::time::Instant::now();
        let gid = format!("shardline_{:016x}", rand::random::<u64>());
        let mut running = Vec::with_capacity(parts.len());
        let mut results = Vec::with_capacity(parts.len());
        let mut failure: Option<ClientError> = None;
        for part in &parts {
            let name = loaded
                .config
                .shards
                .get(part.shard)
                .map_or_else(String::new, |s| s.name.clone());
            let mut conn = match self.attach(loaded, part.shard).await {
                Ok(conn) => conn,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let (mut out, queue) =
                self.compose(&mut conn, true, |_| (Vec::new(), Default::default()));
            out.extend_from_slice(&local::query_message("BEGIN"));
            out.extend_from_slice(&source.request(&part.statement, &delivery.formats));
            let cycles = queue.len() + 2;
            let result = match conn.send(&out).await {
                Ok(()) => collect(&mut conn, cycles).await,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(result) => {
                    if let (None, Some(error)) = (&failure, &result.error) {
                        failure = Some(shard_error(error, &name));
                    }
                    results.push(result);
                }
                Err(e) => {
                    conn.broken = true;
                    failure.get_or_insert_with(|| lost(&name, &e));
                }
            }
            running.push(Part {
                shard: part.shard,
                name,
                conn,
            });
            if failure.is_some() {
                break;
            }
        }

        if failure.is_none() {
            failure = self.prepare_all(&mut running, &gid).await;
            if failure.is_none() {
                failure = commit_all(&mut running, &gid).await;
                if failure.is_none() {
                    self.release_parts(running);
                    self.ctx
                        .stats
                        .record_scatter(loaded, &shards, true, started.elapsed());
                    return self.send_merged(results, delivery).await;
                }
            }
        } else {
            for part in &mut running {
                finish_quietly(&mut part.conn, "ROLLBACK").await;
            }
        }
        self.release_parts(running);
        self.ctx
            .stats
            .record_scatter(loaded, &shards, false, started.elapsed());
        match failure {
            Some(error) => {
                self.complete(Err(MergeFailure::Query(error)), delivery)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Phase one: every part's transaction is prepared, or every one is rolled back.
    pub(super) async fn prepare_all(
        &mut self,
        running: &mut [Part],
        gid: &str,
    ) -> Option<ClientError> {
        let mut failure = None;
        let mut prepared = Vec::new();
        for (i, part) in running.iter_mut().enumerate() {
            let sql = format!("PREPARE TRANSACTION '{gid}_{i}'");
            match run(&mut part.conn, &sql).await {
                Ok(None) => prepared.push(i),
                Ok(Some(error)) => {
                    failure = Some(shard_error(&error, &part.name));
                    break;
                }
                Err(e) => {
                    part.conn.broken = true;
                    failure = Some(lost(&part.name, &e));
                    break;
                }
            }
        }
        if failure.is_some() {
            for (i, part) in running.iter_mut().enumerate() {
                if prepared.contains(&i) {
                    finish_quietly(&mut part.conn, &format!("ROLLBACK PREPARED '{gid}_{i}'")).await;
                } else {
                    finish_quietly(&mut part.conn, "ROLLBACK").await;
                }
            }
        }
        failure
    }

    /// One `RowDescription` (if the client asked), every shard's `RETURNING` rows, one summed
    /// `CommandComplete`.
    async fn send_merged(
        &mut self,
        results: Vec<PartResult>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        let mut out = BytesMut::new();
        let description = results.iter().find_map(|r| r.row_description.clone());
        match (delivery.describe, description) {
            (true, Some(description)) => out.extend_from_slice(&description),
            // No RETURNING: a described portal returns no rows, as PostgreSQL's `NoData`
            // says (the simple protocol has no Describe to answer).
            (true, None) if delivery.extended => out.extend_from_slice(&msg::empty(tag::NO_DATA)),
            _ => {}
        }
        let mut tags = Vec::new();
        for result in results {
            for row in result.rows {
                out.extend_from_slice(&row);
            }
            tags.extend(result.tag);
        }
        self.out.push(&out).await?;
        self.complete(Ok(msg::sum_tags(&tags)), delivery).await
    }

    pub(super) fn release_parts(&mut self, parts: Vec<Part>) {
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

/// Phase two: commits every prepared part. A failure here leaves that part prepared (durable,
/// awaiting `COMMIT PREPARED`), which the error names.
pub(super) async fn commit_all(running: &mut [Part], gid: &str) -> Option<ClientError> {
    let mut in_doubt = Vec::new();
    for (i, part) in running.iter_mut().enumerate() {
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
            "40003",
            format!(
                "the transaction was prepared on every shard but could not be committed on all: run COMMIT PREPARED for {} (its changes are durable there, nothing was lost)",
                in_doubt.join(", ")
            ),
        )
    })
}

/// Runs one statement; `Ok(Some(error))` when the shard answered with an error.
pub(super) async fn run(conn: &mut Pooled, sql: &str) -> Result<Option<Bytes>, String> {
    conn.send(&local::query_message(sql))
        .await
        .map_err(|e| e.to_string())?;
    collect(conn, 1).await.map(|r| r.error)
}

/// Sends a statement that must not fail the caller (cleanup); a failure marks the connection
/// broken so the pool drops it.
pub(super) async fn finish_quietly(conn: &mut Pooled, sql: &str) {
    if !matches!(run(conn, sql).await, Ok(None)) {
        conn.broken = true;
    }
}

/// Reads `cycles` answers (each ending with `ReadyForQuery`), keeping the rows and tag of the
/// last and the first error of any.
async fn collect(conn: &mut Pooled, cycles: usize) -> Result<PartResult, String> {
    let mut result = PartResult::default();
    let mut remaining = cycles;
    while remaining > 0 {
        let frame = conn.read().await.map_err(|e| e.to_string())?;
        let last = remaining == 1;
        match frame.tag() {
            tag::READY_FOR_QUERY => remaining -= 1,
            tag::ERROR_RESPONSE => {
                result.error.get_or_insert_with(|| frame.bytes().clone());
            }
            tag::ROW_DESCRIPTION if last => result.row_description = Some(frame.into_bytes()),
            tag::DATA_ROW if last => result.rows.push(frame.into_bytes()),
            tag::COMMAND_COMPLETE if last => result.tag = Some(msg::command_tag(&frame).to_owned()),
            _ => {}
        }
    }
    Ok(result)
}

pub(super) fn shard_error(error: &Bytes, shard: &str) -> ClientError {
    ClientError {
        sqlstate: sqlstate::INTERNAL,
        message: String::new(),
        frame: Some(msg::error_naming_shard(
            &crate::protocol::Frame::from_bytes(error.clone()),
            shard,
        )),
    }
}

pub(super) fn lost(shard: &str, e: &str) -> ClientError {
    ClientError::new(
        sqlstate::CONNECTION_FAILURE,
        format!("lost the connection to shard {shard}: {e}"),
    )
}
