//! `COPY … FROM STDIN` into a sharded table: every shard holding the table runs the same COPY
//! inside a transaction, and each row of the client's stream goes to the shard that owns its
//! key. The shards' transactions commit together with two-phase commit, so the COPY loads all
//! of its rows or none, as on one server. The rows of an `INSERT … SELECT` take the same way,
//! streamed from the backend that ran the `SELECT` instead of the client ([`RowSource`]).

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use shardline_router::copy::CopyInto;
use shardline_router::insert_select::Apply;
use shardline_router::ShardId;

use crate::backend::pool::Pooled;
use crate::context::Loaded;
use crate::keys::KeyDefault;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::session::link::outgoing::Outgoing;
pub(crate) use crate::session::multi::copy_rows::RowSource;
use crate::session::multi::copy_rows::{Incoming, RowRouter};
use crate::session::multi::gather::Delivery;
use crate::session::multi::gather::MergeFailure;
use crate::session::multi::insert_select::{apply_rows, Applied, ApplySteps};
use crate::session::multi::twophase::Part;
use crate::session::{local, ClientError, Session, SessionEnd};

impl Session {
    /// Runs a COPY FROM STDIN whose rows are spread over the shards of `spec.rule`.
    /// `delivery` says how to end the statement if it fails before the copy starts; once it
    /// has started, an extended-protocol client's `Sync` sent with the COPY no longer counts
    /// (PostgreSQL ignores it during copy-in) and the client sends another after `CopyDone`.
    /// With `apply` (an `INSERT … SELECT … ON CONFLICT | RETURNING`), each shard copies its
    /// rows into a table of the statement's own and applies them with the client's clauses;
    /// the rows they return reach the client once every shard committed.
    pub(crate) async fn copy_split(
        &mut self,
        loaded: &Loaded,
        sql: &str,
        spec: &CopyInto,
        apply: Option<&Apply>,
        delivery: &Delivery,
        source: &mut RowSource<'_>,
    ) -> Result<(), SessionEnd> {
        let shards = spec.rule.shards(loaded.config.shards.len());
        let applying = apply.map(|a| {
            // Unique to the statement: concurrent statements never wait for each other's name.
            let rows = format!("shardline_rows_{}", uuid::Uuid::now_v7().simple());
            let steps = ApplySteps {
                insert: a.insert_sql(&rows),
                drop: Apply::drop_sql(&rows),
            };
            (a.copy_sql(&rows), steps)
        });
        let (sql, apply) = match &applying {
            Some((copy, steps)) => (copy.as_str(), Some(steps)),
            None => (sql, None),
        };
        let started = std::time::Instant::now();
        let keyed = match self.copy_with_generated_keys(loaded, sql, spec).await {
            Ok(keyed) => keyed,
            Err(error) => {
                return self
                    .complete(Err(MergeFailure::Query(error)), delivery)
                    .await
            }
        };
        let result = match &keyed {
            Some((sql, spec)) => {
                self.copy_rows(loaded, sql, spec, &shards, true, apply, delivery, source)
                    .await
            }
            None => {
                self.copy_rows(loaded, sql, spec, &shards, false, apply, delivery, source)
                    .await
            }
        };
        let ok = matches!(result, Ok(true));
        self.ctx
            .stats
            .record_scatter(loaded, &shards, ok, started.elapsed());
        result.map(|_| ())
    }

    /// A COPY whose column list leaves out a shard key the proxy generates, rewritten to take
    /// the key first in every row (the rows get it as they are routed).
    async fn copy_with_generated_keys(
        &self,
        loaded: &Loaded,
        sql: &str,
        spec: &CopyInto,
    ) -> Result<Option<(String, CopyInto)>, ClientError> {
        let (Some(column), Some(key_type)) = (spec.rule.key_column(), spec.rule.key_type()) else {
            return Ok(None);
        };
        if !spec.leaves_out_key() {
            return Ok(None);
        }
        let default = self
            .ctx
            .keys
            .default_of(&loaded.config, &spec.rule.name, column, key_type)
            .await?;
        if default == KeyDefault::None {
            return Ok(None);
        }
        Ok(spec.with_key_first(sql))
    }

