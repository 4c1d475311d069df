//! Route introspection: where would a statement go, and why — without running it.
//!
//! `EXPLAIN (ROUTE) <statement>` answers with one row: the shards and the router's reasoning.
//! It reads like PostgreSQL's own `EXPLAIN (option) …`, which PostgreSQL would reject for the
//! unknown option `ROUTE`, so it never shadows a real command. With the session setting
//! `shardline.show_route` on (`SET shardline.show_route = on`; PostgreSQL accepts dotted custom
//! settings), every simple-protocol statement is preceded by a NOTICE naming its shards.

use std::collections::BTreeMap;

use bytes::Bytes;
use shardline_router::generated::KeylessInsert;
use shardline_router::insert_select::InsertSelect;
use shardline_router::pull::{self, PulledTable};
use shardline_router::{Config, Param, Params, Plan, Route};

use crate::admin::table::{Reply, Table};
use crate::context::{LastShape, Loaded};
use crate::keys::KeyDefault;
use crate::protocol::backend as msg;
use crate::session::decide::{self, shard_names, Action, Target};
use crate::session::{ClientError, Session};

/// The statement inside `EXPLAIN (ROUTE) …`, if `sql` is one: a cheap check made before any
/// future is built, since nearly no query is one.
pub(crate) fn explained_statement(sql: &str) -> Option<&str> {
    let rest = strip_word(sql.trim_start(), "explain")?.trim_start();
    let rest = rest.strip_prefix('(')?.trim_start();
    let rest = strip_word(rest, "route")?.trim_start();
    Some(rest.strip_prefix(')')?.trim_start())
}

/// `text` without a leading case-insensitive `word`.
fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let head = text.get(..word.len())?;
    head.eq_ignore_ascii_case(word).then(|| &text[word.len()..])
}

/// How the keys of an `INSERT` that leaves them out are made.
fn generated_explanation(keyless: &KeylessInsert, default: KeyDefault) -> String {
    let (table, column) = (&keyless.table, &keyless.key_column);
    let source = match default {
        KeyDefault::Uuid => "a version 7 UUID made by the proxy",
        _ => "the next key of the proxy's block of shardline.key_blocks",
    };
    format!(
        "{table}.{column} is left to its default: shardline generates each row's key ({source}) and routes the row by it ({} row{})",
        keyless.rows,
        if keyless.rows == 1 { "" } else { "s" }
    )
}

/// How a pull-up answers a read: which tables' rows are gathered from which shards, and why.
fn pull_explanation(
    config: &Config,
    tables: &[PulledTable],
    columns: Option<BTreeMap<String, Vec<String>>>,
    estimate: Option<u64>,
    refusal: &ClientError,
) -> String {
    let pulled: Vec<String> = tables
        .iter()
        .map(|t| {
            let narrowed = columns.as_ref().and_then(|c| c.get(&t.name));
            format!(
                "{} from {} ({})",
                t.name,
                shard_names(config, &t.shards),
                t.rows_of(narrowed.map(Vec::as_slice))
            )
        })
        .collect();
    let estimate = estimate.map_or_else(
        || "the shards gave no estimate".to_owned(),
        |rows| format!("the shards estimate {rows} rows"),
    );
    format!(
        "pull-up: the rows of {} copied into temporary tables of the same names on {}, where PostgreSQL runs the statement as written ({estimate}; at most max_pull_rows = {} move; inside a transaction block the rows are read through its backends, its writes included); the merge alone cannot answer it: {}",
        pulled.join(", "),
        shard_names(config, &[config.default_shard]),
        config.max_pull_rows,
        refusal.message
    )
}

