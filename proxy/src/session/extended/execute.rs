//! Running an extended-protocol segment: read it, decide, carry the action out.

use std::sync::Arc;

use bytes::Bytes;
use shardline_router::{ShardId, StatementKind};

use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::frontend::{ParseView, FLUSH};
use crate::protocol::Frame;
use crate::session::decide::{decide, Action};
use crate::session::extended::assembled::Assembled;
use crate::session::extended::messages::build_messages;
use crate::session::extended::pipeline::begin_statement;
use crate::session::extended::segment::{give_back_frames, give_back_items, Item, Segment};
use crate::session::link::exchange::Reply;
use crate::session::state::statements::Statement;
use crate::session::{ClientError, Session, SessionEnd};

/// What became of a segment.
enum Segmented {
    Ran,
    /// It writes moving keys and a cutover holds such writes: run it again afterwards.
    HeldByCutover,
}

impl Session {
    /// Runs the collected extended-protocol segment.
    pub(crate) async fn run_batch(&mut self) -> Result<(), SessionEnd> {
        let mut frames = std::mem::take(&mut self.batch);
        self.segment_open = frames.last().is_some_and(|f| f.tag() == b'H');
        let loaded = self.ctx.refresh(self.held_config.take());
        // During a migration the segment may have to be read again after a cutover's pause.
        let again = loaded.migration.is_some().then(|| frames.clone());
        let mut result = self.run_segment(&loaded, &mut frames).await;
        if let (Ok(Segmented::HeldByCutover), Some(mut frames)) = (&result, again) {
            self.ctx.gate.resumed().await;
            result = self.run_segment(&self.ctx.snapshot(), &mut frames).await;
        }
        give_back_frames(frames);
        self.held_config = Some(loaded);
        self.segment_open = false;
        result.map(|_| ())
    }

    /// Reads, decides and runs a segment.
    async fn run_segment(
        &mut self,
        loaded: &Arc<Loaded>,
        frames: &mut Vec<Frame>,
    ) -> Result<Segmented, SessionEnd> {
        // Read and decided in a block of its own, so the segment's routing is not kept through
        // the exchange nearly every segment is; any other action runs in a future of its own.
        let (shard, starts_transaction, items) = {
            let segment = match self.read_segment(loaded, frames).await {
                Ok(segment) => segment,
                Err(malformed) => {
                    let text = malformed.to_string();
                    let code = sqlstate::PROTOCOL_VIOLATION;
                    return Err(Box::pin(self.protocol_violation(code, text)).await);
                }
            };
            let single = match decide(&segment.request(), &self.facts(loaded)) {
                Action::Single {
                    shard,
                    starts_transaction,
                } => Some((shard, starts_transaction)),
                _ => None,
            };
            match single {
                Some((shard, starts_transaction)) => {
                    (shard, starts_transaction, segment.into_items())
                }
                None => return Box::pin(self.run_decided(loaded, segment)).await,
            }
        };
        self.exchange_segment(loaded, shard, starts_transaction, &items)
            .await?;
        give_back_items(items);
        Ok(Segmented::Ran)
    }

    /// Runs a segment on one shard and records what it did to the client's transaction.
    async fn exchange_segment(
        &mut self,
        loaded: &Loaded,
        shard: ShardId,
        starts_transaction: bool,
        items: &[Item],
    ) -> Result<(), SessionEnd> {
        self.exchange_with(loaded, shard, starts_transaction, |conn, out| {
            build_messages(items, conn, out)
        })
        .await?;
        self.note_transaction(shard, items);
        self.settle_parses(items);
        Ok(self.out.flush().await?)
    }

    /// Settles the statements the client named in the `Parse`s of `items`, once they ran: as
    /// on one server, those answered with `ParseComplete` exist for the client (a `Parse` of
    /// the name is refused until it is closed), and those that failed, or that PostgreSQL
    /// skipped after an earlier error, do not. When it is not known how many were answered
    /// (the backend was lost), they stay as they were defined, and a `Parse` replaces them.
    fn settle_parses(&mut self, items: &[Item]) {
        let Some(answered) = self.parses_answered.take() else {
            return;
        };
        let parses = items
            .iter()
            .filter(|item| matches!(item, Item::Parse { .. }));
        for (i, item) in parses.enumerate() {
            let Item::Parse {
                frame,
                unnamed: false,
                ..
            } = item
            else {
                continue;
            };
            if let Ok(view) = ParseView::new(frame) {
                if i < answered {
                    self.statements.confirm(view.name);
                } else {
                    self.statements.close(view.name);
                }
            }
        }
    }

    /// Counts `n` more client `Parse`s answered with `ParseComplete` by the way running the
    /// segment (see [`Session::settle_parses`]).
    pub(crate) fn count_parses_answered(&mut self, n: usize) {
        if let Some(answered) = self.parses_answered.as_mut() {
            *answered += n;
        }
    }

