//! The byte streams of a pull-up: each source shard's binary `COPY … TO STDOUT` forwarded
//! row by row into the target's `COPY … FROM STDIN`, batched, counted against
//! `max_pull_rows` as the rows pass.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::pool::Pooled;
use crate::protocol::backend::{self as msg, sqlstate, tag};
use crate::session::link::attach::ready_status;
use crate::session::multi::pull::read_from;
use crate::session::ClientError;

/// Pulled rows are sent to the target in `CopyData` batches of about this size.
const BATCH_BYTES: usize = 64 * 1024;

/// The 11-byte signature that opens a binary COPY stream, then flags and extension length.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The binary COPY trailer: a field count of -1.
const BINARY_TRAILER: [u8; 2] = [0xff, 0xff];

/// Forwards one source's binary COPY rows to the target through `sink` until its `CopyDone`
/// and `ReadyForQuery`; returns how many rows passed.
pub(super) async fn stream_rows(
    conn: &mut Pooled,
    name: &str,
    target: &mut Pooled,
    sink: &mut CopySink,
    pulled_before: u64,
    budget: u64,
) -> Result<u64, ClientError> {
    let mut rows: u64 = 0;
    let mut header = true;
    loop {
        let frame = read_from(conn, name).await?;
        match frame.tag() {
            tag::COPY_DATA => {
                let data = if header {
                    header = false;
                    strip_header(frame.body()).ok_or_else(|| {
                        ClientError::new(
                            sqlstate::INTERNAL,
                            format!("shard {name} sent a binary COPY without its header"),
                        )
                    })?
                } else {
                    frame.body()
                };
                if data.is_empty() || data == BINARY_TRAILER {
                    continue;
                }
                rows += 1;
                check_budget(pulled_before + rows, budget)?;
                sink.push(data, target)
                    .await
                    .map_err(|e| ClientError::lost_shard(name, e))?;
            }
            tag::ERROR_RESPONSE => {
                let error = frame.into_bytes();
                // The source ends with `ReadyForQuery`; it is discarded anyway.
                return Err(ClientError::from_shard(&error, name));
            }
            tag::READY_FOR_QUERY => return Ok(rows),
            _ => {}
        }
    }
}

/// Ends a COPY FROM STDIN the pull cannot finish, leaving the target's transaction failed.
pub(super) async fn abandon_copy_in(conn: &mut Pooled) {
    let mut fail = BytesMut::new();
    let reason = b"shardline abandoned the pull\0";
    fail.put_u8(b'f');
    fail.put_i32(4 + reason.len() as i32);
    fail.put_slice(reason);
    let ended = conn.send(&fail).await.is_ok() && ready_status(conn).await.is_some();
    if !ended {
        conn.broken = true;
    }
}

/// The refusal of a statement that would pull more than `budget` rows.
pub(super) fn check_budget(rows: u64, budget: u64) -> Result<(), ClientError> {
    if rows <= budget {
        return Ok(());
    }
    Err(ClientError::new(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "this read needs more than {budget} rows of sharded tables gathered in one place (max_pull_rows in shards.yaml); restrict it with WHERE conditions on the tables it reads, or raise max_pull_rows"
        ),
    ))
}

/// The rows of a source's first `CopyData`, after the binary COPY header.
fn strip_header(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(BINARY_SIGNATURE)?;
    let extension = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
    rest.get(8 + extension..)
}

/// The target's side of one pulled table: the binary header once, the rows of every source
/// in `CopyData` batches, then the trailer and `CopyDone`.
pub(super) struct CopySink {
    batch: BytesMut,
}

impl CopySink {
    pub(super) fn new() -> CopySink {
        let mut batch = BytesMut::with_capacity(BATCH_BYTES);
        let mut header = Vec::with_capacity(19);
        header.extend_from_slice(BINARY_SIGNATURE);
        header.extend_from_slice(&[0; 8]);
        put_copy_data(&mut batch, &header);
        CopySink { batch }
    }

    /// Queues one row, sending a full batch.
    pub(super) async fn push(&mut self, row: &[u8], target: &mut Pooled) -> Result<(), String> {
        put_copy_data(&mut self.batch, row);
        if self.batch.len() >= BATCH_BYTES {
            let batch = self.batch.split().freeze();
            target.send(&batch).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Sends what is queued, the trailer and `CopyDone`.
    pub(super) async fn finish(mut self, target: &mut Pooled) -> Result<(), String> {
        put_copy_data(&mut self.batch, &BINARY_TRAILER);
        self.batch.extend_from_slice(&msg::empty(tag::COPY_DONE));
        let batch: Bytes = self.batch.freeze();
        target.send(&batch).await.map_err(|e| e.to_string())
    }
}

/// Appends one `CopyData` message holding `data`.
fn put_copy_data(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(tag::COPY_DATA);
    out.put_i32(4 + data.len() as i32);
    out.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_stripped_with_its_extension() {
        let mut data = BINARY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, 9, 9]);
        data.extend_from_slice(&[0, 1, 0, 0, 0, 1, 7]);
        assert_eq!(strip_header(&data), Some(&[0, 1, 0, 0, 0, 1, 7][..]));
        assert_eq!(strip_header(b"PGCOPY"), None);
        assert_eq!(strip_header(&[0, 1]), None);
    }

    #[test]
    fn the_budget_allows_exactly_its_rows() {
        assert!(check_budget(10, 10).is_ok());
        let refused = check_budget(11, 10).err().map(|e| e.sqlstate);
        assert_eq!(refused, Some(sqlstate::PROGRAM_LIMIT_EXCEEDED));
    }
}
