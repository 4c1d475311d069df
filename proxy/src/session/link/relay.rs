//! Running messages on one shard's backend and relaying its answers: attaching the backend,
//! bringing its settings in line with the client's, sending a held `BEGIN`, driving the
//! exchange, and recording what it did (transaction state, settings, whether the backend goes
//! back to its pool).

use std::future::Future;

use futures::FutureExt;
use shardline_router::ShardId;

use crate::backend::conn::Backend;
use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::Frame;
use crate::session::link::attach::Attached;
use crate::session::link::exchange::{self, Completed, ExchangeError, Expect, Outcome, Reply};
use crate::session::link::outgoing::{self, Outgoing};
use crate::session::state::settings;
use crate::session::state::settings::apply_effects;
use crate::session::state::transaction::Transaction;
use crate::session::{local, ClientError, Session, SessionEnd};

/// How an exchange left the backend, for callers that go on from there.
#[derive(Debug)]
pub(crate) struct Settled {
    /// Status of its last `ReadyForQuery`.
    pub(crate) ready: u8,
    /// Its last command tag.
    pub(crate) last_tag: Option<Completed>,
}

impl Session {
    /// Runs messages on one shard's backend: attaches it, brings its settings in line with the
    /// client's, sends any held `BEGIN`, then sends what `build` makes for that backend and
    /// relays the answers.
    pub(crate) fn exchange<'a, F>(
        &'a mut self,
        loaded: &'a Loaded,
        shard: ShardId,
        build: F,
    ) -> impl Future<Output = Result<(), SessionEnd>> + 'a
    where
        F: FnOnce(&mut Pooled, &mut Outgoing) + 'a,
    {
        self.exchange_with(loaded, shard, true, build)
    }

    /// [`Session::exchange`], optionally leaving a held `BEGIN` held (for messages that do not
    /// touch data, such as a lone `Parse`, which must not decide the transaction's shard).
    ///
    /// This and [`Session::exchange`] are plain functions around one future: an `async fn`
    /// calling another keeps its arguments twice, and the future is allocated per request.
    pub(crate) fn exchange_with<'a, F>(
        &'a mut self,
        loaded: &'a Loaded,
        shard: ShardId,
        start_held: bool,
        build: F,
    ) -> impl Future<Output = Result<(), SessionEnd>> + 'a
    where
        F: FnOnce(&mut Pooled, &mut Outgoing) + 'a,
    {
        self.exchange_settled(loaded, shard, start_held, build)
            .map(|settled| settled.map(|_| ()))
    }

    /// [`Session::exchange_with`], telling how the backend was left (`None` when the exchange
    /// failed and the client was answered).
    ///
    /// An `async` block rather than an `async fn`, so the arguments are kept once in it.
    #[allow(clippy::manual_async_fn)] // an `async fn` is what this avoids
    pub(crate) fn exchange_settled<'a, F>(
        &'a mut self,
        loaded: &'a Loaded,
        shard: ShardId,
        start_held: bool,
        build: F,
    ) -> impl Future<Output = Result<Option<Settled>, SessionEnd>> + 'a
    where
        F: FnOnce(&mut Pooled, &mut Outgoing) + 'a,
    {
        async move {
            let started = std::time::Instant::now();
            if self.must_settle_others(shard) {
                Box::pin(self.settle_others(shard)).await;
            }
            // Counted by this exchange's end (`finish`), if it gets that far.
            self.parses_answered = None;
            let attached = match self.attach_now(loaded, shard) {
                Ok(Attached::Ready(conn)) => Ok(conn),
                Ok(Attached::Wait(pool)) => {
                    Box::pin(self.attach_waiting(loaded, shard, pool)).await
                }
                Err(e) => Err(e),
            };
            let mut conn = match attached {
                Ok(conn) => conn,
                Err(e) => {
                    self.tx.fail();
                    return self.fail(e).await.map(|()| None);
                }
            };
            let outgoing = self.compose(shard, &mut conn, start_held, build);
            let sent = conn.send(&outgoing.bytes).await;
            let mut queue = outgoing.sent();
            let result = match sent {
                Ok(()) => {
                    // A message run outside the client's transaction block (it touches no
                    // data, and the transaction has not reached this shard) must not tell the
                    // client its transaction is gone: its `ReadyForQuery` carries the client's
                    // status. So must a message run in a transaction that failed elsewhere
                    // (another shard, or a refusal): the backend itself still reports a healthy
                    // one.
                    let outside = self.tx.open() && !self.tx.shards.contains(&shard);
                    let status = (outside || self.tx.failed).then(|| self.tx.status());
                    exchange::drive(
                        &mut conn,
                        &mut queue,
                        &mut self.out,
                        &mut self.input,
                        status,
                    )
                    .await
                }
                Err(e) => Err(ExchangeError::Backend(e)),
            };
            outgoing::give_back_queue(queue);
            let (ok, ended) = result
                .as_ref()
                .map_or((false, false), |o| (!o.failed, o.ready == Some(b'I')));
            self.ctx
                .stats
                .record_query(loaded, shard, ok, ended, started.elapsed());
            self.finish(shard, conn, result).await
        }
    }

    /// Everything a backend is sent for one exchange — settings sync, held `BEGIN`, then what
    /// `build` writes — with the matching answer queue.
    pub(crate) fn compose<F>(
        &mut self,
        shard: ShardId,
        conn: &mut Pooled,
        start_held: bool,
        build: F,
    ) -> Outgoing
    where
        F: FnOnce(&mut Pooled, &mut Outgoing),
    {
        let mut outgoing = Outgoing::new();
        self.prelude(shard, conn, &mut outgoing, start_held);
        build(conn, &mut outgoing);
        outgoing
    }

    /// [`Session::compose`] with nothing after the prelude: for callers that write their own
    /// messages and count the prelude's answers (`queue.len()` statements) to skip them.
    pub(crate) fn prelude_only(&mut self, shard: ShardId, conn: &mut Pooled) -> Outgoing {
        self.compose(shard, conn, true, |_, _| {})
    }

    /// Settings sync and, for a shard joining the client's transaction, what the transaction
    /// replays (its `BEGIN`, `SET LOCAL`s and savepoints), prepended to what a backend is sent.
    /// `joins` is false for messages that touch no data, which must not start the transaction
    /// on a shard.
    pub(crate) fn prelude(
        &mut self,
        shard: ShardId,
        conn: &mut Pooled,
        out: &mut Outgoing,
        joins: bool,
    ) {
        let applied = conn.settings.as_ref();
        if !applied.is_some_and(|applied| applied.same(&self.settings)) {
            if let Some(sql) = settings::sync_sql(applied, &self.settings) {
                // The backend reads the whole string in the encoding it has before it runs.
                self.push_sql(conn, &sql, out);
            }
            // The client's own map from now on: the next sync of the two is one comparison.
            conn.settings = Some(self.settings.clone());
        }
        if joins && self.tx.open() && !self.tx.shards.contains(&shard) {
            self.push_sql(conn, &self.tx.join_sql(), out);
            self.tx.shards.insert(shard);
            if self.tx.settings_before.is_none() {
                self.tx.settings_before = Some(self.settings.clone());
            }
        }
    }

    /// Queues `sql` for `conn`, its answers swallowed, in the encoding the backend reads it in.
    /// Text that encoding cannot carry (the client changed `client_encoding` since it sent it)
    /// is read in UTF8, and the client's encoding set again after it.
    fn push_sql(&self, conn: &Backend, sql: &str, out: &mut Outgoing) {
        let messages = match local::query_message_in(conn.client_encoding(), sql) {
            Ok(message) => vec![message],
            Err(_) => {
                let restore = self.settings.get("client_encoding").map_or_else(
                    || "RESET client_encoding".to_owned(),
                    |value| format!("SET client_encoding = {value}"),
                );
                vec![
                    local::query_message("SET client_encoding = 'UTF8'"),
                    local::query_message(sql),
                    local::query_message(&restore),
                ]
            }
        };
        for message in messages {
            out.send(&message, Expect::swallow(Reply::Cycle));
        }
    }

    /// Notes that `shard`'s backend reported no transaction. If it took part in the client's
    /// transaction, that transaction ended there (its `COMMIT` or `ROLLBACK` ran on its only
    /// shard). Returns the error that ends the session when other shards were still in it: the
    /// transaction ended on one shard alone and can no longer end whole. The decision refuses
    /// every request that could do this; this is the backstop. A transaction still held
    /// (nothing routed yet) stays open.
    fn left_transaction(&mut self, shard: ShardId) -> Option<String> {
        if !self.tx.shards.remove(&shard) {
            return None;
        }
        if self.tx.shards.is_empty() {
            self.tx = Transaction::default();
            return None;
        }
        let others: Vec<ShardId> = self.tx.shards.iter().copied().collect();
        Some(format!(
            "the transaction ended on shard {} alone while shards {} still took part in it; they are rolled back and the session ends",
            self.shard_names(&[shard]),
            self.shard_names(&others)
        ))
    }

    /// Passes on a backend's `FATAL` error and ends the session, as PostgreSQL closes the
    /// connection after one: the client learns why (57P01 after `pg_terminate_backend`, 25P03
    /// after an idle-in-transaction timeout) and reconnects, whatever its transaction held.
    pub(crate) async fn end_as_terminated(
        &mut self,
        shard: ShardId,
        fatal: &Frame,
    ) -> Result<Option<Settled>, SessionEnd> {
        let name = self.shard_names(&[shard]);
        let text = msg::error_field(fatal, b'M').unwrap_or("").to_owned();
        self.out
            .push(&msg::error_naming_shard(fatal, &name))
            .await?;
        self.out.flush().await?;
        Err(SessionEnd::BackendLost(format!("shard {name}: {text}")))
    }

    /// Tells the client why its session ends (a `FATAL` error with `text`) and ends it: a
    /// shard connection its transaction needed is gone.
    async fn end_session(&mut self, sqlstate: &str, text: String) -> SessionEnd {
        if let Err(e) = self.out.push(&msg::fatal(sqlstate, &text)).await {
            return SessionEnd::ClientIo(e);
        }
        match self.out.flush().await {
            Ok(()) => SessionEnd::BackendLost(text),
            Err(e) => SessionEnd::ClientIo(e),
        }
    }

    /// Answers an exchange that failed: the backend is discarded; the session ends when the
    /// client's connection failed, the backend's was terminated, or a transaction lost a shard.
    async fn exchange_failed(
        &mut self,
        shard: ShardId,
        mut conn: Pooled,
        error: ExchangeError,
    ) -> Result<Option<Settled>, SessionEnd> {
        conn.broken = true;
        Pools::discard(conn);
        match error {
            ExchangeError::Client(e) => Err(SessionEnd::ClientIo(e)),
            ExchangeError::ClientFrame(e) => Err(SessionEnd::Protocol(e.to_string())),
            ExchangeError::Terminated(fatal) => self.end_as_terminated(shard, &fatal).await,
            e => {
                let name = self.shard_names(&[shard]);
                let error = match &e {
                    ExchangeError::Backend(backend) => ClientError::from_backend(&name, backend),
                    other => ClientError::lost_shard(&name, other),
                };
                if self.tx.open() {
                    // The transaction's backend there is gone with its work: the session ends,
                    // as PgBouncer ends a client whose server connection it had to close.
                    return Err(self.end_session(error.sqlstate, error.message).await);
                }
                self.fail(error).await.map(|()| None)
            }
        }
    }

    /// Records what an exchange did and returns or keeps the backend.
    pub(crate) async fn finish(
        &mut self,
        shard: ShardId,
        mut conn: Pooled,
        result: Result<Outcome, ExchangeError>,
    ) -> Result<Option<Settled>, SessionEnd> {
        let outcome = match result {
            Ok(outcome) => outcome,
            // Boxed: the failure paths' state would otherwise weigh on every exchange.
            Err(e) => return Box::pin(self.exchange_failed(shard, conn, e)).await,
        };
        self.parses_answered = Some(outcome.parsed);
        let rolled_back =
            outcome.ready == Some(b'I') && outcome.last_tag == Some(Completed::Rollback);
        if rolled_back {
            // Settings changed inside the transaction are undone with it.
            if let Some(before) = self.tx.settings_before.take() {
                self.settings = before;
            }
            conn.settings = None;
        } else {
            let starts_transaction = !self.tx.open() && outcome.ready.is_some_and(|r| r != b'I');
            if starts_transaction && !outcome.effects.is_empty() {
                // `BEGIN; SET …` in one request: a rollback returns to the settings before it.
                self.tx.settings_before = Some(self.settings.clone());
            }
            if !outcome.effects.is_empty() {
                let shared = conn
                    .settings
                    .as_ref()
                    .is_some_and(|a| a.same(&self.settings));
                apply_effects(&mut self.settings, &outcome.effects);
                if shared {
                    conn.settings = Some(self.settings.clone());
                } else if let Some(applied) = conn.settings.as_mut() {
                    apply_effects(applied, &outcome.effects);
                }
            }
        }
        self.awaiting_sync = outcome.awaiting_sync;
        if outcome.forgot_statements {
            self.statements.clear();
        }
        if outcome.skipping {
            self.skip_to_sync = true;
        }
        let settled = outcome.ready.map(|ready| Settled {
            ready,
            last_tag: outcome.last_tag,
        });
        match outcome.ready {
            Some(b'I') => {
                let stranded = self.left_transaction(shard);
                self.keep_or_release(shard, conn, false);
                if let Some(text) = stranded {
                    // Ending the session closes the other shards' backends, which rolls them back.
                    tracing::error!("{text}");
                    return Err(Box::pin(self.end_session(sqlstate::INTERNAL, text)).await);
                }
            }
            Some(status) => {
                self.tx.shards.insert(shard);
                if status == b'E' {
                    self.tx.failed = true;
                }
                if self.tx.settings_before.is_none() {
                    self.tx.settings_before = Some(self.settings.clone());
                }
                self.keep_or_release(shard, conn, true);
            }
            // Answers after `Flush`, or mid-COPY: the backend is in the middle of something.
            None => self.keep_or_release(shard, conn, true),
        }
        Ok(settled)
    }
}
