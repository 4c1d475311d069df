//! SQL analysis: turns statement text into a [`Plan`] — the statement kind and the routing
//! target that [`Plan::route`] evaluates.
//!
//! Steps: tokenize (sqlparser, PostgreSQL dialect) and refuse expression chains too long to
//! handle safely (`lex`); repair syntax sqlparser misreads; parse; classify each statement
//! (this file); walk queries into facts — `query` (SELECT, set operations, the fact model),
//! `from` (FROM items, joins, column resolution, WITH), `expr` (conditions and key values),
//! `dml` (INSERT/UPDATE/DELETE/MERGE) — and compile the facts into a target (`compile`).
//! `array` decodes array values for `= ANY(...)`. Two safety rules guard against a silent
//! wrong shard:
//!
//! - Text sqlparser cannot parse is routed to the default shard only when it mentions no table
//!   named in shards.yaml (PostgreSQL then accepts or rejects it); otherwise it is refused.
//! - After walking a parsed statement, every configured table name that appears as an
//!   identifier in the text must have been seen by the walker; a name in a place the walker
//!   does not understand makes the statement refused rather than misrouted.

mod array;
mod compile;
mod dml;
mod expr;
mod from;
mod lex;
mod query;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};

use sqlparser::ast::{
    CopySource, CopyTarget, DiscardObject, Expr, ObjectName, Query, Reset, Set, Statement,
    TransactionAccessMode, TransactionIsolationLevel, TransactionMode,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::TokenWithSpan;

pub(crate) use array::{parse_binary_array, parse_text_array};

use crate::config::Config;
use crate::plan::{join_names, Plan, RouteError, StatementKind, Target};
use query::{name_parts, norm, TableKind, Walker};

/// Plans one Query/Parse text. Never panics; problems end up in the plan's target.
pub(crate) fn analyze(config: &Config, sql: &str) -> Plan {
    let tokens = match lex::tokenize(sql) {
        Ok(tokens) => tokens,
        Err(e) => return unparseable(config, sql, None, &e, PARSE_ERROR),
    };
    if lex::longest_operator_chain(&tokens) > lex::MAX_OPERATOR_CHAIN {
        let why = format!(
            "more than {} operators chained in one expression; use IN (...) or = ANY($1) for long lists",
            lex::MAX_OPERATOR_CHAIN
        );
        return unparseable(config, sql, Some(&tokens), &why, TOO_COMPLEX);
    }
    let mentioned = lex::configured_words(config, &tokens);
    let repaired = lex::repair(tokens.clone());
    let statements = match Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(repaired)
        .parse_statements()
    {
        Ok(statements) => statements,
        Err(e) => return unparseable(config, sql, Some(&tokens), &e.to_string(), PARSE_ERROR),
    };

    let mut analyses: Vec<Analysis> = statements.iter().map(|s| statement(config, s)).collect();
    let checked = analyses.iter().any(|a| a.visited.is_some());
    if checked {
        let visited: HashSet<&String> = analyses
            .iter()
            .filter_map(|a| a.visited.as_ref())
            .flatten()
            .collect();
        let missed: Vec<String> = mentioned
            .iter()
            .filter(|m| !visited.contains(m))
            .cloned()
            .collect();
        if !missed.is_empty() {
            let err = RouteError::new(
                "0A000",
                format!(
                    "shardline could not work out how this statement uses table {} (it appears in a construct shardline does not analyse), so it cannot route it safely; rewrite the statement in plainer SQL",
                    join_names(&missed)
                ),
            );
            for a in &mut analyses {
                a.target = Target::Error(err.clone());
            }
        }
    }

    match analyses.len() {
        0 => Plan {
            kind: StatementKind::Empty,
            target: Target::Anywhere("empty query: default shard".into()),
            parts: Vec::new(),
        },
        1 => {
            let a = analyses.remove(0);
            Plan {
                kind: a.kind,
                target: a.target,
                parts: Vec::new(),
            }
        }
        _ => {
            let parts = analyses.iter().map(|a| a.kind.clone()).collect();
            Plan {
                kind: StatementKind::Compound,
                target: Target::Compound(analyses.into_iter().map(|a| a.target).collect()),
                parts,
            }
        }
    }
}

/// SQLSTATE for text sqlparser rejects (syntax_error).
const PARSE_ERROR: &str = "42601";
/// SQLSTATE for text too complex to analyse safely (statement_too_complex).
const TOO_COMPLEX: &str = "54001";

/// What one parsed statement turned into.
struct Analysis {
    kind: StatementKind,
    target: Target,
    /// Configured tables the walker saw, for statements whose route depends on the walk.
    visited: Option<HashSet<String>>,
}

impl Analysis {
    fn fixed(kind: StatementKind, target: Target) -> Analysis {
        Analysis {
            kind,
            target,
            visited: None,
        }
    }

    fn handled(kind: StatementKind) -> Analysis {
        Analysis::fixed(
            kind,
            Target::Anywhere(
                "handled by the proxy: the client's backend or the default shard".into(),
            ),
        )
    }

    fn unsupported(message: impl Into<String>) -> Analysis {
        Analysis::fixed(
            StatementKind::Unsupported,
            Target::Error(RouteError::new("0A000", message)),
        )
    }

    fn ddl() -> Analysis {
        Analysis::fixed(
            StatementKind::Ddl,
            Target::AllShards("schema change: every shard, so schemas stay identical".into()),
        )
    }
}

/// Classifies one statement and builds its target.
fn statement(config: &Config, stmt: &Statement) -> Analysis {
    match stmt {
        Statement::Query(q) => concatenated_read(config, q),
        Statement::Insert(insert) => walked(config, StatementKind::Write, |w| w.walk_insert(insert).alts),
        Statement::Update(update) => walked(config, StatementKind::Write, |w| w.walk_update(update).alts),
        Statement::Delete(delete) => walked(config, StatementKind::Write, |w| w.walk_delete(delete).alts),
        Statement::Merge(merge) => walked(config, StatementKind::Write, |w| w.walk_merge(merge).alts),
        Statement::Copy { source, to, target, .. } => copy(config, source, *to, target),
        Statement::Explain { statement: inner, .. } => {
            let mut a = statement(config, inner);
            if a.kind == StatementKind::Unsupported {
                return a;
            }
            a.kind = StatementKind::Explain;
            a
        }
        Statement::StartTransaction { .. } => Analysis::handled(StatementKind::Begin),
        Statement::Commit { .. } => Analysis::handled(StatementKind::Commit),
        Statement::Rollback { savepoint: None, .. } => Analysis::handled(StatementKind::Rollback),
        Statement::Rollback { savepoint: Some(_), .. } | Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => {
            Analysis::handled(StatementKind::TransactionControl)
        }
        Statement::Fetch { .. } | Statement::Close { .. } => Analysis::handled(StatementKind::TransactionControl),
        Statement::Set(set) => set_statement(set),
        Statement::Reset(reset) => Analysis::handled(match &reset.reset {
            Reset::ALL => StatementKind::ResetAll,
            Reset::SessionAuthorization => StatementKind::Reset {
                name: "session_authorization".into(),
            },
            Reset::ConfigurationParameter(name) => StatementKind::Reset { name: guc_name(name) },
        }),
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowObjects(_)
        | Statement::ShowCharset(_)
        | Statement::ShowProcessList { .. } => Analysis::handled(StatementKind::Show),
        Statement::Discard { object_type } => Analysis::handled(match object_type {
            DiscardObject::ALL => StatementKind::DiscardAll,
            DiscardObject::PLANS | DiscardObject::SEQUENCES | DiscardObject::TEMP => StatementKind::SetLocal,
        }),
        Statement::Deallocate { name, .. } => {
            if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                Analysis::handled(StatementKind::DiscardAll)
            } else {
                Analysis::unsupported(
                    "SQL-level DEALLOCATE of a named statement is not supported through shardline; close protocol-level statements with a Close message, or use DEALLOCATE ALL",
                )
            }
        }
        Statement::Prepare { .. } | Statement::Execute { .. } => Analysis::unsupported(
            "SQL-level PREPARE/EXECUTE is not supported through shardline; use your driver's prepared statements (the extended protocol), which shardline routes and re-prepares as needed",
        ),
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } | Statement::NOTIFY { .. } => Analysis::unsupported(
            "LISTEN/NOTIFY is not supported through shardline (a notification would reach only one shard's listeners); connect to the shard directly for notifications",
        ),
        Statement::Declare { stmts } => cursor(config, stmts),
        Statement::Lock(lock) => {
            let mut tables = Vec::new();
            for t in &lock.tables {
                let parts = name_parts(&t.name);
                let key = parts.last().map(|i| i.value.to_ascii_lowercase());
                let schema = parts.len().checked_sub(2).and_then(|i| parts.get(i)).map(|s| norm(s));
                let catalog = matches!(schema.as_deref(), Some("pg_catalog" | "information_schema"));
                tables.push(key.filter(|k| !catalog && config.tables.contains_key(k)));
            }
            Analysis::fixed(StatementKind::Write, Target::Tables(tables, "LOCK: every shard holding the tables".into()))
        }
        Statement::Call(function) => call(config, function),
        Statement::CreateTable(create) => match &create.query {
            Some(query) => {
                let mut a = create_as(config, query, &create.name);
                a.kind = StatementKind::Ddl;
                a
            }
            None => Analysis::ddl(),
        },
        Statement::CreateView(view) if view.materialized => {
            let mut a = create_as(config, &view.query, &view.name);
            a.kind = StatementKind::Ddl;
            a
        }
        Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::CreateRole(_)
        | Statement::CreateServer(_)
        | Statement::CreatePolicy(_)
        | Statement::CreateOperator(_)
        | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_)
        | Statement::CreateTextSearch(_)
        | Statement::AlterTable(_)
        | Statement::AlterSchema(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction(_)
        | Statement::AlterType(_)
        | Statement::AlterCollation(_)
        | Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_)
        | Statement::AlterOperatorClass(_)
        | Statement::AlterTextSearch(_)
        | Statement::AlterRole { .. }
        | Statement::AlterPolicy(_)
        | Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::DropDomain(_)
        | Statement::DropProcedure { .. }
        | Statement::DropPolicy(_)
        | Statement::CreateExtension(_)
        | Statement::CreateCollation(_)
        | Statement::DropExtension(_)
        | Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_)
        | Statement::DropOperatorClass(_)
        | Statement::Comment { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateTrigger(_)
        | Statement::DropTrigger(_)
        | Statement::CreateProcedure { .. }
        | Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateDomain(_)
        | Statement::CreateType { .. }
        | Statement::RenameTable(_)
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::Truncate(_)
        | Statement::Vacuum(_)
        | Statement::Analyze(_) => Analysis::ddl(),
        _ => Analysis::unsupported("shardline does not know how to route this kind of statement"),
    }
}

