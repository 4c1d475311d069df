//! `shardline-reshard`: moves rows between shards when the layout in shards.yaml changes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shardline_resharder::backfill::{self, Pace};
use shardline_resharder::catalog::{Catalog, Phase};
use shardline_resharder::layout::Layout;
use shardline_resharder::shards::{connect, Login};
use shardline_resharder::{plan, verify};
use shardline_router::Config;

/// Online resharding for shardline: compare two layouts, copy the rows that move, resume
/// after a crash. Migration state lives in the `shardline` schema on the source layout's
/// default shard.
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
    /// Create the moving tables on their target shards and copy the moving rows. Run it again
    /// after Ctrl-C or a crash: it resumes at the next key.
    Start {
        #[command(flatten)]
        layouts: Layouts,
        /// Rows read from a source shard per batch.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        /// Copy at most this many rows per second (0: unthrottled).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Compare every moving row on its old owner with its copy on the new owner (an md5 of
    /// each row), copy again what differs, delete copies whose row is gone, and report.
    Verify(Layouts),
    /// Show the migration in progress and its copy progress (from any terminal).
    Status(Source),
    /// Give up the migration in progress before cutover: remove the copied rows from the
    /// target shards; the source layout stays as it is.
    Abort(Layouts),
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
            let flows = plan::count_flows(&layout, &login).await?;
            print!("{}", plan::render(&flows, 50_000));
            Ok(())
        }
        Command::Start {
            layouts,
            batch,
            rate,
        } => {
            let (layout, login, texts) = load(&layouts)?;
            let catalog = open_catalog(&layout.source, &login).await?;
            let migration = catalog.start(&texts.0, &texts.1).await?;
            println!(
                "migration {}: creating tables on the target shards",
                migration.id
            );
            backfill::prepare_targets(&layout, &login).await?;
            let flows = plan::count_flows(&layout, &login).await?;
            let total: u64 = flows.iter().map(|f| f.rows).sum();
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
            let found = verify::verify(&layout, &login, true).await?;
            let after = verify::verify(&layout, &login, false).await?;
            println!("table      shard      expected  missing  differing  extra  after repair");
            for (before, after) in found.iter().zip(&after) {
                println!(
                    "{:<10} {:<10} {:>8} {:>8} {:>10} {:>6}  {}",
                    before.table,
                    before.shard,
                    before.expected,
                    before.missing,
                    before.differing,
                    before.extra,
                    if after.exact() {
                        "exact"
                    } else {
                        "STILL DIFFERS"
                    }
                );
            }
            if after.iter().all(verify::Report::exact) {
                Ok(())
            } else {
                anyhow::bail!("copies still differ after repair; are the moving tables being written? run verify again")
            }
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
        Command::Abort(layouts) => {
            let (layout, login, _) = load(&layouts)?;
            let catalog = open_catalog(&layout.source, &login).await?;
            let Some(migration) = catalog.in_progress().await? else {
                println!("no migration in progress");
                return Ok(());
            };
            let removed = backfill::remove_copies(&layout, &login).await?;
            catalog.set_phase(migration.id, Phase::Aborted).await?;
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
    let config =
        Config::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((config, text))
}

async fn open_catalog(config: &Config, login: &Login) -> anyhow::Result<Catalog> {
    let default = config
        .shards
        .get(config.default_shard)
        .context("the layout has no default shard")?;
    Catalog::open(connect(config, &default.name, login).await?).await
}
