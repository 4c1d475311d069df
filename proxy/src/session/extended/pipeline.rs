//! Pipelines: the extended-protocol messages a client sends up to one `Sync`, which
//! PostgreSQL runs as one implicit transaction.
//!
//! Most pipelines touch one shard and run there as they are. A pipeline whose statements need
//! different shards (a driver's batch API: `executemany`, `executeBatch`, pipeline mode) is
//! *spread*: on each shard it reaches, the proxy turns the implicit transaction into an
//! explicit one (`BEGIN` run inside the pipeline also takes in what already ran there), runs
//! each statement on its shard in the client's order, and at the client's `Sync` commits every
//! shard together with two-phase commit — or rolls every shard back if any statement failed.
//! The client sees one server: its answers in order, one `ReadyForQuery`, all or nothing.
//!
//! After an error PostgreSQL ignores a pipeline's messages up to `Sync`; so does the proxy
//! (`skip_to_sync`), and at that `Sync` it aborts whatever the pipeline left open on its
//! backends before answering the one `ReadyForQuery`.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;

use shardline_router::{Config, ShardId, StatementKind};

use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::frontend::{ABORT_PIPELINE, BEGIN_IN_PIPELINE, FLUSH, SYNC};
use crate::session::decide::{local_answer, Target, TxPhase};
use crate::session::extended::messages::build_messages;
use crate::session::extended::segment::{Item, Segment};
use crate::session::link::attach::ready_status;
use crate::session::link::exchange::{Expect, Mode, Reply};
use crate::session::link::outgoing::Outgoing;
use crate::session::multi::transaction::commit_everywhere;
use crate::session::multi::twophase::{finish_quietly, roll_back_parts, Part};
use crate::session::state::statements::{self, Statement};
use crate::session::{ClientError, Session, SessionEnd};

/// A pipeline running on several shards, each inside a transaction the proxy opened.
#[derive(Debug, Default)]
pub(crate) struct Spread {
    /// Shards whose backend runs this pipeline's transaction.
    joined: BTreeSet<ShardId>,
    /// Where the last statement ran: messages that name no shard go there.
    last: Option<ShardId>,
    /// The pipeline runs inside the client's transaction block: its shards join that
    /// transaction, and its `Sync` ends nothing.
    in_transaction: bool,
}

/// Consecutive messages of a segment that end with one `Execute`, and where they run.
struct Unit {
    items: Range<usize>,
    place: Place,
}

/// Where a unit of a spread pipeline runs.
enum Place {
    /// Messages that name no shard: where the last statement ran.
    Last,
    Shard(ShardId),
    /// A statement that runs on every listed shard (DDL, a keyless write or read whose rows are
    /// concatenated), each joining the pipeline's transaction.
    Every(Vec<ShardId>),
    /// A statement whose answer the proxy assembles from several shards (an ordered or
    /// aggregated read, a multi-row `INSERT` split by shard, `COPY`): refused in its place.
    Assembled(Vec<ShardId>),
}

