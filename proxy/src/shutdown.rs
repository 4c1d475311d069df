//! Graceful shutdown: stop accepting, let transactions in flight finish within the grace
//! period, then close every client and backend connection.
//!
//! Phases only move forward: [`Phase::Running`] → [`Phase::Draining`] (SIGTERM, SIGINT or the
//! admin `SHUTDOWN`: the listener closes and every shard is paused, so new transactions wait
//! while running ones finish) → [`Phase::Closed`] (no transaction left, the grace period ran
//! out, or a second signal: client connections are cut and pools closed).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::context::ProxyContext;

/// How often draining checks for transactions still running.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Where the proxy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// Not accepting; transactions in flight are finishing.
    Draining,
    /// Connections are being closed; the proxy is done.
    Closed,
}

/// The shared shutdown switch.
pub struct Shutdown {
    phase: watch::Sender<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
        }
    }
}

impl Shutdown {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Starts a graceful shutdown; false if one was already under way.
    pub fn begin(&self) -> bool {
        self.advance(Phase::Draining)
    }

    /// Ends the shutdown now: clients are cut off whatever they are doing.
    pub fn close_now(&self) -> bool {
        self.advance(Phase::Closed)
    }

    /// Resolves once the proxy reached `phase` (or a later one).
    pub async fn reached(&self, phase: Phase) {
        let mut changes = self.phase.subscribe();
        // The sender lives as long as `self`, so this only ends when the phase is reached.
        let _ = changes.wait_for(|p| *p >= phase).await;
    }

    fn advance(&self, to: Phase) -> bool {
        self.phase.send_if_modified(|phase| {
            let moved = *phase < to;
            if moved {
                *phase = to;
            }
            moved
        })
    }
}

/// Drives a shutdown once it begins: pauses every shard, waits for transactions in flight
/// (backends checked out) to finish within the grace period, then closes everything.
pub async fn drive(ctx: &ProxyContext) {
    ctx.shutdown.reached(Phase::Draining).await;
    ctx.pause.pause(None);
    let grace = ctx.snapshot().config.shutdown_grace;
    let busy = ctx.pools.in_use();
    tracing::info!(
        transactions = busy,
        grace_s = grace.as_secs(),
        "shutting down: no longer accepting clients, waiting for transactions in flight to finish"
    );
    let deadline = Instant::now() + grace;
    let left = tokio::select! {
        left = wait_idle(ctx, deadline) => left,
        () = ctx.shutdown.reached(Phase::Closed) => ctx.pools.in_use(),
    };
    if left > 0 {
        tracing::warn!(
            transactions = left,
            "closing connections with transactions still running"
        );
    }
    ctx.shutdown.close_now();
    ctx.pools.retire(|_| false);
    tracing::info!("shutdown complete");
}

/// Waits until no backend is checked out or `deadline` passes; returns how many still are.
async fn wait_idle(ctx: &ProxyContext, deadline: Instant) -> usize {
    loop {
        let busy = ctx.pools.in_use();
        if busy == 0 || Instant::now() >= deadline {
            return busy;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
