//! The bookkeeping of one connection pool, without the connections' I/O: which connections are
//! idle, how many are out, and who waits for one.
//!
//! A checkout takes the most recently returned idle connection of its own serving thread
//! (LIFO, as PgBouncer serves: a few warm backends do the work and the rest age out), or the
//! right to open a new one while the pool is below its size, or another thread's idle
//! connection, or joins a FIFO queue of waiters. (A connection's socket wakes the thread
//! that opened it: served from another, each answer crosses threads.) A connection coming back goes
//! straight to the first waiter, so the queue counts exactly who still waits. Everything is
//! one short lock: taking a free connection reads no clock and arms no timer. The size can
//! change while connections are out (a reload): connections beyond it close as they come back.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A connection that belongs to one serving thread ([`crate::threads`]): the one whose I/O
/// driver its socket is registered with.
pub trait Homed {
    /// The serving thread's number ([`crate::threads::home`] where it was opened).
    fn home(&self) -> u16;
}

impl<T: Homed + ?Sized> Homed for Box<T> {
    fn home(&self) -> u16 {
        (**self).home()
    }
}

/// An idle connection and when it came back.
pub struct Idle<T> {
    pub conn: T,
    pub since: Instant,
    /// `conn`'s thread, noted as it came back (a checkout looks for its own thread's without
    /// touching each connection).
    home: u16,
}

/// What a checkout got: an idle connection, or the right to open one. Either must go back
/// ([`Slots::give_back`], [`Slots::vacate`], [`Slots::let_go`]): dropped, its room is lost.
#[must_use]
pub enum Taken<T> {
    Idle(T),
    Open,
}

/// Why a checkout that may wait got nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// Nothing freed up within the wait.
    TimedOut,
    /// `max_waiting` checkouts already wait.
    QueueFull { waiting: usize },
    /// The pool was closed.
    Closed,
}

/// Counts for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotCounts {
    /// Connections open (or opening): idle and checked out.
    pub size: usize,
    /// Idle connections.
    pub available: usize,
    /// Checkouts waiting for a connection.
    pub waiting: usize,
    /// Connections the pool may have.
    pub max_size: usize,
}

/// The state of one pool; see the module documentation.
pub struct Slots<T> {
    state: Mutex<State<T>>,
    /// Closes a connection the pool lets go (called outside the lock).
    discard: Box<dyn Fn(T) + Send + Sync>,
}

struct State<T> {
    /// Most recently returned last.
    idle: Vec<Idle<T>>,
    /// Connections checked out, or being opened.
    out: usize,
    max_size: usize,
    waiters: VecDeque<oneshot::Sender<Taken<T>>>,
    closed: bool,
}

impl<T: Homed> State<T> {
    /// A connection, or room for one, if the pool has either now: the most recently
    /// returned idle one of thread `home`, else room to open one there, else another
    /// thread's idle one.
    fn take_free(&mut self, home: u16) -> Option<Taken<T>> {
        if self.closed {
            return None;
        }
        let taken = if let Some(at) = self.idle.iter().rposition(|idle| idle.home == home) {
            Taken::Idle(self.idle.remove(at).conn)
        } else if self.out + self.idle.len() < self.max_size {
            Taken::Open
        } else {
            Taken::Idle(self.idle.pop()?.conn)
        };
        self.out += 1;
        Some(taken)
    }

    /// Hands `taken` (a connection, or the room one left) to the first waiter still waiting;
    /// gives it back if nobody waits.
    fn hand_over(&mut self, mut taken: Taken<T>) -> Option<Taken<T>> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(taken) {
                Ok(()) => return None,
                Err(back) => taken = back,
            }
        }
        Some(taken)
    }

    /// One connection (or room) that was out is not any more.
    fn came_back(&mut self) {
        debug_assert!(self.out > 0, "more connections came back than went out");
        self.out = self.out.saturating_sub(1);
    }

    fn waiting(&self) -> usize {
        self.waiters.iter().filter(|w| !w.is_closed()).count()
    }
}