/// CALL runs a procedure on the default shard; arguments that read configured tables would
/// be evaluated there too, which is only right for unsharded tables.
fn call(config: &Config, function: &sqlparser::ast::Function) -> Analysis {
    let mut w = Walker::new(config);
    w.walk_function(function);
    let configured = w
        .occs
        .iter()
        .find(|o| matches!(o.kind, TableKind::Sharded | TableKind::Reference));
    let target = match (configured, w.error.take()) {
        (Some(o), _) => Target::Error(RouteError::new(
            "0A000",
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
fn walked<'a>(
    config: &'a Config,
    kind: StatementKind,
    walk: impl FnOnce(&mut Walker<'a>) -> Vec<query::Alt>,
) -> Analysis {
    let mut w = Walker::new(config);
    let alts = walk(&mut w);
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
    let mut top = out.alts;
    for dml in std::mem::take(&mut w.dml_alts) {
        top = w.cross(top, dml);
    }
    let target = compile::compile(&w, &top);
    let kind = if w.writes || w.locks {
        StatementKind::Write
    } else {
        StatementKind::Read
    };
    Analysis {
        kind,
        target,
        visited: Some(w.visited),
    }
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
        "0A000",
        format!(
            "creating a table from a query over sharded table {table} (CREATE TABLE … AS, SELECT … INTO, CREATE MATERIALIZED VIEW) is not supported; create the table first, then fill it with INSERT"
        ),
    )
}

/// `CREATE TABLE … AS` / `CREATE MATERIALIZED VIEW … AS`: the new table is not in shards.yaml,
/// so it lives on the default shard; it can only be filled from tables that are there too.
fn create_as(config: &Config, query: &Query, name: &ObjectName) -> Analysis {
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
fn concatenated_read(config: &Config, q: &Query) -> Analysis {
    let mut a = read_or_write_checked(config, q, true);
    if q.order_by.is_some() {
        if let Target::Keyed(k) = &mut a.target {
            k.single_only = Some(RouteError::new(
                "0A000",
                "ORDER BY across several shards is not supported yet; restrict the query to one shard key, or sort on the client",
            ));
        }
    }
    a
}

/// `DECLARE c CURSOR FOR query`: routed like the query, on one shard only.
fn cursor(config: &Config, stmts: &[sqlparser::ast::Declare]) -> Analysis {
    let Some(query) = stmts.iter().find_map(|d| d.for_query.as_deref()) else {
        return Analysis::unsupported("shardline only supports DECLARE … CURSOR FOR <query>");
    };
    let mut a = read_or_write(config, query);
    if let Target::Keyed(k) = &mut a.target {
        k.single_only = Some(RouteError::new(
            "0A000",
            "a cursor must stay on one shard: restrict its query by the shard key, or read without a cursor",
        ));
    }
    a
}

/// COPY: `FROM STDIN` into one shard only; `TO STDOUT` from every shard holding the rows.
fn copy(config: &Config, source: &CopySource, to: bool, target: &CopyTarget) -> Analysis {
    let kind = if to {
        StatementKind::CopyOut
    } else {
        StatementKind::CopyIn
    };
    if !matches!(target, CopyTarget::Stdin | CopyTarget::Stdout) {
        let mut a = Analysis::fixed(
            kind,
            Target::Error(RouteError::new(
                "0A000",
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
                        "0A000",
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
                    "0A000",
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
                                        "0A000",
                                        format!("COPY into sharded table {name} is not supported yet; use INSERT"),
                                    ));
                                }
                                compile::compile(&w, &out.alts)
                            }
                            _ => Target::Error(RouteError::new("42601", format!("shardline could not read the table name {table_name}"))),
                        },
                        Err(e) => Target::Error(RouteError::new("42601", format!("shardline could not read the table name {table_name}: {e}"))),
                    }
                }
            };
            Analysis::fixed(kind, target)
        }
    }
}

