//! The FROM clause and names: classifying tables into occurrences, joins and the shard-key
//! links they imply, resolving column references to shard keys, and WITH queries.

use sqlparser::ast::{
    Cte, Expr, Ident, Join, JoinConstraint, JoinOperator, ObjectName, SetExpr, TableAlias,
    TableFactor, TableWithJoins,
};

use super::query::{
    name_parts, norm, Alt, Columns, CteBinding, Item, Occ, OccId, QueryOut, TableKind, Walker,
    MAX_OCCURRENCES,
};
use crate::config::Sharding;
use crate::plan::RouteError;

impl<'a> Walker<'a> {
    // -----------------------------------------------------------------------------------------
    // Tables
    // -----------------------------------------------------------------------------------------

    /// Classifies a table name.
    pub(super) fn classify(&self, parts: &[&Ident]) -> (TableKind, Option<String>) {
        let Some(last) = parts.last() else {
            return (TableKind::Unlisted, None);
        };
        let schema = parts
            .len()
            .checked_sub(2)
            .and_then(|i| parts.get(i))
            .map(|s| norm(s));
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
    pub(super) fn table_occurrence(
        &mut self,
        name: &'a ObjectName,
        alias: Option<&'a TableAlias>,
        mandatory: bool,
        alts: &mut [Alt],
    ) -> Option<OccId> {
        self.visit_name(name);
        if let Some(alias) = alias {
            self.visit_alias(alias);
        }
        let parts = name_parts(name);
        let last = parts.last().map(|i| norm(i)).unwrap_or_default();
        let (kind, rule) = self.classify(&parts);
        if self.occs.len() >= MAX_OCCURRENCES {
            self.fail(
                "54001",
                "statement too complex for shardline to route: too many table references",
            );
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
            if let Some(column) = rule
                .as_ref()
                .and_then(|r| self.config.tables.get(r))
                .and_then(|r| r.key_column())
            {
                columns.known.push((column.to_owned(), vec![id]));
            }
            if mandatory {
                for alt in alts.iter_mut() {
                    alt.anchors.push(id);
                }
            }
        }
        let alias_columns: Vec<String> = alias
            .map(|a| a.columns.iter().map(|c| norm(&c.name)).collect())
            .unwrap_or_default();
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
    pub(super) fn factor(&mut self, factor: &'a TableFactor, mandatory: bool, alts: &mut Vec<Alt>) {
        let alias = match factor {
            TableFactor::Derived { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
            TableFactor::Table {
                alias,
                args: Some(_),
                ..
            } => alias.as_ref(),
            _ => None,
        };
        if let Some(alias) = alias {
            self.visit_alias(alias);
        }
        match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if let Some(args) = args {
                    // A set-returning function: walk its arguments. (`ONLY (t)` parses this way.)
                    self.visit_name(name);
                    let mut only_table = None;
                    if name_parts(name).first().is_some_and(|p| {
                        p.quote_style.is_none() && p.value.eq_ignore_ascii_case("only")
                    }) {
                        if let [sqlparser::ast::FunctionArg::Unnamed(
                            sqlparser::ast::FunctionArgExpr::Expr(Expr::Identifier(t)),
                        )] = args.args.as_slice()
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
                        name: Some(alias.as_ref().map_or_else(
                            || name_parts(name).last().map(|i| norm(i)).unwrap_or_default(),
                            |a| norm(&a.name),
                        )),
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
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                self.check_next = true;
                let out = self.walk_query(subquery);
                let names: Vec<String> = alias
                    .as_ref()
                    .map(|a| a.columns.iter().map(|c| norm(&c.name)).collect())
                    .unwrap_or_default();
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
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                self.table_with_joins(table_with_joins, mandatory, alts);
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    self.walk_expr(e);
                }
                self.add_item(Item {
                    name: alias.as_ref().map(|a| norm(&a.name)),
                    table: None,
                    columns: Columns::open(),
                });
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
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
    pub(super) fn table_with_joins(
        &mut self,
        twj: &'a TableWithJoins,
        mandatory: bool,
        alts: &mut Vec<Alt>,
    ) {
        // A RIGHT or FULL join makes everything to its left nullable.
        let nullable_left_from = twj.joins.iter().rposition(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Right(_)
                    | JoinOperator::RightOuter(_)
                    | JoinOperator::FullOuter(_)
                    | JoinOperator::RightSemi(_)
                    | JoinOperator::RightAnti(_)
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
                    let formula = self.formula(
                        expr,
                        factor_mandatory,
                        true,
                        if factor_mandatory {
                            Some(&mut *alts)
                        } else {
                            None
                        },
                    );
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
                        .map(|s| {
                            s.items
                                .get(left_end..end)
                                .unwrap_or_default()
                                .iter()
                                .flat_map(|i| i.columns.known.clone())
                                .collect()
                        })
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
    pub(super) fn lineage_in_items(&self, from: usize, to: usize, column: &str) -> Vec<OccId> {
        let Some(scope) = self.scopes.last() else {
            return Vec::new();
        };
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
    pub(super) fn colocated(&self, a: OccId, b: OccId) -> bool {
        let rule = |o: OccId| {
            self.occs
                .get(o)
                .and_then(|o| o.rule.as_ref())
                .and_then(|r| self.config.tables.get(r))
        };
        let (Some(ra), Some(rb)) = (rule(a), rule(b)) else {
            return false;
        };
        match (&ra.sharding, &rb.sharding) {
            (
                Sharding::Hash {
                    key_type: ta,
                    shards: sa,
                    ..
                },
                Sharding::Hash {
                    key_type: tb,
                    shards: sb,
                    ..
                },
            ) => ta == tb && sa == sb,
            (
                Sharding::Range {
                    key_type: ta,
                    ranges: ra,
                    ..
                },
                Sharding::Range {
                    key_type: tb,
                    ranges: rb,
                    ..
                },
            ) => {
                ta == tb
                    && ra.len() == rb.len()
                    && ra
                        .iter()
                        .zip(rb)
                        .all(|(x, y)| x.shard == y.shard && x.from == y.from && x.to == y.to)
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
                    let mut found: Vec<&Item> = scope
                        .items
                        .iter()
                        .filter(|i| i.columns.get(column).is_some())
                        .collect();
                    match found.len() {
                        1 => {
                            return found
                                .pop()
                                .and_then(|i| i.columns.get(column))
                                .cloned()
                                .unwrap_or_default()
                        }
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

    pub(super) fn find_cte(&self, name: &str) -> Option<usize> {
        self.ctes.iter().rposition(|c| c.name == name)
    }

    /// Makes the CTEs of a WITH clause visible; data-modifying ones are walked right away.
    pub(super) fn bind_ctes(&mut self, ctes: &'a [Cte], recursive: bool) -> usize {
        let first = self.ctes.len();
        for cte in ctes {
            self.visit_alias(&cte.alias);
            let position = self.ctes.len();
            let binding = CteBinding {
                name: norm(&cte.alias.name),
                query: &cte.query,
                alias_columns: cte.alias.columns.iter().map(|c| norm(&c.name)).collect(),
                scope_depth: self.scopes.len(),
                visible: if recursive { position + 1 } else { position },
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
                let renamed = out.columns.rename(
                    &cte.alias
                        .columns
                        .iter()
                        .map(|c| norm(&c.name))
                        .collect::<Vec<_>>(),
                );
                self.dml_alts.push(out.alts);
                if let Some(b) = self.ctes.get_mut(position) {
                    b.dml_columns = Some(renamed);
                }
            }
        }
        if recursive {
            // WITH RECURSIVE: every query of the list may refer to any other (and itself).
            let end = self.ctes.len();
            for binding in self.ctes.get_mut(first..).unwrap_or_default() {
                binding.visible = end;
            }
        }
        first
    }

    /// Unbinds CTEs from `first` on; SELECT CTEs never referenced are still looked at, so the
    /// mention check knows their tables were seen (PostgreSQL does not run them).
    pub(super) fn unbind_ctes(&mut self, first: usize) {
        let unused: Vec<usize> = (first..self.ctes.len())
            .filter(|i| {
                self.ctes
                    .get(*i)
                    .is_some_and(|c| c.refs == 0 && c.dml_columns.is_none())
            })
            .collect();
        for index in unused {
            self.dry_walk_cte(index);
        }
        self.ctes.truncate(first);
    }

    /// Walks a CTE body only to look at it: identifiers count as seen and self-references are
    /// counted, but no facts are kept. Returns the number of self-references.
    fn dry_walk_cte(&mut self, index: usize) -> usize {
        let (occs, levels, links) = (self.occs.len(), self.levels.len(), self.links.len());
        let (error, single_only, self_refs) =
            (self.error.clone(), self.single_only.clone(), self.self_refs);
        self.walk_cte_body(index);
        let found = self.self_refs - self_refs;
        self.occs.truncate(occs);
        self.levels.truncate(levels);
        self.links.truncate(links);
        self.error = error;
        self.single_only = single_only;
        self.self_refs = self_refs;
        found
    }

    /// Walks a CTE body in the scope of its definition.
    pub(super) fn walk_cte_body(&mut self, index: usize) -> QueryOut {
        let Some(binding) = self.ctes.get(index).cloned() else {
            return QueryOut::default();
        };
        let visible = binding.visible;
        let saved_scopes = self
            .scopes
            .split_off(binding.scope_depth.min(self.scopes.len()));
        let saved_ctes = self.ctes.split_off(visible.min(self.ctes.len()));
        self.walking_ctes.push(index);
        self.check_next = true;
        let out = self.walk_query(binding.query);
        self.walking_ctes.pop();
        self.ctes.extend(saved_ctes);
        self.scopes.extend(saved_scopes);
        out
    }

    /// A FROM reference to a CTE.
    pub(super) fn cte_reference(
        &mut self,
        index: usize,
        alias: Option<&'a TableAlias>,
        mandatory: bool,
        alts: &mut Vec<Alt>,
    ) {
        let Some(binding) = self.ctes.get_mut(index) else {
            return;
        };
        binding.refs += 1;
        let binding = binding.clone();
        if let Some(alias) = alias {
            self.visit_alias(alias);
        }
        let exposed = alias.map_or_else(|| binding.name.clone(), |a| norm(&a.name));
        let alias_names: Vec<String> = alias
            .map(|a| a.columns.iter().map(|c| norm(&c.name)).collect())
            .unwrap_or_default();
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
        } else if self.walking_ctes.contains(&index) {
            // The recursive term's reference to its own CTE: rows of earlier iterations.
            self.self_refs += 1;
            Columns::open()
        } else if binding.recursive && self.dry_walk_cte(index) > 0 {
            // A recursive CTE: its rows depend on earlier iterations, which may come from any
            // shard, so its tables must stay on one shard (they are walked as nested).
            let out = self.walk_cte_body(index);
            self.nest(&out.alts);
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
}

/// The join type's innerness and its constraint.
fn join_kind(join: &Join) -> (bool, Option<&JoinConstraint>) {
    match &join.join_operator {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::StraightJoin(c) => (true, Some(c)),
        JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c) => (false, Some(c)),
        JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::RightAnti(c) => (false, Some(c)),
        JoinOperator::AsOf { constraint, .. } => (false, Some(constraint)),
        JoinOperator::CrossApply
        | JoinOperator::OuterApply
        | JoinOperator::ArrayJoin
        | JoinOperator::LeftArrayJoin
        | JoinOperator::InnerArrayJoin => (false, None),
    }
}