impl<T: Homed> Slots<T> {
    /// A pool of at most `max_size` connections, none open, closing the connections it lets
    /// go with `discard`.
    pub fn new(max_size: usize, discard: impl Fn(T) + Send + Sync + 'static) -> Slots<T> {
        Slots {
            discard: Box::new(discard),
            state: Mutex::new(State {
                idle: Vec::new(),
                out: 0,
                max_size,
                waiters: VecDeque::new(),
                closed: false,
            }),
        }
    }

    /// A connection if one is free now (or there is room to open one), without waiting.
    #[must_use]
    pub fn take_now(&self, home: u16) -> Option<Taken<T>> {
        self.lock().take_free(home)
    }

    /// A connection, waiting up to `wait` for one to come back, unless `max_waiting`
    /// checkouts already wait.
    pub async fn take(
        &self,
        home: u16,
        wait: Duration,
        max_waiting: usize,
    ) -> Result<Taken<T>, WaitError> {
        let receiver = {
            let mut state = self.lock();
            if let Some(taken) = state.take_free(home) {
                return Ok(taken);
            }
            if state.closed {
                return Err(WaitError::Closed);
            }
            state.waiters.retain(|w| !w.is_closed());
            let waiting = state.waiters.len();
            if waiting >= max_waiting {
                return Err(WaitError::QueueFull { waiting });
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            receiver
        };
        let mut waiter = Waiter {
            slots: self,
            receiver,
        };
        match tokio::time::timeout(wait, &mut waiter.receiver).await {
            Ok(Ok(taken)) => Ok(taken),
            Ok(Err(_)) => Err(WaitError::Closed),
            // What was handed over as the wait ended is this checkout's after all.
            Err(_) => waiter.last_chance().ok_or(WaitError::TimedOut),
        }
    }

    /// A checked-out connection comes back idle: to the first waiter, else to the idle
    /// stack; closed when the pool is closed or above its size.
    pub fn give_back(&self, conn: T, now: Instant) {
        let mut state = self.lock();
        if state.closed || state.idle.len() + state.out > state.max_size {
            state.came_back();
            drop(state);
            (self.discard)(conn);
            return;
        }
        if let Some(taken) = state.hand_over(Taken::Idle(conn)) {
            state.came_back();
            if let Taken::Idle(conn) = taken {
                let home = conn.home();
                state.idle.push(Idle {
                    conn,
                    since: now,
                    home,
                });
            }
        }
    }

    /// A checked-out connection (or the right to open one) is gone: its room goes to the
    /// first waiter, or is free.
    pub fn vacate(&self) {
        let mut state = self.lock();
        let room = !state.closed && state.idle.len() + state.out <= state.max_size;
        if !room || state.hand_over(Taken::Open).is_some() {
            state.came_back();
        }
    }

    /// A checked-out connection will not come back (it broke, or must not serve again): it
    /// closes, and its room goes to the first waiter or is free.
    pub fn let_go(&self, conn: T) {
        (self.discard)(conn);
        self.vacate();
    }

    /// Closes the idle connections `keep` rejects, oldest first, while the pool has more than
    /// `floor` connections (its `min_idle`: closing them would only open them again).
    pub fn evict(&self, floor: usize, mut keep: impl FnMut(&Idle<T>) -> bool) {
        let gone: Vec<T> = {
            let mut state = self.lock();
            let mut spare = (state.idle.len() + state.out).saturating_sub(floor);
            let mut gone = Vec::new();
            let mut kept = Vec::with_capacity(state.idle.len());
            for entry in state.idle.drain(..) {
                if spare > 0 && !keep(&entry) {
                    spare -= 1;
                    gone.push(entry.conn);
                } else {
                    kept.push(entry);
                }
            }
            state.idle = kept;
            gone
        };
        self.discard_all(gone);
    }

    /// Any thread's idle connection, the most recently returned: for a checkout whose thread
    /// had none idle and could not open one of its own.
    #[must_use]
    pub fn take_any_idle(&self) -> Option<T> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let idle = state.idle.pop()?;
        state.out += 1;
        Some(idle.conn)
    }

