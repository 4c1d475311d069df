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

use std::fmt;

use crate::config::{Config, ShardId, Sharding, TableRule};
use crate::key::{KeyType, KeyValue};
use crate::params::{Param, Params};

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
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `PREPARE TRANSACTION`, `COMMIT/ROLLBACK PREPARED`,
    /// and cursor commands (`FETCH`, `MOVE`, `CLOSE`) that must reach the backend the client holds.
    TransactionControl,
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
    /// `DISCARD ALL`, `DEALLOCATE ALL`: the proxy forgets the client's prepared statements.
    DiscardAll,
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

impl Plan {
    /// Where this statement goes for the given Bind parameters (`&()` for none).
    pub fn route(&self, config: &Config, params: &dyn Params) -> Result<Route, RouteError> {
        if let Some(route) = self.schema_script_route(config, params) {
            return Ok(route);
        }
        let mut eval = Eval::new(config, params, false);
        let placement = eval.target(&self.target)?;
        Ok(placement.into_route(config))
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
    let name = |id: &ShardId| {
        config
            .shards
            .get(*id)
            .map_or_else(|| format!("shard {id}"), |s| s.name.clone())
    };
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

// ---------------------------------------------------------------------------------------------
// Shard sets
// ---------------------------------------------------------------------------------------------

/// A set of shard ids as a bitmap; the first 64 shards need no allocation, which keeps
/// `route()` allocation-free for ordinary clusters.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardSet {
    low: u64,
    high: Vec<u64>,
}

impl ShardSet {
    pub(crate) fn new() -> ShardSet {
        ShardSet::default()
    }

    pub(crate) fn single(id: ShardId) -> ShardSet {
        let mut s = ShardSet::new();
        s.insert(id);
        s
    }

    pub(crate) fn insert(&mut self, id: ShardId) {
        if id < 64 {
            self.low |= 1 << id;
        } else {
            let word = id / 64 - 1;
            if self.high.len() <= word {
                self.high.resize(word + 1, 0);
            }
            self.high[word] |= 1 << (id % 64);
        }
    }

