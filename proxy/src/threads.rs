//! The serving threads of the process: one single-threaded tokio runtime each. Accepted
//! clients are spread over them in turn, and each pooled connection remembers the thread
//! that opened it (its socket is registered with that thread's I/O driver), so a checkout
//! can take one of its own thread's and the shard's answers wake no other thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

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

/// Starts the process's serving threads: `threads - 1` of them, each running a
/// single-threaded runtime of its own until the process exits, and returns the calling
/// thread's (serving thread 0), for the caller to run the proxy on. Accepted clients are
/// spread over all of them from then on.
pub fn start(threads: u16) -> std::io::Result<Runtime> {
    let single = || Builder::new_current_thread().enable_all().build();
    let main = single()?;
    let mut handles = vec![main.handle().clone()];
    for home in 1..threads {
        let runtime = single()?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("shardline-{home}"))
            .spawn(move || {
                HOME.with(|cell| cell.set(home));
                runtime.block_on(std::future::pending::<()>());
            })?;
    }
    let _ = SPREAD.set(Spread {
        handles,
        next: AtomicUsize::new(0),
    });
    Ok(main)
}

/// The runtime the next accepted client goes to, once [`start`] ran (in-process tests serve
/// clients where they are accepted).
pub fn next() -> Option<&'static Handle> {
    let spread = SPREAD.get()?;
    let turn = spread.next.fetch_add(1, Ordering::Relaxed);
    spread.handles.get(turn % spread.handles.len().max(1))
}
