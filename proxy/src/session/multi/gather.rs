//! Multi-shard reads whose rows the proxy puts together rather than concatenates: the
//! statement each shard runs (rewritten by the router, in the client's protocol), the formats
//! the shards answer in, and what the client is owed around the rows.
//!
//! In the simple protocol the client's text is rewritten and sent as a `Query`. In the extended
//! protocol the rewritten text is parsed as each shard's unnamed statement and bound with the
//! client's own parameter values (only those the rewrite still uses), so parameters keep their
//! types and formats; `LIMIT $n`/`OFFSET $n` are read from the `Bind` and applied by the proxy.

use bytes::Bytes;
use shardline_router::combine::{AggregateSpec, Combine};
use shardline_router::merge::{MergeSpec, Slice};
use shardline_router::placeholders::ShardStatement;
use shardline_router::pull::pulled_tables;
use shardline_router::{Param, Params, Plan, ShardId};

use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::encoding::{ClientEncoding, TextError};
use crate::protocol::frontend::{
    build_parse, describe_execute_sync, is_binary, param_types_subset, BindView,
};
use crate::session::multi::partial;
use crate::session::{local, ClientError, Session, SessionEnd};

/// How the rows of a multi-shard read are put together.
#[derive(Clone, Copy)]
pub(crate) enum Gather<'a> {
    /// A streaming merge of sorted results.
    Ordered(&'a MergeSpec),
    /// Groups combined from partial aggregates.
    Combined(&'a AggregateSpec),
}

impl Gather<'_> {
    /// How a multi-shard read of `plan` is put together, if the proxy must (rather than
    /// concatenate the shards' rows): aggregates are combined, ordered or limited rows merged.
    pub fn of(plan: &Plan) -> Option<Gather<'_>> {
        match (&plan.aggregate, &plan.merge) {
            (Some(spec), _) => Some(Gather::Combined(spec)),
            (None, Some(spec)) => Some(Gather::Ordered(spec)),
            (None, None) => None,
        }
    }
}

/// The statement to gather, as the client sent it.
pub(crate) enum Source<'a> {
    /// A simple-protocol query, with the constants the plan cache took out of its text as
    /// parameters of the cached plan (see `shardline_router::normalize`).
    Simple {
        sql: &'a str,
        literals: &'a [Param<'a>],
    },
    /// An extended-protocol execution: the statement's text and declared parameter types, and
    /// the client's `Bind`.
    Extended {
        sql: &'a str,
        param_types: &'a [u8],
        bind: &'a BindView<'a>,
    },
}

impl Source<'_> {
    /// The statement's text as the client sent it.
    pub fn sql(&self) -> &str {
        match self {
            Source::Simple { sql, .. } | Source::Extended { sql, .. } => sql,
        }
    }

    pub fn params(&self) -> Vec<Param<'_>> {
        match self {
            Source::Simple { literals, .. } => literals.to_vec(),
            Source::Extended { bind, .. } => bind.params(),
        }
    }

    /// The messages that run `statement` on a shard, answering in `formats`; both forms end
    /// with one `ReadyForQuery`.
    /// `encoding` is the shards' `client_encoding` (the client's).
    pub fn request(
        &self,
        statement: &ShardStatement,
        formats: &[i16],
        encoding: ClientEncoding,
    ) -> Result<Bytes, TextError> {
        Ok(match self {
            Source::Simple { .. } => local::query_message_in(encoding, &statement.sql)?,
            Source::Extended {
                param_types, bind, ..
            } => {
                let types = param_types_subset(param_types, &statement.params);
                let sql = encoding.encode(&statement.sql)?;
                let mut out = build_parse(b"", &sql, &types).to_vec();
                out.extend_from_slice(&bind.subset(&statement.params, formats));
                out.extend_from_slice(describe_execute_sync());
                Bytes::from(out)
            }
        })
    }
}

/// What went wrong while assembling a result from several shards (merging rows, combining
/// aggregates, splitting an `INSERT` or a `COPY`).
pub(crate) enum MergeFailure {
    Client(std::io::Error),
    Query(ClientError),
}

impl From<std::io::Error> for MergeFailure {
    fn from(e: std::io::Error) -> Self {
        MergeFailure::Client(e)
    }
}

/// What the client is owed besides the rows.
#[derive(Clone)]
pub(crate) struct Delivery {
    /// Send the row description (always in the simple protocol; on `Describe` in the extended).
    pub describe: bool,
    /// The client's result format codes from `Bind`: none (all text), one for all, or one per
    /// column.
    pub formats: Vec<i16>,
    /// Replies owed for the client's messages after `Execute`, sent after the completion.
    pub after: Bytes,
    /// End with `ReadyForQuery` (the simple protocol, or a `Sync` in the extended).
    pub ready: bool,
    /// The client speaks the extended protocol.
    pub extended: bool,
}

impl Delivery {
    /// A simple-protocol query: description, text rows, completion, `ReadyForQuery`.
    pub fn simple() -> Delivery {
        Delivery {
            describe: true,
            formats: Vec::new(),
            after: Bytes::new(),
            ready: true,
            extended: false,
        }
    }

    /// Whether the client wants output column `column` in binary.
    pub fn binary(&self, column: usize) -> bool {
        is_binary(&self.formats, column)
    }
}

