//! Aggregates across shards: which output columns are `GROUP BY` keys and which are
//! `count`/`sum`/`min`/`max` values the proxy combines from every shard's partial result, and
//! the ordering and `LIMIT` to apply to the combined rows.
//!
//! Each shard runs the query without `ORDER BY`/`LIMIT` and returns one row per group; the proxy
//! adds counts and sums and keeps the smallest/largest values per group. `SELECT DISTINCT` is the
//! same with every output column a key and no aggregate. `avg` is split into a sum and a hidden
//! count; `HAVING` is evaluated by the proxy on the combined groups (see `having`). Shapes that
//! cannot be combined this way (`DISTINCT` aggregates, `DISTINCT ON`, group keys not in the
//! output) are left to the router, which refuses them.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, OrderByKind, OrderBySort,
    Query, SelectItem, SetExpr, Statement, Value,
};

use crate::having::Predicate;
use crate::merge::{literal_count, row_window, RowWindow, SortColumn, SortKey};
use crate::placeholders::ShardStatement;

/// How one output column of a grouped query is combined across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// A `GROUP BY` key: rows with equal keys are one group.
    Group,
    Count,
    Sum,
    Min,
    Max,
    /// `avg(x)`: the shard returns `sum(x)` here and `count(x)` in hidden column `count`.
    Avg {
        count: usize,
    },
}

/// How to combine an aggregate query's per-shard results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    /// Every column the shards return: the client's, then hidden `count` columns of averages.
    pub columns: Vec<Combine>,
    /// How many leading columns the client sees.
    pub visible: usize,
    /// Ordering of the combined rows, by output column.
    pub order: Vec<SortKey>,
    pub window: RowWindow,
    /// The `HAVING` condition, over the combined columns.
    pub having: Option<Predicate>,
}

/// The aggregate a call is, if it can be combined.
pub(crate) fn combinable(expr: &Expr) -> Option<Combine> {
    let Expr::Function(f) = expr else { return None };
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() || f.name.0.len() != 1 {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() || list.args.len() != 1 {
        return None;
    }
    let star = matches!(
        list.args[0],
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard)
    );
    let name = f.name.0[0].as_ident()?.value.to_ascii_lowercase();
    match (name.as_str(), star) {
        ("count", _) => Some(Combine::Count),
        ("sum", false) => Some(Combine::Sum),
        ("min", false) => Some(Combine::Min),
        ("max", false) => Some(Combine::Max),
        // The hidden count column's index is filled in by the caller.
        ("avg", false) => Some(Combine::Avg { count: 0 }),
        _ => None,
    }
}

/// The combination of `query`, or `None` when it does not aggregate or cannot be combined.
pub(crate) fn aggregate_spec(query: &Query) -> Option<AggregateSpec> {
    analyse(query).map(|(spec, _)| spec)
}

