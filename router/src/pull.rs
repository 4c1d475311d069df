//! The pull-up plan of a read the proxy's merge cannot answer (window functions,
//! `count(DISTINCT …)`, joins of tables that are not co-located, …): the rows of every sharded
//! table it reads are copied into temporary tables of the same names on one backend, where
//! PostgreSQL runs the statement unchanged. An unqualified table name resolves to a temporary
//! table first (`pg_temp` is searched before any other schema), so the statement's own text
//! reads the pulled rows and the answer is exactly PostgreSQL's.
//!
//! This module decides which tables to pull: every sharded table the text names (a superset
//! is harmless: a table pulled for nothing costs time, not correctness). A name written with
//! schema `public` (`public.users`, as BI tools write every name) would bypass the temporary
//! table and read one shard's rows, so the text the backend runs names it `pg_temp.users`
//! instead ([`temp_qualified`]); a name in any other schema is refused. It also decides which rows: a table named once, in the top-level
//! `FROM` of a plain `SELECT` with no outer join, is pulled through the `WHERE` conditions
//! that read only its own columns with nothing but operators and constants (no function, no
//! subquery): dropping rows that fail such a condition cannot change the answer, since the
//! statement still applies every condition itself.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{
    BinaryOperator, Expr, JoinOperator, ObjectNamePart, Query, SetExpr, Statement, TableFactor,
    UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::config::{Config, ShardId, Sharding};
use crate::ident::quote_ident;
use crate::plan::RouteError;
use crate::sqlstate;

/// One table whose rows a pull-up copies into the backend that runs the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledTable {
    /// The table's name as the config knows it (unqualified, folded).
    pub name: String,
    /// The shards holding its rows.
    pub shards: Vec<ShardId>,
    /// What each shard's rows are read from: the table, or the table under an alias with
    /// the statement's own conditions on it (`"t" AS q WHERE …`).
    pub from: String,
    /// That alias, when there is one.
    pub qualifier: Option<String>,
}

impl PulledTable {
    /// The query a source shard answers with: every column, or only `columns` when given
    /// (`shardline_router::narrow`), named in the select list itself so that the shard
    /// reads — and checks the privileges of — only those.
    pub fn rows_of(&self, columns: Option<&[String]>) -> String {
        let prefix = self
            .qualifier
            .as_ref()
            .map_or_else(String::new, |q| format!("{q}."));
        let list = match columns {
            Some(columns) => {
                let named: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{prefix}{}", quote_ident(c)))
                    .collect();
                named.join(", ")
            }
            None => format!("{prefix}*"),
        };
        format!("SELECT {list} FROM {}", self.from)
    }

    /// The query for every column ([`PulledTable::rows_of`]).
    pub fn rows(&self) -> String {
        self.rows_of(None)
    }

    /// The target's `COPY` that receives those rows (binary), into `columns` when given.
    pub fn copy_in(&self, columns: Option<&[String]>) -> String {
        let into = columns.map_or_else(String::new, |c| format!(" ({})", column_list(c)));
        format!(
            "COPY {}{into} FROM STDIN (FORMAT binary)",
            quote_ident(&self.name)
        )
    }
}

fn column_list(columns: &[String]) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    quoted.join(", ")
}

