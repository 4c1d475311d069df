//! `ORDER BY` / `LIMIT` across shards: a streaming k-way merge.
//!
//! Every shard runs the query sorted (with `LIMIT limit+offset` and any hidden sort columns,
//! see `shardline_router::merge`); the proxy holds one row per shard, repeatedly sends the
//! smallest, and reads the next row from that shard. Memory stays at one row per shard plus
//! the socket buffers, whatever the result size. `OFFSET` and `LIMIT` are applied to the merged
//! stream; once the limit is reached the remaining rows are read and dropped so the backends
//! end their queries cleanly.

use std::borrow::Cow;
use std::cmp::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use shardline_router::merge::{MergeSpec, Slice};
use shardline_router::ShardId;

use crate::backend::pool::{Pooled, Pools};
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::protocol::encoding::ClientEncoding;
use crate::protocol::frontend::is_binary;
use crate::protocol::Frame;
use crate::session::link::attach::skip_prelude;
use crate::session::link::outgoing::Outgoing;
use crate::session::multi::gather::{Delivery, MergeFailure};
use crate::session::multi::partial;
use crate::session::{local, ClientError, Session};
use shardline_router::value::order::{compare_key, Comparison, ValueOrder};

/// One shard's sorted stream.
pub(crate) struct Stream {
    shard: ShardId,
    name: String,
    conn: Pooled,
    /// The shard's current row, not yet sent.
    head: Option<Frame>,
    /// The shard has sent its `CommandComplete` (or failed) and only `ReadyForQuery` is left.
    exhausted: bool,
}

