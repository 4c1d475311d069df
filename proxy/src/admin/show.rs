//! The `SHOW` tables of the admin console. Their columns are documented in the README
//! ("Admin console") and checked by the end-to-end tests.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, UNIX_EPOCH};

use super::table::Table;
use crate::backend::registry::shard_at;
use crate::clients::ClientKind;
use crate::context::ProxyContext;
use crate::health::{breaker_state, shard_health};
use crate::reload::ReloadOutcome;

/// `SHOW SHARDS`: the shards of the current config.
pub fn shards(ctx: &ProxyContext) -> Table {
    let loaded = ctx.snapshot();
    let paused = ctx.pause.paused();
    let mut table = Table::new(&[
        "name", "host", "port", "database", "default", "paused", "health", "breaker",
    ]);
    for (id, shard) in loaded.config.shards.iter().enumerate() {
        table.push(vec![
            shard.name.clone(),
            shard.host.clone(),
            shard.port.to_string(),
            shard.database.clone().unwrap_or_default(),
            yes_no(id == loaded.config.default_shard),
            yes_no(paused.holds(&shard.name)),
            shard_health(ctx, shard),
            breaker_state(ctx, shard).to_owned(),
        ]);
    }
    table
}

/// `SHOW DIRECTORY`: every key a directory table places explicitly, and the shard that owns
/// it in the layout served now (a finished move's target included).
pub fn directory(ctx: &ProxyContext) -> Table {
    let loaded = ctx.snapshot();
    let config = &loaded.config;
    let mut table = Table::new(&["table", "key", "shard"]);
    let mut names: Vec<&String> = config.tables.keys().collect();
    names.sort();
    for name in names {
        let rule = &config.tables[name];
        for (key, shard) in rule.directory.sorted() {
            let shard = config.shards.get(shard).map(|s| s.name.clone());
            table.push(vec![
                name.clone(),
                key.sql_text(),
                shard.unwrap_or_default(),
            ]);
        }
    }
    table
}

/// `SHOW POOLS`: every pool, open or retired by a reload and still draining.
pub fn pools(ctx: &ProxyContext) -> Table {
    let loaded = ctx.snapshot();
    let mut table = Table::new(&[
        "pool_id", "shard", "host", "port", "database", "user", "state", "max_size", "in_use",
        "idle", "waiting",
    ]);
    for view in ctx.pools.views() {
        let in_use = view.in_use();
        table.push(vec![
            view.id.to_string(),
            shard_at(&loaded.config, &view.host, view.port, &view.database)
                .unwrap_or_default()
                .to_owned(),
            view.host.clone(),
            view.port.to_string(),
            view.database.clone(),
            view.user.clone(),
            if view.retired { "retired" } else { "open" }.to_owned(),
            view.status.max_size.to_string(),
            in_use.to_string(),
            view.status.size.saturating_sub(in_use).to_string(),
            view.status.waiting.to_string(),
        ]);
    }
    table
}

/// `SHOW CLIENTS`: connected clients, the console ones included.
pub fn clients(ctx: &ProxyContext) -> Table {
    let now = Instant::now();
    let mut table = Table::new(&[
        "id",
        "user",
        "database",
        "addr",
        "tls",
        "kind",
        "state",
        "backend_pids",
        "connected_s",
    ]);
    let every_held = ctx.pools.backends().held();
    for client in ctx.clients.list() {
        let held = client.held(&every_held);
        let state = match (client.kind, held.is_empty()) {
            (ClientKind::Console, _) => "console",
            (ClientKind::App, true) => "idle",
            (ClientKind::App, false) => "active",
        };
        let pids: Vec<String> = held.iter().map(|k| k.pid.to_string()).collect();
        table.push(vec![
            client.id.to_string(),
            client.user.clone(),
            client.database.clone(),
            client.peer.address.clone(),
            client.peer.tls.to_string(),
            match client.kind {
                ClientKind::App => "app",
                ClientKind::Console => "console",
            }
            .to_owned(),
            state.to_owned(),
            pids.join(","),
            now.duration_since(client.connected).as_secs().to_string(),
        ]);
    }
    table
}

/// `SHOW INDOUBT`: every prepared transaction of shardline's on the shards (left by a proxy
/// that stopped mid-commit, or one still committing), its decider's status and what the
/// resolver will do with it.
pub async fn in_doubt(ctx: &ProxyContext) -> Table {
    let loaded = ctx.snapshot();
    let mut table = Table::new(&["shard", "gid", "age_s", "decider", "decider_status", "fate"]);
    for transaction in crate::resolver::in_doubt(&loaded.config).await {
        let fate = match transaction.verdict.as_deref() {
            Some(sql) if sql.starts_with("COMMIT") => "commit",
            Some(_) => "roll back",
            None => "wait for the decider",
        };
        table.push(vec![
            transaction.shard,
            transaction.gid,
            format!("{:.0}", transaction.age_s),
            transaction.decider,
            transaction.decider_status,
            fate.to_owned(),
        ]);
    }
    table
}

