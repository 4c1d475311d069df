//! Extended-protocol segments whose one statement the proxy assembles from several shards (a
//! merged or combined read, a split `INSERT`, a `COPY` into a sharded table): the client's
//! other messages are answered here, in order, around the assembled result, since no single
//! backend runs the client's statement.

use bytes::BytesMut;
use shardline_router::copy::CopyInto;
use shardline_router::insert_select::InsertSelect;
use shardline_router::pull::PulledTable;
use shardline_router::split::InsertPart;
use shardline_router::ShardId;

use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::frontend::{execute_max_rows, BindView};
use crate::protocol::Frame;
use crate::session::extended::segment::{Item, Segment};
use crate::session::link::exchange::Reply;
use crate::session::multi::copy_in::RowSource;
use crate::session::multi::gather::MergeFailure;
use crate::session::multi::gather::{Delivery, Gather, Source};
use crate::session::state::statements::Statement;
use crate::session::{ClientError, Session, SessionEnd};

/// How the segment's one statement is assembled, as decided.
#[derive(Clone, Copy)]
pub(crate) enum Assembled<'a> {
    /// Rows merged or aggregates combined from these shards.
    Gather(&'a [ShardId]),
    /// A split multi-row `INSERT`.
    Split(&'a [InsertPart]),
    /// A `COPY` into a sharded table.
    Copy(&'a CopyInto),
    /// A read PostgreSQL answers once these tables' rows are gathered on the default shard.
    Pull(&'a [PulledTable]),
    /// An `INSERT … SELECT` into a sharded table.
    InsertSelect(&'a InsertSelect),
}

/// The client's messages of an assembled segment, sorted into what comes before the result
/// and what after.
struct Layout<'a> {
    /// Replies owed before the result (`ParseComplete`, `BindComplete`, `CloseComplete`).
    before: BytesMut,
    bind: &'a Frame,
    statement: &'a Statement,
    describe: bool,
    after: BytesMut,
    ready: bool,
}

impl Session {
    /// Runs a segment holding one statement the proxy assembles as `how` says.
    pub(crate) async fn run_assembled(
        &mut self,
        loaded: &Loaded,
        how: Assembled<'_>,
        segment: &Segment,
    ) -> Result<(), SessionEnd> {
        // An INSERT without RETURNING answers no rows, so a row limit cannot cut it (pgjdbc's
        // batched inserts send one); one with RETURNING cannot be cut into portions.
        let rowless = match how {
            Assembled::Split(parts) => !parts.iter().any(|p| p.returning),
            Assembled::InsertSelect(plan) => !plan.returns_rows(),
            _ => false,
        };
        let layout = match layout(&segment.items, rowless) {
            Ok(layout) => layout,
            Err(error) => return self.fail(error).await,
        };
        let statement = layout.statement;
        let view = match BindView::new(layout.bind) {
            Ok(view) => view,
            Err(_) => {
                let error = ClientError::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    "the Bind of this segment could not be read again",
                );
                return self.fail(error).await;
            }
        };
        self.out.push(&layout.before).await?;
        let source = Source::Extended {
            sql: &statement.query,
            param_types: &statement.param_types,
            bind: &view,
        };
        let delivery = Delivery {
            describe: layout.describe,
            formats: view.result_formats(),
            after: layout.after.freeze(),
            ready: layout.ready,
            extended: true,
        };
        match (how, Gather::of(&statement.plan)) {
            (Assembled::Split(parts), _) => {
                self.insert_split(loaded, parts.to_vec(), &source, &delivery)
                    .await
            }
            (Assembled::Copy(spec), _) => {
                let rows = &mut RowSource::Client;
                self.copy_split(loaded, &statement.query, spec, None, &delivery, rows)
                    .await
            }
            (Assembled::InsertSelect(plan), _) => {
                self.insert_select(loaded, plan, &source, &delivery).await
            }
            (Assembled::Pull(tables), _) => {
                self.pull_up_extended(loaded, tables, &source, &delivery)
                    .await
            }
            (Assembled::Gather(shards), Some(gather)) => {
                self.gather(loaded, shards, source, gather, delivery).await
            }
            (Assembled::Gather(_), None) => {
                let error = ClientError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "this statement cannot be assembled from several shards; restrict it to one shard key",
                );
                self.complete(Err(MergeFailure::Query(error)), &delivery)
                    .await
            }
        }
    }
}

/// Sorts the segment's messages around its one `Execute`, refusing shapes whose replies could
/// not be given in order without a single backend running the statement.
fn layout(items: &[Item], rowless: bool) -> Result<Layout<'_>, ClientError> {
    let refuse = |what: &str| {
        ClientError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} in the same pipeline segment as a statement that runs on several shards is not supported; send a Sync after it"),
        )
    };
    let mut before = BytesMut::new();
    let mut after = BytesMut::new();
    let mut bind = None;
    let mut describe = false;
    let mut executed = false;
    let mut ready = false;
    for item in items {
        let replies = if executed { &mut after } else { &mut before };
        match item {
            Item::Parse { .. } if !executed => {
                replies.extend_from_slice(&msg::empty(tag::PARSE_COMPLETE))
            }
            Item::UsesStatement {
                frame,
                statement,
                reply: Reply::Bind,
                ..
            } if !executed && bind.is_none() => {
                replies.extend_from_slice(&msg::empty(tag::BIND_COMPLETE));
                bind = Some((frame, statement.as_ref()));
            }
            Item::Forward {
                reply: Some(Reply::DescribePortal),
                ..
            } if bind.is_some() && !executed => describe = true,
            Item::Execute { frame, .. } if bind.is_some() && !executed => {
                if !rowless && execute_max_rows(frame).unwrap_or(0) != 0 {
                    return Err(refuse(
                        "fetching a multi-shard result in parts (Execute with a row limit)",
                    ));
                }
                executed = true;
            }
            Item::CloseStatement
            | Item::Forward {
                reply: Some(Reply::Close),
                ..
            } => replies.extend_from_slice(&msg::empty(tag::CLOSE_COMPLETE)),
            Item::Forward {
                reply: Some(Reply::Sync),
                ..
            } => ready = true,
            Item::Forward { reply: None, .. } => {}
            Item::UsesStatement {
                reply: Reply::DescribeStatement,
                ..
            } => return Err(refuse("describing a statement")),
            _ => return Err(refuse("another statement")),
        }
    }
    match (bind, executed) {
        (Some((bind, statement)), true) => Ok(Layout {
            before,
            bind,
            statement,
            describe,
            after,
            ready,
        }),
        _ => Err(refuse("a Bind without its Execute")),
    }
}
