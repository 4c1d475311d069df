//! `SET shardline.partial_results = on`: a session that prefers availability to completeness
//! gets a multi-shard read answered by the shards that can be reached, with a `WARNING` naming
//! the others. Only reads, only shards that cannot be reached (breaker open, connect failure
//! or timeout) — not one that refused the login or is busy — and never a shard already in the
//! transaction. By default a read fails as a whole.

use bytes::Bytes;
use shardline_router::ShardId;

use crate::protocol::backend::{self as msg, sqlstate};
use crate::session::{settings, ClientError, Session};

impl Session {
    /// Whether a read may go on without `shard`, whose checkout failed with `error`.
    pub(crate) fn may_leave_out(&self, shard: ShardId, error: &ClientError) -> bool {
        settings::is_on(&self.settings, "shardline.partial_results")
            && error.sqlstate == sqlstate::CONNECTION_FAILURE
            && error.frame.is_none()
            && !self.tx.shards.contains(&shard)
    }
}

/// One shard left out of an answer, as the warning names it: `name (why)`.
pub(crate) fn left_out(name: &str, error: &ClientError) -> String {
    format!("{name} ({})", error.message)
}

/// The `WARNING` sent before an answer that lacks the rows of `missing`.
pub(crate) fn warning(missing: &[String]) -> Bytes {
    msg::warning(
        sqlstate::WARNING,
        &format!(
            "shardline.partial_results is on: this answer lacks the rows of shard(s) that cannot be reached: {}",
            missing.join(", ")
        ),
    )
}

/// The error when no shard of a read could be reached.
pub(crate) fn none_reached(missing: &[String]) -> ClientError {
    ClientError::new(
        sqlstate::CONNECTION_FAILURE,
        format!(
            "no shard of the query could be reached: {}",
            missing.join(", ")
        ),
    )
}