/// The sharded tables `sql` reads, for a pull-up; an error when it cannot be pulled up.
pub fn pulled_tables(config: &Config, sql: &str) -> Result<Vec<PulledTable>, RouteError> {
    // A name spelled with Unicode escapes (`U&"users"`) would hide a sharded table from the
    // name checks below and read one shard's rows.
    let escaped = crate::scan::Scanner::new(sql).flatten().any(|token| {
        matches!(token.kind, crate::scan::Kind::Word { quoted: true })
            && token
                .text
                .get(..2)
                .is_some_and(|p| p.eq_ignore_ascii_case("u&"))
    });
    if escaped {
        return Err(RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "this read needs rows gathered from several shards, and names written with Unicode escapes (U&\"…\") cannot be checked for sharded tables; write the names plainly",
        ));
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| RouteError::new(sqlstate::SYNTAX_ERROR, e.to_string()))?;
    let mut names = BTreeSet::new();
    let mut mentions: BTreeMap<String, usize> = BTreeMap::new();
    // The qualifier of the word being read (`Some("")` after a period that follows no word),
    // and whether that qualifier was itself qualified.
    let mut qualifier: Option<(String, bool)> = None;
    let mut previous_word: Option<(String, bool)> = None;
    let mut after_period = false;
    for token in &tokens {
        if matches!(token, Token::Whitespace(_)) {
            continue;
        }
        if let Token::Word(word) = token {
            let name = if word.quote_style.is_some() {
                word.value.clone()
            } else {
                word.value.to_ascii_lowercase()
            };
            if let Some(rule) = config.tables.get(&name) {
                if !matches!(rule.sharding, Sharding::Reference) {
                    let in_public = matches!(&qualifier, Some((q, false)) if q == "public");
                    if after_period && !in_public {
                        return Err(RouteError::new(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!(
                                "this read needs the rows of sharded table {name} gathered in one place, which works only when the table is named without a schema or in schema public; write {name} or public.{name}"
                            ),
                        ));
                    }
                    *mentions.entry(name.clone()).or_default() += 1;
                    names.insert(name.clone());
                }
            }
            previous_word = Some((name, after_period));
        } else if !matches!(token, Token::Period) {
            previous_word = None;
        }
        after_period = matches!(token, Token::Period);
        qualifier = if after_period {
            Some(previous_word.clone().unwrap_or_default())
        } else {
            None
        };
    }
    let all = config.shards.len();
    // The statement runs on the default shard, where tables outside the config live.
    let default = config.default_shard;
    if let Some(elsewhere) = names.iter().find(|name| {
        config
            .tables
            .get(*name)
            .is_some_and(|rule| !rule.shards(all).contains(&default))
    }) {
        let shard = config.shards.get(default).map_or("?", |s| s.name.as_str());
        return Err(RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "this read needs the rows of sharded table {elsewhere} gathered on the default shard {shard}, which does not hold that table; restrict the read to one shard key, or place {elsewhere} on {shard} too"
            ),
        ));
    }
    let filters = if names.is_empty() {
        BTreeMap::new()
    } else {
        pushed_filters(sql)
    };
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let shards = config.tables.get(&name)?.shards(all);
            let table = quote_ident(&name);
            let (from, qualifier) = match filters.get(&name) {
                Some((qualifier, filter)) if mentions.get(&name) == Some(&1) => (
                    format!("{table} AS {qualifier} WHERE {filter}"),
                    Some(qualifier.clone()),
                ),
                _ => (table, None),
            };
            Some(PulledTable {
                name,
                shards,
                from,
                qualifier,
            })
        })
        .collect())
}

/// `sql` as the backend that runs a pull-up must read it: every sharded table written in
/// schema `public` (`public.users`, `"public"."users"`, `public.users.id`) named in `pg_temp`
/// instead, where its pulled rows are; the rest of the text as it was. Strings and comments are
/// never touched (the scanner knows them); text it cannot scan is left alone and the statement
/// reaches the backend unchanged (the pull then refuses nothing it did not refuse before).
pub fn temp_qualified<'a>(config: &Config, sql: &'a str) -> std::borrow::Cow<'a, str> {
    use crate::scan::{Kind, Scanner};
    let fold = |text: &str| -> String {
        match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => text.to_ascii_lowercase(),
        }
    };
    let mut significant: Vec<(usize, &str, Kind)> = Vec::new();
    for token in Scanner::new(sql) {
        let Ok(token) = token else {
            return std::borrow::Cow::Borrowed(sql);
        };
        if token.kind != Kind::Blank {
            let offset = token.text.as_ptr() as usize - sql.as_ptr() as usize;
            significant.push((offset, token.text, token.kind));
        }
    }
    let is_word = |kind: Kind| matches!(kind, Kind::Word { .. });
    let mut schemas = Vec::new();
    for (i, window) in significant.windows(3).enumerate() {
        let [(offset, schema, schema_kind), (_, dot, _), (_, table, table_kind)] = window else {
            continue;
        };
        let qualified_itself = i > 0 && significant.get(i - 1).is_some_and(|t| t.1 == ".");
        let sharded = config
            .tables
            .get(&fold(table))
            .is_some_and(|rule| !matches!(rule.sharding, Sharding::Reference));
        if is_word(*schema_kind)
            && *dot == "."
            && is_word(*table_kind)
            && !qualified_itself
            && fold(schema) == "public"
            && sharded
        {
            schemas.push((*offset, schema.len()));
        }
    }
    if schemas.is_empty() {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut text = String::with_capacity(sql.len() + 8 * schemas.len());
    let mut from = 0;
    for (offset, len) in schemas {
        text.push_str(&sql[from..offset]);
        text.push_str("pg_temp");
        from = offset + len;
    }
    text.push_str(&sql[from..]);
    std::borrow::Cow::Owned(text)
}

