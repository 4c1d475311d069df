//! shardline: a sharding proxy for PostgreSQL.
//!
//! Clients connect as to PostgreSQL; each statement is routed by the `shardline-router` crate
//! to the shard that owns its key, or to every shard with the answers merged. The layout
//! follows the path of a connection: [`server`] accepts, [`client`] logs in, [`session`] runs
//! the protocol loop over [`protocol`] frames, and [`backend`] holds pooled shard connections.

pub mod backend;
pub mod cancel;
pub mod client;
pub mod context;
pub mod demo;
pub mod localpg;
pub mod protocol;
pub mod server;
pub mod session;

pub use server::Proxy;
