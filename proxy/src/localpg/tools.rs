//! The PostgreSQL programs: finding the server bindir and `psql`, and running them — as the
//! `postgres` OS user when this process is root, since PostgreSQL refuses to run as root.

use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The three programs a directory must hold to count as a PostgreSQL server bindir.
pub(super) const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The OS user that runs PostgreSQL when this process is root.
pub(super) const POSTGRES_OS_USER: &str = "postgres";
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
pub(super) fn is_executable(path: &Path) -> bool {
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
pub(super) fn parse_version(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// What every server of a cluster shares: programs to run and the user to run them as.
#[derive(Debug)]
pub(super) struct Tools {
    pub(super) bindir: PathBuf,
    pub(super) psql: PathBuf,
    /// `Some("postgres")` when this process is root and must run servers as another user.
    pub(super) run_as: Option<String>,
    /// Working directory for child processes (the cluster dir, readable by `run_as`).
    pub(super) workdir: PathBuf,
}

impl Tools {
    /// A command for a PostgreSQL server program, run as `run_as` when set.
    pub(super) fn server_command(&self, program: &str) -> Command {
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
    pub(super) fn psql_command(&self) -> Command {
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
/// The `psql` to use: the bindir's, else one on PATH.
pub(super) fn find_psql(bindir: &Path) -> Result<PathBuf> {
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
pub(super) fn running_as_root() -> bool {
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
pub(super) fn hand_dir_to(user: &str, dir: &Path) -> Result<()> {
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
pub(super) fn run(mut cmd: Command, what: &str) -> Result<Output> {
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
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
