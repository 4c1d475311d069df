//! Every backend connection the proxy has open (for `SHOW SERVERS`), and the outcome of the
//! latest connection attempt to each shard address (for `SHOW SHARDS` and `/health`).
//!
//! The pool manager reports here when it opens a connection and when the pool lets one go, so
//! the registry never has to guess which connections are still alive. It also keeps the
//! circuit breaker of each address, shared by every pool that reaches it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shardline_router::config::BreakerSettings;

use super::breaker::{Breaker, BreakerState};
use super::conn::{Backend, BackendTarget, CancelKey};
use super::held::HeldBy;

/// One open backend connection.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Process id of the PostgreSQL backend (`pg_backend_pid()` on the shard).
    pub pid: i32,
    /// The secret of its cancel key, for a client's cancel request.
    secret: i32,
    /// Address the connection goes to.
    pub addr: SocketAddr,
    /// Shard host as configured.
    pub host: String,
    /// Shard port as configured.
    pub port: u16,
    /// User the connection logged in as.
    pub user: String,
    /// Database on the shard.
    pub database: String,
    /// Id of the pool the connection belongs to.
    pub pool_id: u64,
    /// When the connection was opened.
    pub opened: Instant,
    /// The client holding the connection right now, if any.
    pub held_by: HeldBy,
}

/// What the latest connection attempt to a shard address said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A connection was opened.
    Up,
    /// The attempt failed; the text says why.
    Down(String),
}

/// Labels of per-address metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `host:port` of the shard.
    pub backend: String,
}

/// Labels of breaker transitions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    backend: String,
    to: &'static str,
}

/// Registry of open backend connections, of address health and of circuit breakers.
#[derive(Default)]
pub struct Backends {
    live: Mutex<HashMap<(SocketAddr, i32), ServerInfo>>,
    health: Mutex<HashMap<String, Health>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    breaker_settings: Mutex<BreakerSettings>,
    breaker_state: Family<BackendLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
}

