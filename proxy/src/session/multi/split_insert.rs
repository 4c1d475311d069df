//! A multi-row `INSERT` whose rows belong to different shards, run as one atomic statement.
//!
//! The router splits the statement into one `INSERT` per shard (`shardline_router::split`).
//! Each part runs in its own transaction on its shard, and they commit together through
//! [`twophase`](crate::session::multi::twophase): if any part fails, every shard rolls back, so
//! the client's statement happens everywhere or nowhere — never partly, as a multi-row `INSERT`
//! on one server never does.

use bytes::BytesMut;
use shardline_router::split::InsertPart;
use shardline_router::ShardId;

use crate::context::Loaded;
use crate::protocol::backend::{self as msg, tag};
use crate::session::link::outgoing::Outgoing;
use crate::session::multi::gather::MergeFailure;
use crate::session::multi::gather::{Delivery, Source};
use crate::session::multi::twophase::{collect, Answer, Part};
use crate::session::{ClientError, Session, SessionEnd};

impl Session {
    /// Runs the parts of a split `INSERT` atomically across their shards, in the client's
    /// protocol (`source`), answering as `delivery` says.
    pub(crate) async fn insert_split(
        &mut self,
        loaded: &Loaded,
        parts: Vec<InsertPart>,
        source: &Source<'_>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        let shards: Vec<ShardId> = parts.iter().map(|p| p.shard).collect();
        let started = std::time::Instant::now();
        let mut running = Vec::with_capacity(parts.len());
        let mut results = Vec::with_capacity(parts.len());
        let mut failure: Option<ClientError> = None;
        for part in &parts {
            let name = loaded
                .config
                .shards
                .get(part.shard)
                .map_or_else(String::new, |s| s.name.clone());
            let request = match source.request(&part.statement, &delivery.formats, self.encoding())
            {
                Ok(request) => request,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            let mut conn = match self.attach(loaded, part.shard).await {
                Ok(conn) => conn,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let Outgoing {
                bytes: mut out,
                queue,
            } = self.prelude_only(part.shard, &mut conn);
            let begin = self.part_begin();
            let cycles = queue.len() + usize::from(begin.is_some()) + 1;
            out.extend_from_slice(&begin.unwrap_or_default());
            out.extend_from_slice(&request);
            let result = match conn.send(&out).await {
                Ok(()) => collect(&mut conn, cycles).await,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(result) => {
                    if let (None, Some(error)) = (&failure, &result.error) {
                        failure = Some(ClientError::from_shard(error, &name));
                    }
                    results.push(result);
                }
                Err(e) => {
                    conn.broken = true;
                    failure.get_or_insert_with(|| ClientError::lost_shard(&name, e));
                }
            }
            running.push(Part {
                shard: part.shard,
                name,
                conn,
            });
            if failure.is_some() {
                break;
            }
        }

        if failure.is_none() {
            failure = self.settle_parts(running).await;
            if failure.is_none() {
                self.ctx
                    .stats
                    .record_scatter(loaded, &shards, true, started.elapsed());
                let rows: Vec<&[usize]> = parts.iter().map(|p| p.rows.as_slice()).collect();
                return self.send_merged(results, &rows, delivery).await;
            }
        } else {
            self.abandon_parts(running).await;
        }
        self.ctx
            .stats
            .record_scatter(loaded, &shards, false, started.elapsed());
        match failure {
            Some(error) => {
                self.complete(Err(MergeFailure::Query(error)), delivery)
                    .await
            }
            None => Ok(()),
        }
    }

    /// One `RowDescription` (if the client asked), every shard's `RETURNING` rows in the
    /// order of the client's `VALUES` list (`rows`: each part's rows in it), one summed
    /// `CommandComplete`.
    async fn send_merged(
        &mut self,
        results: Vec<Answer>,
        rows: &[&[usize]],
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        let mut out = BytesMut::new();
        let description = results.iter().find_map(|r| r.row_description.clone());
        match (delivery.describe, description) {
            (true, Some(description)) => out.extend_from_slice(&description),
            // No RETURNING: a described portal returns no rows, as PostgreSQL's `NoData`
            // says (the simple protocol has no Describe to answer).
            (true, None) if delivery.extended => out.extend_from_slice(&msg::empty(tag::NO_DATA)),
            _ => {}
        }
        let mut tags = Vec::new();
        let mut returned = Vec::with_capacity(results.len());
        for result in results {
            returned.push(result.rows);
            tags.extend(result.tag);
        }
        for row in in_values_order(returned, rows) {
            out.extend_from_slice(&row);
        }
        self.out.push(&out).await?;
        self.complete(Ok(msg::sum_tags(&tags)), delivery).await
    }
}

/// The parts' `RETURNING` rows in the order of the client's `VALUES` list, as one server
/// returns them (ORMs match returned keys to their objects by position). When a part returned
/// fewer rows than it inserted (`ON CONFLICT DO NOTHING` skipped some), which row is which is
/// unknown, and the parts' rows follow each other.
fn in_values_order<R>(returned: Vec<Vec<R>>, rows: &[&[usize]]) -> Vec<R> {
    let total: usize = rows.iter().map(|r| r.len()).sum();
    let aligned = returned.len() == rows.len()
        && returned
            .iter()
            .zip(rows)
            .all(|(got, placed)| got.len() == placed.len());
    if !aligned {
        return returned.into_iter().flatten().collect();
    }
    let mut slots: Vec<Option<R>> = (0..total).map(|_| None).collect();
    for (got, placed) in returned.into_iter().zip(rows) {
        for (row, &index) in got.into_iter().zip(placed.iter()) {
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(row);
            }
        }
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::in_values_order;

    #[test]
    fn returning_rows_come_back_in_values_order() {
        let returned = vec![vec!["b", "d"], vec!["a", "c"]];
        let rows: [&[usize]; 2] = [&[1, 3], &[0, 2]];
        assert_eq!(in_values_order(returned, &rows), ["a", "b", "c", "d"]);
        // A part that skipped a row: the parts' rows as they came.
        let returned = vec![vec!["b"], vec!["a", "c"]];
        assert_eq!(in_values_order(returned, &rows), ["b", "a", "c"]);
    }
}
