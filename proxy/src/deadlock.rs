//! Deadlocks whose cycle crosses shards.
//!
//! PostgreSQL breaks a cycle of lock waits inside one server, but when client A waits for B on
//! one shard while B waits for A on another, each shard sees only a wait, never a cycle. The
//! proxy knows which backends serve which client, so once a second it asks the shards of the
//! clients that hold several backends who blocks whom (`pg_blocking_pids`), turns the answers
//! into a wait-for graph between clients ([`find_victim`], a pure function), and breaks a cycle
//! that spans shards by cancelling the waiting statement of its youngest client. That client's
//! session turns the cancellation into SQLSTATE 40P01 `deadlock detected`
//! ([`deadlock_error`]), as PostgreSQL reports its own deadlocks, so retry logic works.
//!
//! Two proxies serving the two halves of a cycle cannot see it: each knows only its own
//! clients. Such a cycle waits until `lock_timeout` or `statement_timeout` ends it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardline_router::sqlstate;

use crate::backend::conn::CancelKey;
use crate::backend::registry::shard_at;
use crate::cancel::send_cancel;
use crate::context::ProxyContext;
use crate::migration::catalog::connect;
use crate::protocol::backend as msg;
use crate::protocol::Frame;
use crate::shutdown::Phase;

/// How often the detector looks. PostgreSQL's own `deadlock_timeout` defaults to 1 s too.
const INTERVAL: Duration = Duration::from_secs(1);

/// Who blocks whom on one shard, for the pids asked about: `(waiting pid, blocking pids)`.
const BLOCKERS_SQL: &str =
    "SELECT pid, pg_blocking_pids(pid) FROM unnest($1::int4[]) AS pid WHERE cardinality(pg_blocking_pids(pid)) > 0";

/// One wait: `waiter`'s backend `key` waits on `shard` for a lock `blocker` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub waiter: u64,
    pub blocker: u64,
    pub shard: usize,
    pub key: CancelKey,
}

/// The wait to cancel to break a cycle of waits between clients that crosses shards: the
/// youngest client's (highest id) wait inside the cycle. `None` when there is no such cycle
/// (cycles on one shard are PostgreSQL's to break).
pub fn find_victim(waits: &[Wait]) -> Option<Wait> {
    let mut graph: BTreeMap<u64, Vec<&Wait>> = BTreeMap::new();
    for wait in waits {
        graph.entry(wait.waiter).or_default().push(wait);
    }
    let mut best: Option<Wait> = None;
    for &start in graph.keys() {
        // Depth-first search for paths back to `start`; the cycle's edges are on the stack.
        let mut stack: Vec<(u64, usize)> = vec![(start, 0)];
        let mut path: Vec<&Wait> = Vec::new();
        let mut on_path: BTreeSet<u64> = BTreeSet::from([start]);
        while let Some((node, next)) = stack.pop() {
            let edges = graph.get(&node).map(Vec::as_slice).unwrap_or_default();
            let Some(edge) = edges.get(next) else {
                if let Some(done) = path.pop() {
                    on_path.remove(&done.blocker);
                }
                continue;
            };
            stack.push((node, next + 1));
            if edge.blocker == start {
                let mut cycle = path.clone();
                cycle.push(edge);
                let shards: BTreeSet<usize> = cycle.iter().map(|w| w.shard).collect();
                if shards.len() > 1 {
                    let youngest = cycle.iter().max_by_key(|w| w.waiter).copied();
                    if let Some(victim) = youngest {
                        if best.as_ref().is_none_or(|b| victim.waiter > b.waiter) {
                            best = Some(victim.clone());
                        }
                    }
                }
            } else if on_path.insert(edge.blocker) {
                path.push(edge);
                stack.push((edge.blocker, 0));
            }
        }
    }
    best
}

/// The `ErrorResponse` a deadlock victim's client sees instead of its statement's
/// cancellation; `None` for any other message.
pub fn deadlock_error(message: &[u8]) -> Option<Bytes> {
    if message.first() != Some(&msg::tag::ERROR_RESPONSE) {
        return None;
    }
    let frame = Frame::from_bytes(Bytes::copy_from_slice(message));
    (msg::error_field(&frame, b'C') == Some(sqlstate::QUERY_CANCELED)).then(|| {
        msg::error(
            sqlstate::DEADLOCK_DETECTED,
            "deadlock detected: this transaction and others waited for each other's locks across shards; shardline cancelled this statement to break the cycle (retry the transaction)",
        )
    })
}

/// Runs the detector until the proxy begins to shut down.
pub async fn run(ctx: Arc<ProxyContext>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = ctx.shutdown.reached(Phase::Draining) => return,
        }
        if let Err(e) = detect(&ctx).await {
            tracing::debug!(error = %format!("{e:#}"), "deadlock detection round failed");
        }
    }
}

