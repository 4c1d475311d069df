//! Which client holds a backend connection right now, for cancel requests, the admin console
//! and the deadlock detector.
//!
//! A session marks a connection as its own when it takes one for a statement and the pool
//! clears the mark when the connection comes back: one plain atomic store each way, so nothing
//! is locked on a transaction's way through the proxy. The rare readers look the marks up in
//! the registry of open connections ([`super::registry::Backends::held`]). A client is named
//! by the process id the proxy made for it (its `BackendKeyData`), unique among the clients
//! connected; 0 marks a connection no client holds.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// The mark of one backend connection, shared by the connection and its registry entry.
#[derive(Debug, Clone, Default)]
pub struct HeldBy(Arc<AtomicI32>);

impl HeldBy {
    /// The connection is now held by the client whose proxy process id is `client`.
    pub fn set(&self, client: i32) {
        // Nothing else is published through the mark: readers take a snapshot that may be a
        // moment old, as any cancel request races the statement it cancels.
        self.0.store(client, Ordering::Relaxed);
    }

    /// No client holds the connection any more.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// The proxy process id of the client holding the connection, if one does.
    pub fn client(&self) -> Option<i32> {
        let client = self.0.load(Ordering::Relaxed);
        (client != 0).then_some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_seen_through_every_clone_until_cleared() {
        let mark = HeldBy::default();
        let registered = mark.clone();
        assert_eq!(registered.client(), None);
        mark.set(42);
        assert_eq!(registered.client(), Some(42));
        mark.clear();
        assert_eq!(registered.client(), None);
    }
}