    /// The COPY itself; `Ok(true)` when every row was committed. With `generated`, the
    /// proxy puts a new key first in every row; with `apply`, each shard runs it after its
    /// rows arrived, and the statement counts (and returns) the rows it inserted.
    #[allow(clippy::too_many_arguments)]
    async fn copy_rows(
        &mut self,
        loaded: &Loaded,
        sql: &str,
        spec: &CopyInto,
        shards: &[ShardId],
        generated: bool,
        apply: Option<&ApplySteps>,
        delivery: &Delivery,
        source: &mut RowSource<'_>,
    ) -> Result<bool, SessionEnd> {
        let mut parts: Vec<Part> = Vec::with_capacity(shards.len());
        let started = self
            .start_copies(loaded, sql, spec, shards, &mut parts)
            .await;
        let (copy_in_response, position) = match started {
            Ok(Some((response, columns))) => match spec.key_position(&columns) {
                Some(position) => (response, position),
                None => {
                    let copying = parts.len();
                    let error = ClientError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY into a sharded table must include its shard key column",
                    );
                    return self.abandon_copy(parts, copying, error, delivery).await;
                }
            },
            Ok(None) => {
                let error =
                    ClientError::new(sqlstate::INTERNAL, "the table has no shards to copy into");
                return self.abandon_copy(parts, 0, error, delivery).await;
            }
            Err((copying, error)) => {
                return self.abandon_copy(parts, copying, error, delivery).await
            }
        };
        let client = matches!(source, RowSource::Client);
        let delivery = &if client {
            self.out.push(&copy_in_response).await?;
            self.out.flush().await?;
            Delivery {
                ready: !delivery.extended,
                ..delivery.clone()
            }
        } else {
            delivery.clone()
        };

