//! One client session after login: the protocol loop.
//!
//! The loop reads the client's messages, asks the router where each statement goes, attaches
//! backends from the pools, and relays answers. Simple-protocol `Query` messages are handled
//! one at a time; extended-protocol messages are collected up to `Sync` or `Flush` (one
//! pipeline segment, one implicit transaction) and routed together once the `Bind` parameters
//! are known.
//!
//! Transactions: `BEGIN` is held until the first routed statement, whose shard the
//! transaction is then pinned to; a statement needing another shard fails the transaction the
//! way PostgreSQL fails one on error. In transaction pooling mode a backend goes back to its
//! pool whenever it reports `ReadyForQuery` idle.

mod aggregate;
mod assembled;
mod attach;
mod batch;
mod binary;
mod copy_in;
mod dual;
mod exchange;
mod gather;
mod having;
mod introspect;
mod local;
mod numeric;
mod order;
mod ordered;
mod output;
mod pipeline;
mod relay;
mod scatter;
pub mod settings;
mod split;
mod statements;
mod transaction;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use shardline_router::config::PoolMode;
use shardline_router::{Param, Route, RouteError, ShardId, StatementKind};
use tokio::net::tcp::OwnedReadHalf;

use crate::backend::pool::Pooled;
use crate::cancel::CancelTargets;
use crate::context::ProxyContext;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::frontend::query_text;
use crate::protocol::{Frame, FrameError, FrameReader};
use exchange::{Effect, Expect, Reply};
pub use output::ClientOutput;
use settings::Settings;
use statements::ClientStatements;
use transaction::Transaction;

use crate::migration::Ticket;

/// Who the client is, as established at startup.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub database: String,
    pub pool_mode: PoolMode,
    /// Settings from the startup packet: what `RESET ALL` / `DISCARD ALL` return to.
    pub startup_settings: Settings,
}

/// An error the client should see, with a SQLSTATE.
#[derive(Debug, Clone)]
pub struct ClientError {
    pub sqlstate: &'static str,
    pub message: String,
    /// A full `ErrorResponse` from a shard to pass on instead.
    pub frame: Option<Bytes>,
}

impl ClientError {
    fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            sqlstate,
            message: message.into(),
            frame: None,
        }
    }

    fn bytes(&self) -> Bytes {
        self.frame
            .clone()
            .unwrap_or_else(|| msg::error(self.sqlstate, &self.message))
    }
}

impl From<RouteError> for ClientError {
    fn from(e: RouteError) -> Self {
        ClientError::new(e.sqlstate, e.message)
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("client disconnected")]
    Disconnected,
    #[error("client sent an invalid message: {0}")]
    Protocol(String),
    #[error("lost the client connection: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("a shard connection failed inside a transaction: {0}")]
    BackendLost(String),
}

/// A logged-in client.
pub struct Session {
    ctx: Arc<ProxyContext>,
    input: FrameReader<OwnedReadHalf>,
    out: ClientOutput,
    identity: Identity,
    settings: Settings,
    statements: ClientStatements,
    /// Backends this client holds right now, by shard.
    conns: HashMap<ShardId, Pooled>,
    tx: Transaction,
    /// An extended-protocol COPY finished; the backend waits for the client's `Sync`.
    awaiting_sync: bool,
    cancel_targets: CancelTargets,
    /// Extended-protocol messages since the last `Sync`/`Flush`.
    batch: Vec<Frame>,
    /// The segment being run ended with `Flush`: its pipeline goes on after it.
    segment_open: bool,
    /// A statement of the current pipeline failed: like PostgreSQL, the proxy ignores the
    /// client's messages up to `Sync`.
    skip_to_sync: bool,
    /// The current pipeline runs on several shards (see [`pipeline`]).
    spread: Option<pipeline::Spread>,
    /// Held while a transaction runs: resharding waits for older ones before dual writes.
    write_ticket: Option<Ticket>,
    /// Held while a transaction writes moving keys: a cutover waits for it.
    dual_ticket: Option<Ticket>,
}

