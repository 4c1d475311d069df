//! The extended query protocol: a pipeline segment (messages up to `Sync` or `Flush`) is read
//! whole and routed by its `Bind` parameters ([`segment`]), rewritten for the backend that runs
//! it ([`messages`]), assembled around one multi-shard statement ([`assembled`]), or spread over
//! several shards as one atomic batch ([`pipeline`]).

pub(crate) mod assembled;
pub(crate) mod execute;
pub(crate) mod messages;
pub(crate) mod pipeline;
pub(crate) mod segment;
