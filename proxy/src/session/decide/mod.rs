//! The decision: what the session does with what the client sent, as a pure function.
//!
//! A request — one simple-protocol `Query`, or one extended-protocol segment (the messages up to
//! `Sync` or `Flush`) — is first routed statement by statement ([`route`]: the router's plan, the
//! statement's parameters and the resharding migration say where its work goes). Then
//! [`decide`] weighs the routed request against the session's state (its transaction, the
//! backends it holds, the pipeline it is in) and returns one [`Action`]: answer locally, run on
//! one shard, scatter, gather, split an `INSERT`, spread a pipeline, dual-write, or refuse with a
//! SQLSTATE. Both protocols call the same two functions; executors carry the action out. No I/O
//! happens here, so every branch is unit-tested without a socket (`tests/`). Routing lives in
//! `route.rs`, the refusals' messages in `refusal.rs`, local answers in `local.rs`.

mod local;
mod moving;
mod refusal;
mod route;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use shardline_router::copy::CopyInto;
use shardline_router::insert_select::InsertSelect;
use shardline_router::pull::PulledTable;
use shardline_router::split::InsertPart;
use shardline_router::{Config, SavepointOp, ShardId, StatementKind};

use crate::protocol::backend::sqlstate;
use crate::session::state::settings::{changes_reported, effect_of};
use crate::session::state::transaction::Transaction;
use crate::session::ClientError;
pub(crate) use local::{local_answer, LocalAnswer, TxPhase};
pub(crate) use refusal::shard_names;
use refusal::{client_two_phase_elsewhere, end_alone, pinned_elsewhere, scatter_in_transaction};
pub(crate) use route::{route, Target};

/// What the client sent, routed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// An extended-protocol segment (else one simple-protocol query).
    pub extended: bool,
    /// The kinds of the statements it executes, in order.
    pub kinds: &'a [StatementKind],
    /// The kinds of the statements inside a multi-statement query string
    /// ([`StatementKind::Compound`]), in order; empty otherwise.
    pub parts: &'a [StatementKind],
    /// Its statements that touch data, each with the position of its message and its target.
    pub routed: &'a [(usize, Target)],
    /// Moving keys its statements write during a resharding migration.
    pub dual: bool,
    /// The first statement that could not be routed, and why.
    pub refusal: Option<&'a ClientError>,
    /// Messages were read before the refused one: PostgreSQL answers them before it reaches
    /// the error.
    pub read_before_refusal: bool,
}

impl Request<'_> {
    /// Every statement of the request, those inside a multi-statement query string included.
    fn statements(&self) -> impl Iterator<Item = &StatementKind> {
        self.kinds.iter().chain(self.parts)
    }

    /// Whether a statement of the request ends the transaction block.
    fn ends_transaction(&self) -> bool {
        self.statements().any(StatementKind::ends_transaction)
    }
}

/// The session's state, as far as the decision needs it.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    pub config: &'a Config,
    pub tx: &'a Transaction,
    /// A shard whose backend the session holds outside a transaction (session pooling, or a
    /// pipeline not yet synced).
    pub held: Option<ShardId>,
    /// Shards whose backend is inside the current pipeline (messages sent, no `Sync` yet).
    pub unsynced: Vec<ShardId>,
    /// The current pipeline already runs spread over several shards.
    pub spread: bool,
    /// An extended-protocol `COPY` ended and its backend waits for the client's `Sync`.
    pub awaiting_sync: bool,
    /// The segment ends with `Flush`: its pipeline goes on after it.
    pub segment_open: bool,
    /// A resharding cutover holds writes to moving keys right now.
    pub cutover_holds: bool,
}

