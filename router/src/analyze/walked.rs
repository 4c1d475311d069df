//! Statements whose route comes from walking the tables they touch: queries, DML, `CALL`,
//! `CREATE TABLE … AS` / `SELECT … INTO`, cursors and `COPY`. Each walks the statement with a
//! fresh [`Walker`] and compiles the facts into a target, adding the one-shard rules the
//! statement kind needs (concatenated results, cursors, `COPY … FROM STDIN`).

use sqlparser::ast::{CopySource, CopyTarget, Expr, ObjectName, Query, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::compile;
use super::walker::{name_parts, norm, Alt, TableKind, Walker};
use super::Analysis;
use crate::config::Config;
use crate::plan::{RouteError, StatementKind, Target};
use crate::sqlstate;

/// CALL runs a procedure on the default shard; arguments that read configured tables would
/// be evaluated there too, which is only right for unsharded tables.
pub(super) fn call(config: &Config, function: &sqlparser::ast::Function) -> Analysis {
    let mut w = Walker::new(config);
    w.walk_function(function);
    let configured = w
        .occs
        .iter()
        .find(|o| matches!(o.kind, TableKind::Sharded | TableKind::Reference));
    let target = match (configured, w.error.take()) {
        (Some(o), _) => Target::Error(RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("CALL runs on the default shard, so its arguments cannot read configured table {}; compute them first", o.name),
        )),
        (None, Some(e)) => Target::Error(e),
        (None, None) => Target::Default("CALL: procedures run on the default shard".into()),
    };
    Analysis {
        kind: StatementKind::Write,
        target,
        visited: Some(w.visited),
    }
}

/// Walks a statement with a fresh walker and compiles the facts.
pub(super) fn walked<'a>(
    config: &'a Config,
    kind: StatementKind,
    walk: impl FnOnce(&mut Walker<'a>) -> Vec<Alt>,
) -> Analysis {
    let mut w = Walker::new(config);
    let alts = walk(&mut w);
    finish(w, kind, alts)
}

/// Joins the alternatives of data-modifying CTEs to the statement's own, compiles the facts,
/// and makes a read that writes or locks rows a write.
fn finish(mut w: Walker<'_>, kind: StatementKind, alts: Vec<Alt>) -> Analysis {
    let mut top = alts;
    for dml in std::mem::take(&mut w.dml_alts) {
        top = w.cross(top, dml);
    }
    let target = compile::compile(&w, &top);
    let kind = match kind {
        StatementKind::Read if w.writes || w.locks => StatementKind::Write,
        other => other,
    };
    Analysis {
        kind,
        target,
        visited: Some(w.visited),
    }
}

/// SELECT / VALUES / WITH: a read, unless it writes (data-modifying WITH) or locks rows, or
/// creates a table (`SELECT … INTO`).
fn read_or_write(config: &Config, q: &Query) -> Analysis {
    read_or_write_checked(config, q, false)
}

/// [`read_or_write`]; `concatenated`: the result rows are concatenated, not merged, so the
/// top-level SELECT must not aggregate across shards either.
fn read_or_write_checked(config: &Config, q: &Query, concatenated: bool) -> Analysis {
    let mut w = Walker::new(config);
    w.check_next = concatenated;
    let out = w.walk_query(q);
    if w.select_into {
        let sharded = w
            .occs
            .iter()
            .find(|o| o.kind == TableKind::Sharded)
            .map(|o| o.name.clone());
        let mut visited = w.visited;
        for target in select_into_targets(q) {
            for part in name_parts(&target) {
                let key = part.value.to_ascii_lowercase();
                if config.tables.contains_key(&key) {
                    visited.insert(key);
                }
            }
        }
        let target = match sharded {
            Some(table) => Target::Error(create_from_sharded(&table)),
            None => match w.error {
                Some(e) => Target::Error(e),
                None => Target::Default(
                    "SELECT INTO creates a table, which lives on the default shard".into(),
                ),
            },
        };
        return Analysis {
            kind: StatementKind::Ddl,
            target,
            visited: Some(visited),
        };
    }
    finish(w, StatementKind::Read, out.alts)
}

/// Names after `INTO` in `SELECT … INTO t`.
fn select_into_targets(q: &Query) -> Vec<ObjectName> {
    let mut out = Vec::new();
    if let sqlparser::ast::SetExpr::Select(select) = q.body.as_ref() {
        if let Some(into) = &select.into {
            for t in &into.targets {
                match t {
                    Expr::Identifier(i) => out.push(ObjectName::from(vec![i.clone()])),
                    Expr::CompoundIdentifier(parts) => out.push(ObjectName::from(parts.clone())),
                    _ => {}
                }
            }
        }
    }
    out
}

fn create_from_sharded(table: &str) -> RouteError {
    RouteError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "creating a table from a query over sharded table {table} (CREATE TABLE … AS, SELECT … INTO, CREATE MATERIALIZED VIEW) is not supported; create the table first, then fill it with INSERT"
        ),
    )
}

/// `CREATE TABLE … AS` / `CREATE MATERIALIZED VIEW … AS`: the new table is not in shards.yaml,
/// so it lives on the default shard; it can only be filled from tables that are there too.
pub(super) fn create_as(config: &Config, query: &Query, name: &ObjectName) -> Analysis {
    let mut w = Walker::new(config);
    w.visit_name(name);
    let _ = w.walk_query(query);
    let sharded = w
        .occs
        .iter()
        .find(|o| o.kind == TableKind::Sharded)
        .map(|o| o.name.clone());
    let target = match (sharded, w.error.take()) {
        (Some(table), _) => Target::Error(create_from_sharded(&table)),
        (None, Some(e)) => Target::Error(e),
        (None, None) => Target::Default(
            "creates a table from a query over unsharded tables: default shard".into(),
        ),
    };
    Analysis {
        kind: StatementKind::Ddl,
        target,
        visited: Some(w.visited),
    }
}

