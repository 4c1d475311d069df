//! Merging ordered results from several shards: the `ORDER BY` keys as output columns, and the
//! `LIMIT`/`OFFSET` to apply after the merge.
//!
//! Each shard sorts its own rows; the proxy merges the sorted streams. An ordering expression
//! that is not an output column is added to the shard query as a hidden trailing column, which
//! the proxy strips before the client sees the rows. `LIMIT n OFFSET m` becomes `LIMIT n+m` on
//! each shard (any of them may hold the first rows) and is applied exactly after the merge.

use sqlparser::ast::{
    Expr, Ident, LimitClause, OrderByKind, OrderBySort, Query, SelectItem, SetExpr, Statement,
    Value,
};

use crate::params::{Param, Params};
use crate::placeholders::ShardStatement;
use crate::plan::RouteError;
use crate::sqlstate;

/// Which column of a shard's row a sort key reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    /// A column the client sees (0-based).
    Output(usize),
    /// The i-th hidden column appended for sorting.
    Hidden(usize),
}

/// One sort key of the merged result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub column: SortColumn,
    pub descending: bool,
    pub nulls_first: bool,
}

/// How to merge a multi-shard ordered query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSpec {
    pub order: Vec<SortKey>,
    pub window: RowWindow,
    /// Trailing columns added for sorting, to strip from every row.
    pub hidden: usize,
}

/// Name of the `i`-th hidden sort column.
fn hidden_name(i: usize) -> String {
    format!("shardline_sort_{i}")
}

/// A literal non-negative integer.
pub(crate) fn literal_count(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A `LIMIT` or `OFFSET` count as the statement writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Literal(u64),
    /// Bound at execution: the 0-based index of the parameter.
    Param(usize),
}

/// The `LIMIT`/`OFFSET` of a merged or combined query, before its parameters are bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowWindow {
    pub limit: Option<Count>,
    pub offset: Option<Count>,
}

/// The rows to return once the window's parameters are known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// Rows to return after skipping `offset`; `None` for all.
    pub limit: Option<u64>,
    pub offset: u64,
}

impl RowWindow {
    /// The slice for one execution; a negative or unreadable bound count is the error
    /// PostgreSQL gives for it.
    pub fn bind(&self, params: &dyn Params) -> Result<Slice, RouteError> {
        let limit = match self.limit {
            None => None,
            Some(count) => {
                count_value(count, params, "LIMIT", sqlstate::INVALID_ROW_COUNT_IN_LIMIT)?
            }
        };
        let offset = match self.offset {
            None => 0,
            Some(count) => count_value(
                count,
                params,
                "OFFSET",
                sqlstate::INVALID_ROW_COUNT_IN_OFFSET,
            )?
            .unwrap_or(0),
        };
        Ok(Slice { limit, offset })
    }
}

/// The value of a count; `None` for a NULL parameter (no limit, no offset).
fn count_value(
    count: Count,
    params: &dyn Params,
    clause: &str,
    negative_state: &'static str,
) -> Result<Option<u64>, RouteError> {
    let index = match count {
        Count::Literal(n) => return Ok(Some(n)),
        Count::Param(index) => index,
    };
    let value: Option<i64> = match params.get(index) {
        None => {
            return Err(RouteError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "{clause} uses parameter ${} but the Bind supplies fewer parameters",
                    index + 1
                ),
            ))
        }
        Some(Param::Null) => return Ok(None),
        Some(Param::Text(text)) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        Some(Param::Binary(bytes)) => match bytes.len() {
            8 => bytes.try_into().ok().map(i64::from_be_bytes),
            4 => bytes.try_into().ok().map(i32::from_be_bytes).map(i64::from),
            2 => bytes.try_into().ok().map(i16::from_be_bytes).map(i64::from),
            _ => None,
        },
    };
    match value {
        Some(n) if n >= 0 => Ok(u64::try_from(n).ok()),
        Some(_) => Err(RouteError::new(
            negative_state,
            format!("{clause} must not be negative"),
        )),
        None => Err(RouteError::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("{clause} parameter ${} is not an integer", index + 1),
        )),
    }
}

/// A `LIMIT`/`OFFSET` operand: a literal, a parameter, or `NULL` (no bound).
fn count_of(expr: &Expr) -> Option<Option<Count>> {
    if let Some(n) = literal_count(expr) {
        return Some(Some(Count::Literal(n)));
    }
    let Expr::Value(v) = expr else { return None };
    match &v.value {
        Value::Null => Some(None),
        Value::Placeholder(p) => {
            let n: usize = p.strip_prefix('$')?.parse().ok()?;
            Some(Some(Count::Param(n.checked_sub(1)?)))
        }
        _ => None,
    }
}