    pub(crate) fn contains(&self, id: ShardId) -> bool {
        if id < 64 {
            self.low & (1 << id) != 0
        } else {
            self.high
                .get(id / 64 - 1)
                .is_some_and(|w| w & (1 << (id % 64)) != 0)
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.low.count_ones() as usize
            + self
                .high
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.low == 0 && self.high.iter().all(|w| *w == 0)
    }

    pub(crate) fn union_with(&mut self, other: &ShardSet) {
        self.low |= other.low;
        if self.high.len() < other.high.len() {
            self.high.resize(other.high.len(), 0);
        }
        for (mine, theirs) in self.high.iter_mut().zip(&other.high) {
            *mine |= theirs;
        }
    }

    pub(crate) fn intersect_with(&mut self, other: &ShardSet) {
        self.low &= other.low;
        for (i, mine) in self.high.iter_mut().enumerate() {
            *mine &= other.high.get(i).copied().unwrap_or(0);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        std::iter::once(self.low)
            .chain(self.high.iter().copied())
            .enumerate()
            .flat_map(|(word, bits)| {
                (0..64)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| word * 64 + b)
            })
    }

    pub(crate) fn first(&self) -> Option<ShardId> {
        self.iter().next()
    }

    /// The only member, when there is exactly one.
    pub(crate) fn only(&self) -> Option<ShardId> {
        if self.len() == 1 {
            self.first()
        } else {
            None
        }
    }
}

impl PartialEq for ShardSet {
    fn eq(&self, other: &ShardSet) -> bool {
        let words = self.high.len().max(other.high.len());
        self.low == other.low
            && (0..words).all(|i| {
                self.high.get(i).copied().unwrap_or(0) == other.high.get(i).copied().unwrap_or(0)
            })
    }
}

impl Eq for ShardSet {}

/// Every shard that holds rows of `rule`.
fn table_shards(rule: &TableRule, all: usize) -> ShardSet {
    let mut set = ShardSet::new();
    match &rule.sharding {
        Sharding::Hash { shards, .. } => shards.iter().for_each(|s| set.insert(*s)),
        Sharding::Range { ranges, .. } => ranges.iter().for_each(|r| set.insert(r.shard)),
        Sharding::Reference => (0..all).for_each(|s| set.insert(s)),
    }
    set
}

/// Every shard of the cluster.
fn all_shards(config: &Config) -> ShardSet {
    let mut set = ShardSet::new();
    config.all_shards().for_each(|s| set.insert(s));
    set
}

// ---------------------------------------------------------------------------------------------
// The compiled target
// ---------------------------------------------------------------------------------------------

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

/// Result of evaluating a target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    /// Any single shard; the default shard is used.
    Anywhere,
    /// These shards; empty means no row can match (any one shard of `fallback` answers).
    Shards(ShardSet, ShardId),
}

impl Placement {
    fn into_route(self, config: &Config) -> Route {
        match self {
            Placement::Anywhere => Route::Single(config.default_shard),
            Placement::Shards(set, fallback) => match set.len() {
                0 => Route::Single(fallback),
                1 => Route::Single(set.first().unwrap_or(fallback)),
                _ => Route::Multi(set.iter().collect()),
            },
        }
    }
}

impl Target {
    fn depends_on_params(&self) -> bool {
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

    fn describe(&self) -> String {
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
    fn sharding_kind(&self, config: &Config) -> Option<&'static str> {
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

// ---------------------------------------------------------------------------------------------
// Evaluation (the per-execution part)
// ---------------------------------------------------------------------------------------------

/// Evaluates targets against one config and one set of parameters.
struct Eval<'a> {
    config: &'a Config,
    params: &'a dyn Params,
    /// Parameter values seen, when explaining.
    explain: bool,
    notes: Vec<String>,
}

/// The rules of a target's classes, looked up once per evaluation; the first few are kept
/// inline so routing does not allocate.
#[derive(Default)]
struct Rules<'c> {
    inline: [Option<&'c TableRule>; 4],
    len: usize,
    more: Vec<&'c TableRule>,
}

impl<'c> Rules<'c> {
    fn push(&mut self, rule: &'c TableRule) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = Some(rule),
            None => self.more.push(rule),
        }
        self.len += 1;
    }

    fn get(&self, index: usize) -> Option<&'c TableRule> {
        match self.inline.get(index) {
            Some(slot) => *slot,
            None => self.more.get(index - self.inline.len()).copied(),
        }
    }
}

/// What pins a branch to a single shard.
#[derive(Debug, Clone, Copy)]
enum Pin {
    /// A table not in shards.yaml (default shard).
    Unlisted,
    /// A subquery on this class, not linked to the rows by the key.
    Subquery(usize),
}

/// Where a branch's rows come from.
enum BranchOut {
    /// No row can come out of this branch.
    Nothing,
    /// Rows are spread over these shards (each shard answers for its own keys).
    Spread(ShardSet),
    /// The branch must run exactly once, on this shard if given.
    Once(Option<ShardId>),
}

impl<'a> Eval<'a> {
    fn new(config: &'a Config, params: &'a dyn Params, explain: bool) -> Eval<'a> {
        Eval {
            config,
            params,
            explain,
            notes: Vec::new(),
        }
    }

    fn target(&mut self, target: &Target) -> Result<Placement, RouteError> {
        let config = self.config;
        match target {
            Target::Anywhere(_) => Ok(Placement::Anywhere),
            Target::Default(_) => Ok(Placement::Shards(
                ShardSet::single(config.default_shard),
                config.default_shard,
            )),
            Target::AllShards(_) => Ok(Placement::Shards(all_shards(config), config.default_shard)),
            Target::Tables(tables, _) => {
                let mut set = ShardSet::new();
                for table in tables {
                    match table.as_ref().and_then(|t| config.tables.get(t)) {
                        Some(rule) => set.union_with(&table_shards(rule, config.shards.len())),
                        None => set.insert(config.default_shard),
                    }
                }
                Ok(Placement::Shards(set, config.default_shard))
            }
            Target::Error(e) => Err(e.clone()),
            Target::Keyed(k) => self.keyed(k),
            Target::Compound(parts) => {
                let mut union = ShardSet::new();
                for part in parts {
                    if let Placement::Shards(set, fallback) = self.target(part)? {
                        if set.is_empty() {
                            union.insert(fallback);
                        } else {
                            union.union_with(&set);
                        }
                    }
                }
                if union.len() > 1 {
                    return Err(RouteError::new(
                        "0A000",
                        format!(
                            "a multi-statement query must stay on one shard, but this one needs {}; send the statements separately",
                            self.names(&union)
                        ),
                    ));
                }
                Ok(match union.first() {
                    Some(id) => Placement::Shards(union, id),
                    None => Placement::Anywhere,
                })
            }
        }
    }

