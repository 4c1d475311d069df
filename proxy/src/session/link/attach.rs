//! Which backends a session holds: checking them out of the pools, returning them when the
//! transaction ends (or keeping them in session mode), and cleaning them up at disconnect.

use shardline_router::config::PoolMode;
use shardline_router::ShardId;

use crate::backend::conn::{BackendError, BackendTarget};
use crate::backend::pool::{Checkout, CheckoutError, Pool, Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::session::state::settings::Settings;
use crate::session::{decide, local, ClientError, Session};

/// How [`Session::attach_now`] left a checkout.
pub(crate) enum Attached {
    /// The backend, without waiting.
    Ready(Pooled),
    /// None free at once, or new transactions on the shard are paused:
    /// [`Session::attach_waiting`] waits, with the pool handle if one was taken.
    Wait(Option<Pool>),
}

impl Session {
    pub(crate) fn keep_or_release(&mut self, shard: ShardId, conn: Pooled, busy: bool) {
        if busy
            || self.tx.shards.contains(&shard)
            || conn.unsynced
            || self.awaiting_sync
            || self.identity.pool_mode == PoolMode::Session
        {
            self.conns.insert(shard, conn);
        } else {
            if let Some(pool) = conn.release() {
                self.known_pools.keep(shard, pool);
            }
        }
    }

    /// The backend for `shard`: the one already held, or a fresh checkout.
    pub(crate) async fn attach(
        &mut self,
        loaded: &Loaded,
        shard: ShardId,
    ) -> Result<Pooled, ClientError> {
        match self.attach_now(loaded, shard)? {
            Attached::Ready(conn) => Ok(conn),
            Attached::Wait(pool) => Box::pin(self.attach_waiting(loaded, shard, pool)).await,
        }
    }

    /// [`Session::attach`] without waiting: the backend already held, or a free one checked
    /// out at once (nearly every transaction), with no future to make; else what to wait with.
    pub(crate) fn attach_now(
        &mut self,
        loaded: &Loaded,
        shard: ShardId,
    ) -> Result<Attached, ClientError> {
        if let Some(conn) = self.conns.remove(&shard) {
            return Ok(Attached::Ready(conn));
        }
        if self.tx.shards.contains(&shard) {
            // The transaction's backend there is gone (its connection failed): a fresh one
            // would run outside the transaction, committing on its own.
            self.tx.fail();
            let name = decide::shard_names(&loaded.config, &[shard]);
            return Err(ClientError::new(
                sqlstate::CONNECTION_FAILURE,
                format!("the connection to shard {name} was lost during the transaction; roll it back and run it again"),
            ));
        }
        if self.ctx.pause.pausing() {
            return Ok(Attached::Wait(None));
        }
        let pool = self.pool_of(loaded, shard)?;
        match Pools::checkout_idle(pool, &loaded.config.pool) {
            Ok(Checkout::Ready(conn)) => Ok(Attached::Ready(self.cancellable(conn))),
            Ok(Checkout::Wait(pool)) => Ok(Attached::Wait(Some(pool))),
            Err(e) => Err(checkout_error(loaded, shard, e)),
        }
    }

    /// The rest of [`Session::attach`] when no backend was free at once: waits while new
    /// transactions on the shard are paused, then for a connection of its pool (`pool`, if
    /// [`Session::attach_now`] found it).
    pub(crate) async fn attach_waiting(
        &mut self,
        loaded: &Loaded,
        shard: ShardId,
        pool: Option<Pool>,
    ) -> Result<Pooled, ClientError> {
        self.ctx.pause.wait(loaded, shard).await;
        let pool = match pool {
            Some(pool) => pool,
            None => self.pool_of(loaded, shard)?,
        };
        let settings = &loaded.config.pool;
        let mut checkout = Pools::checkout_from(pool, settings).await;
        if matches!(checkout, Err(CheckoutError::Closed)) {
            // A reload retired the pool since the session found it (it is not kept again).
            let target = self.target(loaded, shard)?;
            checkout = Box::pin(self.ctx.pools.checkout(&target, settings)).await;
        }
        let conn = checkout.map_err(|e| checkout_error(loaded, shard, e))?;
        Ok(self.cancellable(conn))
    }

    /// The pool of `shard` for this session's user and database: the one the session kept
    /// (lent to it under this config version), else found in the proxy's pools.
    fn pool_of(&mut self, loaded: &Loaded, shard: ShardId) -> Result<Pool, ClientError> {
        if let Some(pool) = self.known_pools.take(loaded.version, shard) {
            return Ok(pool);
        }
        let target = self.target(loaded, shard)?;
        let pool = self
            .ctx
            .pools
            .pool(&target, &loaded.config.pool)
            .map_err(|e| checkout_error(loaded, shard, e))?;
        self.known_pools.lend(loaded.version, shard, &pool);
        Ok(pool)
    }

    /// `conn`, marked as this client's: a cancel request from the client reaches it until it
    /// goes back to its pool, which clears the mark.
    pub(crate) fn cancellable(&self, conn: Pooled) -> Pooled {
        conn.held_by.set(self.cancel.pid);
        conn
    }

    /// Checks out a backend of `shard` for the session's next [`Session::attach`] if its pool
    /// has one free at once (or room to open one); false otherwise. For a statement that
    /// already holds a connection to the shard and would otherwise wait for a second.
    pub(crate) async fn reserve_now(&mut self, loaded: &Loaded, shard: ShardId) -> bool {
        if self.conns.contains_key(&shard) {
            return true;
        }
        let Ok(target) = self.target(loaded, shard) else {
            return false;
        };
        let settings = &loaded.config.pool;
        let Ok(pool) = self.ctx.pools.pool(&target, settings) else {
            return false;
        };
        let Some(conn) = Pools::checkout_now(&pool, settings).await else {
            return false;
        };
        let conn = self.cancellable(conn);
        self.conns.insert(shard, conn);
        true
    }

    /// Returns a backend taken by [`Session::reserve_now`] that was not used.
    pub(crate) fn release_reserved(&mut self, shard: ShardId) {
        if let Some(conn) = self.conns.remove(&shard) {
            self.keep_or_release(shard, conn, false);
        }
    }

    pub(crate) fn target(
        &self,
        loaded: &Loaded,
        shard: ShardId,
    ) -> Result<BackendTarget, ClientError> {
        let config = &loaded.config;
        let s = config.shards.get(shard).ok_or_else(|| {
            ClientError::new(sqlstate::INTERNAL, "shard vanished from the config")
        })?;
        let user = config.user(&self.identity.user).ok_or_else(|| {
            ClientError::new(
                sqlstate::INVALID_AUTHORIZATION,
                "user was removed from shards.yaml",
            )
        })?;
        Ok(BackendTarget::new(
            s,
            &user.name,
            user.backend_password(),
            &self.identity.database,
        ))
    }

    /// Returns every held backend at disconnect. Backends inside a transaction are dropped;
    /// session-mode backends are reset with `DISCARD ALL` so nothing leaks to the next client.
    pub(crate) async fn release_all(&mut self) {
        let in_transaction = self.tx.open() || self.awaiting_sync;
        for (_, mut conn) in std::mem::take(&mut self.conns) {
            // PostgreSQL rolls back what a client leaves open: closing the backend does that.
            if in_transaction || conn.unsynced {
                conn.broken = true;
            } else if self.identity.pool_mode == PoolMode::Session {
                reset_session(&mut conn).await;
            }
            if conn.broken {
                Pools::discard(conn);
            }
        }
    }

    /// Whether backends held after a `Flush` on other shards than `shard` are to be finished
    /// before an exchange with `shard` ([`Session::settle_others`]): their pipeline segment is
    /// over once the client moves elsewhere. Nearly never, so callers ask first and settle in
    /// a future of its own.
    pub(crate) fn must_settle_others(&self, shard: ShardId) -> bool {
        !(self.tx.open() || self.spread.is_some() || self.identity.pool_mode == PoolMode::Session)
            && self.conns.keys().any(|held| *held != shard)
    }

    /// Sends `Sync` to every held backend but `shard`'s and returns them to their pools.
    pub(crate) async fn settle_others(&mut self, shard: ShardId) {
        let others: Vec<ShardId> = self.conns.keys().copied().filter(|s| *s != shard).collect();
        for other in others {
            let Some(mut conn) = self.conns.remove(&other) else {
                continue;
            };
            let settled =
                conn.send(&msg::empty(b'S')).await.is_ok() && drain_to_ready(&mut conn).await;
            if !settled {
                Pools::discard(conn);
            }
        }
    }
}

/// Clears a session-mode backend's state before it serves another client.
pub(crate) async fn reset_session(conn: &mut Pooled) {
    let ok = conn
        .send(&local::query_message("DISCARD ALL"))
        .await
        .is_ok()
        && drain_to_ready(conn).await;
    if ok {
        conn.prepared.clear();
        conn.settings = Some(Settings::new());
    } else {
        conn.broken = true;
    }
}

/// Reads and drops a backend's answers up to `ReadyForQuery`; false if the backend failed or
/// is still in a transaction.
pub(crate) async fn drain_to_ready(conn: &mut Pooled) -> bool {
    ready_status(conn).await == Some(b'I')
}

/// Reads and drops the answers to `cycles` statements the proxy sent ahead of a request (the
/// settings sync, a transaction's replay). One that failed leaves the backend's settings
/// unknown, so they are synced from scratch next time rather than believed in line.
pub(crate) async fn skip_prelude(conn: &mut Pooled, cycles: usize) -> Result<(), BackendError> {
    let mut remaining = cycles;
    while remaining > 0 {
        let frame = conn.read().await?;
        match frame.tag() {
            msg::tag::READY_FOR_QUERY => remaining -= 1,
            msg::tag::ERROR_RESPONSE => conn.settings = None,
            _ => {}
        }
    }
    Ok(())
}

/// Reads and drops a backend's answers up to `ReadyForQuery` and returns its transaction
/// status; `None` if the backend failed.
pub(crate) async fn ready_status(conn: &mut Pooled) -> Option<u8> {
    loop {
        let frame = conn.read().await.ok()?;
        if frame.tag() == msg::tag::READY_FOR_QUERY {
            return Some(msg::ready_status(&frame));
        }
    }
}

/// The error a client gets when no backend of `shard` could be checked out.
pub(crate) fn checkout_error(loaded: &Loaded, shard: ShardId, e: CheckoutError) -> ClientError {
    let (name, host, port) = loaded.config.shards.get(shard).map_or(("?", "?", 0), |s| {
        (s.name.as_str(), s.host.as_str(), s.port)
    });
    match e {
        CheckoutError::Exhausted { .. } | CheckoutError::QueueFull { .. } => {
            ClientError::new(sqlstate::TOO_MANY_CONNECTIONS, format!("shard {name}: {e}"))
        }
        CheckoutError::Unavailable(refusal) => ClientError::new(
            sqlstate::CONNECTION_FAILURE,
            format!("shard {name} at {host}:{port} is unavailable: {refusal}"),
        ),
        CheckoutError::Backend(BackendError::Refused(frame)) => ClientError {
            sqlstate: sqlstate::CANNOT_CONNECT,
            message: String::new(),
            frame: Some(msg::error_naming_shard(&frame, name)),
        },
        other => ClientError::new(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "could not connect to shard {name} at {host}:{port}: {other}; check that the shard is up and shards.yaml points at it"
            ),
        ),
    }
}

