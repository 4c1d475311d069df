//! The extended query protocol: one pipeline segment (messages up to `Sync` or `Flush`) is
//! read whole, routed by its `Bind` parameters, and rewritten for the backend that runs it —
//! client statement names become proxy names, statements the backend lacks are prepared
//! first, and ones it already has are answered with a local `ParseComplete`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use shardline_router::copy::{copy_into, CopyInto};
use shardline_router::split::{split_insert, InsertPart};
use shardline_router::{Route, ShardId, StatementKind};

use super::dual::{moving_keys, several_shards, DualKeys};
use super::exchange::{Expect, Mode, Reply};
use super::statements::Statement;
use super::{effect_of, follows_session, local, ClientError, Session, SessionEnd};
use crate::backend::conn::Backend;
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::frontend::{
    build_parse, execute_portal, BindView, Malformed, ParseView, TargetView,
};
use crate::protocol::Frame;

/// One client message of a segment, with what the proxy learned from it.
pub(super) enum Item {
    Parse {
        frame: Frame,
        statement: Arc<Statement>,
        unnamed: bool,
    },
    /// `Bind` or `Describe` of a statement: renamed to the statement's backend name.
    UsesStatement {
        frame: Frame,
        statement: Arc<Statement>,
        unnamed: bool,
        reply: Reply,
    },
    Execute {
        frame: Frame,
        statement: Option<Arc<Statement>>,
    },
    CloseStatement,
    Forward {
        frame: Frame,
        reply: Option<Reply>,
    },
}

/// A segment after routing.
pub(super) struct Segment {
    pub(super) items: Vec<Item>,
    /// Where each routed `Bind` sends its statement, by the `Bind`'s index in `items`.
    pub(super) routes: Vec<(usize, Route)>,
    /// Kinds of the statements the segment executes.
    pub(super) kinds: Vec<StatementKind>,
    /// Set when the proxy assembles the bound statement's result from several shards.
    pub(super) assembly: Option<Assembly>,
    /// Moving keys the segment writes while a resharding migration dual-writes.
    pub(super) dual: Option<DualKeys>,
}

/// What became of a segment.
enum Segmented {
    Ran,
    /// It writes moving keys and a cutover holds such writes: run it again afterwards.
    HeldByCutover,
}

/// How a bound statement's result is assembled from several shards.
pub(super) enum Assembly {
    /// Merged (`ORDER BY`/`LIMIT`) or combined (aggregates) rows.
    Gather,
    /// A multi-row `INSERT` split by shard and committed atomically.
    Split(Vec<InsertPart>),
    /// `COPY … FROM STDIN` into a sharded table, each row sent to its shard.
    Copy(CopyInto),
}

impl Session {
    /// Runs the collected extended-protocol segment.
    pub(super) async fn run_batch(&mut self) -> Result<(), SessionEnd> {
        let frames = std::mem::take(&mut self.batch);
        self.segment_open = frames.last().is_some_and(|f| f.tag() == b'H');
        let loaded = self.ctx.snapshot();
        // During a migration the segment may have to be read again after a cutover's pause.
        let again = loaded.migration.is_some().then(|| frames.clone());
        let mut result = self.run_segment(loaded, frames).await;
        if let (Ok(Segmented::HeldByCutover), Some(frames)) = (&result, again) {
            self.ctx.gate.resumed().await;
            result = self.run_segment(self.ctx.snapshot(), frames).await;
        }
        self.segment_open = false;
        result.map(|_| ())
    }

    /// Runs a segment, unless it writes moving keys while a cutover holds such writes: then it
    /// is left for the caller to run again, re-planned, once the cutover is over.
    async fn run_segment(
        &mut self,
        loaded: Arc<Loaded>,
        frames: Vec<Frame>,
    ) -> Result<Segmented, SessionEnd> {
        let segment = match self.read_segment(&loaded, frames) {
            Ok(Ok(segment)) if segment.dual.is_some() && self.ctx.gate.holds(&self.dual_ticket) => {
                return Ok(Segmented::HeldByCutover)
            }
            other => other,
        };
        self.run_read_segment(&loaded, segment)
            .await
            .map(|()| Segmented::Ran)
    }

