//! `shardline-reshard`: moves rows between shards when the layout in shards.yaml changes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shardline_resharder::backfill::{self, Pace};
use std::time::Duration;

use shardline_resharder::catalog::{Catalog, Migration, Phase};
use shardline_resharder::proxies::Proxies;
use shardline_resharder::shards::{connect, read_shape, Connections, Login};
use shardline_resharder::{cutover, resolve};
use shardline_resharder::{plan, verify};
use shardline_router::migration::Layout;
use shardline_router::Config;

/// Online resharding for shardline: plan, start (dual writes and backfill), verify, cutover,
/// cleanup — or abort — a move of rows between two layouts while the application writes.
/// Migration state lives in the `shardline` schema on the source layout's default shard, so
/// every step can be run again after a crash.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print which rows of which tables move from which shard to which, and how long the copy
    /// should take. Changes nothing.
    Plan(Layouts),
    /// Create the moving tables on their target shards, switch every --proxy to dual writes of
    /// the moving keys (each must confirm), then copy the moving rows with a progress bar. Run
    /// it again after Ctrl-C or a crash: it resumes at the next key.
    Start {
        #[command(flatten)]
        layouts: Layouts,
        #[command(flatten)]
        proxies: ProxyArgs,
        /// Rows read from a source shard per batch.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        /// Copy at most this many rows per second (0: unthrottled).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Compare the moving rows on their old owners with their copies, key range by key range
    /// (each range locked briefly on the old owner), copy again what differs, delete copies
    /// whose row is gone, and report per table and shard. Safe while the application writes.
    Verify(Layouts),
    /// Switch the moving keys to their new owners: hold writes to them on every proxy (other
    /// keys and all reads go on), make the copies exact, fence the old owners, switch every
    /// proxy's routing, resume. Prints how long writes were held; gives up and resumes the
    /// old routing if that would exceed --max-pause-ms.
    Cutover {
        #[command(flatten)]
        layouts: Layouts,
        #[command(flatten)]
        proxies: ProxyArgs,
        /// Longest time writes to moving keys may be held, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        max_pause_ms: u64,
    },
    /// After cutover: delete the moved rows from their old shards, in batches.
    Cleanup {
        #[command(flatten)]
        layouts: Layouts,
        /// Rows deleted per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
    },
    /// Show the migration in progress and its copy progress (from any terminal).
    Status(Source),
    /// Give up the migration in progress before cutover: proxies stop dual writes, the copied
    /// rows are removed from the target shards; the source layout stays as it is.
    Abort {
        #[command(flatten)]
        layouts: Layouts,
        #[command(flatten)]
        proxies: ProxyArgs,
    },
}

/// The proxies serving the cluster.
#[derive(Args)]
struct ProxyArgs {
    /// Admin address (host:port) of a proxy serving the cluster; repeat for each one. Every
    /// listed proxy must confirm a phase before the migration moves on.
    #[arg(long = "proxy", value_name = "HOST:PORT")]
    addresses: Vec<String>,
}

/// The layouts a migration goes between.
#[derive(Args)]
struct Layouts {
    /// shards.yaml the cluster runs with now.
    #[arg(long)]
    from: PathBuf,
    /// shards.yaml describing the layout to move to.
    #[arg(long)]
    to: PathBuf,
    #[command(flatten)]
    login: LoginArgs,
}

/// The layout whose default shard holds the catalog.
#[derive(Args)]
struct Source {
    /// shards.yaml the cluster runs with now.
    #[arg(long)]
    from: PathBuf,
    #[command(flatten)]
    login: LoginArgs,
}

