//! Pull-up reads: a read the merge cannot answer runs on one backend (the default shard's),
//! after the rows of every sharded table it names are copied there into temporary tables of
//! the same names (see `shardline_router::pull`). PostgreSQL then answers the statement as it
//! was written, so the answer is exactly what one server holding all the rows would give.
//!
//! On the target backend, inside one transaction: `CREATE TEMP TABLE t ON COMMIT DROP AS
//! SELECT * FROM t …` takes the target shard's own rows (the name still means the real table
//! while the statement runs), then `COPY t FROM STDIN (FORMAT binary)` receives the rows every
//! other shard streams with `COPY (SELECT * FROM t …) TO STDOUT (FORMAT binary)`; `…` is the
//! part of the statement's `WHERE` the router found safe to apply early
//! ([`PulledTable::rows`]). Binary COPY
//! carries every value exactly, whatever the session's `DateStyle` or `extra_float_digits`.
//! The client's statement runs next, then `COMMIT` drops the temporary tables; a failure rolls
//! the transaction back, which drops them too. Rows are counted as they pass and the statement
//! is refused once it would move more than `max_pull_rows`.
//!
//! Inside the client's transaction block the pull runs in that transaction instead: every
//! shard it reads joins the transaction (its rows are read through the transaction's own
//! backend, writes included), the temporary tables are dropped right after the statement, and
//! a failure fails the block as any failing statement does. The default shard, which then
//! holds temporary objects and so cannot `PREPARE TRANSACTION`, decides the transaction's
//! commit (see `twophase`), committing in one phase.

use bytes::BytesMut;
use shardline_router::ident::quote_ident;
use shardline_router::placeholders::ShardStatement;
use shardline_router::pull::PulledTable;
use shardline_router::ShardId;

use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::Frame;
use crate::session::link::attach::{drain_to_ready, ready_status, skip_prelude};
use crate::session::link::exchange::{Expect, Mode, Reply};
use crate::session::link::outgoing::Outgoing;
use crate::session::multi::gather::{Delivery, MergeFailure, Source};
use crate::session::multi::pull_copy::{abandon_copy_in, check_budget, stream_rows, CopySink};
use crate::session::multi::pull_narrow;
use crate::session::{local, ClientError, Session, SessionEnd};

impl Session {
    /// Answers `sql` (a simple-protocol read the merge cannot combine) by pulling `tables`
    /// into the default shard's backend and running it there.
    pub(crate) async fn pull_up(
        &mut self,
        loaded: &Loaded,
        tables: &[PulledTable],
        sql: &str,
    ) -> Result<(), SessionEnd> {
        let sql = shardline_router::pull::temp_qualified(&loaded.config, sql);
        let query = match local::query_message_in(self.encoding(), &sql) {
            Ok(query) => query,
            Err(error) => return self.fail(error.into()).await,
        };
        let target = loaded.config.default_shard;
        let conn = match self.pulled(loaded, target, tables, "", Some(&sql)).await {
            Ok(conn) => conn,
            Err(error) => return self.fail(error).await,
        };
        // The exchange takes the backend from here: the statement's answers are relayed, its
        // `ReadyForQuery` (inside the pull's transaction) held back, and the end of the pull
        // swallowed.
        self.conns.insert(target, conn);
        let held = Expect::Sent {
            reply: Reply::Cycle,
            mode: Mode::Held,
            effects: Vec::new(),
            prepares: None,
        };
        let end = local::query_message(&self.end_of_pull(tables));
        let settled = self
            .exchange_settled(loaded, target, true, |_, out| {
                out.send(&query, held);
                out.send(&end, Expect::swallow(Reply::Cycle));
            })
            .await?;
        if settled.is_some() {
            self.out
                .push(&msg::ready_for_query(self.tx.status()))
                .await?;
            self.out.flush().await?;
        }
        Ok(())
    }

