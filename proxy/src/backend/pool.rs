//! Pools of backend connections, one per (shard address, user, database).
//!
//! Each pool's bookkeeping is [`Slots`]: a bound on its size, idle connections served most
//! recently returned first, and a fair queue of waiters with a bound of its own. Taking a free
//! connection is a few atomic operations and one short lock, with no clock read and no
//! future state beyond a pointer; waiting and opening connections are the slow path. The
//! [`Manager`] opens connections, decides which may serve again (not broken, idle and within
//! its lifetime when it comes back, not closed by the shard when it is taken) and reports every
//! connection it opens to the [`Backends`] registry, which hears of each one the pool lets go;
//! a maintenance task closes connections idle past `idle_timeout` or older than
//! `max_lifetime` (so one may serve up to a maintenance interval longer) and keeps `min_idle`
//! open.
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

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shardline_router::config::PoolSettings;

use super::breaker::{Breaker, Refusal};
use super::conn::{Backend, BackendError, BackendTarget};
pub use super::pooled::Pooled;
use super::recent::RecentClock;
use super::registry::{address, BackendLabels, Backends};
use super::slots::{SlotCounts, Slots, Taken, WaitError};
use crate::metrics::histogram::DurationHistogram;

/// Opens and checks [`Backend`] connections for one pool.
pub struct Manager {
    target: BackendTarget,
    settings: PoolSettings,
    id: u64,
    backends: Arc<Backends>,
    /// When connections come back, to the second (shared by the pools of one [`Pools`]).
    recent: Arc<RecentClock>,
    /// The breaker of the target's address, shared with every other pool reaching it.
    breaker: Arc<Breaker>,
    checkout_wait: DurationHistogram,
    checkout_failures: Counter,
}

impl Manager {
    async fn open(&self) -> Result<Backend, BackendError> {
        match Backend::connect(
            &self.target,
            self.settings.connect_timeout,
            self.settings.keepalive,
        )
        .await
        {
            Ok(mut conn) => {
                self.backends.opened(&conn, &self.target, self.id);
                self.breaker.succeeded();
                self.breaker.probe_as(&self.target);
                conn.breaker = Some(self.breaker.clone());
                Ok(conn)
            }
            Err(e) => {
                // Only failures to reach the shard count against its health.
                if !e.shard_answered() {
                    let why = e.to_string();
                    self.breaker.failed(&why);
                    self.backends
                        .failed(&self.target.host, self.target.port, why);
                }
                Err(e)
            }
        }
    }

    /// Whether a connection coming back may serve another client: one returned
    /// mid-statement or inside a transaction (a client cut off by a shutdown, a task that
    /// ended early) must never hand that state on.
    fn may_return(&self, conn: &Backend, now: Instant) -> bool {
        !conn.broken
            && conn.idle
            && now.saturating_duration_since(conn.created) <= self.settings.max_lifetime
    }

    /// Whether an idle connection is still good: the shard did not close it meanwhile.
    fn still_good(conn: &mut Backend) -> bool {
        !conn.broken && !conn.closed_while_idle()
    }

    /// Whether an idle connection stays in the pool at a maintenance pass.
    fn keeps_idle(conn: &Backend, since: Instant, settings: &PoolSettings) -> bool {
        since.elapsed() < settings.idle_timeout && conn.created.elapsed() < settings.max_lifetime
    }
}

struct PoolInner {
    manager: Manager,
    slots: Slots<Box<Backend>>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.slots.close();
    }
}

/// What [`Pools::checkout_idle`] found.
pub enum Checkout {
    /// A free connection, checked out.
    Ready(Pooled),
    /// None free at once: [`Pools::checkout_from`] with this handle waits for one.
    Wait(Pool),
}

/// One pool of connections to one shard as one user to one database.
#[derive(Clone)]
pub struct Pool(Arc<PoolInner>);

impl Pool {
    /// Where this pool's connections log in.
    pub(super) fn target(&self) -> &BackendTarget {
        &self.manager().target
    }

    fn manager(&self) -> &Manager {
        &self.0.manager
    }

    fn slots(&self) -> &Slots<Box<Backend>> {
        &self.0.slots
    }

    /// A checked-out handle on `conn`.
    fn hand_out(&self, conn: Box<Backend>, settings: &PoolSettings) -> Pooled {
        self.clone().lend(conn, settings)
    }

    /// [`Pool::hand_out`] from a pool handle the caller gives up (no reference count).
    fn lend(self, mut conn: Box<Backend>, settings: &PoolSettings) -> Pooled {
        conn.checked_out(settings.query_timeout);
        Pooled::new(conn, self)
    }

