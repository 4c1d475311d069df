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
use crate::shards::{connect, Connections, Login};
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
    let shards = Connections::new(layout, login);
    resolve(layout, &shards, SETTLED).await?;
    let before = verify::verify(layout, &shards, true).await?;
    if !before.iter().all(Report::exact) {
        // Repaired rows are checked again under the pause; differences now are only news.
        eprintln!("cutover: verify repaired copies before pausing");
    }
    catalog.set_phase(migration.id, Phase::Verified).await?;
    for table in &layout.tables {
        for source in &table.source_shards {
            shards
                .get(source)
                .await?
                .batch_execute(&fence::prepare_sql(table, source, migration.id))
                .await
                .with_context(|| {
                    format!("could not create the fence of {} on {source}", table.table)
                })?;
        }
    }

    proxies.connect_all().await?;
    let started = Instant::now();
    let pause = format!("RESHARD PAUSE {}", max_pause.as_millis());
    if let Err(e) = proxies.broadcast(&pause).await {
        proxies.broadcast_quietly("RESHARD RESUME").await;
        return Err(e.context("cutover gave up while pausing writes; the old routing stands"));
    }
    let switched = match tokio::time::timeout(
        max_pause.saturating_sub(started.elapsed()),
        switch(layout, &shards, started),
    )
    .await
    {
        Ok(Ok(reports)) => catalog
            .set_phase(migration.id, Phase::Cutover)
            .await
            .map(|()| reports),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "the pause reached {} ms",
            max_pause.as_millis()
        )),
    };
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

/// Under the pause: finish in-doubt writes, check the copies, arm the fences.
async fn switch(
    layout: &Layout,
    shards: &Connections<'_>,
    started: Instant,
) -> anyhow::Result<Vec<Report>> {
    let step = |name: &str| {
        eprintln!(
            "cutover: {name} done {} ms into the pause",
            started.elapsed().as_millis()
        );
    };
    step("draining");
    // Writes to moving keys are drained: whatever is still prepared has no proxy finishing it.
    let resolved = resolve(layout, shards, Duration::ZERO).await?;
    if resolved.pending > 0 {
        bail!("{} dual writes are still in doubt", resolved.pending);
    }
    step("resolving");
    // Dual writes kept the copies exact; the checksums prove it. If they do not match (a proxy
    // missed `start`), the copies are repaired row by row, which stays repaired while writes
    // to the moving keys are held, if the pause allows it.
    let reports = if verify::checksums_match(layout, shards).await? {
        Vec::new()
    } else {
        eprintln!("cutover: checksums differ; repairing row by row");
        let reports = verify::verify(layout, shards, true).await?;
        // The switch rests on the copies being exact: a repair is trusted only once the
        // checksums agree.
        if !verify::checksums_match(layout, shards).await? {
            bail!("the copies still differ from their old owners after a repair; run verify, then cutover again");
        }
        reports
    };
    step("checking");
    for table in &layout.tables {
        for source in &table.source_shards {
            shards
                .get(source)
                .await?
                .batch_execute(&fence::arm_sql(&table.table))
                .await
                .with_context(|| format!("could not fence {} on shard {source}", table.table))?;
        }
    }
    step("fencing");
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
                eprintln!(
                    "warning: could not remove the fence of {} on {source}: {e:#}",
                    table.table
                );
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
                 DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT t.ctid FROM {t} AS t WHERE {leaving} LIMIT {batch})); COMMIT",
                t = ident(&table.table),
                leaving = fence::leaving_condition(table, source, &key),
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