/// What the session does with a request.
#[derive(Debug)]
pub(crate) enum Action<'a> {
    /// The proxy answers every statement itself ([`local_answer`]).
    Local,
    /// Commits a transaction that wrote moving keys: on the new owners, then the old one.
    CommitDual { old: ShardId },
    /// Waits until the resharding cutover lets writes to moving keys go on, then decides again.
    AwaitCutover,
    /// Runs on one shard. `starts_transaction` is false for messages that touch no data (a
    /// lone `Parse`, a `SET` of an unreported setting), which must not start a held
    /// transaction on a shard; true for data, `SHOW`, `PREPARE TRANSACTION` and a `SET` of a
    /// reported setting.
    Single {
        shard: ShardId,
        starts_transaction: bool,
    },
    /// Runs on the old owner of the moving keys it writes and copies them to the new owners.
    DualWrite { old: ShardId },
    /// Runs on every listed shard; answers concatenated.
    Scatter(&'a [ShardId]),
    /// Runs on every listed shard; rows merged or aggregates combined.
    Gather(&'a [ShardId]),
    /// A split multi-row `INSERT`, committed on every shard or none.
    Split(&'a [InsertPart]),
    /// A `COPY` whose rows go to their shards, committed on every shard or none.
    Copy(&'a CopyInto),
    /// A read run on the default shard once these tables' rows are gathered there.
    Pull(&'a [PulledTable]),
    /// An `INSERT … SELECT` into a sharded table: the rows made on the default shard, loaded
    /// into their shards, committed on every shard or none.
    InsertSelect(&'a InsertSelect),
    /// A pipeline whose statements need different shards, run statement by statement; outside
    /// a transaction block its shards commit together at its `Sync`.
    Spread,
    /// Runs on every shard of the transaction: a savepoint command or `SET LOCAL`.
    Everywhere,
    /// Ends a transaction on every shard it spans: commits on all of them or none, or rolls all
    /// of them back (a failed transaction always rolls back).
    Finish { commit: bool },
    /// Refuses the request with this error (failing the transaction, as PostgreSQL does).
    Refuse(ClientError),
    /// Runs the messages of the segment read before the one refused, as a step of a pipeline,
    /// then refuses with this error (unless they failed first): PostgreSQL answers them before
    /// it reaches the error, then skips the rest up to `Sync` and rolls their work back.
    RunThenRefuse(ClientError),
}

impl Action<'_> {
    /// The shards the action runs the client's statement on, for `shardline.show_route`.
    pub(crate) fn shards(&self) -> Option<Vec<ShardId>> {
        match self {
            Action::Single { shard, .. } | Action::DualWrite { old: shard } => Some(vec![*shard]),
            Action::Scatter(shards) | Action::Gather(shards) => Some(shards.to_vec()),
            _ => None,
        }
    }
}

/// Decides what to do with `request` given the session's state.
pub(crate) fn decide<'a>(request: &Request<'a>, facts: &Facts<'_>) -> Action<'a> {
    let tx = facts.tx;
    // A refused statement ends the request where it stands: what preceded it is answered on
    // its own only where that can run first (`runs_before_refusal`).
    let whole = request.refusal.is_none();
    // Inside a pipeline that already ran statements (not synced yet), a `BEGIN` or `COMMIT`
    // belongs to the shards running it, as PostgreSQL folds them into the implicit transaction.
    let mid_pipeline = facts.spread || !facts.unsynced.is_empty();
    let moves_transaction = controls_transactions(request.kinds)
        || request
            .kinds
            .iter()
            .any(|k| matches!(k, StatementKind::Savepoint { .. }));
    // A SET of a reported setting inside a held transaction (or after a BEGIN in the same
    // request) starts the transaction on the default shard instead of being held: the client
    // hears the new value (ParameterStatus) at once, as from PostgreSQL. Not with one-shard
    // transactions, where it would pin it.
    let begins = tx.begin.is_some() || request.kinds.contains(&StatementKind::Begin);
    let reports = facts.config.cross_shard_transactions
        && begins
        && request.statements().any(changes_reported);
    let needs_backend = facts.awaiting_sync || reports || (mid_pipeline && moves_transaction);
    if whole && !needs_backend && answers_locally(request.kinds, TxPhase::of(tx)) {
        return Action::Local;
    }
    if tx.failed {
        if let Some(action) = in_failed_transaction(request) {
            return action;
        }
    }
    if let Some(error) = request.refusal {
        if runs_before_refusal(request, facts) {
            return Action::RunThenRefuse(error.clone());
        }
        return Action::Refuse(error.clone());
    }
    if request
        .statements()
        .any(|k| matches!(k, StatementKind::Deallocate { .. }))
    {
        // Backends know the statement under the proxy's name only; the proxy answers it.
        return Action::Refuse(ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "send DEALLOCATE of a named statement alone (a query of its own, or alone before a Sync), so the proxy can answer it",
        ));
    }
    if !tx.shards.is_empty() {
        if let Some(action) = transaction_wide(request, facts) {
            return action;
        }
    }
    let prepares = request
        .statements()
        .any(|k| *k == StatementKind::PrepareTransaction);
    if prepares
        && tx
            .home()
            .is_some_and(|home| home != facts.config.default_shard)
    {
        return Action::Refuse(client_two_phase_elsewhere(facts.config));
    }
    if request.dual && facts.cutover_holds {
        return Action::AwaitCutover;
    }
    if request.extended && spreads(request, facts) {
        return spread(request, facts);
    }
    let target = match combined_target(request, facts) {
        Ok(target) => target,
        Err(error) => return Action::Refuse(error),
    };
    let moving = request.dual || !tx.dual.is_empty();
    let shard = match target {
        Ok(shard) => shard,
        Err(_) if moving => return Action::Refuse(moving::several_shards()),
        Err(target) => {
            if tx.open() && !facts.config.cross_shard_transactions {
                let shards = target.shards(facts.config).unwrap_or_default();
                return Action::Refuse(scatter_in_transaction(facts.config, &shards));
            }
            return match target {
                Target::Gather(shards) => Action::Gather(shards),
                Target::Split(parts) => Action::Split(parts),
                Target::Copy(spec) => Action::Copy(spec),
                Target::Scatter(shards) => Action::Scatter(shards),
                Target::Pull { tables, .. } => Action::Pull(tables),
                Target::InsertSelect(plan) => Action::InsertSelect(plan),
                // Resolved to a shard by `combined_target`.
                Target::Session | Target::Shard(_) => Action::Refuse(ClientError::new(
                    sqlstate::INTERNAL,
                    "a single-shard target was not resolved",
                )),
            };
        }
    };
    // A held BEGIN starts on the shard with the first statement that touches data, with a
    // PREPARE TRANSACTION (an empty transaction can be prepared too), with a SHOW, which
    // must see what the transaction set (`SET TRANSACTION`, `SET LOCAL`), or with a SET of a
    // reported setting (above).
    // (With one-shard transactions a SHOW must not pin the transaction to the default shard.)
    let shows = facts.config.cross_shard_transactions
        && request.statements().any(|k| *k == StatementKind::Show);
    let starts_transaction = !request.routed.is_empty() || prepares || shows || reports;
    let joins = starts_transaction && tx.home().is_some_and(|_| !tx.shards.contains(&shard));
    if joins && moving {
        return Action::Refuse(moving::several_shards());
    }
    if joins && request.ends_transaction() {
        // The shard joining would end the transaction alone, the others left open.
        let mut shards = tx.shards.clone();
        shards.insert(shard);
        return Action::Refuse(end_alone(facts.config, &shards));
    }
    if joins && !facts.config.cross_shard_transactions {
        let home = tx.home().unwrap_or_default();
        return Action::Refuse(pinned_elsewhere(facts.config, home, shard));
    }
    if request.dual {
        return Action::DualWrite { old: shard };
    }
    Action::Single {
        shard,
        starts_transaction,
    }
}

/// Whether the messages read before a refused one run first, as PostgreSQL runs them: only
/// where aborting the pipeline at its `Sync` undoes all they did, which holds for a step on
/// one shard and for a pipeline spread over shards. Not for messages that end the
/// transaction, write moving keys or `COPY` (whose end the client syncs itself), nor for
/// setting changes (the session records them as they complete), statements the proxy
/// assembles (a split `INSERT`), which commit on their own, or answers the proxy makes itself:
/// those requests are refused whole, as before anything runs.
fn runs_before_refusal(request: &Request<'_>, facts: &Facts<'_>) -> bool {
    let undone_at_sync = |kind: &StatementKind| {
        !kind.ends_transaction()
            && !matches!(kind, StatementKind::CopyIn | StatementKind::CopyOut)
            && effect_of(kind).is_none()
    };
    if !request.read_before_refusal || request.dual || !request.statements().all(undone_at_sync) {
        return false;
    }
    let before = Request {
        refusal: None,
        read_before_refusal: false,
        ..*request
    };
    // They run as a step of a pipeline, as if the client had sent `Flush` after them.
    let facts = Facts {
        segment_open: true,
        ..facts.clone()
    };
    matches!(
        decide(&before, &facts),
        Action::Single { .. } | Action::Spread
    )
}

/// A request inside a transaction that already failed: only its end, or a `ROLLBACK TO
/// SAVEPOINT` that undoes the failure, may run. A request that executes nothing (a `Sync`
/// alone, as psycopg sends after an error in a pipeline) goes on to the transaction's backend,
/// which answers it as PostgreSQL does (`None`).
fn in_failed_transaction<'a>(request: &Request<'a>) -> Option<Action<'a>> {
    let kinds = request.kinds;
    if kinds.is_empty() && request.routed.is_empty() && request.refusal.is_none() {
        return None;
    }
    // With a refused message after it, the request has no `Sync` to answer: refused below.
    if !kinds.is_empty()
        && kinds.iter().all(StatementKind::ends_transaction)
        && request.refusal.is_none()
    {
        // Like PostgreSQL, ending a failed transaction rolls it back, whatever was asked
        // (COMMIT and PREPARE TRANSACTION answer ROLLBACK).
        return Some(Action::Finish { commit: false });
    }
    // `ROLLBACK TO` ends the failure; savepoint commands after it before the same Sync (psycopg
    // sends `ROLLBACK TO` and `RELEASE` together) run with it, on every shard.
    let rolls_back_first = matches!(
        kinds.first(),
        Some(StatementKind::Savepoint {
            op: SavepointOp::RollbackTo,
            ..
        })
    );
    let all_scoped = kinds.iter().all(transaction_scoped);
    if rolls_back_first && all_scoped && request.routed.is_empty() && request.refusal.is_none() {
        return Some(Action::Everywhere);
    }
    Some(Action::Refuse(local::aborted()))
}

/// Savepoint commands and `SET LOCAL`: every shard of the transaction must see them.
fn transaction_scoped(kind: &StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Savepoint { .. } | StatementKind::SetLocal
    )
}

