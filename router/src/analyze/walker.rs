//! The facts routing needs about a statement, and the [`Walker`] that collects them while the
//! other files of `analyze` walk queries (`query`, `aggregate`), FROM items (`from`, `cte`),
//! expressions (`expr`, `value`, `visit`) and DML (`dml`).
//!
//! The model, in short:
//!
//! - Every reference to a table in FROM/JOIN/UPDATE/INSERT… is an *occurrence*, classified as
//!   sharded, reference, unlisted (not in shards.yaml: lives on the default shard) or catalog.
//! - Every SELECT (or DML statement, or VALUES list) is a *level* with its own scope; the
//!   conjunctive conditions of its WHERE clause and inner-join ON clauses are recorded as
//!   *formulas* over occurrences (`key ∈ {values}`, AND, OR).
//! - Equalities between shard keys of co-located tables (`u.id = o.user_id`, `USING (id)`,
//!   `id IN (SELECT user_id …)`, correlated `o.user_id = u.id`) are *links*. Linked occurrences
//!   form an equivalence class: in every row that matters they hold the same key, so their rows
//!   live on the same shard and any key restriction on one restricts them all.
//! - An *alternative* is one source of result rows (a branch of `UNION ALL`): its *anchors* are
//!   the sharded occurrences every row of it is built from (mandatory FROM items, not the
//!   nullable side of an outer join, not scalar subqueries), and its levels are the ones whose
//!   formulas filter those rows. Occurrences in other levels (subqueries, outer-join sides) are
//!   *nested*: they are read while producing the alternative's rows but do not bound them.
//!
//! `compile` turns this into a [`crate::plan::Keyed`] target: per alternative, the anchored
//! classes give the shards where rows come from (they must agree when several classes are
//! joined), and nested occurrences that are not linked to an anchor must fit on one shard.

use std::collections::HashSet;

use sqlparser::ast::{Expr, Ident, ObjectName, ObjectNamePart, Query, TableAlias};

use super::aggregate::Aggregation;
use super::value::KeyExpr;
use crate::config::Config;
use crate::plan::RouteError;
use crate::sqlstate;

/// Index of an occurrence in [`Walker::occs`].
pub(super) type OccId = usize;
/// Index of a level in [`Walker::levels`].
pub(super) type LevelId = usize;

/// Most alternatives one statement may produce (cross products of `UNION ALL`s multiply).
pub(super) const MAX_ALTERNATIVES: usize = 256;
/// Most table occurrences one statement may produce (CTEs are re-walked per reference).
pub(super) const MAX_OCCURRENCES: usize = 10_000;

/// How a table is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TableKind {
    /// Split by key (hash or range).
    Sharded,
    /// A copy on every shard.
    Reference,
    /// Not in shards.yaml: lives on the default shard.
    Unlisted,
    /// `pg_catalog`, `information_schema`, `pg_*`: present on every shard.
    Catalog,
}

/// One reference to a table.
#[derive(Debug, Clone)]
pub(super) struct Occ {
    /// Table name as written (unqualified).
    pub name: String,
    /// Config key of the table's rule, for sharded and reference tables.
    pub rule: Option<String>,
    pub kind: TableKind,
}

/// One SELECT / DML / VALUES scope.
#[derive(Debug, Clone, Default)]
pub(super) struct Level {
    /// Conjunctive filters of this level (WHERE, inner-join ON).
    pub formulas: Vec<Formula>,
    /// The level this one is evaluated inside of, when it does not bound the rows of any
    /// alternative itself (subqueries in expressions, nullable derived tables).
    pub nested_in: Option<LevelId>,
    pub occs: Vec<OccId>,
}

/// One source of result rows.
#[derive(Debug, Clone, Default)]
pub(super) struct Alt {
    pub anchors: Vec<OccId>,
    pub levels: Vec<LevelId>,
    /// The rows are aggregated, de-duplicated or limited inside a subquery across shard keys,
    /// which only works when they all come from one shard.
    pub single: bool,
}

impl Alt {
    /// An alternative with no anchors yet, filtered by `level`.
    pub(super) fn at(level: LevelId) -> Alt {
        Alt {
            anchors: Vec::new(),
            levels: vec![level],
            single: false,
        }
    }
}

/// A condition on shard keys, over occurrences.
#[derive(Debug, Clone)]
pub(super) enum Formula {
    /// No information.
    True,
    /// The key of (each of) `occs` is one of `keys`. `insert` marks the rows of an INSERT,
    /// where a NULL key is an error rather than "no row".
    Atom {
        occs: Vec<OccId>,
        keys: Vec<KeyExpr>,
        insert: bool,
    },
    And(Vec<Formula>),
    Or(Vec<Formula>),
}