impl Session {
    /// Sends `request` (a query, or an extended-protocol execution ending in `Sync`) to every
    /// shard in `shards` (the first also reports its collation) and returns the streams
    /// opened, with the error that stopped opening more, if any.
    ///
    /// Under `shardline.partial_results` a shard that cannot be reached is left out instead
    /// ([`Session::may_leave_out`]) and named in the third value; the caller warns the client.
    pub(crate) async fn open_streams(
        &mut self,
        loaded: &Loaded,
        shards: &[ShardId],
        request: &[u8],
    ) -> (Vec<Stream>, Option<ClientError>, Vec<String>) {
        let mut streams = Vec::with_capacity(shards.len());
        let mut missing = Vec::new();
        for &shard in shards {
            let name = loaded
                .config
                .shards
                .get(shard)
                .map_or_else(String::new, |s| s.name.clone());
            let mut conn = match self.attach(loaded, shard).await {
                Ok(conn) => conn,
                Err(e) if self.may_leave_out(shard, &e) => {
                    missing.push(partial::left_out(&name, &e));
                    continue;
                }
                Err(e) => return (streams, Some(e), missing),
            };
            let Outgoing {
                bytes: mut out,
                queue: prelude,
            } = self.prelude_only(shard, &mut conn);
            // The first shard also says how text compares there.
            if streams.is_empty() {
                out.extend_from_slice(&local::query_message(COLLATION_QUERY));
            }
            out.extend_from_slice(request);
            let skip = prelude.len();
            let sent = conn.send(&out).await;
            let mut stream = Stream {
                shard,
                name,
                conn,
                head: None,
                exhausted: false,
            };
            let ready = match sent {
                Ok(()) => skip_prelude(&mut stream.conn, skip).await,
                Err(e) => Err(e),
            };
            if let Err(e) = ready {
                stream.conn.broken = true;
                let error = ClientError::from_backend(&stream.name, &e);
                streams.push(stream);
                return (streams, Some(error), missing);
            }
            streams.push(stream);
        }
        if streams.is_empty() && !missing.is_empty() {
            let error = ClientError::new(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "no shard of the query could be reached: {}",
                    missing.join(", ")
                ),
            );
            return (streams, Some(error), missing);
        }
        (streams, None, missing)
    }

    /// Reads the streams to their ends and releases their backends; a stream that cannot be
    /// read to its end turns a success into an error, since the backend state is unknown.
    pub(crate) async fn close_streams(
        &mut self,
        mut streams: Vec<Stream>,
        result: Result<u64, MergeFailure>,
    ) -> Result<u64, MergeFailure> {
        let drained = drain(&mut streams).await;
        self.release_streams(streams);
        match result {
            Ok(_) if !drained => Err(MergeFailure::Query(ClientError::new(
                sqlstate::CONNECTION_FAILURE,
                "lost a shard connection while finishing the query",
            ))),
            other => other,
        }
    }

    /// Reads descriptions, then merges rows to the client; returns how many rows were sent.
    pub(crate) async fn stream_merged(
        &mut self,
        streams: &mut [Stream],
        spec: &MergeSpec,
        slice: Slice,
        formats: &[i16],
        delivery: &Delivery,
    ) -> Result<u64, MergeFailure> {
        let Some((collation, description)) = read_header(streams).await? else {
            return Ok(0);
        };
        let (types, visible) = describe(&description, spec.hidden).ok_or_else(|| {
            MergeFailure::Query(ClientError::new(
                sqlstate::PROTOCOL_VIOLATION,
                "malformed RowDescription from a shard",
            ))
        })?;
        let mut keys = Vec::with_capacity(spec.order.len());
        for key in &spec.order {
            let column = spec
                .column_of(key, types.len())
                .ok_or_else(|| unsupported("a sort column is missing from the shard's rows"))?;
            let (comparison, collated) = Comparison::for_type(types[column])
                .ok_or_else(|| unsupported(&format!("ORDER BY on a column of type oid {} across shards is not supported yet; sort by a number, text, date or timestamp column, or restrict the query to one shard", types[column])))?;
            if collated && !matches!(collation.as_str(), "C" | "POSIX" | "C.UTF-8" | "C.utf8") {
                return Err(unsupported(&format!(
                    "ORDER BY on text across shards needs the shards' collation to be C (it is {collation}); restrict the query to one shard or sort on the client"
                )));
            }
            let order = ValueOrder {
                comparison,
                binary: is_binary(formats, column),
            };
            // Shards sort text by its UTF-8 bytes; the client's bytes may be in another encoding.
            let encoding = self.encoding();
            let decode = (collated && encoding != ClientEncoding::Utf8).then_some(encoding);
            keys.push((*key, column, order, decode));
        }
        if delivery.describe {
            self.out
                .push(&strip_description(&description, visible))
                .await?;
        }

        for stream in streams.iter_mut() {
            advance(stream).await?;
        }
        let mut skipped = 0;
        let mut sent = 0u64;
        loop {
            if slice.limit.is_some_and(|limit| sent >= limit) {
                return Ok(sent);
            }
            let mut best: Option<usize> = None;
            for (i, stream) in streams.iter().enumerate() {
                let Some(row) = &stream.head else { continue };
                let better = match best.and_then(|b| streams[b].head.as_ref()) {
                    None => true,
                    Some(current) => compare_rows(&keys, row, current)? == Ordering::Less,
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(best) = best else { return Ok(sent) };
            let row = streams[best].head.take();
            if let Some(row) = row {
                if skipped < slice.offset {
                    skipped += 1;
                } else {
                    self.out
                        .push(&strip_row(&row, visible, spec.hidden))
                        .await?;
                    sent += 1;
                }
            }
            advance(&mut streams[best]).await?;
        }
    }

    fn release_streams(&mut self, streams: Vec<Stream>) {
        for stream in streams {
            if stream.conn.broken || !stream.exhausted {
                Pools::discard(stream.conn);
            } else {
                self.keep_or_release(stream.shard, stream.conn, false);
            }
        }
    }
}

pub(crate) fn unsupported(message: &str) -> MergeFailure {
    MergeFailure::Query(ClientError::new(sqlstate::FEATURE_NOT_SUPPORTED, message))
}

/// The first shard's collation and the row description every shard sends first; `None` when
/// there are no shards.
pub(crate) async fn read_header(
    streams: &mut [Stream],
) -> Result<Option<(String, Frame)>, MergeFailure> {
    let collation = match streams.first_mut() {
        Some(first) => read_collation(first).await?,
        None => return Ok(None),
    };
    let mut description = None;
    for stream in streams.iter_mut() {
        match next_message(stream).await? {
            Some(frame) if frame.tag() == tag::ROW_DESCRIPTION => {
                description = description.or(Some(frame))
            }
            _ => {
                return Err(unsupported(
                    "a shard did not describe the rows of a merged query",
                ))
            }
        }
    }
    Ok(description.map(|d| (collation, d)))
}

/// The stream's next message; a lost connection names the shard.
async fn read(stream: &mut Stream) -> Result<Frame, MergeFailure> {
    let name = &stream.name;
    stream
        .conn
        .read()
        .await
        .map_err(|e| MergeFailure::Query(ClientError::from_backend(name, &e)))
}

/// How text compares on a shard: the database's collation, unless some column of a user
/// table has a collation of its own (other than `C`/`POSIX`), which the proxy cannot tell
/// from a row description; text is then merged by no one but PostgreSQL.
const COLLATION_QUERY: &str = "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid >= 16384 AND attcollation NOT IN (0, 100, 950, 951) AND NOT attisdropped) THEN 'per column' ELSE current_setting('lc_collate') END";

/// The answer to [`COLLATION_QUERY`] on the first shard.
async fn read_collation(stream: &mut Stream) -> Result<String, MergeFailure> {
    let mut collation = String::new();
    loop {
        let frame = read(stream).await?;
        match frame.tag() {
            tag::DATA_ROW => collation = msg::first_text_field(frame.body()).unwrap_or_default(),
            tag::READY_FOR_QUERY => return Ok(collation),
            _ => {}
        }
    }
}

/// The next message of a stream's query that matters: a description, a row, or `None` at the
/// end of its rows. A shard error becomes the merge's error, naming the shard.
pub(crate) async fn next_message(stream: &mut Stream) -> Result<Option<Frame>, MergeFailure> {
    if stream.exhausted {
        return Ok(None);
    }
    loop {
        let frame = read(stream).await?;
        match frame.tag() {
            tag::ROW_DESCRIPTION | tag::DATA_ROW => return Ok(Some(frame)),
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY => {
                stream.exhausted = true;
                return Ok(None);
            }
            tag::ERROR_RESPONSE => {
                stream.exhausted = true;
                return Err(MergeFailure::Query(ClientError {
                    sqlstate: sqlstate::INTERNAL,
                    message: String::new(),
                    frame: Some(msg::error_naming_shard(&frame, &stream.name)),
                }));
            }
            _ => {}
        }
    }
}

/// Loads the stream's next row into `head`.
async fn advance(stream: &mut Stream) -> Result<(), MergeFailure> {
    stream.head = next_message(stream).await?;
    Ok(())
}

/// Reads every stream to its `ReadyForQuery`, so its backend can serve again. False if a
/// connection failed.
async fn drain(streams: &mut [Stream]) -> bool {
    let mut clean = true;
    for stream in streams.iter_mut() {
        if stream.conn.broken {
            clean = false;
            continue;
        }
        loop {
            match stream.conn.read().await {
                Ok(frame) if frame.tag() == tag::READY_FOR_QUERY => {
                    stream.exhausted = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    stream.conn.broken = true;
                    clean = false;
                    break;
                }
            }
        }
    }
    clean
}

/// Column type OIDs of a `RowDescription`, and how many columns the client sees.
pub(crate) fn describe(frame: &Frame, hidden: usize) -> Option<(Vec<u32>, usize)> {
    let body = frame.body();
    let count = usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?));
    let mut types = Vec::with_capacity(count);
    let mut at = 2;
    for _ in 0..count {
        let name_end = at + body.get(at..)?.iter().position(|b| *b == 0)?;
        let fixed = body.get(name_end + 1..name_end + 19)?;
        types.push(u32::from_be_bytes(fixed[6..10].try_into().ok()?));
        at = name_end + 19;
    }
    Some((types, count.checked_sub(hidden)?))
}

