//! Framing: cutting a byte stream into PostgreSQL protocol messages without copying them.
//!
//! A regular message is a 1-byte tag, a 4-byte big-endian length (counting itself) and a body.
//! A [`Frame`] keeps the whole original message as [`Bytes`], so forwarding it means writing the
//! same bytes back out; inspecting it borrows from them.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// One complete protocol message, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Frame {
    /// Wraps bytes that already hold one whole message (tag, length, body).
    pub fn from_bytes(bytes: Bytes) -> Frame {
        Frame { bytes }
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The message body after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The whole message, ready to forward.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the frame, returning the whole message.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Bytes a read asks the socket for at least.
const READ_CHUNK: usize = 8 * 1024;

/// Reads tagged messages from one side of a connection through a reusable buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limit: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that refuses messages longer than `limit` bytes.
    pub fn new(inner: R, limit: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// A reader whose first bytes were already read from `inner` (`prefix`).
    pub fn with_prefix(inner: R, limit: usize, prefix: &[u8]) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::from(prefix),
            limit,
        }
    }

    /// The stream read from.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Whether no byte is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Gives the buffer back when nothing is in it: a connection waiting for its peer then
    /// holds no memory for reading, and the next read takes a spare buffer.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            super::spare::give_back(std::mem::take(&mut self.buf));
        }
    }

    /// Reads the next tagged message.
    pub async fn read(&mut self) -> Result<Frame, FrameError> {
        self.fill(5).await?;
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength(len.into()));
        }
        let total = len as usize + 1;
        if total > self.limit {
            return Err(FrameError::TooLarge {
                len: total,
                limit: self.limit,
            });
        }
        self.fill(total).await?;
        Ok(Frame {
            bytes: self.buf.split_to(total).freeze(),
        })
    }

    /// Reads an untagged startup-phase packet (length-prefixed, no tag) and returns its body.
    pub async fn read_startup(&mut self) -> Result<Bytes, FrameError> {
        self.fill(4).await?;
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        // The smallest startup packet is a bare 8-byte request code; 10 KB is PostgreSQL's cap.
        if !(8..=10_000).contains(&len) {
            return Err(FrameError::BadLength(len.into()));
        }
        self.fill(len as usize).await?;
        let mut packet = self.buf.split_to(len as usize);
        packet.advance(4);
        Ok(packet.freeze())
    }

    /// True when a complete message is already buffered, so reading it will not wait.
    pub fn has_buffered_frame(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        len >= 4 && self.buf.len() > len as usize
    }

    /// Puts a message back in front of the input, to be read again.
    pub fn unread(&mut self, frame: Frame) {
        let mut buf = BytesMut::with_capacity(frame.bytes.len() + self.buf.len());
        buf.extend_from_slice(&frame.bytes);
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }

    /// Whether anything (bytes or end of stream) is buffered on an idle connection, where
    /// nothing should be. The caller provides a non-blocking read of the underlying stream.
    pub fn idle_input(
        &mut self,
        try_read: impl FnOnce(&mut R, &mut [u8]) -> std::io::Result<usize>,
    ) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(try_read(&mut self.inner, &mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn fill(&mut self, wanted: usize) -> Result<(), FrameError> {
        if self.buf.capacity() == 0 {
            self.buf = super::spare::take();
        }
        while self.buf.len() < wanted {
            // Read in chunks, so many small messages take one system call.
            self.buf.reserve((wanted - self.buf.len()).max(READ_CHUNK));
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Closed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_and_keep_original_bytes() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
        wire.extend_from_slice(b"S\0\0\0\x04");
        let mut reader = FrameReader::new(&wire[..], 1024);
        let q = reader.read().await.ok();
        assert_eq!(q.as_ref().map(Frame::tag), Some(b'Q'));
        assert_eq!(
            q.as_ref().map(|f| f.body().to_vec()),
            Some(b"SELECT 1\0".to_vec())
        );
        let s = reader.read().await.ok();
        assert_eq!(s.map(|f| f.bytes().to_vec()), Some(b"S\0\0\0\x04".to_vec()));
        assert!(matches!(reader.read().await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn refuses_bad_and_huge_lengths() {
        let bad = b"Q\0\0\0\x02".to_vec();
        let mut reader = FrameReader::new(&bad[..], 1024);
        assert!(matches!(reader.read().await, Err(FrameError::BadLength(2))));
        let huge = b"Q\x7f\0\0\0".to_vec();
        let mut reader = FrameReader::new(&huge[..], 1024);
        assert!(matches!(
            reader.read().await,
            Err(FrameError::TooLarge { .. })
        ));
    }
}
