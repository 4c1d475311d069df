//! Splitting a multi-row `INSERT … VALUES` whose rows belong to different shards into one
//! `INSERT` per shard, each carrying only that shard's rows.
//!
//! The split is computed from the statement itself, never guessed: the target must be a
//! sharded table, the column list must name the shard key, and every row's key must be a
//! literal or a bound parameter. Anything else (`INSERT … SELECT`, CTEs, keys computed by
//! expressions) is left to the router's normal answer. Each part keeps only the parameters its
//! rows use, renumbered. Running the parts atomically is the proxy's job (two-phase commit).

use std::collections::BTreeMap;

use sqlparser::ast::{SetExpr, Statement};

use crate::analyze::value::{key_value, KeyExpr};
use crate::config::{Config, ShardId};
use crate::params::{Param, Params};
use crate::placeholders::ShardStatement;
use crate::plan::RouteError;
use crate::sqlstate;

/// The rows of a split `INSERT` that go to one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPart {
    pub shard: ShardId,
    /// An `INSERT` with only this shard's rows (same columns, `ON CONFLICT`, `RETURNING`) and
    /// the client parameters those rows use.
    pub statement: ShardStatement,
    /// Which rows of the client's `VALUES` list (0-based, in order) the part inserts.
    pub rows: Vec<usize>,
    /// The statement has a `RETURNING` clause (answers with rows).
    pub returning: bool,
}

