//! The serving threads of the process: one single-threaded tokio runtime each. Accepted
//! clients are spread over them in turn, and each pooled connection remembers the thread
//! that opened it (its socket is registered with that thread's I/O driver), so a checkout
//! can take one of its own thread's and the shard's answers wake no other thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

thread_local! {
    /// Which serving thread this is (0 for the main one, and for any thread not serving).
    static HOME: Cell<u16> = const { Cell::new(0) };
}

/// The serving threads' runtimes, in order of their home numbers.
struct Spread {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static SPREAD: OnceLock<Spread> = OnceLock::new();

/// The serving thread the caller runs on.
pub fn home() -> u16 {
    HOME.with(Cell::get)
}

/// Marks the calling thread as serving thread `home`.
pub fn set_home(home: u16) {
    HOME.with(|cell| cell.set(home));
}

/// Records the runtimes of the process's serving threads (by home number), once. Without
/// it, clients are served where they are accepted.
pub fn install(handles: Vec<Handle>) {
    let _ = SPREAD.set(Spread {
        handles,
        next: AtomicUsize::new(0),
    });
}

/// The runtime the next accepted client goes to, when the process serves on several.
pub fn next() -> Option<&'static Handle> {
    let spread = SPREAD.get()?;
    let turn = spread.next.fetch_add(1, Ordering::Relaxed);
    spread.handles.get(turn % spread.handles.len().max(1))
}