    async fn run_read_segment(
        &mut self,
        loaded: &Loaded,
        segment: Result<Result<Segment, ClientError>, Malformed>,
    ) -> Result<(), SessionEnd> {
        let mut segment = match segment {
            Ok(Ok(segment)) => segment,
            Ok(Err(error)) => return self.fail(error).await,
            Err(malformed) => {
                let text = malformed.to_string();
                self.out
                    .push(&msg::fatal(sqlstate::PROTOCOL_VIOLATION, &text))
                    .await?;
                self.out.flush().await?;
                return Err(SessionEnd::Protocol(text));
            }
        };
        if let Some(replies) = self.answer_segment_locally(&segment) {
            self.out.push(&replies).await?;
            return Ok(self.out.flush().await?);
        }
        if self.tx.failed {
            let ends = segment
                .kinds
                .iter()
                .all(|k| matches!(k, StatementKind::Commit | StatementKind::Rollback));
            if !(ends && self.tx.shard.is_some() && !segment.kinds.is_empty()) {
                return self.fail(local::aborted()).await;
            }
            // Roll the shard's transaction back first; the client's COMMIT then ends nothing.
            self.tx.failed = false;
            self.tx.held.push("ROLLBACK".to_owned());
        }
        if !self.tx.dual.is_empty()
            && !self.tx.failed_on_shard
            && !self.segment_open
            && segment.routes.is_empty()
            && segment.kinds.contains(&StatementKind::Commit)
        {
            if let Some(old) = self.tx.shard {
                let items = &segment.items;
                return self
                    .commit_dual(loaded, old, |conn| build_messages(items, conn))
                    .await;
            }
        }
        let dual = segment.dual.take();
        if dual.is_some() && self.needs_spread(&segment) {
            self.fail_transaction();
            return self.fail(several_shards()).await;
        }
        if self.needs_spread(&segment) {
            return self.run_spread(loaded, segment).await;
        }
        let route = match self.segment_route(loaded, &segment) {
            Ok(route) => route,
            Err(error) => {
                self.fail_transaction();
                return self.fail(error).await;
            }
        };
        let items = &segment.items;
        if let Some(keys) = dual {
            let Route::Single(old) = route else {
                self.fail_transaction();
                return self.fail(several_shards()).await;
            };
            self.dual_write(loaded, old, keys, |conn| build_messages(items, conn))
                .await?;
            return Ok(self.out.flush().await?);
        }
        match route {
            Route::Single(shard) => {
                let touches_data = !segment.routes.is_empty();
                self.exchange_with(loaded, shard, touches_data, |conn| {
                    build_messages(items, conn)
                })
                .await?;
            }
            Route::Multi(shards) => {
                if segment.assembly.is_some() {
                    return self.run_assembled(loaded, &shards, segment).await;
                }
                if let Err(e) = self.check_scatter_allowed(&shards) {
                    return self.fail(e).await;
                }
                self.scatter_segment(loaded, &shards, items).await?;
            }
        }
        Ok(self.out.flush().await?)
    }

    async fn scatter_segment(
        &mut self,
        loaded: &Loaded,
        shards: &[ShardId],
        items: &[Item],
    ) -> Result<(), SessionEnd> {
        self.scatter(loaded, shards, |conn| build_messages(items, conn))
            .await
    }

