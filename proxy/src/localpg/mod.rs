//! Throw-away PostgreSQL clusters on this machine.
//!
//! `shardline demo` and the end-to-end tests need a handful of real PostgreSQL servers (the
//! shards) without asking the user to set any up. This module finds the PostgreSQL server
//! binaries, creates one data directory per shard with `initdb`, starts each server with
//! `pg_ctl` on a port of the caller's choosing, and creates the application role and database
//! on every shard. Nothing here is meant for production data: the servers run with `fsync=off`.
//!
//! Layout of a cluster directory `dir` with `n` shards:
//!
//! ```text
//! dir/shard0 .. dir/shard{n-1}        data directories (reused on the next start)
//! dir/shard0.log .. dir/shard{n-1}.log server logs
//! dir/sockets/                        unix sockets of all servers (.s.PGSQL.<port>)
//! ```
//!
//! Authentication: the superuser may connect over the unix socket without a password (`trust`),
//! which is how the cluster is set up and how control-plane code can reach it; every TCP
//! connection to 127.0.0.1 must authenticate with a password (`scram-sha-256`), so the
//! application role logs in exactly as it would against a real server.
//!
//! PostgreSQL refuses to run as root. When this process is root (containers, CI), `initdb` and
//! `pg_ctl` are run as the `postgres` OS user through `runuser`, and the cluster directory is
//! handed to that user.
//!
//! Everything here blocks (it runs child processes and waits for them); from async code, call
//! [`LocalCluster::start`] inside `tokio::task::spawn_blocking`.
//!
//! Layout: this file holds the options and the cluster; `tools` finds the PostgreSQL programs
//! and runs them (as the `postgres` OS user when this process is root); `server` is one
//! server's handle and lifecycle (initdb, start, role and database, stop); `ports` picks free
//! TCP ports.

mod ports;
mod server;
#[cfg(test)]
mod tests;
mod tools;

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use ports::{free_port, free_ports};
pub use server::LocalServer;
pub use tools::{find_pg_bindir, PG_BINDIR_ENV};

use server::{bring_up, crash_server, restart_server, stop_server};
use tools::{find_psql, hand_dir_to, running_as_root, Tools, POSTGRES_OS_USER};

/// How to create and run a local cluster: where, on which ports, and which application role
/// and database to create on every server.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Directory that holds all data directories, logs and sockets (created if missing).
    pub dir: PathBuf,
    /// One port per server; server `i` listens on `ports[i]` and lives in `dir/shard{i}`.
    pub ports: Vec<u16>,
    /// Application role, created with LOGIN and `app_password` (password auth over TCP).
    pub app_user: String,
    /// Password of `app_user`.
    pub app_password: String,
    /// Database created on every server, owned by `app_user` (as is its `public` schema).
    pub app_database: String,
    /// Bootstrap superuser name given to `initdb`; reachable over the unix socket only.
    pub superuser: String,
    /// `max_connections` of each server; `max_prepared_transactions` is set to the same value
    /// so two-phase commit can be used by every connection.
    pub max_connections: u32,
    /// When true, a `dir/shard{i}` that already holds a data directory is started as is (data
    /// kept). When false, it is deleted and initialised afresh.
    pub reuse_existing: bool,
    /// When false (tests), the data directories, logs and sockets are deleted once the servers
    /// stop; when true (the demo), they are kept for the next run.
    pub keep_data: bool,
    /// The certificate and key every server presents with `ssl = on`; `None`: no TLS.
    pub tls: Option<crate::tls::authority::Issued>,
}

impl ClusterOptions {
    /// Options with the usual defaults: role `app` / password `app` / database `app`,
    /// superuser `postgres`, 200 connections, existing data reused and kept.
    pub fn new(dir: impl Into<PathBuf>, ports: Vec<u16>) -> Self {
        ClusterOptions {
            dir: dir.into(),
            ports,
            app_user: "app".to_owned(),
            app_password: "app".to_owned(),
            app_database: "app".to_owned(),
            superuser: "postgres".to_owned(),
            max_connections: 200,
            reuse_existing: true,
            keep_data: true,
            tls: None,
        }
    }
}

/// A set of local PostgreSQL servers (one per shard) started by this process. Dropping it
/// stops the servers it started (and removes their files unless `keep_data`).
#[derive(Debug)]
pub struct LocalCluster {
    servers: Vec<LocalServer>,
    dir: PathBuf,
    tools: Tools,
    keep_data: bool,
    removed: bool,
}

