//! What one exchange sends a backend, written straight into one buffer, and the answers it
//! expects, kept in step: every message goes in together with what to do with its answers.
//! Like the buffers (`protocol::spare`), answer queues are kept per serving thread and reused,
//! so an exchange allocates neither.

use std::cell::RefCell;
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
            queue: take_queue(),
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

thread_local! {
    static SPARE_QUEUES: RefCell<Vec<VecDeque<Expect>>> = const { RefCell::new(Vec::new()) };
}

/// An empty answer queue, from this thread's spares (`protocol::spare`).
fn take_queue() -> VecDeque<Expect> {
    spare::take_list(&SPARE_QUEUES)
}

/// Gives an answer queue back for the next exchange on this thread, once driven.
pub(crate) fn give_back_queue(queue: VecDeque<Expect>) {
    spare::give_back_list(&SPARE_QUEUES, queue);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::link::exchange::Reply;

    #[test]
    fn a_queue_given_back_is_taken_again_empty() {
        let mut outgoing = Outgoing::new();
        outgoing.send(b"Q", Expect::relay(Reply::Cycle));
        let queue = outgoing.sent();
        let capacity = queue.capacity();
        give_back_queue(queue);
        let again = take_queue();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }

    #[test]
    fn long_queues_and_too_many_are_not_kept() {
        give_back_queue(VecDeque::with_capacity(spare::LONGEST_LIST + 1));
        for _ in 0..spare::LISTS_KEPT + 4 {
            give_back_queue(VecDeque::with_capacity(8));
        }
        let kept = std::iter::from_fn(|| SPARE_QUEUES.with(|s| s.borrow_mut().pop()))
            .inspect(|queue| assert!(queue.capacity() <= spare::LONGEST_LIST))
            .count();
        assert_eq!(kept, spare::LISTS_KEPT);
    }
}
