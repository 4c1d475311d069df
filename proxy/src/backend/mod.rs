//! Connections from the proxy to shards, and their pools.

pub mod breaker;
pub mod conn;
pub mod held;
pub mod pool;
pub mod pooled;
pub mod recent;
pub mod registry;
pub mod slots;
pub mod tls;
