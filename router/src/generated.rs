//! `INSERT`s that leave the shard key to the table's default (a `serial`/`bigserial` or
//! identity column, a `nextval()` or `gen_random_uuid()` default).
//!
//! Each shard's own sequence would hand out the same numbers on every shard, and the row could
//! not be routed before it has a key, so the proxy chooses the key: it finds such an `INSERT`
//! here ([`keyless_insert`]), obtains one key per row, and rewrites the statement to carry them
//! ([`KeylessInsert::with_keys`]); the rewritten statement is then routed like any other. Pure
//! functions: where the keys come from is the proxy's business.

use sqlparser::ast::{Expr, Ident, ObjectName, SetExpr, Statement, TableObject};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::config::Config;
use crate::key::KeyType;

/// An `INSERT` into a sharded table that leaves its shard key to the column's default: the
/// column list leaves it out, `VALUES` rows say `DEFAULT` for it, or `DEFAULT VALUES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessInsert {
    /// The table as `shards.yaml` names it.
    pub table: String,
    pub key_column: String,
    pub key_type: KeyType,
    /// Rows that need a key: one key each.
    pub rows: usize,
    /// The highest `$n` the statement uses: the keys, when passed as parameters, come after.
    pub params: usize,
    statement: Statement,
    shape: Shape,
}

/// Where the generated keys go in the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// A new first column, first in every row.
    Omitted,
    /// In place of `DEFAULT` at `position`, in these rows.
    Defaults { position: usize, rows: Vec<usize> },
    /// `DEFAULT VALUES`: a one-column, one-row `VALUES` list.
    DefaultValues,
}

/// How the rewritten statement carries each row's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysAs<'a> {
    /// SQL literals (the simple protocol): the keys themselves.
    Literals(&'a [String]),
    /// Parameters `$after+1 …` (the extended protocol): the proxy binds the keys to them at
    /// each execution, so one prepared statement serves every execution. `after` is at least
    /// [`KeylessInsert::params`] (more when the client declared more parameter types).
    Parameters { after: usize },
}

/// The `INSERT` in `sql` when it leaves out the shard key of a sharded table; `None` for
/// anything else (which routes, or is refused, as before).
pub fn keyless_insert(config: &Config, sql: &str) -> Option<KeylessInsert> {
    let mut statements = crate::analyze::parse(sql)?;
    if statements.len() != 1 {
        return None;
    }
    let statement = statements.pop()?;
    let Statement::Insert(insert) = &statement else {
        return None;
    };
    let TableObject::TableName(name) = &insert.table else {
        return None;
    };
    let rule = config.table(&name.0.last()?.as_ident()?.value)?;
    let table = rule.name.clone();
    let key_column = rule.key_column()?.to_owned();
    let key_type = rule.key_type()?;
    let (rows, shape) = match insert.source.as_ref() {
        None if insert.columns.is_empty() => (1, Shape::DefaultValues),
        None => return None,
        Some(source) => {
            let SetExpr::Values(values) = source.body.as_ref() else {
                return None;
            };
            if source.with.is_some() || insert.columns.is_empty() {
                return None;
            }
            match key_position(&insert.columns, &key_column) {
                None => (values.rows.len(), Shape::Omitted),
                Some(position) => {
                    let rows: Vec<usize> = (0..values.rows.len())
                        .filter(|&i| values.rows[i].get(position).is_some_and(is_default))
                        .collect();
                    if rows.is_empty() {
                        return None;
                    }
                    (rows.len(), Shape::Defaults { position, rows })
                }
            }
        }
    };
    Some(KeylessInsert {
        table,
        key_column,
        key_type,
        rows,
        params: highest_placeholder(sql),
        statement,
        shape,
    })
}

impl KeylessInsert {
    /// The statement with the shard key first in its column list and each row's key first in
    /// the row; `overriding` adds `OVERRIDING SYSTEM VALUE` (a `GENERATED ALWAYS` identity
    /// column takes no value otherwise).
    pub fn with_keys(&self, keys: KeysAs<'_>, overriding: bool) -> Option<String> {
        if let KeysAs::Literals(keys) = keys {
            if keys.len() != self.rows {
                return None;
            }
        }
        let key = |i: usize| -> Option<Expr> {
            let text = match keys {
                KeysAs::Literals(keys) => self.literal(keys.get(i)?)?,
                KeysAs::Parameters { after } => format!("${}", after.max(self.params) + i + 1),
            };
            Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&text)
                .ok()?
                .parse_expr()
                .ok()
        };
        let mut statement = self.statement.clone();
        let Statement::Insert(insert) = &mut statement else {
            return None;
        };
        let column = ObjectName::from(vec![Ident::new(&self.key_column)]);
        match &self.shape {
            Shape::Omitted => {
                insert.columns.insert(0, column);
                for (i, row) in values_of(insert)?.rows.iter_mut().enumerate() {
                    row.insert(0, key(i)?);
                }
            }
            Shape::Defaults { position, rows } => {
                let values = values_of(insert)?;
                for (i, &row) in rows.iter().enumerate() {
                    *values.rows.get_mut(row)?.get_mut(*position)? = key(i)?;
                }
            }
            Shape::DefaultValues => {
                insert.columns = vec![column];
                let template = format!("INSERT INTO t (k) VALUES ({})", key(0)?);
                let Statement::Insert(template) =
                    Parser::parse_sql(&PostgreSqlDialect {}, &template)
                        .ok()?
                        .pop()?
                else {
                    return None;
                };
                insert.source = template.source;
            }
        }
        let columns = columns_text(&insert.columns);
        let mut sql = statement.to_string();
        if overriding {
            // sqlparser does not model OVERRIDING; it goes right after the column list.
            let list = format!("({columns}) VALUES");
            let at = sql.find(&list)? + columns.len() + 2;
            sql.insert_str(at, " OVERRIDING SYSTEM VALUE");
        }
        Some(sql)
    }

    /// A key as an SQL literal of the key's type.
    fn literal(&self, key: &str) -> Option<String> {
        match self.key_type {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => {
                key.parse::<i64>().ok().map(|k| k.to_string())
            }
            KeyType::Uuid | KeyType::Text => (!key.contains('\'')).then(|| format!("'{key}'")),
        }
    }
}

