//! The listener: accepts clients and runs each on its own task, plus the pool maintenance
//! task. [`Proxy::start`] is what the binary, the demo and the tests all use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardline_router::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::ProxyContext;

/// How often idle connections are evicted and `min_idle` is topped up.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// A running proxy.
pub struct Proxy {
    /// The address it listens on (useful when the config asked for port 0).
    pub addr: SocketAddr,
    pub ctx: Arc<ProxyContext>,
    shutdown: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Binds the configured address and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("could not listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let ctx = ProxyContext::new(config);
        let (shutdown, mut stop) = watch::channel(false);
        let accept_ctx = ctx.clone();
        let accept_task = tokio::spawn(async move {
            let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(crate::client::serve(accept_ctx.clone(), stream));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = maintenance.tick() => {
                        let ctx = accept_ctx.clone();
                        tokio::spawn(async move {
                            let settings = ctx.snapshot().config.pool.clone();
                            ctx.pools.maintain(&settings).await;
                        });
                    }
                    _ = stop.changed() => break,
                }
            }
        });
        tracing::info!(%addr, "shardline listening");
        Ok(Proxy {
            addr,
            ctx,
            shutdown,
            accept_task,
        })
    }

    /// Stops accepting new clients; sessions already running finish on their own.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
    }
}