impl Session {
    /// Runs a multi-shard read whose rows the proxy must merge (`ORDER BY`/`LIMIT`) or combine
    /// (aggregates) rather than concatenate.
    pub(crate) async fn gather(
        &mut self,
        loaded: &Loaded,
        shards: &[ShardId],
        source: Source<'_>,
        gather: Gather<'_>,
        delivery: Delivery,
    ) -> Result<(), SessionEnd> {
        let params = source.params();
        let prepared = shard_request(&source, &params, gather, &delivery, self.encoding());
        let (request, slice, formats) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                return self
                    .complete(Err(MergeFailure::Query(error)), &delivery)
                    .await
            }
        };
        let before = self.out.mark();
        let (mut streams, failure, missing) = self.open_streams(loaded, shards, &request).await;
        if failure.is_none() && !missing.is_empty() {
            self.out.push(&partial::warning(&missing)).await?;
        }
        let result = match (failure, gather) {
            (Some(error), _) => Err(MergeFailure::Query(error)),
            (None, Gather::Ordered(spec)) => {
                self.stream_merged(&mut streams, spec, slice, &formats, &delivery)
                    .await
            }
            (None, Gather::Combined(spec)) => {
                self.combine_streams(&mut streams, spec, slice, &formats, &delivery, &params)
                    .await
            }
        };
        let result = self.close_streams(streams, result).await;
        if let Err(MergeFailure::Query(error)) = &result {
            // Types the combiner cannot add or compare exactly show only in the shards'
            // answers; PostgreSQL answers exactly once the rows are in one place. (A shard's
            // own error carries its frame, not this code: the shards' transactions are
            // intact, the streams drained.)
            let untouched = self.out.unchanged_since(before);
            if untouched && error.sqlstate == sqlstate::FEATURE_NOT_SUPPORTED {
                if let Ok(tables) = pulled_tables(&loaded.config, source.sql()) {
                    if !tables.is_empty() {
                        return match source {
                            Source::Simple { sql, .. } => {
                                Box::pin(self.pull_up(loaded, &tables, sql)).await
                            }
                            Source::Extended { .. } => {
                                Box::pin(self.pull_up_extended(loaded, &tables, &source, &delivery))
                                    .await
                            }
                        };
                    }
                }
            }
        }
        let tag = result.map(|rows| format!("SELECT {rows}"));
        self.complete(tag, &delivery).await
    }

    /// Completes a statement the proxy assembled from several shards (`tag`) or reports its
    /// error, then answers what followed it.
    pub(crate) async fn complete(
        &mut self,
        result: Result<String, MergeFailure>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        if matches!(result, Err(MergeFailure::Query(_))) {
            // A statement that fails inside a transaction block fails the block.
            self.tx.fail();
        }
        match result {
            Ok(tag) => {
                self.out.push(&msg::command_complete(&tag)).await?;
                self.out.push(&delivery.after).await?;
            }
            Err(MergeFailure::Client(e)) => return Err(SessionEnd::ClientIo(e)),
            Err(MergeFailure::Query(error)) if delivery.ready => return self.fail(error).await,
            // After an error PostgreSQL skips the rest up to `Sync`, which is still to come
            // (after a `Flush`, or after an extended-protocol COPY's data).
            Err(MergeFailure::Query(error)) => {
                self.out.push(&error.bytes()).await?;
                self.skip_to_sync = true;
            }
        }
        if delivery.ready {
            self.out
                .push(&msg::ready_for_query(self.tx.status()))
                .await?;
        }
        Ok(self.out.flush().await?)
    }
}

/// The shards' messages, the bound `LIMIT`/`OFFSET`, and the result formats the shards are
/// asked for (per shard column).
fn shard_request(
    source: &Source<'_>,
    params: &[Param<'_>],
    gather: Gather<'_>,
    delivery: &Delivery,
    encoding: ClientEncoding,
) -> Result<(Bytes, Slice, Vec<i16>), ClientError> {
    let params = params.to_vec();
    let params: &dyn Params = &params;
    let sql = source.sql();
    let (statement, slice, formats) = match gather {
        Gather::Ordered(spec) => {
            let slice = spec.window.bind(params)?;
            // Visible columns as the client asked; hidden sort columns in text.
            let mut formats = delivery.formats.clone();
            if formats.len() > 1 {
                formats.extend(std::iter::repeat_n(0, spec.hidden));
            }
            let statement = shardline_router::merge::shard_statement(sql, slice);
            (statement, slice, formats)
        }
        Gather::Combined(spec) => {
            let slice = spec.window.bind(params)?;
            // Counts, sums and averages are combined in text and encoded for the client
            // afterwards; group keys and extremes arrive in the client's format.
            let formats = spec
                .columns
                .iter()
                .enumerate()
                .map(|(i, combine)| {
                    let passed_through = i < spec.visible
                        && matches!(combine, Combine::Group | Combine::Min | Combine::Max);
                    i16::from(passed_through && delivery.binary(i))
                })
                .collect();
            let statement = shardline_router::combine::shard_statement(sql);
            (statement, slice, formats)
        }
    };
    let statement = statement.ok_or_else(|| {
        ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "this statement cannot be rewritten for the shards; restrict it to one shard key",
        )
    })?;
    Ok((
        source.request(&statement, &formats, encoding)?,
        slice,
        formats,
    ))
}