/// A GUC name as PostgreSQL spells it: lower case, dotted parts joined.
fn guc_name(name: &ObjectName) -> String {
    name_parts(name)
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// `SET …` variants.
fn set_statement(set: &Set) -> Analysis {
    use sqlparser::ast::ContextModifier;
    match set {
        Set::SingleAssignment { scope, variable, values, .. } => {
            if matches!(scope, Some(ContextModifier::Local)) {
                return Analysis::handled(StatementKind::SetLocal);
            }
            let value = values.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            Analysis::handled(StatementKind::Set {
                name: guc_name(variable),
                value,
            })
        }
        Set::SetTimeZone { local: true, .. } => Analysis::handled(StatementKind::SetLocal),
        Set::SetTimeZone { local: false, value } => {
            let value = match value {
                Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("local") => "DEFAULT".to_owned(),
                other => other.to_string(),
            };
            Analysis::handled(StatementKind::Set {
                name: "timezone".into(),
                value,
            })
        }
        Set::SetRole { context_modifier: Some(ContextModifier::Local), .. } => Analysis::handled(StatementKind::SetLocal),
        Set::SetRole { role_name, .. } => Analysis::handled(StatementKind::Set {
            name: "role".into(),
            value: role_name.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string),
        }),
        Set::SetSessionAuthorization(param) => {
            let value = param.to_string();
            // Display gives "SESSION AUTHORIZATION <user>"; keep what follows.
            let value = value.rsplit_once("AUTHORIZATION ").map_or(value.clone(), |(_, v)| v.to_owned());
            Analysis::handled(StatementKind::Set {
                name: "session_authorization".into(),
                value,
            })
        }
        Set::SetNames { charset_name, .. } => Analysis::handled(StatementKind::Set {
            name: "client_encoding".into(),
            value: format!("'{}'", charset_name.value.replace('\'', "''")),
        }),
        Set::SetNamesDefault {} => Analysis::handled(StatementKind::Set {
            name: "client_encoding".into(),
            value: "DEFAULT".into(),
        }),
        Set::SetTransaction { session: false, .. } => Analysis::handled(StatementKind::SetLocal),
        Set::SetTransaction { session: true, modes, .. } => match modes.as_slice() {
            [mode] => {
                let (name, value) = match mode {
                    TransactionMode::IsolationLevel(level) => (
                        "default_transaction_isolation",
                        match level {
                            TransactionIsolationLevel::ReadUncommitted => "'read uncommitted'",
                            TransactionIsolationLevel::ReadCommitted => "'read committed'",
                            TransactionIsolationLevel::RepeatableRead => "'repeatable read'",
                            TransactionIsolationLevel::Serializable => "'serializable'",
                            TransactionIsolationLevel::Snapshot => "'repeatable read'",
                        },
                    ),
                    TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => ("default_transaction_read_only", "on"),
                    TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => ("default_transaction_read_only", "off"),
                };
                Analysis::handled(StatementKind::Set {
                    name: name.into(),
                    value: value.into(),
                })
            }
            _ => Analysis::unsupported(
                "set one session characteristic per statement (for example SET default_transaction_isolation = 'serializable'), so shardline can replay it on every backend",
            ),
        },
        Set::ParenthesizedAssignments { .. } | Set::MultipleAssignments { .. } | Set::SetSessionParam(_) => {
            Analysis::unsupported("shardline does not support this form of SET; use SET name = value")
        }
    }
}