/// The combination of `query` and the expressions of its hidden `HAVING` columns.
fn analyse(query: &Query) -> Option<(AggregateSpec, Vec<Expr>)> {
    if query.with.is_some() || query.fetch.is_some() || crate::merge::names_a_collation(query) {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    // `SELECT DISTINCT a, b` is a grouping by every output column with no aggregate.
    let distinct = match &select.distinct {
        None => false,
        Some(sqlparser::ast::Distinct::Distinct) => true,
        Some(_) => return None,
    };
    if !select.named_window.is_empty() || (distinct && select.having.is_some()) {
        return None;
    }
    let GroupByExpr::Expressions(group_by, modifiers) = &select.group_by else {
        return None;
    };
    if !modifiers.is_empty() {
        return None;
    }
    let outputs: Vec<(&Expr, Option<&str>)> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Some((e, None)),
            SelectItem::ExprWithAlias { expr, alias } => Some((expr, Some(alias.value.as_str()))),
            _ => None,
        })
        .collect::<Option<_>>()?;
    // Every GROUP BY key must be an output column (by ordinal or expression).
    let mut keys: Vec<usize> = if distinct {
        (0..outputs.len()).collect()
    } else {
        Vec::new()
    };
    if distinct && !group_by.is_empty() {
        return None;
    }
    for g in group_by {
        let position = match literal_count(g) {
            Some(n) => usize::try_from(n).ok().filter(|n| (1..=outputs.len()).contains(n))? - 1,
            None => outputs.iter().position(|(e, alias)| *e == g || matches!(g, Expr::Identifier(id) if alias.is_some_and(|a| a.eq_ignore_ascii_case(&id.value))))?,
        };
        keys.push(position);
    }
    let mut columns = Vec::with_capacity(outputs.len());
    let mut averages = 0;
    for (i, (expr, _)) in outputs.iter().enumerate() {
        columns.push(match combinable(expr) {
            Some(_) if distinct => return None,
            Some(Combine::Avg { .. }) => {
                averages += 1;
                Combine::Avg {
                    count: outputs.len() + averages - 1,
                }
            }
            Some(c) => c,
            None if keys.contains(&i) => Combine::Group,
            None => return None,
        });
    }
    let visible = columns.len();
    columns.extend(std::iter::repeat_n(Combine::Count, averages));
    let mut hidden = Vec::new();
    let having = match &select.having {
        None => None,
        Some(expr) => Some(crate::having::predicate(
            expr,
            group_by,
            columns.len(),
            &mut hidden,
        )?),
    };
    columns.extend(hidden.iter().map(|(_, c)| *c));
    if !distinct && !columns.iter().any(|c| *c != Combine::Group) {
        return None;
    }

    let mut order = Vec::new();
    if let Some(order_by) = &query.order_by {
        let OrderByKind::Expressions(items) = &order_by.kind else {
            return None;
        };
        for item in items {
            let descending = match &item.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => return None,
            };
            let column = match literal_count(&item.expr) {
                Some(n) => usize::try_from(n).ok().filter(|n| (1..=outputs.len()).contains(n))? - 1,
                None => outputs.iter().position(|(e, alias)| {
                    **e == item.expr || matches!(&item.expr, Expr::Identifier(id) if alias.is_some_and(|a| a.eq_ignore_ascii_case(&id.value)))
                })?,
            };
            order.push(SortKey {
                column: SortColumn::Output(column),
                descending,
                nulls_first: item.options.nulls_first.unwrap_or(descending),
            });
        }
    }
    let window = row_window(query)?;
    let spec = AggregateSpec {
        columns,
        visible,
        order,
        window,
        having,
    };
    Some((spec, hidden.into_iter().map(|(e, _)| e).collect()))
}

/// The query as the router should analyse it for routing: the same FROM and WHERE, without the
/// aggregation the proxy takes over.
pub(crate) fn routing_query(query: &Query) -> Query {
    let mut q = query.clone();
    q.order_by = None;
    q.limit_clause = None;
    if let SetExpr::Select(select) = q.body.as_mut() {
        select.projection = vec![SelectItem::UnnamedExpr(Expr::value(Value::Number(
            "1".into(),
            false,
        )))];
        select.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
        select.distinct = None;
        select.having = None;
    }
    q
}

