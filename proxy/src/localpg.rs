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

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// The three programs a directory must hold to count as a PostgreSQL server bindir.
const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The OS user that runs PostgreSQL when this process is root.
const POSTGRES_OS_USER: &str = "postgres";

/// The address every local server listens on.
const LOCALHOST: &str = "127.0.0.1";

/// How long `pg_ctl` may wait for a server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Environment variable that, when set, names the PostgreSQL bindir to use and skips the search.
pub const PG_BINDIR_ENV: &str = "SHARDLINE_PG_BINDIR";

/// The one-line error shown when no PostgreSQL server binaries can be found.
const NOT_FOUND_MESSAGE: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not \
found on PATH, via pg_config, or in /usr/lib/postgresql/*/bin; install them with \
`apt-get install -y postgresql` (Debian/Ubuntu) or `brew install postgresql@15` (macOS), \
or set SHARDLINE_PG_BINDIR to their directory";

/// Finds the directory holding PostgreSQL's server programs (`initdb`, `pg_ctl` and
/// `postgres`, all three in the same directory), so that a demo or test cluster can be created
/// without any configuration.
///
/// Search order: `$SHARDLINE_PG_BINDIR` (if set, it must be right), each directory of `PATH`,
/// `pg_config --bindir`, then the usual per-version install locations, highest version first:
/// `/usr/lib/postgresql/*/bin` (Debian/Ubuntu), `/usr/pgsql-*/bin` (RHEL),
/// `/opt/homebrew/opt/postgresql@*/bin` and `/usr/local/opt/postgresql@*/bin` (Homebrew).
pub fn find_pg_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        bail!(
            "{PG_BINDIR_ENV}={} does not contain all of initdb, pg_ctl and postgres",
            dir.display()
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if !dir.as_os_str().is_empty() && has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Some(dir) = pg_config_bindir() {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    versioned_bindirs()
        .into_iter()
        .find(|dir| has_server_binaries(dir))
        .ok_or_else(|| anyhow!(NOT_FOUND_MESSAGE))
}

/// True when `dir` holds executable `initdb`, `pg_ctl` and `postgres`.
fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES
        .iter()
        .all(|name| is_executable(&dir.join(name)))
}

/// True when `path` (after following symlinks) is a file with an execute bit set.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Asks `pg_config` (if it is on PATH) where the server binaries are.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// Candidate bindirs in per-version install locations, highest version first.
fn versioned_bindirs() -> Vec<PathBuf> {
    // (parent directory, prefix of the versioned entry, path below the entry)
    const LAYOUTS: [(&str, &str, &str); 4] = [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ];
    let mut found: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix, below) in LAYOUTS {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(parse_version)
            else {
                continue;
            };
            found.push((version, entry.path().join(below)));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// Parses "15" or "9.6" into comparable numeric components.
fn parse_version(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago, for a test or demo server.
///
/// The port is found by binding port 0 and reading what the OS picked, then releasing it, so
/// another process could in principle take it before the caller does. Should binding fail
/// (no loopback interface), a port from 20000..30000 derived from the clock is returned so the
/// caller gets a clear "could not bind" error from the server instead of a panic here.
pub fn free_port() -> u16 {
    free_ports(1).first().copied().unwrap_or_else(fallback_port)
}

/// Returns `n` distinct TCP ports on 127.0.0.1 that were free a moment ago (see
/// [`free_port`]); all `n` listeners are held at once so the OS cannot hand out a port twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| {
            let port = l.local_addr()?.port();
            Ok((l, port))
        }) {
            Ok((listener, port)) => {
                if !ports.contains(&port) {
                    ports.push(port);
                }
                listeners.push(listener);
            }
            Err(_) => {
                // fallback_port() is below 30000, so adding a small count stays distinct.
                let port = fallback_port() + ports.len() as u16;
                ports.push(port);
            }
        }
    }
    ports
}

/// A port in 20000..30000 (well below u16::MAX) picked from the clock and the process id (see [`free_port`]).
fn fallback_port() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    20_000 + ((nanos ^ std::process::id()) % 10_000) as u16
}

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
        }
    }
}

/// One PostgreSQL server of a [`LocalCluster`]: where its files are and how to reach it.
#[derive(Debug)]
pub struct LocalServer {
    index: usize,
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    superuser: String,
    app_user: String,
    app_password: String,
    app_database: String,
    running: bool,
}

impl LocalServer {
    /// Position of this server in the cluster (shard number).
    pub fn index(&self) -> usize {
        self.index
    }

    /// TCP host the server listens on (always 127.0.0.1).
    pub fn host(&self) -> &str {
        LOCALHOST
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log file (read it when something goes wrong).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Whether this handle started the server and has not stopped it yet.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Connection string (libpq / tokio-postgres key=value form) for the superuser over the
    /// unix socket, no password needed; for setup and control-plane work.
    pub fn superuser_conninfo(&self) -> String {
        self.superuser_conninfo_db("postgres")
    }

    /// Like [`Self::superuser_conninfo`] but for database `dbname`.
    pub fn superuser_conninfo_db(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.socket_dir.to_string_lossy()),
            self.port,
            conninfo_value(&self.superuser),
            conninfo_value(dbname)
        )
    }

    /// Connection string for the application role over TCP with its password, e.g.
    /// `host=127.0.0.1 port=… user=app password=app dbname=app`: what a shard entry in
    /// `shards.yaml` or a test client uses.
    pub fn app_conninfo(&self) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            LOCALHOST,
            self.port,
            conninfo_value(&self.app_user),
            conninfo_value(&self.app_password),
            conninfo_value(&self.app_database)
        )
    }
}

/// Quotes a value for a key=value connection string when it needs it (empty, or containing
/// whitespace, quotes or backslashes), the way libpq and tokio-postgres parse them.
fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        value.to_owned()
    } else {
        let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
        format!("'{escaped}'")
    }
}

/// What every server of a cluster shares: programs to run and the user to run them as.
#[derive(Debug)]
struct Tools {
    bindir: PathBuf,
    psql: PathBuf,
    /// `Some("postgres")` when this process is root and must run servers as another user.
    run_as: Option<String>,
    /// Working directory for child processes (the cluster dir, readable by `run_as`).
    workdir: PathBuf,
}

impl Tools {
    /// A command for a PostgreSQL server program, run as `run_as` when set.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.arg("-u").arg(user).arg("--").arg(path);
                cmd
            }
            None => Command::new(path),
        };
        self.sanitize(&mut cmd);
        cmd
    }

    /// A `psql` command run as the current user (it reaches the server over the socket).
    fn psql_command(&self) -> Command {
        let mut cmd = Command::new(&self.psql);
        self.sanitize(&mut cmd);
        cmd
    }

    /// Runs children in the cluster dir, without stdin, and without the caller's `PG*`
    /// environment (PGDATA, PGOPTIONS, PGPORT… would silently change what they do).
    fn sanitize(&self, cmd: &mut Command) {
        cmd.current_dir(&self.workdir).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
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
        let Some(server) = self.servers.iter_mut().find(|s| s.index == index) else {
            bail!("there is no local server {index}");
        };
        if server.running {
            stop_server(server, &self.tools)?;
            server.running = false;
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

/// The `psql` to use: the bindir's, else one on PATH.
fn find_psql(bindir: &Path) -> Result<PathBuf> {
    let beside = bindir.join("psql");
    if is_executable(&beside) {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("psql"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            anyhow!(
                "psql was not found in {} or on PATH; install the PostgreSQL client \
                 (`apt-get install -y postgresql-client`)",
                bindir.display()
            )
        })
}

/// Whether this process runs as root (uid 0), in which case PostgreSQL must run as another user.
fn running_as_root() -> bool {
    let from_id = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<u32>().ok());
    match from_id {
        Some(uid) => uid == 0,
        // Linux without `id`: /proc/self belongs to the process's effective user.
        None => fs::metadata("/proc/self")
            .map(|meta| meta.uid() == 0)
            .unwrap_or(false),
    }
}

/// As root: checks that `user` exists, gives it the cluster directory, and checks that it can
/// actually reach and write the directory (every parent must be traversable by it).
fn hand_dir_to(user: &str, dir: &Path) -> Result<()> {
    let exists = Command::new("id")
        .arg("-u")
        .arg(user)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !exists {
        bail!(
            "running as root, but PostgreSQL refuses to run as root and there is no `{user}` OS \
             user to run it as; create one (`useradd --system {user}`) or run as a normal user"
        );
    }
    let mut chown = Command::new("chown");
    chown.arg("-R").arg(format!("{user}:")).arg(dir);
    run(chown, "chown")?;
    let mut probe = Command::new("runuser");
    probe
        .args(["-u", user, "--", "test", "-w"])
        .arg(dir)
        .arg("-a")
        .arg("-x")
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null());
    let reachable = probe.status().map(|s| s.success()).unwrap_or(false);
    if !reachable {
        bail!(
            "the `{user}` OS user cannot write to {}; make every parent directory traversable \
             (chmod o+x) or put the cluster under /tmp",
            dir.display()
        );
    }
    Ok(())
}

/// Runs a command to completion; a non-zero exit becomes an error quoting its output.
fn run(mut cmd: Command, what: &str) -> Result<Output> {
    tracing::debug!(command = ?cmd, "running {what}");
    let out = cmd
        .output()
        .with_context(|| format!("could not run {what} ({cmd:?})"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        bail!("{what} failed ({}): {}", out.status, last_lines(&text, 20));
    }
    Ok(out)
}

/// The last `n` lines of `text`, trimmed, for error messages.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The end of a server log, to explain why a server did not start.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), 20),
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

/// Whether `pg_ctl status` reports a server running on `data_dir`.
fn server_is_running(data_dir: &Path, tools: &Tools) -> bool {
    let mut cmd = tools.server_command("pg_ctl");
    cmd.arg("status")
        .arg("-D")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().map(|s| s.code() == Some(0)).unwrap_or(false)
}

/// `pg_ctl stop -m fast -w` on `data_dir`.
fn pg_ctl_stop(data_dir: &Path, tools: &Tools) -> Result<()> {
    let mut cmd = tools.server_command("pg_ctl");
    cmd.arg("stop").arg("-D").arg(data_dir).args([
        "-m",
        "fast",
        "-w",
        "-s",
        "-t",
        PG_CTL_TIMEOUT_SECS,
    ]);
    run(cmd, "pg_ctl stop").map(|_| ())
}

/// Stops one server started by this process. A server that is already gone (stopped by
/// hand, or crashed) counts as stopped.
fn stop_server(server: &LocalServer, tools: &Tools) -> Result<()> {
    tracing::debug!(port = server.port, "stopping shard{}", server.index);
    match pg_ctl_stop(&server.data_dir, tools) {
        Err(err) if server_is_running(&server.data_dir, tools) => Err(err),
        _ => Ok(()),
    }
}

/// Prepares, starts and sets up one server.
fn bring_up(server: &mut LocalServer, tools: &Tools, opts: &ClusterOptions) -> Result<()> {
    let data_dir = server.data_dir.clone();
    let initialised = data_dir.join("PG_VERSION").is_file();
    if initialised && server_is_running(&data_dir, tools) {
        // A server left behind by an earlier run that did not shut down cleanly.
        tracing::warn!(
            data_dir = %data_dir.display(),
            "a server is already running on this data directory; stopping it first"
        );
        pg_ctl_stop(&data_dir, tools)?;
    }
    if initialised && !opts.reuse_existing {
        remove_if_exists(&data_dir)?;
        remove_if_exists(&server.log_file)?;
    }
    if !initialised || !opts.reuse_existing {
        let leftovers = fs::read_dir(&data_dir)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if leftovers {
            bail!(
                "{} exists but is not a PostgreSQL data directory (no PG_VERSION); \
                 remove it or choose another cluster directory",
                data_dir.display()
            );
        }
        init_data_dir(server, tools)?;
    } else {
        tracing::debug!(data_dir = %data_dir.display(), "reusing existing data directory");
    }
    start_server(server, tools, opts)?;
    server.running = true;
    create_app_objects(server, tools)
}

/// `initdb` for one server, then our own `pg_hba.conf` (trust on the socket, scram over TCP).
fn init_data_dir(server: &LocalServer, tools: &Tools) -> Result<()> {
    tracing::debug!(data_dir = %server.data_dir.display(), "initdb");
    let mut cmd = tools.server_command("initdb");
    cmd.arg("-D")
        .arg(&server.data_dir)
        .arg("-U")
        .arg(&server.superuser)
        // Trust everywhere at first (initdb insists on a superuser password for any password
        // method); pg_hba.conf is replaced right below.
        .args(["-A", "trust", "--no-locale", "-E", "UTF8", "--no-sync"]);
    run(cmd, "initdb")?;

    let hba = "\
# Written by shardline (localpg): a local dev/test cluster.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  trust
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
";
    let hba_path = server.data_dir.join("pg_hba.conf");
    // Truncating the existing file keeps its owner (the postgres user when we are root).
    fs::write(&hba_path, hba).with_context(|| format!("could not write {}", hba_path.display()))
}

/// `pg_ctl start -w` with the dev/test settings; on failure the log's tail is in the error.
fn start_server(server: &LocalServer, tools: &Tools, opts: &ClusterOptions) -> Result<()> {
    // pg_ctl runs the postmaster through /bin/sh; the socket dir was checked to be free of
    // quotes, so single quotes suffice.
    let postgres_options = format!(
        "-p {port} -k '{socket}' -c listen_addresses={host} -c max_connections={max} \
         -c max_prepared_transactions={max} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off",
        port = server.port,
        socket = server.socket_dir.display(),
        host = LOCALHOST,
        max = opts.max_connections,
    );
    let mut cmd = tools.server_command("pg_ctl");
    cmd.arg("start")
        .arg("-D")
        .arg(&server.data_dir)
        .arg("-l")
        .arg(&server.log_file)
        .args(["-w", "-s", "-t", PG_CTL_TIMEOUT_SECS, "-o"])
        .arg(postgres_options);
    tracing::debug!(port = server.port, "starting shard{}", server.index);
    run(cmd, "pg_ctl start").map_err(|err| {
        anyhow!(
            "{err:#}\nserver log {}:\n{}",
            server.log_file.display(),
            log_tail(&server.log_file)
        )
    })?;
    Ok(())
}

/// Creates (or updates) the application role and database through `psql` as superuser over
/// the unix socket; safe to run on every start.
fn create_app_objects(server: &LocalServer, tools: &Tools) -> Result<()> {
    // psql's :'name' / :"name" interpolation quotes the values, and format(%I, %L) quotes them
    // again for the generated statements; no value is spliced into SQL by hand.
    let cluster_script = "\
SET password_encryption = 'scram-sha-256';
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_database', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'app_database') \\gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'app_database', :'app_user') \\gexec
";
    let database_script = "\
SELECT format('ALTER SCHEMA public OWNER TO %I', :'app_user')
 WHERE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public') \\gexec
";
    run_psql(
        server,
        tools,
        &server.superuser_conninfo_db("postgres"),
        cluster_script,
    )?;
    run_psql(
        server,
        tools,
        &server.superuser_conninfo_db(&server.app_database),
        database_script,
    )
}

/// Runs a psql script (fed on stdin) against `conninfo`, stopping at the first error.
fn run_psql(server: &LocalServer, tools: &Tools, conninfo: &str, script: &str) -> Result<()> {
    let mut cmd = tools.psql_command();
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
        .arg("-v")
        .arg(psql_var("app_user", &server.app_user))
        .arg("-v")
        .arg(psql_var("app_password", &server.app_password))
        .arg("-v")
        .arg(psql_var("app_database", &server.app_database))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not run {}", tools.psql.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("could not send the setup script to psql")?;
    }
    let out = child.wait_with_output().context("psql did not finish")?;
    if !out.status.success() {
        bail!(
            "setting up role/database on port {} failed ({}): {}",
            server.port,
            out.status,
            last_lines(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok(())
}

/// A `name=value` argument for `psql -v`.
fn psql_var(name: &str, value: &str) -> OsString {
    OsString::from(format!("{name}={value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed (best effort) when dropped.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> Result<TestDir> {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "shardline-localpg-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&path)?;
            Ok(TestDir(path))
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Connects with tokio-postgres and drives the connection on a background task.
    async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Starts a cluster off the async runtime's worker threads.
    async fn start(opts: ClusterOptions) -> Result<LocalCluster> {
        tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await?
    }

    #[test]
    fn finds_a_bindir_with_all_three_programs() -> Result<()> {
        let bindir = find_pg_bindir()?;
        for program in SERVER_BINARIES {
            assert!(is_executable(&bindir.join(program)), "{program} missing");
        }
        Ok(())
    }

    #[test]
    fn versions_sort_numerically() {
        let mut versions = vec![
            parse_version("9.6"),
            parse_version("16"),
            parse_version("15"),
        ];
        versions.sort_by(|a, b| b.cmp(a));
        assert_eq!(
            versions,
            vec![Some(vec![16]), Some(vec![15]), Some(vec![9, 6])]
        );
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let ports = free_ports(8);
        assert_eq!(ports.len(), 8);
        for (i, port) in ports.iter().enumerate() {
            assert_ne!(*port, 0);
            assert!(!ports[..i].contains(port));
        }
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(conninfo_value("app"), "app");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
        assert_eq!(conninfo_value("back\\slash"), "'back\\\\slash'");
    }

    #[test]
    fn bad_options_are_rejected_before_anything_runs() {
        let mut opts = ClusterOptions::new("/nonexistent/shardline", vec![]);
        assert!(LocalCluster::start(&opts).is_err());
        opts.ports = vec![5000, 5000];
        assert!(LocalCluster::start(&opts).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_password_auth_and_data_reuse() -> Result<()> {
        let tmp = TestDir::new("reuse")?;
        let dir = tmp.0.join("cluster");
        let ports = free_ports(2);

        // First run: fresh data directories, kept after stop.
        let mut opts = ClusterOptions::new(&dir, ports.clone());
        opts.max_connections = 20;
        opts.reuse_existing = true;
        opts.keep_data = true;
        let mut cluster = start(opts.clone()).await?;
        assert_eq!(cluster.ports(), ports);
        assert_eq!(cluster.servers().len(), 2);

        for server in cluster.servers() {
            assert_eq!(server.host(), "127.0.0.1");
            let client = connect(&server.app_conninfo()).await?;
            let row = client.query_one("SELECT 1::int4", &[]).await?;
            assert_eq!(row.get::<_, i32>(0), 1);
            // The app role owns schema public, so it can create tables there.
            client
                .batch_execute(&format!(
                    "CREATE TABLE kept (shard int); INSERT INTO kept VALUES ({})",
                    server.index()
                ))
                .await?;

            // TCP requires the right password.
            let wrong = format!(
                "host=127.0.0.1 port={} user=app password=wrong dbname=app",
                server.port()
            );
            let err = match connect(&wrong).await {
                Ok(_) => anyhow::bail!("a wrong password was accepted on port {}", server.port()),
                Err(err) => err,
            };
            assert_eq!(
                err.code(),
                Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
                "{err}"
            );

            // The superuser reaches the server over the unix socket without a password.
            let admin = connect(&server.superuser_conninfo()).await?;
            let row = admin
                .query_one(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                    &[],
                )
                .await?;
            assert!(row.get::<_, bool>(0));
            let row = admin
                .query_one("SHOW max_prepared_transactions", &[])
                .await?;
            assert_eq!(row.get::<_, String>(0), "20");
        }
        let data_dir = cluster.servers()[0].data_dir().to_path_buf();
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
        assert!(
            data_dir.join("PG_VERSION").is_file(),
            "keep_data kept the data"
        );

        // Second run on the same directory: data reused, then everything removed.
        opts.keep_data = false;
        let mut cluster = start(opts).await?;
        for server in cluster.servers() {
            let client = connect(&server.app_conninfo()).await?;
            let row = client.query_one("SELECT shard FROM kept", &[]).await?;
            assert_eq!(row.get::<_, i32>(0), server.index() as i32);
        }
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
        assert!(
            !dir.exists(),
            "keep_data=false removed the cluster directory"
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_start_discards_old_data_and_drop_stops_servers() -> Result<()> {
        let tmp = TestDir::new("fresh")?;
        let dir = tmp.0.join("cluster");
        let ports = free_ports(1);
        let mut opts = ClusterOptions::new(&dir, ports);
        opts.max_connections = 20;
        opts.keep_data = true;

        let cluster = start(opts.clone()).await?;
        {
            let client = connect(&cluster.servers()[0].app_conninfo()).await?;
            client.batch_execute("CREATE TABLE old (x int)").await?;
        }
        let data_dir = cluster.servers()[0].data_dir().to_path_buf();
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
        assert!(
            !data_dir.join("postmaster.pid").exists(),
            "dropping the cluster stopped the server"
        );

        opts.reuse_existing = false;
        opts.keep_data = false;
        let cluster = start(opts).await?;
        let client = connect(&cluster.servers()[0].app_conninfo()).await?;
        let row = client
            .query_one("SELECT to_regclass('public.old') IS NULL", &[])
            .await?;
        assert!(
            row.get::<_, bool>(0),
            "reuse_existing=false started from scratch"
        );
        drop(client);
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
        assert!(!dir.exists());
        Ok(())
    }
}
