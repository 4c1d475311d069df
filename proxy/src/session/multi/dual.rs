//! Dual writes while a resharding migration runs (the argument is in the
//! `shardline-resharder` crate's docs).
//!
//! A write to a key that moves runs on its old owner, inside a transaction (the client's, or
//! one the proxy opens around an autocommit statement). When that transaction commits, the
//! proxy first locks the moving keys it wrote on the old owner, reads their current rows (the
//! row images) and applies them to each new owner in a transaction it prepares there
//! (`PREPARE TRANSACTION`, named after the old owner's transaction and the decision it records
//! in it); then the old owner commits, and the new owners' prepared transactions are committed
//! — or rolled back if the old owner did not commit. The old owner's commit is the decision: a
//! prepared copy left behind by a crash is resolved by asking the old owner whether that
//! transaction is over and recorded its decision (`shardline_router::indoubt`), so the two
//! owners never diverge silently.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use shardline_router::indoubt::Kind;
use shardline_router::migration::images::{lock_keys_sql, read_images_sql};
use shardline_router::{KeyValue, ShardId};

use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::session::link::exchange::{Completed, Expect, Mode, Reply};
use crate::session::link::outgoing::Outgoing;
use crate::session::link::output::Mark;
use crate::session::multi::ordered::field;
use crate::session::multi::twophase::{self, finish_quietly, record_decision, run, Part};
use crate::session::state::transaction::DualKeys;
use crate::session::{ClientError, Session, SessionEnd};

/// Makes the proxy, not the backend, answer the last `ReadyForQuery` of an exchange.
fn hold_ready(queue: &mut VecDeque<Expect>) {
    for expect in queue.iter_mut().rev() {
        if let Expect::Sent {
            reply: Reply::Sync | Reply::Cycle,
            mode,
            ..
        } = expect
        {
            if *mode == Mode::Relay {
                *mode = Mode::Held;
                return;
            }
        }
    }
}

