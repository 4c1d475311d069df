//! Walks queries and DML statements and records the facts routing needs.
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

use sqlparser::ast::{
    Assignment, AssignmentTarget, Cte, Delete, Expr, FromTable, Ident, Insert, Join, JoinConstraint, JoinOperator,
    Merge, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, OrderBy, OrderByKind, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier, Statement, TableAlias,
    TableFactor, TableObject, TableWithJoins, Update, UpdateTableFromKind, Values,
};

use super::expr::KeyExpr;
use crate::config::{Config, Sharding};
use crate::plan::RouteError;

/// Index of an occurrence in [`Walker::occs`].
pub(super) type OccId = usize;
/// Index of a level in [`Walker::levels`].
pub(super) type LevelId = usize;

/// Most alternatives one statement may produce (cross products of `UNION ALL`s multiply).
const MAX_ALTERNATIVES: usize = 256;
/// Most table occurrences one statement may produce (CTEs are re-walked per reference).
const MAX_OCCURRENCES: usize = 10_000;

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
}

/// A condition on shard keys, over occurrences.
#[derive(Debug, Clone)]
pub(super) enum Formula {
    /// No information.
    True,
    /// The key of (each of) `occs` is one of `keys`. `insert` marks the rows of an INSERT,
    /// where a NULL key is an error rather than "no row".
    Atom { occs: Vec<OccId>, keys: Vec<KeyExpr>, insert: bool },
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

    fn add(&mut self, name: String, lineage: Vec<OccId>) {
        if let Some((_, existing)) = self.known.iter_mut().find(|(n, _)| *n == name) {
            existing.extend(lineage);
        } else {
            self.known.push((name, lineage));
        }
    }

    fn merge(&mut self, other: &Columns) {
        for (name, lineage) in &other.known {
            self.add(name.clone(), lineage.clone());
        }
        self.open |= other.open;
    }