/// Statements that concern the whole transaction once shards take part in it: its end, and
/// savepoints and `SET LOCAL`, which every participant must see.
fn transaction_wide<'a>(request: &Request<'a>, facts: &Facts<'_>) -> Option<Action<'a>> {
    let tx = facts.tx;
    let kinds = request.kinds;
    let several = tx.shards.len() > 1;
    if !kinds.is_empty() && request.routed.is_empty() && !facts.segment_open {
        match kinds {
            [StatementKind::Commit] if !several && !tx.dual.is_empty() => {
                return tx.home().map(|old| Action::CommitDual { old });
            }
            [StatementKind::Commit] if several => return Some(Action::Finish { commit: true }),
            [StatementKind::Rollback] if several => return Some(Action::Finish { commit: false }),
            _ => {}
        }
    }
    if several && request.ends_transaction() {
        // Anywhere but alone, the end would reach one shard and leave the others open.
        return Some(Action::Refuse(end_alone(facts.config, &tx.shards)));
    }
    if several && request.dual {
        // Moving keys are copied to their new owners at a one-shard commit.
        return Some(Action::Refuse(moving::several_shards()));
    }
    if !request.statements().any(transaction_scoped) {
        return None;
    }
    if kinds.iter().all(transaction_scoped) && request.routed.is_empty() {
        return Some(Action::Everywhere);
    }
    let one_shard_each = request
        .routed
        .iter()
        .all(|(_, t)| matches!(t, Target::Shard(_)));
    if several && request.extended && one_shard_each && facts.config.cross_shard_transactions {
        // Statement by statement: the savepoints reach every shard, the rest their own.
        return Some(Action::Spread);
    }
    several.then(|| {
        Action::Refuse(ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "in a transaction that spans shards, send SAVEPOINT, RELEASE, ROLLBACK TO and SET LOCAL as queries of their own (in a pipeline, alone before a Sync)",
        ))
    })
}

