//! Pools of backend connections, one per (shard address, user, database).
//!
//! Built on `deadpool::managed`: it bounds the pool, queues waiters fairly and times out
//! checkouts. Our [`Manager`] decides what a healthy connection is (not broken, not past its
//! lifetime or idle timeout); a maintenance task evicts idle connections and keeps `min_idle`
//! warm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool::managed::{
    self, Metrics, Object, PoolError, QueueMode, RecycleError, RecycleResult, Timeouts,
};
use deadpool::Runtime;
use shardline_router::config::PoolSettings;

use super::conn::{Backend, BackendError, BackendTarget};

/// Creates and checks [`Backend`] connections for one pool.
#[derive(Debug)]
pub struct Manager {
    target: BackendTarget,
    settings: PoolSettings,
}

impl managed::Manager for Manager {
    type Type = Backend;
    type Error = BackendError;

    async fn create(&self) -> Result<Backend, BackendError> {
        Backend::connect(&self.target, self.settings.connect_timeout).await
    }

    async fn recycle(&self, conn: &mut Backend, metrics: &Metrics) -> RecycleResult<BackendError> {
        if conn.broken || conn.closed_while_idle() {
            return Err(RecycleError::message("connection is broken"));
        }
        if conn.created.elapsed() > self.settings.max_lifetime {
            return Err(RecycleError::message("connection reached max_lifetime"));
        }
        if metrics.last_used() > self.settings.idle_timeout {
            return Err(RecycleError::message("connection was idle too long"));
        }
        Ok(())
    }
}

/// One pool of connections to one shard as one user to one database.
pub type Pool = managed::Pool<Manager>;

/// A checked-out connection; dropping it returns the connection to its pool.
pub type Pooled = Object<Manager>;

/// Why no connection could be checked out.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("all {size} connections to the shard are busy and none freed up within {waited:?}; raise pool.size or pool.checkout_timeout_ms in shards.yaml, or reduce load")]
    Exhausted { size: usize, waited: Duration },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the pool is closed")]
    Closed,
}

/// Every pool the proxy has opened, by target.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Mutex<HashMap<BackendTarget, Pool>>,
}

impl Pools {
    /// The pool for `target`, created on first use.
    pub fn pool(
        &self,
        target: &BackendTarget,
        settings: &PoolSettings,
    ) -> Result<Pool, CheckoutError> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(target) {
            return Ok(pool.clone());
        }
        let manager = Manager {
            target: target.clone(),
            settings: settings.clone(),
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

    /// Checks out a connection, waiting at most `settings.checkout_timeout`.
    pub async fn checkout(
        &self,
        target: &BackendTarget,
        settings: &PoolSettings,
    ) -> Result<Pooled, CheckoutError> {
        let pool = self.pool(target, settings)?;
        let timeouts = Timeouts {
            wait: Some(settings.checkout_timeout),
            create: Some(settings.connect_timeout),
            recycle: Some(settings.connect_timeout),
        };
        pool.timeout_get(&timeouts).await.map_err(|e| match e {
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

    /// Evicts idle connections and tops pools up to `min_idle`; run periodically.
    pub async fn maintain(&self, settings: &PoolSettings) {
        let pools: Vec<Pool> = {
            let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
            pools.values().cloned().collect()
        };
        for pool in pools {
            let idle_timeout = settings.idle_timeout;
            let max_lifetime = settings.max_lifetime;
            pool.retain(|conn, metrics| {
                metrics.last_used() < idle_timeout && conn.created.elapsed() < max_lifetime
            });
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

    /// Removes a broken connection from its pool instead of returning it.
    pub fn discard(conn: Pooled) {
        drop(Object::take(conn));
    }
}

/// Shared handle to the proxy's pools.
pub type SharedPools = Arc<Pools>;