impl LocalCluster {
    /// Creates (or reuses) and starts one server per port in `opts.ports`, then makes sure the
    /// application role and database exist on each. Servers start concurrently; this blocks
    /// until all are ready (a few seconds for a fresh 4-shard cluster).
    ///
    /// The servers are tuned for throw-away use: `fsync=off`, `synchronous_commit=off`,
    /// `full_page_writes=off` (a crash of the machine can corrupt them), C locale and UTF8
    /// encoding (byte-order text comparison, the same on every machine).
    pub fn start(opts: &ClusterOptions) -> Result<LocalCluster> {
        validate_options(opts)?;
        let bindir = find_pg_bindir()?;
        let psql = find_psql(&bindir)?;
        fs::create_dir_all(&opts.dir).with_context(|| {
            format!("could not create cluster directory {}", opts.dir.display())
        })?;
        let dir = opts
            .dir
            .canonicalize()
            .with_context(|| format!("could not resolve {}", opts.dir.display()))?;
        check_path_is_shell_safe(&dir)?;
        let socket_dir = dir.join("sockets");
        fs::create_dir_all(&socket_dir)
            .with_context(|| format!("could not create {}", socket_dir.display()))?;
        fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("could not chmod {}", socket_dir.display()))?;
        check_socket_path_length(&socket_dir)?;

        if let Some(identity) = &opts.tls {
            server::write_tls_files(&dir, identity)?;
        }
        let run_as = if running_as_root() {
            let user = POSTGRES_OS_USER.to_owned();
            hand_dir_to(&user, &dir)?;
            Some(user)
        } else {
            None
        };
        let tools = Tools {
            bindir,
            psql,
            run_as,
            workdir: dir.clone(),
        };
        tracing::info!(
            dir = %dir.display(),
            bindir = %tools.bindir.display(),
            ports = ?opts.ports,
            run_as = ?tools.run_as,
            "starting local PostgreSQL cluster"
        );

        let servers = opts
            .ports
            .iter()
            .enumerate()
            .map(|(index, &port)| LocalServer {
                index,
                port,
                data_dir: dir.join(format!("shard{index}")),
                socket_dir: socket_dir.clone(),
                log_file: dir.join(format!("shard{index}.log")),
                superuser: opts.superuser.clone(),
                app_user: opts.app_user.clone(),
                app_password: opts.app_password.clone(),
                app_database: opts.app_database.clone(),
                running: false,
            })
            .collect();
        let mut cluster = LocalCluster {
            servers,
            dir,
            tools,
            keep_data: opts.keep_data,
            removed: false,
        };

