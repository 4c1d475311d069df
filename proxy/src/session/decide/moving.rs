//! Writes to keys that move while a resharding migration dual-writes: which moving keys a
//! statement writes, with their new owners, or why it may not run during the migration (the
//! argument is in the `shardline-resharder` crate's docs).

use shardline_router::{Params, Plan, StatementKind};

use crate::context::Loaded;
use crate::protocol::backend::sqlstate;
use crate::session::state::transaction::DualKeys;
use crate::session::ClientError;

/// The moving keys `plan` writes with `params`, or why it may not run while the migration
/// dual-writes: writes to a moving table must name their keys and stay on one shard.
pub(crate) fn moving_keys(
    loaded: &Loaded,
    plan: &Plan,
    params: &dyn Params,
) -> Result<Option<DualKeys>, ClientError> {
    let Some(active) = loaded
        .migration
        .as_deref()
        .filter(|m| m.phase.dual_writes())
    else {
        return Ok(None);
    };
    let writes = match &plan.kind {
        StatementKind::Write | StatementKind::CopyIn | StatementKind::Ddl => true,
        StatementKind::Compound => plan
            .parts()
            .iter()
            .any(|k| matches!(k, StatementKind::Write | StatementKind::Ddl)),
        _ => false,
    };
    if !writes {
        return Ok(None);
    }
    let ends_transactions = plan
        .parts()
        .iter()
        .any(|k| *k == StatementKind::Begin || k.ends_transaction());
    let named = plan.named_keys(&loaded.config, params)?;
    let mut found = DualKeys::default();
    for class in named {
        for table in &class.tables {
            let Some((moving, _)) = active.moving(table) else {
                continue;
            };
            let refuse = |what: &str| {
                ClientError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "table {table} is being resharded (migration {}, phase {}): {what}",
                        active.id, active.phase
                    ),
                )
            };
            if plan.kind != StatementKind::Write && plan.kind != StatementKind::Compound {
                return Err(refuse(
                    "COPY and schema changes on it wait until the migration ends",
                ));
            }
            if ends_transactions {
                return Err(refuse(
                    "send BEGIN and COMMIT as statements of their own around writes to it, not in one query string with them",
                ));
            }
            let Some(keys) = &class.keys else {
                return Err(refuse(&format!(
                    "a write to it must name its keys ({} = …) until the cutover",
                    moving.key_column
                )));
            };
            for key in keys {
                let placement = moving
                    .place(key)
                    .map_err(|e| ClientError::new(sqlstate::INVALID_PARAMETER_VALUE, e))?;
                let serving = loaded
                    .config
                    .table(table)
                    .and_then(|r| r.shard_for(key).ok());
                if serving != loaded.config.shard_id(placement.from) {
                    return Err(ClientError::new(
                        sqlstate::OBJECT_NOT_IN_STATE,
                        format!(
                            "this proxy's shards.yaml places key {key} of {table} elsewhere than migration {}'s source layout (shard {}); serve the source layout until the cutover",
                            active.id, placement.from
                        ),
                    ));
                }
                if !placement.moves() {
                    continue;
                }
                let owner = loaded.config.shard_id(placement.to).ok_or_else(|| {
                    ClientError::new(
                        sqlstate::INTERNAL,
                        format!("shard {} of the target layout has no pool", placement.to),
                    )
                })?;
                let entry = found.tables.entry(moving.table.clone()).or_default();
                if !entry.iter().any(|(k, _)| k == key) {
                    entry.push((key.clone(), owner));
                }
            }
        }
    }
    Ok((!found.is_empty()).then_some(found))
}

/// The refusal of a dual write that would need several shards at once.
pub(crate) fn several_shards() -> ClientError {
    ClientError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "while its table is being resharded, a write to moving keys must stay on one shard; send one statement per shard key",
    )
}