/// The pool of each shard a session has used, under the config version it was found for:
/// the next checkout neither builds a target (four strings) nor looks one up by hash. A pool
/// is lent to the connection checked out of it and kept again when that connection is
/// released ([`Pooled::release`]), so a transaction writes no reference count that other
/// sessions' transactions write too.
#[derive(Default)]
pub(crate) struct KnownPools {
    version: u64,
    by_shard: Vec<Known>,
}

/// What a session knows of one shard's pool.
#[derive(Default)]
enum Known {
    #[default]
    Unknown,
    Here(Pool),
    /// Lent to a checked-out connection: the pool with this [`Pool::id`] is kept when it
    /// comes back.
    Lent(u64),
}

impl KnownPools {
    /// Takes the pool of `shard` found under config `version`, to lend to a checkout.
    fn take(&mut self, version: u64, shard: ShardId) -> Option<Pool> {
        if self.version != version {
            return None;
        }
        let slot = self.by_shard.get_mut(shard)?;
        match std::mem::take(slot) {
            Known::Here(pool) => {
                *slot = Known::Lent(pool.id());
                Some(pool)
            }
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Notes that `pool`, found for `shard` under config `version`, is lent to a checkout,
    /// forgetting what an older config version found.
    fn lend(&mut self, version: u64, shard: ShardId, pool: &Pool) {
        if self.version != version {
            self.by_shard.clear();
            self.version = version;
        }
        if self.by_shard.len() <= shard {
            self.by_shard.resize_with(shard + 1, Known::default);
        }
        self.by_shard[shard] = Known::Lent(pool.id());
    }

    /// Keeps `pool`, back from a connection to `shard`, if it is the one lent for the
    /// current version (one found under an older version, or for another checkout, goes).
    fn keep(&mut self, shard: ShardId, pool: Pool) {
        if let Some(slot) = self.by_shard.get_mut(shard) {
            if matches!(slot, Known::Lent(id) if *id == pool.id()) {
                *slot = Known::Here(pool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::conn::BackendTarget;

    /// Two pools of one process, for shards `a` and `b` (nothing connects until a checkout).
    fn two_pools() -> Result<(Pools, Pool, Pool), Box<dyn std::error::Error>> {
        let config = shardline_router::Config::from_yaml(
            "shards:\n  - name: a\n    host: 127.0.0.1\n    port: 1\n  - name: b\n    host: 127.0.0.1\n    port: 2\nusers:\n  - name: app\n    password: app\n",
        )?;
        let pools = Pools::default();
        let mut found = config.shards.iter().map(|shard| {
            let target = BackendTarget::new(shard, "app", Some("app"), "app");
            pools.pool(&target, &config.pool)
        });
        let (Some(a), Some(b)) = (found.next(), found.next()) else {
            return Err("the config lost a shard".into());
        };
        Ok((pools, a?, b?))
    }

    #[tokio::test]
    async fn a_known_pool_is_lent_and_kept_again_for_its_version_only(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (_pools, a, b) = two_pools()?;
        let mut known = KnownPools::default();
        assert!(known.take(1, 0).is_none());
        known.lend(1, 0, &a);
        // Lent: not there to take until it comes back.
        assert!(known.take(1, 0).is_none());
        known.keep(0, a.clone());
        assert_eq!(known.take(1, 0).map(|p| p.id()), Some(a.id()));
        // Another pool coming back for the shard is not the one lent: it is not kept.
        known.keep(0, b.clone());
        assert!(known.take(1, 0).is_none());
        known.keep(0, a.clone());
        // A newer config version finds the pool anew.
        assert!(known.take(2, 0).is_none());
        known.lend(2, 1, &b);
        known.keep(0, a.clone());
        assert!(known.take(2, 0).is_none());
        known.keep(1, b.clone());
        assert_eq!(known.take(2, 1).map(|p| p.id()), Some(b.id()));
        Ok(())
    }
}