        let tools = &cluster.tools;
        let failures: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = cluster
                .servers
                .iter_mut()
                .map(|server| scope.spawn(move || bring_up(server, tools, opts)))
                .collect();
            handles
                .into_iter()
                .enumerate()
                .filter_map(|(index, handle)| match handle.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(format!("shard{index}: {err:#}")),
                    Err(_) => Some(format!("shard{index}: setup thread panicked")),
                })
                .collect()
        });
        if !failures.is_empty() {
            // Dropping `cluster` stops whatever did start (and removes it unless keep_data).
            bail!(
                "could not start the local PostgreSQL cluster in {}:\n{}",
                cluster.dir.display(),
                failures.join("\n")
            );
        }
        tracing::info!(
            servers = cluster.servers.len(),
            "local PostgreSQL cluster ready"
        );
        Ok(cluster)
    }

    /// The servers, in shard order.
    pub fn servers(&self) -> &[LocalServer] {
        &self.servers
    }

    /// The TCP ports of the servers, in shard order.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// The cluster directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PostgreSQL bindir in use (handy for running `pg_dump`, `psql`… against the shards).
    pub fn bindir(&self) -> &Path {
        &self.tools.bindir
    }

    /// Stops every server this handle started (`pg_ctl stop -m fast`: open sessions are
    /// disconnected, transactions rolled back) and, unless `keep_data`, deletes the cluster's
    /// files. Tries every server even if one fails; the error names all that failed.
    pub fn stop(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        for server in self.servers.iter_mut().filter(|s| s.running) {
            match stop_server(server, &self.tools) {
                Ok(()) => server.running = false,
                Err(err) => failures.push(format!("shard{}: {err:#}", server.index)),
            }
        }
        if !self.keep_data && failures.is_empty() {
            self.remove_files()?;
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "could not stop every local server:\n{}",
                failures.join("\n")
            )
        }
    }

    /// Stops one server (to see how the proxy copes with a shard going down); the others keep
    /// running.
    pub fn stop_one(&mut self, index: usize) -> Result<()> {
        let server = server_at(&mut self.servers, index)?;
        if server.running {
            stop_server(server, &self.tools)?;
            server.running = false;
        }
        Ok(())
    }

    /// Stops one server as a crash would (immediate shutdown: transactions in flight are lost
    /// unless their commit record was flushed; the next start recovers). For fault tests.
    pub fn crash_one(&mut self, index: usize) -> Result<()> {
        let server = server_at(&mut self.servers, index)?;
        if server.running {
            crash_server(server, &self.tools)?;
            server.running = false;
        }
        Ok(())
    }

    /// Starts a server stopped by [`LocalCluster::stop_one`] or [`LocalCluster::crash_one`]
    /// again, on its data; `opts` are the options the cluster was started with.
    pub fn restart_one(&mut self, index: usize, opts: &ClusterOptions) -> Result<()> {
        let server = server_at(&mut self.servers, index)?;
        if !server.running {
            restart_server(server, &self.tools, opts)?;
        }
        Ok(())
    }

    /// Deletes the data directories, logs and sockets, then the cluster dir if that left it
    /// empty (a directory the caller shares with other files is left in place).
    fn remove_files(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        for server in &self.servers {
            remove_if_exists(&server.data_dir)?;
            remove_if_exists(&server.log_file)?;
        }
        remove_if_exists(&self.dir.join("sockets"))?;
        // Fails harmlessly when the directory holds anything else.
        let _ = fs::remove_dir(&self.dir);
        self.removed = true;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.servers.iter().any(|s| s.running) || (!self.keep_data && !self.removed) {
            if let Err(err) = self.stop() {
                tracing::warn!("stopping local PostgreSQL cluster: {err:#}");
            }
        }
    }
}

/// Server `index` of a cluster.
fn server_at(servers: &mut [LocalServer], index: usize) -> Result<&mut LocalServer> {
    match servers.iter_mut().find(|s| s.index == index) {
        Some(server) => Ok(server),
        None => bail!("there is no local server {index}"),
    }
}

/// Removes a file or directory tree if it exists.
fn remove_if_exists(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => Err(err),
    };
    result.with_context(|| format!("could not remove {}", path.display()))
}

/// Rejects option values that cannot work, before anything is created.
fn validate_options(opts: &ClusterOptions) -> Result<()> {
    if opts.ports.is_empty() {
        bail!("a local cluster needs at least one port");
    }
    for (i, port) in opts.ports.iter().enumerate() {
        if *port == 0 {
            bail!("port 0 is not a valid server port (use free_ports() to pick ports)");
        }
        if opts.ports[..i].contains(port) {
            bail!("port {port} is listed twice");
        }
    }
    if opts.max_connections == 0 {
        bail!("max_connections must be at least 1");
    }
    for (what, value) in [
        ("app_user", &opts.app_user),
        ("app_database", &opts.app_database),
        ("superuser", &opts.superuser),
    ] {
        if value.is_empty() || value.contains('\0') {
            bail!("{what} must be a non-empty name without NUL bytes");
        }
    }
    if opts.app_password.contains('\0') {
        bail!("app_password must not contain NUL bytes");
    }
    Ok(())
}

/// `pg_ctl` hands paths to `/bin/sh` inside double quotes, and we quote the socket directory
/// in single quotes; refuse the few characters that would break that rather than mis-quote.
fn check_path_is_shell_safe(dir: &Path) -> Result<()> {
    let text = dir.to_string_lossy();
    if let Some(bad) = text
        .chars()
        .find(|c| matches!(c, '"' | '\'' | '$' | '`' | '\\' | ',' | '\n' | '\r'))
    {
        bail!(
            "cluster directory {} contains {bad:?}, which pg_ctl cannot handle; choose another",
            dir.display()
        );
    }
    Ok(())
}

/// Unix socket paths are limited to 107 bytes; fail early with a clear message.
fn check_socket_path_length(socket_dir: &Path) -> Result<()> {
    let longest = socket_dir.join(".s.PGSQL.65535");
    if longest.as_os_str().len() >= 108 {
        bail!(
            "cluster directory {} is too deep for a unix socket path (limit 107 bytes); \
             choose a shorter directory",
            socket_dir.display()
        );
    }
    Ok(())
}
