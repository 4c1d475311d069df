//! Pools of backend connections, one per (shard address, user, database).
//!
//! Built on `deadpool::managed`: it bounds the pool, queues waiters fairly and times out
//! checkouts. Our [`Manager`] decides what a healthy connection is (not broken, not past its
//! lifetime or idle timeout) and reports every connection it opens or lets go to the
//! [`Backends`] registry; a maintenance task evicts idle connections and keeps `min_idle` warm.
//!
//! When a reload removes or re-addresses a shard, the pools of targets the new config no longer
//! names are *retired*: their idle connections close at once, busy ones finish their
//! transaction and are closed when they come back, and the pool is forgotten once empty.
//! Pools of the other shards are not touched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed::{
    self, Metrics, Object, PoolError, QueueMode, RecycleError, RecycleResult, Status, TimeoutType,
    Timeouts,
};
use deadpool::Runtime;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shardline_router::config::PoolSettings;

use super::breaker::{Breaker, Refusal};
use super::conn::{Backend, BackendError, BackendTarget};
use super::registry::{address, BackendLabels, Backends};
use crate::metrics::histogram::DurationHistogram;

/// Creates and checks [`Backend`] connections for one pool.
pub struct Manager {
    target: BackendTarget,
    settings: PoolSettings,
    id: u64,
    backends: Arc<Backends>,
    /// The breaker of the target's address, shared with every other pool reaching it.
    breaker: Arc<Breaker>,
    checkout_wait: DurationHistogram,
    checkout_failures: Counter,
}

impl managed::Manager for Manager {
    type Type = Backend;
    type Error = BackendError;

    async fn create(&self) -> Result<Backend, BackendError> {
        // Boxed: a login's state is large and rare, and every checkout's future would carry it.
        match Box::pin(Backend::connect(
            &self.target,
            self.settings.connect_timeout,
            self.settings.keepalive,
        ))
        .await
        {
            Ok(mut conn) => {
                self.backends.opened(&conn, &self.target, self.id);
                self.breaker.succeeded();
                conn.breaker = Some(self.breaker.clone());
                Ok(conn)
            }
            Err(e) => {
                // A shard that answers with an error (unknown database, too many connections)
                // is reachable; only failures to reach it count against its health.
                if !matches!(e, BackendError::Refused(_)) {
                    let why = e.to_string();
                    self.breaker.failed(&why, Some(&self.target));
                    self.backends
                        .failed(&self.target.host, self.target.port, why);
                }
                Err(e)
            }
        }
    }

    async fn recycle(&self, conn: &mut Backend, metrics: &Metrics) -> RecycleResult<BackendError> {
        if conn.broken || conn.closed_while_idle() {
            return Err(RecycleError::message("connection is broken"));
        }
        if !conn.idle {
            // Returned mid-statement or inside a transaction (a client cut off by a shutdown,
            // a task that ended early): never hand that state to another client.
            return Err(RecycleError::message(
                "connection was not idle when returned",
            ));
        }
        let now = Instant::now();
        if now.saturating_duration_since(conn.created) > self.settings.max_lifetime {
            return Err(RecycleError::message("connection reached max_lifetime"));
        }
        let last_used = metrics.recycled.unwrap_or(metrics.created);
        if now.saturating_duration_since(last_used) > self.settings.idle_timeout {
            return Err(RecycleError::message("connection was idle too long"));
        }
        Ok(())
    }

    fn detach(&self, conn: &mut Backend) {
        self.backends.closed(conn);
    }
}

/// One pool of connections to one shard as one user to one database.
pub type Pool = managed::Pool<Manager>;

/// A checked-out connection; dropping it returns the connection to its pool.
pub type Pooled = Object<Manager>;

/// Why no connection could be checked out.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// Every connection stayed busy for the whole checkout timeout.
    #[error("all {size} connections to the shard are busy and none freed up within {waited:?}; raise pool.size or pool.checkout_timeout_ms in shards.yaml, or reduce load")]
    Exhausted {
        /// The pool's size.
        size: usize,
        /// How long the checkout waited.
        waited: Duration,
    },
    /// Opening a new connection failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The shard's circuit breaker is open: it was not tried.
    #[error(transparent)]
    Unavailable(#[from] Refusal),
    /// Too many clients already wait for this pool.
    #[error("{waiting} clients already wait for a connection to this shard (pool.max_waiting_clients); the shard is slow or its pool too small — retry later, or raise pool.size or pool.max_waiting_clients in shards.yaml")]
    QueueFull {
        /// Clients waiting when this one was refused.
        waiting: usize,
    },
    /// The pool was closed (shutdown).
    #[error("the pool is closed")]
    Closed,
}

/// What an operator sees of one pool.
#[derive(Debug, Clone)]
pub struct PoolView {
    /// Number given to the pool when it was created; a rebuilt pool gets a new one.
    pub id: u64,
    /// Shard host (the target's password is never shown).
    pub host: String,
    /// Shard port.
    pub port: u16,
    /// User the pool logs in as.
    pub user: String,
    /// Database on the shard.
    pub database: String,
    /// The config no longer names this target: it only finishes its busy connections.
    pub retired: bool,
    /// Size, idle and waiting counts from the pool.
    pub status: Status,
}

