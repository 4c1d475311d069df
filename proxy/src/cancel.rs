//! Query cancellation. Each client gets a proxy-made cancel key; while it has backends, the
//! registry maps that key to theirs, so a `CancelRequest` reaches the right server processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::conn::CancelKey;

/// The backends a client is currently using.
pub type CancelTargets = Arc<Mutex<Vec<CancelKey>>>;

/// Client cancel keys (pid, secret) to the backends they are running on.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, (i32, CancelTargets)>>,
}

impl CancelRegistry {
    /// Registers a new client and returns its cancel key and target list.
    pub fn register(&self) -> (i32, i32, CancelTargets) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let targets = CancelTargets::default();
        loop {
            let pid = rand::random::<i32>() & i32::MAX;
            if pid != 0 && !clients.contains_key(&pid) {
                let secret = rand::random::<i32>();
                clients.insert(pid, (secret, targets.clone()));
                return (pid, secret, targets);
            }
        }
    }

    /// Forgets a client that disconnected.
    pub fn unregister(&self, pid: i32) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }

    /// Forwards a cancel request to every backend the client is using. Unknown keys are
    /// ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let targets = {
            let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            match clients.get(&pid) {
                Some((s, targets)) if *s == secret => targets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
                _ => return,
            }
        };
        for key in targets {
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
