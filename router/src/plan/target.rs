//! The compiled target of a statement: what the analyser found restricts the shard key
//! (literal key values, `$n` parameters, co-located table classes), stored in a [`Plan`] and
//! evaluated by `route()` against the current config.
//!
//! [`Plan`]: super::Plan

use crate::config::{Config, Sharding};
use crate::key::{KeyType, KeyValue};

use super::RouteError;

/// Where a statement goes, precomputed by the analyser; evaluated by `route()`.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Any one shard will do (no tables, reference or catalog tables only, statements the
    /// proxy handles itself); resolves to the default shard.
    Anywhere(String),
    /// The default shard and no other (tables that shards.yaml does not list live there).
    Default(String),
    /// Every shard (DDL keeps schemas uniform; writes to reference tables).
    AllShards(String),
    /// Every shard holding any of these tables (`LOCK`); `None` stands for an unlisted table.
    Tables(Vec<Option<String>>, String),
    /// Depends on shard keys.
    Keyed(Box<Keyed>),
    /// Several statements that must stay on one shard together.
    Compound(Vec<Target>),
    /// The statement cannot be routed.
    Error(RouteError),
}

/// A target that depends on shard-key values: one or more alternative row sources
/// (branches of `UNION ALL`), each joining equivalence classes of co-located tables.
#[derive(Debug, Clone)]
pub(crate) struct Keyed {
    /// Equivalence classes of sharded tables linked by shard-key equalities.
    pub classes: Vec<ClassInfo>,
    /// Independent row sources whose results are concatenated.
    pub branches: Vec<Branch>,
    /// Set when the statement can only run on one shard (COPY FROM, multi-row INSERT, cursors):
    /// the error returned when it would need more.
    pub single_only: Option<RouteError>,
    /// `UPDATE … SET key = v`: allowed only when every updated row stays on its shard.
    pub key_update: Option<KeyUpdate>,
    /// Human description of the restrictions, for `explain`.
    pub describe: String,
}

/// One equivalence class: tables that share shard-key values in every row that matters.
#[derive(Debug, Clone)]
pub(crate) struct ClassInfo {
    /// Config key of a representative table (all members are co-located).
    pub rule: String,
    /// Type of the shard key, to read parameters.
    pub key_type: KeyType,
    /// `table.column` of the representative, for messages.
    pub column: String,
    /// Names of the member tables, for messages.
    pub tables: Vec<String>,
}

/// One row source: anchored classes produce its rows and are joined; floating classes are
/// read by subqueries and must resolve to a single shard.
#[derive(Debug, Clone, Default)]
pub(crate) struct Branch {
    pub anchored: Vec<(usize, Restr)>,
    pub floating: Vec<(usize, Restr)>,
    /// Name of a table that is not in shards.yaml (so lives on the default shard), if any.
    pub unlisted: Option<String>,
    /// A subquery aggregates, de-duplicates or limits the anchored rows across shard keys, so
    /// they must all come from one shard.
    pub single: bool,
}

/// The shard-key restriction on a class, as a small formula.
#[derive(Debug, Clone)]
pub(crate) enum Restr {
    /// No restriction: every shard of the table.
    All,
    /// The key is one of these values.
    Keys(Vec<KeySrc>),
    And(Vec<Restr>),
    Or(Vec<Restr>),
}

/// Where a shard-key value comes from.
#[derive(Debug, Clone)]
pub(crate) enum KeySrc {
    /// A literal, parsed at plan time.
    Value(KeyValue),
    /// Literal NULL: matches no row.
    Null,
    /// `$n` (0-based); NULL matches no row.
    Param(usize),
    /// `= ANY($n)`: an array parameter in text or binary format.
    ParamArray(usize),
    /// `$n` giving the key of an inserted row; NULL is an error.
    InsertParam(usize),
    /// A literal that failed to parse; routing returns this error.
    Fail(RouteError),
}

/// The new key value of `UPDATE … SET key = v`.
#[derive(Debug, Clone)]
pub(crate) struct KeyUpdate {
    pub class: usize,
    pub value: KeySrc,
}

impl Keyed {
    /// The class and the one key value that place every row, when the statement has them:
    /// one class read by one branch through one key (no subquery, table outside the config,
    /// array or key update) — the shape of nearly every statement an application sends,
    /// which routing then places without combining branches.
    pub(super) fn lone_key(&self) -> Option<(&ClassInfo, &KeySrc)> {
        let ([class], [branch]) = (self.classes.as_slice(), self.branches.as_slice()) else {
            return None;
        };
        if self.key_update.is_some() || !branch.floating.is_empty() || branch.unlisted.is_some() {
            return None;
        }
        let [(0, Restr::Keys(keys))] = branch.anchored.as_slice() else {
            return None;
        };
        match keys.as_slice() {
            [src] if !matches!(src, KeySrc::ParamArray(_)) => Some((class, src)),
            _ => None,
        }
    }
}

impl Target {
    /// True when evaluating this target reads Bind parameters.
    pub(super) fn depends_on_params(&self) -> bool {
        match self {
            Target::Keyed(k) => {
                let restr = k
                    .branches
                    .iter()
                    .flat_map(|b| b.anchored.iter().chain(&b.floating));
                restr.map(|(_, r)| r).any(Restr::depends_on_params)
                    || k.key_update.as_ref().is_some_and(|u| u.value.is_param())
            }
            Target::Compound(parts) => parts.iter().any(Target::depends_on_params),
            _ => false,
        }
    }

    /// Human description of the decision, for `explain`.
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Anywhere(why)
            | Target::Default(why)
            | Target::AllShards(why)
            | Target::Tables(_, why) => why.clone(),
            Target::Keyed(k) => k.describe.clone(),
            Target::Compound(parts) => {
                let inner: Vec<String> = parts.iter().map(Target::describe).collect();
                format!("multi-statement query [{}]", inner.join("; "))
            }
            Target::Error(e) => format!("cannot route ({})", e.sqlstate),
        }
    }

    /// "hash" or "range" when the decision rests on one sharded class.
    pub(super) fn sharding_kind(&self, config: &Config) -> Option<&'static str> {
        let Target::Keyed(k) = self else { return None };
        let [class] = k.classes.as_slice() else {
            return None;
        };
        match config.tables.get(&class.rule).map(|r| &r.sharding) {
            Some(Sharding::Hash { .. }) => Some("hash"),
            Some(Sharding::Range { .. }) => Some("range"),
            _ => None,
        }
    }
}

impl Restr {
    fn depends_on_params(&self) -> bool {
        match self {
            Restr::All => false,
            Restr::Keys(keys) => keys.iter().any(KeySrc::is_param),
            Restr::And(parts) | Restr::Or(parts) => parts.iter().any(Restr::depends_on_params),
        }
    }
}

impl KeySrc {
    fn is_param(&self) -> bool {
        matches!(
            self,
            KeySrc::Param(_) | KeySrc::ParamArray(_) | KeySrc::InsertParam(_)
        )
    }
}