/// Where `columns` names `column`.
fn key_position(columns: &[ObjectName], column: &str) -> Option<usize> {
    columns.iter().position(|c| {
        c.0.last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case(column))
    })
}

/// `DEFAULT` as a `VALUES` item.
fn is_default(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The `VALUES` list of an `INSERT`.
fn values_of(insert: &mut sqlparser::ast::Insert) -> Option<&mut sqlparser::ast::Values> {
    match insert.source.as_mut()?.body.as_mut() {
        SetExpr::Values(values) => Some(values),
        _ => None,
    }
}

/// A column list as sqlparser prints it.
fn columns_text(columns: &[ObjectName]) -> String {
    columns
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The highest `$n` placeholder in `sql` (0 when there is none), read from its tokens.
fn highest_placeholder(sql: &str) -> usize {
    let Ok(tokens) = sqlparser::tokenizer::Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize()
    else {
        return 0;
    };
    tokens
        .iter()
        .filter_map(|t| match t {
            sqlparser::tokenizer::Token::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let yaml = "users: [{name: app, password: app}]\nshards: [{name: s0, port: 1}, {name: s1, port: 2}]\ntables:\n  - {name: users, sharding: hash, column: id}\n  - {name: devices, sharding: hash, column: id, type: uuid}\n  - {name: countries, sharding: reference}\n";
        match Config::from_yaml(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn an_insert_without_the_key_gets_one_per_row() {
        let config = config();
        let sql = "INSERT INTO users (name, note) VALUES ('a', $1), ('b', $2) RETURNING id";
        let keyless = keyless_insert(&config, sql);
        let Some(keyless) = keyless else {
            panic!("not found");
        };
        assert_eq!((keyless.rows, keyless.params), (2, 2));
        assert_eq!(
            keyless.with_keys(KeysAs::Parameters { after: 0 }, false).as_deref(),
            Some("INSERT INTO users (id, name, note) VALUES ($3, 'a', $1), ($4, 'b', $2) RETURNING id")
        );
        let keys = ["101".to_owned(), "102".to_owned()];
        assert_eq!(
            keyless.with_keys(KeysAs::Literals(&keys), true).as_deref(),
            Some("INSERT INTO users (id, name, note) OVERRIDING SYSTEM VALUE VALUES (101, 'a', $1), (102, 'b', $2) RETURNING id")
        );
    }

    #[test]
    fn default_in_values_and_default_values_take_keys() {
        let config = config();
        let sql = "INSERT INTO users (id, name) VALUES (DEFAULT, 'a'), (7, 'b'), (default, 'c') RETURNING id";
        let keyless = keyless_insert(&config, sql);
        let Some(keyless) = keyless else {
            panic!("DEFAULT keys not found");
        };
        assert_eq!(keyless.rows, 2);
        let keys = ["101".to_owned(), "102".to_owned()];
        assert_eq!(
            keyless.with_keys(KeysAs::Literals(&keys), false).as_deref(),
            Some(
                "INSERT INTO users (id, name) VALUES (101, 'a'), (7, 'b'), (102, 'c') RETURNING id"
            )
        );
        let keyless = keyless_insert(&config, "INSERT INTO users DEFAULT VALUES RETURNING id");
        let Some(keyless) = keyless else {
            panic!("DEFAULT VALUES not found");
        };
        assert_eq!(
            keyless
                .with_keys(KeysAs::Parameters { after: 0 }, true)
                .as_deref(),
            Some("INSERT INTO users (id) OVERRIDING SYSTEM VALUE VALUES ($1) RETURNING id")
        );
    }

    #[test]
    fn uuid_keys_are_quoted_literals() {
        let config = config();
        let keyless = keyless_insert(&config, "INSERT INTO devices (name) VALUES ('d')");
        let key = ["0190c6a0-0000-7000-8000-000000000001".to_owned()];
        assert_eq!(
            keyless.and_then(|k| k.with_keys(KeysAs::Literals(&key), false)).as_deref(),
            Some("INSERT INTO devices (id, name) VALUES ('0190c6a0-0000-7000-8000-000000000001', 'd')")
        );
    }

    #[test]
    fn statements_that_name_the_key_or_are_not_sharded_inserts_are_left_alone() {
        let config = config();
        for sql in [
            "INSERT INTO users (id, name) VALUES (1, 'a')",
            "INSERT INTO users VALUES (1, 'a')",
            "INSERT INTO countries (name) VALUES ('x')",
            "INSERT INTO users (name) SELECT name FROM staging",
            "SELECT 1",
            "INSERT INTO users (name) VALUES ('a'); SELECT 1",
        ] {
            assert_eq!(keyless_insert(&config, sql), None, "{sql}");
        }
    }
}
