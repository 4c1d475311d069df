//! Executors for statements that need several shards: the same messages everywhere with the
//! answers concatenated ([`scatter`]), rows merged in order or aggregates combined ([`gather`],
//! [`ordered`], [`aggregate`]), a multi-row `INSERT` split by shard ([`split_insert`]), `COPY`
//! rows sent to their shards ([`copy_in`], [`copy_rows`]), and writes of moving keys during resharding
//! ([`dual`]). The writes commit everywhere or nowhere through [`twophase`], and so does a
//! transaction block that spans shards ([`transaction`]). Reads may leave out shards that
//! cannot be reached when the session asks ([`partial`]).
//!
//! Each pairs with the router module that plans it: `ordered` ↔ `shardline_router::merge`,
//! `aggregate` ↔ `combine`, `split_insert` ↔ `split`, `copy_in` ↔ `copy`, `dual` ↔ `migration`.

pub(crate) mod aggregate;
pub(crate) mod copy_in;
pub(crate) mod copy_rows;
pub(crate) mod dual;
pub(crate) mod gather;
pub(crate) mod insert_select;
pub(crate) mod ordered;
pub(crate) mod partial;
pub(crate) mod pull;
pub(crate) mod pull_copy;
pub(crate) mod pull_narrow;
pub(crate) mod scatter;
pub(crate) mod split_insert;
pub(crate) mod transaction;
pub(crate) mod twophase;
