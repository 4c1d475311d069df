//! Walking queries: WITH, set operations (`UNION ALL` branches become alternatives), SELECT,
//! VALUES, `TABLE t`, ORDER BY / LIMIT and the output columns of a projection. The facts they
//! produce are described in [`super::walker`].

use sqlparser::ast::{
    Expr, Ident, ObjectName, OrderBy, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier, Statement, Values,
};

use super::aggregate::Aggregation;
use super::walker::{name_parts, norm, Alt, Columns, Item, QueryOut, Walker, MAX_ALTERNATIVES};
use crate::sqlstate;

impl<'a> Walker<'a> {
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
                        self.fail(sqlstate::STATEMENT_TOO_COMPLEX, "statement too complex for shardline to route: too many UNION ALL branches; split it");
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
                self.fail(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardline does not support this kind of query",
                );
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
        let (_, columns) = self.add_occurrence(last.clone(), kind, rule, true, alts);
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
