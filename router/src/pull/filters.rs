//! Which rows of a pulled table the pull-up needs: the `WHERE` conditions of a plain
//! `SELECT` that read one table's own columns through operators and constants only, pushed to
//! that table's scan on each shard (see the parent module's documentation for why dropping
//! rows that fail them cannot change the answer).

use std::collections::BTreeMap;

use sqlparser::ast::{
    BinaryOperator, Expr, JoinOperator, ObjectNamePart, Query, SetExpr, Statement, TableFactor,
    UnaryOperator, Value,
};

use super::fold;

/// For each table of the top-level `FROM` (by folded name): the name its columns are qualified
/// with and the conjunction of the `WHERE` conditions that may be pushed to its scan (see the
/// module documentation). Empty when the statement is not a plain `SELECT` or joins outward.
pub(super) fn pushed_filters(sql: &str) -> BTreeMap<String, (String, String)> {
    let mut filters = BTreeMap::new();
    let Some(mut statements) = crate::analyze::parse(sql) else {
        return filters;
    };
    let (Some(Statement::Query(query)), true) = (statements.pop(), statements.is_empty()) else {
        return filters;
    };
    let Some((select_from, selection)) = plain_select(&query) else {
        return filters;
    };
    // (folded table name, qualifier as written, folded qualifier)
    let mut tables: Vec<(String, String, String)> = Vec::new();
    for item in select_from {
        let factors = std::iter::once(&item.relation).chain(item.joins.iter().map(|j| &j.relation));
        for join in &item.joins {
            if !matches!(
                join.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            ) {
                return filters;
            }
        }
        for factor in factors {
            match factor {
                TableFactor::Table { name, alias, .. } => {
                    let parts: Vec<_> =
                        name.0.iter().filter_map(ObjectNamePart::as_ident).collect();
                    let [table] = parts.as_slice() else {
                        return filters;
                    };
                    let qualifier = match alias {
                        Some(alias) if !alias.columns.is_empty() => return filters,
                        Some(alias) => &alias.name,
                        None => table,
                    };
                    tables.push((fold(table), qualifier.to_string(), fold(qualifier)));
                }
                // A derived table, function or nested join: its columns are not this module's.
                _ => tables.push((String::new(), String::new(), String::new())),
            }
        }
    }
    let single = tables.len() == 1;
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    for (table, qualifier, folded) in &tables {
        if table.is_empty() {
            continue;
        }
        let pushed: Vec<String> = conjuncts
            .iter()
            .filter(|c| pushable(c, folded, single))
            .map(|c| format!("({c})"))
            .collect();
        if !pushed.is_empty() {
            filters.insert(table.clone(), (qualifier.clone(), pushed.join(" AND ")));
        }
    }
    filters
}

/// The `FROM` list and `WHERE` of a query that is one plain `SELECT`.
fn plain_select(query: &Query) -> Option<(&[sqlparser::ast::TableWithJoins], &Expr)> {
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    Some((&select.from, select.selection.as_ref()?))
}

/// The operands of a chain of `AND`s.
fn split_and<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

/// Whether `expr` reads only columns of the table qualified `qualifier` (unqualified columns
/// too when it is the only table) through operators and constants that cannot fail on a row
/// the statement would not have read.
fn pushable(expr: &Expr, qualifier: &str, single: bool) -> bool {
    // A `$n` parameter is a value of the client's statement, not of the query that pulls.
    let constant = |e: &Expr| match e {
        Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
        Expr::TypedString(_) => true,
        _ => false,
    };
    match expr {
        // `current_timestamp` and its kind read as identifiers but are values of the moment.
        Expr::Identifier(ident) => single && !SQL_VALUE_FUNCTIONS.contains(&fold(ident).as_str()),
        Expr::CompoundIdentifier(parts) => {
            matches!(parts.as_slice(), [q, _] if fold(q) == qualifier)
        }
        Expr::Value(_) | Expr::TypedString(_) => constant(expr),
        Expr::Cast { expr, .. } => constant(expr),
        Expr::Nested(inner) => pushable(inner, qualifier, single),
        Expr::UnaryOp { op, expr } => {
            matches!(
                op,
                UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus
            ) && pushable(expr, qualifier, single)
        }
        Expr::BinaryOp { left, op, right } => {
            matches!(
                op,
                BinaryOperator::Eq
                    | BinaryOperator::NotEq
                    | BinaryOperator::Lt
                    | BinaryOperator::LtEq
                    | BinaryOperator::Gt
                    | BinaryOperator::GtEq
                    | BinaryOperator::And
                    | BinaryOperator::Or
            ) && pushable(left, qualifier, single)
                && pushable(right, qualifier, single)
        }
        Expr::IsNull(e) | Expr::IsNotNull(e) | Expr::IsTrue(e) | Expr::IsFalse(e) => {
            pushable(e, qualifier, single)
        }
        Expr::InList { expr, list, .. } => {
            pushable(expr, qualifier, single) && list.iter().all(&constant)
        }
        Expr::Between {
            expr, low, high, ..
        } => pushable(expr, qualifier, single) && constant(low) && constant(high),
        Expr::Like {
            expr,
            pattern,
            escape_char: None,
            any: false,
            ..
        }
        | Expr::ILike {
            expr,
            pattern,
            escape_char: None,
            any: false,
            ..
        } => pushable(expr, qualifier, single) && constant(pattern),
        _ => false,
    }
}

/// Words that read like columns but are SQL value functions.
const SQL_VALUE_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
];