/// Splits `sql` by shard, reading parameter keys from `params`. `None` when the statement is
/// not a multi-row `INSERT` this module can split (the router's own route or error then
/// applies); an error when a row cannot be placed (NULL key, bad value, key outside every
/// range).
pub fn split_insert(
    config: &Config,
    sql: &str,
    params: &dyn Params,
) -> Option<Result<Vec<InsertPart>, RouteError>> {
    let (insert, name) = crate::analyze::sole_insert(sql)?;
    let table = name.0.last()?.as_ident()?.value.clone();
    let rule = config.table(&table)?;
    let key_column = rule.key_column()?;
    let key_type = rule.key_type()?;
    let source = insert.source.as_ref()?;
    if source.with.is_some() || source.order_by.is_some() || source.limit_clause.is_some() {
        return None;
    }
    let SetExpr::Values(values) = source.body.as_ref() else {
        return None;
    };
    if values.rows.len() < 2 {
        return None;
    }
    let position = insert.columns.iter().position(|c| {
        c.0.last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case(key_column))
    })?;

    let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
    for (index, row) in values.rows.iter().enumerate() {
        let null_key = || {
            RouteError::new(
                sqlstate::NOT_NULL_VIOLATION,
                format!("row {} of the INSERT has a NULL shard key {table}.{key_column}; every row needs a key", index + 1),
            )
        };
        let key = match row.get(position).and_then(key_value)? {
            KeyExpr::Literal(text) => key_type.parse_text(&text),
            KeyExpr::Param(i) => match params.get(i)? {
                Param::Text(text) => match std::str::from_utf8(text) {
                    Ok(text) => key_type.parse_text(text),
                    Err(_) => {
                        return Some(Err(RouteError::new(
                            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                            format!("parameter ${} is not valid UTF-8", i + 1),
                        )))
                    }
                },
                Param::Binary(bytes) => key_type.parse_binary(bytes),
                Param::Null => return Some(Err(null_key())),
            },
            KeyExpr::Null => return Some(Err(null_key())),
            KeyExpr::Invalid(reason) => {
                return Some(Err(RouteError::new(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    reason,
                )))
            }
            KeyExpr::ParamArray(_) => return None,
        };
        let shard = key
            .map_err(|e| RouteError::new(sqlstate::INVALID_TEXT_REPRESENTATION, e.to_string()))
            .and_then(|key| {
                rule.shard_for(&key)
                    .map_err(|e| RouteError::new(sqlstate::INVALID_PARAMETER_VALUE, e.to_string()))
            });
        match shard {
            Ok(shard) => by_shard.entry(shard).or_default().push(index),
            Err(e) => return Some(Err(e)),
        }
    }
    let parts = by_shard
        .into_iter()
        .map(|(shard, rows)| {
            let mut part = insert.clone();
            if let Some(source) = part.source.as_mut() {
                if let SetExpr::Values(values) = source.body.as_mut() {
                    let all = std::mem::take(&mut values.rows);
                    values.rows = all
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| rows.contains(i))
                        .map(|(_, row)| row)
                        .collect();
                }
            }
            Some(InsertPart {
                shard,
                statement: ShardStatement::renumbered(&Statement::Insert(part).to_string())?,
                rows,
                returning: insert.returning.is_some(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Ok(parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyValue;

    fn config() -> Config {
        let yaml = "users: [{name: app, password: app}]\nshards: [{name: s0, port: 1}, {name: s1, port: 2}, {name: s2, port: 3}]\ntables:\n  - {name: users, sharding: hash, column: id}\n  - {name: countries, sharding: reference}\n";
        match Config::from_yaml(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn rows_go_to_their_shards_and_nothing_is_lost() {
        let config = config();
        let rule = config.table("users").cloned();
        let ids: Vec<i64> = (1..=30).collect();
        let values: Vec<String> = ids.iter().map(|i| format!("({i}, 'u{i}')")).collect();
        let sql = format!(
            "INSERT INTO users (id, name) VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
            values.join(", ")
        );
        let parts = match split_insert(&config, &sql, &()) {
            Some(Ok(parts)) => parts,
            other => panic!("not split: {other:?}"),
        };
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for part in &parts {
            let sql = &part.statement.sql;
            assert!(sql.ends_with("DO NOTHING RETURNING id"), "{sql}");
            let reparsed = crate::analyze::parse_repaired(sql).map(|s| s.len());
            assert_eq!(reparsed, Some(1));
            for id in &ids {
                if sql.contains(&format!("({id}, 'u{id}')")) {
                    let shard = rule.as_ref().map(|r| r.shard_for(&KeyValue::Int(*id)));
                    assert_eq!(shard, Some(Ok(part.shard)), "id {id}");
                    seen.push(*id);
                }
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, ids);
        assert_eq!(parts.iter().map(|p| p.rows.len()).sum::<usize>(), ids.len());
    }

    #[test]
    fn parameter_keys_split_with_their_parameters_renumbered() {
        let config = config();
        let rule = config.table("users").cloned();
        let ids: Vec<i64> = (1..=12).collect();
        let rows: Vec<String> = (0..ids.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!("INSERT INTO users (id, name) VALUES {}", rows.join(", "));
        let keys: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let names: Vec<String> = ids.iter().map(|id| format!("u{id}")).collect();
        let params: Vec<Param<'_>> = keys
            .iter()
            .zip(&names)
            .flat_map(|(k, n)| [Param::Binary(k), Param::Text(n.as_bytes())])
            .collect();
        let parts = match split_insert(&config, &sql, &params) {
            Some(Ok(parts)) => parts,
            other => panic!("not split: {other:?}"),
        };
        let mut seen = Vec::new();
        for part in &parts {
            assert_eq!(part.statement.params.len(), 2 * part.rows.len());
            for pair in part.statement.params.chunks(2) {
                let id = ids[pair[0] / 2];
                assert_eq!(pair[1], pair[0] + 1);
                let shard = rule.as_ref().map(|r| r.shard_for(&KeyValue::Int(id)));
                assert_eq!(shard, Some(Ok(part.shard)), "id {id}");
                seen.push(id);
            }
            let last = format!("${}", part.statement.params.len());
            assert!(
                part.statement.sql.ends_with(&format!("{last})")),
                "{}",
                part.statement.sql
            );
        }
        seen.sort_unstable();
        assert_eq!(seen, ids);
    }

    #[test]
    fn only_multi_row_inserts_with_plain_keys_split() {
        let config = config();
        for sql in [
            "INSERT INTO users (id, name) VALUES (1, 'a')",
            "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')",
            "INSERT INTO users (id, name) VALUES ($1 + 1, 'a'), (2, 'b')",
            "INSERT INTO users (id, name) SELECT 1, 'a'",
            "INSERT INTO countries (code) VALUES ('a'), ('b')",
            "WITH x AS (SELECT 1) INSERT INTO users (id) VALUES (1), (2)",
            "not sql at all",
        ] {
            assert_eq!(split_insert(&config, sql, &()), None, "{sql}");
        }
        let null = split_insert(
            &config,
            "INSERT INTO users (id, name) VALUES (1, 'a'), (NULL, 'b')",
            &(),
        );
        assert!(
            matches!(
                null,
                Some(Err(RouteError {
                    sqlstate: "23502",
                    ..
                }))
            ),
            "{null:?}"
        );
    }
}