/// The output columns of a FROM item or query, as far as routing cares.
#[derive(Debug, Clone, Default)]
pub(super) struct Columns {
    /// Column names known to exist, each with the sharded occurrences whose shard key it
    /// carries (empty for other columns).
    pub known: Vec<(String, Vec<OccId>)>,
    /// True when there may be other columns not listed.
    pub open: bool,
}

impl Columns {
    pub(super) fn open() -> Columns {
        Columns {
            known: Vec::new(),
            open: true,
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Vec<OccId>> {
        self.known.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }

    pub(super) fn add(&mut self, name: String, lineage: Vec<OccId>) {
        if let Some((_, existing)) = self.known.iter_mut().find(|(n, _)| *n == name) {
            existing.extend(lineage);
        } else {
            self.known.push((name, lineage));
        }
    }

    pub(super) fn merge(&mut self, other: &Columns) {
        for (name, lineage) in &other.known {
            self.add(name.clone(), lineage.clone());
        }
        self.open |= other.open;
    }

    /// Applies a `AS t(a, b, …)` column alias list: positional renaming.
    pub(super) fn rename(self, names: &[String]) -> Columns {
        if names.is_empty() {
            return self;
        }
        if self.open {
            // Positions unknown: only the new names are known, with no lineage.
            return Columns {
                known: names.iter().map(|n| (n.clone(), Vec::new())).collect(),
                open: true,
            };
        }
        let mut known: Vec<(String, Vec<OccId>)> = Vec::new();
        for (i, (name, lineage)) in self.known.into_iter().enumerate() {
            match names.get(i) {
                Some(new) => known.push((new.clone(), lineage)),
                None => known.push((name, lineage)),
            }
        }
        Columns { known, open: false }
    }
}

/// What walking a query yields.
#[derive(Debug, Clone, Default)]
pub(super) struct QueryOut {
    pub columns: Columns,
    pub alts: Vec<Alt>,
}

/// A FROM item visible to column references.
#[derive(Debug, Clone)]
pub(super) struct Item {
    /// Exposed name: the alias, or the table's unqualified name.
    pub name: Option<String>,
    /// The underlying table's unqualified name, when not aliased.
    pub table: Option<String>,
    pub columns: Columns,
}

/// The items of one level, for column resolution.
#[derive(Debug, Clone)]
pub(super) struct ScopeLevel {
    pub level: LevelId,
    pub items: Vec<Item>,
}

/// A WITH query visible by name.
#[derive(Debug, Clone)]
pub(super) struct CteBinding<'a> {
    pub name: String,
    pub query: &'a Query,
    pub alias_columns: Vec<String>,
    /// Scope depth at the definition: the body sees only those outer levels.
    pub scope_depth: usize,
    /// How many bindings of the CTE stack the body sees: earlier ones, or with RECURSIVE the
    /// whole list (itself included).
    pub visible: usize,
    pub recursive: bool,
    /// For data-modifying CTEs, walked once at the definition: the RETURNING columns.
    pub dml_columns: Option<Columns>,
    pub refs: usize,
}

/// The analysis state of one statement.
pub(super) struct Walker<'a> {
    pub config: &'a Config,
    pub occs: Vec<Occ>,
    pub levels: Vec<Level>,
    pub links: Vec<(OccId, OccId)>,
    /// Alternatives of data-modifying CTEs, joined with the statement's own.
    pub dml_alts: Vec<Vec<Alt>>,
    /// The first problem that makes the statement unroutable.
    pub error: Option<RouteError>,
    /// Configured table names seen as identifiers somewhere the walker looked.
    pub visited: HashSet<String>,
    /// The statement modifies data (DML anywhere, including in WITH).
    pub writes: bool,
    /// `FOR UPDATE/SHARE`.
    pub locks: bool,
    /// `SELECT … INTO new_table`.
    pub select_into: bool,
    /// `UPDATE … SET key = value`.
    pub key_update: Option<(OccId, KeyExpr)>,
    /// The statement may only run on one shard; the error otherwise.
    pub single_only: Option<RouteError>,
    /// The statement writes to this reference table (so must run on every shard).
    pub reference_write: Option<String>,
    pub(super) scopes: Vec<ScopeLevel>,
    pub(super) ctes: Vec<CteBinding<'a>>,
    /// Indexes of CTE bindings whose bodies are being walked (to spot recursive references).
    pub(super) walking_ctes: Vec<usize>,
    /// Set just before walking a query whose rows are combined by an outer query (derived
    /// table, CTE, IN subquery, COPY): its aggregation must not span shards.
    pub check_next: bool,
    /// Aggregation seen in the SELECT lists being walked, innermost last.
    pub(super) aggregations: Vec<Aggregation<'a>>,
    /// References of CTEs to themselves seen so far (recursive CTEs).
    pub(super) self_refs: usize,
}

