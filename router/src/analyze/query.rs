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
    Expr, Ident, ObjectName, ObjectNamePart, OrderBy, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier, Statement, TableAlias,
    Values,
};

use super::expr::KeyExpr;
use crate::config::Config;
use crate::plan::RouteError;

/// Index of an occurrence in [`Walker::occs`].
pub(super) type OccId = usize;
/// Index of a level in [`Walker::levels`].
pub(super) type LevelId = usize;

/// Most alternatives one statement may produce (cross products of `UNION ALL`s multiply).
const MAX_ALTERNATIVES: usize = 256;
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

/// What a SELECT list computes, collected while walking its expressions.
#[derive(Debug, Default)]
struct Aggregation<'a> {
    /// An aggregate function call (count, sum, ...).
    aggregate: bool,
    /// Window specifications of window function calls.
    windows: Vec<&'a sqlparser::ast::WindowSpec>,
    /// A window function referring to a named window.
    named_window: bool,
}

/// Aggregate functions of PostgreSQL, by name (calls with FILTER or WITHIN GROUP count too).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_objectagg",
    "json_arrayagg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

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
    aggregations: Vec<Aggregation<'a>>,
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
                alt.single |= r.single;
                out.push(alt);
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------------

    /// Walks a query (WITH, body, ORDER BY, LIMIT).
    pub(super) fn walk_query(&mut self, query: &'a Query) -> QueryOut {
        let check = std::mem::take(&mut self.check_next);
        let first_cte = match &query.with {
            Some(with) => self.bind_ctes(&with.cte_tables, with.recursive),
            None => self.ctes.len(),
        };
        if !query.locks.is_empty() {
            self.locks = true;
        }
        let out = match query.body.as_ref() {
            SetExpr::Select(select) => {
                self.walk_select(select, query.order_by.as_ref(), Some(query), check)
            }
            body => {
                let mut out = self.walk_set_expr(body, check);
                if check && (query.limit_clause.is_some() || query.fetch.is_some()) {
                    for alt in &mut out.alts {
                        alt.single |= !alt.anchors.is_empty();
                    }
                }
                // ORDER BY / LIMIT of a set operation: evaluated once per result, in a level of
                // their own that belongs to every alternative.
                if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some()
                {
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

    pub(super) fn order_and_limit(
        &mut self,
        order_by: Option<&'a OrderBy>,
        query: Option<&'a Query>,
    ) {
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(exprs),
            ..
        }) = order_by
        {
            for e in exprs {
                self.walk_expr(&e.expr);
            }
        }
        if let Some(query) = query {
            if let Some(limit) = &query.limit_clause {
                match limit {
                    sqlparser::ast::LimitClause::LimitOffset {
                        limit,
                        offset,
                        limit_by,
                    } => {
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

    /// Walks a query body. `check`: its rows are combined by an outer query (see
    /// [`Walker::check_next`]); branches of set operations always are.
    pub(super) fn walk_set_expr(&mut self, body: &'a SetExpr, check: bool) -> QueryOut {
        match body {
            SetExpr::Select(select) => self.walk_select(select, None, None, check),
            SetExpr::Query(query) => {
                self.check_next = check;
                self.walk_query(query)
            }
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right,
            } => {
                let l = self.walk_set_expr(left, true);
                let r = self.walk_set_expr(right, true);
                let mut columns = l.columns.clone();
                if !l.columns.open
                    && !r.columns.open
                    && l.columns.known.len() == r.columns.known.len()
                {
                    for (mine, theirs) in columns.known.iter_mut().zip(&r.columns.known) {
                        mine.1.extend(&theirs.1);
                    }
                }
                let union_all = matches!(op, SetOperator::Union)
                    && matches!(set_quantifier, SetQuantifier::All);
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
                let mut alts = vec![Alt::at(level)];
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
                let columns = self.scopes.last().map(|s| {
                    s.items.iter().fold(Columns::default(), |mut c, i| {
                        c.merge(&i.columns);
                        c
                    })
                });
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
    pub(super) fn table_by_value(&mut self, name: ObjectName, alts: &mut [Alt]) {
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
            if let Some(column) = rule
                .as_ref()
                .and_then(|r| self.config.tables.get(r))
                .and_then(|r| r.key_column())
            {
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

    pub(super) fn walk_values(&mut self, values: &'a Values) -> QueryOut {
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
                known: (1..=width)
                    .map(|i| (format!("column{i}"), Vec::new()))
                    .collect(),
                open: false,
            },
            alts: vec![Alt::at(level)],
        }
    }

    /// Walks one SELECT. `order_by` and `query` carry the enclosing query's ORDER BY and LIMIT,
    /// which may refer to this SELECT's FROM items.
    pub(super) fn walk_select(
        &mut self,
        select: &'a Select,
        order_by: Option<&'a OrderBy>,
        query: Option<&'a Query>,
        check: bool,
    ) -> QueryOut {
        let (occs_before, links_before) = (self.occs.len(), self.links.len());
        self.aggregations.push(Aggregation::default());
        let level = self.new_level();
        self.push_scope(level);
        let mut alts = vec![Alt::at(level)];
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
        let aggregation = self.aggregations.pop().unwrap_or_default();
        if check
            && !self.rows_stay_on_their_shard(
                select,
                query,
                &aggregation,
                &columns,
                &alts,
                occs_before,
                links_before,
            )
        {
            for alt in &mut alts {
                alt.single = true;
            }
        }
        self.pop_scope();
        QueryOut { columns, alts }
    }

    /// Records a function call of the SELECT list being walked.
    pub(super) fn note_function(&mut self, f: &'a sqlparser::ast::Function) {
        let Some(current) = self.aggregations.last_mut() else {
            return;
        };
        match &f.over {
            Some(sqlparser::ast::WindowType::WindowSpec(spec)) => current.windows.push(spec),
            Some(sqlparser::ast::WindowType::NamedWindow(_)) => current.named_window = true,
            None => {
                let name = name_parts(&f.name)
                    .last()
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default();
                if AGGREGATES.contains(&name.as_str())
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                {
                    current.aggregate = true;
                }
            }
        }
    }

    /// Whether a SELECT whose rows an outer query combines computes each row from one shard
    /// key's rows only: no aggregation, DISTINCT, window or LIMIT across keys. Grouping or
    /// partitioning by the shard key, or correlation to the outer query on the key, keeps rows
    /// local; the proxy merges aggregation only at the top level.
    #[allow(clippy::too_many_arguments)]
    fn rows_stay_on_their_shard(
        &mut self,
        select: &'a Select,
        query: Option<&'a Query>,
        aggregation: &Aggregation<'a>,
        columns: &Columns,
        alts: &[Alt],
        occs_before: usize,
        links_before: usize,
    ) -> bool {
        let anchors: HashSet<OccId> = alts
            .iter()
            .flat_map(|a| a.anchors.iter().copied())
            .collect();
        if anchors.is_empty() {
            return true;
        }
        let limited = query.is_some_and(|q| q.limit_clause.is_some() || q.fetch.is_some());
        let grouped = match &select.group_by {
            sqlparser::ast::GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
            sqlparser::ast::GroupByExpr::All(_) => true,
        };
        let distinct = matches!(
            select.distinct,
            Some(sqlparser::ast::Distinct::Distinct | sqlparser::ast::Distinct::On(_))
        );
        if !(limited
            || grouped
            || distinct
            || aggregation.aggregate
            || aggregation.named_window
            || !aggregation.windows.is_empty())
        {
            return true;
        }
        // Correlated on the shard key: computed once per outer key, on that key's shard.
        let correlated = self
            .links
            .get(links_before..)
            .unwrap_or_default()
            .iter()
            .any(|(a, b)| {
                (anchors.contains(a) && *b < occs_before)
                    || (anchors.contains(b) && *a < occs_before)
            });
        if correlated {
            return true;
        }
        if limited || aggregation.named_window {
            return false;
        }
        let output_has_key = columns
            .known
            .iter()
            .any(|(_, lineage)| lineage.iter().any(|o| anchors.contains(o)));
        let keyed = |w: &mut Walker<'a>, exprs: &'a [Expr]| {
            exprs
                .iter()
                .any(|e| w.key_ref(e).iter().any(|o| anchors.contains(o)))
        };
        if grouped {
            let by_key = match &select.group_by {
                sqlparser::ast::GroupByExpr::Expressions(exprs, _) => keyed(self, exprs),
                sqlparser::ast::GroupByExpr::All(_) => output_has_key,
            };
            if !by_key {
                return false;
            }
        } else if aggregation.aggregate {
            return false;
        }
        match &select.distinct {
            Some(sqlparser::ast::Distinct::Distinct) if !output_has_key => return false,
            Some(sqlparser::ast::Distinct::On(exprs)) if !keyed(self, exprs) => return false,
            _ => {}
        }
        let windows = aggregation.windows.clone();
        windows.iter().all(|spec| keyed(self, &spec.partition_by))
    }

    /// Output columns of a projection (and walks its expressions).
    pub(super) fn projection(&mut self, items: &'a [SelectItem]) -> Columns {
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
                    self.visit(alias);
                    self.walk_expr(expr);
                    let lineage = self.key_ref(expr);
                    columns.add(norm(alias), lineage);
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    self.walk_expr(expr);
                    for alias in aliases {
                        self.visit(alias);
                        columns.add(norm(alias), Vec::new());
                    }
                }
                SelectItem::Wildcard(_) => {
                    let all = self
                        .scopes
                        .last()
                        .map(|s| s.items.clone())
                        .unwrap_or_default();
                    for item in &all {
                        columns.merge(&item.columns);
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        self.visit_name(name);
                        let qualifier = name_parts(name).last().map(|i| norm(i));
                        let item = self.scopes.last().and_then(|s| {
                            s.items
                                .iter()
                                .find(|i| i.name.is_some() && i.name == qualifier)
                                .cloned()
                        });
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
