//! `INSERT INTO t … SELECT …` with `t` sharded (planned by `shardline_router::insert_select`).
//!
//! On the default shard's backend, in a transaction of its own: the staging table shaped like
//! `t` is created, the sharded tables the `SELECT` reads are pulled in (see [`super::pull`]),
//! the client's `SELECT` fills the staging table (bound with the client's values in the
//! extended protocol), and the staged rows stream out with `COPY … TO STDOUT`. They go into
//! `t`'s shards as the rows of a routed `COPY` (see [`super::copy_in`]), which commit together
//! with two-phase commit: the statement loads all of its rows or none. The staging
//! transaction is rolled back at the end, taking the temporary tables with it.
//!
//! Inside a client's transaction block the rows must go through the transaction's own
//! backends — the default shard's among them, which also stages them — so they are staged
//! under a savepoint, held in the proxy (within `max_pull_rows`) and routed once the staging
//! is rolled back to its savepoint. Outside a block they are held the same way when the
//! default shard's pool has no second connection free at once.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use shardline_router::insert_select::InsertSelect;
use shardline_router::placeholders::ShardStatement;
use shardline_router::ShardId;

use crate::backend::pool::Pooled;
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::frontend::unnamed_execution;
use crate::protocol::Frame;
use crate::session::link::attach::{drain_to_ready, ready_status};
use crate::session::multi::copy_in::RowSource;
use crate::session::multi::gather::{Delivery, MergeFailure, Source};
use crate::session::multi::pull::read_answer;
use crate::session::multi::twophase::Part;
use crate::session::{local, ClientError, Session, SessionEnd};

impl Session {
    /// Runs `plan`; `source` is the client's statement, whose parameters the `SELECT` reads.
    pub(crate) async fn insert_select(
        &mut self,
        loaded: &Loaded,
        plan: &InsertSelect,
        source: &Source<'_>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        if delivery.extended && delivery.describe && !plan.returns_rows() {
            // An INSERT without RETURNING describes no rows (one with it is described by the
            // shards that run it).
            self.out.push(&msg::empty(tag::NO_DATA)).await?;
        }
        let home = loaded.config.default_shard;
        let name = self.shard_names(&[home]);
        let in_block = self.tx.open();
        let stage = if in_block {
            &plan.stage_in_transaction
        } else {
            &plan.stage
        };
        let mut conn = match self.pulled(loaded, home, &plan.pulled, stage, None).await {
            Ok(conn) => conn,
            Err(error) => {
                return self
                    .complete(Err(MergeFailure::Query(error)), delivery)
                    .await
            }
        };
        // Streaming needs a second connection to the default shard while the staging one is
        // busy; it is taken only if the pool has it at once, so a statement never waits for
        // its own pool (with as many such statements as connections, they would wait on each
        // other). Inside a block there is one backend per shard: the rows are held.
        let streaming = !in_block && self.reserve_now(loaded, home).await;
        let mut rows = VecDeque::new();
        let mut result = self.unload(&mut conn, home, &name, plan, source).await;
        if result.is_ok() && !streaming {
            result =
                buffer_copy_out(&mut conn, &name, loaded.config.max_pull_rows, &mut rows).await;
        }
        if let Err(error) = result {
            self.release_reserved(home);
            let clean = end_staging(&mut conn, plan, in_block).await;
            self.let_go(home, conn, clean);
            return self
                .complete(Err(MergeFailure::Query(error)), delivery)
                .await;
        }
        if !streaming {
            let clean = end_staging(&mut conn, plan, in_block).await;
            self.let_go(home, conn, clean);
            let mut rows = RowSource::Buffered(rows);
            return self.load(loaded, plan, delivery, &mut rows).await;
        }
        let mut rows = RowSource::Shard {
            conn: &mut conn,
            name,
            ended: false,
        };
        let result = self.load(loaded, plan, delivery, &mut rows).await;
        // Unused when the default shard does not hold the table.
        self.release_reserved(home);
        let RowSource::Shard { ended, .. } = rows else {
            return result;
        };
        // A COPY that ended (or failed) leaves the backend reading commands in the staging
        // transaction; one cut off mid-stream can only be closed.
        let clean = ended
            && ready_status(&mut conn).await.is_some()
            && end_staging(&mut conn, plan, in_block).await;
        self.let_go(home, conn, clean);
        result
    }

    /// Routes the staged rows from `rows` into the target's shards.
    async fn load(
        &mut self,
        loaded: &Loaded,
        plan: &InsertSelect,
        delivery: &Delivery,
        rows: &mut RowSource<'_>,
    ) -> Result<(), SessionEnd> {
        let apply = plan.apply.as_ref();
        self.copy_split(loaded, &plan.copy, &plan.spec, apply, delivery, rows)
            .await
    }

    /// Fills the staging table with the client's `SELECT` and starts copying it out.
    async fn unload(
        &mut self,
        conn: &mut Pooled,
        home: ShardId,
        name: &str,
        plan: &InsertSelect,
        source: &Source<'_>,
    ) -> Result<(), ClientError> {
        let statement = ShardStatement {
            sql: plan.fill.clone(),
            params: (0..source.params().len()).collect(),
        };
        let fill = source
            .request(&statement, &[], self.encoding())
            .map_err(ClientError::from)?;
        conn.send(&fill)
            .await
            .map_err(|e| ClientError::lost_shard(name, e))?;
        read_answer(conn, name).await?;
        self.start_copy(conn, home, name, &plan.unload, tag::COPY_OUT_RESPONSE)
            .await
    }
}

