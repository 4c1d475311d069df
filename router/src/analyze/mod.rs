//! SQL analysis: turns statement text into a [`Plan`] — the statement kind and the routing
//! target that [`Plan::route`] evaluates.
//!
//! Steps: tokenize (sqlparser, PostgreSQL dialect) and refuse expression chains too long to
//! handle safely (`lex`); repair syntax sqlparser misreads; parse; classify each statement
//! (this file, with `settings` for `SET` and `unparseable` for text sqlparser rejects); walk
//! the statements that touch tables (`walked`) into facts — `walker` (the fact model),
//! `query` (SELECT, set operations), `aggregate` (rows combined across shard keys), `from`
//! (FROM items, joins, column resolution), `cte` (WITH), `expr` (shard-key conditions), `value`
//! (shard-key values), `visit` (every other expression), `dml` (INSERT/UPDATE/DELETE/MERGE) —
//! and compile the facts into a target (`compile`). `array` decodes array values for
//! `= ANY(...)`. Two safety rules guard against a silent wrong shard:
//!
//! - Text sqlparser cannot parse is routed to the default shard only when it mentions no table
//!   named in shards.yaml (PostgreSQL then accepts or rejects it); otherwise it is refused.
//! - After walking a parsed statement, every configured table name that appears as an
//!   identifier in the text must have been seen by the walker; a name in a place the walker
//!   does not understand makes the statement refused rather than misrouted.

mod aggregate;
mod array;
mod compile;
mod cte;
mod dml;
mod expr;
mod from;
mod lex;
mod query;
mod settings;
#[cfg(test)]
mod tests;
mod unparseable;
pub(crate) mod value;
mod visit;
mod walked;
mod walker;

use std::collections::HashSet;

use sqlparser::ast::{DiscardObject, Reset, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::TokenWithSpan;

pub(crate) use array::{parse_binary_array, parse_text_array};

use crate::config::Config;
use crate::plan::{join_names, Plan, RouteError, SavepointOp, StatementKind, Target};
use settings::{guc_name, set_statement};
use unparseable::unparseable;
use walked::{call, concatenated_read, copy, create_as, cursor, walked};
use walker::{name_parts, norm};

/// The statements of `sql` as sqlparser parses them; `None` when they cannot be parsed or an
/// expression chains more operators than [`lex::MAX_OPERATOR_CHAIN`]. sqlparser builds a chain
/// (`a AND b AND …`) as a tree as deep as it is long, and dropping or walking a tree a hundred
/// thousand levels deep overflows a worker thread's stack, which aborts the whole proxy: every
/// parse of a client's text goes through here or [`parse_repaired`].
pub(crate) fn parse(sql: &str) -> Option<Vec<Statement>> {
    parse_tokens(shallow_tokens(sql)?)
}

/// The statements of `sql` as the analysis parses them (with the token repairs of
/// [`lex::repair`]); `None` as for [`parse`].
pub(crate) fn parse_repaired(sql: &str) -> Option<Vec<Statement>> {
    parse_tokens(lex::repair(shallow_tokens(sql)?))
}

/// The tokens of `sql`, unless an expression in it chains too many operators to parse safely.
fn shallow_tokens(sql: &str) -> Option<Vec<TokenWithSpan>> {
    let tokens = lex::tokenize(sql).ok()?;
    (!lex::too_deep(&tokens)).then_some(tokens)
}

fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Option<Vec<Statement>> {
    Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .ok()
}

/// The `INSERT` that is the whole of `sql`, and the name of the table it inserts into as
/// written; `None` for anything else.
pub(crate) fn sole_insert(
    sql: &str,
) -> Option<(sqlparser::ast::Insert, sqlparser::ast::ObjectName)> {
    let mut statements = parse_repaired(sql)?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Insert(insert)) = statements.pop() else {
        return None;
    };
    let sqlparser::ast::TableObject::TableName(name) = &insert.table else {
        return None;
    };
    let name = name.clone();
    Some((insert, name))
}

/// Plans one Query/Parse text. Never panics; problems end up in the plan's target.
pub(crate) fn analyze(config: &Config, sql: &str) -> Plan {
    let tokens = match lex::tokenize(sql) {
        Ok(tokens) => tokens,
        Err(e) => return unparseable(config, sql, None, &e, PARSE_ERROR),
    };
    if lex::too_deep(&tokens) {
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
            merge: None,
            aggregate: None,
        },
        1 => {
            let a = analyses.remove(0);
            let query = match statements.first() {
                Some(Statement::Query(q)) if a.kind == StatementKind::Read => Some(q),
                _ => None,
            };
            let aggregate = query.and_then(|q| crate::combine::aggregate_spec(q));
            let merge = match (&aggregate, query) {
                (None, Some(q)) => crate::merge::merge_spec(q).map(|(spec, _)| spec),
                _ => None,
            };
            Plan {
                kind: a.kind,
                target: a.target,
                parts: Vec::new(),
                merge,
                aggregate,
            }
        }
        _ => {
            let parts = analyses.iter().map(|a| a.kind.clone()).collect();
            Plan {
                kind: StatementKind::Compound,
                target: Target::Compound(analyses.into_iter().map(|a| a.target).collect()),
                parts,
                merge: None,
                aggregate: None,
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
        Statement::Savepoint { name } => savepoint(SavepointOp::Define, name),
        Statement::ReleaseSavepoint { name } => savepoint(SavepointOp::Release, name),
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => savepoint(SavepointOp::RollbackTo, name),
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
                Analysis::handled(StatementKind::DeallocateAll)
            } else {
                let name = match name.quote_style {
                    Some(_) => name.value.clone(),
                    None => name.value.to_lowercase(),
                };
                Analysis::handled(StatementKind::Deallocate { name })
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
            // A temporary table belongs to the session's backend: it is made where the
            // session's statements on unlisted tables go.
            None if create.temporary => Analysis::fixed(
                StatementKind::Ddl,
                Target::Default("a temporary table lives on the default shard".into()),
            ),
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

/// A savepoint command, its name folded as PostgreSQL folds identifiers.
fn savepoint(op: SavepointOp, name: &sqlparser::ast::Ident) -> Analysis {
    let name = match name.quote_style {
        Some(_) => name.value.clone(),
        None => name.value.to_lowercase(),
    };
    Analysis::handled(StatementKind::Savepoint { op, name })
}
