//! Query cancellation. Each client gets a proxy-made cancel key; a `CancelRequest` with it
//! reaches the backends the client holds right now, which their marks tell
//! ([`crate::backend::held`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::conn::CancelKey;
use crate::backend::registry::Backends;

/// Client cancel keys: each connected client's proxy process id and secret.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, i32>>,
}

/// A client's cancel key, registered until this is dropped: however its connection ends (a
/// login failing after the key was made, the session ending, the task aborted at shutdown),
/// the key goes with it.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    /// The key's process id, as the client is told it in `BackendKeyData`: unique among the
    /// clients connected, it names the client on the backends it holds.
    pub pid: i32,
    /// The key's secret.
    pub secret: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.unregister(self.pid);
    }
}

impl CancelRegistry {
    /// Registers a new client's cancel key, until the registration drops.
    pub fn register(self: &Arc<Self>) -> Registration {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let pid = rand::random::<i32>() & i32::MAX;
            if pid != 0 && !clients.contains_key(&pid) {
                let secret = rand::random::<i32>();
                clients.insert(pid, secret);
                return Registration {
                    registry: self.clone(),
                    pid,
                    secret,
                };
            }
        }
    }

    /// Forgets a client that disconnected.
    fn unregister(&self, pid: i32) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }

    /// Forwards a cancel request to every backend of `backends` the client is using. Unknown
    /// keys are ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, backends: &Backends, pid: i32, secret: i32) {
        let known = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .is_some_and(|s| *s == secret);
        if !known {
            return;
        }
        for key in backends.held().remove(&pid).unwrap_or_default() {
            if let Err(e) = send_cancel(&key).await {
                tracing::warn!(error = %e, backend = %key.addr, "could not send a cancel request");
            }
        }
    }
}

/// Asks the backend of `key` to cancel what it is running (a `CancelRequest` on a connection
/// of its own).
pub async fn send_cancel(key: &CancelKey) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    let mut stream = TcpStream::connect(key.addr).await?;
    stream.write_all(&buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(registry: &CancelRegistry) -> usize {
        registry
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    #[test]
    fn a_key_is_registered_until_its_registration_drops() {
        let registry = Arc::new(CancelRegistry::default());
        let first = registry.register();
        let second = registry.register();
        assert_ne!(first.pid, second.pid);
        assert_eq!(registered(&registry), 2);
        drop(first);
        assert_eq!(registered(&registry), 1);
        drop(second);
        assert_eq!(registered(&registry), 0);
    }
}