/// A pipeline segment that runs statement by statement on each one's shard, or why it cannot.
fn spread<'a>(request: &Request<'a>, facts: &Facts<'_>) -> Action<'a> {
    if request.dual || !facts.tx.dual.is_empty() {
        return Action::Refuse(moving::several_shards());
    }
    // Statements it cannot run (a transaction's end, an assembled read) are refused in their
    // place, so an error PostgreSQL would report before them still comes first.
    Action::Spread
}

/// Whether every statement of the request is one the proxy answers itself, taking the
/// transaction's phase from statement to statement.
fn answers_locally(kinds: &[StatementKind], mut phase: TxPhase) -> bool {
    if kinds.is_empty() {
        return false;
    }
    for kind in kinds {
        match local_answer(kind, phase) {
            Some(answer) => phase = answer.next_phase(phase),
            None => return false,
        }
    }
    true
}

/// Whether an extended-protocol segment must run spread: outside a transaction block, its
/// statements (with what its pipeline already ran) need more than one shard; inside one, its
/// own statements do. A statement that needs several shards spreads when other statements
/// share its segment; alone, it runs as it is.
fn spreads(request: &Request<'_>, facts: &Facts<'_>) -> bool {
    if facts.spread {
        return true;
    }
    if !facts.config.cross_shard_transactions && controls_transactions(request.kinds) {
        return false;
    }
    if request
        .routed
        .iter()
        .any(|(_, t)| !matches!(t, Target::Shard(_)))
    {
        // Beside other routed statements of the segment; alone (even after a Flush) it runs
        // as it is, as drivers that prepare with a Flush first expect.
        return request.routed.len() > 1
            && (!facts.tx.open() || facts.config.cross_shard_transactions);
    }
    let beside_others = request.routed.len() > 1 || !facts.unsynced.is_empty();
    if facts.tx.open() {
        // Inside a transaction block the shards join the transaction; the segment spreads when
        // its own statements need several.
        let mut shards = request.routed.iter().filter_map(|(_, t)| match t {
            Target::Shard(shard) => Some(*shard),
            _ => None,
        });
        let first = shards.next();
        return facts.config.cross_shard_transactions && shards.any(|s| Some(s) != first);
    }
    // The common segment (one statement, nothing left unsynced) decides without allocating.
    if !beside_others {
        return false;
    }
    let mut shards: BTreeSet<ShardId> = facts.unsynced.iter().copied().collect();
    for (_, target) in request.routed {
        if let Target::Shard(shard) = target {
            shards.insert(*shard);
        }
    }
    shards.len() > 1
}