/// Normalises an identifier as PostgreSQL does: unquoted names fold to lower case.
pub(super) fn norm(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// The identifiers of a dotted name (function-call parts are skipped).
pub(super) fn name_parts(name: &ObjectName) -> Vec<&Ident> {
    name.0.iter().filter_map(ObjectNamePart::as_ident).collect()
}

impl<'a> Walker<'a> {
    pub(super) fn new(config: &'a Config) -> Walker<'a> {
        Walker {
            config,
            occs: Vec::new(),
            levels: Vec::new(),
            links: Vec::new(),
            dml_alts: Vec::new(),
            error: None,
            visited: HashSet::new(),
            writes: false,
            locks: false,
            select_into: false,
            key_update: None,
            single_only: None,
            reference_write: None,
            scopes: Vec::new(),
            ctes: Vec::new(),
            walking_ctes: Vec::new(),
            check_next: false,
            aggregations: Vec::new(),
            self_refs: 0,
        }
    }

    /// Records the first routing error.
    pub(super) fn fail(&mut self, sqlstate: &'static str, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(RouteError::new(sqlstate, message));
        }
    }

    /// Marks an identifier as looked at, for the mention check.
    pub(super) fn visit(&mut self, ident: &Ident) {
        let key = ident.value.to_ascii_lowercase();
        if self.config.tables.contains_key(&key) {
            self.visited.insert(key);
        }
    }

    /// Marks an alias and its column names as looked at.
    pub(super) fn visit_alias(&mut self, alias: &TableAlias) {
        self.visit(&alias.name);
        for column in &alias.columns {
            self.visit(&column.name);
        }
    }

    pub(super) fn visit_name(&mut self, name: &ObjectName) {
        for part in name_parts(name) {
            self.visit(part);
        }
    }

    pub(super) fn new_level(&mut self) -> LevelId {
        self.levels.push(Level::default());
        self.levels.len() - 1
    }

    /// The level expressions are currently evaluated in.
    pub(super) fn current_level(&self) -> Option<LevelId> {
        self.scopes.last().map(|s| s.level)
    }

    pub(super) fn push_scope(&mut self, level: LevelId) {
        self.scopes.push(ScopeLevel {
            level,
            items: Vec::new(),
        });
    }

    pub(super) fn pop_scope(&mut self) {
        self.scopes.pop();
    }

    pub(super) fn add_item(&mut self, item: Item) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.items.push(item);
        }
    }

    /// Gives the last FROM item an alias (`INSERT INTO t AS alias`).
    pub(super) fn rename_last_item(&mut self, alias: &str) {
        if let Some(item) = self.scopes.last_mut().and_then(|s| s.items.last_mut()) {
            item.name = Some(alias.to_owned());
            item.table = None;
        }
    }

    pub(super) fn items_len(&self) -> usize {
        self.scopes.last().map_or(0, |s| s.items.len())
    }

    /// Adds a formula to the current level.
    pub(super) fn add_formula(&mut self, formula: Formula) {
        if let Some(level) = self.current_level() {
            if let Some(l) = self.levels.get_mut(level) {
                l.formulas.push(formula);
            }
        }
    }

    /// Records that the levels of `alts` are evaluated inside the current level (their rows do
    /// not bound the current alternative).
    pub(super) fn nest(&mut self, alts: &[Alt]) {
        let Some(parent) = self.current_level() else {
            return;
        };
        for alt in alts {
            for level in &alt.levels {
                if *level != parent {
                    if let Some(l) = self.levels.get_mut(*level) {
                        if l.nested_in.is_none() {
                            l.nested_in = Some(parent);
                        }
                    }
                }
            }
        }
    }

    /// Every combination of one alternative from each side (a join of two row sources).
    pub(super) fn cross(&mut self, left: Vec<Alt>, right: Vec<Alt>) -> Vec<Alt> {
        if right.is_empty() {
            return left;
        }
        if left.len().saturating_mul(right.len()) > MAX_ALTERNATIVES {
            self.fail(
                sqlstate::STATEMENT_TOO_COMPLEX,
                "statement too complex for shardline to route: too many UNION ALL combinations; split it into simpler statements",
            );
            return left;
        }
        let mut out = Vec::with_capacity(left.len() * right.len());
        for l in &left {
            for r in &right {
                let mut alt = l.clone();
                alt.anchors.extend(&r.anchors);
                alt.levels.extend(&r.levels);
                alt.single |= r.single;
                out.push(alt);
            }
        }
        out
    }
}

/// The identifiers of a plain column reference.
pub(super) fn column_parts(expr: &Expr) -> Option<Vec<Ident>> {
    match expr {
        Expr::Identifier(i) => Some(vec![i.clone()]),
        Expr::CompoundIdentifier(parts) => Some(parts.clone()),
        Expr::Nested(inner) => column_parts(inner),
        _ => None,
    }
}
