//! Connected clients, for `SHOW CLIENTS`, `SHOW SERVERS` (which backend serves whom) and the
//! connection metrics. A client is listed from login until its connection closes: the
//! [`ClientGuard`] returned at registration removes it when dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::backend::conn::CancelKey;
use crate::backend::registry::Backends;

/// Set on a client whose statement the deadlock detector cancelled, until its session has
/// reported the deadlock (see `crate::deadlock`).
pub type DeadlockFlag = Arc<AtomicBool>;

/// What a client connected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Queries routed to shards.
    App,
    /// The admin console.
    Console,
}

/// Where a client connects from, and whether its connection is encrypted.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `ip:port`.
    pub address: String,
    pub tls: bool,
}

/// One connected client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Number given at login, unique for the life of the proxy.
    pub id: u64,
    /// Where the client connects from.
    pub peer: Peer,
    /// User it logged in as.
    pub user: String,
    /// Database it asked for.
    pub database: String,
    /// Application or console.
    pub kind: ClientKind,
    /// When it logged in.
    pub connected: Instant,
    /// The process id the proxy made for the client (its cancel key's), which names it on
    /// the backends it holds; none for the admin console.
    pub pid: Option<i32>,
    /// Set when the deadlock detector cancelled the client's statement.
    pub deadlock: DeadlockFlag,
}

impl ClientInfo {
    /// Cancel keys (address and process id) of the backends the client holds, among `held`
    /// (every held backend, as [`Backends::held`] lists them).
    pub fn held<'h>(&self, held: &'h HashMap<i32, Vec<CancelKey>>) -> &'h [CancelKey] {
        self.pid
            .and_then(|pid| held.get(&pid))
            .map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Every connected client.
#[derive(Default)]
pub struct Clients {
    next_id: AtomicU64,
    /// Application clients admitted under `max_client_connections`.
    admitted: Arc<AtomicUsize>,
    list: Mutex<BTreeMap<u64, ClientInfo>>,
    logins: Family<OutcomeLabel, Counter>,
}

/// One application client's place under `max_client_connections`.
#[derive(Debug)]
pub struct Admission {
    admitted: Arc<AtomicUsize>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a client listed; dropping it removes the client.
pub struct ClientGuard {
    clients: Arc<Clients>,
    id: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
    }
}

impl Clients {
    /// Adds the login counter to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shardline_client_logins",
            "Client logins by outcome (ok, failed)",
            self.logins.clone(),
        );
    }

    /// Lists a client that just logged in.
    pub fn add(
        self: &Arc<Self>,
        peer: Peer,
        user: String,
        database: String,
        kind: ClientKind,
        pid: Option<i32>,
        deadlock: DeadlockFlag,
    ) -> ClientGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.logins
            .get_or_create(&OutcomeLabel { outcome: "ok" })
            .inc();
        let info = ClientInfo {
            id,
            peer,
            user,
            database,
            kind,
            connected: Instant::now(),
            pid,
            deadlock,
        };
        self.lock().insert(id, info);
        ClientGuard {
            clients: self.clone(),
            id,
        }
    }

    /// A place for one more application client, unless `max` are connected already; the
    /// place is given back when the [`Admission`] is dropped.
    pub fn admit(&self, max: usize) -> Option<Admission> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Admission {
            admitted: self.admitted.clone(),
        })
    }

    /// Counts a login that failed.
    pub fn login_failed(&self) {
        self.logins
            .get_or_create(&OutcomeLabel { outcome: "failed" })
            .inc();
    }

    /// The clients that hold several of `backends` right now (only they can take part in a
    /// deadlock that crosses shards): id, backends, deadlock flag.
    pub fn holding_several(&self, backends: &Backends) -> Vec<(u64, Vec<CancelKey>, DeadlockFlag)> {
        let held = backends.held();
        self.lock()
            .values()
            .filter_map(|client| {
                let keys = client.held(&held);
                (keys.len() > 1).then(|| (client.id, keys.to_vec(), client.deadlock.clone()))
            })
            .collect()
    }

    /// Whether client `id` still holds the backend of `key` among `backends`: the backend it
    /// held when the deadlock detector looked may since have gone back to its pool and to
    /// another client.
    pub fn holds(&self, id: u64, key: &CancelKey, backends: &Backends) -> bool {
        let pid = self.lock().get(&id).and_then(|client| client.pid);
        pid.is_some_and(|pid| {
            backends
                .held()
                .get(&pid)
                .is_some_and(|keys| keys.contains(key))
        })
    }

    /// Every connected client, by id.
    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_and_given_back() {
        let clients = Clients::default();
        let first = clients.admit(2);
        let second = clients.admit(2);
        assert!(first.is_some() && second.is_some());
        assert!(clients.admit(2).is_none(), "a third client got in");
        drop(first);
        assert!(
            clients.admit(2).is_some(),
            "a freed place was not given back"
        );
    }
}