impl Session {
    /// Runs a segment of a spread pipeline, statement by statement on each one's shard; at the
    /// segment's `Sync` the pipeline commits everywhere or nowhere.
    pub(crate) async fn run_spread(
        &mut self,
        loaded: &Loaded,
        segment: Segment,
    ) -> Result<(), SessionEnd> {
        if self.spread.is_none() && self.tx.open() {
            self.spread = Some(Spread {
                in_transaction: true,
                ..Spread::default()
            });
        }
        if self.spread.is_none() {
            let mut spread = Spread::default();
            // Backends that already ran part of this pipeline keep it: `BEGIN` takes it in.
            for shard in self.unsynced_shards() {
                if let Err(error) = self.begin_on_held(shard).await {
                    self.spread = Some(spread);
                    return self.fail(error).await;
                }
                spread.joined.insert(shard);
                spread.last = Some(shard);
            }
            self.spread = Some(spread);
        }
        for unit in units(&segment, &loaded.config) {
            if self.skip_to_sync {
                break;
            }
            let shard = match unit.place {
                Place::Shard(shard) => shard,
                Place::Last => self
                    .spread
                    .as_ref()
                    .and_then(|s| s.last)
                    .unwrap_or(loaded.config.default_shard),
                Place::Every(shards) => {
                    self.every_shard_in_spread(loaded, &shards, &segment.items[unit.items])
                        .await?;
                    continue;
                }
                Place::Assembled(shards) => {
                    let error = ClientError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "a statement whose answer the proxy assembles from shards {} cannot run in a pipeline beside other statements; send a Sync before it",
                            self.shard_names(&shards)
                        ),
                    );
                    return self.fail(error).await;
                }
            };
            let items = &segment.items[unit.items];
            if executed(items).is_some_and(|s| ends_or_controls(&s.plan.kind)) {
                // What ran before it is on several shards; ending it here would end one.
                return self
                    .fail(ClientError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "a transaction block cannot end in a pipeline whose statements need several shards; send a Sync before COMMIT or ROLLBACK",
                    ))
                    .await;
            }
            // Before any shard joined the transaction, the proxy holds these itself (below).
            let on_shards = self.spread.as_ref().is_some_and(|s| s.in_transaction)
                && !self.tx.shards.is_empty();
            if let (true, Some(kind)) = (on_shards, transaction_scoped(items)) {
                self.everywhere_in_spread(loaded, items, &kind).await?;
                continue;
            }
            if let Some(begin) = begin_statement(items) {
                // BEGIN inside the pipeline makes what it ran so far, on every shard, part of
                // the client's transaction block, as PostgreSQL does on one server.
                self.begin_in_spread(begin);
                let replies = self.segment_replies(items, |_, _| msg::command_complete("BEGIN"));
                self.out.push(&replies).await?;
                continue;
            }
            if executed(items)
                .is_some_and(|s| local_answer(&s.plan.kind, TxPhase::of(&self.tx)).is_some())
            {
                // `DEALLOCATE ALL` and the like: the proxy's answer, in its place in the stream.
                let replies = self.segment_replies(items, |session, statement| {
                    session
                        .answer_locally(&statement.plan.kind, &statement.query)
                        .unwrap_or_default()
                });
                self.out.push(&replies).await?;
                continue;
            }
            let begin = self
                .spread
                .as_mut()
                .is_some_and(|s| s.joined.insert(shard) && !s.in_transaction);
            if let Some(spread) = self.spread.as_mut() {
                spread.last = Some(shard);
            }
            self.exchange_with(loaded, shard, true, |conn, out| {
                if begin {
                    begin_in_pipeline(out);
                }
                build_messages(items, conn, out);
                out.send_unanswered(FLUSH);
            })
            .await?;
        }
        if !self.segment_open {
            if self.skip_to_sync {
                self.skip_to_sync = false;
                return self.end_failed_pipeline().await;
            }
            if self.spread.as_ref().is_some_and(|s| s.in_transaction) {
                return self.sync_spread().await;
            }
            return self.commit_spread().await;
        }
        Ok(self.out.flush().await?)
    }

    /// Runs a savepoint command or `SET LOCAL` of a spread pipeline on every shard of the
    /// transaction; the client hears the answers of one of them. It is recorded for shards that
    /// join later (a shard that refused it fails the transaction at the `Sync`).
    async fn everywhere_in_spread(
        &mut self,
        loaded: &Loaded,
        items: &[Item],
        kind: &StatementKind,
    ) -> Result<(), SessionEnd> {
        let shards: Vec<ShardId> = self.tx.shards.iter().copied().collect();
        for (i, &shard) in shards.iter().enumerate() {
            if self.skip_to_sync {
                // A shard refused it: the rest of the pipeline is skipped, as PostgreSQL does.
                return Ok(());
            }
            let heard = i + 1 == shards.len();
            if let Some(spread) = self.spread.as_mut() {
                spread.joined.insert(shard);
            }
            self.exchange_with(loaded, shard, true, |conn, out| {
                // Only what this shard is sent now is silenced, not the prelude before it.
                let before = out.queue.len();
                build_messages(items, conn, out);
                out.send_unanswered(FLUSH);
                if !heard {
                    let built = out.queue.split_off(before);
                    out.queue.extend(silenced(built));
                }
            })
            .await?;
        }
        if let (false, Some(statement)) = (self.skip_to_sync, executed(items)) {
            self.record_in_transaction(kind, &statement.query);
        }
        Ok(())
    }

    /// Runs a statement of a spread pipeline on every shard in `shards`, each joining the
    /// pipeline's transaction first; the client hears one answer, with rows concatenated and
    /// counts summed.
    async fn every_shard_in_spread(
        &mut self,
        loaded: &Loaded,
        shards: &[ShardId],
        items: &[Item],
    ) -> Result<(), SessionEnd> {
        let in_transaction = self.spread.as_ref().is_some_and(|s| s.in_transaction);
        for &shard in shards {
            let joins = self.spread.as_mut().is_some_and(|s| s.joined.insert(shard));
            if joins && !in_transaction {
                self.exchange_with(loaded, shard, true, |_, out| {
                    begin_in_pipeline(out);
                    out.send_unanswered(FLUSH);
                })
                .await?;
                if self.skip_to_sync {
                    return Ok(());
                }
            }
        }
        self.scatter(loaded, shards, false, |conn, out| {
            build_messages(items, conn, out);
            out.send_unanswered(FLUSH);
        })
        .await
    }

    /// Turns the spread pipeline into the client's transaction block, begun by `begin`: its
    /// shards are the transaction's, and its `Sync` will end nothing.
    fn begin_in_spread(&mut self, begin: String) {
        let Some(spread) = self.spread.as_mut() else {
            return;
        };
        if spread.in_transaction {
            return;
        }
        spread.in_transaction = true;
        self.tx.shards.extend(spread.joined.iter().copied());
        self.tx.begin = Some(begin);
        if self.tx.settings_before.is_none() {
            self.tx.settings_before = Some(self.settings.clone());
        }
    }

    /// Joins a backend that ran part of the pipeline before it spread.
    async fn begin_on_held(&mut self, shard: ShardId) -> Result<(), ClientError> {
        let name = self.shard_names(&[shard]);
        let Some(conn) = self.conns.get_mut(&shard) else {
            return Ok(());
        };
        let mut bytes = BEGIN_IN_PIPELINE.to_vec();
        bytes.extend_from_slice(FLUSH);
        let began = conn.send(&bytes).await.is_ok() && read_completions(conn, 3).await;
        if began {
            Ok(())
        } else {
            Err(ClientError::new(
                sqlstate::CONNECTION_FAILURE,
                format!("shard {name} could not join the pipeline's transaction"),
            ))
        }
    }

    /// The spread pipeline's `Sync`: every shard's transaction commits, or none does (shards
    /// that only read commit first; those that wrote together, through two-phase commit when
    /// there are several).
    async fn commit_spread(&mut self) -> Result<(), SessionEnd> {
        let mut parts = self.take_spread_parts();
        let mut failure = None;
        for part in &mut parts {
            if !matches!(sync(&mut part.conn).await, Some(b'T')) {
                failure = Some(ClientError::new(
                    sqlstate::CONNECTION_FAILURE,
                    format!(
                        "shard {} lost the pipeline's transaction; nothing was committed",
                        part.name
                    ),
                ));
                break;
            }
        }
        if failure.is_some() {
            roll_back_parts(&mut parts).await;
        } else {
            failure = commit_everywhere(&self.ctx, &mut parts).await.err();
        }
        self.release_parts(parts);
        if let Some(error) = failure {
            self.out.push(&error.bytes()).await?;
        }
        self.out.push(&msg::ready_for_query(b'I')).await?;
        Ok(self.out.flush().await?)
    }

    /// The `Sync` of a spread pipeline inside the client's transaction: every shard it ran on
    /// is synced and stays in the transaction; a shard that failed fails the transaction.
    async fn sync_spread(&mut self) -> Result<(), SessionEnd> {
        let joined = self.spread.take().map(|s| s.joined).unwrap_or_default();
        for shard in joined {
            let Some(mut conn) = self.conns.remove(&shard) else {
                continue;
            };
            match sync(&mut conn).await {
                Some(status) => {
                    if status != b'T' {
                        self.tx.fail();
                    }
                    self.keep_or_release(shard, conn, true);
                }
                None => {
                    self.tx.fail();
                    self.drop_backend(conn);
                }
            }
        }
        self.out
            .push(&msg::ready_for_query(self.tx.status()))
            .await?;
        Ok(self.out.flush().await?)
    }

    /// The backends of the spread pipeline, taken from the session.
    fn take_spread_parts(&mut self) -> Vec<Part> {
        let joined = self.spread.take().map(|s| s.joined).unwrap_or_default();
        let mut parts = Vec::with_capacity(joined.len());
        for shard in joined {
            let name = self.shard_names(&[shard]);
            if let Some(conn) = self.conns.remove(&shard) {
                parts.push(Part { shard, name, conn });
            }
        }
        parts
    }

    /// Ends a pipeline that failed, at its `Sync`: whatever it left open on backends is
    /// aborted, then the client gets its one `ReadyForQuery`.
    pub(crate) async fn end_failed_pipeline(&mut self) -> Result<(), SessionEnd> {
        if self.spread.as_ref().is_some_and(|s| s.in_transaction) {
            // Inside the client's transaction the failure fails the transaction, which its
            // ROLLBACK ends on every shard.
            self.tx.fail();
            return self.sync_spread().await;
        }
        let mut parts = self.take_spread_parts();
        for part in &mut parts {
            sync(&mut part.conn).await;
            finish_quietly(&mut part.conn, "ROLLBACK").await;
        }
        statements::undone();
        self.release_parts(parts);
        let mut status = self.tx.status();
        for shard in self.unsynced_shards() {
            let Some(mut conn) = self.conns.remove(&shard) else {
                continue;
            };
            let mut bytes = ABORT_PIPELINE.to_vec();
            bytes.extend_from_slice(SYNC);
            let ended = match conn.send(&bytes).await {
                Ok(()) => ready_status(&mut conn).await,
                Err(_) => None,
            };
            match ended {
                Some(b'I') => self.keep_or_release(shard, conn, false),
                Some(backend_status) => {
                    if backend_status == b'E' {
                        status = b'E';
                    }
                    self.keep_or_release(shard, conn, true);
                }
                None => self.drop_backend(conn),
            }
        }
        self.out.push(&msg::ready_for_query(status)).await?;
        Ok(self.out.flush().await?)
    }

    /// Shards whose held backend is inside this pipeline (sent messages not yet synced).
    pub(crate) fn unsynced_shards(&self) -> Vec<ShardId> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.unsynced)
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// Lets a backend go whose state is unknown: the pool closes it.
    pub(crate) fn drop_backend(&mut self, mut conn: Pooled) {
        conn.broken = true;
        Pools::discard(conn);
    }
}