/// A query's `LIMIT` and `OFFSET` (`None` when either is neither a number nor a parameter).
pub(crate) fn row_window(query: &Query) -> Option<RowWindow> {
    match &query.limit_clause {
        None => Some(RowWindow::default()),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => Some(RowWindow {
            limit: match limit {
                None => None,
                Some(e) => count_of(e)?,
            },
            offset: match offset {
                None => None,
                Some(o) => count_of(&o.value)?,
            },
        }),
        Some(_) => None,
    }
}

/// Whether `item` is the output column `name` refers to.
fn names_column(item: &SelectItem, name: &str) -> bool {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => alias.value.eq_ignore_ascii_case(name),
        SelectItem::UnnamedExpr(Expr::Identifier(id)) => id.value.eq_ignore_ascii_case(name),
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts
            .last()
            .is_some_and(|p| p.value.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

/// The merge of `query` (its ORDER BY and LIMIT), and the query each shard should run: without
/// OFFSET, with `LIMIT limit+offset` and hidden sort columns. `None` when the query has neither
/// ORDER BY nor LIMIT, or has a shape the proxy cannot merge (then the router refuses it).
pub(crate) fn merge_spec(query: &Query) -> Option<(MergeSpec, Query)> {
    if query.order_by.is_none() && query.limit_clause.is_none() {
        return None;
    }
    if query.fetch.is_some() || query.with.is_some() {
        return None;
    }
    if names_a_collation(query) {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let plain = select.distinct.is_none()
        && select.having.is_none()
        && select.named_window.is_empty()
        && matches!(&select.group_by, sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if !plain {
        return None;
    }
    let window = row_window(query)?;

    let mut shard_query = query.clone();
    let mut hidden = Vec::new();
    let mut order = Vec::new();
    if let Some(order_by) = &query.order_by {
        let OrderByKind::Expressions(items) = &order_by.kind else {
            return None;
        };
        let visible = select.projection.len();
        let has_wildcard = select.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        });
        for item in items {
            let descending = match &item.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => return None,
            };
            let nulls_first = item.options.nulls_first.unwrap_or(descending);
            let ordinal = literal_count(&item.expr)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n >= 1);
            let column = match (ordinal, &item.expr) {
                // With a wildcard the ordinal's column is unknown here; sort on a copy.
                (Some(n), _) if !has_wildcard && n <= visible => SortColumn::Output(n - 1),
                (Some(_), _) => return None,
                (None, Expr::Identifier(id)) if !has_wildcard => {
                    match select
                        .projection
                        .iter()
                        .position(|p| names_column(p, &id.value))
                    {
                        Some(position) => SortColumn::Output(position),
                        None => hidden_column(&mut hidden, &item.expr),
                    }
                }
                (None, expr) => match select
                    .projection
                    .iter()
                    .position(|p| matches!(p, SelectItem::UnnamedExpr(e) if e == expr))
                {
                    Some(position) if !has_wildcard => SortColumn::Output(position),
                    _ => hidden_column(&mut hidden, expr),
                },
            };
            order.push(SortKey {
                column,
                descending,
                nulls_first,
            });
        }
        if let SetExpr::Select(shard_select) = shard_query.body.as_mut() {
            for (i, expr) in hidden.into_iter().enumerate() {
                shard_select.projection.push(SelectItem::ExprWithAlias {
                    expr,
                    alias: Ident::new(hidden_name(i)),
                });
            }
        }
    }
    // The shards' LIMIT depends on bound values; `shard_statement` sets it per execution.
    shard_query.limit_clause = None;
    let hidden = match &shard_query.body.as_ref() {
        SetExpr::Select(s) => s.projection.len() - select.projection.len(),
        _ => 0,
    };
    Some((
        MergeSpec {
            order,
            window,
            hidden,
        },
        shard_query,
    ))
}

/// Whether `query` says `COLLATE` anywhere (conservatively: in a string too): an explicit
/// collation orders and compares text in a way only PostgreSQL knows, so its rows are neither
/// merged nor combined by the proxy.
pub(crate) fn names_a_collation(query: &Query) -> bool {
    query.to_string().to_ascii_uppercase().contains("COLLATE")
}

fn hidden_column(hidden: &mut Vec<Expr>, expr: &Expr) -> SortColumn {
    hidden.push(expr.clone());
    SortColumn::Hidden(hidden.len() - 1)
}

impl MergeSpec {
    /// The column a key reads in a shard row of `width` columns (hidden ones come last).
    pub fn column_of(&self, key: &SortKey, width: usize) -> Option<usize> {
        match key.column {
            SortColumn::Output(n) => (n < width.saturating_sub(self.hidden)).then_some(n),
            SortColumn::Hidden(i) => (width >= self.hidden).then(|| width - self.hidden + i),
        }
    }
}

