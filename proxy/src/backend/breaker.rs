//! A circuit breaker per shard address, so a shard that is down or hung costs a client an
//! immediate error instead of a connect timeout, and cannot pile up every client behind it.
//!
//! Closed (normal) → open after `failures` consecutive failures to reach the shard (connect
//! errors, connect and login timeouts, connections that break, statements past
//! `query_timeout`) → after `open`, half-open: the maintenance task probes the shard in the
//! background (a login as the last pool's or logged-in user, nothing else) → closed after
//! `successes` probes the shard answered in a row (a refused login is an answer: the shard is
//! reachable, and its clients should hear its refusal), open again on one it did not. While
//! open or half-open every checkout for the shard fails at once with 08006, naming the shard
//! and when it is tried again. Any answer from the shard while closed
//! (a `ReadyForQuery`) resets the failure count.
//!
//! [`Circuit`] is the decision, a pure function of events and the time; [`Breaker`] shares it
//! between tasks and keeps the hot path to one atomic load per checkout and per answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use shardline_router::config::BreakerSettings;

use super::conn::BackendTarget;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Statements flow; `failures` counted since the last success.
    Closed { failures: u32 },
    /// Statements are refused until `until`.
    Open { until: Instant },
    /// Statements are refused while background probes log in; `successes` so far.
    HalfOpen { successes: u32 },
}

impl BreakerState {
    /// The state's name, as `SHOW SHARDS`, `/metrics` and the log print it.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }

    /// The value of `shardline_shard_breaker_state`: 0 closed, 1 half-open, 2 open.
    fn gauge(&self) -> i64 {
        match self {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen { .. } => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

/// Why a checkout was refused without trying the shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "circuit breaker open after {failures} consecutive failures (last: {last_failure}); {retry}"
)]
pub struct Refusal {
    /// Consecutive failures that opened the breaker.
    pub failures: u32,
    /// What the last failure was.
    pub last_failure: String,
    /// When the shard is tried again, in words.
    pub retry: String,
}

/// A change of state, to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
}

/// The breaker's bookkeeping; every method is a pure function of its arguments.
#[derive(Debug, Clone)]
pub struct Circuit {
    state: BreakerState,
    /// Failures in the streak that opened the breaker.
    streak: u32,
    last_failure: String,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            state: BreakerState::Closed { failures: 0 },
            streak: 0,
            last_failure: String::new(),
        }
    }
}

impl Circuit {
    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// `Ok` when a checkout may try the shard at `now`.
    pub fn admit(&self, now: Instant) -> Result<(), Refusal> {
        let retry = match self.state {
            BreakerState::Closed { .. } => return Ok(()),
            BreakerState::Open { until } => format!(
                "the proxy tries it again in {} s",
                until.saturating_duration_since(now).as_secs_f64().ceil() as u64
            ),
            BreakerState::HalfOpen { .. } => {
                "the proxy is probing it and lets statements through once it answers".to_owned()
            }
        };
        Err(Refusal {
            failures: self.streak,
            last_failure: self.last_failure.clone(),
            retry,
        })
    }

    /// Records a failure to reach the shard.
    pub fn failed(
        &mut self,
        why: &str,
        now: Instant,
        settings: &BreakerSettings,
    ) -> Option<Transition> {
        self.last_failure = why.to_owned();
        let next = match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                self.streak = failures;
                if failures < settings.failures {
                    self.state = BreakerState::Closed { failures };
                    return None;
                }
                BreakerState::Open {
                    until: now + settings.open,
                }
            }
            // Connections opened before the breaker did may still fail; that changes nothing.
            BreakerState::Open { .. } => return None,
            BreakerState::HalfOpen { .. } => {
                self.streak = self.streak.saturating_add(1);
                BreakerState::Open {
                    until: now + settings.open,
                }
            }
        };
        Some(self.enter(next))
    }

    /// Records that the shard answered (a login, a `ReadyForQuery`).
    pub fn succeeded(&mut self, settings: &BreakerSettings) -> Option<Transition> {
        match self.state {
            BreakerState::Closed { .. } => {
                self.state = BreakerState::Closed { failures: 0 };
                None
            }
            // Answers on connections from before the breaker opened prove little; probes decide.
            BreakerState::Open { .. } => None,
            BreakerState::HalfOpen { successes } => {
                let successes = successes.saturating_add(1);
                if successes < settings.successes {
                    self.state = BreakerState::HalfOpen { successes };
                    return None;
                }
                self.streak = 0;
                Some(self.enter(BreakerState::Closed { failures: 0 }))
            }
        }
    }

    /// Moves an open breaker whose time is up to half-open; probes are due while half-open.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                Some(self.enter(BreakerState::HalfOpen { successes: 0 }))
            }
            _ => None,
        }
    }

    fn enter(&mut self, next: BreakerState) -> Transition {
        let from = self.state.name();
        self.state = next;
        Transition {
            from,
            to: next.name(),
        }
    }
}