/// One round: asks the shards, breaks a cycle if there is one.
async fn detect(ctx: &ProxyContext) -> anyhow::Result<()> {
    let clients = ctx.clients.holding_several(ctx.pools.backends());
    if clients.is_empty() {
        return Ok(());
    }
    let mut owner: HashMap<(SocketAddr, i32), (u64, CancelKey)> = HashMap::new();
    for (id, keys, _) in &clients {
        for key in keys {
            owner.insert((key.addr, key.pid), (*id, *key));
        }
    }
    let loaded = ctx.snapshot();
    let config = &loaded.config;
    // The pids of each shard the clients use, found through the open-connection registry.
    let mut pids: BTreeMap<usize, (SocketAddr, Vec<i32>)> = BTreeMap::new();
    for server in ctx.pools.backends().servers() {
        if !owner.contains_key(&(server.addr, server.pid)) {
            continue;
        }
        let name = shard_at(config, &server.host, server.port, &server.database);
        let Some(shard) = name.and_then(|n| config.shard_id(n)) else {
            continue;
        };
        pids.entry(shard)
            .or_insert_with(|| (server.addr, Vec::new()))
            .1
            .push(server.pid);
    }
    let mut waits = Vec::new();
    for (shard, (addr, shard_pids)) in &pids {
        let Some(settings) = config.shards.get(*shard) else {
            continue;
        };
        let (client, _connection) = connect(config, settings).await?;
        for row in client.query(BLOCKERS_SQL, &[shard_pids]).await? {
            let (pid, blockers): (i32, Vec<i32>) = (row.get(0), row.get(1));
            let Some((waiter, key)) = owner.get(&(*addr, pid)) else {
                continue;
            };
            for blocker in blockers {
                if let Some((holder, _)) = owner.get(&(*addr, blocker)) {
                    if holder != waiter {
                        waits.push(Wait {
                            waiter: *waiter,
                            blocker: *holder,
                            shard: *shard,
                            key: *key,
                        });
                    }
                }
            }
        }
    }
    let Some(victim) = find_victim(&waits) else {
        return Ok(());
    };
    if !ctx
        .clients
        .holds(victim.waiter, &victim.key, ctx.pools.backends())
    {
        // Its transaction ended since: the cycle is gone, and the backend may serve another.
        return Ok(());
    }
    if let Some((_, _, flag)) = clients.iter().find(|(id, _, _)| *id == victim.waiter) {
        flag.store(true, Ordering::Release);
    }
    tracing::warn!(
        client = victim.waiter,
        shard = victim.shard,
        "deadlock across shards: cancelling the youngest transaction's statement"
    );
    Ok(send_cancel(&victim.key).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(waiter: u64, blocker: u64, shard: usize) -> Wait {
        Wait {
            waiter,
            blocker,
            shard,
            key: CancelKey {
                addr: SocketAddr::from(([127, 0, 0, 1], 5432 + shard as u16)),
                pid: (waiter * 100 + shard as u64) as i32,
                secret: 0,
            },
        }
    }

    #[test]
    fn breaks_cycles_across_shards_at_their_youngest_client() {
        /// A case: its name, the waits, and the victim's (client, shard).
        type Case = (&'static str, Vec<Wait>, Option<(u64, usize)>);
        let cases: Vec<Case> = vec![
            ("no waits", vec![], None),
            ("a plain wait", vec![wait(1, 2, 0)], None),
            ("a chain", vec![wait(1, 2, 0), wait(2, 3, 1)], None),
            (
                "a cycle on one shard is PostgreSQL's",
                vec![wait(1, 2, 0), wait(2, 1, 0)],
                None,
            ),
            (
                "two clients, two shards",
                vec![wait(1, 2, 0), wait(2, 1, 1)],
                Some((2, 1)),
            ),
            (
                "three clients around three shards",
                vec![wait(5, 7, 0), wait(7, 3, 1), wait(3, 5, 2)],
                Some((7, 1)),
            ),
            (
                "a cycle beside a chain that leads into it",
                vec![wait(9, 1, 3), wait(1, 2, 0), wait(2, 1, 1)],
                Some((2, 1)),
            ),
        ];
        for (name, waits, expected) in cases {
            let got = find_victim(&waits).map(|w| (w.waiter, w.shard));
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn only_a_cancellation_becomes_a_deadlock() {
        let cancelled = msg::error(sqlstate::QUERY_CANCELED, "canceling statement");
        let rewritten = deadlock_error(&cancelled).map(Frame::from_bytes);
        assert_eq!(
            rewritten.as_ref().and_then(|f| msg::error_field(f, b'C')),
            Some(sqlstate::DEADLOCK_DETECTED)
        );
        let other = msg::error(sqlstate::SYNTAX_ERROR, "syntax");
        assert_eq!(deadlock_error(&other), None);
        assert_eq!(deadlock_error(&msg::notice("hello")), None);
    }
}
