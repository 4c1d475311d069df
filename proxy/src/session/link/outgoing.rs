//! What one exchange sends a backend, written straight into one buffer, and the answers it
//! expects, kept in step: every message goes in together with what to do with its answers.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::protocol::spare;
use crate::session::link::exchange::Expect;

/// The messages for one backend, back to back as they go on the wire, and the queue of
/// expected answers [`crate::session::link::exchange::drive`] reads them with.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The messages, in order.
    pub(crate) bytes: BytesMut,
    /// One entry per message that gets answers, and one per answer the proxy gives itself.
    pub(crate) queue: VecDeque<Expect>,
}

impl Outgoing {
    /// Nothing to send yet, in a spare buffer of this thread's.
    pub(crate) fn new() -> Outgoing {
        Outgoing {
            bytes: spare::take(),
            // Room for a whole extended-protocol segment (`Parse`, `Bind`, `Describe`,
            // `Execute`, `Sync`) and a settings sync, so the queue is allocated once.
            queue: VecDeque::with_capacity(8),
        }
    }

    /// Sends `message`; its answers are handled as `expect` says.
    pub(crate) fn send(&mut self, message: &[u8], expect: Expect) {
        self.bytes.extend_from_slice(message);
        self.queue.push_back(expect);
    }

    /// Sends `message`, which gets no answers of its own (`Flush`, a COPY data message).
    pub(crate) fn send_unanswered(&mut self, message: &[u8]) {
        self.bytes.extend_from_slice(message);
    }

    /// Answers a client message with `reply` at this point in the stream, without the backend.
    pub(crate) fn answer_locally(&mut self, reply: Bytes) {
        self.queue.push_back(Expect::Local(reply));
    }

    /// The buffer back to this thread's spares, once sent.
    pub(crate) fn sent(self) -> VecDeque<Expect> {
        spare::give_back(self.bytes);
        self.queue
    }
}