    /// Interprets the segment's messages; the inner error is one the client should see.
    fn read_segment(
        &mut self,
        loaded: &Loaded,
        frames: Vec<Frame>,
    ) -> Result<Result<Segment, ClientError>, Malformed> {
        let mut segment = Segment {
            items: Vec::with_capacity(frames.len()),
            routes: Vec::new(),
            kinds: Vec::new(),
            assembly: None,
            dual: None,
        };
        let mut portals: HashMap<Vec<u8>, Arc<Statement>> = HashMap::new();
        for frame in frames {
            let item = match frame.tag() {
                b'P' => {
                    let view = ParseView::new(&frame)?;
                    let plan = self.ctx.plan(loaded, view.query);
                    let statement =
                        self.statements
                            .define(view.name, view.query, view.param_types, plan);
                    let unnamed = view.name.is_empty();
                    Item::Parse {
                        frame,
                        statement,
                        unnamed,
                    }
                }
                b'B' => {
                    let view = BindView::new(&frame)?;
                    let Some(statement) = self.statements.get(view.statement) else {
                        return Ok(Err(unknown_statement(view.statement)));
                    };
                    if !follows_session(&statement.plan.kind) {
                        let params = view.params();
                        match moving_keys(loaded, &statement.plan, &params) {
                            Ok(Some(keys)) => segment
                                .dual
                                .get_or_insert_with(Default::default)
                                .merge(keys),
                            Ok(None) => {}
                            Err(e) => return Ok(Err(e)),
                        }
                        match statement.plan.route(&loaded.config, &params) {
                            Ok(Route::Multi(shards))
                                if statement.plan.merge.is_some()
                                    || statement.plan.aggregate.is_some() =>
                            {
                                segment.assembly = Some(Assembly::Gather);
                                segment
                                    .routes
                                    .push((segment.items.len(), Route::Multi(shards)));
                            }
                            Ok(route) => segment.routes.push((segment.items.len(), route)),
                            Err(e) if statement.plan.kind == StatementKind::CopyIn => {
                                match copy_into(&loaded.config, &statement.query) {
                                    Some(Ok(spec)) => {
                                        let shards = spec.rule.shards(loaded.config.shards.len());
                                        segment
                                            .routes
                                            .push((segment.items.len(), Route::Multi(shards)));
                                        segment.assembly = Some(Assembly::Copy(spec));
                                    }
                                    Some(Err(copy_error)) => return Ok(Err(copy_error.into())),
                                    None => return Ok(Err(e.into())),
                                }
                            }
                            Err(e) => {
                                let split = (statement.plan.kind == StatementKind::Write)
                                    .then(|| {
                                        split_insert(&loaded.config, &statement.query, &params)
                                    })
                                    .flatten();
                                match split {
                                    Some(Ok(parts)) => {
                                        let shards = parts.iter().map(|p| p.shard).collect();
                                        segment
                                            .routes
                                            .push((segment.items.len(), Route::Multi(shards)));
                                        segment.assembly = Some(Assembly::Split(parts));
                                    }
                                    Some(Err(split_error)) => return Ok(Err(split_error.into())),
                                    None => return Ok(Err(e.into())),
                                }
                            }
                        }
                    }
                    portals.insert(view.portal.to_vec(), statement.clone());
                    let unnamed = view.statement.is_empty();
                    Item::UsesStatement {
                        frame,
                        statement,
                        unnamed,
                        reply: Reply::Bind,
                    }
                }
                b'D' => {
                    let view = TargetView::new(&frame)?;
                    if view.kind == b'S' {
                        let Some(statement) = self.statements.get(view.name) else {
                            return Ok(Err(unknown_statement(view.name)));
                        };
                        let unnamed = view.name.is_empty();
                        Item::UsesStatement {
                            frame,
                            statement,
                            unnamed,
                            reply: Reply::DescribeStatement,
                        }
                    } else {
                        Item::Forward {
                            frame,
                            reply: Some(Reply::DescribePortal),
                        }
                    }
                }
                b'E' => {
                    let statement = portals.get(execute_portal(&frame)?).cloned();
                    segment
                        .kinds
                        .extend(statement.as_ref().map(|s| s.plan.kind.clone()));
                    Item::Execute { frame, statement }
                }
                b'C' => {
                    let view = TargetView::new(&frame)?;
                    if view.kind == b'S' {
                        self.statements.close(view.name);
                        Item::CloseStatement
                    } else {
                        Item::Forward {
                            frame,
                            reply: Some(Reply::Close),
                        }
                    }
                }
                b'S' => Item::Forward {
                    frame,
                    reply: Some(Reply::Sync),
                },
                _ => Item::Forward { frame, reply: None },
            };
            segment.items.push(item);
        }
        Ok(Ok(segment))
    }

    /// Where the segment runs: it is one implicit transaction, so on one shard — unless it is
    /// a single statement that scatters.
    fn segment_route(&self, loaded: &Loaded, segment: &Segment) -> Result<Route, ClientError> {
        let fallback = || {
            let shard = self
                .tx
                .shard
                .or_else(|| self.conns.keys().next().copied())
                .unwrap_or(loaded.config.default_shard);
            Route::Single(shard)
        };
        let mut shards = BTreeSet::new();
        let mut multi = false;
        for (_, route) in &segment.routes {
            match route {
                Route::Single(s) => {
                    shards.insert(*s);
                }
                Route::Multi(list) => {
                    multi = true;
                    shards.extend(list.iter().copied());
                }
            }
        }
        if self.awaiting_sync || shards.is_empty() {
            return Ok(fallback());
        }
        match (shards.len(), multi, segment.routes.len()) {
            (1, false, _) => Ok(Route::Single(shards.into_iter().next().unwrap_or_default())),
            (_, _, 1) => Ok(Route::Multi(shards.into_iter().collect())),
            _ => Err(ClientError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "the statements sent before this Sync need shards {}; a transaction block stays on one shard, and a statement that runs on several shards must be the only one before its Sync",
                    self.shard_names(&shards.into_iter().collect::<Vec<_>>())
                ),
            )),
        }
    }

    /// Answers a segment that only holds or ends a transaction the proxy is holding.
    fn answer_segment_locally(&mut self, segment: &Segment) -> Option<Bytes> {
        let local_kind = |k: &StatementKind| {
            matches!(
                k,
                StatementKind::Begin
                    | StatementKind::Commit
                    | StatementKind::Rollback
                    | StatementKind::SetLocal
            )
        };
        if segment.kinds.is_empty()
            || !segment.kinds.iter().all(local_kind)
            || self.tx.shard.is_some()
            || self.awaiting_sync
        {
            return None;
        }
        let mut out = Vec::new();
        for item in &segment.items {
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
                } => match self.answer_locally(&statement.plan.kind, &statement.query) {
                    Some(reply) => out.extend_from_slice(&reply),
                    None => out.extend_from_slice(&msg::error(
                        sqlstate::INVALID_TRANSACTION_STATE,
                        "transaction control statement is not valid here",
                    )),
                },
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
                } => out.extend_from_slice(&msg::ready_for_query(self.tx.status())),
                Item::Forward { .. } => {}
            }
        }
        Some(Bytes::from(out))
    }
}