    fn keyed(&mut self, k: &Keyed) -> Result<Placement, RouteError> {
        let config = self.config;
        let mut rules = Rules::default();
        for class in &k.classes {
            match config.tables.get(&class.rule) {
                Some(rule) if rule.key_column().is_some() => rules.push(rule),
                _ => {
                    return Err(RouteError::new(
                        "55000",
                        format!(
                            "the sharding of table {} changed since this statement was planned; prepare the statement again",
                            class.tables.first().map_or("?", String::as_str)
                        ),
                    ))
                }
            }
        }

        let mut spread = ShardSet::new();
        let mut once: Vec<Option<ShardId>> = Vec::new();
        for branch in &k.branches {
            match self.branch(k, &rules, branch)? {
                BranchOut::Nothing => {}
                BranchOut::Spread(set) => spread.union_with(&set),
                BranchOut::Once(at) => once.push(at),
            }
        }

        // Combine branches: spread rows are concatenated; a branch that must run once can only
        // join a single-shard result.
        let mut result = spread;
        for at in once {
            match (result.len(), at) {
                (0, Some(id)) => result.insert(id),
                (0, None) | (1, None) => {}
                (1, Some(id)) if result.contains(id) => {}
                _ => {
                    return Err(RouteError::new(
                        "0A000",
                        format!(
                            "part of this statement reads {} while another part must run on exactly one shard; split the statement",
                            self.names(&result)
                        ),
                    ))
                }
            }
        }

        if result.len() > 1 {
            if let Some(err) = &k.single_only {
                return Err(err.clone());
            }
        }
        if let Some(update) = &k.key_update {
            self.check_key_update(k, &rules, update, &result)?;
        }
        if !result.is_empty() {
            let first = result.first().unwrap_or(config.default_shard);
            return Ok(Placement::Shards(result, first));
        }
        if k.branches.iter().all(|b| b.anchored.is_empty()) {
            return Ok(Placement::Anywhere);
        }
        // No row can match: any shard of the table answers (the default shard if it has one).
        let fallback = rules.get(0).map_or(config.default_shard, |rule| {
            let shards = table_shards(rule, config.shards.len());
            if shards.contains(config.default_shard) {
                config.default_shard
            } else {
                shards.first().unwrap_or(config.default_shard)
            }
        });
        Ok(Placement::Shards(result, fallback))
    }

