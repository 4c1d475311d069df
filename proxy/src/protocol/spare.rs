//! Spare I/O buffers, kept per serving thread.
//!
//! A session waiting for its client holds no buffers (idle clients must cost little memory),
//! so every request takes a read buffer and an output buffer and gives them back when it is
//! answered. Taking them from this small per-thread stack instead of the allocator saves two
//! allocations, their zeroing and their frees on every transaction; the stack is bounded, so
//! it costs at most [`KEPT_PER_THREAD`] × [`LARGEST_KEPT`] bytes per serving thread.
//! [`reuse`] and [`keep`] do the same for other things a request needs once; [`take_list`]
//! and [`give_back_list`] for its lists (an extended-protocol segment's messages, the answer
//! queue of an exchange), each kind bounded the same way: at most [`LISTS_KEPT`] lists of
//! room for at most [`LONGEST_LIST`] entries per serving thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::thread::LocalKey;

use bytes::BytesMut;

/// Buffers one thread keeps at most.
const KEPT_PER_THREAD: usize = 64;

/// Buffers larger than this (grown by a large result or message) go back to the allocator.
const LARGEST_KEPT: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: a spare one when this thread has one, else a new one without capacity.
pub fn take() -> BytesMut {
    reuse(&SPARE).unwrap_or_default()
}

/// Gives a buffer back for the next [`take`] on this thread, unless it is large or the thread
/// keeps enough already.
pub fn give_back(mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT {
        return;
    }
    buf.clear();
    keep(&SPARE, buf, KEPT_PER_THREAD);
}

/// Room a new list starts with: a whole extended-protocol segment (`Parse`, `Bind`,
/// `Describe`, `Execute`, `Sync`) and a few more messages, so it is not grown as they come.
pub const LIST_ROOM: usize = 8;

/// Lists with room for more entries than this (a long pipeline's) go back to the allocator.
pub const LONGEST_LIST: usize = 64;

/// Lists of one kind a thread keeps at most.
pub const LISTS_KEPT: usize = 16;

/// A list that can be kept as a spare: emptied, and measured by its room.
pub trait List {
    /// Entries it has room for.
    fn room(&self) -> usize;
    /// Empties it, keeping its room.
    fn empty(&mut self);
    /// A new, empty one with room for `room` entries.
    fn with_room(room: usize) -> Self;
}

impl<T> List for Vec<T> {
    fn room(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
    fn with_room(room: usize) -> Self {
        Vec::with_capacity(room)
    }
}

impl<T> List for VecDeque<T> {
    fn room(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
    fn with_room(room: usize) -> Self {
        VecDeque::with_capacity(room)
    }
}

/// An empty list: a spare one of this thread's from `stack`, else a new one with room for
/// [`LIST_ROOM`] entries.
pub fn take_list<L: List + 'static>(stack: &'static LocalKey<RefCell<Vec<L>>>) -> L {
    reuse(stack).unwrap_or_else(|| L::with_room(LIST_ROOM))
}

/// Gives `list` back, emptied, for the next [`take_list`] on this thread, unless it has no
/// room or more than [`LONGEST_LIST`].
pub fn give_back_list<L: List + 'static>(stack: &'static LocalKey<RefCell<Vec<L>>>, mut list: L) {
    if list.room() == 0 || list.room() > LONGEST_LIST {
        return;
    }
    list.empty();
    keep(stack, list, LISTS_KEPT);
}

/// The last spare a thread kept on `stack`, if any.
pub fn reuse<T: 'static>(stack: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    stack
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
}

/// Keeps `item` on this thread's `stack` of spares, unless the stack holds `most` already
/// (or the thread is ending).
pub fn keep<T: 'static>(stack: &'static LocalKey<RefCell<Vec<T>>>, item: T, most: usize) {
    let _ = stack.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < most {
            spare.push(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_taken_again_empty() {
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"left over");
        let address = buf.as_ptr();
        give_back(buf);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), address);
        assert!(again.capacity() >= 4096);
    }

    #[test]
    fn large_and_empty_buffers_are_not_kept() {
        give_back(BytesMut::with_capacity(LARGEST_KEPT + 1));
        give_back(BytesMut::new());
        assert_eq!(take().capacity(), 0);
    }

    #[test]
    fn a_thread_keeps_a_bounded_number() {
        for _ in 0..KEPT_PER_THREAD + 10 {
            give_back(BytesMut::with_capacity(64));
        }
        let kept = std::iter::from_fn(|| Some(take()))
            .take_while(|buf| buf.capacity() > 0)
            .count();
        assert_eq!(kept, KEPT_PER_THREAD);
    }
}
