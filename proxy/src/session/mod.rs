//! One client session after login: the protocol loop, as read → decide → execute.
//!
//! The loop reads the client's messages. A simple-protocol `Query` is handled at once
//! ([`simple`]); extended-protocol messages are collected up to `Sync` or `Flush` (one
//! pipeline segment, one implicit transaction) and handled together once the `Bind` parameters
//! are known ([`extended`]). Either way the request is routed and handed to the one pure
//! decision ([`decide`]), whose [`Action`](decide::Action) an executor carries out: locally
//! ([`local`]), on one shard ([`link`]), or on several ([`multi`]). What the session remembers
//! between requests is plain values in [`state`].
//!
//! Transactions: `BEGIN` is held until the first routed statement; each shard a statement of
//! the transaction needs then joins it (replaying `BEGIN`, `SET LOCAL`s and open savepoints),
//! and `COMMIT` ends it on all of them together ([`multi::transaction`]). In transaction
//! pooling mode a backend goes back to its pool whenever it reports `ReadyForQuery` idle.

mod decide;
mod error;
mod extended;
mod generated;
mod link;
mod local;
mod multi;
mod simple;
pub(crate) mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::socket::SocketRead;
use shardline_router::config::PoolMode;
use shardline_router::ShardId;

use crate::backend::pool::Pooled;
use crate::cancel::Registration;
use crate::context::{LastShape, Loaded, ProxyContext};
use crate::migration::{Generation, Ticket};
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::encoding::ClientEncoding;
use crate::protocol::{Frame, FrameError, FrameReader};
use decide::Facts;
pub use error::ClientError;
pub use link::output::ClientOutput;
pub use state::settings;
use state::settings::Settings;
use state::statements::ClientStatements;
use state::transaction::Transaction;

/// Who the client is, as established at startup.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub database: String,
    pub pool_mode: PoolMode,
    /// Settings from the startup packet: what `RESET ALL` / `DISCARD ALL` return to.
    pub startup_settings: Settings,
    /// The reported settings (`ParameterStatus`) the client was told at login, by their
    /// canonical names: what `DISCARD ALL` reports again for those the client changed.
    /// Shared by the clients told the same (see [`ProxyContext::shared_settings`]).
    pub reported: Arc<BTreeMap<String, String>>,
    /// The `client_encoding` among them: the client's text arrives in it until it sets
    /// another. Read once here, as every request needs it.
    pub reported_encoding: ClientEncoding,
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
    #[error("idle in a transaction longer than its idle_in_transaction_session_timeout")]
    IdleInTransaction,
}

/// A logged-in client.
pub struct Session {
    ctx: Arc<ProxyContext>,
    input: FrameReader<SocketRead>,
    out: ClientOutput,
    identity: Identity,
    settings: Settings,
    statements: ClientStatements,
    /// Backends this client holds right now, by shard.
    conns: BTreeMap<ShardId, Pooled>,
    /// The pools this client checked out from, found once per config version.
    known_pools: link::attach::KnownPools,
    tx: Transaction,
    /// An extended-protocol COPY finished; the backend waits for the client's `Sync`.
    awaiting_sync: bool,
    /// The client's cancel key: its process id marks the backends the client holds. Declared
    /// after `conns`, so it is dropped after them (fields drop in order): the id is not given
    /// back for another client while a backend still carries it.
    cancel: Registration,
    /// Extended-protocol messages since the last `Sync`/`Flush`.
    batch: Vec<Frame>,
    /// The segment being run ended with `Flush`: its pipeline goes on after it.
    segment_open: bool,
    /// A statement of the current pipeline failed: like PostgreSQL, the proxy ignores the
    /// client's messages up to `Sync`.
    skip_to_sync: bool,
    /// Client `Parse` messages the last single-shard exchange or scatter answered with
    /// `ParseComplete` (see [`Outcome::parsed`](link::exchange::Outcome::parsed)); `None`
    /// when that is not known (the backend was lost). Read only right after a segment's own
    /// exchange or scatter (`Session::settle_parses`).
    parses_answered: Option<usize>,
    /// The current pipeline runs on several shards (see [`extended::pipeline`]).
    spread: Option<extended::pipeline::Spread>,
    /// Statements rewritten to take generated keys, reused when a driver parses them again.
    rewrites: generated::Rewrites,
    /// The plan of the last simple-protocol statement shape.
    last_shape: LastShape,
    /// The config snapshot of the last request, used again while it is current (see
    /// [`ProxyContext::refresh`]).
    held_config: Option<Arc<Loaded>>,
    /// Held while a transaction runs: resharding waits for older ones before dual writes.
    write_ticket: Option<Ticket>,
    /// The generation of the session's last write ticket, for taking the next one without
    /// touching anything shared while it is current.
    writes_seen: Option<Arc<Generation>>,
    /// Held while a transaction writes moving keys: a cutover waits for it.
    dual_ticket: Option<Ticket>,
}

