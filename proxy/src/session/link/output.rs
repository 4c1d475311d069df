//! Buffered output to the client: answers are collected and written in large chunks, and
//! flushed when the client is about to wait for them (`ReadyForQuery`, COPY, `Flush`).

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::AsyncWrite;

use crate::clients::DeadlockFlag;
use crate::deadlock::deadlock_error;
use crate::protocol::spare;
use crate::socket::SocketWrite;

/// Above this many buffered bytes the output is written out without waiting for a flush point.
const HIGH_WATER: usize = 64 * 1024;

/// Bytes taken for the output buffer when a request's first answer is queued.
const FIRST_CHUNK: usize = 8 * 1024;

/// The client's socket with an output buffer.
#[derive(Debug)]
pub struct ClientOutput {
    stream: SocketWrite,
    buf: BytesMut,
    /// Bumped by every write to the socket, so a [`Mark`] knows whether it can still rewind.
    writes: u64,
    /// Set when the deadlock detector cancelled this client's statement: the cancellation's
    /// error is then reported as the deadlock it broke.
    deadlock: DeadlockFlag,
}

/// A point in the output to go back to, while nothing after it has reached the client.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    writes: u64,
    len: usize,
}

impl ClientOutput {
    /// Wraps the write half of the client's socket.
    pub fn new(stream: SocketWrite) -> Self {
        ClientOutput {
            stream,
            buf: BytesMut::new(),
            writes: 0,
            deadlock: DeadlockFlag::default(),
        }
    }

    /// The flag the deadlock detector sets on this client.
    pub fn deadlock_flag(&self) -> DeadlockFlag {
        self.deadlock.clone()
    }

    /// Queues bytes, writing out when the buffer is large.
    pub async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.queue(bytes) {
            self.flush().await?;
            // A loop that only emits rows held in memory (aggregate groups, rows a COPY
            // applied) reads no socket, and a write the socket takes at once spends none of
            // the task's scheduling budget: each full buffer spends one, so such a loop still
            // yields to the other clients of its serving thread.
            tokio::task::coop::consume_budget().await;
        }
        Ok(())
    }

    /// Queues bytes without writing them; true when the buffer is large enough to be written
    /// out now (with [`ClientOutput::flush`]). The relay queues every answer this way: a plain
    /// call, where [`ClientOutput::push`] is a future to make and poll.
    #[must_use = "a large buffer is to be flushed"]
    pub fn queue(&mut self, bytes: &[u8]) -> bool {
        if self.deadlock.load(Ordering::Acquire) {
            if let Some(error) = deadlock_error(bytes) {
                self.deadlock.store(false, Ordering::Release);
                self.buf.extend_from_slice(&error);
                return false;
            }
        }
        if self.buf.capacity() == 0 {
            self.buf = spare::take();
            self.buf.reserve(FIRST_CHUNK);
        }
        self.buf.extend_from_slice(bytes);
        self.buf.len() >= HIGH_WATER
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.writes += 1;
            self.stream.send_all(&self.buf).await?;
            self.buf.clear();
        }
        self.stream.flush_tls().await
    }

    /// Gives the buffer back when everything was written: a session waiting for its client
    /// holds no memory for answers.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            spare::give_back(std::mem::take(&mut self.buf));
        }
    }

    /// The current end of the output.
    pub fn mark(&self) -> Mark {
        Mark {
            writes: self.writes,
            len: self.buf.len(),
        }
    }

    /// Whether nothing was queued or written since `mark`.
    pub fn unchanged_since(&self, mark: Mark) -> bool {
        mark.writes == self.writes && mark.len == self.buf.len()
    }

    /// Drops what was queued after `mark`, unless some of it was already written out (a
    /// result larger than the buffer); answers that were sent stay sent.
    pub fn rewind(&mut self, mark: Mark) {
        if mark.writes == self.writes {
            self.buf.truncate(mark.len);
        }
    }

    /// The raw socket, for the startup phase.
    pub fn stream(&mut self) -> &mut (impl AsyncWrite + Unpin) {
        &mut self.stream
    }
}
