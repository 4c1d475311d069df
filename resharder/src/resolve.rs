//! Finishing dual writes a crash left half done, as `shardline_router::indoubt`
//! decides: a prepared copy is committed when its old owner's transaction recorded its
//! decision, rolled back when that transaction is over without one, and left alone while it
//! still runs. The proxies do the same in the background; the resharder does it before
//! verifying and under the cutover's pause.

use std::time::Duration;

use anyhow::Context;
use shardline::resolver::decisions::{finish, Finished};
use shardline_router::indoubt;
use shardline_router::migration::Layout;

use crate::shards::Connections;

/// How old a prepared dual write must be before the resolver takes it over from its proxy.
pub const SETTLED: Duration = Duration::from_secs(5);

/// What the resolver did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub committed: u64,
    pub rolled_back: u64,
    /// Still running on the old owner: left for a later pass.
    pub pending: u64,
}

/// Resolves the in-doubt dual writes on the target shards of `layout` prepared at least
/// `min_age` ago (younger ones are normally being finished by their proxy right now).
pub async fn resolve(
    layout: &Layout,
    shards: &Connections<'_>,
    min_age: Duration,
) -> anyhow::Result<Resolved> {
    let mut resolved = Resolved::default();
    for target in layout.receiving_shards() {
        let client = shards.get(target).await?;
        let gids: Vec<String> = client
            .query(indoubt::DUAL_WRITES_SQL, &[&min_age.as_secs_f64()])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for gid in gids {
            let Some(prepared) = indoubt::parse_gid(&gid) else {
                continue;
            };
            let old = prepared.decider;
            let source = shards
                .get(old)
                .await
                .with_context(|| format!("in-doubt dual write {gid} needs its old owner {old}"))?;
            let finished = finish(&client, &source, &gid)
                .await
                .with_context(|| format!("could not finish in-doubt dual write {gid}"))?;
            match finished {
                Finished::Committed => resolved.committed += 1,
                Finished::RolledBack => resolved.rolled_back += 1,
                Finished::Pending => resolved.pending += 1,
                // Its proxy finished it first.
                Finished::AlreadyFinished => {}
            }
        }
    }
    Ok(resolved)
}
