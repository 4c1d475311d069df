//! The listener and the proxy's background tasks: accepting clients (each on its own task),
//! pool maintenance and warm-up, the metrics server, the config watcher and the shutdown
//! driver. [`Proxy::start`] and [`Proxy::start_from_file`] are what the binary, the demo and
//! the tests use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardline_router::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};

use crate::context::ProxyContext;
use crate::reload::watch::ConfigWatcher;
use crate::reload::{ConfigSource, ReloadOutcome};
use crate::shutdown::Phase;
use crate::tls::ServerTls;

/// How often idle connections are evicted, `min_idle` is topped up and shards are probed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// A running proxy.
pub struct Proxy {
    /// The address it listens on (useful when the config asked for port 0).
    pub addr: SocketAddr,
    /// The address of the `/metrics` and `/health` server, when the config enables it.
    pub metrics_addr: Option<SocketAddr>,
    /// State shared with every session.
    pub ctx: Arc<ProxyContext>,
    tasks: Vec<JoinHandle<()>>,
    _watcher: Option<ConfigWatcher>,
}

impl Proxy {
    /// Serves `config`, given in memory (there is no file to reload).
    pub async fn start(config: Config) -> anyhow::Result<Proxy> {
        Self::launch(config, ConfigSource::in_memory(), None).await
    }

    /// Serves the config in the file at `path`, reloading it on `RELOAD`, on SIGHUP (through
    /// [`crate::signals`]) and, when `watch` is set, whenever the file changes.
    pub async fn start_from_file(path: &Path, watch: bool) -> anyhow::Result<Proxy> {
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()
                .context("could not find the current directory")?
                .join(path)
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let config = Config::from_file_text(&text, dir)
            .map_err(|e| anyhow::anyhow!("{} is invalid: {e}", path.display()))?;
        let source = ConfigSource::file(path.clone(), text);
        Self::launch(config, source, watch.then_some(path)).await
    }

    async fn launch(
        config: Config,
        source: ConfigSource,
        watch: Option<PathBuf>,
    ) -> anyhow::Result<Proxy> {
        let listener = bind(&config.listen).await?;
        let addr = listener.local_addr()?;
        let metrics = match &config.metrics_listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
        let tls = ServerTls::new(&config.tls).context("cannot serve TLS to clients")?;
        let ctx = ProxyContext::new(config, source, tls);
        resume_migration(&ctx).await;
        let mut tasks = vec![
            tokio::spawn(accept(listener, ctx.clone())),
            tokio::spawn(maintain(ctx.clone())),
            tokio::spawn(crate::resolver::run(ctx.clone())),
            tokio::spawn(crate::deadlock::run(ctx.clone())),
            tokio::spawn({
                let ctx = ctx.clone();
                async move { crate::shutdown::drive(&ctx).await }
            }),
        ];
        if let Some(listener) = metrics {
            tasks.push(tokio::spawn(crate::metrics::http::serve(
                listener,
                ctx.clone(),
            )));
        }
        let watcher = match watch {
            Some(path) => Some(crate::reload::watch::watch(ctx.clone(), &path)?),
            None => None,
        };
        match metrics_addr {
            Some(metrics) => tracing::info!(%addr, %metrics, "shardline listening"),
            None => tracing::info!(%addr, "shardline listening"),
        }
        Ok(Proxy {
            addr,
            metrics_addr,
            ctx,
            tasks,
            _watcher: watcher,
        })
    }

    /// Reads the config file again and serves it if valid (what SIGHUP and `RELOAD` do).
    pub async fn reload(&self) -> ReloadOutcome {
        let ctx = self.ctx.clone();
        match tokio::task::spawn_blocking(move || crate::reload::reload(&ctx)).await {
            Ok(outcome) => outcome,
            Err(e) => ReloadOutcome::Rejected {
                error: format!("the reload task failed: {e}"),
            },
        }
    }