/// `SHOW SERVERS`: every open backend connection and the client it serves, if any.
pub fn servers(ctx: &ProxyContext) -> Table {
    let loaded = ctx.snapshot();
    let now = Instant::now();
    let idle: HashSet<_> = ctx.pools.idle_keys().into_iter().collect();
    // Clients by the process id the proxy made for them, which marks the backends they hold.
    let client_ids: HashMap<i32, u64> = ctx
        .clients
        .list()
        .iter()
        .filter_map(|client| Some((client.pid?, client.id)))
        .collect();
    let mut table = Table::new(&[
        "pid",
        "shard",
        "host",
        "port",
        "database",
        "user",
        "state",
        "client_id",
        "pool_id",
        "age_s",
    ]);
    for server in ctx.pools.backends().servers() {
        let key = (server.addr, server.pid);
        table.push(vec![
            server.pid.to_string(),
            shard_at(&loaded.config, &server.host, server.port, &server.database)
                .unwrap_or_default()
                .to_owned(),
            server.host.clone(),
            server.port.to_string(),
            server.database.clone(),
            server.user.clone(),
            if idle.contains(&key) {
                "idle"
            } else {
                "active"
            }
            .to_owned(),
            server
                .held_by
                .client()
                .and_then(|pid| client_ids.get(&pid))
                .map(u64::to_string)
                .unwrap_or_default(),
            server.pool_id.to_string(),
            now.duration_since(server.opened).as_secs().to_string(),
        ]);
    }
    table
}

/// `SHOW STATS`: statements and transactions per shard since the proxy started.
pub fn stats(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        "shard",
        "transactions",
        "queries",
        "single_shard",
        "scatter",
        "errors",
        "avg_query_ms",
    ]);
    for (shard, t) in ctx.stats.totals() {
        let queries = t.single + t.scatter;
        let avg_ms = if queries == 0 {
            0.0
        } else {
            t.busy_micros as f64 / queries as f64 / 1000.0
        };
        table.push(vec![
            shard,
            t.transactions.to_string(),
            queries.to_string(),
            t.single.to_string(),
            t.scatter.to_string(),
            t.errors.to_string(),
            format!("{avg_ms:.3}"),
        ]);
    }
    table
}

/// `SHOW CONFIG`: the version served, where it came from, how the last reload went, and the
/// main settings, as `key`/`value` rows.
pub fn config(ctx: &ProxyContext) -> Table {
    let loaded = ctx.snapshot();
    let c = &loaded.config;
    let last = ctx.source.last();
    let (result, error, at) = match &last {
        None => ("none".to_owned(), String::new(), String::new()),
        Some(last) => {
            let error = match &last.outcome {
                ReloadOutcome::Rejected { error } => error.clone(),
                _ => String::new(),
            };
            let at = last
                .at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs().to_string())
                .unwrap_or_default();
            (last.outcome.label().to_owned(), error, at)
        }
    };
    let paused = ctx.pause.paused();
    let paused = if paused.all {
        "all".to_owned()
    } else {
        paused.shards.into_iter().collect::<Vec<_>>().join(",")
    };
    let rows: Vec<(&str, String)> = vec![
        ("version", loaded.version.to_string()),
        (
            "file",
            ctx.source
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        ("last_reload_result", result),
        ("last_reload_error", error),
        ("last_reload_unix_time", at),
        ("listen", c.listen.clone()),
        (
            "metrics_listen",
            c.metrics_listen.clone().unwrap_or_default(),
        ),
        ("pool_mode", format!("{:?}", c.pool.mode).to_lowercase()),
        ("pool_size", c.pool.size.to_string()),
        ("pool_min_idle", c.pool.min_idle.to_string()),
        (
            "checkout_timeout_ms",
            c.pool.checkout_timeout.as_millis().to_string(),
        ),
        ("shutdown_grace_s", c.shutdown_grace.as_secs().to_string()),
        (
            "cross_shard_transactions",
            c.cross_shard_transactions.to_string(),
        ),
        ("max_pull_rows", c.max_pull_rows.to_string()),
        ("shards", c.shards.len().to_string()),
        ("tables", c.tables.len().to_string()),
        ("paused", paused),
    ];
    let mut table = Table::new(&["key", "value"]);
    for (key, value) in rows {
        table.push(vec![key.to_owned(), value]);
    }
    table
}

/// `SHOW VERSION`.
pub fn version() -> Table {
    let mut table = Table::new(&["version"]);
    table.push(vec![format!("shardline {}", env!("CARGO_PKG_VERSION"))]);
    table
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}