    /// Carries out a segment whose action is not one plain exchange with one shard.
    async fn run_decided(
        &mut self,
        loaded: &Arc<Loaded>,
        mut segment: Segment,
    ) -> Result<Segmented, SessionEnd> {
        let action = decide(&segment.request(), &self.facts(loaded));
        // Owned, so the segment can be handed on whole.
        let action = match action {
            Action::AwaitCutover => return Ok(Segmented::HeldByCutover),
            Action::DualWrite { old } => {
                let keys = segment.dual.take().unwrap_or_default();
                let items = &segment.items;
                Box::pin(self.dual_write(loaded, old, keys, |conn, out| {
                    build_messages(items, conn, out)
                }))
                .await?;
                self.out.flush().await?;
                return Ok(Segmented::Ran);
            }
            Action::Spread => {
                Box::pin(self.run_spread(loaded, segment)).await?;
                return Ok(Segmented::Ran);
            }
            Action::RunThenRefuse(error) => {
                return Box::pin(self.run_then_refuse(loaded, segment, error)).await;
            }
            Action::Local => {
                // Mid-pipeline, the segment's `Sync` also ends what the pipeline ran on its
                // backends: after the proxy's answers it runs as a segment of its own.
                let mid_pipeline =
                    self.spread.is_some() || self.conns.values().any(|conn| conn.unsynced);
                let sync = match (mid_pipeline, segment.items.pop()) {
                    (
                        true,
                        Some(Item::Forward {
                            frame,
                            reply: Some(Reply::Sync),
                        }),
                    ) => Some(frame),
                    (_, last) => {
                        segment.items.extend(last);
                        None
                    }
                };
                let replies = self.segment_replies(&segment.items, |session, statement| {
                    session
                        .answer_locally(&statement.plan.kind, &statement.query)
                        .unwrap_or_else(|| {
                            msg::error(
                                sqlstate::INVALID_TRANSACTION_STATE,
                                "transaction control statement is not valid here",
                            )
                        })
                });
                self.out.push(&replies).await?;
                if let Some(sync) = sync {
                    return Box::pin(self.run_segment(loaded, &mut vec![sync])).await;
                }
                return Ok(self.out.flush().await.map(|()| Segmented::Ran)?);
            }
            other => other,
        };
        let items = &segment.items;
        match action {
            Action::Finish { commit } => {
                let (result, reported) = Box::pin(self.finish_transaction(commit)).await;
                self.out.push(&reported.concat()).await?;
                let reply = match result {
                    Ok(tag) => msg::command_complete(tag),
                    Err(error) => error.bytes(),
                };
                let replies = self.segment_replies(items, |_, _| reply.clone());
                self.out.push(&replies).await?;
                return Ok(self.out.flush().await.map(|()| Segmented::Ran)?);
            }
            Action::Everywhere => {
                let statements: Vec<(&StatementKind, &str)> = items
                    .iter()
                    .filter_map(|item| match item {
                        Item::Execute {
                            statement: Some(statement),
                            ..
                        } => Some((&statement.plan.kind, &*statement.query)),
                        _ => None,
                    })
                    .collect();
                Box::pin(self.everywhere(loaded, &statements, |conn, out| {
                    build_messages(items, conn, out)
                }))
                .await?;
            }
            Action::Refuse(error) => {
                self.refuse(error).await?;
                return Ok(Segmented::Ran);
            }
            Action::CommitDual { old } => {
                Box::pin(
                    self.commit_dual(loaded, old, |conn, out| build_messages(items, conn, out)),
                )
                .await?;
                return Ok(Segmented::Ran);
            }
            Action::Single {
                shard,
                starts_transaction,
            } => {
                self.exchange_segment(loaded, shard, starts_transaction, items)
                    .await?;
                return Ok(Segmented::Ran);
            }
            Action::Scatter(shards) => {
                let reads = segment.kinds.iter().all(|k| *k == StatementKind::Read);
                Box::pin(self.scatter(loaded, shards, reads, |conn, out| {
                    build_messages(items, conn, out)
                }))
                .await?;
                self.settle_parses(items);
            }
            Action::Gather(shards) => {
                return Box::pin(self.run_assembled(loaded, Assembled::Gather(shards), &segment))
                    .await
                    .map(|()| Segmented::Ran);
            }
            Action::Split(parts) => {
                return Box::pin(self.run_assembled(loaded, Assembled::Split(parts), &segment))
                    .await
                    .map(|()| Segmented::Ran);
            }
            Action::Copy(spec) => {
                return Box::pin(self.run_assembled(loaded, Assembled::Copy(spec), &segment))
                    .await
                    .map(|()| Segmented::Ran);
            }
            Action::InsertSelect(plan) => {
                let how = Assembled::InsertSelect(plan);
                return Box::pin(self.run_assembled(loaded, how, &segment))
                    .await
                    .map(|()| Segmented::Ran);
            }
            Action::Pull(tables) => {
                return Box::pin(self.run_assembled(loaded, Assembled::Pull(tables), &segment))
                    .await
                    .map(|()| Segmented::Ran);
            }
            Action::Local
            | Action::AwaitCutover
            | Action::DualWrite { .. }
            | Action::Spread
            | Action::RunThenRefuse(_) => {
                let error = ClientError::new(sqlstate::INTERNAL, "a segment was decided twice");
                self.fail(error).await?;
                return Ok(Segmented::Ran);
            }
        }
        self.out.flush().await?;
        Ok(Segmented::Ran)
    }