impl Session {
    /// A session for a client that has logged in.
    pub fn new(
        ctx: Arc<ProxyContext>,
        input: FrameReader<SocketRead>,
        out: ClientOutput,
        identity: Identity,
        cancel: Registration,
    ) -> Session {
        Session {
            ctx,
            input,
            out,
            settings: identity.startup_settings.clone(),
            identity,
            statements: ClientStatements::default(),
            conns: BTreeMap::new(),
            known_pools: link::attach::KnownPools::default(),
            tx: Transaction::default(),
            awaiting_sync: false,
            cancel,
            batch: Vec::new(),
            segment_open: false,
            skip_to_sync: false,
            parses_answered: None,
            spread: None,
            rewrites: generated::Rewrites::default(),
            last_shape: LastShape::default(),
            held_config: None,
            write_ticket: None,
            writes_seen: None,
            dual_ticket: None,
        }
    }

    /// Serves the client until it disconnects.
    ///
    /// Written as a function returning an `async move` block: an `async fn` taking `self` by
    /// value keeps the session twice in its future (the argument and its local copy), and
    /// this future lives as long as the client stays connected.
    #[allow(clippy::manual_async_fn)] // an `async fn` is what this avoids
    pub fn run(mut self) -> impl std::future::Future<Output = Result<(), SessionEnd>> + Send {
        async move {
            let result = self.serve().await;
            Box::pin(self.release_all()).await;
            result
        }
    }

    async fn serve(&mut self) -> Result<(), SessionEnd> {
        loop {
            let read = match self.idle_in_transaction_limit() {
                Some(limit) => match tokio::time::timeout(limit, self.next_message()).await {
                    Ok(read) => read,
                    Err(_) => return Box::pin(self.end_idle_transaction()).await,
                },
                None => self.next_message().await,
            };
            let frame = match read {
                Ok(f) => f,
                Err(FrameError::Closed) => return Err(SessionEnd::Disconnected),
                Err(e @ (FrameError::TooLarge { .. } | FrameError::BadLength(_))) => {
                    let code = if matches!(e, FrameError::TooLarge { .. }) {
                        sqlstate::PROGRAM_LIMIT_EXCEEDED
                    } else {
                        sqlstate::PROTOCOL_VIOLATION
                    };
                    let text = format!("{e}; closing the connection");
                    return Err(Box::pin(self.protocol_violation(code, text)).await);
                }
                Err(FrameError::Io(e)) => return Err(SessionEnd::ClientIo(e)),
            };
            if self.skip_to_sync {
                match frame.tag() {
                    b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => continue,
                    b'S' => {
                        self.skip_to_sync = false;
                        Box::pin(self.end_failed_pipeline()).await?;
                        continue;
                    }
                    _ => {}
                }
            }
            if self.write_ticket.is_none() {
                let seen = self.writes_seen.take();
                self.write_ticket = Some(self.ctx.gate.writes.ticket(seen));
            }
            if !self.serve_one(frame).await? {
                return Ok(());
            }
            // A request ends with its last message: an extended-protocol one collected but
            // not yet run keeps its ticket (not one taken per message, five per transaction).
            if !self.tx.open()
                && self.batch.is_empty()
                && self.spread.is_none()
                && self.conns.values().all(|c| !c.unsynced)
            {
                if let Some(ticket) = self.write_ticket.take() {
                    self.writes_seen = ticket.end();
                }
                self.dual_ticket = None;
            }
        }
    }

    /// The client's next message. A session waiting for its client holds no buffers: they are
    /// freed first and taken again when bytes arrive, so idle clients cost little memory.
    async fn next_message(&mut self) -> Result<Frame, FrameError> {
        if self.input.is_empty() {
            self.out.release();
        }
        self.input.await_input().await?;
        self.input.read().await
    }