/// One address's breaker, shared by every pool and connection to it.
pub struct Breaker {
    address: String,
    /// Mirrors "state is closed", so an admitted checkout reads one atomic.
    closed: AtomicBool,
    /// Closed with failures counted: the next answer must reset them.
    suspect: AtomicBool,
    inner: Mutex<Inner>,
    state_gauge: Gauge,
    opened: Counter,
    closed_count: Counter,
}

struct Inner {
    circuit: Circuit,
    settings: BreakerSettings,
    /// Whom to log in as when probing: the last pool's target, or the last that logged in.
    probe_target: Option<BackendTarget>,
    probing: bool,
}

impl Breaker {
    /// A closed breaker for `address` reporting to the given metric handles.
    pub fn new(
        address: String,
        settings: BreakerSettings,
        state_gauge: Gauge,
        opened: Counter,
        closed_count: Counter,
    ) -> Breaker {
        Breaker {
            address,
            closed: AtomicBool::new(true),
            suspect: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                circuit: Circuit::default(),
                settings,
                probe_target: None,
                probing: false,
            }),
            state_gauge,
            opened,
            closed_count,
        }
    }

    /// `Ok` when a checkout may try the shard.
    pub fn admit(&self) -> Result<(), Refusal> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.lock().circuit.admit(Instant::now())
    }

    /// The shard answered.
    pub fn succeeded(&self) {
        if self.suspect.load(Ordering::Relaxed) {
            self.record(|circuit, settings| circuit.succeeded(settings));
        }
    }

    /// Reaching the shard failed.
    pub fn failed(&self, why: &str) {
        self.record(|circuit, settings| circuit.failed(why, Instant::now(), settings));
    }

    /// Probes log in as `target`: the target of the pool made last, or that last logged in
    /// (so probes follow a reloaded config; a login the shard refuses still proves it
    /// answers).
    pub fn probe_as(&self, target: &BackendTarget) {
        let mut inner = self.lock();
        if inner.probe_target.as_ref() != Some(target) {
            inner.probe_target = Some(target.clone());
        }
    }

    /// Applies thresholds from a reloaded config.
    pub fn configure(&self, settings: BreakerSettings) {
        self.lock().settings = settings;
    }

    /// Moves an expired open state to half-open and returns the target to probe, if a probe
    /// is due and none is running; the caller reports back with [`Breaker::probed`].
    pub fn probe_due(&self) -> Option<BackendTarget> {
        let mut inner = self.lock();
        let transition = inner.circuit.tick(Instant::now());
        self.publish(&inner, transition);
        let due = matches!(inner.circuit.state(), BreakerState::HalfOpen { .. }) && !inner.probing;
        let target = inner.probe_target.clone().filter(|_| due)?;
        inner.probing = true;
        Some(target)
    }

    /// The outcome of a probe started by [`Breaker::probe_due`].
    pub fn probed(&self, outcome: Result<(), String>) {
        self.record(|circuit, settings| match &outcome {
            Ok(()) => circuit.succeeded(settings),
            Err(why) => circuit.failed(why, Instant::now(), settings),
        });
        self.lock().probing = false;
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().circuit.state()
    }

    fn record(&self, event: impl FnOnce(&mut Circuit, &BreakerSettings) -> Option<Transition>) {
        let mut inner = self.lock();
        let settings = inner.settings;
        let transition = event(&mut inner.circuit, &settings);
        self.publish(&inner, transition);
    }

    fn publish(&self, inner: &Inner, transition: Option<Transition>) {
        let state = inner.circuit.state();
        self.closed.store(
            matches!(state, BreakerState::Closed { .. }),
            Ordering::Relaxed,
        );
        self.suspect.store(
            !matches!(state, BreakerState::Closed { failures: 0 }),
            Ordering::Relaxed,
        );
        let Some(transition) = transition else {
            return;
        };
        self.state_gauge.set(state.gauge());
        match state {
            BreakerState::Open { until } => {
                self.opened.inc();
                tracing::warn!(
                    backend = %self.address,
                    from = transition.from,
                    failures = inner.circuit.streak,
                    last_failure = %inner.circuit.last_failure,
                    retry_in = ?until.saturating_duration_since(Instant::now()),
                    "circuit breaker opened: statements for this shard fail at once until it answers again"
                );
            }
            BreakerState::HalfOpen { .. } => {
                tracing::info!(backend = %self.address, "circuit breaker half-open: probing the shard")
            }
            BreakerState::Closed { .. } => {
                self.closed_count.inc();
                tracing::info!(backend = %self.address, "circuit breaker closed: the shard answers again")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("address", &self.address)
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            open: Duration::from_secs(10),
            successes: 2,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let s = settings();
        let now = Instant::now();
        let mut c = Circuit::default();
        assert_eq!(c.failed("refused", now, &s), None);
        assert_eq!(c.failed("refused", now, &s), None);
        assert_eq!(c.succeeded(&s), None, "an answer resets the count");
        assert_eq!(c.failed("refused", now, &s), None);
        assert_eq!(c.failed("refused", now, &s), None);
        assert!(c.admit(now).is_ok());
        let t = c.failed("timed out", now, &s);
        assert_eq!(
            t,
            Some(Transition {
                from: "closed",
                to: "open"
            })
        );
        let refusal = c.admit(now + Duration::from_secs(3)).err();
        let refusal = refusal.unwrap_or_else(|| panic!("an open breaker admits nothing"));
        assert_eq!(refusal.failures, 3);
        assert_eq!(refusal.last_failure, "timed out");
        assert!(refusal.retry.contains("in 7 s"), "{}", refusal.retry);
    }

    #[test]
    fn half_open_after_the_interval_and_closed_after_enough_probes() {
        let s = settings();
        let now = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.failed("refused", now, &s);
        }
        assert_eq!(c.tick(now + Duration::from_secs(9)), None);
        assert_eq!(c.succeeded(&s), None, "answers while open do not count");
        assert_eq!(
            c.tick(now + Duration::from_secs(10)).map(|t| t.to),
            Some("half-open")
        );
        assert!(c.admit(now).is_err(), "half-open still refuses statements");
        assert_eq!(c.succeeded(&s), None);
        assert_eq!(c.succeeded(&s).map(|t| t.to), Some("closed"));
        assert!(c.admit(now).is_ok());
        assert_eq!(c.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let s = settings();
        let now = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.failed("refused", now, &s);
        }
        c.tick(now + Duration::from_secs(10));
        c.succeeded(&s);
        let later = now + Duration::from_secs(11);
        assert_eq!(
            c.failed("timed out", later, &s).map(|t| (t.from, t.to)),
            Some(("half-open", "open"))
        );
        assert_eq!(
            c.state(),
            BreakerState::Open {
                until: later + s.open
            }
        );
        assert_eq!(c.failed("again", later, &s), None, "open stays open");
    }

    #[test]
    fn the_shared_breaker_mirrors_the_circuit() {
        let s = BreakerSettings {
            failures: 1,
            open: Duration::from_millis(1),
            successes: 1,
        };
        let breaker = Breaker::new(
            "127.0.0.1:1".to_owned(),
            s,
            Gauge::default(),
            Counter::default(),
            Counter::default(),
        );
        assert!(breaker.admit().is_ok());
        assert_eq!(breaker.probe_due(), None, "nothing to probe while closed");
        breaker.failed("refused");
        assert!(breaker.admit().is_err());
        std::thread::sleep(Duration::from_millis(2));
        // No target was ever recorded, so there is no one to probe as; the state still moves.
        assert_eq!(breaker.probe_due(), None);
        assert_eq!(breaker.state(), BreakerState::HalfOpen { successes: 0 });
        breaker.probed(Ok(()));
        assert!(breaker.admit().is_ok());
        assert_eq!(breaker.state_gauge.get(), 0);
        assert_eq!(breaker.opened.get(), 1);
        assert_eq!(breaker.closed_count.get(), 1);
    }
}
