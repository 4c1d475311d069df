//! Is the proxy ready to serve? Shard health (from the latest connection attempt to each
//! shard's address), warming pools so every shard is reached before clients arrive, and the
//! readiness verdict behind `/health`.
//!
//! Ready means: the proxy is not shutting down, the latest `shards.yaml` was accepted, and
//! every shard has been reached since it was configured. The maintenance task calls [`warm`]
//! every second, which connects to each shard not known to be up (for shards that name their
//! `database`; a shard that takes the client's database is reached with the first client).

use shardline_router::config::{PoolSettings, Shard};

use crate::backend::breaker::BreakerState;
use crate::backend::conn::{Backend, BackendTarget};
use crate::backend::registry::{address, Health};
use crate::context::ProxyContext;
use crate::reload::ReloadOutcome;
use crate::shutdown::Phase;

/// `up`, `down: <why>` or `unknown` for a shard, as `SHOW SHARDS` prints it.
pub fn shard_health(ctx: &ProxyContext, shard: &Shard) -> String {
    match ctx.pools.backends().health(&shard.host, shard.port) {
        Some(Health::Up) => "up".to_owned(),
        Some(Health::Down(why)) => format!("down: {why}"),
        None => "unknown".to_owned(),
    }
}

/// `closed`, `open` or `half-open`: the shard's circuit breaker, as `SHOW SHARDS` prints it.
pub fn breaker_state(ctx: &ProxyContext, shard: &Shard) -> &'static str {
    ctx.pools
        .backends()
        .breaker_state(&shard.host, shard.port)
        .name()
}

/// `Ok` when the proxy is ready for traffic, else every reason it is not.
pub fn readiness(ctx: &ProxyContext) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if ctx.shutdown.phase() != Phase::Running {
        problems.push("shutting down".to_owned());
    }
    if let Some(ReloadOutcome::Rejected { error }) = ctx.source.last().map(|l| l.outcome) {
        problems.push(format!("the latest shards.yaml was rejected: {error}"));
    }
    let loaded = ctx.snapshot();
    for shard in &loaded.config.shards {
        let breaker = ctx.pools.backends().breaker_state(&shard.host, shard.port);
        if !matches!(breaker, BreakerState::Closed { .. }) {
            problems.push(format!(
                "shard {} at {}:{}: circuit breaker {}",
                shard.name,
                shard.host,
                shard.port,
                breaker.name()
            ));
            continue;
        }
        let health = ctx.pools.backends().health(&shard.host, shard.port);
        if health != Some(Health::Up) {
            problems.push(format!(
                "shard {} at {}:{} is {}",
                shard.name,
                shard.host,
                shard.port,
                shard_health(ctx, shard)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Connects to every shard not known to be up, as each configured user in turn until one
/// connection opens; the connection stays in its pool for the first client.
pub async fn warm(ctx: &ProxyContext) {
    let loaded = ctx.snapshot();
    let config = &loaded.config;
    for shard in &config.shards {
        let Some(database) = &shard.database else {
            continue;
        };
        if ctx.pools.backends().health(&shard.host, shard.port) == Some(Health::Up) {
            continue;
        }
        for user in config.users.iter().filter(|u| !u.admin) {
            let password = user.backend_password();
            let target = BackendTarget::new(shard, &user.name, password, database);
            match ctx.pools.checkout(&target, &config.pool).await {
                Ok(_) => break,
                Err(e) => tracing::debug!(shard = %shard.name, error = %e, "could not warm a pool"),
            }
        }
    }
}

/// Starts a background login to each shard whose circuit breaker is due a probe (half-open);
/// its outcome moves the breaker towards closed (the shard answered, even with a refusal), or
/// opens it again (it could not be reached).
pub fn probe(ctx: &ProxyContext, settings: &PoolSettings) {
    for breaker in ctx.pools.backends().breakers() {
        let Some(target) = breaker.probe_due() else {
            continue;
        };
        let (timeout, keepalive) = (settings.connect_timeout, settings.keepalive);
        tokio::spawn(async move {
            let outcome = match Backend::connect(&target, timeout, keepalive).await {
                Ok(_) => Ok(()),
                Err(e) if e.shard_answered() => {
                    tracing::warn!(backend = %address(&target.host, target.port), user = %target.user, error = %e, "the shard answers a probe, but refuses its login");
                    Ok(())
                }
                Err(e) => Err(format!("probe failed: {e}")),
            };
            breaker.probed(outcome);
        });
    }
}