    /// Answers an extended-protocol execution (`source`) by pulling `tables` into the default shard's backend and running the statement there as
    /// its unnamed statement (a statement the client prepared earlier on that backend would
    /// still name the real tables), bound with the client's values; `delivery` says what the
    /// client is owed around the rows.
    pub(crate) async fn pull_up_extended(
        &mut self,
        loaded: &Loaded,
        tables: &[PulledTable],
        source: &Source<'_>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        let target = loaded.config.default_shard;
        let statement = ShardStatement {
            sql: shardline_router::pull::temp_qualified(&loaded.config, source.sql()).into_owned(),
            params: (0..source.params().len()).collect(),
        };
        let request = match source.request(&statement, &delivery.formats, self.encoding()) {
            Ok(request) => request,
            Err(error) => {
                return self
                    .complete(Err(MergeFailure::Query(error.into())), delivery)
                    .await
            }
        };
        // A view cannot hold parameters: a statement with them moves whole rows.
        let probe = source.params().is_empty().then_some(statement.sql.as_str());
        let mut conn = match self.pulled(loaded, target, tables, "", probe).await {
            Ok(conn) => conn,
            Err(error) => {
                return self
                    .complete(Err(MergeFailure::Query(error)), delivery)
                    .await
            }
        };
        let name = self.shard_names(&[target]);
        let mut out = BytesMut::from(&request[..]);
        out.extend_from_slice(&local::query_message(&self.end_of_pull(tables)));
        let result = match conn.send(&out).await {
            Ok(()) => self.relay_rows(&mut conn, &name, delivery.describe).await,
            Err(e) => Err(MergeFailure::Query(ClientError::lost_shard(&name, e))),
        };
        // Past the statement's `ReadyForQuery` comes the end of the pull's (idle after its own
        // transaction; inside the client's, still in it); a client that went away left the
        // statement's answers unread.
        let settled = !matches!(result, Err(MergeFailure::Client(_)))
            && match ready_status(&mut conn).await {
                Some(b'I') => true,
                Some(_) => self.tx.open(),
                None => false,
            };
        self.let_go(target, conn, settled);
        self.complete(result, delivery).await
    }

    /// Relays the rows of an extended-protocol execution from `conn` (its description too
    /// when `describe`), up to and including its `ReadyForQuery`; returns its command tag.
    async fn relay_rows(
        &mut self,
        conn: &mut Pooled,
        name: &str,
        describe: bool,
    ) -> Result<String, MergeFailure> {
        let mut outcome = Ok(String::new());
        loop {
            let frame = read_from(conn, name).await.map_err(MergeFailure::Query)?;
            match frame.tag() {
                tag::ROW_DESCRIPTION | tag::NO_DATA if describe => {
                    self.out.push(frame.bytes()).await?
                }
                tag::DATA_ROW | tag::NOTICE_RESPONSE => self.out.push(frame.bytes()).await?,
                tag::COMMAND_COMPLETE => {
                    outcome = Ok(msg::command_tag(frame.body()).to_owned());
                }
                tag::ERROR_RESPONSE => {
                    let error = ClientError::from_shard(frame.bytes(), name);
                    outcome = Err(MergeFailure::Query(error));
                }
                tag::READY_FOR_QUERY => return outcome,
                _ => {}
            }
        }
    }

    /// Checks out `target`'s backend and fills it with `tables` (see [`Session::pull_into`]),
    /// after running `prologue` in the pull's transaction; with the `statement` that will read
    /// them, only the columns it reads move. On failure the transaction is rolled back and the
    /// backend let go (inside the client's transaction, which the failure fails, the backend
    /// stays with it).
    pub(super) async fn pulled(
        &mut self,
        loaded: &Loaded,
        target: ShardId,
        tables: &[PulledTable],
        prologue: &str,
        statement: Option<&str>,
    ) -> Result<Pooled, ClientError> {
        let mut conn = self.attach(loaded, target).await?;
        let pulled = self
            .pull_into(loaded, &mut conn, target, tables, prologue, statement)
            .await;
        let Err(error) = pulled else {
            return Ok(conn);
        };
        if self.tx.open() {
            let intact = !conn.broken;
            self.let_go(target, conn, intact);
            return Err(error);
        }
        let rolled_back = !conn.broken
            && conn.send(&local::query_message("ROLLBACK")).await.is_ok()
            && drain_to_ready(&mut conn).await;
        self.let_go(target, conn, rolled_back);
        Err(error)
    }

