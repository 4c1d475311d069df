//! The routing plan of one statement: what kind of statement it is and where it goes.
//!
//! [`plan`] analyses the SQL text once — the proxy caches the result per statement text or per
//! prepared statement — and [`Plan::route`] answers "which shards?" for each execution. All the
//! SQL work happens in `plan`; `route` only reads the Bind parameters that hold shard keys,
//! parses and hashes them, and looks shards up in the config, so its cost is proportional to the
//! number of key values.
//!
//! A plan stores *what* restricts the shard key (literal key values, `$n` parameters, which
//! tables must be co-located), not shard numbers: placement is looked up in the [`Config`]
//! passed to `route`. A cached plan therefore follows a reload that moves keys between shards.
//! A reload that changes *which* tables are sharded needs fresh plans; `route` reports that
//! with SQLSTATE 55000 instead of guessing.
//!
//! This file holds the public API. The rest, by idea: `target` (what a plan stores), `eval`
//! (turning a target into shards for one execution), `keys` (shard-key values and parameters
//! at route time) and `shard_set` (the shard bitmaps evaluation computes with).

mod eval;
mod keys;
mod named;
mod shard_set;
mod target;

use std::fmt;

use crate::config::{Config, ShardId};
use crate::params::Params;
use crate::sqlstate;

use eval::{Eval, LoneShard};
pub use named::NamedKeys;
use shard_set::ShardSet;
pub(crate) use target::{Branch, ClassInfo, KeySrc, KeyUpdate, Keyed, Restr, Target};

/// Analyses one Query/Parse text against `config`. Never panics and never fails: statements
/// that cannot be routed get a plan whose [`Plan::route`] returns the error.
pub fn plan(config: &Config, sql: &str) -> Plan {
    crate::analyze::analyze(config, sql)
}

/// What the proxy needs to know about one statement text, computed once and reused.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What kind of statement this is (transaction control, SET, read, write, COPY, ...).
    pub kind: StatementKind,
    pub(crate) target: Target,
    pub(crate) parts: Vec<StatementKind>,
    /// For a read with ORDER BY or LIMIT: how the proxy merges it when it spans shards.
    pub merge: Option<crate::merge::MergeSpec>,
    /// For a read with combinable aggregates: how the proxy combines the shards' groups.
    pub aggregate: Option<crate::combine::AggregateSpec>,
}

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Exactly one shard.
    Single(ShardId),
    /// Several shards (sorted, no duplicates, at least two); the proxy merges the answers.
    Multi(Vec<ShardId>),
}

/// Why a statement cannot be routed; becomes an `ErrorResponse` for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    /// SQLSTATE sent to the client.
    pub sqlstate: &'static str,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// What a savepoint command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointOp {
    /// `SAVEPOINT name`.
    Define,
    /// `RELEASE [SAVEPOINT] name`.
    Release,
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackTo,
}

/// The kind of a statement, so the proxy knows whether to track it (transactions, session
/// settings, prepared statements) or just forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// `BEGIN` / `START TRANSACTION` (any options).
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT` (not `ROLLBACK TO SAVEPOINT`).
    Rollback,
    /// `PREPARE TRANSACTION`: ends the transaction block by preparing it for two-phase commit.
    PrepareTransaction,
    /// `COMMIT/ROLLBACK PREPARED`, and cursor commands (`FETCH`, `MOVE`, `CLOSE`) that must reach
    /// the backend the client holds.
    TransactionControl,
    /// `SAVEPOINT name`, `RELEASE [SAVEPOINT] name`, `ROLLBACK TO [SAVEPOINT] name`: they reach
    /// every shard of the transaction, and a shard that joins later has them replayed.
    Savepoint {
        op: SavepointOp,
        /// The savepoint, folded as PostgreSQL folds identifiers.
        name: String,
    },
    /// Session-level `SET name = value`; `name` is lower-cased, `value` is SQL text to replay as
    /// `SET name = <value>`.
    Set {
        /// The setting, lower-cased (`search_path`, `timezone`, `myapp.tenant`).
        name: String,
        /// The value as SQL text (`'UTC'`, `app, public`, `DEFAULT`).
        value: String,
    },
    /// `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`, `DISCARD PLANS/SEQUENCES/TEMP`:
    /// settings that end with the transaction or leave nothing to replay.
    SetLocal,
    /// `RESET name`.
    Reset {
        /// The setting, lower-cased.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`: the proxy forgets the client's prepared statements and settings.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`: the proxy forgets the client's prepared statements (inside a
    /// transaction block too, where PostgreSQL allows it).
    DeallocateAll,
    /// `DEALLOCATE [PREPARE] name`: the proxy forgets that one client statement (the client's
    /// prepared statements live under proxy-chosen names on the backends).
    Deallocate {
        /// The statement, folded as PostgreSQL folds identifiers.
        name: String,
    },
    /// `SHOW x`.
    Show,
    /// `SELECT`, `VALUES`, `TABLE`, read-only `WITH`.
    Read,
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `SELECT … FOR UPDATE/SHARE`, `LOCK`, `CALL`,
    /// data-modifying `WITH`.
    Write,
    /// Schema changes and maintenance (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `GRANT`, ...).
    Ddl,
    /// `COPY … FROM STDIN`.
    CopyIn,
    /// `COPY … TO STDOUT`.
    CopyOut,
    /// `EXPLAIN <stmt>`: routed like the inner statement.
    Explain,
    /// Statements shardline refuses (SQL-level `PREPARE`/`EXECUTE`, `LISTEN`/`NOTIFY`, ...);
    /// `route()` returns the reason.
    Unsupported,
    /// Several statements in one Query string; see [`Plan::parts`].
    Compound,
    /// An empty query string (only whitespace, semicolons or comments).
    Empty,
}

