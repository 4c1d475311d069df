//! The pull-up plan of a read the proxy's merge cannot answer (window functions,
//! `count(DISTINCT …)`, joins of tables that are not co-located, …): the rows of every sharded
//! table it reads are copied into temporary tables of the same names on one backend, where
//! PostgreSQL runs the statement unchanged. An unqualified table name resolves to a temporary
//! table first (`pg_temp` is searched before any other schema), so the statement's own text
//! reads the pulled rows and the answer is exactly PostgreSQL's.
//!
//! This module only decides which tables to pull: every sharded table the text names (a
//! superset is harmless: a table pulled for nothing costs time, not correctness). A name
//! written with a schema (`public.users`) would bypass the temporary table and read one
//! shard's rows, so such statements are refused.

use std::collections::BTreeSet;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::config::{Config, ShardId, Sharding};
use crate::plan::RouteError;
use crate::sqlstate;

/// One table whose rows a pull-up copies into the backend that runs the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledTable {
    /// The table's name as the config knows it (unqualified, folded).
    pub name: String,
    /// The shards holding its rows.
    pub shards: Vec<ShardId>,
}

/// The sharded tables `sql` reads, for a pull-up; an error when it cannot be pulled up.
pub fn pulled_tables(config: &Config, sql: &str) -> Result<Vec<PulledTable>, RouteError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| RouteError::new(sqlstate::SYNTAX_ERROR, e.to_string()))?;
    let mut names = BTreeSet::new();
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
                    if after_period {
                        return Err(RouteError::new(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!(
                                "this read needs the rows of sharded table {name} gathered in one place, which works only when the table is named without its schema; write {name} instead of a qualified name"
                            ),
                        ));
                    }
                    names.insert(name);
                }
            }
        }
        after_period = matches!(token, Token::Period);
    }
    let all = config.shards.len();
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let shards = config.tables.get(&name)?.shards(all);
            Some(PulledTable { name, shards })
        })
        .collect())
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
  - {name: orders, sharding: hash, column: user_id, type: int8, shards: [s1, s2]}
  - {name: countries, sharding: reference}
",
        )
        .unwrap_or_else(|e| panic!("{e}"))
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
            Ok(vec![("orders".into(), vec![1, 2]), ("users".into(), vec![0, 1, 2])])
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
    fn a_schema_qualified_sharded_table_is_refused() {
        assert_eq!(
            names("SELECT count(DISTINCT id) FROM public.users"),
            Err("0A000")
        );
        assert_eq!(names("SELECT * FROM public.countries"), Ok(vec![]));
    }
}
