//! This proxy's part in a resharding migration (the argument is in the `shardline-resharder`
//! crate's docs): which migration is running and in what phase ([`Active`], read from the
//! catalog by [`catalog`]), the config served meanwhile (the router's
//! `Layout::overlay`), and the two things the resharder drives through the admin console:
//! draining transactions that started before a switch ([`Epoch`] tickets) and holding writes to
//! the moving keys during cutover ([`MigrationGate`]).

pub mod catalog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shardline_router::migration::images::TableShape;
use shardline_router::migration::{Layout, Phase, TableMove};
use tokio::sync::watch;

use crate::metrics::striped::{stripe, stripes, Padded};

/// How often a drain looks at the transactions it waits for.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// A migration recorded in the catalog, as this proxy serves it.
#[derive(Debug)]
pub struct Active {
    /// The catalog's id of the migration.
    pub id: i64,
    /// Where it stands.
    pub phase: Phase,
    /// What moves where.
    pub layout: Layout,
    /// Columns and unique key of each moving table, to apply row images.
    pub shapes: HashMap<String, TableShape>,
}

impl Active {
    /// The move of `table` (any case, possibly schema-qualified), if its rows move.
    pub fn moving(&self, table: &str) -> Option<(&TableMove, &TableShape)> {
        let name = table
            .rsplit('.')
            .next()
            .unwrap_or(table)
            .to_ascii_lowercase();
        let moving = self.layout.table(&name)?;
        Some((moving, self.shapes.get(&name)?))
    }
}

/// Transactions counted by generation. Each transaction holds a [`Ticket`] of the generation
/// current when it began; [`Epoch::drain`] starts a new generation and waits until every
/// ticket of the old one is returned, i.e. until every transaction that began before it has
/// ended. A generation an earlier drain gave up on is waited for by the next drains too: its
/// transactions also began before them.
///
/// Taking and returning a ticket writes only the calling thread's stripe of its generation's
/// count (a count every serving thread wrote would cross cores twice per transaction), and a
/// session keeps the generation it saw last between its transactions, so a ticket costs no
/// reference count either.
pub struct Epoch {
    current: ArcSwap<Generation>,
    /// The current generation's number: a ticket just counted checks it is still current.
    number: AtomicU64,
    /// Older generations that may still have running transactions (a drain gave up on them).
    undrained: Mutex<Vec<Arc<Generation>>>,
}

/// One generation of [`Epoch`].
#[derive(Debug)]
pub struct Generation {
    number: u64,
    /// Tickets taken less tickets returned, per thread: a ticket may come back on another
    /// thread than it was taken on, so only the sum means anything.
    running: Arc<[Padded<AtomicI64>]>,
}

impl Generation {
    fn new(number: u64) -> Generation {
        Generation {
            number,
            running: stripes(),
        }
    }

    /// Adds `delta` to the calling thread's stripe of the count.
    fn count(&self, delta: i64) {
        if let Some(Padded(own)) = self.running.get(stripe(self.running.len()).index) {
            own.fetch_add(delta, Ordering::SeqCst);
        }
    }

    /// Transactions of this generation still running.
    fn running(&self) -> i64 {
        self.running
            .iter()
            .map(|Padded(n)| n.load(Ordering::SeqCst))
            .sum()
    }
}

/// Held by a transaction for as long as it runs; returned by [`Ticket::end`] or by dropping
/// it.
#[derive(Debug)]
pub struct Ticket {
    /// Always present until the ticket is returned.
    generation: Option<Arc<Generation>>,
}

impl Ticket {
    /// Returns the ticket, handing back its generation for the holder's next
    /// [`Epoch::ticket`].
    pub fn end(mut self) -> Option<Arc<Generation>> {
        self.generation.take().inspect(|g| g.count(-1))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(generation) = &self.generation {
            generation.count(-1);
        }
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch {
            current: ArcSwap::from_pointee(Generation::new(0)),
            number: AtomicU64::new(0),
            undrained: Mutex::new(Vec::new()),
        }
    }
}