    /// How long the client may stay idle inside a transaction block: its
    /// `idle_in_transaction_session_timeout`, enforced by the proxy because a held transaction
    /// (or one whose backends wait between statements) has no server counting for it, or the
    /// proxy's `idle_transaction_timeout_ms` (PgBouncer's `idle_transaction_timeout`) if
    /// shorter, so no client holds backends forever.
    /// Like PostgreSQL's, the clock runs only while the client has its `ReadyForQuery`: not in
    /// the middle of a pipeline (after a `Flush`, or skipping to `Sync` after an error).
    fn idle_in_transaction_limit(&self) -> Option<Duration> {
        let mid_pipeline = !self.batch.is_empty()
            || self.awaiting_sync
            || self.skip_to_sync
            || self.spread.is_some()
            || self.conns.values().any(|conn| conn.unsynced);
        if !self.tx.open() || mid_pipeline {
            return None;
        }
        let own = self
            .settings
            .get("idle_in_transaction_session_timeout")
            .and_then(|value| settings::duration_of(value, Duration::from_millis(1)));
        let proxy_wide = self.ctx.snapshot().config.idle_transaction_timeout;
        match (own, proxy_wide) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the session for a protocol violation: the client is told why (a `FATAL` error,
    /// `code` and `text`), and the connection closes.
    pub(crate) async fn protocol_violation(&mut self, code: &str, text: String) -> SessionEnd {
        if let Err(e) = self.out.push(&msg::fatal(code, &text)).await {
            return SessionEnd::ClientIo(e);
        }
        match self.out.flush().await {
            Ok(()) => SessionEnd::Protocol(text),
            Err(e) => SessionEnd::ClientIo(e),
        }
    }

    /// Ends a session idle in its transaction beyond its limit, as PostgreSQL does: a FATAL
    /// 25P03, then the connection closes (and the transaction's backends roll back).
    async fn end_idle_transaction(&mut self) -> Result<(), SessionEnd> {
        let fatal = msg::fatal(
            sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
            "terminating connection due to idle-in-transaction timeout",
        );
        self.out.push(&fatal).await?;
        self.out.flush().await?;
        Err(SessionEnd::IdleInTransaction)
    }

    /// Handles one client message; false when the client said goodbye.
    ///
    /// The work of a request runs in a future allocated for it (`Box::pin`): the state of
    /// every way a request can go is large, and a session waiting for its client keeps only
    /// this loop's.
    async fn serve_one(&mut self, frame: Frame) -> Result<bool, SessionEnd> {
        {
            match frame.tag() {
                b'Q' => Box::pin(self.simple_query(frame)).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    self.collect(frame);
                    if self.collect_buffered() {
                        Box::pin(self.run_batch()).await?;
                    }
                }
                b'S' | b'H' => {
                    self.collect(frame);
                    Box::pin(self.run_batch()).await?;
                }
                b'F' => Box::pin(self.function_call(frame)).await?,
                b'X' => return Ok(false),
                // COPY messages outside COPY (e.g. after the proxy refused the COPY) are
                // ignored, as PostgreSQL ignores them after an error.
                b'd' | b'c' | b'f' => {}
                other => {
                    let text = format!("invalid frontend message type {:?}", other as char);
                    let code = sqlstate::PROTOCOL_VIOLATION;
                    return Err(Box::pin(self.protocol_violation(code, text)).await);
                }
            }
        }
        Ok(true)
    }

    /// Adds an extended-protocol message to the segment being collected, which starts in a
    /// spare list of this thread's with room for a whole one (`Parse`, `Bind`, `Describe`,
    /// `Execute`, `Sync` and more): it is neither allocated per segment nor grown as messages
    /// arrive.
    fn collect(&mut self, frame: Frame) {
        if self.batch.capacity() == 0 {
            self.batch = extended::segment::take_frames();
        }
        self.batch.push(frame);
    }

    /// Collects the rest of the segment if the client's read brought it whole (a driver
    /// sends `Parse`, `Bind`, `Describe`, `Execute` and `Sync` in one write); true when it
    /// ended with `Sync` or `Flush`, and is to be run. Anything else stays buffered for the
    /// loop, which reads it next.
    fn collect_buffered(&mut self) -> bool {
        let segment = |tag| matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H');
        while let Some(frame) = self.input.read_buffered(segment) {
            let ends = matches!(frame.tag(), b'S' | b'H');
            self.collect(frame);
            if ends {
                return true;
            }
        }
        false
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
        // Boxed: ending a failed pipeline may finish transactions on several shards, and every
        // request that can fail would otherwise carry that state.
        Box::pin(self.end_failed_pipeline()).await
    }

    /// Refuses the current request with `error`, failing the client's transaction as an error
    /// in it does on PostgreSQL.
    async fn refuse(&mut self, error: ClientError) -> Result<(), SessionEnd> {
        self.tx.fail();
        self.fail(error).await
    }

    /// The `client_encoding` the client's text arrives in: the one it set, or the one it was
    /// told at login.
    fn encoding(&self) -> ClientEncoding {
        self.settings
            .client_encoding()
            .unwrap_or(self.identity.reported_encoding)
    }

    /// Text the client sent, as UTF-8: read in its `client_encoding` (borrowed when it is
    /// UTF-8 or ASCII, as nearly every statement is).
    fn client_text<'t>(&self, bytes: &'t [u8]) -> Result<std::borrow::Cow<'t, str>, ClientError> {
        self.encoding().decode(bytes).map_err(ClientError::from)
    }

    /// The session's state as the decision reads it.
    fn facts<'a>(&'a self, loaded: &'a Loaded) -> Facts<'a> {
        let unsynced = if self.conns.values().any(|conn| conn.unsynced) {
            self.unsynced_shards()
        } else {
            Vec::new()
        };
        Facts {
            config: &loaded.config,
            tx: &self.tx,
            held: self.conns.keys().min().copied(),
            unsynced,
            spread: self.spread.is_some(),
            awaiting_sync: self.awaiting_sync,
            segment_open: self.segment_open,
            cutover_holds: self.ctx.gate.holds(&self.dual_ticket),
        }
    }

    /// The names of `shards`, for messages.
    fn shard_names(&self, shards: &[ShardId]) -> String {
        decide::shard_names(&self.ctx.snapshot().config, shards)
    }
}