    /// Takes back a connection a client is done with: kept for the next one if it may serve
    /// another client, closed otherwise. Its age and idle time are told to the second.
    pub(super) fn take_back(&self, conn: Box<Backend>) {
        // Its client's cancel requests no longer reach it.
        conn.held_by.clear();
        let now = self.manager().recent.now();
        if self.manager().may_return(&conn, now) {
            self.slots().give_back(conn, now);
        } else {
            self.slots().let_go(conn);
        }
    }

    /// This pool's number, which no other pool of its [`Pools`] has had: it names a pool
    /// without holding it.
    pub fn id(&self) -> u64 {
        self.manager().id
    }

    /// A connection for what a checkout took: the idle one if it is still good, else a new
    /// one. `None` when the idle one had gone bad (it was closed; take again).
    async fn fill(
        &self,
        taken: Taken<Box<Backend>>,
        settings: &PoolSettings,
    ) -> Option<Result<Pooled, CheckoutError>> {
        match taken {
            Taken::Idle(mut conn) => {
                if Manager::still_good(&mut conn) {
                    return Some(Ok(self.hand_out(conn, settings)));
                }
                self.slots().let_go(conn);
                None
            }
            Taken::Open => {
                let room = Room(self.slots());
                // Boxed: a login's state is large and rare, and every checkout would carry it.
                Some(match Box::pin(self.manager().open()).await {
                    Ok(conn) => {
                        room.keep();
                        Ok(self.hand_out(Box::new(conn), settings))
                    }
                    Err(e) => {
                        drop(room);
                        // Another thread's idle connection serves rather than none.
                        match self.slots().take_any_idle() {
                            Some(mut conn) => {
                                if Manager::still_good(&mut conn) {
                                    Ok(self.hand_out(conn, settings))
                                } else {
                                    self.slots().let_go(conn);
                                    Err(CheckoutError::Backend(e))
                                }
                            }
                            None => Err(CheckoutError::Backend(e)),
                        }
                    }
                })
            }
        }
    }
}

/// The room a checkout took to open a connection: given back unless [`Room::keep`] says the
/// connection opened (so a failed or cancelled open frees it).
struct Room<'a>(&'a Slots<Box<Backend>>);