/// A `RowDescription` with only its first `visible` fields.
fn strip_description(frame: &Frame, visible: usize) -> Bytes {
    let body = frame.body();
    let mut at = 2;
    for _ in 0..visible {
        match body
            .get(at..)
            .and_then(|rest| rest.iter().position(|b| *b == 0))
        {
            Some(end) => at += end + 19,
            None => return frame.bytes().clone(),
        }
    }
    rebuild(
        tag::ROW_DESCRIPTION,
        visible,
        body.get(2..at).unwrap_or_default(),
    )
}

/// A `DataRow` without its trailing `hidden` values.
fn strip_row(frame: &Frame, visible: usize, hidden: usize) -> Bytes {
    if hidden == 0 {
        return frame.bytes().clone();
    }
    let body = frame.body();
    let mut at = 2;
    for _ in 0..visible {
        let Some(len) = body
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
        else {
            return frame.bytes().clone();
        };
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    rebuild(tag::DATA_ROW, visible, body.get(2..at).unwrap_or_default())
}

pub(crate) fn rebuild(message: u8, count: usize, fields: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(fields.len() + 7);
    out.put_u8(message);
    out.put_i32(i32::try_from(fields.len() + 6).unwrap_or(i32::MAX));
    out.put_u16(u16::try_from(count).unwrap_or(u16::MAX));
    out.put_slice(fields);
    out.freeze()
}

/// Value `column` of a `DataRow` (`None` for NULL).
pub(crate) fn field(frame: &Frame, column: usize) -> Option<Option<&[u8]>> {
    let body = frame.body();
    let mut at = 2;
    for i in 0..=column {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let value = if len < 0 {
            None
        } else {
            let end = at + usize::try_from(len).ok()?;
            let v = body.get(at..end)?;
            at = end;
            Some(v)
        };
        if i == column {
            return Some(value);
        }
    }
    None
}

/// A text value in the client's encoding as UTF-8 bytes, the order the shards sorted it in.
fn as_utf8(
    encoding: ClientEncoding,
    value: Option<&[u8]>,
) -> Result<Option<Cow<'_, [u8]>>, MergeFailure> {
    let Some(value) = value else {
        return Ok(None);
    };
    match encoding.decode(value) {
        Ok(Cow::Borrowed(text)) => Ok(Some(Cow::Borrowed(text.as_bytes()))),
        Ok(Cow::Owned(text)) => Ok(Some(Cow::Owned(text.into_bytes()))),
        Err(e) => Err(MergeFailure::Query(e.into())),
    }
}

/// Orders two rows by the sort keys.
fn compare_rows(
    keys: &[(
        shardline_router::merge::SortKey,
        usize,
        ValueOrder,
        Option<ClientEncoding>,
    )],
    a: &Frame,
    b: &Frame,
) -> Result<Ordering, MergeFailure> {
    for (key, column, order, decode) in keys {
        let (va, vb) = match (field(a, *column), field(b, *column)) {
            (Some(va), Some(vb)) => (va, vb),
            _ => {
                return Err(MergeFailure::Query(ClientError::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    "malformed DataRow from a shard",
                )))
            }
        };
        let (va, vb) = match decode {
            Some(encoding) => (as_utf8(*encoding, va)?, as_utf8(*encoding, vb)?),
            None => (va.map(Cow::Borrowed), vb.map(Cow::Borrowed)),
        };
        let ordering = compare_key(key, *order, va.as_deref(), vb.as_deref())
            .ok_or_else(|| unsupported("a sort value across shards could not be compared (only ISO dates, finite numbers and text in C collation are merged); restrict the query to one shard"))?;
        if ordering != Ordering::Equal {
            return Ok(ordering);
        }
    }
    Ok(Ordering::Equal)
}