impl StatementKind {
    /// Whether the statement ends the transaction block it runs in (`COMMIT`, `ROLLBACK`,
    /// `PREPARE TRANSACTION`): on one shard of a transaction that spans several, it would end
    /// the transaction there alone.
    pub fn ends_transaction(&self) -> bool {
        matches!(
            self,
            StatementKind::Commit | StatementKind::Rollback | StatementKind::PrepareTransaction
        )
    }
}

impl Plan {
    /// Where this statement goes for the given Bind parameters (`&()` for none).
    pub fn route(&self, config: &Config, params: &dyn Params) -> Result<Route, RouteError> {
        let mut eval = Eval::new(config, params, false);
        // Nearly every statement: one key value places all its rows, and it runs there.
        if let Target::Keyed(keyed) = &self.target {
            if let Some((class, src)) = keyed.lone_key() {
                let (LoneShard::Owner(shard) | LoneShard::NoRows(shard)) =
                    eval.lone_shard(class, src)?;
                return Ok(Route::Single(shard));
            }
        }
        if let Some(route) = self.schema_script_route(config, params) {
            return Ok(route);
        }
        let placement = eval.target(&self.target)?;
        Ok(placement.into_route(config))
    }

    /// True when `route()` refuses the statement whatever its parameters (an `INSERT` that
    /// leaves out the shard key, a construct the router cannot place).
    pub fn always_refused(&self) -> bool {
        matches!(self.target, Target::Error(_))
    }

    /// True when `route()` depends on parameters (so the proxy must look at Bind).
    pub fn depends_on_params(&self) -> bool {
        self.target.depends_on_params()
    }

    /// One-line human explanation of the decision, for route introspection
    /// (`users.id = $1 ($1 = 42) -> hash -> s1`, `no shard key: all 4 shards ...`).
    pub fn explain(&self, config: &Config, params: &dyn Params) -> String {
        let mut eval = Eval::new(config, params, true);
        let outcome = eval.target(&self.target);
        let mut line = self.target.describe();
        if !eval.notes.is_empty() {
            line.push_str(" (");
            line.push_str(&eval.notes.join(", "));
            line.push(')');
        }
        line.push_str(" -> ");
        match outcome {
            Ok(placement) => {
                if let Some(kind) = self.target.sharding_kind(config) {
                    line.push_str(kind);
                    line.push_str(" -> ");
                }
                line.push_str(&describe_route(config, &placement.into_route(config)));
            }
            Err(e) => line.push_str(&format!("error {}: {}", e.sqlstate, e.message)),
        }
        line
    }

    /// A multi-statement string made only of DDL (a schema script) runs on every shard its
    /// statements need, as long as they all need the same ones: each shard runs the whole
    /// script, which is what running each statement separately would do.
    fn schema_script_route(&self, config: &Config, params: &dyn Params) -> Option<Route> {
        let Target::Compound(parts) = &self.target else {
            return None;
        };
        if self.parts.is_empty() || !self.parts.iter().all(|k| *k == StatementKind::Ddl) {
            return None;
        }
        let mut routes = parts.iter().map(|part| {
            let mut eval = Eval::new(config, params, false);
            eval.target(part).ok().map(|p| p.into_route(config))
        });
        let first = routes.next()??;
        routes.all(|r| r.as_ref() == Some(&first)).then_some(first)
    }

    /// The kinds of the statements inside a [`StatementKind::Compound`] query, in order, so the
    /// proxy can follow `BEGIN`/`SET`/`COMMIT` sent inside a multi-statement string. Empty for
    /// other kinds.
    pub fn parts(&self) -> &[StatementKind] {
        &self.parts
    }
}

impl RouteError {
    /// Builds an error from its SQLSTATE and message.
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> RouteError {
        RouteError {
            sqlstate,
            message: message.into(),
        }
    }
}

/// Shard names for a route, for explanations.
fn describe_route(config: &Config, route: &Route) -> String {
    let name = |id: &ShardId| shard_name(config, *id);
    match route {
        Route::Single(id) => name(id),
        Route::Multi(ids) => {
            let names: Vec<String> = ids.iter().map(name).collect();
            if ids.len() == config.shards.len() {
                format!("all {} shards ({})", ids.len(), names.join(", "))
            } else {
                format!("{} shards ({})", ids.len(), names.join(", "))
            }
        }
    }
}

/// The name of a shard in shards.yaml (`shard <id>` if the config has no such shard).
fn shard_name(config: &Config, id: ShardId) -> String {
    config
        .shards
        .get(id)
        .map_or_else(|| format!("shard {id}"), |s| s.name.clone())
}

/// The error for an inserted row without a shard key.
pub(crate) fn null_key(column: &str) -> RouteError {
    RouteError::new(
        sqlstate::NOT_NULL_VIOLATION,
        format!("null value in shard key column {column}: every row of a sharded table needs a shard key"),
    )
}

/// "a", "a and b", "a, b and c".
pub(crate) fn join_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Single(id) => write!(f, "shard {id}"),
            Route::Multi(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(f, "shards {}", ids.join(", "))
            }
        }
    }
}
