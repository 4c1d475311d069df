//! Multi-shard statements: the same messages go to every target shard at once, and the answers
//! are merged so the client sees one server — one `RowDescription`, every shard's rows, one
//! `CommandComplete` with the summed count, one `ReadyForQuery`.
//!
//! Answers are merged message by message in lockstep: for each client message the proxy reads
//! that message's answers from shard 1, then shard 2, and so on, streaming rows as they come
//! (other shards wait in their socket buffers), so memory stays bounded by one message. If any
//! shard fails, the client gets one error naming the shard instead of the final
//! `CommandComplete`: never a partial result passed off as complete.

use std::collections::VecDeque;

use bytes::Bytes;
use shardline_router::ShardId;

use crate::backend::conn::Backend;
use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::Frame;
use crate::session::decide::shard_names;
use crate::session::link::exchange::{completes, Expect, Mode, Reply};
use crate::session::link::outgoing::Outgoing;
use crate::session::multi::partial;
use crate::session::state::statements;
use crate::session::{ClientError, Session, SessionEnd};

/// One shard taking part in a scatter.
struct Leg {
    shard: ShardId,
    name: String,
    conn: Pooled,
    queue: VecDeque<Expect>,
    /// The shard failed a message and ignores everything up to `Sync`.
    skipping: bool,
    /// A message the proxy sent on the client's behalf (a statement the backend lacked) failed:
    /// the client must see this error.
    failure: Option<Bytes>,
}

impl Leg {
    /// The shard's next message; a broken connection, or a `FATAL` error before it breaks, is
    /// the shard's failure.
    async fn read(&mut self) -> Result<Frame, MergeError> {
        let frame = self
            .conn
            .read()
            .await
            .map_err(|e| MergeError::Shard(ClientError::from_backend(&self.name, &e)))?;
        if frame.tag() == tag::ERROR_RESPONSE && msg::ends_connection(&frame) {
            self.conn.broken = true;
            return Err(MergeError::Terminated(self.shard, frame));
        }
        Ok(frame)
    }
}

/// What one client message produced across the shards.
#[derive(Default)]
struct Merged {
    /// Message types already passed to the client for this message (sent once, not per shard).
    sent_once: Vec<u8>,
    /// `CommandComplete` tags by statement (a multi-statement script has several), then shard.
    tags: Vec<Vec<String>>,
    error: Option<Bytes>,
    copy_done: bool,
    ready: bool,
    /// A shard reported its transaction failed (`ReadyForQuery` status `E`).
    failed_transaction: bool,
    /// The shard whose `ParameterStatus` messages the client gets (every shard reports the
    /// same setting change: a `SET`, or its revert by `ROLLBACK TO`).
    reporter: Option<ShardId>,
}

impl Session {
    /// Sends what `build` makes to each shard in `shards` and merges the answers. `reads`: the
    /// statements only read, so shards that cannot be reached may be left out when the
    /// session asks for partial results.
    pub(crate) async fn scatter<F>(
        &mut self,
        loaded: &Loaded,
        shards: &[ShardId],
        reads: bool,
        mut build: F,
    ) -> Result<(), SessionEnd>
    where
        F: FnMut(&mut Backend, &mut Outgoing),
    {
        let started = std::time::Instant::now();
        self.parses_answered = Some(0);
        // Every backend first, so a shard that cannot be reached leaves the others untouched.
        let mut attached = Vec::with_capacity(shards.len());
        let mut missing = Vec::new();
        for &shard in shards {
            match self.attach(loaded, shard).await {
                Ok(conn) => attached.push((shard, conn)),
                Err(e) if reads && self.may_leave_out(shard, &e) => {
                    missing.push(partial::left_out(
                        &shard_names(&loaded.config, &[shard]),
                        &e,
                    ));
                }
                Err(e) => {
                    for (shard, conn) in attached {
                        self.keep_or_release(shard, conn, false);
                    }
                    self.tx.fail();
                    return self.fail(e).await;
                }
            }
        }
        if !missing.is_empty() {
            if attached.is_empty() {
                self.tx.fail();
                return self.fail(partial::none_reached(&missing)).await;
            }
            self.out.push(&partial::warning(&missing)).await?;
        }
        let mut legs = Vec::with_capacity(shards.len());
        for (shard, mut conn) in attached {
            let outgoing = self.compose(shard, &mut conn, true, |c, out| build(c, out));
            let name = shard_names(&loaded.config, &[shard]);
            let sent = conn.send(&outgoing.bytes).await;
            let queue = outgoing.sent();
            legs.push(Leg {
                shard,
                name,
                conn,
                queue: alike_on_every_shard(queue),
                skipping: false,
                failure: None,
            });
            if let Err(e) = sent {
                let error = ClientError::lost_shard(&legs[legs.len() - 1].name, e);
                self.release_legs(legs);
                self.tx.fail();
                return self.fail(error).await;
            }
        }
        let result = self.merge(&mut legs).await;
        self.ctx
            .stats
            .record_scatter(loaded, shards, result.is_ok(), started.elapsed());
        self.release_legs(legs);
        match result {
            Ok(()) => Ok(()),
            Err(MergeError::Client(e)) => Err(SessionEnd::ClientIo(e)),
            Err(MergeError::Shard(error)) => {
                self.tx.fail();
                self.fail(error).await
            }
            Err(MergeError::Terminated(shard, fatal)) => {
                self.end_as_terminated(shard, &fatal).await.map(|_| ())
            }
        }
    }