/// The kind of the savepoint command or `SET LOCAL` the messages execute, if they do.
fn transaction_scoped(items: &[Item]) -> Option<StatementKind> {
    executed(items).and_then(|statement| {
        matches!(
            statement.plan.kind,
            StatementKind::Savepoint { .. } | StatementKind::SetLocal
        )
        .then(|| statement.plan.kind.clone())
    })
}

/// Statements that end the transaction or act on its backend alone (`COMMIT PREPARED`, cursor
/// commands): a spread pipeline cannot run them on one of its shards.
fn ends_or_controls(kind: &StatementKind) -> bool {
    kind.ends_transaction() || *kind == StatementKind::TransactionControl
}

/// The statement the messages execute.
pub(crate) fn executed(items: &[Item]) -> Option<&Statement> {
    items.iter().find_map(|item| match item {
        Item::Execute {
            statement: Some(statement),
            ..
        } => Some(statement.as_ref()),
        _ => None,
    })
}

/// Writes the `BEGIN` a shard joining a spread pipeline's transaction runs first (`Parse`,
/// `Bind`, `Execute`), its answers dropped.
fn begin_in_pipeline(out: &mut Outgoing) {
    out.send_unanswered(BEGIN_IN_PIPELINE);
    out.queue
        .extend([Reply::Parse, Reply::Bind, Reply::Execute].map(Expect::swallow));
}

