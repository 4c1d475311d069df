//! shardline: a sharding proxy for PostgreSQL.
//!
//! Clients connect as to PostgreSQL; each statement is routed by the `shardline-router` crate
//! to the shard that owns its key, or to every shard with the answers merged. The layout
//! follows the path of a connection: [`server`] accepts, [`client`] logs in, [`session`] runs
//! the protocol loop over [`protocol`] frames — each request read, decided by one pure function
//! into an action, and carried out by that action's executor — and [`backend`] holds pooled
//! shard connections.
//!
//! Operations: [`reload`] re-reads `shards.yaml`, [`admin`] is the console on database
//! `shardline`, [`metrics`] serves `/metrics` and `/health` ([`health`]), [`stats`] counts
//! statements per shard, [`pause`] holds new transactions, [`migration`] takes part in resharding,
//! [`resolver`] finishes two-phase commits a crash left in doubt, [`deadlock`] breaks cycles of
//! lock waits that cross shards, [`shutdown`] drains and closes, and [`signals`] maps process signals onto them.

pub mod admin;
pub mod allocator;
pub mod backend;
pub mod cancel;
pub mod client;
pub mod clients;
pub mod context;
pub mod deadlock;
pub mod demo;
pub mod health;
pub mod keys;
pub mod localpg;
pub mod metrics;
pub mod migration;
pub mod pause;
pub mod protocol;
pub mod reload;
pub mod resolver;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod signals;
pub mod socket;
pub mod stats;
pub mod threads;
pub mod tls;

pub use server::Proxy;
