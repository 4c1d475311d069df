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
//! instead ([`temp_qualified`]); a name in any other schema is refused.
//!
//! It also decides which rows (`filters.rs`): a table named once, in the top-level `FROM` of a
//! plain `SELECT` with no outer join, is pulled through the `WHERE` conditions that read only
//! its own columns with nothing but operators and constants (no function, no subquery):
//! dropping rows that fail such a condition cannot change the answer, since the statement
//! still applies every condition itself.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::config::{Config, ShardId, Sharding};
use crate::ident::quote_ident;
use crate::plan::RouteError;
use crate::sqlstate;
use filters::pushed_filters;

mod filters;

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
