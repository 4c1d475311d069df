//! Free TCP ports on 127.0.0.1 for test and demo servers.
//!
//! Ports are picked *below* (or above) the kernel's ephemeral range: a port the OS hands out for
//! `bind(0)` or as the source port of an outgoing connection could be taken by any of the
//! hundreds of client connections a test opens between the pick and the server's own `bind`
//! (which is how a shard once failed to start with "Address already in use"). Outside that
//! range only another explicit picker can collide: within this process a shared cursor never
//! hands out a port twice, and each process starts its cursor at a different place.

use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port handed out: clear of the well-known and registered services most machines run.
const LOWEST_PICKED: u32 = 10_000;

/// Where the kernel's ephemeral range lies when `/proc` does not say (Linux's default).
const DEFAULT_EPHEMERAL: (u32, u32) = (32_768, 60_999);

/// Offset into the pick range of the next candidate; `u32::MAX` until first use.
static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago, for a test or demo server.
pub fn free_port() -> u16 {
    free_ports(1)
        .first()
        .copied()
        .unwrap_or(LOWEST_PICKED as u16)
}

/// Returns `n` distinct TCP ports on 127.0.0.1 that were free a moment ago and are outside the
/// ephemeral range (see the module documentation). Should nothing bind (no loopback
/// interface), candidates are returned untested so the caller's server reports a clear
/// "could not bind" instead of a panic here.
pub fn free_ports(n: usize) -> Vec<u16> {
    let range = pick_range(ephemeral_range());
    let width = range.end - range.start;
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    // Every port of the range is tried at most once per call.
    for _ in 0..width {
        if ports.len() == n {
            break;
        }
        let port = (range.start + next_offset(width)) as u16;
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push(listener);
            ports.push(port);
        }
    }
    while ports.len() < n {
        ports.push((range.start + next_offset(width)) as u16);
    }
    ports
}

/// The next offset in `0..width` from the process-wide cursor, seeded on first use.
fn next_offset(width: u32) -> u32 {
    let mut current = CURSOR.load(Ordering::Relaxed);
    loop {
        let offset = if current == u32::MAX {
            process_seed() % width
        } else {
            current % width
        };
        let next = (offset + 1) % width;
        match CURSOR.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return offset,
            Err(actual) => current = actual,
        }
    }
}

/// A starting point that differs between processes started at the same time.
fn process_seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}

/// The kernel's ephemeral port range, from `/proc` or Linux's default.
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
fn parse_port_range(text: &str) -> Option<(u32, u32)> {
    let mut bounds = text.split_whitespace().map(str::parse::<u32>);
    let low = bounds.next()?.ok()?;
    let high = bounds.next()?.ok()?;
    (low <= high && high <= u32::from(u16::MAX)).then_some((low, high))
}

/// The larger stretch of ports outside the ephemeral range and above [`LOWEST_PICKED`]; the
/// whole upper range when the ephemeral range covers everything (the caller then only loses
/// the guarantee, never the ports).
fn pick_range((low, high): (u32, u32)) -> Range<u32> {
    let below = LOWEST_PICKED..low.max(LOWEST_PICKED);
    let above = (high + 1).max(LOWEST_PICKED)..u32::from(u16::MAX) + 1;
    let widest = if below.len() >= above.len() {
        below
    } else {
        above
    };
    if widest.len() >= 1_000 {
        widest
    } else {
        LOWEST_PICKED..u32::from(u16::MAX) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_below_the_default_ephemeral_range() {
        assert_eq!(pick_range((32_768, 60_999)), 10_000..32_768);
    }

    #[test]
    fn picks_above_when_the_ephemeral_range_starts_low() {
        assert_eq!(pick_range((10_500, 40_000)), 40_001..65_536);
    }

    #[test]
    fn falls_back_to_everything_when_nothing_is_left() {
        assert_eq!(pick_range((1_024, 65_535)), 10_000..65_536);
    }

    #[test]
    fn reads_the_proc_format() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn ports_come_from_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        for port in free_ports(16) {
            let port = u32::from(port);
            assert!(port < low || port > high, "{port} is ephemeral");
        }
    }
}
