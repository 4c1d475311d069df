//! The rows of a routed COPY: where they come from ([`RowSource`]: the client, a shard's
//! `COPY … TO STDOUT`, or rows held earlier) and which shard's buffer each goes to
//! ([`RowRouter`], by the key in its column, read in the client's encoding).

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use shardline_router::copy::{trim_line_end, CopyFormat, CopyInto, RowSplitter};
use shardline_router::ShardId;

use crate::backend::pool::Pooled;
use crate::protocol::backend::{sqlstate, tag};
use crate::protocol::encoding::ClientEncoding;
use crate::protocol::{Frame, FrameError, FrameReader};
use crate::session::{ClientError, SessionEnd};
use crate::socket::SocketRead;

/// Rows are sent to a shard in `CopyData` messages of about this size.
const BATCH_BYTES: usize = 64 * 1024;

/// The longest row a routed COPY takes: PostgreSQL's own limit on a COPY line (1 GB). Without
/// it a client could make the proxy hold a row without end; with it a batch (rows up to
/// [`BATCH_BYTES`], then one more) always fits a message's `i32` length.
const MAX_ROW_BYTES: usize = 1 << 30;

/// Where the rows of a routed COPY come from.
pub(crate) enum RowSource<'a> {
    /// The client's `CopyData` messages (`COPY … FROM STDIN`).
    Client,
    /// A backend's `COPY … TO STDOUT`, already started (the rows of an `INSERT … SELECT`).
    Shard {
        conn: &'a mut Pooled,
        /// The shard's name, for errors.
        name: String,
        /// The backend finished its COPY (or failed it) and is reading commands again.
        ended: bool,
    },
    /// `CopyData` messages read earlier (the rows of an `INSERT … SELECT` inside a transaction
    /// block, whose staging backend is also one the rows go to).
    Buffered(VecDeque<Frame>),
}

/// The next message of a COPY's row stream, as the routing reads it.
pub(super) enum Incoming {
    Data(Frame),
    Done,
    Failed(ClientError),
    /// Anything else (a client's `Flush` or `Sync`, ignored during COPY as PostgreSQL does).
    Other,
}

impl RowSource<'_> {
    /// The next message; `Err` when the client is gone (the session ends).
    pub(super) async fn next(
        &mut self,
        input: &mut FrameReader<SocketRead>,
    ) -> Result<Incoming, SessionEnd> {
        match self {
            RowSource::Client => {
                let frame = match input.read().await {
                    Ok(frame) => frame,
                    Err(FrameError::Closed) => return Err(SessionEnd::Disconnected),
                    Err(e) => return Err(SessionEnd::Protocol(e.to_string())),
                };
                Ok(match frame.tag() {
                    b'd' => Incoming::Data(frame),
                    b'c' => Incoming::Done,
                    b'f' => {
                        let body = frame.body();
                        let reason =
                            String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                        Incoming::Failed(ClientError::new(
                            sqlstate::QUERY_CANCELED,
                            format!("COPY from stdin failed: {reason}"),
                        ))
                    }
                    _ => Incoming::Other,
                })
            }
            RowSource::Shard { conn, name, ended } => {
                let frame = match conn.read().await {
                    Ok(frame) => frame,
                    Err(e) => return Ok(Incoming::Failed(ClientError::lost_shard(name, e))),
                };
                Ok(match frame.tag() {
                    tag::COPY_DATA => Incoming::Data(frame),
                    tag::COPY_DONE => {
                        *ended = true;
                        Incoming::Done
                    }
                    tag::ERROR_RESPONSE => {
                        *ended = true;
                        Incoming::Failed(ClientError::from_shard(frame.bytes(), name))
                    }
                    _ => Incoming::Other,
                })
            }
            RowSource::Buffered(rows) => {
                Ok(rows.pop_front().map_or(Incoming::Done, Incoming::Data))
            }
        }
    }

    /// The command tag's word for the rows loaded.
    pub(super) fn command(&self) -> &'static str {
        match self {
            RowSource::Client => "COPY",
            RowSource::Shard { .. } | RowSource::Buffered(_) => "INSERT 0",
        }
    }
}

/// Sends each row to its shard's buffer.
pub(super) struct RowRouter<'a> {
    pub(super) spec: &'a CopyInto,
    position: usize,
    /// The client's `client_encoding`: a key is read as PostgreSQL reads it.
    encoding: ClientEncoding,
    splitter: RowSplitter,
    buffers: Vec<BytesMut>,
    header_pending: bool,
    pub(super) total: u64,
    pub(super) error: Option<ClientError>,
    /// Generated keys, one to put first in each row (a COPY that leaves the key out).
    pub(super) keys: Option<VecDeque<String>>,
    /// The longest row taken ([`MAX_ROW_BYTES`]).
    max_row: usize,
}

impl<'a> RowRouter<'a> {
    pub(super) fn new(
        spec: &'a CopyInto,
        position: usize,
        shards: usize,
        encoding: ClientEncoding,
    ) -> Self {
        RowRouter {
            spec,
            position,
            encoding,
            splitter: RowSplitter::new(spec.format.clone()),
            buffers: vec![BytesMut::new(); shards],
            header_pending: matches!(spec.format, CopyFormat::Csv { header: true, .. }),
            total: 0,
            error: None,
            keys: None,
            max_row: MAX_ROW_BYTES,
        }
    }

