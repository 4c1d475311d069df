//! `PAUSE` / `RESUME`: holding new transactions back, for all shards or for some.
//!
//! A session asks [`PauseGate::wait`] before it checks out a backend for a shard, which is when a
//! new transaction starts in transaction pooling; a transaction that already holds its backend
//! carries on, so running work finishes while new work waits. Graceful shutdown pauses every
//! shard the same way.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use shardline_router::ShardId;
use tokio::sync::watch;

use crate::context::Loaded;

/// What is paused right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Every shard, including ones added later.
    pub all: bool,
    /// Shards paused by name.
    pub shards: BTreeSet<String>,
}

impl Paused {
    /// True when new transactions on `shard` must wait.
    pub fn holds(&self, shard: &str) -> bool {
        self.all || self.shards.contains(shard)
    }
}

/// Why a `RESUME` did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// `PAUSE` without a shard is in force; only a plain `RESUME` lifts it.
    #[error("every shard is paused; RESUME without a shard name resumes them")]
    AllPaused,
    /// The named shard is not paused.
    #[error("shard {0} is not paused")]
    NotPaused(String),
}

/// The pause switch every session checks before starting a transaction.
pub struct PauseGate {
    state: watch::Sender<Paused>,
    /// Fast path: false whenever nothing is paused.
    any: AtomicBool,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            state: watch::Sender::new(Paused::default()),
            any: AtomicBool::new(false),
        }
    }
}

impl PauseGate {
    /// Waits while new transactions on `shard` are paused; returns at once otherwise. The
    /// waiting runs in a future of its own (`Box::pin`), allocated only while something is
    /// paused, so this one stays a few bytes in its caller's.
    pub async fn wait(&self, loaded: &Loaded, shard: ShardId) {
        if self.pausing() {
            Box::pin(self.wait_resumed(loaded, shard)).await;
        }
    }

    /// Whether new transactions on some shard are paused (one atomic load): a checkout that
    /// finds none paused need not [`PauseGate::wait`].
    pub fn pausing(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Waits until new transactions on `shard` may start.
    async fn wait_resumed(&self, loaded: &Loaded, shard: ShardId) {
        let Some(name) = loaded.config.shards.get(shard).map(|s| s.name.as_str()) else {
            return;
        };
        let mut changes = self.state.subscribe();
        // The sender lives as long as the gate, so `wait_for` only ends when resumed.
        let _ = changes.wait_for(|paused| !paused.holds(name)).await;
    }

    /// Pauses `shard`, or every shard when `None`.
    pub fn pause(&self, shard: Option<&str>) {
        self.state.send_modify(|paused| match shard {
            Some(name) => {
                paused.shards.insert(name.to_owned());
            }
            None => paused.all = true,
        });
        self.any.store(true, Ordering::Release);
    }

    /// Resumes `shard`, or everything when `None`.
    pub fn resume(&self, shard: Option<&str>) -> Result<(), ResumeError> {
        let mut result = Ok(());
        self.state.send_modify(|paused| match shard {
            None => *paused = Paused::default(),
            Some(_) if paused.all => result = Err(ResumeError::AllPaused),
            Some(name) => {
                if !paused.shards.remove(name) {
                    result = Err(ResumeError::NotPaused(name.to_owned()));
                }
            }
        });
        let still = self.state.borrow().clone();
        self.any
            .store(still != Paused::default(), Ordering::Release);
        result
    }

    /// What is paused now.
    pub fn paused(&self) -> Paused {
        self.state.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pausing_and_resuming_by_shard_and_all() {
        let gate = PauseGate::default();
        assert!(!gate.paused().holds("s0"));
        gate.pause(Some("s0"));
        assert!(gate.paused().holds("s0") && !gate.paused().holds("s1"));
        assert_eq!(
            gate.resume(Some("s1")),
            Err(ResumeError::NotPaused("s1".into()))
        );
        assert_eq!(gate.resume(Some("s0")), Ok(()));
        assert!(!gate.any.load(Ordering::Acquire));
        gate.pause(None);
        assert!(gate.paused().holds("anything"));
        assert_eq!(gate.resume(Some("s0")), Err(ResumeError::AllPaused));
        assert_eq!(gate.resume(None), Ok(()));
        assert_eq!(gate.paused(), Paused::default());
    }
}