impl Epoch {
    /// A ticket of the current generation. `seen` is the generation the caller's last ticket
    /// belonged to: while it is still current, taking the ticket touches nothing shared.
    pub fn ticket(&self, seen: Option<Arc<Generation>>) -> Ticket {
        let mut candidate = seen;
        loop {
            let generation = candidate.take().unwrap_or_else(|| self.current.load_full());
            generation.count(1);
            // Counted first, checked second (both sequentially consistent, as the drain's
            // switch and sum are): a drain that switched generations after this check sees
            // this count, and one that switched before fails the check.
            if generation.number == self.number.load(Ordering::SeqCst) {
                return Ticket {
                    generation: Some(generation),
                };
            }
            // A drain began meanwhile: this transaction belongs to the new generation.
            generation.count(-1);
        }
    }

    /// True when `ticket` belongs to the current generation.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        ticket
            .generation
            .as_ref()
            .is_some_and(|g| g.number == self.number.load(Ordering::SeqCst))
    }

    /// Starts a new generation and waits up to `limit` for the older ones to end; the error
    /// says how many of their transactions are still running.
    pub async fn drain(&self, limit: Duration) -> Result<(), usize> {
        let waited: Vec<Arc<Generation>> = {
            let mut undrained = self
                .undrained
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let next = Generation::new(self.number.load(Ordering::SeqCst) + 1);
            let number = next.number;
            undrained.push(self.current.swap(Arc::new(next)));
            self.number.store(number, Ordering::SeqCst);
            undrained.clone()
        };
        let deadline = Instant::now() + limit;
        loop {
            let running: i64 = waited.iter().map(|g| g.running()).sum();
            if running <= 0 {
                self.undrained
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|g| g.running() > 0);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(usize::try_from(running).unwrap_or(usize::MAX));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// Holds new writes to moving keys while a cutover switches their owner.
pub struct MigrationGate {
    paused: watch::Sender<bool>,
    /// The same as `paused`, read without the channel's lock: every request asks
    /// ([`MigrationGate::holds`]), and a read lock is a write to a line every thread shares.
    holding: AtomicBool,
    /// Transactions that write moving keys.
    pub dual: Epoch,
    /// Every transaction, drained when dual writes begin.
    pub writes: Epoch,
}

impl Default for MigrationGate {
    fn default() -> Self {
        MigrationGate {
            paused: watch::Sender::new(false),
            holding: AtomicBool::new(false),
            dual: Epoch::default(),
            writes: Epoch::default(),
        }
    }
}

impl MigrationGate {
    /// A ticket for a transaction about to write a moving key, once such writes may start: a
    /// transaction already holding one (`held`, from before a pause) carries on; a new one
    /// waits while the cutover holds writes.
    pub async fn enter(&self, held: Option<Ticket>) -> Ticket {
        if let Some(ticket) = held {
            return ticket;
        }
        loop {
            let ticket = self.dual.ticket(None);
            if !*self.paused.borrow() || !self.dual.is_current(&ticket) {
                // Taken before the pause began: the pause's drain waits for this transaction.
                return ticket;
            }
            drop(ticket);
            let mut changes = self.paused.subscribe();
            // The sender lives as long as the gate, so this only ends when resumed.
            let _ = changes.wait_for(|paused| !paused).await;
        }
    }

    /// True when a transaction holding `held` must wait before writing a moving key (a
    /// cutover holds such writes and the transaction began after it).
    pub fn holds(&self, held: &Option<Ticket>) -> bool {
        held.is_none() && self.paused()
    }

    /// Waits until writes to moving keys may go on. A caller re-plans its statement afterwards:
    /// the cutover it waited for may have moved the keys.
    pub async fn resumed(&self) {
        let mut changes = self.paused.subscribe();
        // The sender lives as long as the gate, so this only ends when resumed.
        let _ = changes.wait_for(|paused| !paused).await;
    }

    /// Holds new writes to moving keys and waits up to `limit` for the running ones to end;
    /// on timeout writes resume and the error says how many were still running.
    pub async fn pause(&self, limit: Duration) -> Result<(), usize> {
        self.holding.store(true, Ordering::SeqCst);
        self.paused.send_replace(true);
        let drained = self.dual.drain(limit).await;
        if drained.is_err() {
            self.resume();
        }
        drained
    }

    /// Lets writes to moving keys go on.
    pub fn resume(&self) {
        self.paused.send_replace(false);
        self.holding.store(false, Ordering::SeqCst);
    }

    /// True while writes to moving keys are held.
    pub fn paused(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_older_tickets_only() {
        let epoch = Epoch::default();
        let old = epoch.ticket(None);
        let drained = epoch.drain(Duration::from_millis(20)).await;
        assert_eq!(drained, Err(1));
        assert!(!epoch.is_current(&old));
        let newer = epoch.ticket(None);
        assert!(epoch.is_current(&newer));
        // The generation the first drain gave up on is still waited for.
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Err(2));
        drop(old);
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Err(1));
        let seen = newer.end();
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Ok(()));
        // A holder that kept a generation from before the drains gets a current ticket.
        let again = epoch.ticket(seen);
        assert!(epoch.is_current(&again));
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Err(1));
    }

    #[tokio::test]
    async fn tickets_returned_on_other_threads_are_counted() {
        let epoch = Arc::new(Epoch::default());
        let mut tickets: Vec<Ticket> = (0..64).map(|_| epoch.ticket(None)).collect();
        assert_eq!(epoch.drain(Duration::from_millis(1)).await, Err(64));
        std::thread::scope(|scope| {
            while !tickets.is_empty() {
                let chunk = tickets.split_off(tickets.len().saturating_sub(16));
                scope.spawn(move || drop(chunk));
            }
        });
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Ok(()));
    }

    /// Threads take and return tickets while drains run: once a drain has returned, no
    /// ticket of an older generation is still held.
    #[test]
    fn no_older_ticket_outlives_a_drain() -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let epoch = Arc::new(Epoch::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The generation each worker holds a ticket of (u64::MAX: none).
        let held: Arc<Vec<AtomicU64>> =
            Arc::new((0..4).map(|_| AtomicU64::new(u64::MAX)).collect());
        let mut violations = Vec::new();
        std::thread::scope(|scope| {
            for worker in 0..4 {
                let (epoch, stop, held) = (epoch.clone(), stop.clone(), held.clone());
                scope.spawn(move || {
                    let mut seen = None;
                    while !stop.load(Ordering::SeqCst) {
                        let ticket = epoch.ticket(seen.take());
                        let number = ticket.generation.as_ref().map_or(u64::MAX, |g| g.number);
                        held[worker].store(number, Ordering::SeqCst);
                        std::hint::spin_loop();
                        held[worker].store(u64::MAX, Ordering::SeqCst);
                        seen = ticket.end();
                    }
                });
            }
            // Findings are collected, not asserted here: the workers must be stopped first.
            for _ in 0..200 {
                let drained = runtime.block_on(epoch.drain(Duration::from_secs(5)));
                let current = epoch.number.load(Ordering::SeqCst);
                if drained.is_err() {
                    violations.push(format!("the drain to {current} timed out"));
                }
                for slot in held.iter() {
                    let number = slot.load(Ordering::SeqCst);
                    if number != u64::MAX && number < current {
                        violations.push(format!(
                            "a ticket of generation {number} outlived the drain to {current}"
                        ));
                    }
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
        assert_eq!(violations, Vec::<String>::new());
        Ok(())
    }

    #[tokio::test]
    async fn a_paused_gate_lets_older_transactions_through_and_holds_new_ones() {
        let gate = Arc::new(MigrationGate::default());
        let before = gate.enter(None).await;
        let pausing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pause(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(gate.paused());
        // The older transaction goes on and, when it ends, the pause completes.
        let again = gate.enter(Some(before)).await;
        drop(again);
        assert_eq!(pausing.await.ok(), Some(Ok(())));
        let held = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(None).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished());
        gate.resume();
        assert!(held.await.is_ok());
    }
}