impl PoolView {
    /// Connections checked out right now.
    pub fn in_use(&self) -> usize {
        self.status.size.saturating_sub(self.status.available)
    }
}

/// Every pool the proxy has open, by target, and the retired ones still draining.
pub struct Pools {
    pools: Mutex<HashMap<BackendTarget, Pool>>,
    retired: Mutex<Vec<Pool>>,
    next_id: AtomicU64,
    backends: Arc<Backends>,
    checkout_wait: Family<BackendLabels, DurationHistogram, fn() -> DurationHistogram>,
    checkout_failures: Family<BackendLabels, Counter>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            pools: Mutex::default(),
            retired: Mutex::default(),
            next_id: AtomicU64::new(1),
            backends: Arc::default(),
            checkout_wait: Family::new_with_constructor(wait_histogram),
            checkout_failures: Family::default(),
        }
    }
}

fn wait_histogram() -> DurationHistogram {
    // 50 µs .. ~3.3 s
    DurationHistogram::exponential(Duration::from_micros(50), 4, 9)
}

impl Pools {
    /// The registry of open connections and address health.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Adds the pool metrics (checkout wait time and failures, breakers) to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.backends.register(registry);
        registry.register(
            "shardline_pool_checkout_wait_seconds",
            "Time sessions waited for a backend connection",
            self.checkout_wait.clone(),
        );
        registry.register(
            "shardline_pool_checkout_failures",
            "Checkouts that failed (pool exhausted, shard unreachable or refusing)",
            self.checkout_failures.clone(),
        );
    }

    /// The pool for `target`, created on first use.
    pub fn pool(
        &self,
        target: &BackendTarget,
        settings: &PoolSettings,
    ) -> Result<Pool, CheckoutError> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(target) {
            return Ok(pool.clone());
        }
        let labels = BackendLabels {
            backend: address(&target.host, target.port),
        };
        let manager = Manager {
            target: target.clone(),
            settings: settings.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            backends: self.backends.clone(),
            breaker: self.backends.breaker(target),
            checkout_wait: self.checkout_wait.get_or_create_owned(&labels),
            checkout_failures: self.checkout_failures.get_or_create_owned(&labels),
        };
        // LIFO, as PgBouncer does: the most recently used connection serves next, so a few
        // warm backends do the work (their caches and prepared statements stay hot) and the
        // rest age out through the idle timeout.
        let pool = Pool::builder(manager)
            .max_size(settings.size)
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|_| CheckoutError::Closed)?;
        pools.insert(target.clone(), pool.clone());
        Ok(pool)
    }

    /// Checks out a connection to `target`, waiting at most `settings.checkout_timeout`.
    pub async fn checkout(
        &self,
        target: &BackendTarget,
        settings: &PoolSettings,
    ) -> Result<Pooled, CheckoutError> {
        let result = Pools::checkout_from(&self.pool(target, settings)?, settings).await;
        if matches!(result, Err(CheckoutError::Closed)) {
            // A reload retired the pool between lookup and checkout (the session still runs
            // on the config it started with): a fresh pool serves this request.
            return Pools::checkout_from(&self.pool(target, settings)?, settings).await;
        }
        result
    }

    /// Checks out a connection from `pool`, found earlier with [`Pools::pool`]; `Closed`
    /// when a reload has retired it since. Refused at once while the shard's breaker is open
    /// or when `max_waiting_clients` already wait; a failure to connect is tried once more on
    /// a fresh connection if the checkout timeout allows (nothing was sent yet).
    pub async fn checkout_from(
        pool: &Pool,
        settings: &PoolSettings,
    ) -> Result<Pooled, CheckoutError> {
        let manager = pool.manager();
        let started = Instant::now();
        let mut result = Pools::try_checkout(pool, settings).await;
        if let Err(CheckoutError::Backend(e)) = &result {
            let retry = matches!(e, BackendError::Connect { .. } | BackendError::Io(_))
                && started.elapsed() < settings.checkout_timeout
                && manager.breaker.admit().is_ok();
            if retry {
                tracing::debug!(error = %e, "connecting to a shard failed; trying once more");
                result = Pools::try_checkout(pool, settings).await;
            }
        }
        manager.checkout_wait.observe(started.elapsed());
        match &mut result {
            Ok(conn) => conn.checked_out(settings.query_timeout),
            Err(_) => {
                manager.checkout_failures.inc();
            }
        }
        result
    }

    /// A connection from `pool` only if one is free now or can be opened (no waiting for
    /// another to come back); `None` otherwise, or while the shard's breaker is open.
    pub async fn checkout_now(pool: &Pool, settings: &PoolSettings) -> Option<Pooled> {
        pool.manager().breaker.admit().ok()?;
        let timeouts = Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let mut conn = pool.timeout_get(&timeouts).await.ok()?;
        conn.checked_out(settings.query_timeout);
        Some(conn)
    }

    async fn try_checkout(pool: &Pool, settings: &PoolSettings) -> Result<Pooled, CheckoutError> {
        pool.manager().breaker.admit()?;
        // `recycle` is a synchronous check: no timer around it. A free connection is taken
        // without arming the wait timer either; only a checkout that must queue gets one.
        // Creating a connection is bounded by `Backend::connect` itself, so a timeout there is
        // reported to the breaker.
        let mut timeouts = Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let mut result = pool.timeout_get(&timeouts).await;
        if matches!(result, Err(PoolError::Timeout(TimeoutType::Wait))) {
            let waiting = pool.status().waiting;
            if waiting >= settings.max_waiting_clients {
                return Err(CheckoutError::QueueFull { waiting });
            }
            timeouts.wait = Some(settings.checkout_timeout);
            result = pool.timeout_get(&timeouts).await;
        }
        result.map_err(|e| match e {
            PoolError::Timeout(_) => CheckoutError::Exhausted {
                size: settings.size,
                waited: settings.checkout_timeout,
            },
            PoolError::Backend(b) => CheckoutError::Backend(b),
            PoolError::PostCreateHook(_) | PoolError::Closed | PoolError::NoRuntimeSpecified => {
                CheckoutError::Closed
            }
        })
    }

    /// Evicts idle connections, applies the configured pool size, tops pools up to
    /// `min_idle`, and forgets retired pools that have closed their last connection; run
    /// periodically.
    pub async fn maintain(&self, settings: &PoolSettings) {
        lock(&self.retired).retain(|pool| pool.status().size > 0);
        let pools: Vec<Pool> = lock(&self.pools).values().cloned().collect();
        for pool in pools {
            let idle_timeout = settings.idle_timeout;
            let max_lifetime = settings.max_lifetime;
            pool.retain(|conn, metrics| {
                metrics.last_used() < idle_timeout && conn.created.elapsed() < max_lifetime
            });
            if pool.status().max_size != settings.size {
                pool.resize(settings.size);
            }
            let status = pool.status();
            let mut warm = Vec::new();
            for _ in status.size..settings.min_idle.min(status.max_size) {
                match pool.get().await {
                    Ok(conn) => warm.push(conn),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not open a connection to keep min_idle warm");
                        break;
                    }
                }
            }
        }
    }

    /// Retires every pool whose target `keep` rejects: idle connections close now, busy ones
    /// when their transaction ends. Returns how many pools were retired.
    pub fn retire(&self, keep: impl Fn(&BackendTarget) -> bool) -> usize {
        let gone: Vec<(BackendTarget, Pool)> = {
            let mut pools = lock(&self.pools);
            let targets: Vec<BackendTarget> = pools.keys().filter(|t| !keep(t)).cloned().collect();
            targets
                .into_iter()
                .filter_map(|t| pools.remove(&t).map(|p| (t, p)))
                .collect()
        };
        let count = gone.len();
        for (target, pool) in gone {
            // `retain` lets the manager see the idle connections go; `close` then drops every
            // busy one as it comes back.
            pool.retain(|_, _| false);
            pool.close();
            let busy = pool.status().size;
            tracing::info!(
                backend = %address(&target.host, target.port),
                user = %target.user,
                database = %target.database,
                busy,
                "retiring a pool: idle connections close now, busy ones when their transaction ends"
            );
            lock(&self.retired).push(pool);
        }
        count
    }

    /// Every pool, open and retired, in creation order.
    pub fn views(&self) -> Vec<PoolView> {
        let view = |pool: &Pool, retired: bool| {
            let target = &pool.manager().target;
            PoolView {
                id: pool.manager().id,
                host: target.host.clone(),
                port: target.port,
                user: target.user.clone(),
                database: target.database.clone(),
                retired,
                status: pool.status(),
            }
        };
        let mut views: Vec<PoolView> = lock(&self.pools).values().map(|p| view(p, false)).collect();
        views.extend(lock(&self.retired).iter().map(|p| view(p, true)));
        views.sort_by_key(|v| v.id);
        views
    }

    /// Connections checked out of any pool right now (transactions in flight, in
    /// transaction pooling).
    pub fn in_use(&self) -> usize {
        self.views().iter().map(PoolView::in_use).sum()
    }

    /// Address and process id of the idle connections of every pool.
    pub fn idle_keys(&self) -> Vec<(SocketAddr, i32)> {
        let mut keys = Vec::new();
        for pool in lock(&self.pools).values() {
            pool.retain(|conn, _| {
                keys.push((conn.cancel_key.addr, conn.cancel_key.pid));
                true
            });
        }
        keys
    }

    /// Removes a broken connection from its pool instead of returning it.
    pub fn discard(conn: Pooled) {
        drop(Object::take(conn));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared handle to the proxy's pools.
pub type SharedPools = Arc<Pools>;