    fn branch(
        &mut self,
        k: &Keyed,
        rules: &Rules<'_>,
        branch: &Branch,
    ) -> Result<BranchOut, RouteError> {
        // Anchored classes: each yields the shards its rows can be on; unlinked classes must all
        // be on the same single shard, or the join would need rows from several shards at once.
        let mut anchored: Option<(usize, ShardSet)> = None;
        let mut no_rows = false;
        for (class, restr) in &branch.anchored {
            let set = self.restr(k, rules, *class, restr)?;
            if set.is_empty() {
                no_rows = true;
                continue;
            }
            match &anchored {
                None => anchored = Some((*class, set)),
                Some((first, existing)) => {
                    if *existing != set || set.len() != 1 {
                        return Err(self.cross_shard(k, *first, *class));
                    }
                }
            }
        }

        if branch.single {
            if let Some((class, set)) = &anchored {
                if set.len() > 1 {
                    let tables = k
                        .classes
                        .get(*class)
                        .map_or_else(String::new, |c| join_names(&c.tables));
                    return Err(RouteError::new(
                        "0A000",
                        format!(
                            "this query aggregates, de-duplicates or limits rows of {tables} (aggregates, GROUP BY, DISTINCT, LIMIT, window functions) across {}, which shardline cannot merge yet: restrict it to one shard key or group by the shard key",
                            self.names(set)
                        ),
                    ));
                }
            }
        }

        // Floating classes (read by subqueries not tied to the rows by the key) must each sit
        // on one shard, the same one as everything else.
        let mut pin: Option<(Pin, ShardId)> = None;
        if branch.unlisted.is_some() {
            pin = Some((Pin::Unlisted, self.config.default_shard));
        }
        for (class, restr) in &branch.floating {
            let set = self.restr(k, rules, *class, restr)?;
            match (set.only(), &pin) {
                (None, _) if set.is_empty() => {}
                (None, _) => {
                    return Err(RouteError::new(
                        "0A000",
                        format!(
                            "{} would read {}; a subquery that is not joined to the outer rows on the shard key must stay on one shard: restrict it by {} or run it separately",
                            self.pin_text(k, branch, Pin::Subquery(*class)),
                            self.names(&set),
                            k.classes.get(*class).map_or("its shard key", |c| c.column.as_str())
                        ),
                    ))
                }
                (Some(id), Some((other, existing))) if *existing != id => {
                    return Err(RouteError::new(
                        "0A000",
                        format!(
                            "{} needs shard {} but {} needs shard {}; shardline cannot combine rows from different shards in one statement",
                            self.pin_text(k, branch, Pin::Subquery(*class)),
                            self.name(id),
                            self.pin_text(k, branch, *other),
                            self.name(*existing)
                        ),
                    ))
                }
                (Some(_), Some(_)) => {}
                (Some(id), None) => pin = Some((Pin::Subquery(*class), id)),
            }
        }

        if no_rows {
            return Ok(BranchOut::Nothing);
        }
        match (anchored, pin) {
            (None, pin) => Ok(BranchOut::Once(pin.map(|p| p.1))),
            (Some((_, set)), None) => Ok(BranchOut::Spread(set)),
            (Some((_, set)), Some((_, id))) if set.only() == Some(id) => Ok(BranchOut::Spread(set)),
            (Some((class, set)), Some((what, id))) => {
                let tables = k
                    .classes
                    .get(class)
                    .map_or_else(String::new, |c| join_names(&c.tables));
                let advice = match what {
                    Pin::Unlisted => "list the table in shards.yaml (for example as a reference table) or query it separately",
                    Pin::Subquery(_) => "restrict both to the same shard key or run the subquery separately",
                };
                Err(RouteError::new(
                    "0A000",
                    format!(
                        "{} ({}), but sharded table {tables} is read on {}; {advice}",
                        self.pin_text(k, branch, what),
                        self.name(id),
                        self.names(&set)
                    ),
                ))
            }
        }
    }

    /// Describes what pins a branch to one shard, for messages.
    fn pin_text(&self, k: &Keyed, branch: &Branch, pin: Pin) -> String {
        match pin {
            Pin::Unlisted => format!(
                "table {}, which is not in shards.yaml, lives only on the default shard",
                branch.unlisted.as_deref().unwrap_or("?")
            ),
            Pin::Subquery(class) => format!(
                "a subquery on sharded table {}",
                k.classes
                    .get(class)
                    .map_or("?", |c| c.tables.first().map_or("?", String::as_str))
            ),
        }
    }

    fn cross_shard(&self, k: &Keyed, a: usize, b: usize) -> RouteError {
        let name = |c: usize| {
            k.classes
                .get(c)
                .map_or_else(String::new, |c| join_names(&c.tables))
        };
        if name(a) == name(b) {
            return RouteError::new(
                "0A000",
                format!(
                    "this statement combines rows of {} from different shards (a self-join, UNION, INTERSECT or EXCEPT not linked by the shard key), which is not supported; link them by the shard key, use UNION ALL, or split the statement",
                    name(a)
                ),
            );
        }
        RouteError::new(
            "0A000",
            format!(
                "cross-shard join of {} and {} is not supported; join co-located tables on their shard key",
                name(a),
                name(b)
            ),
        )
    }