    /// Room to open one more connection, if the pool is below its size (idle connections
    /// are not taken: for keeping `min_idle` open).
    #[must_use]
    pub fn take_room(&self) -> Option<Taken<T>> {
        let mut state = self.lock();
        let room = !state.closed && state.idle.len() + state.out < state.max_size;
        if room {
            state.out += 1;
        }
        room.then_some(Taken::Open)
    }

    /// Visits the idle connections.
    pub fn each_idle(&self, mut visit: impl FnMut(&T)) {
        for entry in self.lock().idle.iter() {
            visit(&entry.conn);
        }
    }

    /// Changes how many connections the pool may have. Idle connections beyond the new size
    /// close now, oldest first; checked-out ones beyond it close when they come back. Room
    /// the pool gains goes to waiters first.
    pub fn resize(&self, max_size: usize) {
        let gone: Vec<T> = {
            let mut state = self.lock();
            state.max_size = max_size;
            while !state.closed
                && state.idle.len() + state.out < max_size
                && state.hand_over(Taken::Open).is_none()
            {
                state.out += 1;
            }
            let excess = (state.idle.len() + state.out)
                .saturating_sub(max_size)
                .min(state.idle.len());
            state.idle.drain(..excess).map(|entry| entry.conn).collect()
        };
        self.discard_all(gone);
    }

    /// Closes the pool: its idle connections close now, waiters and later checkouts fail,
    /// and connections still out close when they come back.
    pub fn close(&self) {
        let gone: Vec<T> = {
            let mut state = self.lock();
            state.closed = true;
            state.waiters.clear();
            state.idle.drain(..).map(|entry| entry.conn).collect()
        };
        self.discard_all(gone);
    }

    fn discard_all(&self, conns: Vec<T>) {
        for conn in conns {
            (self.discard)(conn);
        }
    }

    /// Counts for operators.
    pub fn counts(&self) -> SlotCounts {
        let state = self.lock();
        SlotCounts {
            size: state.idle.len() + state.out,
            available: state.idle.len(),
            waiting: state.waiting(),
            max_size: state.max_size,
        }
    }