    /// Starts a graceful shutdown: stop accepting, let transactions finish within the grace
    /// period, then close.
    pub fn shutdown(&self) {
        if self.ctx.shutdown.begin() {
            tracing::info!("shutdown requested");
        }
    }

    /// Waits until the proxy has shut down.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Shuts down gracefully and waits until done.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

/// Serves an accepted client on the next serving thread (in turn), or here when the process
/// has one. Its socket moves to that thread's I/O driver.
fn spawn_client(clients: &mut JoinSet<()>, ctx: Arc<ProxyContext>, stream: TcpStream) {
    let Some(handle) = crate::threads::next().filter(|h| h.id() != Handle::current().id()) else {
        clients.spawn(crate::client::serve(ctx, stream));
        return;
    };
    let std = match stream.into_std() {
        Ok(std) => std,
        Err(e) => return tracing::warn!(error = %e, "could not hand a client to its thread"),
    };
    clients.spawn_on(
        async move {
            match TcpStream::from_std(std) {
                Ok(stream) => crate::client::serve(ctx, stream).await,
                Err(e) => tracing::warn!(error = %e, "could not hand a client to its thread"),
            }
        },
        handle,
    );
}

async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address}"))
}

/// Accepts clients until a shutdown begins; the listener closes then, so new connections are
/// refused while transactions drain. Client tasks live in a set this task owns: once the
/// shutdown closes what is left, the set aborts them, so a client task never watches the
/// shutdown itself (a shared watch polled on every wake-up of every client).
async fn accept(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn_client(&mut clients, ctx.clone(), stream),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Finished clients are reaped as they end, so the set holds live ones only.
            Some(_) = clients.join_next() => {}
            () = ctx.shutdown.reached(Phase::Draining) => break,
        }
    }
    drop(listener);
    tracing::info!("stopped accepting clients");
    let closed = tokio::select! {
        () = ctx.shutdown.reached(Phase::Closed) => true,
        () = async { while clients.join_next().await.is_some() {} } => false,
    };
    if closed && !clients.is_empty() {
        tracing::info!(
            clients = clients.len(),
            "client connections closed by shutdown"
        );
    }
    clients.shutdown().await;
}

/// Evicts idle connections, keeps `min_idle` warm, retires pools the config no longer uses,
/// probes shards not known to be up and shards whose breaker is half-open, every second until
/// a shutdown begins.
async fn maintain(ctx: Arc<ProxyContext>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = ctx.shutdown.reached(Phase::Draining) => return,
        }
        let loaded = ctx.snapshot();
        match ctx.tls.refresh(&loaded.config.tls) {
            Ok(true) => {
                tracing::info!(mode = %loaded.config.tls.mode, "TLS for clients (re)loaded: new connections get the current certificate")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but cannot be used; clients still get the previous certificate")
            }
        }
        let settings = loaded.config.pool.clone();
        ctx.pools
            .backends()
            .configure_breakers(loaded.config.breaker);
        crate::health::probe(&ctx, &settings);
        ctx.pools.maintain(&settings).await;
        crate::reload::retire_unused(&ctx);
        crate::health::warm(&ctx).await;
    }
}

/// Comes back in the phase of a migration recorded in the catalog. A proxy that cannot read
/// the catalog serves its `shards.yaml` and says so; the resharder's `RESHARD` tells it later,
/// and the final verify of cutover repairs any write it missed.
async fn resume_migration(ctx: &ProxyContext) {
    match crate::migration::catalog::read(&ctx.file_config()).await {
        Ok(Some(migration)) => {
            tracing::info!(
                migration = migration.id,
                phase = migration.phase.as_str(),
                "serving a resharding migration recorded in the catalog"
            );
            if migration.phase.dual_writes() {
                ctx.confirmed.set(Some(migration.id));
            }
            ctx.set_migration(Some(migration));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not read the resharding catalog; serving shards.yaml as it is until RESHARD")
        }
    }
}
