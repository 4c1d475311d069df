//! Signals of the `shardline` process: SIGHUP reloads `shards.yaml`; SIGTERM or SIGINT starts
//! a graceful shutdown, and a second one stops at once.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::context::ProxyContext;
use crate::shutdown::Phase;
use crate::Proxy;

/// Reloads the config on every SIGHUP until the proxy has shut down.
pub fn reload_on_hangup(ctx: Arc<ProxyContext>) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hangup.recv() => {}
                () = ctx.shutdown.reached(Phase::Closed) => return,
            }
            tracing::info!("SIGHUP: reloading the config");
            let worker = ctx.clone();
            if let Err(e) =
                tokio::task::spawn_blocking(move || crate::reload::reload(&worker)).await
            {
                tracing::error!(error = %e, "config reload task failed");
            }
        }
    });
    Ok(())
}

/// Serves until the proxy has shut down (by signal or by the admin `SHUTDOWN`), reloading on
/// SIGHUP. Errs when a second stop signal cut the shutdown short.
pub async fn serve_until_stopped(proxy: Proxy) -> anyhow::Result<()> {
    let ctx = proxy.ctx.clone();
    reload_on_hangup(ctx.clone())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            () = ctx.shutdown.reached(Phase::Closed) => break,
        };
        if ctx.shutdown.begin() {
            tracing::info!(
                signal = name,
                grace_s = ctx.snapshot().config.shutdown_grace.as_secs(),
                "shutting down gracefully; send the signal again to stop at once"
            );
        } else {
            ctx.shutdown.close_now();
            tracing::warn!(signal = name, "second stop signal: stopping at once");
            anyhow::bail!("stopped at once by a second {name}");
        }
    }
    proxy.wait().await;
    Ok(())
}