/// A top-level query. Rows from several shards are concatenated (the proxy does not merge
/// ORDER BY, LIMIT or aggregates across shards yet), so a query that orders, limits,
/// aggregates or de-duplicates must stay on one shard rather than give a wrong answer.
pub(super) fn concatenated_read(config: &Config, q: &Query) -> Analysis {
    if crate::combine::aggregate_spec(q).is_some() {
        // The proxy combines the shards' groups; routing depends on FROM and WHERE only.
        return read_or_write_checked(config, &crate::combine::routing_query(q), true);
    }
    if crate::merge::merge_spec(q).is_some() {
        // The proxy merges the shards' ordered streams and applies LIMIT/OFFSET itself, so
        // only the rest of the query must be shard-local.
        let mut unordered = q.clone();
        unordered.order_by = None;
        unordered.limit_clause = None;
        return read_or_write_checked(config, &unordered, true);
    }
    let mut a = read_or_write_checked(config, q, true);
    if q.order_by.is_some() {
        if let Target::Keyed(k) = &mut a.target {
            k.single_only = Some(RouteError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "ORDER BY across several shards is not supported yet; restrict the query to one shard key, or sort on the client",
            ));
        }
    }
    a
}

/// `DECLARE c CURSOR FOR query`: routed like the query, on one shard only.
pub(super) fn cursor(config: &Config, stmts: &[sqlparser::ast::Declare]) -> Analysis {
    let Some(query) = stmts.iter().find_map(|d| d.for_query.as_deref()) else {
        return Analysis::unsupported("shardline only supports DECLARE … CURSOR FOR <query>");
    };
    let mut a = read_or_write(config, query);
    if let Target::Keyed(k) = &mut a.target {
        k.single_only = Some(RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a cursor must stay on one shard: restrict its query by the shard key, or read without a cursor",
        ));
    }
    a
}

/// COPY: `FROM STDIN` into one shard only; `TO STDOUT` from every shard holding the rows.
pub(super) fn copy(
    config: &Config,
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
) -> Analysis {
    let kind = if to {
        StatementKind::CopyOut
    } else {
        StatementKind::CopyIn
    };
    if !matches!(target, CopyTarget::Stdin | CopyTarget::Stdout) {
        let mut a = Analysis::fixed(
            kind,
            Target::Error(RouteError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "COPY to or from a file or program on the server is not supported through shardline; use COPY … FROM STDIN or COPY … TO STDOUT",
            )),
        );
        // The route does not depend on the tables, so no mention check is needed.
        a.visited = None;
        return a;
    }
    match source {
        CopySource::Query(query) => {
            // COPY output is concatenated shard by shard: aggregation, DISTINCT, LIMIT and
            // ORDER BY of the query only hold when it runs on one shard.
            let mut a = read_or_write_checked(config, query, true);
            if query.order_by.is_some() {
                if let Target::Keyed(k) = &mut a.target {
                    k.single_only = Some(RouteError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY (query ORDER BY …) TO STDOUT cannot keep the order across several shards; restrict the query to one shard or sort after copying",
                    ));
                }
            }
            a.kind = kind;
            a
        }
        CopySource::Table {
            table_name,
            columns,
        } => {
            let parts = name_parts(table_name);
            let key = parts
                .last()
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default();
            let schema = parts
                .len()
                .checked_sub(2)
                .and_then(|i| parts.get(i))
                .map(|s| norm(s));
            let catalog = matches!(schema.as_deref(), Some("pg_catalog" | "information_schema"));
            let rule = if catalog {
                None
            } else {
                config.tables.get(&key)
            };
            let name = parts.last().map(|i| norm(i)).unwrap_or_default();
            let _ = columns;
            let target = match rule.map(|r| &r.sharding) {
                None => Target::Default(format!("COPY of table {name}, which is not in shards.yaml: default shard")),
                Some(crate::config::Sharding::Reference) if to => Target::Anywhere(format!("COPY from reference table {name}: any shard (the default)")),
                Some(crate::config::Sharding::Reference) => Target::Error(RouteError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("COPY into reference table {name} is not supported yet (it must reach every shard); use INSERT"),
                )),
                Some(_) => {
                    // A table-wide COPY reads or writes what `SELECT * FROM t` reads.
                    let text = format!("SELECT * FROM {table_name}");
                    match Parser::parse_sql(&PostgreSqlDialect {}, &text) {
                        Ok(parsed) => match parsed.first() {
                            Some(Statement::Query(query)) => {
                                let mut w = Walker::new(config);
                                let out = w.walk_query(query);
                                if !to {
                                    w.single_only = Some(RouteError::new(
                                        sqlstate::FEATURE_NOT_SUPPORTED,
                                        format!("COPY into sharded table {name} is not supported yet; use INSERT"),
                                    ));
                                }
                                compile::compile(&w, &out.alts)
                            }
                            _ => Target::Error(RouteError::new(sqlstate::SYNTAX_ERROR, format!("shardline could not read the table name {table_name}"))),
                        },
                        Err(e) => Target::Error(RouteError::new(sqlstate::SYNTAX_ERROR, format!("shardline could not read the table name {table_name}: {e}"))),
                    }
                }
            };
            Analysis::fixed(kind, target)
        }
    }
}