    /// Runs the messages read before the one refused, then refuses it, as PostgreSQL answers
    /// the messages before an error: they run as a step of a pipeline (as if the client had
    /// sent `Flush` after them), and then, unless they failed first, the client gets the
    /// refusal and the pipeline ends as one that failed, at the segment's `Sync` (or at the
    /// client's next one after a `Flush`), rolling back what they did.
    async fn run_then_refuse(
        &mut self,
        loaded: &Arc<Loaded>,
        mut segment: Segment,
        error: ClientError,
    ) -> Result<Segmented, SessionEnd> {
        let ends_with_sync = !self.segment_open;
        segment.refusal = None;
        segment.items.push(Item::Forward {
            frame: Frame::from_bytes(Bytes::from_static(FLUSH)),
            reply: None,
        });
        self.segment_open = true;
        // Decided again without the refusal (so not into this function again): as the
        // decision found it would run, on one shard or spread over several.
        let ran = Box::pin(self.run_decided(loaded, segment)).await?;
        self.segment_open = !ends_with_sync;
        if let Segmented::HeldByCutover = ran {
            return Ok(ran);
        }
        if self.skip_to_sync {
            // They failed: PostgreSQL skips the refused message with the rest, and the failure
            // fails the client's transaction block.
            self.tx.fail();
            if ends_with_sync {
                self.skip_to_sync = false;
                Box::pin(self.end_failed_pipeline()).await?;
            }
            return Ok(Segmented::Ran);
        }
        self.refuse(error).await?;
        Ok(Segmented::Ran)
    }

    /// After a segment ran on `shard`, records what it did to the client's transaction block
    /// that shards joining it later must replay: a `BEGIN` that ran with other statements or in
    /// the middle of a pipeline (the shard is now in the block), savepoints and `SET LOCAL`.
    fn note_transaction(&mut self, shard: ShardId, items: &[Item]) {
        if let Some(begin) = begin_statement(items) {
            let in_block = self.tx.shards.contains(&shard)
                || self.conns.get(&shard).is_some_and(|conn| conn.unsynced);
            if in_block {
                self.tx.shards.insert(shard);
                self.tx.begin.get_or_insert(begin);
            }
        }
        if !self.tx.shards.contains(&shard) || self.tx.failed {
            return;
        }
        for item in items {
            if let Item::Execute {
                statement: Some(statement),
                ..
            } = item
            {
                self.record_in_transaction(&statement.plan.kind, &statement.query);
            }
        }
    }

    /// The replies to a segment the proxy answers itself, in order; `execute` answers each
    /// executed statement. After an error the replies up to `Sync` are left out, as PostgreSQL
    /// skips those messages.
    pub(crate) fn segment_replies<F>(&mut self, items: &[Item], mut execute: F) -> Bytes
    where
        F: FnMut(&mut Self, &Statement) -> Bytes,
    {
        let mut out = Vec::new();
        let mut skipping = false;
        for item in items {
            if skipping
                && !matches!(
                    item,
                    Item::Forward {
                        reply: Some(Reply::Sync),
                        ..
                    }
                )
            {
                continue;
            }
            match item {
                Item::Parse { .. } => out.extend_from_slice(&msg::empty(tag::PARSE_COMPLETE)),
                Item::UsesStatement {
                    reply: Reply::Bind, ..
                } => out.extend_from_slice(&msg::empty(tag::BIND_COMPLETE)),
                Item::CloseStatement => out.extend_from_slice(&msg::empty(tag::CLOSE_COMPLETE)),
                Item::UsesStatement { .. } => {
                    out.extend_from_slice(&[tag::PARAMETER_DESCRIPTION, 0, 0, 0, 6, 0, 0]);
                    out.extend_from_slice(&msg::empty(tag::NO_DATA));
                }
                Item::Execute {
                    statement: Some(statement),
                    ..
                } => {
                    let reply = execute(self, statement);
                    skipping = reply.first() == Some(&tag::ERROR_RESPONSE);
                    out.extend_from_slice(&reply);
                }
                Item::Execute {
                    statement: None, ..
                } => {}
                Item::Forward {
                    reply: Some(Reply::DescribePortal),
                    ..
                } => out.extend_from_slice(&msg::empty(tag::NO_DATA)),
                Item::Forward {
                    reply: Some(Reply::Close),
                    ..
                } => out.extend_from_slice(&msg::empty(tag::CLOSE_COMPLETE)),
                Item::Forward {
                    reply: Some(Reply::Sync),
                    ..
                } => {
                    skipping = false;
                    out.extend_from_slice(&msg::ready_for_query(self.tx.status()));
                }
                Item::Forward { .. } => {}
            }
        }
        Bytes::from(out)
    }
}