impl Room<'_> {
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.0.vacate();
    }
}

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
    pub status: SlotCounts,
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
    /// Ticked by each maintenance pass.
    recent: Arc<RecentClock>,
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
            recent: Arc::default(),
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
            recent: self.recent.clone(),
            breaker: self.backends.breaker(target),
            checkout_wait: self.checkout_wait.get_or_create_owned(&labels),
            checkout_failures: self.checkout_failures.get_or_create_owned(&labels),
        };
        let backends = self.backends.clone();
        let slots = Slots::new(settings.size, move |conn: Box<Backend>| {
            backends.closed(&conn)
        });
        let pool = Pool(Arc::new(PoolInner { manager, slots }));
        pools.insert(target.clone(), pool.clone());
        Ok(pool)
    }

    /// Checks out a connection to `target`, waiting at most `settings.checkout_timeout`.
    pub async fn checkout(
        &self,
        target: &BackendTarget,
        settings: &PoolSettings,
    ) -> Result<Pooled, CheckoutError> {
        let result = Pools::checkout_from(self.pool(target, settings)?, settings).await;
        if matches!(result, Err(CheckoutError::Closed)) {
            // A reload retired the pool between lookup and checkout (the session still runs
            // on the config it started with): a fresh pool serves this request.
            return Pools::checkout_from(self.pool(target, settings)?, settings).await;
        }
        result
    }

    /// Checks out a connection from `pool`, found earlier with [`Pools::pool`]; `Closed`
    /// when a reload has retired it since. The connection holds the pool handle given here
    /// until it is returned, and [`Pooled::release`] hands it back. Refused at once while the shard's breaker is open
    /// or when `max_waiting_clients` already wait; a failure to connect is tried once more on
    /// a fresh connection if the checkout timeout allows (nothing was sent yet).
    pub async fn checkout_from(
        pool: Pool,
        settings: &PoolSettings,
    ) -> Result<Pooled, CheckoutError> {
        match Pools::checkout_idle(pool, settings)? {
            Checkout::Ready(conn) => Ok(conn),
            Checkout::Wait(pool) => Box::pin(Pools::checkout_waiting(&pool, settings)).await,
        }
    }

    /// The common case of [`Pools::checkout_from`], without waiting: a free connection still
    /// good, for no clock read, no timer and no future; else the pool handle back, to wait
    /// with. Refused at once while the shard's breaker is open.
    pub fn checkout_idle(pool: Pool, settings: &PoolSettings) -> Result<Checkout, CheckoutError> {
        let manager = pool.manager();
        if let Err(refusal) = manager.breaker.admit() {
            manager.checkout_failures.inc();
            return Err(refusal.into());
        }
        match pool.slots().take_now(crate::threads::home()) {
            Some(Taken::Idle(mut conn)) => {
                if Manager::still_good(&mut conn) {
                    manager.checkout_wait.observe(Duration::ZERO);
                    return Ok(Checkout::Ready(pool.lend(conn, settings)));
                }
                pool.slots().let_go(conn);
            }
            // Opening is the slow path's work: it takes its place again there.
            Some(Taken::Open) => pool.slots().vacate(),
            None => {}
        }
        Ok(Checkout::Wait(pool))
    }

    /// [`Pools::checkout_from`] once no good connection was free at once: opens one, or
    /// waits for one to come back.
    async fn checkout_waiting(
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
        if result.is_err() {
            manager.checkout_failures.inc();
        }
        result
    }

    /// A connection from `pool` only if one is free now or can be opened (no waiting for
    /// another to come back); `None` otherwise, or while the shard's breaker is open.
    pub async fn checkout_now(pool: &Pool, settings: &PoolSettings) -> Option<Pooled> {
        pool.manager().breaker.admit().ok()?;
        loop {
            let taken = pool.slots().take_now(crate::threads::home())?;
            if let Some(result) = pool.fill(taken, settings).await {
                return result.ok();
            }
        }
    }

    async fn try_checkout(pool: &Pool, settings: &PoolSettings) -> Result<Pooled, CheckoutError> {
        pool.manager().breaker.admit()?;
        loop {
            let taken = pool
                .slots()
                .take(
                    crate::threads::home(),
                    settings.checkout_timeout,
                    settings.max_waiting_clients,
                )
                .await
                .map_err(|e| match e {
                    WaitError::TimedOut => CheckoutError::Exhausted {
                        size: settings.size,
                        waited: settings.checkout_timeout,
                    },
                    WaitError::QueueFull { waiting } => CheckoutError::QueueFull { waiting },
                    WaitError::Closed => CheckoutError::Closed,
                })?;
            // Opening a connection is bounded by `Backend::connect` itself, so a timeout there
            // is reported to the breaker.
            if let Some(result) = pool.fill(taken, settings).await {
                return result;
            }
        }
    }

    /// Evicts idle connections, applies the configured pool size, tops pools up to
    /// `min_idle`, and forgets retired pools that have closed their last connection; run
    /// periodically.
    pub async fn maintain(&self, settings: &PoolSettings) {
        self.recent.tick();
        lock(&self.retired).retain(|pool| pool.slots().counts().size > 0);
        let pools: Vec<Pool> = lock(&self.pools).values().cloned().collect();
        for pool in pools {
            let slots = pool.slots();
            slots.evict(settings.min_idle, |idle| {
                Manager::keeps_idle(&idle.conn, idle.since, settings)
            });
            if slots.counts().max_size != settings.size {
                slots.resize(settings.size);
            }
            let counts = slots.counts();
            let mut warm = Vec::new();
            for _ in counts.size..settings.min_idle.min(counts.max_size) {
                let Some(taken) = slots.take_room() else {
                    break;
                };
                match Pools::fill_on_next_thread(&pool, taken, settings).await {
                    Some(Ok(conn)) => warm.push(conn),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "could not open a connection to keep min_idle warm");
                        break;
                    }
                    None => {}
                }
            }
        }
    }

    /// Fills `taken` on the next serving thread (in turn), so the connections kept open for
    /// `min_idle` are spread over the threads as their clients are (a connection serves its
    /// own thread's clients first).
    async fn fill_on_next_thread(
        pool: &Pool,
        taken: Taken<Box<Backend>>,
        settings: &PoolSettings,
    ) -> Option<Result<Pooled, CheckoutError>> {
        let Some(handle) = crate::threads::next() else {
            return pool.fill(taken, settings).await;
        };
        let (pool, settings) = (pool.clone(), settings.clone());
        // A fill cut short (the runtime stopping) gives its room back as it is dropped.
        handle
            .spawn(async move { pool.fill(taken, &settings).await })
            .await
            .ok()
            .flatten()
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
            // Idle connections close now; busy ones are closed as they come back.
            pool.slots().close();
            let busy = pool.slots().counts().size;
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
                status: pool.slots().counts(),
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
            pool.slots()
                .each_idle(|conn| keys.push((conn.cancel_key.addr, conn.cancel_key.pid)));
        }
        keys
    }

    /// Removes a broken connection from its pool instead of returning it.
    pub fn discard(mut conn: Pooled) {
        conn.broken = true;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared handle to the proxy's pools.
pub type SharedPools = Arc<Pools>;