/// Answers to relay turned into answers to drop: the client hears another shard's.
fn silenced(queue: VecDeque<Expect>) -> VecDeque<Expect> {
    queue
        .into_iter()
        .filter_map(|entry| match entry {
            Expect::Local(_) => None,
            Expect::Sent {
                reply,
                effects,
                prepares,
                ..
            } => Some(Expect::Sent {
                reply,
                mode: Mode::Swallow,
                effects,
                prepares,
            }),
        })
        .collect()
}

/// The text of a `BEGIN` the messages execute, if they do.
pub(crate) fn begin_statement(items: &[Item]) -> Option<String> {
    executed(items)
        .filter(|statement| statement.plan.kind == StatementKind::Begin)
        .map(|statement| statement.query.to_string())
}

/// Cuts a segment after each `Execute`; the closing `Sync` or `Flush` is left out (the spread
/// sends its own `Flush` after each unit and handles `Sync` itself).
fn units(segment: &Segment, config: &Config) -> Vec<Unit> {
    let mut end = segment.items.len();
    while end > 0
        && matches!(
            segment.items[end - 1],
            Item::Forward {
                reply: None | Some(Reply::Sync),
                ..
            }
        )
    {
        end -= 1;
    }
    let mut units = Vec::new();
    let mut start = 0;
    for (i, item) in segment.items[..end].iter().enumerate() {
        if matches!(item, Item::Execute { .. }) || i + 1 == end {
            let place = segment
                .routed
                .iter()
                .find(|(at, _)| (start..=i).contains(at))
                .map_or(Place::Last, |(_, target)| match target {
                    Target::Shard(shard) => Place::Shard(*shard),
                    Target::Scatter(shards) => Place::Every(shards.clone()),
                    other => Place::Assembled(other.shards(config).unwrap_or_default()),
                });
            units.push(Unit {
                items: start..i + 1,
                place,
            });
            start = i + 1;
        }
    }
    units
}

/// Sends `Sync` and returns the transaction status the backend reports.
async fn sync(conn: &mut Pooled) -> Option<u8> {
    conn.send(SYNC).await.ok()?;
    ready_status(conn).await
}

/// Reads the answers to `count` messages that each end with one completion message; false
/// on an error or a lost backend.
async fn read_completions(conn: &mut Pooled, count: usize) -> bool {
    let mut remaining = count;
    while remaining > 0 {
        match conn.read().await {
            Ok(frame) if frame.tag() == msg::tag::ERROR_RESPONSE => return false,
            Ok(frame)
                if matches!(
                    frame.tag(),
                    msg::tag::PARSE_COMPLETE | msg::tag::BIND_COMPLETE | msg::tag::COMMAND_COMPLETE
                ) =>
            {
                remaining -= 1
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}