/// Text sqlparser cannot parse (or will not parse safely). Utility statements are recognised by
/// their first words; anything else goes to the default shard only if it mentions no
/// configured table.
fn unparseable(
    config: &Config,
    sql: &str,
    tokens: Option<&[TokenWithSpan]>,
    why: &str,
    sqlstate: &'static str,
) -> Plan {
    let words = match tokens {
        Some(t) => lex::leading_words(t, 3),
        None => lex::leading_words_raw(sql, 3),
    };
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let handled = |kind: StatementKind| Plan {
        kind,
        target: Target::Anywhere(
            "handled by the proxy: the client's backend or the default shard".into(),
        ),
        parts: Vec::new(),
    };
    match (word(0), word(1), word(2)) {
        ("PREPARE", "TRANSACTION", _) | ("COMMIT" | "ROLLBACK", "PREPARED", _) | ("MOVE", _, _) => {
            return handled(StatementKind::TransactionControl)
        }
        ("RESET", "TIME", "ZONE") => {
            return handled(StatementKind::Reset {
                name: "timezone".into(),
            })
        }
        ("RESET", "SESSION", "AUTHORIZATION") => {
            return handled(StatementKind::Reset {
                name: "session_authorization".into(),
            })
        }
        ("SET", "CONSTRAINTS", _) => return handled(StatementKind::SetLocal),
        ("SHOW", _, _) => return handled(StatementKind::Show),
        ("SET" | "RESET", _, _) => {
            // Session state shardline cannot follow would be lost between backends.
            return Plan {
                kind: StatementKind::Unsupported,
                target: Target::Error(RouteError::new(
                    "0A000",
                    format!("shardline could not parse this {} statement ({why}); use SET name = value or RESET name", word(0)),
                )),
                parts: Vec::new(),
            };
        }
        _ => {}
    }
    let kind = match word(0) {
        "SELECT" | "VALUES" | "TABLE" | "WITH" => StatementKind::Read,
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "COMMENT" | "GRANT" | "REVOKE" | "REINDEX"
        | "CLUSTER" | "VACUUM" | "ANALYZE" | "SECURITY" | "IMPORT" => StatementKind::Ddl,
        "COPY" => {
            let upper = sql.to_ascii_uppercase();
            if upper.contains("STDIN") {
                StatementKind::CopyIn
            } else {
                StatementKind::CopyOut
            }
        }
        _ => StatementKind::Write,
    };
    // Every whole word counts, including inside strings and comments: a `DO` block or a
    // function body can reach a sharded table from a dollar-quoted string.
    let mentioned: BTreeSet<String> = lex::configured_words_raw(config, sql);
    // Maintenance and schema changes that carry no query go to every shard whatever they
    // name; `CREATE` may carry a query (CREATE TABLE … AS), so it follows the mention rule.
    let maintenance = matches!(
        word(0),
        "VACUUM"
            | "ANALYZE"
            | "REINDEX"
            | "CLUSTER"
            | "ALTER"
            | "DROP"
            | "TRUNCATE"
            | "COMMENT"
            | "GRANT"
            | "REVOKE"
            | "SECURITY"
    );
    let target = if maintenance {
        Target::AllShards(
            "schema change or maintenance shardline could not parse: every shard".into(),
        )
    } else if let Some(first) = mentioned.iter().next() {
        let what = match config.tables.get(first).map(|r| &r.sharding) {
            Some(crate::config::Sharding::Reference) => "reference table",
            _ => "sharded table",
        };
        let verb = if sqlstate == TOO_COMPLEX {
            "analyse"
        } else {
            "parse"
        };
        Target::Error(RouteError::new(
            sqlstate,
            format!(
                "shardline could not {verb} this statement ({why}), and it mentions {what} {first}, so it cannot be routed safely; rewrite it in syntax shardline understands"
            ),
        ))
    } else if kind == StatementKind::Ddl {
        Target::AllShards(
            "schema change shardline could not parse, mentioning no configured table: every shard"
                .into(),
        )
    } else {
        Target::Default(format!(
            "statement shardline could not parse ({why}), mentioning no configured table: default shard"
        ))
    };
    Plan {
        kind,
        target,
        parts: Vec::new(),
    }
}
