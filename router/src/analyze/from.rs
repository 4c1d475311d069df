//! The FROM clause and names: classifying tables into occurrences, joins and the shard-key
//! links they imply, and resolving column references to shard keys. WITH queries are in `cte`.

use sqlparser::ast::{
    Expr, Ident, Join, JoinConstraint, JoinOperator, ObjectName, TableAlias, TableFactor,
    TableWithJoins,
};

use super::walker::{
    name_parts, norm, Alt, Columns, Item, Occ, OccId, TableKind, Walker, MAX_OCCURRENCES,
};
use crate::config::Sharding;
use crate::sqlstate;

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
                sqlstate::STATEMENT_TOO_COMPLEX,
                "statement too complex for shardline to route: too many table references",
            );
            return None;
        }
        let (id, mut columns) = self.add_occurrence(last.clone(), kind, rule, mandatory, alts);
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

    /// Records an occurrence of a classified table in the current level; returns its id and the
    /// columns it exposes (its shard key, for a sharded table). A sharded occurrence becomes an
    /// anchor of every alternative in `alts` when `mandatory` (its rows bound theirs).
    pub(super) fn add_occurrence(
        &mut self,
        name: String,
        kind: TableKind,
        rule: Option<String>,
        mandatory: bool,
        alts: &mut [Alt],
    ) -> (OccId, Columns) {
        let level = self.current_level().unwrap_or(0);
        let id = self.occs.len();
        self.occs.push(Occ {
            name,
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
        (id, columns)
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
                            sqlstate::SYNTAX_ERROR,
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
    /// ranges, same directory), so equal keys are always on the same shard.
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
        if ra.directory != rb.directory {
            return false;
        }
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