/// Whether any statement begins or ends a transaction block.
fn controls_transactions(kinds: &[StatementKind]) -> bool {
    kinds.iter().any(|k| {
        matches!(
            k,
            StatementKind::Begin
                | StatementKind::Commit
                | StatementKind::Rollback
                | StatementKind::PrepareTransaction
                | StatementKind::TransactionControl
        )
    })
}

/// Where the whole request runs: one shard (`Ok(Ok)`), or the one multi-shard target of its
/// only statement (`Ok(Err)`). A request is one implicit transaction, so its statements must
/// share a shard unless it is a single statement that needs several.
fn combined_target<'a>(
    request: &Request<'a>,
    facts: &Facts<'_>,
) -> Result<Result<ShardId, &'a Target>, ClientError> {
    let session_shard = || {
        facts
            .tx
            .home()
            .or(facts.held)
            .unwrap_or(facts.config.default_shard)
    };
    if facts.awaiting_sync || request.routed.is_empty() {
        return Ok(Ok(session_shard()));
    }
    if let [(_, only)] = request.routed {
        return Ok(match only {
            Target::Session => Ok(session_shard()),
            Target::Shard(shard) => Ok(*shard),
            other => Err(other),
        });
    }
    let mut shards = BTreeSet::new();
    for (_, target) in request.routed {
        match target {
            Target::Session => {}
            target => shards.extend(target.shards(facts.config).unwrap_or_default()),
        }
    }
    let single = request
        .routed
        .iter()
        .all(|(_, t)| matches!(t, Target::Shard(_) | Target::Session));
    match (single, shards.len()) {
        (true, 0) => Ok(Ok(session_shard())),
        (true, 1) => Ok(Ok(shards.into_iter().next().unwrap_or_default())),
        _ => Err(ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "the statements sent before this Sync need shards {}; a transaction block stays on one shard, and a statement that runs on several shards must be the only one before its Sync",
                shard_names(facts.config, &shards.into_iter().collect::<Vec<_>>())
            ),
        )),
    }
}