/// The statement each shard runs for a merged query: hidden sort columns added, `OFFSET`
/// dropped and `LIMIT` raised to the slice's limit+offset (any shard may hold the first rows),
/// parameters the proxy applied itself removed. `None` when `sql` is not a merged query.
pub fn shard_statement(sql: &str, slice: Slice) -> Option<ShardStatement> {
    let mut statements = crate::analyze::parse(sql)?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Query(query)) = statements.pop() else {
        return None;
    };
    let (_, mut shard_query) = merge_spec(&query)?;
    shard_query.limit_clause = slice.limit.map(|l| LimitClause::LimitOffset {
        limit: Some(Expr::value(Value::Number(
            l.saturating_add(slice.offset).to_string(),
            false,
        ))),
        offset: None,
        limit_by: Vec::new(),
    });
    ShardStatement::renumbered(&shard_query.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sql: &str) -> Option<(MergeSpec, String)> {
        let mut statements = crate::analyze::parse(sql)?;
        let Some(Statement::Query(query)) = statements.pop() else {
            return None;
        };
        merge_spec(&query).map(|(s, q)| (s, q.to_string()))
    }

    #[test]
    fn order_keys_map_to_output_columns() {
        let (s, q) = spec("SELECT id, name FROM users ORDER BY name DESC, 1 LIMIT 10 OFFSET 5")
            .unwrap_or_else(|| panic!());
        assert_eq!(
            s.order,
            vec![
                SortKey {
                    column: SortColumn::Output(1),
                    descending: true,
                    nulls_first: true
                },
                SortKey {
                    column: SortColumn::Output(0),
                    descending: false,
                    nulls_first: false
                }
            ]
        );
        assert_eq!(
            s.window,
            RowWindow {
                limit: Some(Count::Literal(10)),
                offset: Some(Count::Literal(5))
            }
        );
        assert_eq!(s.hidden, 0);
        assert!(q.ends_with("ORDER BY name DESC, 1"), "{q}");
        let slice = s.window.bind(&());
        assert_eq!(
            slice,
            Ok(Slice {
                limit: Some(10),
                offset: 5
            })
        );
        let statement = slice.ok().and_then(|slice| {
            shard_statement(
                "SELECT id, name FROM users ORDER BY name DESC, 1 LIMIT 10 OFFSET 5",
                slice,
            )
        });
        assert!(
            statement.is_some_and(|s| s.sql.ends_with("ORDER BY name DESC, 1 LIMIT 15")),
            "pushed-down limit"
        );
    }

    #[test]
    fn bound_limits_are_pushed_down_as_values() {
        let sql = "SELECT id FROM users WHERE score > $1 ORDER BY id LIMIT $2 OFFSET $3";
        let (s, _) = spec(sql).unwrap_or_else(|| panic!());
        let params = [
            Param::Text(b"7"),
            Param::Binary(&20i64.to_be_bytes()),
            Param::Text(b"5"),
        ];
        let slice = s.window.bind(&params.to_vec());
        assert_eq!(
            slice,
            Ok(Slice {
                limit: Some(20),
                offset: 5
            })
        );
        let statement = slice.ok().and_then(|slice| shard_statement(sql, slice));
        assert_eq!(
            statement,
            Some(ShardStatement {
                sql: "SELECT id FROM users WHERE score > $1 ORDER BY id LIMIT 25".into(),
                params: vec![0],
            })
        );
        let negative = s
            .window
            .bind(&vec![Param::Null, Param::Text(b"-1"), Param::Null]);
        assert!(
            matches!(
                negative,
                Err(RouteError {
                    sqlstate: "2201W",
                    ..
                })
            ),
            "{negative:?}"
        );
        let unbounded = s.window.bind(&vec![Param::Null; 3]);
        assert_eq!(unbounded, Ok(Slice::default()));
    }

    #[test]
    fn sort_expressions_outside_the_output_become_hidden_columns() {
        let (s, q) = spec("SELECT * FROM users ORDER BY created_at NULLS FIRST, id")
            .unwrap_or_else(|| panic!());
        assert_eq!(s.hidden, 2);
        assert!(
            q.contains("created_at AS shardline_sort_0, id AS shardline_sort_1"),
            "{q}"
        );
        assert_eq!(s.column_of(&s.order[0], 7), Some(5));
        assert_eq!(s.column_of(&s.order[1], 7), Some(6));
        assert!(s.order[0].nulls_first);
    }

    #[test]
    fn unmergeable_shapes_are_left_alone() {
        for sql in [
            "SELECT DISTINCT id FROM users ORDER BY id",
            "SELECT id, count(*) FROM users GROUP BY id ORDER BY id",
            "SELECT id FROM users ORDER BY id LIMIT $1 + 1",
            "SELECT id FROM users UNION ALL SELECT id FROM users ORDER BY 1",
            "SELECT id FROM users",
        ] {
            assert_eq!(spec(sql), None, "{sql}");
        }
    }
}
