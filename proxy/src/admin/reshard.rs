//! `RESHARD …` on the console: how the resharder drives this proxy through a migration.
//!
//! - `RESHARD` reads the migration from the catalog and serves its phase. When that starts
//!   dual writes, it answers only once every transaction that began before is over (up to
//!   [`SWITCH_DRAIN`]): from then on no write to a moving key can miss its new owner. The answer
//!   (migration, phase) is the proxy's confirmation.
//! - `RESHARD PAUSE [ms]` holds new writes to moving keys (reads and other keys go on) and waits
//!   up to `ms` (default 2000) for running ones to end; on timeout it resumes and fails.
//! - `RESHARD RESUME` lets them go on.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::table::{Reply, Table};
use crate::context::ProxyContext;
use shardline_router::sqlstate;

/// How long `RESHARD` waits for transactions that began before dual writes.
pub const SWITCH_DRAIN: Duration = Duration::from_secs(30);

/// The longest pause `RESHARD PAUSE` accepts.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// A `RESHARD` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reshard {
    /// Read the migration from the catalog and serve its phase.
    Refresh,
    /// Hold writes to moving keys, draining running ones within the limit.
    Pause(Duration),
    /// Let writes to moving keys go on.
    Resume,
}

impl Reshard {
    /// Parses the words after `RESHARD` (upper-cased).
    pub fn parse(words: &[&str]) -> Option<Reshard> {
        Some(match words {
            [] => Reshard::Refresh,
            ["PAUSE"] => Reshard::Pause(Duration::from_secs(2)),
            ["PAUSE", ms] => Reshard::Pause(Duration::from_millis(ms.parse().ok()?)),
            ["RESUME"] => Reshard::Resume,
            _ => return None,
        })
    }
}

/// The migration id whose dual writes this proxy confirmed (transactions from before drained).
#[derive(Default)]
pub struct Confirmed(Mutex<Option<i64>>);

impl Confirmed {
    /// Records that dual writes of `id` are confirmed (also at start, when there is nothing
    /// from before to drain).
    pub fn set(&self, id: Option<i64>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = id;
    }

    fn get(&self) -> Option<i64> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Carries out a `RESHARD` command.
pub async fn run(ctx: &ProxyContext, command: Reshard) -> Reply {
    match command {
        Reshard::Refresh => refresh(ctx).await,
        Reshard::Pause(limit) if limit > MAX_PAUSE => Reply::error(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("RESHARD PAUSE takes at most {} ms", MAX_PAUSE.as_millis()),
        ),
        Reshard::Pause(limit) => match ctx.gate.pause(limit).await {
            Ok(()) => Reply::done("RESHARD PAUSE"),
            Err(running) => Reply::error(
                sqlstate::OBJECT_NOT_IN_STATE,
                format!(
                    "{running} transactions writing moving keys were still running after {} ms; writes resumed",
                    limit.as_millis()
                ),
            ),
        },
        Reshard::Resume => {
            ctx.gate.resume();
            Reply::done("RESHARD RESUME")
        }
    }
}

async fn refresh(ctx: &ProxyContext) -> Reply {
    let file = ctx.file_config();
    let migration = match crate::migration::catalog::read(&file).await {
        Ok(migration) => migration,
        Err(e) => return Reply::error(sqlstate::CANNOT_CONNECT, format!("{e:#}")),
    };
    let (id, phase) = match &migration {
        Some(m) => (Some(m.id), Some(m.phase)),
        None => (None, None),
    };
    let dual = phase.is_some_and(|p| p.dual_writes());
    ctx.set_migration(migration);
    if dual && ctx.confirmed.get() != id {
        if let Err(running) = ctx.gate.writes.drain(SWITCH_DRAIN).await {
            return Reply::error(
                sqlstate::OBJECT_NOT_IN_STATE,
                format!(
                    "dual writes are on, but {running} transactions that began before are still open after {} s; end them (or wait) and run RESHARD again",
                    SWITCH_DRAIN.as_secs()
                ),
            );
        }
        ctx.confirmed.set(id);
    }
    tracing::info!(migration = ?id, phase = ?phase.map(|p| p.as_str()), "resharding phase refreshed from the catalog");
    let mut table = Table::new(&["migration", "phase"]).with_tag("RESHARD");
    table.push(vec![
        id.map_or_else(|| "none".to_owned(), |id| id.to_string()),
        phase.map_or("none", |p| p.as_str()).to_owned(),
    ]);
    Reply::Table(table)
}