impl Session {
    /// Runs a write to moving keys on their old owner `old`: inside the client's transaction
    /// (the keys join it, copied at its `COMMIT`), or, in autocommit, in a transaction of its
    /// own that commits on both owners before the client hears `ReadyForQuery`.
    pub(crate) async fn dual_write<F>(
        &mut self,
        loaded: &Loaded,
        old: ShardId,
        keys: DualKeys,
        build: F,
    ) -> Result<(), SessionEnd>
    where
        F: FnOnce(&mut Pooled, &mut Outgoing),
    {
        self.dual_ticket = Some(self.ctx.gate.enter(self.dual_ticket.take()).await);
        if self.tx.open() {
            self.tx.dual.merge(keys);
            return self.exchange(loaded, old, build).await;
        }
        if self.segment_open {
            return self
                .fail(ClientError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "while its table is being resharded, an autocommit write to a moving key must end its pipeline with Sync, not Flush",
                ))
                .await;
        }
        let mark = self.out.mark();
        let settled = self
            .exchange_settled(loaded, old, true, |conn, out| {
                let begin = crate::session::local::query_message("BEGIN");
                out.send(&begin, Expect::swallow(Reply::Cycle));
                build(conn, out);
                hold_ready(&mut out.queue);
            })
            .await?;
        match settled {
            // The exchange failed and answered the client itself.
            None => Ok(()),
            Some(s) if s.ready == b'T' => {
                self.tx.dual = keys;
                self.commit_implicit(loaded, old, mark).await
            }
            // The statement failed; its error was relayed.
            Some(_) => {
                self.abandon(old).await;
                self.ready_idle().await
            }
        }
    }

    /// Ends the client's transaction on `old` with its moving keys copied, committing it
    /// with the client's own `COMMIT` (what `build` makes): phase one on the new owners, the
    /// old owner's commit, phase two; the client hears `ReadyForQuery` after all of it.
    pub(crate) async fn commit_dual<F>(
        &mut self,
        loaded: &Loaded,
        old: ShardId,
        build: F,
    ) -> Result<(), SessionEnd>
    where
        F: FnOnce(&mut Pooled, &mut Outgoing),
    {
        let mark = self.out.mark();
        let Some(copies) = self.prepare_or_abandon(loaded, old, mark).await? else {
            return Ok(());
        };
        let settled = self
            .exchange_settled(loaded, old, true, |conn, out| {
                build(conn, out);
                hold_ready(&mut out.queue);
            })
            .await;
        match settled {
            Ok(Some(s)) => {
                let committed = s.ready == b'I' && s.last_tag == Some(Completed::Commit);
                self.settle_copies(copies, Some(committed)).await;
                self.ready_idle().await
            }
            // The old owner's answer was lost: whether it committed is known only there, so
            // the copies stay prepared for the resolver, which asks it.
            other => {
                self.settle_copies(copies, None).await;
                other.map(|_| ())
            }
        }
    }

    /// Commits the transaction the proxy opened around an autocommit write on `old`; if that
    /// fails, the statement's answers since `mark` give way to the error.
    async fn commit_implicit(
        &mut self,
        loaded: &Loaded,
        old: ShardId,
        mark: Mark,
    ) -> Result<(), SessionEnd> {
        let Some(copies) = self.prepare_or_abandon(loaded, old, mark).await? else {
            return Ok(());
        };
        // An unknown outcome leaves the copies prepared: the resolver follows the old owner.
        let committed = self.commit_quietly(old).await;
        self.settle_copies(copies, committed).await;
        let failure = match committed {
            Some(true) => None,
            Some(false) => Some((
                sqlstate::TRANSACTION_ROLLBACK,
                "the write was rolled back because its shard could not commit it; nothing was written, retry it",
            )),
            None => Some((
                sqlstate::STATEMENT_COMPLETION_UNKNOWN,
                "lost the connection to the shard while it committed the write: whether it committed is not known (its copy for the resharding follows whatever it did)",
            )),
        };
        if let Some((code, message)) = failure {
            self.out.rewind(mark);
            self.out.push(&msg::error(code, message)).await?;
        }
        self.ready_idle().await
    }

    /// Phase one for the transaction's moving keys; on failure the transaction is rolled back
    /// and the client told why (answers since `mark` dropped), and `None` returned.
    async fn prepare_or_abandon(
        &mut self,
        loaded: &Loaded,
        old: ShardId,
        mark: Mark,
    ) -> Result<Option<Vec<Part>>, SessionEnd> {
        let keys = std::mem::take(&mut self.tx.dual);
        match self.prepare_copies(loaded, old, &keys).await {
            Ok(copies) => Ok(Some(copies)),
            Err(error) => {
                self.abandon(old).await;
                self.out.rewind(mark);
                self.out.push(&error.bytes()).await?;
                self.ready_idle().await?;
                Ok(None)
            }
        }
    }

    /// Phase one: reads the images of `keys` on the old owner (locking the keys first) and
    /// applies them to each new owner in a prepared transaction.
    async fn prepare_copies(
        &mut self,
        loaded: &Loaded,
        old: ShardId,
        keys: &DualKeys,
    ) -> Result<Vec<Part>, ClientError> {
        let active = loaded.migration.clone().ok_or_else(|| {
            ClientError::new(
                sqlstate::INTERNAL,
                "the migration ended during a dual write",
            )
        })?;
        let old_name = shard_name(loaded, old);
        let ctx = self.ctx.clone();
        let Some(conn) = self.conns.get_mut(&old) else {
            return Err(ClientError::new(
                sqlstate::INTERNAL,
                "the transaction's backend is gone",
            ));
        };
        // Per new owner, the statements that make its rows of the moving keys exact.
        let mut applies: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
        for (table, table_keys) in &keys.tables {
            let Some((moving, shape)) = active.moving(table) else {
                continue;
            };
            let all: Vec<KeyValue> = table_keys.iter().map(|(k, _)| k.clone()).collect();
            query_rows(conn, &old_name, &lock_keys_sql(table, &all)).await?;
            let sql = read_images_sql(table, &moving.key_column, moving.key_type, &all);
            let images = query_rows(conn, &old_name, &sql).await?;
            let mut owners: BTreeMap<ShardId, Vec<KeyValue>> = BTreeMap::new();
            for (key, owner) in table_keys {
                owners.entry(*owner).or_default().push(key.clone());
            }
            for (owner, owned) in owners {
                let texts: Vec<String> = owned.iter().map(KeyValue::sql_text).collect();
                let rows: Vec<String> = images
                    .iter()
                    .filter(|row| {
                        row.first()
                            .and_then(Option::as_ref)
                            .is_some_and(|k| texts.contains(k))
                    })
                    .filter_map(|row| row.get(1).cloned().flatten())
                    .collect();
                applies.entry(owner).or_default().push(shape.apply_sql(
                    table,
                    &moving.key_column,
                    moving.key_type,
                    &owned,
                    &rows,
                ));
            }
        }
        let owners: Vec<String> = applies.keys().map(|o| shard_name(loaded, *o)).collect();
        let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
        let decision = record_decision(&ctx, conn, &old_name, &owners).await?;
        let mut prepared: Vec<Part> = Vec::new();
        for (owner, statements) in applies {
            let name = shard_name(loaded, owner);
            let gid = decision.gid(Kind::DualWrite, &old_name, &name);
            let attached = self.attach(loaded, owner).await;
            let failure = match attached {
                Err(e) => Some(e),
                Ok(mut conn) => {
                    let sql = format!(
                        "BEGIN; {}; PREPARE TRANSACTION {}",
                        statements.join("; "),
                        crate::session::state::settings::quote_literal(&gid)
                    );
                    let failure = match run(&mut conn, &sql).await {
                        Ok(None) => None,
                        Ok(Some(error)) => {
                            finish_quietly(&mut conn, "ROLLBACK").await;
                            Some(ClientError::from_shard(&error, &name))
                        }
                        Err(e) => {
                            conn.broken = true;
                            Some(ClientError::lost_shard(&name, e))
                        }
                    };
                    let part = Part {
                        shard: owner,
                        name: gid,
                        conn,
                    };
                    if failure.is_none() {
                        prepared.push(part);
                    } else {
                        self.release_parts(vec![part]);
                    }
                    failure
                }
            };
            if let Some(error) = failure {
                self.settle_copies(prepared, Some(false)).await;
                return Err(error);
            }
        }
        Ok(prepared)
    }

    /// Phase two: commits (`Some(true)`) or rolls back (`Some(false)`) the prepared copies,
    /// or leaves them prepared for the resolver (`None`, outcome unknown).
    async fn settle_copies(&mut self, mut copies: Vec<Part>, committed: Option<bool>) {
        if let Some(committed) = committed {
            let verb = if committed { "COMMIT" } else { "ROLLBACK" };
            for part in &mut copies {
                let sql = format!(
                    "{verb} PREPARED {}",
                    crate::session::state::settings::quote_literal(&part.name)
                );
                if !matches!(run(&mut part.conn, &sql).await, Ok(None)) {
                    part.conn.broken = true;
                    tracing::error!(transaction = %part.name, "{verb} PREPARED of a dual write failed; the resolver will finish it");
                }
            }
        }
        self.release_parts(copies);
    }

    /// Rolls back the transaction on `old` and forgets it.
    async fn abandon(&mut self, old: ShardId) {
        if let Some(mut conn) = self.conns.remove(&old) {
            finish_quietly(&mut conn, "ROLLBACK").await;
            self.end_transaction(old, conn);
        }
    }

    /// Commits the transaction the proxy opened on `old`: whether it committed, `None` when
    /// that is not known (the connection broke while it committed).
    async fn commit_quietly(&mut self, old: ShardId) -> Option<bool> {
        let Some(mut conn) = self.conns.remove(&old) else {
            return Some(false);
        };
        let committed = match twophase::end_transaction(&mut conn, "COMMIT", "COMMIT").await {
            Ok(None) => Some(true),
            Ok(Some(_)) => Some(false),
            Err(_) => None,
        };
        if committed != Some(true) {
            conn.broken = true;
        }
        self.end_transaction(old, conn);
        committed
    }

    fn end_transaction(&mut self, shard: ShardId, conn: Pooled) {
        self.tx = crate::session::state::transaction::Transaction::default();
        if conn.broken {
            Pools::discard(conn);
        } else {
            self.keep_or_release(shard, conn, false);
        }
    }

    async fn ready_idle(&mut self) -> Result<(), SessionEnd> {
        self.out.push(&msg::ready_for_query(b'I')).await?;
        Ok(self.out.flush().await?)
    }
}