/// How an exchange left the backend, for callers that go on from there.
#[derive(Debug)]
struct Settled {
    /// Status of its last `ReadyForQuery`.
    ready: u8,
    /// Its last command tag.
    last_tag: Option<String>,
}

impl Session {
    /// A session for a client that has logged in.
    pub fn new(
        ctx: Arc<ProxyContext>,
        input: FrameReader<OwnedReadHalf>,
        out: ClientOutput,
        identity: Identity,
        cancel_targets: CancelTargets,
    ) -> Session {
        Session {
            ctx,
            input,
            out,
            settings: identity.startup_settings.clone(),
            identity,
            statements: ClientStatements::default(),
            conns: HashMap::new(),
            tx: Transaction::default(),
            awaiting_sync: false,
            cancel_targets,
            batch: Vec::new(),
            segment_open: false,
            skip_to_sync: false,
            spread: None,
            write_ticket: None,
            dual_ticket: None,
        }
    }

    /// Serves the client until it disconnects.
    pub async fn run(mut self) -> Result<(), SessionEnd> {
        let result = self.serve().await;
        self.release_all().await;
        result
    }

    async fn serve(&mut self) -> Result<(), SessionEnd> {
        loop {
            let frame = match self.input.read().await {
                Ok(f) => f,
                Err(FrameError::Closed) => return Err(SessionEnd::Disconnected),
                Err(e @ (FrameError::TooLarge { .. } | FrameError::BadLength(_))) => {
                    let code = if matches!(e, FrameError::TooLarge { .. }) {
                        sqlstate::PROGRAM_LIMIT_EXCEEDED
                    } else {
                        sqlstate::PROTOCOL_VIOLATION
                    };
                    self.out
                        .push(&msg::fatal(code, &format!("{e}; closing the connection")))
                        .await?;
                    self.out.flush().await?;
                    return Err(SessionEnd::Protocol(e.to_string()));
                }
                Err(FrameError::Io(e)) => return Err(SessionEnd::ClientIo(e)),
            };
            if self.skip_to_sync {
                match frame.tag() {
                    b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => continue,
                    b'S' => {
                        self.skip_to_sync = false;
                        self.end_failed_pipeline().await?;
                        continue;
                    }
                    _ => {}
                }
            }
            if self.write_ticket.is_none() {
                self.write_ticket = Some(self.ctx.gate.writes.ticket());
            }
            if !self.serve_one(frame).await? {
                return Ok(());
            }
            if !self.tx.open() && self.spread.is_none() && self.conns.values().all(|c| !c.unsynced)
            {
                self.write_ticket = None;
                self.dual_ticket = None;
            }
        }
    }

    /// Handles one client message; false when the client said goodbye.
    async fn serve_one(&mut self, frame: Frame) -> Result<bool, SessionEnd> {
        {
            match frame.tag() {
                b'Q' => self.simple_query(frame).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' => self.batch.push(frame),
                b'S' | b'H' => {
                    self.batch.push(frame);
                    self.run_batch().await?;
                }
                b'F' => self.function_call(frame).await?,
                b'X' => return Ok(false),
                // COPY messages outside COPY (e.g. after the proxy refused the COPY) are
                // ignored, as PostgreSQL ignores them after an error.
                b'd' | b'c' | b'f' => {}
                other => {
                    let text = format!("invalid frontend message type {:?}", other as char);
                    self.out
                        .push(&msg::fatal(sqlstate::PROTOCOL_VIOLATION, &text))
                        .await?;
                    self.out.flush().await?;
                    return Err(SessionEnd::Protocol(text));
                }
            }
        }
        Ok(true)
    }

