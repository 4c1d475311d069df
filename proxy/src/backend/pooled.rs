//! A connection checked out of its pool, returned when its handle goes.

use std::ops::{Deref, DerefMut};

use super::conn::{Backend, BackendTarget};
use super::pool::Pool;

/// A checked-out connection; dropping it (or [`Pooled::release`]) returns the connection to
/// its pool.
pub struct Pooled {
    /// Always `Some` until the connection is returned.
    lease: Option<Lease>,
}

/// A connection out of its pool.
struct Lease {
    conn: Box<Backend>,
    pool: Pool,
}

impl Pooled {
    /// A handle on `conn`, out of `pool`.
    pub(super) fn new(conn: Box<Backend>, pool: Pool) -> Pooled {
        Pooled {
            lease: Some(Lease { conn, pool }),
        }
    }

    /// Where this connection logs in (shard address, user, database).
    pub fn target(&self) -> &BackendTarget {
        self.lease().pool.target()
    }

    /// Returns the connection to its pool and hands back the pool, for the caller's next
    /// checkout from it (see [`super::pool::Pools::checkout_from`]): a session that keeps the pool of each
    /// shard it uses writes no reference count shared with other sessions per transaction.
    pub fn release(mut self) -> Option<Pool> {
        let Lease { conn, pool } = self.lease.take()?;
        pool.take_back(conn);
        Some(pool)
    }

    fn lease(&self) -> &Lease {
        match &self.lease {
            Some(lease) => lease,
            None => unreachable!("a pooled connection is taken only when its handle goes"),
        }
    }
}

impl Deref for Pooled {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        &self.lease().conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Backend {
        match &mut self.lease {
            Some(lease) => &mut lease.conn,
            None => unreachable!("a pooled connection is taken only when its handle goes"),
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(Lease { conn, pool }) = self.lease.take() {
            pool.take_back(conn);
        }
    }
}
