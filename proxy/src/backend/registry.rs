//! Every backend connection the proxy has open (for `SHOW SERVERS`), and the outcome of the
//! latest connection attempt to each shard address (for `SHOW SHARDS` and `/health`).
//!
//! The pool manager reports here when it opens a connection and when the pool lets one go, so
//! the registry never has to guess which connections are still alive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::conn::{Backend, BackendTarget};

/// One open backend connection.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Process id of the PostgreSQL backend (`pg_backend_pid()` on the shard).
    pub pid: i32,
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
}

/// What the latest connection attempt to a shard address said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A connection was opened.
    Up,
    /// The attempt failed; the text says why.
    Down(String),
}

/// Registry of open backend connections and of address health.
#[derive(Debug, Default)]
pub struct Backends {
    live: Mutex<HashMap<(SocketAddr, i32), ServerInfo>>,
    health: Mutex<HashMap<String, Health>>,
}

impl Backends {
    /// Records a connection the pool `pool_id` just opened.
    pub fn opened(&self, conn: &Backend, target: &BackendTarget, pool_id: u64) {
        let key = conn.cancel_key;
        let info = ServerInfo {
            pid: key.pid,
            addr: key.addr,
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            database: target.database.clone(),
            pool_id,
            opened: conn.created,
        };
        tracing::debug!(backend = %key.addr, pid = key.pid, user = %target.user, "opened a backend connection");
        lock(&self.live).insert((key.addr, key.pid), info);
        self.set_health(&target.host, target.port, Health::Up);
    }

    /// Forgets a connection the pool let go of (it is closed when dropped).
    pub fn closed(&self, conn: &Backend) {
        let key = conn.cancel_key;
        tracing::debug!(backend = %key.addr, pid = key.pid, "closed a backend connection");
        lock(&self.live).remove(&(key.addr, key.pid));
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