    /// Answers the current request with an error. Inside a pipeline that goes on (the segment
    /// ended with `Flush`), the client's messages are then ignored up to `Sync`, as PostgreSQL
    /// does; otherwise the pipeline ends here with `ReadyForQuery`.
    async fn fail(&mut self, error: ClientError) -> Result<(), SessionEnd> {
        self.out.push(&error.bytes()).await?;
        if self.segment_open {
            self.skip_to_sync = true;
            return Ok(self.out.flush().await?);
        }
        self.end_failed_pipeline().await
    }

    async fn simple_query(&mut self, frame: Frame) -> Result<(), SessionEnd> {
        let loaded = self.ctx.snapshot();
        let sql = match query_text(&frame) {
            Ok(sql) => sql.to_owned(),
            Err(e) => {
                return self
                    .fail(ClientError::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ))
                    .await
            }
        };
        if let Some(reply) = self.explain_route(&loaded, &sql) {
            self.out.push(&reply).await?;
            self.out
                .push(&msg::ready_for_query(self.tx.status()))
                .await?;
            return Ok(self.out.flush().await?);
        }
        let (plan, literals) = self.ctx.plan_simple(&loaded, &sql);
        let literal_params: Vec<Param<'_>> =
            literals.iter().map(|l| Param::Text(l.as_bytes())).collect();
        if let Some(reply) = self.answer_locally(&plan.kind, &sql) {
            self.out.push(&reply).await?;
            self.out
                .push(&msg::ready_for_query(self.tx.status()))
                .await?;
            return Ok(self.out.flush().await?);
        }
        if self.tx.failed {
            if let (Some(shard), StatementKind::Commit | StatementKind::Rollback) =
                (self.tx.shard, &plan.kind)
            {
                // Like PostgreSQL, ending a failed transaction rolls it back, whatever was asked.
                self.tx.failed = false;
                let queue = VecDeque::from([Expect::relay(Reply::Cycle)]);
                return self
                    .exchange(&loaded, shard, |_| {
                        (vec![local::query_message("ROLLBACK")], queue)
                    })
                    .await;
            }
            return self.fail(local::aborted()).await;
        }
        if plan.kind == StatementKind::Commit
            && !self.tx.dual.is_empty()
            && !self.tx.failed_on_shard
        {
            if let Some(old) = self.tx.shard {
                let queue = VecDeque::from([Expect::relay(Reply::Cycle)]);
                return self
                    .commit_dual(&loaded, old, |_| (vec![frame.into_bytes()], queue))
                    .await;
            }
        }
        let dual = match dual::moving_keys(&loaded, &plan, &literal_params) {
            Ok(dual) => dual,
            Err(e) => {
                self.fail_transaction();
                return self.fail(e).await;
            }
        };
        if dual.is_some() && self.ctx.gate.holds(&self.dual_ticket) {
            // A cutover holds writes to moving keys; afterwards they may route elsewhere.
            self.ctx.gate.resumed().await;
            return Box::pin(self.simple_query(frame)).await;
        }
        let route = match (follows_session(&plan.kind), self.tx.shard) {
            (true, Some(shard)) => Ok(Route::Single(shard)),
            _ => plan.route(&loaded.config, &literal_params),
        };
        let route = match route {
            Ok(route) => route,
            Err(_) if dual.is_some() => {
                self.fail_transaction();
                return self.fail(dual::several_shards()).await;
            }
            Err(e) => {
                // COPY into a sharded table: each row goes to its shard.
                if plan.kind == StatementKind::CopyIn {
                    match shardline_router::copy::copy_into(&loaded.config, &sql) {
                        Some(Ok(spec)) => {
                            let delivery = gather::Delivery::simple();
                            return self.copy_split(&loaded, &sql, &spec, &delivery).await;
                        }
                        Some(Err(copy_error)) => {
                            self.fail_transaction();
                            return self.fail(copy_error.into()).await;
                        }
                        None => {}
                    }
                }
                // A multi-row INSERT whose rows belong to different shards runs as one
                // atomic statement per shard.
                let split = (plan.kind == StatementKind::Write)
                    .then(|| shardline_router::split::split_insert(&loaded.config, &sql, &()))
                    .flatten();
                let error = match split {
                    Some(Ok(parts)) => {
                        let source = gather::Source::Simple {
                            sql: &sql,
                            literals: &literal_params,
                        };
                        let delivery = gather::Delivery::simple();
                        return self.insert_split(&loaded, parts, &source, &delivery).await;
                    }
                    Some(Err(split_error)) => split_error,
                    None => e,
                };
                self.fail_transaction();
                return self.fail(error.into()).await;
            }
        };
        if let Some(notice) = self.route_notice(&loaded, &plan, &route, &literal_params) {
            self.out.push(&notice).await?;
        }
        let effects = match plan.kind {
            StatementKind::Compound => plan.parts().iter().map(effect_of).collect(),
            ref kind => vec![effect_of(kind)],
        };
        if let Some(keys) = dual {
            let Route::Single(old) = route else {
                self.fail_transaction();
                return self.fail(dual::several_shards()).await;
            };
            let queue = VecDeque::from([Expect::Sent {
                reply: Reply::Cycle,
                mode: exchange::Mode::Relay,
                effects,
                prepares: None,
            }]);
            return self
                .dual_write(&loaded, old, keys, |_| (vec![frame.into_bytes()], queue))
                .await;
        }
        match route {
            Route::Single(shard) => {
                let queue = VecDeque::from([Expect::Sent {
                    reply: Reply::Cycle,
                    mode: exchange::Mode::Relay,
                    effects,
                    prepares: None,
                }]);
                let touches_data = !follows_session(&plan.kind);
                self.exchange_with(&loaded, shard, touches_data, |_| {
                    (vec![frame.into_bytes()], queue)
                })
                .await
            }
            Route::Multi(shards) => {
                if let Some(how) = gather::Gather::of(&plan) {
                    // Aggregates combined, or ORDER BY / LIMIT merged from sorted streams.
                    let source = gather::Source::Simple {
                        sql: &sql,
                        literals: &literal_params,
                    };
                    let delivery = gather::Delivery::simple();
                    return self.gather(&loaded, &shards, source, how, delivery).await;
                }
                if let Err(e) = self.check_scatter_allowed(&shards) {
                    return self.fail(e).await;
                }
                let build = |_: &mut crate::backend::conn::Backend| {
                    (
                        vec![frame.clone().into_bytes()],
                        VecDeque::from([Expect::relay(Reply::Cycle)]),
                    )
                };
                self.scatter(&loaded, &shards, build).await
            }
        }
    }

    async fn function_call(&mut self, frame: Frame) -> Result<(), SessionEnd> {
        let loaded = self.ctx.snapshot();
        let shard = self.tx.shard.unwrap_or(loaded.config.default_shard);
        let queue = VecDeque::from([Expect::relay(Reply::Cycle)]);
        self.exchange(&loaded, shard, |_| (vec![frame.into_bytes()], queue))
            .await
    }
}

/// Statements about the session or transaction rather than data: they run wherever the
/// client's transaction runs (the default shard outside one).
fn follows_session(kind: &StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Begin
            | StatementKind::Commit
            | StatementKind::Rollback
            | StatementKind::TransactionControl
            | StatementKind::Set { .. }
            | StatementKind::SetLocal
            | StatementKind::Reset { .. }
            | StatementKind::ResetAll
            | StatementKind::DiscardAll
            | StatementKind::Show
            | StatementKind::Empty
    )
}

/// The setting change a statement makes when it succeeds.
fn effect_of(kind: &StatementKind) -> Option<Effect> {
    match kind {
        StatementKind::Set { name, value } if value.eq_ignore_ascii_case("default") => {
            Some(Effect::Reset { name: name.clone() })
        }
        StatementKind::Set { name, value } => Some(Effect::Set {
            name: name.clone(),
            value: value.clone(),
        }),
        StatementKind::Reset { name } => Some(Effect::Reset { name: name.clone() }),
        StatementKind::ResetAll => Some(Effect::ResetAll),
        _ => None,
    }
}