    /// Applies a `AS t(a, b, …)` column alias list: positional renaming.
    fn rename(self, names: &[String]) -> Columns {
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
struct Item {
    /// Exposed name: the alias, or the table's unqualified name.
    name: Option<String>,
    /// The underlying table's unqualified name, when not aliased.
    table: Option<String>,
    columns: Columns,
}

/// The items of one level, for column resolution.
#[derive(Debug, Clone)]
struct ScopeLevel {
    level: LevelId,
    items: Vec<Item>,
}

/// A WITH query visible by name.
#[derive(Debug, Clone)]
struct CteBinding<'a> {
    name: String,
    query: &'a Query,
    alias_columns: Vec<String>,
    /// Scope depth at the definition: the body sees only those outer levels.
    scope_depth: usize,
    /// Position in the CTE stack: the body sees only earlier bindings (and itself if recursive).
    position: usize,
    recursive: bool,
    /// For data-modifying CTEs, walked once at the definition: the RETURNING columns.
    dml_columns: Option<Columns>,
    refs: usize,
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
    scopes: Vec<ScopeLevel>,
    ctes: Vec<CteBinding<'a>>,
    /// Indexes of CTE bindings whose bodies are being walked (to spot recursive references).
    walking_ctes: Vec<usize>,
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

    pub(super) fn visit_name(&mut self, name: &ObjectName) {
        for part in name_parts(name) {
            self.visit(part);
        }
    }

    fn new_level(&mut self) -> LevelId {
        self.levels.push(Level::default());
        self.levels.len() - 1
    }

    /// The level expressions are currently evaluated in.
    pub(super) fn current_level(&self) -> Option<LevelId> {
        self.scopes.last().map(|s| s.level)
    }

    fn push_scope(&mut self, level: LevelId) {
        self.scopes.push(ScopeLevel { level, items: Vec::new() });
    }

    fn pop_scope(&mut self) {
        self.scopes.pop();
    }

    fn add_item(&mut self, item: Item) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.items.push(item);
        }
    }

    fn items_len(&self) -> usize {
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
        let Some(parent) = self.current_level() else { return };
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
                "54001",
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
                out.push(alt);
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Tables
    // -----------------------------------------------------------------------------------------

    /// Classifies a table name.
    fn classify(&self, parts: &[&Ident]) -> (TableKind, Option<String>) {
        let Some(last) = parts.last() else {
            return (TableKind::Unlisted, None);
        };
        let schema = parts.len().checked_sub(2).and_then(|i| parts.get(i)).map(|s| norm(s));
        if matches!(schema.as_deref(), Some("pg_catalog" | "information_schema")) {
            return (TableKind::Catalog, None);
        }
        let key = last.value.to_ascii_lowercase();
        if let Some(rule) = self.config.tables.get(&key) {
            let kind = match rule.sharding {
                Sharding::Reference => TableKind::Reference,
                Sharding::Hash { .. } | Sharding::Range { .. } => TableKind::Sharded,
            };
            return (kind, Some(key));
        }
        if schema.is_none() && key.starts_with("pg_") {
            return (TableKind::Catalog, None);
        }
        (TableKind::Unlisted, None)
    }

    /// Registers an occurrence of a table in the current level and makes it visible.
    fn table_occurrence(
        &mut self,
        name: &'a ObjectName,
        alias: Option<&'a TableAlias>,
        mandatory: bool,
        alts: &mut [Alt],
    ) -> Option<OccId> {
        self.visit_name(name);
        let parts = name_parts(name);
        let last = parts.last().map(|i| norm(i)).unwrap_or_default();
        let (kind, rule) = self.classify(&parts);
        if self.occs.len() >= MAX_OCCURRENCES {
            self.fail("54001", "statement too complex for shardline to route: too many table references");
            return None;
        }
        let level = self.current_level().unwrap_or(0);
        let id = self.occs.len();
        self.occs.push(Occ {
            name: last.clone(),
            rule: rule.clone(),
            kind,
        });
        if let Some(l) = self.levels.get_mut(level) {
            l.occs.push(id);
        }
        let mut columns = Columns::open();
        if kind == TableKind::Sharded {
            if let Some(column) = rule.as_ref().and_then(|r| self.config.tables.get(r)).and_then(|r| r.key_column()) {
                columns.known.push((column.to_owned(), vec![id]));
            }
            if mandatory {
                for alt in alts.iter_mut() {
                    alt.anchors.push(id);
                }
            }
        }
        let alias_columns: Vec<String> = alias.map(|a| a.columns.iter().map(|c| norm(&c.name)).collect()).unwrap_or_default();
        if !alias_columns.is_empty() {
            // Renamed columns: we cannot tell which one is the key.
            columns = Columns::open();
        }
        self.add_item(Item {
            name: Some(alias.map_or(last.clone(), |a| norm(&a.name))),
            table: if alias.is_none() { Some(last) } else { None },
            columns,
        });
        Some(id)
    }

    /// Walks one FROM item. `mandatory` items bound the rows of the current alternatives.
    fn factor(&mut self, factor: &'a TableFactor, mandatory: bool, alts: &mut Vec<Alt>) {
        match factor {
            TableFactor::Table { name, alias, args, .. } => {
                if let Some(args) = args {
                    // A set-returning function: walk its arguments. (`ONLY (t)` parses this way.)
                    self.visit_name(name);
                    let mut only_table = None;
                    if name_parts(name).first().is_some_and(|p| p.quote_style.is_none() && p.value.eq_ignore_ascii_case("only")) {
                        if let [sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(Expr::Identifier(t)))] =
                            args.args.as_slice()
                        {
                            only_table = Some(t);
                        }
                    }
                    if let Some(t) = only_table {
                        self.fail(
                            "42601",
                            format!("shardline cannot read `ONLY ({})`; write `ONLY {}` without parentheses", t.value, t.value),
                        );
                        return;
                    }
                    for arg in &args.args {
                        self.function_arg(arg);
                    }
                    self.add_item(Item {
                        name: Some(alias.as_ref().map_or_else(|| name_parts(name).last().map(|i| norm(i)).unwrap_or_default(), |a| norm(&a.name))),
                        table: None,
                        columns: Columns::open(),
                    });
                    return;
                }
                let parts = name_parts(name);
                if let [single] = parts.as_slice() {
                    if let Some(index) = self.find_cte(&norm(single)) {
                        self.visit(single);
                        self.cte_reference(index, alias.as_ref(), mandatory, alts);
                        return;
                    }
                }
                self.table_occurrence(name, alias.as_ref(), mandatory, alts);
            }
            TableFactor::Derived { subquery, alias, .. } => {
                let out = self.walk_query(subquery);
                let names: Vec<String> = alias.as_ref().map(|a| a.columns.iter().map(|c| norm(&c.name)).collect()).unwrap_or_default();
                let columns = out.columns.clone().rename(&names);
                if mandatory {
                    let current = std::mem::take(alts);
                    *alts = self.cross(current, out.alts);
                } else {
                    self.nest(&out.alts);
                }
                self.add_item(Item {
                    name: alias.as_ref().map(|a| norm(&a.name)),
                    table: None,
                    columns,
                });
            }
            TableFactor::NestedJoin { table_with_joins, .. } => {
                self.table_with_joins(table_with_joins, mandatory, alts);
            }
            TableFactor::UNNEST { alias, array_exprs, .. } => {
                for e in array_exprs {
                    self.walk_expr(e);
                }
                self.add_item(Item {
                    name: alias.as_ref().map(|a| norm(&a.name)),
                    table: None,
                    columns: Columns::open(),
                });
            }
            TableFactor::Function { name, args, alias, .. } => {
                self.visit_name(name);
                for arg in args {
                    self.function_arg(arg);
                }
                self.add_item(Item {
                    name: alias.as_ref().map(|a| norm(&a.name)),
                    table: None,
                    columns: Columns::open(),
                });
            }
            TableFactor::TableFunction { expr, alias } => {
                self.walk_expr(expr);
                self.add_item(Item {
                    name: alias.as_ref().map(|a| norm(&a.name)),
                    table: None,
                    columns: Columns::open(),
                });
            }
            _ => {
                // Dialect-specific constructs PostgreSQL does not have. Nothing is visited, so a
                // configured table inside makes the mention check refuse the statement.
                self.add_item(Item {
                    name: None,
                    table: None,
                    columns: Columns::open(),
                });
            }
        }
    }

    /// Walks `a JOIN b ON … LEFT JOIN c …`.
    pub(super) fn table_with_joins(&mut self, twj: &'a TableWithJoins, mandatory: bool, alts: &mut Vec<Alt>) {
        // A RIGHT or FULL join makes everything to its left nullable.
        let nullable_left_from = twj.joins.iter().rposition(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) | JoinOperator::FullOuter(_) | JoinOperator::RightSemi(_) | JoinOperator::RightAnti(_)
            )
        });
        let first_item = self.items_len();
        let left_mandatory = mandatory && nullable_left_from.is_none();
        self.factor(&twj.relation, left_mandatory, alts);
        for (i, join) in twj.joins.iter().enumerate() {
            let later_right = nullable_left_from.is_some_and(|r| r > i);
            let (inner, constraint) = join_kind(join);
            let factor_mandatory = mandatory && inner && !later_right;
            let left_end = self.items_len();
            self.factor(&join.relation, factor_mandatory, alts);
            match constraint {
                Some(JoinConstraint::On(expr)) => {
                    // Only a mandatory inner join's ON filters rows; outer joins still link keys.
                    let formula = self.formula(expr, factor_mandatory, true, if factor_mandatory { Some(&mut *alts) } else { None });
                    if factor_mandatory {
                        self.add_formula(formula);
                    }
                }
                Some(JoinConstraint::Using(columns)) => {
                    for column in columns {
                        if let Some(ident) = name_parts(column).last() {
                            self.visit(ident);
                            let name = norm(ident);
                            let left = self.lineage_in_items(first_item, left_end, &name);
                            let right = self.lineage_in_items(left_end, self.items_len(), &name);
                            self.link(&left, &right);
                        }
                    }
                }
                Some(JoinConstraint::Natural) => {
                    // NATURAL joins every common column, so shard keys with the same name link.
                    let end = self.items_len();
                    let known: Vec<(String, Vec<OccId>)> = self
                        .scopes
                        .last()
                        .map(|s| s.items.get(left_end..end).unwrap_or_default().iter().flat_map(|i| i.columns.known.clone()).collect())
                        .unwrap_or_default();
                    for (name, right) in known {
                        let left = self.lineage_in_items(first_item, left_end, &name);
                        self.link(&left, &right);
                    }
                }
                Some(JoinConstraint::None) | None => {}
            }
        }
    }

    /// Key lineage of `column` among items `from..to` of the current level.
    fn lineage_in_items(&self, from: usize, to: usize, column: &str) -> Vec<OccId> {
        let Some(scope) = self.scopes.last() else { return Vec::new() };
        scope
            .items
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.columns.get(column))
            .flatten()
            .copied()
            .collect()
    }

    /// Links the shard keys of two sets of occurrences where their tables are co-located.
    pub(super) fn link(&mut self, left: &[OccId], right: &[OccId]) {
        for a in left {
            for b in right {
                if a != b && self.colocated(*a, *b) {
                    self.links.push((*a, *b));
                }
            }
        }
    }

    /// Whether two occurrences' tables are placed identically (same kind, key type, shard list or
    /// ranges), so equal keys are always on the same shard.
    fn colocated(&self, a: OccId, b: OccId) -> bool {
        let rule = |o: OccId| self.occs.get(o).and_then(|o| o.rule.as_ref()).and_then(|r| self.config.tables.get(r));
        let (Some(ra), Some(rb)) = (rule(a), rule(b)) else { return false };
        match (&ra.sharding, &rb.sharding) {
            (
                Sharding::Hash { key_type: ta, shards: sa, .. },
                Sharding::Hash { key_type: tb, shards: sb, .. },
            ) => ta == tb && sa == sb,
            (
                Sharding::Range { key_type: ta, ranges: ra, .. },
                Sharding::Range { key_type: tb, ranges: rb, .. },
            ) => {
                ta == tb
                    && ra.len() == rb.len()
                    && ra.iter().zip(rb).all(|(x, y)| x.shard == y.shard && x.from == y.from && x.to == y.to)
            }
            _ => false,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Column resolution
    // -----------------------------------------------------------------------------------------

    /// The sharded occurrences whose shard key a column reference denotes (empty when it is
    /// another column, or when it cannot be resolved with certainty).
    pub(super) fn resolve_column(&mut self, parts: &[Ident]) -> Vec<OccId> {
        for p in parts {
            self.visit(p);
        }
        let names: Vec<String> = parts.iter().map(norm).collect();
        match names.as_slice() {
            [column] => {
                for scope in self.scopes.iter().rev() {
                    let mut found: Vec<&Item> = scope.items.iter().filter(|i| i.columns.get(column).is_some()).collect();
                    match found.len() {
                        1 => return found.pop().and_then(|i| i.columns.get(column)).cloned().unwrap_or_default(),
                        0 if scope.items.iter().any(|i| i.columns.open) => return Vec::new(),
                        0 => continue,
                        _ => return Vec::new(),
                    }
                }
                Vec::new()
            }
            [.., qualifier, column] => {
                let table_form = names.len() > 2;
                for scope in self.scopes.iter().rev() {
                    let item = scope.items.iter().rev().find(|i| {
                        if table_form {
                            i.table.as_deref() == Some(qualifier.as_str())
                        } else {
                            i.name.as_deref() == Some(qualifier.as_str())
                        }
                    });
                    if let Some(item) = item {
                        return item.columns.get(column).cloned().unwrap_or_default();
                    }
                }
                Vec::new()
            }
            [] => Vec::new(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // CTEs
    // -----------------------------------------------------------------------------------------

    fn find_cte(&self, name: &str) -> Option<usize> {
        self.ctes.iter().rposition(|c| c.name == name)
    }

    /// Makes the CTEs of a WITH clause visible; data-modifying ones are walked right away.
    fn bind_ctes(&mut self, ctes: &'a [Cte], recursive: bool) -> usize {
        let first = self.ctes.len();
        for cte in ctes {
            self.visit(&cte.alias.name);
            let position = self.ctes.len();
            let binding = CteBinding {
                name: norm(&cte.alias.name),
                query: &cte.query,
                alias_columns: cte.alias.columns.iter().map(|c| norm(&c.name)).collect(),
                scope_depth: self.scopes.len(),
                position,
                recursive,
                dml_columns: None,
                refs: 0,
            };
            let dml = matches!(
                *cte.query.body,
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            );
            self.ctes.push(binding);
            if dml {
                self.writes = true;
                let out = self.walk_query(&cte.query);
                let renamed = out.columns.rename(&cte.alias.columns.iter().map(|c| norm(&c.name)).collect::<Vec<_>>());
                self.dml_alts.push(out.alts);
                if let Some(b) = self.ctes.get_mut(position) {
                    b.dml_columns = Some(renamed);
                }
            }
        }
        first
    }

    /// Unbinds CTEs from `first` on; SELECT CTEs never referenced are still looked at, so the
    /// mention check knows their tables were seen (PostgreSQL does not run them).
    fn unbind_ctes(&mut self, first: usize) {
        let unused: Vec<usize> = (first..self.ctes.len())
            .filter(|i| self.ctes.get(*i).is_some_and(|c| c.refs == 0 && c.dml_columns.is_none()))
            .collect();
        for index in unused {
            let (occs, levels, links) = (self.occs.len(), self.levels.len(), self.links.len());
            let error = self.error.clone();
            let single_only = self.single_only.clone();
            self.walk_cte_body(index);
            self.occs.truncate(occs);
            self.levels.truncate(levels);
            self.links.truncate(links);
            self.error = error;
            self.single_only = single_only;
        }
        self.ctes.truncate(first);
    }

    /// Walks a CTE body in the scope of its definition.
    fn walk_cte_body(&mut self, index: usize) -> QueryOut {
        let Some(binding) = self.ctes.get(index).cloned() else {
            return QueryOut::default();
        };
        let visible = if binding.recursive { binding.position + 1 } else { binding.position };
        let saved_scopes = self.scopes.split_off(binding.scope_depth.min(self.scopes.len()));
        let saved_ctes = self.ctes.split_off(visible.min(self.ctes.len()));
        self.walking_ctes.push(index);
        let out = self.walk_query(binding.query);
        self.walking_ctes.pop();
        self.ctes.extend(saved_ctes);
        self.scopes.extend(saved_scopes);
        out
    }

    /// A FROM reference to a CTE.
    fn cte_reference(&mut self, index: usize, alias: Option<&'a TableAlias>, mandatory: bool, alts: &mut Vec<Alt>) {
        let Some(binding) = self.ctes.get_mut(index) else { return };
        binding.refs += 1;
        let binding = binding.clone();
        let exposed = alias.map_or_else(|| binding.name.clone(), |a| norm(&a.name));
        let alias_names: Vec<String> = alias.map(|a| a.columns.iter().map(|c| norm(&c.name)).collect()).unwrap_or_default();
        let columns = if let Some(columns) = &binding.dml_columns {
            if binding.refs > 1 && self.single_only.is_none() {
                self.single_only = Some(RouteError::new(
                    "0A000",
                    format!(
                        "the data-modifying WITH query {} is used more than once, which shardline can only run on a single shard; restrict it by the shard key or split the statement",
                        binding.name
                    ),
                ));
            }
            columns.clone()
        } else if self.walking_ctes.contains(&index) || binding.recursive {
            // A recursive CTE: its rows depend on earlier iterations, which may come from any
            // shard, so its tables must stay on one shard (they are walked as nested).
            if !self.walking_ctes.contains(&index) {
                let out = self.walk_cte_body(index);
                self.nest(&out.alts);
            }
            Columns::open()
        } else {
            let out = self.walk_cte_body(index);
            let columns = out.columns.rename(&binding.alias_columns);
            if mandatory {
                let current = std::mem::take(alts);
                *alts = self.cross(current, out.alts);
            } else {
                self.nest(&out.alts);
            }
            columns
        };
        self.add_item(Item {
            name: Some(exposed),
            table: None,
            columns: columns.rename(&alias_names),
        });
    }

    // -----------------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------------

    /// Walks a query (WITH, body, ORDER BY, LIMIT).
    pub(super) fn walk_query(&mut self, query: &'a Query) -> QueryOut {
        let first_cte = match &query.with {
            Some(with) => self.bind_ctes(&with.cte_tables, with.recursive),
            None => self.ctes.len(),
        };
        if !query.locks.is_empty() {
            self.locks = true;
        }
        let out = match query.body.as_ref() {
            SetExpr::Select(select) => self.walk_select(select, query.order_by.as_ref(), Some(query)),
            body => {
                let mut out = self.walk_set_expr(body);
                // ORDER BY / LIMIT of a set operation: evaluated once per result, in a level of
                // their own that belongs to every alternative.
                if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
                    let level = self.new_level();
                    self.push_scope(level);
                    self.add_item(Item {
                        name: None,
                        table: None,
                        columns: out.columns.clone(),
                    });
                    self.order_and_limit(query.order_by.as_ref(), Some(query));
                    self.pop_scope();
                    for alt in &mut out.alts {
                        alt.levels.push(level);
                    }
                }
                out
            }
        };
        self.unbind_ctes(first_cte);
        out
    }

    fn order_and_limit(&mut self, order_by: Option<&'a OrderBy>, query: Option<&'a Query>) {
        if let Some(OrderBy { kind: OrderByKind::Expressions(exprs), .. }) = order_by {
            for e in exprs {
                self.walk_expr(&e.expr);
            }
        }
        if let Some(query) = query {
            if let Some(limit) = &query.limit_clause {
                match limit {
                    sqlparser::ast::LimitClause::LimitOffset { limit, offset, limit_by } => {
                        if let Some(l) = limit {
                            self.walk_expr(l);
                        }
                        if let Some(o) = offset {
                            self.walk_expr(&o.value);
                        }
                        for e in limit_by {
                            self.walk_expr(e);
                        }
                    }
                    sqlparser::ast::LimitClause::OffsetCommaLimit { offset, limit } => {
                        self.walk_expr(offset);
                        self.walk_expr(limit);
                    }
                }
            }
            if let Some(fetch) = &query.fetch {
                if let Some(q) = &fetch.quantity {
                    self.walk_expr(q);
                }
            }
        }
    }

    fn walk_set_expr(&mut self, body: &'a SetExpr) -> QueryOut {
        match body {
            SetExpr::Select(select) => self.walk_select(select, None, None),
            SetExpr::Query(query) => self.walk_query(query),
            SetExpr::SetOperation { left, op, set_quantifier, right } => {
                let l = self.walk_set_expr(left);
                let r = self.walk_set_expr(right);
                let mut columns = l.columns.clone();
                if !l.columns.open && !r.columns.open && l.columns.known.len() == r.columns.known.len() {
                    for (mine, theirs) in columns.known.iter_mut().zip(&r.columns.known) {
                        mine.1.extend(&theirs.1);
                    }
                }
                let union_all = matches!(op, SetOperator::Union) && matches!(set_quantifier, SetQuantifier::All);
                let alts = if union_all {
                    let mut alts = l.alts;
                    alts.extend(r.alts);
                    if alts.len() > MAX_ALTERNATIVES {
                        self.fail("54001", "statement too complex for shardline to route: too many UNION ALL branches; split it");
                    }
                    alts
                } else {
                    // UNION (distinct), INTERSECT, EXCEPT compare rows across both sides: treat
                    // them like a join, which must stay on one shard unless co-located.
                    self.cross(l.alts, r.alts)
                };
                QueryOut { columns, alts }
            }
            SetExpr::Values(values) => self.walk_values(values),
            SetExpr::Insert(Statement::Insert(insert)) => self.walk_insert(insert),
            SetExpr::Update(Statement::Update(update)) => self.walk_update(update),
            SetExpr::Delete(Statement::Delete(delete)) => self.walk_delete(delete),
            SetExpr::Merge(Statement::Merge(merge)) => self.walk_merge(merge),
            SetExpr::Table(table) => {
                let level = self.new_level();
                self.push_scope(level);
                let mut alts = vec![Alt {
                    anchors: Vec::new(),
                    levels: vec![level],
                }];
                if let Some(name) = &table.table_name {
                    let mut parts = Vec::new();
                    if let Some(schema) = &table.schema_name {
                        parts.push(Ident::new(schema.clone()));
                    }
                    parts.push(Ident::new(name.clone()));
                    let object = ObjectName::from(parts);
                    // The name is built here, so walk a leaked-free local copy by value.
                    self.table_by_value(object, &mut alts);
                }
                let columns = self.scopes.last().map(|s| s.items.iter().fold(Columns::default(), |mut c, i| {
                    c.merge(&i.columns);
                    c
                }));
                self.pop_scope();
                QueryOut {
                    columns: columns.unwrap_or_else(Columns::open),
                    alts,
                }
            }
            _ => {
                self.fail("0A000", "shardline does not support this kind of query");
                QueryOut::default()
            }
        }
    }

    /// `TABLE name` inside a query: like `SELECT * FROM name`.
    fn table_by_value(&mut self, name: ObjectName, alts: &mut [Alt]) {
        let parts: Vec<&Ident> = name_parts(&name);
        for p in &parts {
            self.visit(p);
        }
        let (kind, rule) = self.classify(&parts);
        let last = parts.last().map(|i| norm(i)).unwrap_or_default();
        let level = self.current_level().unwrap_or(0);
        let id = self.occs.len();
        self.occs.push(Occ {
            name: last.clone(),
            rule: rule.clone(),
            kind,
        });
        if let Some(l) = self.levels.get_mut(level) {
            l.occs.push(id);
        }
        let mut columns = Columns::open();
        if kind == TableKind::Sharded {
            if let Some(column) = rule.as_ref().and_then(|r| self.config.tables.get(r)).and_then(|r| r.key_column()) {
                columns.known.push((column.to_owned(), vec![id]));
            }
            for alt in alts.iter_mut() {
                alt.anchors.push(id);
            }
        }
        self.add_item(Item {
            name: Some(last.clone()),
            table: Some(last),
            columns,
        });
    }

    fn walk_values(&mut self, values: &'a Values) -> QueryOut {
        let level = self.new_level();
        self.push_scope(level);
        let mut width = 0;
        for row in &values.rows {
            width = width.max(row.len());
            for e in row.iter() {
                self.walk_expr(e);
            }
        }
        self.pop_scope();
        QueryOut {
            columns: Columns {
                known: (1..=width).map(|i| (format!("column{i}"), Vec::new())).collect(),
                open: false,
            },
            alts: vec![Alt {
                anchors: Vec::new(),
                levels: vec![level],
            }],
        }
    }

    /// Walks one SELECT. `order_by` and `query` carry the enclosing query's ORDER BY and LIMIT,
    /// which may refer to this SELECT's FROM items.
    fn walk_select(&mut self, select: &'a Select, order_by: Option<&'a OrderBy>, query: Option<&'a Query>) -> QueryOut {
        let level = self.new_level();
        self.push_scope(level);
        let mut alts = vec![Alt {
            anchors: Vec::new(),
            levels: vec![level],
        }];
        for twj in &select.from {
            self.table_with_joins(twj, true, &mut alts);
        }
        if let Some(selection) = &select.selection {
            let formula = self.formula(selection, true, true, Some(&mut alts));
            self.add_formula(formula);
        }
        let columns = self.projection(&select.projection);
        if select.into.is_some() {
            self.select_into = true;
        }
        if let Some(sqlparser::ast::Distinct::On(exprs)) = &select.distinct {
            for e in exprs {
                self.walk_expr(e);
            }
        }
        match &select.group_by {
            sqlparser::ast::GroupByExpr::Expressions(exprs, _) => {
                for e in exprs {
                    self.walk_expr(e);
                }
            }
            sqlparser::ast::GroupByExpr::All(_) => {}
        }
        if let Some(having) = &select.having {
            self.walk_expr(having);
        }
        if let Some(qualify) = &select.qualify {
            self.walk_expr(qualify);
        }
        for window in &select.named_window {
            if let sqlparser::ast::NamedWindowExpr::WindowSpec(spec) = &window.1 {
                self.window_spec(spec);
            }
        }
        self.order_and_limit(order_by, query);
        self.pop_scope();
        QueryOut { columns, alts }
    }

    /// Output columns of a projection (and walks its expressions).
    fn projection(&mut self, items: &'a [SelectItem]) -> Columns {
        let mut columns = Columns::default();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    self.walk_expr(expr);
                    let lineage = self.key_ref(expr);
                    match output_name(expr) {
                        Some(name) => columns.add(name, lineage),
                        None => columns.open = true,
                    }
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    self.walk_expr(expr);
                    let lineage = self.key_ref(expr);
                    columns.add(norm(alias), lineage);
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    self.walk_expr(expr);
                    for alias in aliases {
                        columns.add(norm(alias), Vec::new());
                    }
                }
                SelectItem::Wildcard(_) => {
                    let all = self.scopes.last().map(|s| s.items.clone()).unwrap_or_default();
                    for item in &all {
                        columns.merge(&item.columns);
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        self.visit_name(name);
                        let qualifier = name_parts(name).last().map(|i| norm(i));
                        let item = self
                            .scopes
                            .last()
                            .and_then(|s| s.items.iter().find(|i| i.name.is_some() && i.name == qualifier).cloned());
                        match item {
                            Some(item) => columns.merge(&item.columns),
                            None => columns.open = true,
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        self.walk_expr(e);
                        columns.open = true;
                    }
                },
            }
        }
        columns
    }

    // -----------------------------------------------------------------------------------------
    // DML
    // -----------------------------------------------------------------------------------------

    /// The target of a DML statement: registers the occurrence as an anchor.
    fn dml_target(&mut self, name: &'a ObjectName, alias: Option<&'a TableAlias>, alts: &mut [Alt]) -> Option<OccId> {
        let id = self.table_occurrence(name, alias, true, alts)?;
        if let Some(occ) = self.occs.get(id) {
            if occ.kind == TableKind::Reference && self.reference_write.is_none() {
                self.reference_write = Some(occ.name.clone());
            }
        }
        Some(id)
    }

    pub(super) fn walk_update(&mut self, update: &'a Update) -> QueryOut {
        self.writes = true;
        let level = self.new_level();
        self.push_scope(level);
        let mut alts = vec![Alt {
            anchors: Vec::new(),
            levels: vec![level],
        }];
        let target = match &update.table.relation {
            TableFactor::Table { name, alias, args: None, .. } => self.dml_target(name, alias.as_ref(), &mut alts),
            other => {
                self.factor(other, true, &mut alts);
                None
            }
        };
        for join in &update.table.joins {
            self.factor(&join.relation, true, &mut alts);
        }
        if let Some(from) = &update.from {
            let tables = match from {
                UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t) => t,
            };
            for twj in tables {
                self.table_with_joins(twj, true, &mut alts);
            }
        }
        if let Some(selection) = &update.selection {
            let formula = self.formula(selection, true, true, Some(&mut alts));
            self.add_formula(formula);
        }
        self.assignments(&update.assignments, target, None);
        let columns = match &update.returning {
            Some(items) => self.projection(items),
            None => Columns::default(),
        };
        self.pop_scope();
        QueryOut { columns, alts }
    }

    /// Checks SET targets for the shard key and walks the values. `excluded` is the alias of
    /// the proposed row in `ON CONFLICT DO UPDATE`, whose own key may be assigned back.
    fn assignments(&mut self, assignments: &'a [Assignment], target: Option<OccId>, excluded: Option<&str>) {
        let key_column = target
            .and_then(|t| self.occs.get(t))
            .filter(|o| o.kind == TableKind::Sharded)
            .and_then(|o| o.rule.as_ref())
            .and_then(|r| self.config.tables.get(r))
            .and_then(|r| r.key_column())
            .map(str::to_owned);
        for assignment in assignments {
            let (columns, values): (Vec<&ObjectName>, Vec<&Expr>) = match (&assignment.target, &assignment.value) {
                (AssignmentTarget::ColumnName(c), v) => (vec![c], vec![v]),
                (AssignmentTarget::Tuple(cs), Expr::Tuple(vs)) if cs.len() == vs.len() => (cs.iter().collect(), vs.iter().collect()),
                (AssignmentTarget::Tuple(cs), v) => (cs.iter().collect(), vec![v]),
            };
            self.walk_expr(&assignment.value);
            for (i, column) in columns.iter().enumerate() {
                self.visit_name(column);
                let Some(last) = name_parts(column).last().map(|i| norm(i)) else { continue };
                let (Some(key), Some(target)) = (&key_column, target) else { continue };
                if &last != key {
                    continue;
                }
                let value = if values.len() == columns.len() { values.get(i).copied() } else { None };
                self.key_assignment(target, key, value, excluded);
            }
        }
    }

    /// `SET key = value` on a sharded table: fine when the value is the row's own key (or the
    /// proposed row's key in ON CONFLICT); a literal or parameter is checked at routing time
    /// (the row must stay on its shard); anything else cannot be routed.
    fn key_assignment(&mut self, target: OccId, key: &str, value: Option<&'a Expr>, excluded: Option<&str>) {
        let table = self.occs.get(target).map(|o| o.name.clone()).unwrap_or_default();
        let refuse = |w: &mut Walker<'a>| {
            w.fail(
                "0A000",
                format!("changing the shard key {table}.{key} with UPDATE is not supported: the row would have to move to another shard; move the row by DELETE and INSERT"),
            );
        };
        let Some(value) = value else { return refuse(self) };
        if let Some(parts) = column_parts(value) {
            let names: Vec<String> = parts.iter().map(norm).collect();
            let same_column = names.last().map(String::as_str) == Some(key)
                && (names.len() == 1
                    || names.get(names.len() - 2).is_some_and(|q| Some(q.as_str()) == excluded || *q == table));
            if same_column {
                return;
            }
            return refuse(self);
        }
        match super::expr::key_value(value) {
            Some(expr) if excluded.is_none() => {
                if self.key_update.is_some() {
                    return refuse(self);
                }
                self.key_update = Some((target, expr));
            }
            _ => refuse(self),
        }
    }

    pub(super) fn walk_delete(&mut self, delete: &'a Delete) -> QueryOut {
        self.writes = true;
        let level = self.new_level();
        self.push_scope(level);
        let mut alts = vec![Alt {
            anchors: Vec::new(),
            levels: vec![level],
        }];
        let tables = match &delete.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
        };
        for twj in tables {
            match &twj.relation {
                TableFactor::Table { name, alias, args: None, .. } => {
                    self.dml_target(name, alias.as_ref(), &mut alts);
                }
                other => self.factor(other, true, &mut alts),
            }
            for join in &twj.joins {
                self.factor(&join.relation, true, &mut alts);
            }
        }
        for name in &delete.tables {
            self.visit_name(name);
        }
        if let Some(using) = &delete.using {
            for twj in using {
                self.table_with_joins(twj, true, &mut alts);
            }
        }
        if let Some(selection) = &delete.selection {
            let formula = self.formula(selection, true, true, Some(&mut alts));
            self.add_formula(formula);
        }
        let columns = match &delete.returning {
            Some(items) => self.projection(items),
            None => Columns::default(),
        };
        self.pop_scope();
        QueryOut { columns, alts }
    }

    pub(super) fn walk_insert(&mut self, insert: &'a Insert) -> QueryOut {
        self.writes = true;
        let level = self.new_level();
        self.push_scope(level);
        let mut alts = vec![Alt {
            anchors: Vec::new(),
            levels: vec![level],
        }];
        let alias = insert.table_alias.as_ref().map(|a| norm(&a.alias));
        let target = match &insert.table {
            TableObject::TableName(name) => {
                let id = self.dml_target(name, None, &mut alts);
                if let (Some(alias), Some(scope)) = (&alias, self.scopes.last_mut()) {
                    if let Some(item) = scope.items.last_mut() {
                        item.name = Some(alias.clone());
                        item.table = None;
                    }
                }
                id
            }
            TableObject::TableFunction(f) => {
                self.walk_function(f);
                None
            }
            TableObject::TableQuery(q) => {
                let out = self.walk_query(q);
                self.nest(&out.alts);
                None
            }
        };
        let target_occ = target.and_then(|t| self.occs.get(t).cloned());
        let sharded = target_occ.as_ref().filter(|o| o.kind == TableKind::Sharded);
        let key_column = sharded
            .and_then(|o| o.rule.as_ref())
            .and_then(|r| self.config.tables.get(r))
            .and_then(|r| r.key_column())
            .map(str::to_owned);
        let table_name = target_occ.as_ref().map(|o| o.name.clone()).unwrap_or_default();
        for c in &insert.columns {
            self.visit_name(c);
        }

        match &insert.source {
            Some(source) => {
                let rows = match source.body.as_ref() {
                    SetExpr::Values(values) if source.with.is_none() => Some(values),
                    _ => None,
                };
                match (rows, &key_column) {
                    (Some(values), Some(key)) => {
                        let position = insert
                            .columns
                            .iter()
                            .position(|c| name_parts(c).last().map(|i| norm(i)).as_deref() == Some(key.as_str()));
                        for row in &values.rows {
                            for e in row.iter() {
                                self.walk_expr(e);
                            }
                        }
                        match position {
                            None if insert.columns.is_empty() => self.fail(
                                "0A000",
                                format!("INSERT into sharded table {table_name} needs an explicit column list (INSERT INTO {table_name} ({key}, …) VALUES …) so shardline can find the shard key {key}"),
                            ),
                            None => self.fail(
                                "0A000",
                                format!("INSERT into sharded table {table_name} must set the shard key column {key}; shardline cannot route the row otherwise"),
                            ),
                            Some(position) => {
                                let mut keys = Vec::with_capacity(values.rows.len());
                                for row in &values.rows {
                                    match row.get(position).and_then(super::expr::key_value) {
                                        Some(k) => keys.push(k),
                                        None => {
                                            self.fail(
                                                "0A000",
                                                format!("the shard key {table_name}.{key} in an INSERT must be a literal or a $n parameter, not an expression (DEFAULT and function calls cannot be routed); compute the key in the application"),
                                            );
                                            break;
                                        }
                                    }
                                }
                                if values.rows.len() > 1 {
                                    self.single_only = Some(RouteError::new(
                                        "0A000",
                                        "multi-row INSERT whose rows belong to different shards is not supported yet; insert the rows separately",
                                    ));
                                }
                                if let Some(t) = target {
                                    self.add_formula(Formula::Atom {
                                        occs: vec![t],
                                        keys,
                                        insert: true,
                                    });
                                }
                            }
                        }
                    }
                    (_, Some(_)) => {
                        let out = self.walk_query(source);
                        self.nest(&out.alts);
                        self.fail(
                            "0A000",
                            format!("INSERT … SELECT into sharded table {table_name} is not supported yet; insert the rows with INSERT … VALUES"),
                        );
                    }
                    (_, None) => {
                        let out = self.walk_query(source);
                        alts = self.cross(alts, out.alts);
                    }
                }
            }
            None => {
                if let Some(key) = &key_column {
                    self.fail(
                        "0A000",
                        format!("INSERT into sharded table {table_name} must set the shard key column {key}; DEFAULT VALUES cannot be routed"),
                    );
                }
            }
        }

        if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
            if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                let level = self.new_level();
                self.push_scope(level);
                if let Some(occ) = &target_occ {
                    let mut columns = Columns::open();
                    if let Some(key) = &key_column {
                        columns.known.push((key.clone(), vec![target.unwrap_or(0)]));
                    }
                    self.add_item(Item {
                        name: Some(alias.clone().unwrap_or_else(|| occ.name.clone())),
                        table: Some(occ.name.clone()),
                        columns: columns.clone(),
                    });
                    self.add_item(Item {
                        name: Some("excluded".into()),
                        table: None,
                        columns,
                    });
                }
                let excluded = "excluded";
                self.assignments(&update.assignments, target, Some(excluded));
                if let Some(selection) = &update.selection {
                    self.walk_expr(selection);
                }
                self.pop_scope();
                if let Some(l) = self.levels.get_mut(level) {
                    l.nested_in = Some(alts.first().and_then(|a| a.levels.first().copied()).unwrap_or(level));
                }
            }
        }
        let columns = match &insert.returning {
            Some(items) => self.projection(items),
            None => Columns::default(),
        };
        self.pop_scope();
        QueryOut { columns, alts }
    }

    /// MERGE: the target is refused when sharded over several shards (key values of inserted
    /// rows come from the source and cannot be checked here yet).
    pub(super) fn walk_merge(&mut self, merge: &'a Merge) -> QueryOut {
        self.writes = true;
        let level = self.new_level();
        self.push_scope(level);
        let mut alts = vec![Alt {
            anchors: Vec::new(),
            levels: vec![level],
        }];
        let target = match &merge.table {
            TableFactor::Table { name, alias, args: None, .. } => self.dml_target(name, alias.as_ref(), &mut alts),
            other => {
                self.factor(other, true, &mut alts);
                None
            }
        };
        self.factor(&merge.source, true, &mut alts);
        let _links_only = self.formula(&merge.on, false, true, None);
        for clause in &merge.clauses {
            if let Some(p) = &clause.predicate {
                self.walk_expr(p);
            }
            match &clause.action {
                sqlparser::ast::MergeAction::Insert(insert) => {
                    for c in &insert.columns {
                        self.visit_name(c);
                    }
                    if let sqlparser::ast::MergeInsertKind::Values(values) = &insert.kind {
                        for row in &values.rows {
                            for e in row.iter() {
                                self.walk_expr(e);
                            }
                        }
                    }
                }
                sqlparser::ast::MergeAction::Update(update) => {
                    if let sqlparser::ast::MergeUpdateKind::Set(assignments) = &update.kind {
                        for a in assignments {
                            let columns: Vec<&ObjectName> = match &a.target {
                                AssignmentTarget::ColumnName(c) => vec![c],
                                AssignmentTarget::Tuple(cs) => cs.iter().collect(),
                            };
                            for c in columns {
                                self.visit_name(c);
                            }
                            self.walk_expr(&a.value);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(occ) = target.and_then(|t| self.occs.get(t)) {
            if occ.kind == TableKind::Sharded {
                self.single_only = Some(RouteError::new(
                    "0A000",
                    format!("MERGE into sharded table {} is not supported yet when it spans several shards; use INSERT … ON CONFLICT, UPDATE or DELETE", occ.name),
                ));
            }
        }
        self.pop_scope();
        QueryOut {
            columns: Columns::open(),
            alts,
        }
    }
}

/// The join type's innerness and its constraint.
fn join_kind(join: &Join) -> (bool, Option<&JoinConstraint>) {
    match &join.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) | JoinOperator::StraightJoin(c) => (true, Some(c)),
        JoinOperator::Semi(c) | JoinOperator::LeftSemi(c) | JoinOperator::Anti(c) | JoinOperator::LeftAnti(c) => (false, Some(c)),
        JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::RightAnti(c) => (false, Some(c)),
        JoinOperator::AsOf { constraint, .. } => (false, Some(constraint)),
        JoinOperator::CrossApply | JoinOperator::OuterApply | JoinOperator::ArrayJoin | JoinOperator::LeftArrayJoin | JoinOperator::InnerArrayJoin => {
            (false, None)
        }
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

/// The name PostgreSQL gives an output column without an alias, when we can tell.
fn output_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(i) => Some(norm(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(norm),
        Expr::Nested(inner) => output_name(inner),
        Expr::Cast { expr, .. } => output_name(expr),
        Expr::Function(f) => name_parts(&f.name).last().map(|i| norm(i)),
        _ => None,
    }
}