/// For each table of the top-level `FROM` (by folded name): the name its columns are qualified
/// with and the conjunction of the `WHERE` conditions that may be pushed to its scan (see the
/// module documentation). Empty when the statement is not a plain `SELECT` or joins outward.
fn pushed_filters(sql: &str) -> BTreeMap<String, (String, String)> {
    let mut filters = BTreeMap::new();
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
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

/// An identifier folded as PostgreSQL folds it.
pub(crate) fn fold(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_yaml(
            "users: [{name: app, password: app}]
shards:
  - {name: s0, host: 127.0.0.1, port: 5432}
  - {name: s1, host: 127.0.0.1, port: 5433}
  - {name: s2, host: 127.0.0.1, port: 5434}
tables:
  - {name: users, sharding: hash, column: id, type: int8}
  - {name: orders, sharding: hash, column: user_id, type: int8, shards: [s0, s2]}
  - {name: audits, sharding: hash, column: id, type: int8, shards: [s1, s2]}
  - {name: countries, sharding: reference}
",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn narrowed_pulls_name_their_columns_on_both_sides() {
        let filtered = pulled_tables(
            &config(),
            "SELECT count(DISTINCT u.name) FROM users u WHERE u.id > 3",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let columns = ["id".to_owned(), "Name".to_owned()];
        assert_eq!(
            filtered[0].rows_of(Some(&columns)),
            "SELECT u.\"id\", u.\"Name\" FROM \"users\" AS u WHERE (u.id > 3)"
        );
        let whole = pulled_tables(
            &config(),
            "SELECT count(DISTINCT name) FROM users JOIN users b USING (id)",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            whole[0].rows_of(Some(&columns)),
            "SELECT \"id\", \"Name\" FROM \"users\""
        );
        assert_eq!(whole[0].rows(), "SELECT * FROM \"users\"");
        assert_eq!(
            whole[0].copy_in(Some(&columns)),
            "COPY \"users\" (\"id\", \"Name\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            whole[0].copy_in(None),
            "COPY \"users\" FROM STDIN (FORMAT binary)"
        );
    }

    fn rows(sql: &str) -> Vec<String> {
        pulled_tables(&config(), sql)
            .map(|tables| tables.iter().map(PulledTable::rows).collect())
            .unwrap_or_default()
    }

    #[test]
    fn conditions_on_one_table_alone_are_pushed_to_its_shards() {
        assert_eq!(
            rows("SELECT count(DISTINCT name) FROM users WHERE id BETWEEN 1 AND 5 AND name LIKE 'a%' AND lower(name) = 'x'"),
            vec![r#"SELECT users.* FROM "users" AS users WHERE (id BETWEEN 1 AND 5) AND (name LIKE 'a%')"#]
        );
        assert_eq!(
            rows("SELECT * FROM users u JOIN orders o ON o.total = u.id WHERE u.id IN (1, 2) AND o.total > 10 AND o.total > u.id"),
            vec![
                r#"SELECT o.* FROM "orders" AS o WHERE (o.total > 10)"#,
                r#"SELECT u.* FROM "users" AS u WHERE (u.id IN (1, 2))"#,
            ]
        );
    }

    #[test]
    fn nothing_is_pushed_where_it_could_change_the_answer() {
        let whole = vec![r#"SELECT * FROM "users""#.to_owned()];
        // Unqualified columns beside another table, outer joins, a second mention, subqueries,
        // functions, and anything not a plain SELECT.
        assert_eq!(
            rows("SELECT * FROM users u, countries c WHERE id = 1"),
            whole
        );
        assert_eq!(
            rows("SELECT * FROM countries c LEFT JOIN users u ON true WHERE u.id = 1"),
            whole
        );
        assert_eq!(
            rows("SELECT * FROM users u WHERE u.id = 1 AND u.id IN (SELECT id FROM users)"),
            whole
        );
        assert_eq!(rows("SELECT * FROM users WHERE id = random()::int"), whole);
        assert_eq!(rows("SELECT * FROM users WHERE id::text = '1'"), whole);
        assert_eq!(
            rows("SELECT * FROM users WHERE id < current_timestamp"),
            whole
        );
        assert_eq!(
            rows("WITH x AS (SELECT 1) SELECT * FROM users WHERE id = 1"),
            whole
        );
        assert_eq!(
            rows("SELECT id FROM users WHERE id = 1 UNION SELECT 2"),
            whole
        );
    }

    fn names(sql: &str) -> Result<Vec<(String, Vec<ShardId>)>, &'static str> {
        pulled_tables(&config(), sql)
            .map(|tables| tables.into_iter().map(|t| (t.name, t.shards)).collect())
            .map_err(|e| e.sqlstate)
    }

    #[test]
    fn every_sharded_table_named_is_pulled_from_its_shards() {
        assert_eq!(
            names("SELECT u.name, count(DISTINCT o.id) FROM users u JOIN orders o ON o.total = u.id JOIN countries c ON true GROUP BY 1"),
            Ok(vec![("orders".into(), vec![0, 2]), ("users".into(), vec![0, 1, 2])])
        );
    }

    #[test]
    fn column_qualifiers_are_fine_and_quoted_names_match_exactly() {
        assert_eq!(
            names("SELECT users.id, row_number() OVER () FROM \"users\""),
            Ok(vec![("users".into(), vec![0, 1, 2])])
        );
        assert_eq!(names("SELECT * FROM \"Users\""), Ok(vec![]));
    }

    #[test]
    fn words_inside_strings_and_comments_are_not_tables() {
        assert_eq!(
            names("SELECT 'users' /* orders */ FROM countries -- users"),
            Ok(vec![])
        );
    }

    #[test]
    fn a_table_the_default_shard_does_not_hold_is_refused() {
        assert_eq!(names("SELECT count(DISTINCT id) FROM audits"), Err("0A000"));
    }

    #[test]
    fn sharded_tables_in_schema_public_are_read_from_pg_temp_and_other_schemas_refused() {
        let read = names("SELECT count(DISTINCT id) FROM public.users");
        assert!(
            matches!(&read, Ok(tables) if tables.len() == 1 && tables[0].0 == "users"),
            "{read:?}"
        );
        assert_eq!(
            names("SELECT count(DISTINCT id) FROM sales.users"),
            Err("0A000")
        );
        assert_eq!(names("SELECT * FROM public.countries"), Ok(vec![]));
        assert_eq!(
            names("SELECT count(DISTINCT id) FROM public.U&\"users\""),
            Err("0A000")
        );
        let config = config();
        for (sql, read) in [
            (
                "SELECT public.users.id, count(DISTINCT o.id) FROM \"public\".\"users\" JOIN public . orders o ON o.user_id = users.id GROUP BY 1",
                "SELECT pg_temp.users.id, count(DISTINCT o.id) FROM pg_temp.\"users\" JOIN pg_temp . orders o ON o.user_id = users.id GROUP BY 1",
            ),
            // Strings, comments, reference tables and other qualifiers stay as written.
            (
                "SELECT 'public.users' /* public.users */, u.users FROM public.countries, users u",
                "SELECT 'public.users' /* public.users */, u.users FROM public.countries, users u",
            ),
        ] {
            assert_eq!(super::temp_qualified(&config, sql), read);
        }
    }
}
