//! One server of a local cluster: its handle (files, ports, connection strings) and its
//! lifecycle — `initdb` with our `pg_hba.conf`, `pg_ctl start`, creating the application role
//! and database through `psql`, and `pg_ctl stop`.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::remove_if_exists;
use super::tools::{last_lines, run, Tools};
use super::ClusterOptions;
use crate::tls::authority::Issued;

/// The address every local server listens on.
const LOCALHOST: &str = "127.0.0.1";

/// How long `pg_ctl` may wait for a server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// One PostgreSQL server of a [`LocalCluster`](super::LocalCluster): where its files are and
/// how to reach it.
#[derive(Debug)]
pub struct LocalServer {
    pub(super) index: usize,
    pub(super) port: u16,
    pub(super) data_dir: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) log_file: PathBuf,
    pub(super) superuser: String,
    pub(super) app_user: String,
    pub(super) app_password: String,
    pub(super) app_database: String,
    pub(super) running: bool,
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
pub(super) fn conninfo_value(value: &str) -> String {
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
    pg_ctl_stop_mode(data_dir, tools, "fast")
}

/// `pg_ctl stop -m <mode> -w` on `data_dir`.
fn pg_ctl_stop_mode(data_dir: &Path, tools: &Tools, mode: &str) -> Result<()> {
    let mut cmd = tools.server_command("pg_ctl");
    cmd.arg("stop").arg("-D").arg(data_dir).args([
        "-m",
        mode,
        "-w",
        "-s",
        "-t",
        PG_CTL_TIMEOUT_SECS,
    ]);
    run(cmd, "pg_ctl stop").map(|_| ())
}

/// Stops one server started by this process. A server that is already gone (stopped by
/// hand, or crashed) counts as stopped.
pub(super) fn stop_server(server: &LocalServer, tools: &Tools) -> Result<()> {
    tracing::debug!(port = server.port, "stopping shard{}", server.index);
    match pg_ctl_stop(&server.data_dir, tools) {
        Err(err) if server_is_running(&server.data_dir, tools) => Err(err),
        _ => Ok(()),
    }
}

/// Stops one server as a crash would (`pg_ctl stop -m immediate`: no shutdown checkpoint;
/// the next start runs crash recovery).
pub(super) fn crash_server(server: &LocalServer, tools: &Tools) -> Result<()> {
    tracing::debug!(port = server.port, "crashing shard{}", server.index);
    pg_ctl_stop_mode(&server.data_dir, tools, "immediate")
}

/// Starts a server of this cluster again on its existing data directory.
pub(super) fn restart_server(
    server: &mut LocalServer,
    tools: &Tools,
    opts: &ClusterOptions,
) -> Result<()> {
    start_server(server, tools, opts)?;
    server.running = true;
    Ok(())
}

/// Prepares, starts and sets up one server.
pub(super) fn bring_up(
    server: &mut LocalServer,
    tools: &Tools,
    opts: &ClusterOptions,
) -> Result<()> {
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

/// Where the servers' certificate and key live, in the cluster directory.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("tls/server.crt"), dir.join("tls/server.key"))
}

/// Writes the certificate and key the servers present (the key readable by its owner only;
/// the cluster directory is handed to the server's OS user afterwards).
pub(super) fn write_tls_files(dir: &Path, identity: &Issued) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (cert, key) = tls_files(dir);
    fs::create_dir_all(dir.join("tls")).context("could not create the TLS directory")?;
    fs::write(&cert, &identity.cert_pem)
        .with_context(|| format!("could not write {}", cert.display()))?;
    fs::write(&key, &identity.key_pem)
        .with_context(|| format!("could not write {}", key.display()))?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("could not chmod {}", key.display()))
}

/// `pg_ctl start -w` with the dev/test settings; on failure the log's tail is in the error.
fn start_server(server: &LocalServer, tools: &Tools, opts: &ClusterOptions) -> Result<()> {
    // pg_ctl runs the postmaster through /bin/sh; the socket dir was checked to be free of
    // quotes, so single quotes suffice.
    let tls = match (&opts.tls, server.data_dir.parent()) {
        (Some(_), Some(dir)) => {
            let (cert, key) = tls_files(dir);
            format!(
                " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                cert.display(),
                key.display()
            )
        }
        _ => String::new(),
    };
    let postgres_options = format!(
        "-p {port} -k '{socket}' -c listen_addresses={host} -c max_connections={max} \
         -c max_prepared_transactions={max} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off{tls}",
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