    /// Puts back what a checkout got but will not use.
    fn put_back(&self, taken: Taken<T>) {
        match taken {
            Taken::Idle(conn) => self.give_back(conn, Instant::now()),
            Taken::Open => self.vacate(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A checkout in the queue. However its wait ends (a timeout, the client gone), what was
/// handed to it meanwhile is not lost: it is taken, or put back.
struct Waiter<'a, T: Homed> {
    slots: &'a Slots<T>,
    receiver: oneshot::Receiver<Taken<T>>,
}

impl<T: Homed> Waiter<'_, T> {
    /// What was handed over before the queue place closed, if anything.
    fn last_chance(&mut self) -> Option<Taken<T>> {
        self.receiver.close();
        self.receiver.try_recv().ok()
    }
}

impl<T: Homed> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        if let Some(taken) = self.last_chance() {
            self.slots.put_back(taken);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    /// Test connections numbered by hundreds: 7 belongs to thread 0, 107 to thread 1.
    impl Homed for u32 {
        fn home(&self) -> u16 {
            u16::try_from(*self / 100).unwrap_or(u16::MAX)
        }
    }

    /// A pool of `size` whose closed connections are recorded.
    fn pool(size: usize) -> (Arc<Slots<u32>>, Arc<Mutex<Vec<u32>>>) {
        let closed = Arc::new(Mutex::new(Vec::new()));
        let record = closed.clone();
        let slots = Slots::new(size, move |conn| {
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn)
        });
        (Arc::new(slots), closed)
    }

    fn closed(record: &Mutex<Vec<u32>>) -> Vec<u32> {
        record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn idle(taken: Option<Taken<u32>>) -> Option<u32> {
        match taken? {
            Taken::Idle(conn) => Some(conn),
            Taken::Open => None,
        }
    }

    /// A checkout that waits in a task of its own.
    fn wait_for(slots: &Arc<Slots<u32>>) -> tokio::task::JoinHandle<Result<Taken<u32>, WaitError>> {
        let slots = slots.clone();
        tokio::spawn(async move { slots.take(0, Duration::from_secs(5), 10).await })
    }

    async fn until_waiting(slots: &Slots<u32>, n: usize) {
        while slots.counts().waiting < n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_new_pool_grants_room_to_open_up_to_its_size() {
        let (slots, _) = pool(2);
        assert!(matches!(slots.take_now(0), Some(Taken::Open)));
        assert!(matches!(slots.take_now(0), Some(Taken::Open)));
        assert!(slots.take_now(0).is_none());
        assert_eq!(slots.counts().size, 2);
    }

    #[test]
    fn the_most_recently_returned_connection_serves_next() {
        let (slots, _) = pool(3);
        for _ in 0..3 {
            assert!(slots.take_now(0).is_some());
        }
        let now = Instant::now();
        for conn in [1, 2, 3] {
            slots.give_back(conn, now);
        }
        assert_eq!(idle(slots.take_now(0)), Some(3));
        assert_eq!(idle(slots.take_now(0)), Some(2));
        let counts = slots.counts();
        assert_eq!((counts.size, counts.available), (3, 1));
    }

    #[test]
    fn a_thread_takes_its_own_connections_then_opens_then_takes_another_threads() {
        let (slots, _) = pool(3);
        for _ in 0..3 {
            assert!(slots.take_now(0).is_some());
        }
        let now = Instant::now();
        // Thread 1's connection came back last; thread 0's own serves it all the same.
        for conn in [1, 2, 101] {
            slots.give_back(conn, now);
        }
        assert_eq!(idle(slots.take_now(0)), Some(2));
        assert_eq!(idle(slots.take_now(1)), Some(101));
        // Thread 1 has none idle now: the pool is full, so it takes thread 0's.
        assert_eq!(idle(slots.take_now(1)), Some(1));
        for conn in [2, 101] {
            slots.give_back(conn, now);
        }
        // Thread 2 has none of its own but the pool has room: it opens one of its own.
        slots.resize(4);
        assert!(matches!(slots.take_now(2), Some(Taken::Open)));
        assert_eq!(slots.counts().available, 2);
        // Had that open failed: any thread's idle one, the most recently returned.
        assert_eq!(slots.take_any_idle(), Some(101));
        assert_eq!(slots.counts().available, 1);
    }

    #[tokio::test]
    async fn a_returned_connection_goes_to_the_first_waiter() {
        let (slots, _) = pool(1);
        assert!(matches!(slots.take_now(0), Some(Taken::Open)));
        let waiters: Vec<_> = (0..2).map(|_| wait_for(&slots)).collect();
        until_waiting(&slots, 2).await;
        // A checkout arriving now does not jump the queue.
        assert!(slots.take_now(0).is_none());
        slots.give_back(7, Instant::now());
        // Handed over: the queue counts only who still waits, before the waiter even runs.
        assert_eq!(slots.counts().waiting, 1);
        let mut waiters = waiters.into_iter();
        for conn in [7, 8] {
            let Some(waiter) = waiters.next() else {
                panic!("a waiter went missing");
            };
            if conn == 8 {
                slots.give_back(8, Instant::now());
            }
            assert!(matches!(waiter.await, Ok(Ok(Taken::Idle(c))) if c == conn));
        }
        assert_eq!(slots.counts().waiting, 0);
    }

    #[tokio::test]
    async fn waiting_ends_at_the_timeout_or_the_queue_limit() {
        let (slots, _) = pool(1);
        assert!(slots.take_now(0).is_some());
        assert_eq!(
            slots.take(0, WAIT, 10).await.err(),
            Some(WaitError::TimedOut)
        );
        assert_eq!(
            slots.take(0, WAIT, 0).await.err(),
            Some(WaitError::QueueFull { waiting: 0 })
        );
        assert_eq!(slots.counts().waiting, 0);
    }

    #[tokio::test]
    async fn a_connection_handed_to_a_waiter_that_left_is_not_lost() {
        let (slots, _) = pool(1);
        assert!(slots.take_now(0).is_some());
        let waiter = wait_for(&slots);
        until_waiting(&slots, 1).await;
        waiter.abort();
        let _ = waiter.await;
        slots.give_back(5, Instant::now());
        assert_eq!(idle(slots.take_now(0)), Some(5));
    }

    #[tokio::test]
    async fn a_closed_pool_fails_waiters_and_closes_returns() {
        let (slots, record) = pool(2);
        assert!(slots.take_now(0).is_some());
        assert!(slots.take_now(0).is_some());
        slots.give_back(1, Instant::now());
        assert!(slots.take_now(0).is_some());
        let waiter = wait_for(&slots);
        until_waiting(&slots, 1).await;
        slots.close();
        let got = waiter.await.map_err(|e| e.to_string());
        assert!(matches!(got, Ok(Err(WaitError::Closed))));
        slots.give_back(1, Instant::now());
        assert_eq!(closed(&record), vec![1]);
        assert_eq!(slots.counts().size, 1);
        assert!(slots.take_now(0).is_none());
    }

    #[tokio::test]
    async fn a_vacated_place_goes_to_a_waiter_or_can_be_opened_again() {
        let (slots, _) = pool(1);
        assert!(slots.take_now(0).is_some());
        slots.vacate();
        assert!(matches!(slots.take_now(0), Some(Taken::Open)));
        let waiter = wait_for(&slots);
        until_waiting(&slots, 1).await;
        slots.vacate();
        assert!(matches!(waiter.await, Ok(Ok(Taken::Open))));
        assert_eq!(slots.counts().size, 1);
    }

    #[test]
    fn shrinking_closes_idle_excess_now_and_busy_excess_on_return() {
        let (slots, record) = pool(3);
        for _ in 0..3 {
            assert!(slots.take_now(0).is_some());
        }
        let now = Instant::now();
        slots.give_back(1, now);
        // One idle, two out; shrunk to 1, the idle one closes now and one of those out as it
        // returns; the last one stays.
        slots.resize(1);
        assert_eq!(closed(&record), vec![1]);
        slots.give_back(2, now);
        assert_eq!(closed(&record), vec![1, 2]);
        slots.give_back(3, now);
        let counts = slots.counts();
        assert_eq!((counts.size, counts.available, counts.max_size), (1, 1, 1));
        assert!(slots.take_now(0).is_some());
        assert!(slots.take_now(0).is_none());
    }

    #[tokio::test]
    async fn growing_lets_waiters_open() {
        let (slots, _) = pool(1);
        assert!(slots.take_now(0).is_some());
        let waiter = wait_for(&slots);
        until_waiting(&slots, 1).await;
        slots.resize(3);
        assert!(matches!(waiter.await, Ok(Ok(Taken::Open))));
        assert!(matches!(slots.take_now(0), Some(Taken::Open)));
        assert!(slots.take_now(0).is_none());
    }

    #[test]
    fn eviction_closes_what_the_predicate_rejects() {
        let (slots, record) = pool(3);
        for _ in 0..3 {
            assert!(slots.take_now(0).is_some());
        }
        let now = Instant::now();
        for conn in [1, 2, 3] {
            slots.give_back(conn, now);
        }
        slots.evict(0, |entry| entry.conn != 2);
        assert_eq!(closed(&record), vec![2]);
        assert_eq!(slots.counts().size, 2);
        let mut seen = Vec::new();
        slots.each_idle(|conn| seen.push(*conn));
        assert_eq!(seen, vec![1, 3]);
        // Never below the floor: of two rejected, one goes.
        slots.evict(1, |_| false);
        assert_eq!(closed(&record), vec![2, 1]);
        assert_eq!(slots.counts().size, 1);
    }
}
