//! Asking the backend that runs a pull-up which columns of the pulled tables its statement
//! reads (`shardline_router::narrow` says how and why it is exact), so the other shards send
//! only those.

use std::collections::BTreeMap;

use bytes::BytesMut;
use shardline_router::ident::quote_ident;
use shardline_router::narrow::{self, Dependency};
use shardline_router::pull::PulledTable;

use crate::backend::pool::Pooled;
use crate::context::Loaded;
use crate::protocol::backend::tag;
use crate::protocol::Frame;
use crate::session::link::attach::drain_to_ready;
use crate::session::multi::ordered::field;
use crate::session::multi::pull::{read_answer, read_from};
use crate::session::{local, ClientError, Session};

/// The columns of `tables` that `statement` reads, asked of `conn` (shard `name`), where the
/// pulled tables already exist inside the pull's transaction; `None` when whole rows must move
/// (also when a view cannot hold the statement: the probe's error is not the client's). The
/// probe's savepoint is taken and given back in queries of their own, so the pull's
/// transaction comes back as it was whatever the probe's text does; if even that fails, the
/// backend is not trusted again.
pub(super) async fn columns_read(
    conn: &mut Pooled,
    name: &str,
    statement: &str,
    tables: &[PulledTable],
) -> Result<Option<BTreeMap<String, Vec<String>>>, ClientError> {
    let encoding = conn.client_encoding();
    let Ok(probe) = local::query_message_in(encoding, &narrow::probe_sql(statement)) else {
        return Ok(None);
    };
    let mut out = BytesMut::from(&local::query_message(narrow::PROBE_START)[..]);
    out.extend_from_slice(&probe);
    out.extend_from_slice(&local::query_message(narrow::PROBE_END));
    conn.send(&out)
        .await
        .map_err(|e| ClientError::lost_shard(name, e))?;
    let started = read_answer(conn, name).await;
    let mut found = Some(Vec::new());
    loop {
        let frame = read_from(conn, name).await?;
        match frame.tag() {
            tag::DATA_ROW => {
                let dependency = dependency(&frame, |bytes| {
                    encoding.decode(bytes).ok().map(|text| text.into_owned())
                });
                match (dependency, found.as_mut()) {
                    (Some(dependency), Some(found)) => found.push(dependency),
                    _ => found = None,
                }
            }
            tag::ERROR_RESPONSE => {
                tracing::debug!(shard = %name, "the column probe failed; the pull moves whole rows");
                found = None;
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    let ended = read_answer(conn, name).await;
    if let Err(error) = started.and(ended) {
        // The pull's transaction is not what it was.
        conn.broken = true;
        return Err(error);
    }
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    Ok(found.and_then(|found| narrow::columns_read(&names, &found)))
}

/// One row of the probe's answer (kind, table, column, temporary).
fn dependency(frame: &Frame, text: impl Fn(&[u8]) -> Option<String>) -> Option<Dependency> {
    // A value the session's encoding cannot decode fails the whole row, never reads as NULL.
    let column = |i| match field(frame, i)? {
        Some(bytes) => text(bytes).map(Some),
        None => Some(None),
    };
    Some(Dependency {
        kind: column(0)??,
        table: column(1)?,
        column: column(2)?,
        temporary: column(3)?.map(|flag| flag == "t"),
    })
}

impl Session {
    /// The columns a pull-up of `tables` for `statement` (as the backend will read it) would
    /// move, for `EXPLAIN (ROUTE)`: asked of the default shard over empty stand-ins of the
    /// pulled tables, in a transaction of its own that is rolled back. `None` when whole rows
    /// would move or it cannot tell.
    pub(crate) async fn explained_columns(
        &self,
        loaded: &Loaded,
        tables: &[PulledTable],
        statement: &str,
    ) -> Option<BTreeMap<String, Vec<String>>> {
        let shard = loaded.config.default_shard;
        let mut conn = self.introspection_backend(loaded, shard).await?;
        let name = self.shard_names(&[shard]);
        let mut create = String::from("BEGIN;");
        for table in tables {
            let quoted = quote_ident(&table.name);
            create.push_str(&format!(
                "CREATE TEMP TABLE {quoted} ON COMMIT DROP AS SELECT * FROM {quoted} LIMIT 0;"
            ));
        }
        let mut columns = None;
        if conn.send(&local::query_message(&create)).await.is_ok() {
            let created = read_answer(&mut conn, &name).await.is_ok();
            if created {
                columns = columns_read(&mut conn, &name, statement, tables)
                    .await
                    .ok()
                    .flatten();
            }
            let rolled_back = !conn.broken
                && conn.send(&local::query_message("ROLLBACK")).await.is_ok()
                && drain_to_ready(&mut conn).await;
            conn.broken |= !rolled_back;
        }
        columns
    }
}
