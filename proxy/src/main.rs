//! The `shardline` command: serve a cluster, run the local demo, or check a config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardline::demo::{self, DemoOptions};
use shardline::{signals, Proxy};
use shardline_router::Config;

/// mimalloc instead of the system allocator: a request's buffers and small vectors come from
/// per-thread free lists (glibc's malloc and free were 9% of the proxy's user CPU per
/// transaction in the profile that led to the switch).
#[global_allocator]
static ALLOCATOR: shardline::allocator::Mimalloc = shardline::allocator::Mimalloc;

/// A sharding proxy for PostgreSQL.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// shards.yaml describing the cluster to serve.
    #[arg(long, short, default_value = "shards.yaml")]
    config: PathBuf,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
    /// Do not watch the config file; reload only on SIGHUP or the admin RELOAD.
    #[arg(long)]
    no_watch: bool,
    /// Threads serving clients (default: one per CPU core), each with a runtime of its own;
    /// accepted clients are spread over them in turn. Size it to the cores the proxy may use
    /// (see README, Benchmarks: Threads).
    #[arg(long, env = "SHARDLINE_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local N-shard PostgreSQL cluster and the proxy in front of it, ready for psql.
    Demo {
        /// Number of shards.
        #[arg(long, default_value_t = 4)]
        shards: usize,
        /// Proxy port; shard i listens on port+1+i.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Directory for the shards' data and the effective shards.yaml (reused on restart).
        #[arg(long, default_value = "shardline-demo")]
        dir: PathBuf,
    },
    /// Validate a shards.yaml and print what it means.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    // Checking a file serves nobody: one thread.
    let threads = match cli.command {
        Some(Command::Check { .. }) => Some(1),
        _ => cli.threads,
    };
    let result = match serving_runtimes(threads) {
        Ok(runtime) => runtime.block_on(async move {
            match cli.command {
                Some(Command::Check { file }) => check(&file).await,
                Some(Command::Demo { shards, port, dir }) => {
                    demo::run(DemoOptions { shards, port, dir }).await
                }
                None => serve(&cli.config, !cli.no_watch).await,
            }
        }),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The main thread's runtime, after starting the other serving threads (`threads` in all,
/// default one per core).
fn serving_runtimes(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    shardline::threads::start(threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX))
    }))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn check(path: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("could not read {}: {e}", path.display()))?;
    let config = Config::from_file_text(&text, path.parent().unwrap_or(Path::new("/")))
        .map_err(|e| anyhow::anyhow!("{} is invalid: {e}", path.display()))?;
    println!("{} is valid.\n", path.display());
    print!("{config}");
    // Which tables get generated keys is the shards' business: ask the default shard.
    let survey = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        shardline::keys::KeySource::default().survey(&config),
    )
    .await;
    let generated = match survey {
        Ok(Ok(survey)) => shardline::keys::generated_list(&survey),
        Ok(Err(e)) => format!("unknown ({})", e.message),
        Err(_) => "unknown (the default shard did not answer within 10 s)".to_owned(),
    };
    println!("\ngenerated keys (INSERTs that leave the key to its default): {generated}");
    Ok(())
}

async fn serve(path: &Path, watch: bool) -> anyhow::Result<()> {
    let proxy = Proxy::start_from_file(path, watch).await?;
    signals::serve_until_stopped(proxy).await
}