    fn check_key_update(
        &mut self,
        k: &Keyed,
        rules: &Rules<'_>,
        update: &KeyUpdate,
        result: &ShardSet,
    ) -> Result<(), RouteError> {
        let column = k
            .classes
            .get(update.class)
            .map_or("the shard key", |c| c.column.as_str());
        let err = || {
            RouteError::new(
                "0A000",
                format!(
                    "changing the shard key {column} with UPDATE is not supported when the row could move to another shard; move the row by DELETE and INSERT"
                ),
            )
        };
        let Some(current) = result.only() else {
            return Err(err());
        };
        let mut target = ShardSet::new();
        let rule = rules.get(update.class).ok_or_else(err)?;
        let class = k.classes.get(update.class).ok_or_else(err)?;
        self.key(class, rule, &update.value, &mut target)?;
        match target.only() {
            Some(id) if id == current => Ok(()),
            _ => Err(err()),
        }
    }

    fn restr(
        &mut self,
        k: &Keyed,
        rules: &Rules<'_>,
        class: usize,
        restr: &Restr,
    ) -> Result<ShardSet, RouteError> {
        let (Some(info), Some(rule)) = (k.classes.get(class), rules.get(class)) else {
            return Ok(ShardSet::new());
        };
        match restr {
            Restr::All => Ok(table_shards(rule, self.config.shards.len())),
            Restr::Keys(keys) => {
                let mut set = ShardSet::new();
                for key in keys {
                    self.key(info, rule, key, &mut set)?;
                }
                Ok(set)
            }
            Restr::And(parts) => {
                let mut acc: Option<ShardSet> = None;
                for part in parts {
                    let set = self.restr(k, rules, class, part)?;
                    match &mut acc {
                        None => acc = Some(set),
                        Some(a) => a.intersect_with(&set),
                    }
                }
                Ok(acc.unwrap_or_else(|| table_shards(rule, self.config.shards.len())))
            }
            Restr::Or(parts) => {
                let mut acc = ShardSet::new();
                for part in parts {
                    acc.union_with(&self.restr(k, rules, class, part)?);
                }
                Ok(acc)
            }
        }
    }

