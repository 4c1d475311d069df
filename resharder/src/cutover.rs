//! `cutover` and `cleanup`: switching the moving keys to their new owners with a bounded pause,
//! and deleting the moved rows from their old owners afterwards.
//!
//! Cutover, in order: finish in-doubt dual writes and repair the copies while writes flow; then
//! hold writes to the moving keys on every proxy (each drains its running ones), finish
//! in-doubt writes again and verify once more (dual writes kept the copies exact; this proves
//! it and repairs a write from a proxy that missed `start`); fence the old owners; record the
//! phase; switch every proxy's routing; resume. Everything before the catalog records the
//! phase is undone if it fails or outlasts the bound: fences dropped, proxies resumed on the
//! old routing, and the operator told why.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use shardline_router::migration::fence::{self, CLEANUP_SETTING};
use shardline_router::migration::images::ident;
use shardline_router::migration::{Layout, Phase};

use crate::catalog::{Catalog, Migration};
use crate::proxies::Proxies;
use crate::resolve::{resolve, SETTLED};
use crate::shards::{connect, Login};
use crate::verify::{self, Report};

/// How long writes to the moving keys were held, and what the last check found.
pub struct Cutover {
    pub paused: Duration,
    pub reports: Vec<Report>,
}

/// Runs the cutover of `migration`; writes to moving keys are held at most `max_pause`.
pub async fn cutover(
    layout: &Layout,
    login: &Login,
    catalog: &Catalog,
    migration: &Migration,
    proxies: &Proxies,
    max_pause: Duration,
) -> anyhow::Result<Cutover> {
    if !matches!(migration.phase, Phase::Backfilled | Phase::Verified) {
        bail!(
            "migration {} is in phase {}; cutover follows a finished backfill (run start first)",
            migration.id,
            migration.phase
        );
    }
    resolve(layout, login, SETTLED).await?;
    let before = verify::verify(layout, login, true).await?;
    if !before.iter().all(Report::exact) {
        // Repaired rows are checked again under the pause; differences now are only news.
        eprintln!("cutover: verify repaired copies before pausing");
    }
    catalog.set_phase(migration.id, Phase::Verified).await?;

    let started = Instant::now();
    let pause = format!("RESHARD PAUSE {}", max_pause.as_millis());
    if let Err(e) = proxies.broadcast(&pause).await {
        proxies.broadcast_quietly("RESHARD RESUME").await;
        return Err(e.context("cutover gave up while pausing writes; the old routing stands"));
    }
    let switched = switch(layout, login, catalog, migration, started, max_pause).await;
    let reports = match switched {
        Ok(reports) => reports,
        Err(e) => {
            back_out(layout, login, catalog, migration).await;
            proxies.broadcast_quietly("RESHARD").await;
            proxies.broadcast_quietly("RESHARD RESUME").await;
            return Err(e.context(format!(
                "cutover gave up after {} ms and resumed the old routing; run cutover again",
                started.elapsed().as_millis()
            )));
        }
    };
    // The catalog now says cutover: a proxy that cannot be told keeps the old routing, and the
    // fence refuses its writes to moved keys until it is restarted or refreshed.
    let confirmed = proxies.confirm(Phase::Cutover).await;
    proxies.broadcast_quietly("RESHARD RESUME").await;
    let paused = started.elapsed();
    confirmed.context("the cutover is done, but a proxy did not confirm it; its writes to moved keys fail on the fence until it runs RESHARD or restarts")?;
    Ok(Cutover { paused, reports })
}

/// Under the pause: finish in-doubt writes, verify, fence, record. Fails past `deadline`.
async fn switch(
    layout: &Layout,
    login: &Login,
    catalog: &Catalog,
    migration: &Migration,
    started: Instant,
    max_pause: Duration,
) -> anyhow::Result<Vec<Report>> {
    let in_time = |step: &str| {
        let elapsed = started.elapsed();
        eprintln!("cutover: {step} done {} ms into the pause", elapsed.as_millis());
        if elapsed > max_pause {
            bail!("{step} took the pause past {} ms", max_pause.as_millis());
        }
        Ok(())
    };
    in_time("draining")?;
    // Writes to moving keys are drained: whatever is still prepared has no proxy finishing it.
    let resolved = resolve(layout, login, Duration::ZERO).await?;
    if resolved.pending > 0 {
        bail!("{} dual writes are still in doubt", resolved.pending);
    }
    in_time("resolving")?;
    // Writes to the moving keys are held, so what this repairs stays repaired.
    let reports = verify::verify(layout, login, true).await?;
    in_time("verifying")?;
    for table in &layout.tables {
        for source in &table.source_shards {
            let client = connect(&layout.source, source, login).await?;
            client
                .batch_execute(&fence::install_sql(table, source, migration.id))
                .await
                .with_context(|| format!("could not fence {} on shard {source}", table.table))?;
        }
    }
    in_time("fencing")?;
    catalog.set_phase(migration.id, Phase::Cutover).await?;
    Ok(reports)
}

/// Undoes a cutover that did not reach its commit point.
async fn back_out(layout: &Layout, login: &Login, catalog: &Catalog, migration: &Migration) {
    for table in &layout.tables {
        for source in &table.source_shards {
            let removed = async {
                connect(&layout.source, source, login)
                    .await?
                    .batch_execute(&fence::remove_sql(&table.table))
                    .await?;
                anyhow::Ok(())
            };
            if let Err(e) = removed.await {
                eprintln!("warning: could not remove the fence of {} on {source}: {e:#}", table.table);
            }
        }
    }
    if let Err(e) = catalog.set_phase(migration.id, Phase::Verified).await {
        eprintln!("warning: could not record the phase: {e:#}");
    }
}

/// Deletes the moved rows from their old owners, `batch` rows per transaction; returns how
/// many. The fence lets these deletes through (`shardline.cleanup`) and stays, so a stale
/// proxy still cannot write there.
pub async fn cleanup(
    layout: &Layout,
    login: &Login,
    batch: i64,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut deleted = 0;
    for table in &layout.tables {
        for source in &table.source_shards {
            let client = connect(&layout.source, source, login).await?;
            let key = format!("t.{}", ident(&table.key_column));
            let sql = format!(
                "BEGIN; SET LOCAL {CLEANUP_SETTING} = on; \
                 DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT t.ctid FROM {t} AS t WHERE NOT ({owned}) LIMIT {batch})); COMMIT",
                t = ident(&table.table),
                owned = fence::owned_condition(table, source, &key),
            );
            loop {
                let messages = client.simple_query(&sql).await?;
                let rows = messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                deleted += rows;
                bar.inc(rows);
                if rows == 0 {
                    break;
                }
            }
        }
    }
    Ok(deleted)
}