    /// The whole rows `data` completes. Once the COPY has failed, the rest of its data is
    /// only read, not kept.
    pub(super) fn split(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut rows = Vec::new();
        if self.error.is_some() {
            return rows;
        }
        self.splitter.push(data, |row| rows.push(row.to_vec()));
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        if longest.max(self.splitter.pending_len()) > self.max_row {
            self.splitter = RowSplitter::new(self.spec.format.clone());
            rows.clear();
            self.error = Some(ClientError::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "a COPY row is longer than {} MB, the most PostgreSQL takes in one line; split the data or load that row another way",
                    self.max_row >> 20
                ),
            ));
        }
        rows
    }

    pub(super) fn route_rows(&mut self, rows: Vec<Vec<u8>>, index: &HashMap<ShardId, usize>) {
        for row in rows {
            self.route(&row, index);
        }
    }

    fn route(&mut self, row: &[u8], index: &HashMap<ShardId, usize>) {
        if self.error.is_some() {
            return;
        }
        if self.header_pending {
            // The header line goes to every shard, whose COPY expects it.
            self.header_pending = false;
            for buffer in &mut self.buffers {
                buffer.extend_from_slice(row);
            }
            return;
        }
        let line = trim_line_end(row);
        if line == b"\\." {
            return;
        }
        let keyed;
        let (row, line) = match self.keys.as_mut() {
            None => (row, line),
            Some(keys) => {
                let Some(key) = keys.pop_front() else {
                    self.error = Some(ClientError::new(
                        sqlstate::INTERNAL,
                        "the COPY ran out of generated keys",
                    ));
                    return;
                };
                let mut with_key = key.into_bytes();
                with_key.push(self.spec.delimiter());
                with_key.extend_from_slice(row);
                keyed = with_key;
                (&keyed[..], trim_line_end(&keyed))
            }
        };
        let line = match self.encoding.decode(line) {
            Ok(line) => line,
            Err(e) => {
                self.error = Some(e.into());
                return;
            }
        };
        let placed =
            self.spec
                .key_of(line.as_bytes(), self.position)
                .and_then(|key| self.spec.rule.shard_for(&key).map_err(|e| e.to_string()))
                .and_then(|shard| {
                    index.get(&shard).copied().ok_or_else(|| {
                        format!("shard {shard} does not hold table {}", self.spec.table)
                    })
                });
        match placed {
            Ok(i) => {
                self.buffers[i].extend_from_slice(row);
                self.total += 1;
            }
            Err(reason) => {
                self.error = Some(ClientError::new(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("{reason}; no row of this statement was loaded"),
                ));
            }
        }
    }

    /// Buffers that reached the batch size, framed as `CopyData`.
    pub(super) fn full_batches(&mut self) -> Vec<(usize, Bytes)> {
        self.take_batches(BATCH_BYTES)
    }

    /// Everything still buffered.
    pub(super) fn all_batches(&mut self) -> Vec<(usize, Bytes)> {
        self.take_batches(1)
    }

    fn take_batches(&mut self, threshold: usize) -> Vec<(usize, Bytes)> {
        let mut out = Vec::new();
        for (i, buffer) in self.buffers.iter_mut().enumerate() {
            if buffer.len() >= threshold {
                let data = buffer.split();
                let mut message = BytesMut::with_capacity(data.len() + 5);
                message.put_u8(tag::COPY_DATA);
                message.put_i32(data.len() as i32 + 4);
                message.put_slice(&data);
                out.push((i, message.freeze()));
            }
        }
        out
    }

    /// Routes a last row without a line end; the routing error, if any row had one.
    pub(super) fn finish(&mut self, index: &HashMap<ShardId, usize>) -> Result<(), ClientError> {
        let splitter = std::mem::replace(
            &mut self.splitter,
            RowSplitter::new(self.spec.format.clone()),
        );
        let rest = splitter.finish();
        if !rest.is_empty() {
            let mut row = rest;
            row.push(b'\n');
            self.route(&row, index);
        }
        self.error.take().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_router::Config;

    #[test]
    fn a_row_past_the_limit_fails_the_copy_and_is_not_kept() {
        let yaml = "users: [{name: app, password: app}]\nshards: [{name: s0, port: 1}, {name: s1, port: 2}]\ntables:\n  - {name: users, sharding: hash, column: id}\n";
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
        let spec =
            match shardline_router::copy::copy_into(&config, "COPY users (id, name) FROM STDIN") {
                Some(Ok(spec)) => spec,
                other => panic!("{other:?}"),
            };
        let mut router = RowRouter::new(&spec, 0, 2, ClientEncoding::Utf8);
        router.max_row = 16;
        assert_eq!(router.split(b"1\tshort\n2\tpart"), [b"1\tshort\n".to_vec()]);
        assert!(router.error.is_none());
        assert!(router.split(b" of a row that goes on and on").is_empty());
        let code = router.error.as_ref().map(ClientError::code);
        assert_eq!(code.as_deref(), Some(sqlstate::PROGRAM_LIMIT_EXCEEDED));
        assert_eq!(router.splitter.pending_len(), 0);
        // What follows is read and dropped.
        assert!(router.split(b"\n3\tlater\n").is_empty());
        assert_eq!(router.splitter.pending_len(), 0);

        // A row that arrives whole in one message is measured too.
        let mut router = RowRouter::new(&spec, 0, 2, ClientEncoding::Utf8);
        router.max_row = 16;
        assert!(router
            .split(b"1\ta row that is far too long\n2\tok\n")
            .is_empty());
        assert!(router.error.is_some());
    }
}
