//! Free TCP ports on 127.0.0.1 for test and demo servers.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{SystemTime, UNIX_EPOCH};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago, for a test or demo server.
///
/// The port is found by binding port 0 and reading what the OS picked, then releasing it, so
/// another process could in principle take it before the caller does. Should binding fail
/// (no loopback interface), a port from 20000..30000 derived from the clock is returned so the
/// caller gets a clear "could not bind" error from the server instead of a panic here.
pub fn free_port() -> u16 {
    free_ports(1).first().copied().unwrap_or_else(fallback_port)
}

/// Returns `n` distinct TCP ports on 127.0.0.1 that were free a moment ago (see
/// [`free_port`]); all `n` listeners are held at once so the OS cannot hand out a port twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| {
            let port = l.local_addr()?.port();
            Ok((l, port))
        }) {
            Ok((listener, port)) => {
                if !ports.contains(&port) {
                    ports.push(port);
                }
                listeners.push(listener);
            }
            Err(_) => {
                // fallback_port() is below 30000, so adding a small count stays distinct.
                let port = fallback_port() + ports.len() as u16;
                ports.push(port);
            }
        }
    }
    ports
}

/// A port in 20000..30000 (well below u16::MAX) picked from the clock and the process id (see [`free_port`]).
fn fallback_port() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    20_000 + ((nanos ^ std::process::id()) % 10_000) as u16
}