fn unknown_statement(name: &[u8]) -> ClientError {
    ClientError::new(
        "26000",
        format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        ),
    )
}

/// The messages one backend is sent for a segment, and the matching answer queue.
pub(super) fn build_messages(items: &[Item], conn: &mut Backend) -> (Vec<Bytes>, VecDeque<Expect>) {
    let mut out = Vec::with_capacity(items.len() + 2);
    let mut queue = VecDeque::with_capacity(items.len() + 2);
    let mut preparer = Preparer::default();
    for item in items {
        match item {
            Item::Parse {
                frame,
                unnamed: true,
                ..
            } => {
                // The unnamed statement keeps its name: the client's bytes go as they are.
                out.push(frame.bytes().clone());
                queue.push_back(Expect::relay(Reply::Parse));
                preparer.unnamed_ready = true;
            }
            Item::Parse {
                statement,
                unnamed: false,
                ..
            } => {
                if conn.prepared.contains(&statement.id) || !preparer.preparing.insert(statement.id)
                {
                    queue.push_back(Expect::Local(msg::empty(tag::PARSE_COMPLETE)));
                } else {
                    out.push(build_parse(
                        &statement.server_name(),
                        &statement.query,
                        &statement.param_types,
                    ));
                    queue.push_back(Expect::Sent {
                        reply: Reply::Parse,
                        mode: Mode::Relay,
                        effects: Vec::new(),
                        prepares: Some(statement.id),
                    });
                }
            }
            Item::UsesStatement {
                frame,
                statement,
                unnamed,
                reply,
            } => {
                preparer.ensure(conn, statement, *unnamed, &mut out, &mut queue);
                if *unnamed {
                    out.push(frame.bytes().clone());
                } else {
                    out.push(renamed(frame, &statement.server_name()));
                }
                queue.push_back(Expect::relay(*reply));
            }
            Item::Execute { frame, statement } => {
                out.push(frame.bytes().clone());
                let effects = vec![statement.as_ref().and_then(|s| effect_of(&s.plan.kind))];
                queue.push_back(Expect::Sent {
                    reply: Reply::Execute,
                    mode: Mode::Relay,
                    effects,
                    prepares: None,
                });
            }
            Item::CloseStatement => queue.push_back(Expect::Local(msg::empty(tag::CLOSE_COMPLETE))),
            Item::Forward { frame, reply } => {
                out.push(frame.bytes().clone());
                if let Some(reply) = reply {
                    queue.push_back(Expect::relay(*reply));
                }
            }
        }
    }
    (out, queue)
}

/// A `Bind` or `Describe` frame naming statement `name` instead of the client's name.
fn renamed(frame: &Frame, name: &[u8]) -> Bytes {
    let rebuilt = match frame.tag() {
        b'B' => BindView::new(frame).map(|view| view.retarget(frame, name)),
        _ => TargetView::new(frame).map(|view| view.rebuild(b'D', name)),
    };
    // Both were parsed successfully when the segment was read.
    rebuilt.unwrap_or_else(|_| frame.bytes().clone())
}

/// Makes sure a statement exists on the backend before a message uses it.
#[derive(Default)]
struct Preparer {
    /// Statements this segment prepares before the backend has confirmed them.
    preparing: HashSet<u64>,
    /// The unnamed statement on the backend is the one the client last parsed.
    unnamed_ready: bool,
}

impl Preparer {
    fn ensure(
        &mut self,
        conn: &Backend,
        statement: &Statement,
        unnamed: bool,
        out: &mut Vec<Bytes>,
        queue: &mut VecDeque<Expect>,
    ) {
        if unnamed {
            if !self.unnamed_ready {
                out.push(build_parse(b"", &statement.query, &statement.param_types));
                queue.push_back(Expect::swallow(Reply::Parse));
                self.unnamed_ready = true;
            }
        } else if !conn.prepared.contains(&statement.id) && self.preparing.insert(statement.id) {
            out.push(build_parse(
                &statement.server_name(),
                &statement.query,
                &statement.param_types,
            ));
            queue.push_back(Expect::Sent {
                reply: Reply::Parse,
                mode: Mode::Swallow,
                effects: Vec::new(),
                prepares: Some(statement.id),
            });
        }
    }
}
