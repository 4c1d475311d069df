//! shardline's routing brain, with no I/O: the `shards.yaml` model, PostgreSQL-compatible
//! sharding functions, SQL analysis, and the plan that says where a statement goes.
//!
//! Every routing decision is a pure function of (config, statement text, parameters), so it can
//! be unit-tested, fuzzed and asked for without running the statement.

pub mod combine;
pub mod config;
pub mod copy;
pub mod generated;
pub mod hash;
pub mod having;
pub mod ident;
pub mod indoubt;
pub mod insert_select;
pub mod key;
pub mod merge;
pub mod migration;
pub mod narrow;
pub mod normalize;
pub mod params;
pub mod placeholders;
pub mod plan;
pub mod pull;
pub mod scan;
pub mod split;
pub mod sqlstate;
pub mod value;

mod analyze;

pub use config::{Config, ConfigError, ShardId};
pub use key::{KeyType, KeyValue};
pub use params::{Param, Params};
pub use plan::{plan, NamedKeys, Plan, Route, RouteError, SavepointOp, StatementKind};