        let index: HashMap<ShardId, usize> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.shard, i))
            .collect();
        let mut router = RowRouter::new(spec, position, parts.len(), self.encoding());
        if generated {
            router.keys = Some(VecDeque::new());
        }
        let mut client_failed = None;
        loop {
            let incoming = match source.next(&mut self.input).await {
                Ok(incoming) => incoming,
                Err(end) => {
                    self.release_parts_broken(parts);
                    return Err(end);
                }
            };
            match incoming {
                Incoming::Data(frame) => {
                    let rows = router.split(frame.body());
                    self.top_up_keys(loaded, &mut router, rows.len()).await;
                    router.route_rows(rows, &index);
                }
                Incoming::Done => {
                    // The last row may lack its line end: it is routed at the finish.
                    self.top_up_keys(loaded, &mut router, 1).await;
                    break;
                }
                Incoming::Failed(error) => {
                    client_failed = Some(error);
                    break;
                }
                Incoming::Other => {}
            }
            if router.error.is_none() {
                for (i, batch) in router.full_batches() {
                    if let Err(e) = parts[i].conn.send(&batch).await {
                        router.error = Some(ClientError::lost_shard(&parts[i].name, e.to_string()));
                    }
                }
            }
        }
        let copying = parts.len();
        let failure = match (client_failed, router.finish(&index)) {
            (Some(e), _) | (None, Err(e)) => Err((copying, e)),
            // After end_copies no shard is in COPY any more, whatever happened.
            (None, Ok(())) => match self.end_copies(&mut parts, router.all_batches()).await {
                Ok(()) => match apply {
                    Some(steps) => {
                        let budget = loaded.config.max_pull_rows;
                        apply_rows(&mut parts, steps, &delivery.formats, budget)
                            .await
                            .map(Some)
                    }
                    None => Ok(None),
                },
                Err(e) => Err(e),
            }
            .map_err(|e| (0, e)),
        };
        match failure {
            Err((copying, error)) => self.abandon_copy(parts, copying, error, delivery).await,
            Ok(applied) => {
                let count = applied.as_ref().map_or(router.total, |a| a.count);
                let tag = format!("{} {count}", source.command());
                self.commit_copy(parts, tag, applied, delivery).await
            }
        }
    }

    /// Makes sure a COPY that generates keys holds at least `rows` of them.
    async fn top_up_keys(&self, loaded: &Loaded, router: &mut RowRouter<'_>, rows: usize) {
        let rule = &router.spec.rule;
        let (Some(keys), Some(column), Some(key_type)) =
            (router.keys.as_mut(), rule.key_column(), rule.key_type())
        else {
            return;
        };
        let missing = rows.saturating_sub(keys.len());
        if missing == 0 || router.error.is_some() {
            return;
        }
        let generated = self
            .ctx
            .keys
            .generate(&loaded.config, &rule.name, column, key_type, missing)
            .await;
        match generated {
            Ok(generated) => keys.extend(generated),
            Err(e) => router.error = Some(e),
        }
    }

    /// Starts `BEGIN; COPY …` on every shard; returns the first `CopyInResponse` and the
    /// table's columns (for a COPY without a column list). `Ok(None)` after answering the client
    /// with a shard's error.
    async fn start_copies(
        &mut self,
        loaded: &Loaded,
        sql: &str,
        spec: &CopyInto,
        shards: &[ShardId],
        parts: &mut Vec<Part>,
    ) -> Result<Option<(Bytes, Vec<String>)>, (usize, ClientError)> {
        let mut response = None;
        let mut columns = Vec::new();
        let mut wants_columns = spec.columns.is_empty();
        for &shard in shards {
            let name = loaded
                .config
                .shards
                .get(shard)
                .map_or_else(String::new, |s| s.name.clone());
            let mut conn = self
                .attach(loaded, shard)
                .await
                .map_err(|e| (parts.len(), e))?;
            let Outgoing {
                bytes: mut out,
                queue,
            } = self.prelude_only(shard, &mut conn);
            if wants_columns {
                out.extend_from_slice(&local::query_message(&columns_query(&spec.table)));
            }
            let begin = self.part_begin();
            let cycles = queue.len() + usize::from(begin.is_some()) + usize::from(wants_columns);
            out.extend_from_slice(&begin.unwrap_or_default());
            match local::query_message_in(self.encoding(), sql) {
                Ok(copy) => out.extend_from_slice(&copy),
                Err(e) => return Err((parts.len(), e.into())),
            }
            let sent = conn.send(&out).await;
            parts.push(Part {
                shard,
                name: name.clone(),
                conn,
            });
            // From here on a failure leaves this last part outside COPY.
            let copying = parts.len() - 1;
            let Some(part) = parts.last_mut() else { break };
            sent.map_err(|e| (copying, ClientError::lost_shard(&name, e.to_string())))?;
            let answer = await_copy_in(&mut part.conn, cycles, wants_columns).await;
            match answer {
                Ok(CopyStart::Ready {
                    response: r,
                    columns: c,
                }) => {
                    response.get_or_insert(r);
                    if wants_columns {
                        columns = c;
                        wants_columns = false;
                    }
                }
                Ok(CopyStart::Refused(error)) => {
                    return Err((copying, ClientError::from_shard(&error, &name)))
                }
                Err(e) => {
                    part.conn.broken = true;
                    return Err((copying, ClientError::lost_shard(&name, e)));
                }
            }
        }
        Ok(response.map(|r| (r, columns)))
    }

    /// Ends every shard's COPY and checks the counts.
    async fn end_copies(
        &mut self,
        parts: &mut [Part],
        batches: Vec<(usize, Bytes)>,
    ) -> Result<(), ClientError> {
        for (i, batch) in batches {
            parts[i]
                .conn
                .send(&batch)
                .await
                .map_err(|e| ClientError::lost_shard(&parts[i].name, e.to_string()))?;
        }
        let mut failure = None;
        for part in parts.iter_mut() {
            let done = part.conn.send(&msg::empty(tag::COPY_DONE)).await;
            let result = match done {
                Ok(()) => read_to_ready(&mut part.conn).await,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(None) => {}
                Ok(Some(error)) => {
                    failure.get_or_insert_with(|| ClientError::from_shard(&error, &part.name));
                }
                Err(e) => {
                    part.conn.broken = true;
                    failure.get_or_insert_with(|| ClientError::lost_shard(&part.name, e));
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Commits every shard's COPY; `Ok(true)` when it did. The rows the shards returned
    /// (`applied`) go to the client only then.
    async fn commit_copy(
        &mut self,
        parts: Vec<Part>,
        tag: String,
        applied: Option<Applied>,
        delivery: &Delivery,
    ) -> Result<bool, SessionEnd> {
        let failure = self.settle_parts(parts).await;
        let committed = failure.is_none();
        let result = match failure {
            Some(error) => Err(MergeFailure::Query(error)),
            None => Ok(tag),
        };
        if let (true, Some(applied)) = (committed, applied) {
            if let Some(description) = applied.description.filter(|_| delivery.describe) {
                self.out.push(&description).await?;
            }
            for row in &applied.rows {
                self.out.push(row).await?;
            }
        }
        self.complete(result, delivery).await?;
        Ok(committed)
    }

    /// Rolls every shard back and reports `error`; the first `copying` parts are still in
    /// COPY and end it with `CopyFail` first.
    async fn abandon_copy(
        &mut self,
        mut parts: Vec<Part>,
        copying: usize,
        error: ClientError,
        delivery: &Delivery,
    ) -> Result<bool, SessionEnd> {
        for (i, part) in parts.iter_mut().enumerate() {
            if part.conn.broken {
                continue;
            }
            if i < copying {
                let mut fail = BytesMut::new();
                fail.put_u8(b'f');
                fail.put_i32(4 + 18);
                fail.put_slice(b"shardline aborted\0");
                let ended = part.conn.send(&fail).await.is_ok()
                    && read_to_ready(&mut part.conn).await.is_ok();
                if !ended {
                    part.conn.broken = true;
                }
            }
        }
        self.abandon_parts(parts).await;
        self.complete(Err(MergeFailure::Query(error)), delivery)
            .await
            .map(|()| false)
    }

    fn release_parts_broken(&mut self, mut parts: Vec<Part>) {
        for part in &mut parts {
            part.conn.broken = true;
        }
        self.release_parts(parts);
    }
}

/// How a shard answered `BEGIN; COPY … FROM STDIN`.
enum CopyStart {
    Ready {
        response: Bytes,
        columns: Vec<String>,
    },
    Refused(Bytes),
}

/// Reads the answers before `CopyInResponse`: `cycles` simple queries ending in
/// `ReadyForQuery` (settings, the optional column query, `BEGIN`), then the COPY's start.
async fn await_copy_in(
    conn: &mut Pooled,
    cycles: usize,
    collect_columns: bool,
) -> Result<CopyStart, String> {
    let mut remaining = cycles;
    let mut columns = Vec::new();
    let mut error = None;
    loop {
        let frame = conn.read().await.map_err(|e| e.to_string())?;
        match frame.tag() {
            tag::READY_FOR_QUERY if remaining > 0 => remaining -= 1,
            tag::READY_FOR_QUERY => {
                return Ok(CopyStart::Refused(error.unwrap_or_else(|| {
                    msg::error(sqlstate::INTERNAL, "COPY did not start")
                })))
            }
            tag::ERROR_RESPONSE => {
                error.get_or_insert_with(|| frame.bytes().clone());
            }
            tag::DATA_ROW if collect_columns => {
                if let Some(name) = msg::first_text_field(frame.body()) {
                    columns.push(name.to_ascii_lowercase());
                }
            }
            tag::COPY_IN_RESPONSE => {
                return Ok(match error {
                    Some(e) => CopyStart::Refused(e),
                    None => CopyStart::Ready {
                        response: frame.into_bytes(),
                        columns,
                    },
                })
            }
            _ => {}
        }
    }
}

/// Reads up to `ReadyForQuery`, returning the first error.
async fn read_to_ready(conn: &mut Pooled) -> Result<Option<Bytes>, String> {
    let mut error = None;
    loop {
        let frame = conn.read().await.map_err(|e| e.to_string())?;
        match frame.tag() {
            tag::READY_FOR_QUERY => return Ok(error),
            tag::ERROR_RESPONSE => {
                error.get_or_insert_with(|| frame.bytes().clone());
            }
            _ => {}
        }
    }
}

/// The table's column names in order, for a COPY without a column list.
fn columns_query(table: &str) -> String {
    format!(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        crate::session::state::settings::quote_literal(table)
    )
}