    async fn merge(&mut self, legs: &mut [Leg]) -> Result<(), MergeError> {
        let mut failed = false;
        loop {
            // Injected messages (settings sync, re-prepares) are answered first, silently.
            let mut entry = None;
            for leg in legs.iter_mut() {
                let next = next_client_entry(leg).await?;
                entry = entry.or(next);
                if let Some(error) = leg.failure.take() {
                    if !failed {
                        let error = msg::error_naming_shard(&Frame::from_bytes(error), &leg.name);
                        self.out.push(&error).await.map_err(MergeError::Client)?;
                        failed = true;
                    }
                }
            }
            let Some(entry) = entry else {
                // An error not yet followed by `Sync`: the client's next messages are ignored.
                self.skip_to_sync |= failed;
                return Ok(());
            };
            let reply = match entry {
                Expect::Local(bytes) => {
                    if !failed {
                        self.out.push(&bytes).await.map_err(MergeError::Client)?;
                        self.count_parses_answered(usize::from(
                            bytes.first() == Some(&tag::PARSE_COMPLETE),
                        ));
                    }
                    continue;
                }
                Expect::Sent { reply, .. } => reply,
            };
            let mut merged = Merged::default();
            for leg in legs.iter_mut() {
                if leg.skipping && !matches!(reply, Reply::Sync | Reply::Cycle) {
                    continue;
                }
                self.read_answers(leg, reply, &mut merged).await?;
            }
            if let Some(error) = merged.error.take() {
                if !failed {
                    self.out.push(&error).await.map_err(MergeError::Client)?;
                }
                failed = !matches!(reply, Reply::Cycle | Reply::Sync);
            } else if !failed {
                self.count_parses_answered(usize::from(reply == Reply::Parse));
                if merged.copy_done {
                    self.out
                        .push(&msg::empty(tag::COPY_DONE))
                        .await
                        .map_err(MergeError::Client)?;
                }
                for tags in &merged.tags {
                    let summed = msg::sum_tags(tags);
                    self.out
                        .push(&msg::command_complete(&summed))
                        .await
                        .map_err(MergeError::Client)?;
                }
            }
            if merged.ready {
                failed = false;
                if merged.failed_transaction {
                    // Inside the client's transaction: a failure on one shard fails it all.
                    self.tx.fail();
                }
                self.out
                    .push(&msg::ready_for_query(self.tx.status()))
                    .await
                    .map_err(MergeError::Client)?;
                self.out.flush().await.map_err(MergeError::Client)?;
            }
        }
    }