/// The statement each shard runs for a combined aggregate: without ORDER BY and LIMIT (every
/// group is needed before the combined rows can be ordered and cut), averages split into sum
/// and count, parameters of the dropped clauses removed.
pub fn shard_statement(sql: &str) -> Option<ShardStatement> {
    let mut statements = crate::analyze::parse(sql)?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Query(mut query)) = statements.pop() else {
        return None;
    };
    let (_, having_columns) = analyse(&query)?;
    query.order_by = None;
    query.limit_clause = None;
    if let SetExpr::Select(select) = query.body.as_mut() {
        let mut counts = Vec::new();
        for item in &mut select.projection {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.clone())),
                _ => continue,
            };
            let Expr::Function(f) = expr else { continue };
            if combinable(&Expr::Function(f.clone())) != Some(Combine::Avg { count: 0 }) {
                continue;
            }
            // avg(x) becomes sum(x), still named like the average; count(x) goes last.
            let mut count = f.clone();
            count.name =
                sqlparser::ast::ObjectName::from(vec![sqlparser::ast::Ident::new("count")]);
            counts.push(SelectItem::ExprWithAlias {
                expr: Expr::Function(count),
                alias: sqlparser::ast::Ident::new(format!("shardline_avg_count_{}", counts.len())),
            });
            f.name = sqlparser::ast::ObjectName::from(vec![sqlparser::ast::Ident::new("sum")]);
            let alias = alias.unwrap_or_else(|| sqlparser::ast::Ident::new("avg"));
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias,
            };
        }
        select.projection.extend(counts);
        select.having = None;
        for (i, expr) in having_columns.into_iter().enumerate() {
            select.projection.push(SelectItem::ExprWithAlias {
                expr,
                alias: sqlparser::ast::Ident::new(format!("shardline_having_{i}")),
            });
        }
    }
    ShardStatement::renumbered(&query.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sql: &str) -> Option<AggregateSpec> {
        let mut statements = crate::analyze::parse(sql)?;
        let Some(Statement::Query(query)) = statements.pop() else {
            return None;
        };
        aggregate_spec(&query)
    }

    #[test]
    fn recognises_combinable_aggregates() {
        let s = spec("SELECT name, count(*), sum(score) AS total, min(id), max(name) FROM users GROUP BY name ORDER BY total DESC LIMIT 3");
        let s = s.unwrap_or_else(|| panic!("not combinable"));
        assert_eq!(
            s.columns,
            vec![
                Combine::Group,
                Combine::Count,
                Combine::Sum,
                Combine::Min,
                Combine::Max
            ]
        );
        assert_eq!(s.order[0].column, SortColumn::Output(2));
        assert_eq!(s.window.limit, Some(crate::merge::Count::Literal(3)));
        assert!(spec("SELECT count(*) FROM users").is_some());
        assert!(spec("SELECT score, count(*) FROM users GROUP BY 1 ORDER BY 1").is_some());
    }

    #[test]
    fn refuses_what_cannot_be_combined() {
        assert!(spec("SELECT DISTINCT name, score FROM users ORDER BY 1 LIMIT 3").is_some());
        let avg = spec("SELECT name, avg(score) FROM users GROUP BY name")
            .unwrap_or_else(|| panic!("avg"));
        assert_eq!(
            avg.columns,
            vec![Combine::Group, Combine::Avg { count: 2 }, Combine::Count]
        );
        assert_eq!(avg.visible, 2);
        assert_eq!(
            shard_sql("SELECT name, avg(score) AS a FROM users GROUP BY name ORDER BY a").as_deref(),
            Some("SELECT name, sum(score) AS a, count(score) AS shardline_avg_count_0 FROM users GROUP BY name")
        );
        for sql in [
            "SELECT DISTINCT ON (name) name, score FROM users",
            "SELECT DISTINCT count(*) FROM users",
            "SELECT avg(DISTINCT score) FROM users",
            "SELECT count(DISTINCT name) FROM users",
            "SELECT name, count(*) FROM users GROUP BY name HAVING avg(score) > 1",
            "SELECT name, count(*) FROM users GROUP BY name HAVING score > 1",
            "SELECT DISTINCT name FROM users HAVING count(*) > 1",
            "SELECT count(*) FROM users GROUP BY name",
            "SELECT name, score, count(*) FROM users GROUP BY name",
            "SELECT id FROM users",
            "SELECT sum(score) FILTER (WHERE score > 0) FROM users",
        ] {
            assert_eq!(spec(sql), None, "{sql}");
        }
    }

    #[test]
    fn having_reads_hidden_columns_the_proxy_combines() {
        let sql = "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > $1 AND (sum(score) <= -5 OR name IS NULL) ORDER BY 2";
        let s = spec(sql).unwrap_or_else(|| panic!("HAVING not combined"));
        assert_eq!(
            s.columns,
            vec![
                Combine::Group,
                Combine::Count,
                Combine::Count,
                Combine::Sum,
                Combine::Group
            ]
        );
        assert_eq!(s.visible, 2);
        use crate::having::{CompareOp, Operand, Predicate};
        assert_eq!(
            s.having,
            Some(Predicate::And(
                Box::new(Predicate::Compare(
                    Operand::Column(2),
                    CompareOp::Gt,
                    Operand::Param(0)
                )),
                Box::new(Predicate::Or(
                    Box::new(Predicate::Compare(
                        Operand::Column(3),
                        CompareOp::LtEq,
                        Operand::Literal("-5".into())
                    )),
                    Box::new(Predicate::IsNull {
                        column: 4,
                        negated: false
                    })
                ))
            ))
        );
        assert_eq!(
            shard_statement(sql),
            Some(ShardStatement {
                sql: "SELECT name, count(*), count(*) AS shardline_having_0, sum(score) AS shardline_having_1, name AS shardline_having_2 FROM users GROUP BY name".into(),
                params: Vec::new(),
            })
        );
    }

    fn shard_sql(sql: &str) -> Option<String> {
        shard_statement(sql).map(|s| s.sql)
    }

    #[test]
    fn shards_run_the_query_without_order_and_limit() {
        assert_eq!(
            shard_sql("SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC LIMIT 5")
                .as_deref(),
            Some("SELECT name, count(*) FROM users GROUP BY name")
        );
        assert_eq!(
            shard_sql("SELECT count(*) FROM users").as_deref(),
            Some("SELECT count(*) FROM users")
        );
        assert_eq!(
            shard_statement(
                "SELECT name, count(*) FROM users WHERE score > $1 GROUP BY name LIMIT $2 OFFSET $3"
            ),
            Some(ShardStatement {
                sql: "SELECT name, count(*) FROM users WHERE score > $1 GROUP BY name".into(),
                params: vec![0],
            })
        );
    }
}