/// Ends the staging: its own transaction is rolled back, or, inside the client's block, the
/// block returns to the savepoint taken before it. True when the backend is as it was.
async fn end_staging(conn: &mut Pooled, plan: &InsertSelect, in_block: bool) -> bool {
    if !in_block {
        return roll_back(conn).await;
    }
    !conn.broken
        && conn
            .send(&local::query_message(&plan.unstage))
            .await
            .is_ok()
        && ready_status(conn).await.is_some_and(|s| s != b'I')
}

/// Ends the staging transaction; true when the backend is idle again.
async fn roll_back(conn: &mut Pooled) -> bool {
    !conn.broken
        && conn.send(&local::query_message("ROLLBACK")).await.is_ok()
        && drain_to_ready(conn).await
}

/// Reads a started `COPY … TO STDOUT` to its `ReadyForQuery`, keeping its rows while there are
/// at most `budget` of them; past it the rest are read and dropped, and the statement fails
/// (the backend stays usable).
async fn buffer_copy_out(
    conn: &mut Pooled,
    name: &str,
    budget: u64,
    rows: &mut VecDeque<Frame>,
) -> Result<(), ClientError> {
    let mut seen: u64 = 0;
    let mut failure = None;
    loop {
        let frame = conn
            .read()
            .await
            .map_err(|e| ClientError::from_backend(name, &e))?;
        match frame.tag() {
            tag::COPY_DATA => {
                seen += 1;
                if seen <= budget {
                    rows.push_back(frame);
                } else {
                    rows.clear();
                }
            }
            tag::ERROR_RESPONSE => failure = Some(ClientError::from_shard(frame.bytes(), name)),
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    if seen > budget {
        return Err(ClientError::new(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "INSERT … SELECT inside a transaction block holds its {seen} rows in the proxy, more than max_pull_rows ({budget}); run it outside the transaction block (it streams there), restrict the SELECT, or raise max_pull_rows in shards.yaml"
            ),
        ));
    }
    Ok(())
}

/// The statements each shard runs once its rows of an `INSERT … SELECT … ON CONFLICT |
/// RETURNING` arrived ([`Apply`](shardline_router::insert_select::Apply)).
pub(super) struct ApplySteps {
    /// The insert, run in the extended protocol with the client's result formats.
    pub(super) insert: String,
    /// Drops the table the rows arrived in.
    pub(super) drop: String,
}

/// What the shards' inserts did.
pub(super) struct Applied {
    /// Rows inserted or updated, over every shard.
    pub(super) count: u64,
    /// The `RowDescription` of the returned rows (the first shard's), if they return any.
    pub(super) description: Option<Bytes>,
    /// The returned rows, every shard's, in the client's result formats.
    pub(super) rows: Vec<Bytes>,
}

/// Runs `steps` on every part once its rows arrived: adds up the rows its insert inserted or
/// updated and keeps the rows it returned (at most `budget` of them over every shard: they
/// wait in the proxy until the statement committed everywhere).
pub(super) async fn apply_rows(
    parts: &mut [Part],
    steps: &ApplySteps,
    formats: &[i16],
    budget: u64,
) -> Result<Applied, ClientError> {
    let mut applied = Applied {
        count: 0,
        description: None,
        rows: Vec::new(),
    };
    for part in parts.iter_mut() {
        let name = part.name.clone();
        let encoding = part.conn.client_encoding();
        let insert = encoding.encode(&steps.insert).map_err(ClientError::from)?;
        let mut out = BytesMut::from(&unnamed_execution(&insert, formats)[..]);
        out.extend_from_slice(&local::query_message(&steps.drop));
        part.conn
            .send(&out)
            .await
            .map_err(|e| ClientError::lost_shard(&name, e))?;
        let mut error = None;
        let mut cycles = 2;
        while cycles > 0 {
            let frame = part
                .conn
                .read()
                .await
                .map_err(|e| ClientError::from_backend(&name, &e))?;
            match frame.tag() {
                tag::ROW_DESCRIPTION => {
                    applied
                        .description
                        .get_or_insert_with(|| frame.bytes().clone());
                }
                tag::DATA_ROW => {
                    if applied.rows.len() as u64 >= budget {
                        error.get_or_insert_with(|| returned_too_many(budget));
                    } else {
                        applied.rows.push(frame.into_bytes());
                    }
                }
                tag::COMMAND_COMPLETE => {
                    let done = msg::command_tag(frame.body());
                    if done.starts_with("INSERT") {
                        let rows = msg::tag_row_count(done).unwrap_or(0);
                        applied.count = applied.count.saturating_add(rows);
                    }
                }
                tag::ERROR_RESPONSE => {
                    error.get_or_insert_with(|| ClientError::from_shard(frame.bytes(), &name));
                }
                tag::READY_FOR_QUERY => cycles -= 1,
                _ => {}
            }
        }
        if let Some(error) = error {
            return Err(error);
        }
    }
    Ok(applied)
}

/// The refusal of an `INSERT … SELECT … RETURNING` that returns more rows than the proxy holds.
fn returned_too_many(budget: u64) -> ClientError {
    ClientError::new(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!("INSERT … SELECT … RETURNING holds the rows it returns in the proxy until it committed on every shard, and this one returns more than max_pull_rows ({budget}); nothing was inserted. Insert fewer rows at a time, leave RETURNING out, or raise max_pull_rows in shards.yaml"),
    )
}