    /// Reads one shard's answers to one client message into `merged`.
    async fn read_answers(
        &mut self,
        leg: &mut Leg,
        reply: Reply,
        merged: &mut Merged,
    ) -> Result<(), MergeError> {
        let mut statement = 0;
        loop {
            let frame = leg.read().await?;
            let frame_tag = frame.tag();
            let pass = match frame_tag {
                tag::DATA_ROW | tag::COPY_DATA => merged.error.is_none(),
                tag::NOTICE_RESPONSE | tag::NOTIFICATION => true,
                tag::PARAMETER_STATUS => *merged.reporter.get_or_insert(leg.shard) == leg.shard,
                tag::COMMAND_COMPLETE => {
                    let command = msg::command_tag_bytes(frame.body());
                    statements::completed(command);
                    if statements::forgets_every_statement(command) {
                        leg.conn.prepared.clear();
                        self.statements.clear();
                    }
                    if merged.tags.len() <= statement {
                        merged.tags.push(Vec::new());
                    }
                    merged.tags[statement].push(msg::command_tag(frame.body()).to_owned());
                    statement += 1;
                    false
                }
                tag::COPY_DONE => {
                    merged.copy_done = true;
                    false
                }
                tag::ERROR_RESPONSE => {
                    statements::undone();
                    if merged.error.is_none() {
                        merged.error = Some(msg::error_naming_shard(&frame, &leg.name));
                    }
                    if reply != Reply::Cycle {
                        leg.skipping = true;
                        return Ok(());
                    }
                    false
                }
                tag::READY_FOR_QUERY => {
                    merged.ready = true;
                    merged.failed_transaction |= msg::ready_status(&frame) == b'E';
                    leg.skipping = false;
                    false
                }
                tag::COPY_IN_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    leg.conn.broken = true;
                    return Err(MergeError::Shard(ClientError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY FROM STDIN cannot be sent to several shards",
                    )));
                }
                other => {
                    let first = !merged.sent_once.contains(&other);
                    merged.sent_once.push(other);
                    first && merged.error.is_none()
                }
            };
            if pass {
                self.out
                    .push(frame.bytes())
                    .await
                    .map_err(MergeError::Client)?;
            }
            if completes(reply, frame_tag) {
                return Ok(());
            }
        }
    }

    /// Returns the scatter's backends: idle ones to their pools (or kept in session mode).
    fn release_legs(&mut self, legs: Vec<Leg>) {
        for leg in legs {
            if leg.conn.broken || !leg.queue.is_empty() {
                Pools::discard(leg.conn);
            } else {
                self.keep_or_release(leg.shard, leg.conn, false);
            }
        }
    }
}

/// Why a merge stopped.
enum MergeError {
    Client(std::io::Error),
    Shard(ClientError),
    /// A shard sent a `FATAL` error and closes its connection.
    Terminated(ShardId, Frame),
}

/// One backend's queue with every client `Parse` of a named statement turned into a silent
/// prepare and a local `ParseComplete`. Backends that already have the statement answer the
/// client's `Parse` locally; this makes the others answer it the same way, so every leg's
/// queue lists the same client messages in the same order.
fn alike_on_every_shard(queue: VecDeque<Expect>) -> VecDeque<Expect> {
    let mut alike = VecDeque::with_capacity(queue.len());
    for entry in queue {
        match entry {
            Expect::Sent {
                reply: Reply::Parse,
                mode: Mode::Relay,
                effects,
                prepares: Some(id),
            } => {
                alike.push_back(Expect::Sent {
                    reply: Reply::Parse,
                    mode: Mode::Swallow,
                    effects,
                    prepares: Some(id),
                });
                alike.push_back(Expect::Local(msg::empty(tag::PARSE_COMPLETE)));
            }
            other => alike.push_back(other),
        }
    }
    alike
}

/// Answers injected messages silently and returns the next entry that belongs to a client
/// message, or `None` when the leg has nothing more to answer.
async fn next_client_entry(leg: &mut Leg) -> Result<Option<Expect>, MergeError> {
    while let Some(entry) = leg.queue.pop_front() {
        let (reply, prepares) = match &entry {
            Expect::Sent {
                mode: Mode::Swallow,
                reply,
                prepares,
                ..
            } => (*reply, *prepares),
            _ => return Ok(Some(entry)),
        };
        if leg.skipping && reply != Reply::Cycle {
            continue;
        }
        loop {
            let frame = leg.read().await?;
            match frame.tag() {
                tag::ERROR_RESPONSE if reply != Reply::Cycle => {
                    leg.skipping = true;
                    leg.failure = Some(frame.into_bytes());
                    break;
                }
                tag::ERROR_RESPONSE => leg.conn.settings = None,
                tag::PARSE_COMPLETE => {
                    if let Some(id) = prepares {
                        leg.conn.prepared.insert(id);
                    }
                }
                _ => {}
            }
            if completes(reply, frame.tag()) {
                break;
            }
        }
    }
    Ok(None)
}
