//! The columns a pull-up moves: the router knows which names the statement may read columns
//! by (`PulledTable::may_narrow`); the backend that runs the statement says which columns each
//! table has, in order, and each table is pulled with the columns both lists share (see
//! `shardline_router::pull::PulledTable::rows_of`).

use shardline_router::pull::PulledTable;

use crate::backend::pool::Pooled;
use crate::session::multi::dual::query_rows;
use crate::session::state::settings::quote_literal;
use crate::session::ClientError;

/// The query that pulls each of `tables`' rows (in the same order), narrowed to the columns
/// the statement may read; `conn` is the backend that runs the statement, `shard` its name.
/// Run before the temporary tables exist, so each name still means the real table.
pub(crate) async fn pull_queries(
    conn: &mut Pooled,
    shard: &str,
    tables: &[PulledTable],
) -> Result<Vec<String>, ClientError> {
    let narrowing: Vec<String> = tables
        .iter()
        .filter(|t| t.may_narrow())
        .map(|t| quote_literal(&t.name))
        .collect();
    if narrowing.is_empty() {
        return Ok(tables.iter().map(|t| t.rows.clone()).collect());
    }
    let sql = format!(
        "SELECT t, a.attname::text FROM unnest(ARRAY[{}]::text[]) AS t, pg_attribute a \
         WHERE a.attrelid = quote_ident(t)::regclass AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY t, a.attnum",
        narrowing.join(", ")
    );
    let rows = query_rows(conn, shard, &sql).await?;
    Ok(tables
        .iter()
        .map(|table| {
            let columns: Vec<String> = rows
                .iter()
                .filter(|row| row.first().and_then(Option::as_deref) == Some(table.name.as_str()))
                .filter_map(|row| row.get(1).cloned().flatten())
                .collect();
            table.rows_of(&columns)
        })
        .collect())
}