fn shard_name(loaded: &Loaded, shard: ShardId) -> String {
    loaded
        .config
        .shards
        .get(shard)
        .map_or_else(|| format!("#{shard}"), |s| s.name.clone())
}

/// Runs one query and returns its rows as text; a shard error becomes the client's error.
async fn query_rows(
    conn: &mut Pooled,
    shard: &str,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, ClientError> {
    let encoding = conn.client_encoding();
    conn.send(&crate::session::local::query_message_in(encoding, sql)?)
        .await
        .map_err(|e| ClientError::lost_shard(shard, e.to_string()))?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let frame = conn
            .read()
            .await
            .map_err(|e| ClientError::lost_shard(shard, e.to_string()))?;
        match frame.tag() {
            tag::DATA_ROW => {
                let mut row = Vec::new();
                let mut column = 0;
                while let Some(value) = field(&frame, column) {
                    match value.map(|v| encoding.decode(v)).transpose() {
                        Ok(text) => row.push(text.map(Cow::into_owned)),
                        Err(e) => {
                            // Read on to `ReadyForQuery`, then fail.
                            error.get_or_insert_with(|| ClientError::from(e).bytes());
                        }
                    }
                    column += 1;
                }
                rows.push(row);
            }
            tag::ERROR_RESPONSE => {
                error.get_or_insert_with(|| frame.bytes().clone());
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match error {
        Some(error) => Err(ClientError::from_shard(&error, shard)),
        None => Ok(rows),
    }
}
