//! This proxy's part in a resharding migration (the argument is in the `shardline-resharder`
//! crate's docs): which migration is running and in what phase ([`Active`], read from the
//! catalog by [`catalog`]), the config served meanwhile (the router's
//! `Layout::overlay`), and the two things the resharder drives through the admin console:
//! draining transactions that started before a switch ([`Epoch`] tickets) and holding writes to
//! the moving keys during cutover ([`MigrationGate`]).

pub mod catalog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shardline_router::migration::images::TableShape;
use shardline_router::migration::{Layout, Phase, TableMove};
use tokio::sync::watch;

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

/// A generation of transactions. Each transaction holds a [`Ticket`] of the generation current
/// when it began; [`Epoch::drain`] starts a new generation and waits until the old one's
/// tickets are all returned, i.e. until every transaction that began before it has ended.
#[derive(Default)]
pub struct Epoch {
    current: ArcSwap<Generation>,
}

/// One generation of [`Epoch`].
#[derive(Debug, Default)]
pub struct Generation;

/// Held by a transaction for as long as it runs.
pub type Ticket = Arc<Generation>;

impl Epoch {
    /// A ticket of the current generation.
    pub fn ticket(&self) -> Ticket {
        self.current.load_full()
    }

    /// True when `ticket` belongs to the current generation.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        Arc::ptr_eq(&self.current.load(), ticket)
    }

    /// Starts a new generation and waits up to `limit` for the previous one to end; the error
    /// says how many of its transactions are still running.
    pub async fn drain(&self, limit: Duration) -> Result<(), usize> {
        let old = self.current.swap(Arc::new(Generation));
        let deadline = Instant::now() + limit;
        loop {
            // The swap's reference is ours; every other one is a running transaction.
            let running = Arc::strong_count(&old) - 1;
            if running == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(running);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// Holds new writes to moving keys while a cutover switches their owner.
pub struct MigrationGate {
    paused: watch::Sender<bool>,
    /// Transactions that write moving keys.
    pub dual: Epoch,
    /// Every transaction, drained when dual writes begin.
    pub writes: Epoch,
}

impl Default for MigrationGate {
    fn default() -> Self {
        MigrationGate {
            paused: watch::Sender::new(false),
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
            let ticket = self.dual.ticket();
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
        held.is_none() && *self.paused.borrow()
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
    }

    /// True while writes to moving keys are held.
    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_older_tickets_only() {
        let epoch = Epoch::default();
        let old = epoch.ticket();
        let drained = epoch.drain(Duration::from_millis(20)).await;
        assert_eq!(drained, Err(1));
        let newer = epoch.ticket();
        drop(old);
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Err(1));
        drop(newer);
        assert_eq!(epoch.drain(Duration::from_millis(20)).await, Ok(()));
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
