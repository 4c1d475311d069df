//! Routing: where each statement's work goes ([`Target`]), before the session's state is taken
//! into account, and the moving keys it writes during a resharding migration.

use shardline_router::copy::{copy_into, CopyInto};
use shardline_router::insert_select::{insert_select, InsertSelect};
use shardline_router::pull::{pulled_tables, PulledTable};
use shardline_router::split::{split_insert, InsertPart};
use shardline_router::{sqlstate, Config, Params, Plan, Route, ShardId, StatementKind};

use crate::context::Loaded;
use crate::session::decide::moving::{self, moving_keys};
use crate::session::state::transaction::DualKeys;
use crate::session::ClientError;

/// Where one statement's work goes, before the session's state is taken into account.
///
/// The rare targets' payloads are boxed: a target is kept through every wait of a request, in
/// the future allocated for it, so its size weighs on every request.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Transaction control, settings, `SHOW`: wherever the session's transaction runs.
    Session,
    /// One shard.
    Shard(ShardId),
    /// Every listed shard; rows are concatenated and counts summed.
    Scatter(Vec<ShardId>),
    /// Every listed shard; the proxy merges sorted rows or combines aggregates.
    Gather(Vec<ShardId>),
    /// A multi-row `INSERT` whose rows belong to different shards, one part per shard.
    Split(Vec<InsertPart>),
    /// `COPY … FROM STDIN` into a sharded table, each row to its shard.
    Copy(Box<CopyInto>),
    /// A read the merge cannot answer: these tables' rows are gathered on the default shard,
    /// which runs it. `refusal` is the merge's reason, for where a pull-up cannot run.
    Pull {
        tables: Vec<PulledTable>,
        refusal: Box<ClientError>,
    },
    /// `INSERT … SELECT` into a sharded table: the `SELECT` runs on the default shard (after
    /// a pull-up of what it reads), its rows go to their shards as a routed `COPY`.
    InsertSelect(Box<InsertSelect>),
}

impl Target {
    /// The shards the target names; `None` for [`Target::Session`].
    pub(crate) fn shards(&self, config: &Config) -> Option<Vec<ShardId>> {
        match self {
            Target::Session => None,
            Target::Shard(shard) => Some(vec![*shard]),
            Target::Scatter(shards) | Target::Gather(shards) => Some(shards.clone()),
            Target::Split(parts) => Some(parts.iter().map(|p| p.shard).collect()),
            Target::Copy(spec) => Some(spec.rule.shards(config.shards.len())),
            Target::Pull { .. } => Some(vec![config.default_shard]),
            Target::InsertSelect(plan) => {
                let mut shards = plan.spec.rule.shards(config.shards.len());
                if !shards.contains(&config.default_shard) {
                    shards.push(config.default_shard);
                }
                Some(shards)
            }
        }
    }
}

/// Statements about the session or the transaction rather than data: they run wherever the
/// client's transaction runs (a held backend or the default shard outside one).
fn follows_session(kind: &StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Begin
            | StatementKind::Commit
            | StatementKind::Rollback
            | StatementKind::PrepareTransaction
            | StatementKind::TransactionControl
            | StatementKind::Savepoint { .. }
            | StatementKind::Set { .. }
            | StatementKind::SetLocal
            | StatementKind::Reset { .. }
            | StatementKind::ResetAll
            | StatementKind::DiscardAll
            | StatementKind::DeallocateAll
            | StatementKind::Deallocate { .. }
            | StatementKind::Show
            | StatementKind::Empty
    )
}

/// Routes one statement: its [`Target`], and the moving keys it writes while a resharding
/// migration dual-writes. `sql` is the statement's text (a split `INSERT` and a `COPY` are
/// re-read from it); `params` its parameters (or the literals the plan cache took out).
pub(crate) fn route(
    loaded: &Loaded,
    plan: &Plan,
    sql: &str,
    params: &dyn Params,
) -> Result<(Target, Option<DualKeys>), ClientError> {
    if follows_session(&plan.kind) {
        return Ok((Target::Session, None));
    }
    let dual = moving_keys(loaded, plan, params)?;
    let target = match plan.route(&loaded.config, params) {
        Ok(Route::Single(shard)) => Target::Shard(shard),
        Ok(Route::Multi(shards)) if plan.merge.is_some() || plan.aggregate.is_some() => {
            Target::Gather(shards)
        }
        Ok(Route::Multi(shards)) => Target::Scatter(shards),
        // A dual write must name its keys on one shard; nothing below can make it one.
        Err(_) if dual.is_some() => return Err(moving::several_shards()),
        Err(e) if plan.kind == StatementKind::CopyIn => match copy_into(&loaded.config, sql) {
            Some(spec) => Target::Copy(Box::new(spec?)),
            None => return Err(e.into()),
        },
        Err(e) if plan.kind == StatementKind::Write => {
            match split_insert(&loaded.config, sql, params) {
                Some(parts) => Target::Split(parts?),
                None => match insert_select(&loaded.config, sql) {
                    Some(plan) => Target::InsertSelect(Box::new(plan?)),
                    None => return Err(e.into()),
                },
            }
        }
        // A read PostgreSQL can answer once the rows of its sharded tables are in one place.
        Err(e)
            if plan.kind == StatementKind::Read
                && e.sqlstate == sqlstate::FEATURE_NOT_SUPPORTED =>
        {
            match pulled_tables(&loaded.config, sql) {
                Ok(tables) if !tables.is_empty() => Target::Pull {
                    tables,
                    refusal: Box::new(e.into()),
                },
                Ok(_) => return Err(e.into()),
                Err(pull) => return Err(pull.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok((target, dual))
}