#[derive(Args)]
struct LoginArgs {
    /// User (from shards.yaml) to log in to shards as; default: its first non-admin user.
    #[arg(long)]
    user: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shardline-reshard: could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardline-reshard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Plan(layouts) => {
            let (layout, login, _) = load(&layouts)?;
            let plan = plan::count_flows(&layout, &login).await?;
            print!("{}", plan::render(&plan, 50_000));
            Ok(())
        }
        Command::Start {
            layouts,
            proxies,
            batch,
            rate,
        } => {
            let (layout, login, texts) = load(&layouts)?;
            let proxies = Proxies::new(proxies.addresses, &layout.source)?;
            let catalog = open_catalog(&layout.source, &login).await?;
            let migration = catalog.start(&texts.0, &texts.1).await?;
            println!(
                "migration {}: creating tables on the target shards",
                migration.id
            );
            backfill::prepare_targets(&layout, &login).await?;
            for table in &layout.tables {
                let first = table.source_shards.first().with_context(|| {
                    format!(
                        "table {} has no source shard in the source layout",
                        table.table
                    )
                })?;
                let source = connect(&layout.source, first, &login).await?;
                let shape = read_shape(&source, &table.table).await?;
                catalog
                    .record_shape(migration.id, &table.table, &shape)
                    .await?;
            }
            if migration.phase == Phase::Started {
                proxies.confirm(Phase::Started).await?;
                for address in proxies.addresses() {
                    catalog
                        .record_confirmation(migration.id, address, Phase::Started)
                        .await?;
                }
                println!(
                    "migration {}: {} proxies dual-write the moving keys",
                    migration.id,
                    proxies.addresses().len()
                );
            }
            let total = plan::count_flows(&layout, &login).await?.moving();
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} rows, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message("backfill");
            let pace = Pace {
                batch: batch.max(1),
                rows_per_second: (rate > 0).then_some(rate),
            };
            let copied = backfill::run(&layout, &login, &catalog, &migration, pace, &bar).await?;
            bar.finish();
            catalog.set_phase(migration.id, Phase::Backfilled).await?;
            println!(
                "migration {}: backfill done ({copied} rows copied by this run)",
                migration.id
            );
            Ok(())
        }
        Command::Verify(layouts) => {
            let (layout, login, _) = load(&layouts)?;
            let shards = Connections::new(&layout, &login);
            let resolved = resolve::resolve(&layout, &shards, resolve::SETTLED).await?;
            if resolved != resolve::Resolved::default() {
                println!("in-doubt dual writes: {resolved:?}");
            }
            let found = verify::verify(&layout, &shards, true).await?;
            println!("table      shard      expected  missing  differing  extra");
            for r in &found {
                println!(
                    "{:<10} {:<10} {:>8} {:>8} {:>10} {:>6}",
                    r.table, r.shard, r.expected, r.missing, r.differing, r.extra
                );
            }
            let repaired: u64 = found
                .iter()
                .map(|r| r.missing + r.differing + r.extra)
                .sum();
            println!(
                "{repaired} rows repaired; every moving row's copy now equals its old owner's row"
            );
            Ok(())
        }
        Command::Status(source) => {
            let (config, _) = read_config(&source.from)?;
            let login = Login::from_config(&config, source.login.user.as_deref())?;
            let catalog = open_catalog(&config, &login).await?;
            let Some(migration) = catalog.in_progress().await? else {
                println!("no migration in progress");
                return Ok(());
            };
            println!("migration {}: {:?}", migration.id, migration.phase);
            for p in catalog.progress(migration.id).await? {
                println!(
                    "  {:<10} from {:<10} {:>10} rows copied{}",
                    p.table,
                    p.source,
                    p.rows_copied,
                    if p.done { ", done" } else { "" }
                );
            }
            Ok(())
        }
        Command::Cutover {
            layouts,
            proxies,
            max_pause_ms,
        } => {
            let (layout, login, _) = load(&layouts)?;
            let proxies = Proxies::new(proxies.addresses, &layout.source)?;
            let catalog = open_catalog(&layout.source, &login).await?;
            let migration = in_progress(&catalog).await?;
            let done = cutover::cutover(
                &layout,
                &login,
                &catalog,
                &migration,
                &proxies,
                Duration::from_millis(max_pause_ms),
            )
            .await?;
            for address in proxies.addresses() {
                catalog
                    .record_confirmation(migration.id, address, Phase::Cutover)
                    .await?;
            }
            let repaired: u64 = done
                .reports
                .iter()
                .map(|r| r.missing + r.differing + r.extra)
                .sum();
            for r in done.reports.iter().filter(|r| !r.exact()) {
                println!(
                    "final check repaired {} on {}: {} missing, {} differing, {} extra",
                    r.table, r.shard, r.missing, r.differing, r.extra
                );
            }
            println!(
                "migration {}: cutover done; writes to moving keys were paused for {} ms; {repaired} rows needed repair at the final check",
                migration.id,
                done.paused.as_millis()
            );
            println!("install the target layout as shards.yaml on every proxy (RELOAD), then run cleanup");
            Ok(())
        }
        Command::Cleanup { layouts, batch } => {
            let (layout, login, _) = load(&layouts)?;
            let catalog = open_catalog(&layout.source, &login).await?;
            let migration = in_progress(&catalog).await?;
            if migration.phase != Phase::Cutover {
                anyhow::bail!(
                    "migration {} is in phase {}; cleanup follows cutover",
                    migration.id,
                    migration.phase
                );
            }
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} cleanup: {pos} rows deleted, {per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            let deleted = cutover::cleanup(&layout, &login, batch.max(1), &bar).await?;
            bar.finish();
            catalog.set_phase(migration.id, Phase::Done).await?;
            println!(
                "migration {} done: {deleted} moved rows deleted from their old shards",
                migration.id
            );
            Ok(())
        }
        Command::Abort { layouts, proxies } => {
            let (layout, login, _) = load(&layouts)?;
            let proxies = Proxies::new(proxies.addresses, &layout.source)?;
            let catalog = open_catalog(&layout.source, &login).await?;
            let Some(migration) = catalog.in_progress().await? else {
                println!("no migration in progress");
                return Ok(());
            };
            if migration.phase.routes_by_target() {
                anyhow::bail!(
                    "migration {} is past cutover; it can no longer be aborted",
                    migration.id
                );
            }
            // Proxies stop dual writes before the copies go, so none comes back.
            catalog.set_phase(migration.id, Phase::Aborted).await?;
            proxies.broadcast("RESHARD").await?;
            resolve::resolve(
                &layout,
                &Connections::new(&layout, &login),
                resolve::SETTLED,
            )
            .await?;
            let removed = backfill::remove_copies(&layout, &login).await?;
            println!(
                "migration {} aborted: {removed} copied rows removed from the target shards",
                migration.id
            );
            Ok(())
        }
    }
}

/// Both layouts, the login, and the files' texts (recorded in the catalog).
fn load(layouts: &Layouts) -> anyhow::Result<(Layout, Login, (String, String))> {
    let (source, source_text) = read_config(&layouts.from)?;
    let (target, target_text) = read_config(&layouts.to)?;
    let login = Login::from_config(&source, layouts.login.user.as_deref())?;
    let layout = Layout::between(source, target)?;
    Ok((layout, login, (source_text, target_text)))
}

fn read_config(path: &Path) -> anyhow::Result<(Config, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))?;
    let config = Config::from_file_text(&text, path.parent().unwrap_or(std::path::Path::new("/")))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((config, text))
}

async fn in_progress(catalog: &Catalog) -> anyhow::Result<Migration> {
    catalog
        .in_progress()
        .await?
        .context("no migration in progress; run start first")
}

async fn open_catalog(config: &Config, login: &Login) -> anyhow::Result<Catalog> {
    let default = config
        .shards
        .get(config.default_shard)
        .context("the layout has no default shard")?;
    Catalog::open(connect(config, &default.name, login).await?).await
}