/// How an `INSERT … SELECT` into a sharded table runs: where the `SELECT` runs, what it
/// pulls, and where its rows go.
fn insert_select_explanation(config: &Config, plan: &InsertSelect) -> String {
    let pulled = if plan.pulled.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = plan.pulled.iter().map(|t| t.name.as_str()).collect();
        format!(" after pulling the rows of {} there", names.join(", "))
    };
    format!(
        "INSERT … SELECT: the SELECT runs on {}{pulled} into a staging table shaped like {}; its rows are loaded into {} by each row's {} as a routed COPY and commit on every shard or none (outside transaction blocks)",
        shard_names(config, &[config.default_shard]),
        plan.spec.table,
        plan.spec.table,
        plan.spec.rule.key_column().unwrap_or("key"),
    )
}

/// Shard names of a route.
fn route_names(config: &Config, route: &Route) -> String {
    match route {
        Route::Single(shard) => shard_names(config, &[*shard]),
        Route::Multi(shards) => shard_names(config, shards),
    }
}

impl Session {
    /// The answer to `EXPLAIN (ROUTE) <statement>` (see [`explained_statement`]).
    pub(crate) async fn explain_route(&self, loaded: &Loaded, statement: &str) -> Bytes {
        let mut shape = LastShape::default();
        let (plan, literals) = self.ctx.plan_simple(loaded, statement, &mut shape);
        let params: Vec<Param<'_>> = literals.iter().map(|l| Param::Text(l.as_bytes())).collect();
        let mut table = Table::new(&["shards", "explanation"]).with_tag("EXPLAIN");
        if let Ok(Some((keyless, default))) = self.keyless(loaded, &plan, statement).await {
            let all: Vec<_> = loaded.config.all_shards().collect();
            let shards = shard_names(&loaded.config, &all);
            table.push(vec![
                format!("one of {shards}, by each row's key"),
                generated_explanation(&keyless, default),
            ]);
            return Reply::Table(table).encode();
        }
        match decide::route(loaded, &plan, statement, &params) {
            Ok((Target::Pull { tables, refusal }, _)) => {
                let default = loaded.config.default_shard;
                let estimate = self.estimated_pull(loaded, &tables).await;
                let gathered = pull::temp_qualified(&loaded.config, statement);
                let columns = self.explained_columns(loaded, &tables, &gathered).await;
                table.push(vec![
                    format!(
                        "{} (rows gathered there)",
                        shard_names(&loaded.config, &[default])
                    ),
                    pull_explanation(&loaded.config, &tables, columns, estimate, &refusal),
                ]);
                return Reply::Table(table).encode();
            }
            Ok((Target::InsertSelect(insert), _)) => {
                let shards = insert.spec.rule.shards(loaded.config.shards.len());
                table.push(vec![
                    shard_names(&loaded.config, &shards),
                    insert_select_explanation(&loaded.config, &insert),
                ]);
                return Reply::Table(table).encode();
            }
            _ => {}
        }
        let shards = match plan.route(&loaded.config, &params) {
            Ok(route) => route_names(&loaded.config, &route),
            Err(e) => format!("error {}", e.sqlstate),
        };
        table.push(vec![shards, plan.explain(&loaded.config, &params)]);
        Reply::Table(table).encode()
    }

    /// A NOTICE naming the shards `action` runs a statement on, when the client asked for
    /// them.
    pub(crate) fn route_notice(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        action: &Action<'_>,
        params: &dyn Params,
    ) -> Option<Bytes> {
        if !self.settings.show_route() {
            return None;
        }
        let shards = action.shards()?;
        Some(msg::notice(&format!(
            "shardline: {} ({})",
            shard_names(&loaded.config, &shards),
            plan.explain(&loaded.config, params)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_explain_route_only() {
        assert_eq!(
            explained_statement("EXPLAIN (ROUTE) SELECT 1"),
            Some("SELECT 1")
        );
        assert_eq!(
            explained_statement("  explain ( route )select 1"),
            Some("select 1")
        );
        assert_eq!(explained_statement("EXPLAIN SELECT 1"), None);
        assert_eq!(explained_statement("EXPLAIN (ANALYZE) SELECT 1"), None);
        assert_eq!(explained_statement("EXPLAIN (ROUTED) SELECT 1"), None);
    }
}
