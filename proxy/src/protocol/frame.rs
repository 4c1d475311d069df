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
        let len = self.await_message().await?;
        Ok(self.split_message(len))
    }

    /// Waits until the next tagged message is buffered whole and returns its length (tag and
    /// length field included), without taking it: see [`FrameReader::buffered`].
    pub async fn await_message(&mut self) -> Result<usize, FrameError> {
        loop {
            if let Some(len) = self.buffered_len() {
                return len;
            }
            // Not all buffered: the header, or the whole message its header announces.
            let wanted = self.announced().unwrap_or(5);
            self.fill(wanted).await?;
        }
    }

    /// The length of the next message if it is buffered whole (or an error if its header is
    /// bad), without waiting: most answers arrive together, and reading them this way costs no
    /// trip through the async reader.
    fn buffered_len(&self) -> Option<Result<usize, FrameError>> {
        let head = self.buf.get(..5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 {
            return Some(Err(FrameError::BadLength(len.into())));
        }
        let total = len as usize + 1;
        if total > self.limit {
            return Some(Err(FrameError::TooLarge {
                len: total,
                limit: self.limit,
            }));
        }
        (self.buf.len() >= total).then_some(Ok(total))
    }

    /// The next message if it is buffered whole and `accept` takes its tag, without waiting:
    /// the rest of a request that arrived in one read is taken in one pass, not one trip
    /// through the async reader (and the caller's loop) per message. A message too long or too
    /// short to be read stays, for [`FrameReader::read`] to report.
    pub fn read_buffered(&mut self, accept: impl Fn(u8) -> bool) -> Option<Frame> {
        let len = self.buffered_len()?.ok()?;
        accept(self.buf[0]).then(|| self.split_message(len))
    }

    /// Takes the first `len` buffered bytes as a message of its own.
    fn split_message(&mut self, len: usize) -> Frame {
        Frame {
            bytes: self.buf.split_to(len).freeze(),
        }
    }

    /// The first `len` buffered bytes, borrowed: the message [`FrameReader::await_message`]
    /// waited for, read where it lies. [`FrameReader::consume`] drops it once handled; unlike
    /// [`FrameReader::read`], which cuts it out as a `Frame` of its own, this touches no
    /// reference count.
    pub fn buffered(&self, len: usize) -> &[u8] {
        self.buf.get(..len).unwrap_or_default()
    }

    /// The length of the next message, once its header is buffered.
    fn announced(&self) -> Option<usize> {
        let head = self.buf.get(..5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        usize::try_from(len).ok().map(|len| len + 1)
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

    /// The complete messages buffered at the front, in order, as far as they can be read (a
    /// message not yet whole, or one too long or too short, ends them, for
    /// [`FrameReader::read`] to report): a caller relaying answers as they are looks them over
    /// in place and takes them in one piece.
    pub fn buffered_messages(&self) -> BufferedMessages<'_> {
        BufferedMessages {
            rest: &self.buf,
            limit: self.limit,
        }
    }

    /// Drops the first `len` buffered bytes (messages [`FrameReader::buffered_messages`]
    /// showed, or one [`FrameReader::buffered`] lent, once handled).
    pub fn consume(&mut self, len: usize) {
        self.buf.advance(len.min(self.buf.len()));
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

/// The whole messages at the front of a [`FrameReader`]'s buffer (see
/// [`FrameReader::buffered_messages`]), each with its tag and length.
#[derive(Debug)]
pub struct BufferedMessages<'a> {
    rest: &'a [u8],
    limit: usize,
}

impl<'a> Iterator for BufferedMessages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let head = self.rest.get(..5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let total = usize::try_from(len).ok()?.checked_add(1)?;
        if total < 5 || total > self.limit {
            return None;
        }
        let (message, rest) = self.rest.split_at_checked(total)?;
        self.rest = rest;
        Some(message)
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
    async fn buffered_messages_are_the_whole_ones_at_the_front() -> Result<(), FrameError> {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"D\0\0\0\x06ab");
        wire.extend_from_slice(b"D\0\0\0\x05c");
        wire.extend_from_slice(b"C\0\0\0\x0dSELECT 2\0");
        wire.extend_from_slice(b"D\0\0\0\x09ef");
        let mut reader = FrameReader::new(&wire[..], 1024);
        // Buffer everything: a read of the first message fills from the whole input.
        let first = reader.read().await?;
        assert_eq!(first.bytes().as_ref(), b"D\0\0\0\x06ab");
        let whole: Vec<&[u8]> = reader.buffered_messages().collect();
        // The last message is not whole: it ends them.
        assert_eq!(whole, [&b"D\0\0\0\x05c"[..], b"C\0\0\0\x0dSELECT 2\0"]);
        reader.consume(6);
        assert_eq!(reader.read().await?.tag(), b'C');
        assert_eq!(reader.buffered_messages().count(), 0);
        // So does one longer than the limit, or shorter than its header.
        for bad in [&b"D\0\0\x10\0rest"[..], b"D\0\0\0\x03rest"] {
            let mut reader = FrameReader::new(bad, 1024);
            reader.fill(5).await?;
            assert_eq!(reader.buffered_messages().count(), 0);
        }
        Ok(())
    }

    #[tokio::test]
    async fn buffered_messages_are_taken_without_waiting() -> Result<(), FrameError> {
        let wire = [
            b"B\0\0\0\x05x".as_slice(),
            b"S\0\0\0\x04",
            b"Q\0\0\0\x0dSELECT 1\0",
            b"P\0\0\0\x09ab",
        ]
        .concat();
        let mut reader = FrameReader::new(&wire[..], 1024);
        reader.fill(wire.len()).await?;
        let segment = |tag| tag != b'Q';
        assert_eq!(reader.read_buffered(segment).map(|f| f.tag()), Some(b'B'));
        assert_eq!(reader.read_buffered(segment).map(|f| f.tag()), Some(b'S'));
        // A tag not accepted stays for the next read.
        assert!(reader.read_buffered(segment).is_none());
        assert_eq!(reader.read().await?.tag(), b'Q');
        // So does a message not yet whole.
        assert!(reader.read_buffered(segment).is_none());
        assert_eq!(reader.buffered_messages().count(), 0);
        // And one whose length is bad, left for `read` to report.
        let bad = b"B\0\0\0\x02".to_vec();
        let mut reader = FrameReader::new(&bad[..], 1024);
        reader.fill(5).await?;
        assert!(reader.read_buffered(|_| true).is_none());
        assert!(matches!(reader.read().await, Err(FrameError::BadLength(2))));
        Ok(())
    }

    #[tokio::test]
    async fn a_message_is_lent_where_it_lies_until_consumed() -> Result<(), FrameError> {
        // The second message arrives in two reads: awaiting it fills until it is whole.
        let (mut write, read) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(read, 1024);
        tokio::io::AsyncWriteExt::write_all(&mut write, b"1\0\0\0\x04C\0\0\0\x0dSEL").await?;
        let len = reader.await_message().await?;
        assert_eq!(reader.buffered(len), b"1\0\0\0\x04");
        // Not consumed: awaiting again lends the same message.
        assert_eq!(reader.await_message().await?, len);
        reader.consume(len);
        assert_eq!(reader.buffered_len().map(|l| l.ok()), None);
        tokio::io::AsyncWriteExt::write_all(&mut write, b"ECT 1\0").await?;
        let len = reader.await_message().await?;
        assert_eq!(reader.buffered(len), b"C\0\0\0\x0dSELECT 1\0");
        reader.consume(len);
        drop(write);
        assert!(matches!(
            reader.await_message().await,
            Err(FrameError::Closed)
        ));
        Ok(())
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
