//! Finishing dual writes a crash left half done. A proxy prepares the copy of a dual write on
//! the new owner (`PREPARE TRANSACTION 'sl_dw:<xid>:<old owner>:<new owner>'`) before the old
//! owner commits; the old owner's commit is the decision. So a prepared copy is committed when
//! transaction `xid` committed on the old owner, rolled back when it aborted, and left alone
//! while it is still running.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::error::SqlState;
use shardline_router::migration::Layout;

use crate::shards::{connect, Login};

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
pub async fn resolve(layout: &Layout, login: &Login, min_age: Duration) -> anyhow::Result<Resolved> {
    let mut resolved = Resolved::default();
    let mut targets: Vec<&String> = layout.tables.iter().flat_map(|t| &t.target_shards).collect();
    targets.sort();
    targets.dedup();
    for target in targets {
        let client = connect(&layout.target, target, login).await?;
        let gids: Vec<String> = client
            .query(
                "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'sl\\_dw:%' AND database = current_database() \
                 AND prepared <= now() - make_interval(secs => $1)",
                &[&min_age.as_secs_f64()],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for gid in gids {
            let mut parts = gid.splitn(4, ':');
            let (Some(_), Some(xid), Some(old)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let source = connect(&layout.source, old, login)
                .await
                .with_context(|| format!("in-doubt dual write {gid} needs its old owner {old}"))?;
            let status: Option<String> = source
                .query_one("SELECT pg_xact_status($1::text::xid8)::text", &[&xid])
                .await?
                .get(0);
            let verb = match status.as_deref() {
                Some("committed") => {
                    resolved.committed += 1;
                    "COMMIT"
                }
                Some("aborted") => {
                    resolved.rolled_back += 1;
                    "ROLLBACK"
                }
                _ => {
                    resolved.pending += 1;
                    continue;
                }
            };
            let finished = client
                .batch_execute(&format!("{verb} PREPARED '{}'", gid.replace('\'', "''")))
                .await;
            match finished {
                Ok(()) => {}
                // Its proxy finished it first.
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("could not finish in-doubt dual write {gid}"))
                }
            }
        }
    }
    Ok(resolved)
}