    /// Adds the shard of one key source to `out`.
    fn key(
        &mut self,
        class: &ClassInfo,
        rule: &TableRule,
        src: &KeySrc,
        out: &mut ShardSet,
    ) -> Result<(), RouteError> {
        match src {
            KeySrc::Value(v) => out.insert(place(rule, v)?),
            KeySrc::Null => {}
            KeySrc::Fail(e) => return Err(e.clone()),
            KeySrc::Param(i) | KeySrc::InsertParam(i) => match self.param(*i)? {
                Param::Null => {
                    if self.explain {
                        self.notes.push(format!("${} = NULL", i + 1));
                    }
                    if matches!(src, KeySrc::InsertParam(_)) {
                        return Err(null_key(&class.column));
                    }
                }
                Param::Text(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| {
                        RouteError::new(
                            "22021",
                            format!(
                                "parameter ${} for shard key {} is not valid UTF-8",
                                i + 1,
                                class.column
                            ),
                        )
                    })?;
                    let value = class
                        .key_type
                        .parse_text(text)
                        .map_err(|e| RouteError::new("22P02", e.to_string()))?;
                    self.note(*i, &value);
                    out.insert(place(rule, &value)?);
                }
                Param::Binary(bytes) => {
                    let value = class
                        .key_type
                        .parse_binary(bytes)
                        .map_err(|e| RouteError::new("22P02", e.to_string()))?;
                    self.note(*i, &value);
                    out.insert(place(rule, &value)?);
                }
            },
            KeySrc::ParamArray(i) => {
                let values = match self.param(*i)? {
                    Param::Null => Vec::new(),
                    Param::Text(bytes) => {
                        let text = std::str::from_utf8(bytes).map_err(|_| {
                            RouteError::new(
                                "22021",
                                format!(
                                    "array parameter ${} for shard key {} is not valid UTF-8",
                                    i + 1,
                                    class.column
                                ),
                            )
                        })?;
                        let elements = crate::analyze::parse_text_array(text).map_err(|why| {
                            RouteError::new(
                                "22P02",
                                format!("malformed array parameter ${}: {why}", i + 1),
                            )
                        })?;
                        let mut values = Vec::with_capacity(elements.len());
                        for element in elements.into_iter().flatten() {
                            values.push(
                                class
                                    .key_type
                                    .parse_text(&element)
                                    .map_err(|e| RouteError::new("22P02", e.to_string()))?,
                            );
                        }
                        values
                    }
                    Param::Binary(bytes) => {
                        let elements =
                            crate::analyze::parse_binary_array(bytes).map_err(|why| {
                                RouteError::new(
                                    "22P02",
                                    format!("malformed binary array parameter ${}: {why}", i + 1),
                                )
                            })?;
                        let mut values = Vec::with_capacity(elements.len());
                        for element in elements.into_iter().flatten() {
                            values.push(
                                class
                                    .key_type
                                    .parse_binary(element)
                                    .map_err(|e| RouteError::new("22P02", e.to_string()))?,
                            );
                        }
                        values
                    }
                };
                if self.explain {
                    let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
                    self.notes
                        .push(format!("${} = {{{}}}", i + 1, shown.join(",")));
                }
                for value in &values {
                    out.insert(place(rule, value)?);
                }
            }
        }
        Ok(())
    }

    fn param(&self, index: usize) -> Result<Param<'a>, RouteError> {
        self.params.get(index).ok_or_else(|| {
            RouteError::new(
                "08P01",
                format!(
                    "the statement uses parameter ${} but the Bind message did not supply it",
                    index + 1
                ),
            )
        })
    }

    fn note(&mut self, index: usize, value: &KeyValue) {
        if self.explain {
            self.notes.push(format!("${} = {value}", index + 1));
        }
    }

    fn name(&self, id: ShardId) -> String {
        self.config
            .shards
            .get(id)
            .map_or_else(|| format!("shard {id}"), |s| s.name.clone())
    }

    fn names(&self, set: &ShardSet) -> String {
        let names: Vec<String> = set.iter().map(|id| self.name(id)).collect();
        match names.len() {
            1 => format!("shard {}", names.join("")),
            _ => format!("shards {}", names.join(", ")),
        }
    }
}

/// The shard of one key, with placement failures turned into client errors.
fn place(rule: &TableRule, key: &KeyValue) -> Result<ShardId, RouteError> {
    if let Sharding::Hash { shards, .. } = &rule.sharding {
        if shards.is_empty() {
            return Err(RouteError::new(
                "55000",
                format!(
                    "hash table {} has an empty shard list in shards.yaml; list its shards",
                    rule.name
                ),
            ));
        }
    }
    rule.shard_for(key)
        .map_err(|e| RouteError::new("22023", e.to_string()))
}

/// The error for an inserted row without a shard key.
pub(crate) fn null_key(column: &str) -> RouteError {
    RouteError::new(
        "23502",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sets_behave_like_sets() {
        let mut a = ShardSet::new();
        for id in [0, 3, 63, 64, 200] {
            a.insert(id);
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 3, 63, 64, 200]);
        assert_eq!(a.len(), 5);
        assert!(a.contains(200) && !a.contains(199));
        let mut b = ShardSet::single(3);
        b.insert(200);
        let mut i = a.clone();
        i.intersect_with(&b);
        assert_eq!(i, b);
        let mut small = ShardSet::single(3);
        small.intersect_with(&ShardSet::single(200));
        assert!(small.is_empty());
        let mut wide = ShardSet::single(200);
        wide.intersect_with(&ShardSet::single(3));
        assert!(wide.is_empty());
        assert_eq!(wide, ShardSet::new());
        let mut u = ShardSet::single(1);
        u.union_with(&a);
        assert_eq!(u.len(), 6);
        assert_eq!(ShardSet::single(7).only(), Some(7));
        assert_eq!(u.only(), None);
    }
}