impl Backends {
    /// Adds the breaker metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shardline_shard_breaker_state",
            "Circuit breaker of each shard address: 0 closed, 1 half-open (probing), 2 open",
            self.breaker_state.clone(),
        );
        registry.register(
            "shardline_shard_breaker_transitions",
            "Circuit breaker transitions into the `to` state",
            self.breaker_transitions.clone(),
        );
    }

    /// The breaker of `target`'s address, created (closed) on first use; it probes the shard
    /// as `target` from now on (a new pool's target follows the config as reloaded, and a
    /// login it refuses still proves the shard answers).
    pub fn breaker(&self, target: &BackendTarget) -> Arc<Breaker> {
        let key = address(&target.host, target.port);
        let mut breakers = lock(&self.breakers);
        if let Some(breaker) = breakers.get(&key) {
            breaker.probe_as(target);
            return breaker.clone();
        }
        let labels = BackendLabels {
            backend: key.clone(),
        };
        let transitions = |to| TransitionLabels {
            backend: key.clone(),
            to,
        };
        let breaker = Arc::new(Breaker::new(
            key.clone(),
            *lock(&self.breaker_settings),
            self.breaker_state.get_or_create_owned(&labels),
            self.breaker_transitions
                .get_or_create_owned(&transitions("open")),
            self.breaker_transitions
                .get_or_create_owned(&transitions("closed")),
        ));
        breaker.probe_as(target);
        breakers.insert(key, breaker.clone());
        breaker
    }

    /// Applies breaker thresholds from the current config to every breaker, present and future.
    pub fn configure_breakers(&self, settings: BreakerSettings) {
        *lock(&self.breaker_settings) = settings;
        for breaker in lock(&self.breakers).values() {
            breaker.configure(settings);
        }
    }

    /// The breaker state of `host:port`; closed when the proxy never tried it.
    pub fn breaker_state(&self, host: &str, port: u16) -> BreakerState {
        lock(&self.breakers)
            .get(&address(host, port))
            .map_or(BreakerState::Closed { failures: 0 }, |b| b.state())
    }

    /// Every breaker, to probe the ones that are due.
    pub fn breakers(&self) -> Vec<Arc<Breaker>> {
        lock(&self.breakers).values().cloned().collect()
    }

    /// Records a connection the pool `pool_id` just opened.
    pub fn opened(&self, conn: &Backend, target: &BackendTarget, pool_id: u64) {
        let key = conn.cancel_key;
        let info = ServerInfo {
            pid: key.pid,
            secret: key.secret,
            addr: key.addr,
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            database: target.database.clone(),
            pool_id,
            opened: conn.created,
            held_by: conn.held_by.clone(),
        };
        tracing::debug!(backend = %key.addr, pid = key.pid, user = %target.user, "opened a backend connection");
        lock(&self.live).insert((key.addr, key.pid), info);
        self.set_health(&target.host, target.port, Health::Up);
    }

    /// Forgets a connection the pool let go of (it is closed when dropped).
    pub fn closed(&self, conn: &Backend) {
        let key = conn.cancel_key;
        tracing::debug!(backend = %key.addr, pid = key.pid, "closed a backend connection");
        self.forget(&key);
    }

    /// Removes the entry of the connection whose cancel key is `key`, unless the entry is
    /// another connection's: a shard that restarted hands out process ids again, so a dead
    /// connection let go late may share its address and pid with one opened since (their
    /// secrets differ), whose entry cancel requests need.
    fn forget(&self, key: &CancelKey) {
        let mut live = lock(&self.live);
        let entry = (key.addr, key.pid);
        if live
            .get(&entry)
            .is_some_and(|info| info.secret == key.secret)
        {
            live.remove(&entry);
        }
    }

    /// Records that connecting to `host:port` failed.
    pub fn failed(&self, host: &str, port: u16, why: String) {
        self.set_health(host, port, Health::Down(why));
    }

    /// The latest word on `host:port`, if the proxy ever tried it.
    pub fn health(&self, host: &str, port: u16) -> Option<Health> {
        lock(&self.health).get(&address(host, port)).cloned()
    }

    /// Every open connection, oldest first.
    pub fn servers(&self) -> Vec<ServerInfo> {
        let mut servers: Vec<ServerInfo> = lock(&self.live).values().cloned().collect();
        servers.sort_by_key(|s| (s.opened, s.pid));
        servers
    }

    /// The cancel keys of the open connections clients hold right now, by the proxy process
    /// id of the client holding them.
    pub fn held(&self) -> HashMap<i32, Vec<CancelKey>> {
        let mut held: HashMap<i32, Vec<CancelKey>> = HashMap::new();
        for ((addr, pid), info) in lock(&self.live).iter() {
            if let Some(client) = info.held_by.client() {
                held.entry(client).or_default().push(CancelKey {
                    addr: *addr,
                    pid: *pid,
                    secret: info.secret,
                });
            }
        }
        held
    }

    fn set_health(&self, host: &str, port: u16, health: Health) {
        lock(&self.health).insert(address(host, port), health);
    }
}

/// `host:port`, the key of address health.
pub fn address(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Name of the shard of `config` at `host:port` serving `database`, if there is one.
pub fn shard_at<'c>(
    config: &'c shardline_router::Config,
    host: &str,
    port: u16,
    database: &str,
) -> Option<&'c str> {
    config
        .shards
        .iter()
        .find(|s| {
            s.host == host && s.port == port && s.database.as_deref().is_none_or(|d| d == database)
        })
        .map(|s| s.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(key: CancelKey, held_by: &HeldBy) -> ServerInfo {
        ServerInfo {
            pid: key.pid,
            secret: key.secret,
            addr: key.addr,
            host: "127.0.0.1".to_owned(),
            port: key.addr.port(),
            user: "app".to_owned(),
            database: "app".to_owned(),
            pool_id: 1,
            opened: Instant::now(),
            held_by: held_by.clone(),
        }
    }

    #[test]
    fn a_dead_connection_let_go_late_leaves_the_entry_of_a_live_one_with_its_pid() {
        let backends = Backends::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 5432));
        let dead = CancelKey {
            addr,
            pid: 7,
            secret: 1,
        };
        let live = CancelKey { secret: 2, ..dead };
        let mark = HeldBy::default();
        // The shard restarted: the live connection got the dead one's process id.
        lock(&backends.live).insert((addr, 7), server(live, &mark));
        mark.set(42);
        backends.forget(&dead);
        assert_eq!(backends.held().get(&42), Some(&vec![live]));
        backends.forget(&live);
        assert!(backends.held().is_empty());
        assert!(backends.servers().is_empty());
    }
}