    /// What ends a pull after its statement: `COMMIT` of its own transaction, or, inside the
    /// client's, dropping the temporary tables (later statements of the transaction must
    /// read the real tables again).
    fn end_of_pull(&self, tables: &[PulledTable]) -> String {
        if !self.tx.open() {
            return "COMMIT".to_owned();
        }
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("pg_temp.{}", quote_ident(&t.name)))
            .collect();
        format!("DROP TABLE IF EXISTS {}", names.join(", "))
    }

    /// Returns a backend the pull used to its pool when it is `clean` (idle, its answers all
    /// read); closes it otherwise (mid-COPY, or failed), the only clean way out.
    pub(super) fn let_go(&mut self, shard: ShardId, mut conn: Pooled, clean: bool) {
        if clean {
            self.keep_or_release(shard, conn, false);
        } else {
            conn.broken = true;
            Pools::discard(conn);
        }
    }

    /// Opens the pull's transaction on `conn` (the target's backend), runs `prologue` and
    /// fills one temporary table per pulled table: the target's own rows in place, whole;
    /// the other shards' narrowed to the columns `statement` reads, when the target can tell
    /// ([`pull_narrow::columns_read`]; the others are left NULL, which nothing reads).
    async fn pull_into(
        &mut self,
        loaded: &Loaded,
        conn: &mut Pooled,
        target: ShardId,
        tables: &[PulledTable],
        prologue: &str,
        statement: Option<&str>,
    ) -> Result<(), ClientError> {
        let target_name = self.shard_names(&[target]);
        let begin = if self.tx.open() { "" } else { "BEGIN;" };
        let mut create = format!("{begin}{prologue};");
        // The router pulls only tables the target holds (its own rows are taken in place).
        for table in tables {
            create.push_str(&format!(
                "CREATE TEMP TABLE {} ON COMMIT DROP AS {};",
                quote_ident(&table.name),
                table.rows()
            ));
        }
        let budget = loaded.config.max_pull_rows;
        let tags = self.run_on(conn, target, &target_name, &create).await?;
        let mut rows: u64 = tags.iter().filter_map(|t| msg::tag_row_count(t)).sum();
        check_budget(rows, budget)?;
        let pulls_elsewhere = tables.iter().any(|t| t.shards.iter().any(|s| *s != target));
        let columns = match statement {
            Some(statement) if pulls_elsewhere => {
                pull_narrow::columns_read(conn, &target_name, statement, tables).await?
            }
            _ => None,
        };
        for table in tables {
            let narrowed = columns
                .as_ref()
                .and_then(|columns| columns.get(&table.name))
                .map(Vec::as_slice);
            let sources: Vec<ShardId> = table
                .shards
                .iter()
                .copied()
                .filter(|s| *s != target)
                .collect();
            if sources.is_empty() {
                continue;
            }
            let copy_in = table.copy_in(narrowed);
            self.start_copy(conn, target, &target_name, &copy_in, tag::COPY_IN_RESPONSE)
                .await?;
            let query = table.rows_of(narrowed);
            let mut sink = CopySink::new();
            for source in sources {
                let pulled = self
                    .pull_from(loaded, source, &query, conn, &mut sink, rows, budget)
                    .await;
                match pulled {
                    Ok(count) => rows += count,
                    Err(error) => {
                        abandon_copy_in(conn).await;
                        return Err(error);
                    }
                }
            }
            sink.finish(conn)
                .await
                .map_err(|e| ClientError::lost_shard(&target_name, e))?;
            read_answer(conn, &target_name).await?;
        }
        Ok(())
    }

    /// Streams the rows `query` selects on `source` into the target's COPY; returns how many.
    #[allow(clippy::too_many_arguments)]
    async fn pull_from(
        &mut self,
        loaded: &Loaded,
        source: ShardId,
        query: &str,
        target: &mut Pooled,
        sink: &mut CopySink,
        pulled_before: u64,
        budget: u64,
    ) -> Result<u64, ClientError> {
        let name = self.shard_names(&[source]);
        let mut conn = self.attach(loaded, source).await?;
        let copy_out = format!("COPY ({query}) TO STDOUT (FORMAT binary)");
        let started = self
            .start_copy(&mut conn, source, &name, &copy_out, tag::COPY_OUT_RESPONSE)
            .await;
        let result = match started {
            Ok(()) => stream_rows(&mut conn, &name, target, sink, pulled_before, budget).await,
            Err(error) => Err(error),
        };
        // A source that finished its COPY goes back to its pool.
        self.let_go(source, conn, result.is_ok());
        result
    }

    /// Sends `sql` (see [`Session::send_in_line`]), which must answer with `expected` (COPY's
    /// response) before its `ReadyForQuery`.
    pub(super) async fn start_copy(
        &mut self,
        conn: &mut Pooled,
        shard: ShardId,
        name: &str,
        sql: &str,
        expected: u8,
    ) -> Result<(), ClientError> {
        self.send_in_line(conn, shard, name, sql).await?;
        let mut error = None;
        loop {
            let frame = read_from(conn, name).await?;
            match frame.tag() {
                t if t == expected => return Ok(()),
                tag::ERROR_RESPONSE => error = Some(frame.into_bytes()),
                tag::READY_FOR_QUERY => {
                    let error = error
                        .unwrap_or_else(|| msg::error(sqlstate::INTERNAL, "COPY did not start"));
                    return Err(ClientError::from_shard(&error, name));
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` on `conn` after bringing its settings in line; returns its command tags.
    async fn run_on(
        &mut self,
        conn: &mut Pooled,
        shard: ShardId,
        name: &str,
        sql: &str,
    ) -> Result<Vec<String>, ClientError> {
        self.send_in_line(conn, shard, name, sql).await?;
        read_answer(conn, name).await
    }

    /// Sends `sql` to `conn` after the `SET`s that bring its settings in line with the
    /// client's (so names resolve through the client's `search_path`) and, inside the
    /// client's transaction, what joins `shard` to it; reads past their answers.
    async fn send_in_line(
        &mut self,
        conn: &mut Pooled,
        shard: ShardId,
        name: &str,
        sql: &str,
    ) -> Result<(), ClientError> {
        let Outgoing {
            bytes: mut out,
            queue,
        } = self.prelude_only(shard, conn);
        // In the encoding the backend reads (names and constants from the client's text).
        out.extend_from_slice(&local::query_message_in(conn.client_encoding(), sql)?);
        conn.send(&out)
            .await
            .map_err(|e| ClientError::lost_shard(name, e))?;
        skip_prelude(conn, queue.len())
            .await
            .map_err(|e| ClientError::from_backend(name, &e))
    }
}

/// The next message from `conn`; a lost connection names the shard.
pub(super) async fn read_from(conn: &mut Pooled, name: &str) -> Result<Frame, ClientError> {
    conn.read()
        .await
        .map_err(|e| ClientError::from_backend(name, &e))
}

impl Session {
    /// A backend of `shard` for `EXPLAIN (ROUTE)`'s questions, checked out of its pool
    /// outside the session's own (`None` when none can be had). The client's cancel request
    /// reaches it, as one waiting on a lock there.
    pub(crate) async fn introspection_backend(
        &self,
        loaded: &Loaded,
        shard: ShardId,
    ) -> Option<Pooled> {
        let target = self.target(loaded, shard).ok()?;
        let conn = self
            .ctx
            .pools
            .checkout(&target, &loaded.config.pool)
            .await
            .ok()?;
        Some(self.cancellable(conn))
    }

    /// The shards' own estimate of the rows a pull of `tables` would move (the sum of
    /// `EXPLAIN` of each shard's pull query), for `EXPLAIN (ROUTE)`; `None` when a shard cannot
    /// say (unreachable, or the query fails there).
    pub(crate) async fn estimated_pull(
        &self,
        loaded: &Loaded,
        tables: &[PulledTable],
    ) -> Option<u64> {
        let mut total: u64 = 0;
        for table in tables {
            let explain = local::query_message(&format!("EXPLAIN (FORMAT JSON) {}", table.rows()));
            for &shard in &table.shards {
                let mut conn = self.introspection_backend(loaded, shard).await?;
                conn.send(&explain).await.ok()?;
                let mut plan = None;
                loop {
                    let frame = conn.read().await.ok()?;
                    match frame.tag() {
                        tag::DATA_ROW => plan = msg::first_text_field(frame.body()),
                        tag::READY_FOR_QUERY => break,
                        _ => {}
                    }
                }
                total = total.saturating_add(plan_rows(&plan?)?);
            }
        }
        Some(total)
    }
}

/// The top node's `"Plan Rows"` of an `EXPLAIN (FORMAT JSON)` answer.
fn plan_rows(json: &str) -> Option<u64> {
    let (_, after) = json.split_once("\"Plan Rows\":")?;
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads the answers to one query up to `ReadyForQuery`: its command tags, or its error.
pub(super) async fn read_answer(conn: &mut Pooled, name: &str) -> Result<Vec<String>, ClientError> {
    let mut tags = Vec::new();
    let mut error = None;
    loop {
        let frame = read_from(conn, name).await?;
        match frame.tag() {
            tag::COMMAND_COMPLETE => tags.push(msg::command_tag(frame.body()).to_owned()),
            tag::ERROR_RESPONSE => {
                error.get_or_insert_with(|| frame.into_bytes());
            }
            tag::READY_FOR_QUERY => {
                return match error {
                    Some(error) => Err(ClientError::from_shard(&error, name)),
                    None => Ok(tags),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_the_top_plan_node_s() {
        let json = r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 1200, "Plan Width": 40, "Plans": [{"Plan Rows": 7}]}}]"#;
        assert_eq!(plan_rows(json), Some(1200));
        assert_eq!(plan_rows("[]"), None);
    }
}
