//! The messages of the decision's refusals and the shard names they quote.

use std::collections::BTreeSet;

use shardline_router::{Config, ShardId};

use crate::protocol::backend::sqlstate;
use crate::session::ClientError;

/// The names of `shards`, comma-separated, for messages.
pub(crate) fn shard_names(config: &Config, shards: &[ShardId]) -> String {
    let names: Vec<&str> = shards
        .iter()
        .filter_map(|s| config.shards.get(*s).map(|s| s.name.as_str()))
        .collect();
    names.join(", ")
}

/// The refusal of a transaction's end sent with other statements (or before a `Flush`) while
/// the transaction spans `shards`, or on a shard joining it.
pub(super) fn end_alone(config: &Config, shards: &BTreeSet<ShardId>) -> ClientError {
    let shards: Vec<ShardId> = shards.iter().copied().collect();
    ClientError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "this transaction runs on shards {}: send COMMIT or ROLLBACK as a query of its own (in a pipeline, alone before its Sync), and PREPARE TRANSACTION only in a transaction on one shard",
            shard_names(config, &shards)
        ),
    )
}

/// The refusal of a client's `PREPARE TRANSACTION` of a transaction on another shard than the
/// default one: `COMMIT PREPARED`, `ROLLBACK PREPARED` and `pg_prepared_xacts` are served by
/// the default shard, so only a transaction prepared there can be finished and recovered.
pub(super) fn client_two_phase_elsewhere(config: &Config) -> ClientError {
    ClientError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "PREPARE TRANSACTION through shardline works for transactions on the default shard ({}), where COMMIT PREPARED and pg_prepared_xacts are served; this one runs on another shard",
            shard_names(config, &[config.default_shard])
        ),
    )
}

/// The refusal of a multi-shard statement inside a transaction block.
pub(super) fn scatter_in_transaction(config: &Config, shards: &[ShardId]) -> ClientError {
    ClientError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "this statement needs shards {}, but a transaction can only use one shard; run it outside the transaction block",
            shard_names(config, shards)
        ),
    )
}

/// The refusal of a statement for another shard than the transaction's.
pub(super) fn pinned_elsewhere(config: &Config, pinned: ShardId, wanted: ShardId) -> ClientError {
    ClientError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "this transaction runs on shard {}, but this statement needs shard {}; a transaction must stay on one shard (keep its statements on one shard key, or split it)",
            shard_names(config, &[pinned]),
            shard_names(config, &[wanted])
        ),
    )
}
