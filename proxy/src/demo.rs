//! `shardline demo`: a local sharded cluster and the proxy in front of it, ready for psql.
//!
//! Shard `i` listens on `port + 1 + i`, so `psql -p 6433` looks at shard 0 directly. Data and
//! the effective `shards.yaml` live in the demo directory; running the demo again on the same
//! directory reuses the data.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::localpg::{ClusterOptions, LocalCluster};
use crate::Proxy;

/// Options of the `demo` command.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of shards.
    pub shards: usize,
    /// Proxy port; shard `i` listens on `port + 1 + i`, metrics on `port + 1000`.
    pub port: u16,
    /// Directory for data and the effective `shards.yaml`.
    pub dir: PathBuf,
}

/// The demo's `shards.yaml`: `users` and `orders` hashed and co-located, `events` split by
/// range, `countries` a reference table, the admin console for `admin`/`admin` and metrics on
/// `port + 1000` (when that is a port). With 4 shards on port 6432 this is the repository's
/// `shards.yaml`.
pub fn demo_config(port: u16, shard_ports: &[u16]) -> String {
    let metrics = port
        .checked_add(1000)
        .map(|m| format!("metrics_listen: 127.0.0.1:{m}\n"))
        .unwrap_or_default();
    let mut yaml = format!(
        "# Written by `shardline demo`; see shards.yaml in the repository for every option.\n\
         listen: 127.0.0.1:{port}\n\
         {metrics}\
         shutdown_grace_s: 30\n\
         tls:\n  mode: allow\n  cert: server.crt\n  key: server.key\n\
         pool:\n  mode: transaction\n  size: 20\n  min_idle: 1\n  checkout_timeout_ms: 5000\n\
         users:\n  - name: app\n    password: app\n    auth: scram-sha-256\n\
         \x20 - name: admin\n    password: admin\n    admin: true\n\
         shards:\n"
    );
    for (i, p) in shard_ports.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: shard{i}\n    host: 127.0.0.1\n    port: {p}\n    database: app\n"
        ));
    }
    yaml.push_str(
        "tables:\n  - name: users\n    sharding: hash\n    column: id\n    type: int8\n\
         \x20 - name: orders\n    sharding: hash\n    column: user_id\n    type: int8\n\
         \x20 - name: countries\n    sharding: reference\n\
         \x20 - name: events\n    sharding: range\n    column: id\n    type: int8\n    ranges:\n",
    );
    let n = shard_ports.len();
    for i in 0..n {
        let from = (i > 0).then(|| format!("from: {}, ", i * 1_000_000));
        let to = (i + 1 < n).then(|| format!("to: {}, ", (i + 1) * 1_000_000));
        yaml.push_str(&format!(
            "      - {{{}{}shard: shard{i}}}\n",
            from.unwrap_or_default(),
            to.unwrap_or_default()
        ));
    }
    yaml
}

/// Runs the demo until Ctrl-C (SIGINT), SIGTERM or the admin `SHUTDOWN`, then stops
/// everything it started. Edits to the demo's `shards.yaml` are reloaded while it runs.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.shards >= 1, "--shards must be at least 1");
    let dir = absolute(&opts.dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let ports: Vec<u16> = (1..=opts.shards)
        .map(|i| {
            u16::try_from(i)
                .ok()
                .and_then(|i| opts.port.checked_add(i))
                .context("--port plus --shards goes past port 65535; pick a lower --port or fewer shards")
        })
        .collect::<anyhow::Result<_>>()?;
    let cluster_opts = ClusterOptions::new(dir.join("data"), ports.clone());
    println!(
        "starting {} PostgreSQL shards in {} ...",
        opts.shards,
        dir.display()
    );
    let mut cluster =
        tokio::task::spawn_blocking(move || LocalCluster::start(&cluster_opts)).await??;

    crate::tls::authority::demo_files(&dir)?;
    let yaml = demo_config(opts.port, &ports);
    let config_path = dir.join("shards.yaml");
    std::fs::write(&config_path, &yaml)
        .with_context(|| format!("could not write {}", config_path.display()))?;
    let proxy = match Proxy::start_from_file(&config_path, true).await {
        Ok(p) => p,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
            return Err(e);
        }
    };
    println!();
    println!(
        "shardline is ready: {} shards behind 127.0.0.1:{}",
        opts.shards,
        proxy.addr.port()
    );
    println!(
        "  connect:      psql \"postgres://app:app@127.0.0.1:{}/app\"",
        proxy.addr.port()
    );
    println!(
        "  over TLS:     psql \"postgres://app:app@127.0.0.1:{}/app?sslmode=verify-full&sslrootcert={}\"",
        proxy.addr.port(),
        dir.join("ca.crt").display()
    );
    for (i, p) in ports.iter().enumerate() {
        println!("  shard{i}:       psql \"postgres://app:app@127.0.0.1:{p}/app\"");
    }
    println!(
        "  admin:        psql \"postgres://admin:admin@127.0.0.1:{}/shardline\" -c 'SHOW SHARDS'",
        proxy.addr.port()
    );
    if let Some(metrics) = proxy.metrics_addr {
        println!("  metrics:      http://{metrics}/metrics and http://{metrics}/health");
    }
    println!(
        "  config:       {} (edits are applied live)",
        config_path.display()
    );
    println!("press Ctrl-C to stop");
    let served = crate::signals::serve_until_stopped(proxy).await;
    println!("stopping ...");
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    served
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_router::Config;

    #[test]
    fn demo_config_is_valid_for_any_shard_count() {
        for n in 1..=6u16 {
            let ports: Vec<u16> = (0..n).map(|i| 7000 + i).collect();
            let yaml = demo_config(6999, &ports);
            let config = Config::from_yaml(&yaml);
            assert!(config.is_ok(), "{n} shards: {:?}\n{yaml}", config.err());
        }
    }

    #[test]
    fn repository_shards_yaml_is_the_demo_layout() {
        let repo = Config::from_yaml(include_str!("../../shards.yaml")).map(|c| c.to_string());
        let demo =
            Config::from_yaml(&demo_config(6432, &[6433, 6434, 6435, 6436])).map(|c| c.to_string());
        assert_eq!(repo, demo);
    }
}
