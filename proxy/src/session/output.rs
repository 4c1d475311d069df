//! Buffered output to the client: answers are collected and written in large chunks, and
//! flushed when the client is about to wait for them (`ReadyForQuery`, COPY, `Flush`).

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

/// Above this many buffered bytes the output is written out without waiting for a flush point.
const HIGH_WATER: usize = 64 * 1024;

/// The client's socket with an output buffer.
#[derive(Debug)]
pub struct ClientOutput {
    stream: OwnedWriteHalf,
    buf: BytesMut,
}

impl ClientOutput {
    /// Wraps the write half of the client's socket.
    pub fn new(stream: OwnedWriteHalf) -> Self {
        ClientOutput {
            stream,
            buf: BytesMut::with_capacity(HIGH_WATER),
        }
    }

    /// Queues bytes, writing out when the buffer is large.
    pub async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.stream.flush().await
    }

    /// The raw socket, for the startup phase.
    pub fn stream(&mut self) -> &mut (impl AsyncWrite + Unpin) {
        &mut self.stream
    }
}
