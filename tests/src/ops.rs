//! Helpers for the operations tests: a proxy serving a `shards.yaml` file that the test
//! rewrites, the admin console, the metrics endpoint parsed as Prometheus text, and a TCP
//! forwarder that gives a shard a second address.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::{connect, scratch_dir, TestCluster};

/// The cluster's YAML with the admin user `admin`/`admin`, metrics on a free port and `extra`
/// top-level settings.
pub fn ops_yaml(cluster: &TestCluster, extra: &str) -> String {
    let yaml = cluster.yaml.replace(
        "users:\n",
        "users:\n  - {name: admin, password: admin, admin: true}\n",
    );
    format!("metrics_listen: 127.0.0.1:0\n{extra}{yaml}")
}

/// A `shards.yaml` in its own directory, rewritten the ways operators do.
pub struct ConfigFile {
    /// The file the proxy serves.
    pub path: PathBuf,
    dir: PathBuf,
}

impl ConfigFile {
    /// Writes `text` to a new file.
    pub fn new(label: &str, text: &str) -> anyhow::Result<ConfigFile> {
        let dir = scratch_dir(&format!("config-{label}"));
        std::fs::create_dir_all(&dir)?;
        let file = ConfigFile {
            path: dir.join("shards.yaml"),
            dir,
        };
        std::fs::write(&file.path, text)?;
        Ok(file)
    }

    /// Replaces the file by renaming a new one over it, as editors and ConfigMaps do.
    pub fn replace(&self, text: &str) -> anyhow::Result<()> {
        let temp = self.dir.join(".shards.yaml.new");
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &self.path)?;
        Ok(())
    }

    /// Rewrites the file in place (truncate and write).
    pub fn overwrite(&self, text: &str) -> anyhow::Result<()> {
        std::fs::write(&self.path, text)?;
        Ok(())
    }

    /// Starts a proxy serving this file, watching it for changes when `watch` is set.
    pub async fn serve(&self, watch: bool) -> anyhow::Result<Proxy> {
        Proxy::start_from_file(&self.path, watch).await
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client of the admin console (`admin`/`admin`, database `shardline`).
pub async fn console(port: u16) -> anyhow::Result<Client> {
    connect(&format!(
        "host=127.0.0.1 port={port} user=admin password=admin dbname=shardline"
    ))
    .await
}

/// A result table of the console, every value as text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names, from the `RowDescription`.
    pub columns: Vec<String>,
    /// Values, one row per `DataRow`.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The values of `column`, one per row.
    pub fn column(&self, column: &str) -> Vec<String> {
        match self.columns.iter().position(|c| c == column) {
            Some(i) => self.rows.iter().map(|r| r[i].clone()).collect(),
            None => Vec::new(),
        }
    }

    /// Rows as maps from column name to value.
    pub fn records(&self) -> Vec<BTreeMap<String, String>> {
        self.rows
            .iter()
            .map(|r| {
                self.columns
                    .iter()
                    .cloned()
                    .zip(r.iter().cloned())
                    .collect()
            })
            .collect()
    }
}

/// Runs a console command that returns a table.
pub async fn show(client: &Client, command: &str) -> anyhow::Result<Table> {
    let mut table = Table::default();
    for message in client.simple_query(command).await? {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                table.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => table.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(table)
}

/// A value of `SHOW CONFIG`.
pub async fn config_value(client: &Client, key: &str) -> anyhow::Result<String> {
    let table = show(client, "SHOW CONFIG").await?;
    table
        .records()
        .into_iter()
        .find(|r| r.get("key").map(String::as_str) == Some(key))
        .and_then(|r| r.get("value").cloned())
        .ok_or_else(|| anyhow::anyhow!("SHOW CONFIG has no {key}"))
}

/// Polls `check` every 20 ms until it returns `Some`, failing with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over HTTP/1.1; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`... suffixes).
    pub name: String,
    /// Label names to values.
    pub labels: BTreeMap<String, String>,
    /// The sample value.
    pub value: f64,
}

/// Parses Prometheus / OpenMetrics text: every line that is not a comment must be
/// `name{label="value",...} value`.
pub fn parse_metrics(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = || anyhow::anyhow!("not a Prometheus sample: {line:?}");
        let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad())?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').ok_or_else(bad)?;
                (name, parse_labels(inner).ok_or_else(bad)?)
            }
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(bad());
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        text = rest[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&rest[end + 1..]);
    }
    Some(labels)
}

/// Sum of the samples named `name` whose labels include every pair of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrapes `/metrics` and parses it.
pub async fn scrape(proxy: &Proxy) -> anyhow::Result<Vec<Sample>> {
    let addr = proxy
        .metrics_addr
        .ok_or_else(|| anyhow::anyhow!("the proxy serves no metrics"))?;
    let (status, body) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    parse_metrics(&body)
}

/// Clients running transactions in a loop until stopped, each failure recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    /// Connects `clients` clients to `conninfo`; each runs `BEGIN; INSERT; SELECT; COMMIT`
    /// on `users` with its own ids from `first_id` up, and a multi-shard read every tenth
    /// round. `users (id bigint, name text)` must exist.
    pub async fn start(conninfo: &str, clients: usize, first_id: i64) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = connect(conninfo).await?;
            let (stop, committed) = (stop.clone(), committed.clone());
            let base = first_id + c as i64 * 1_000_000;
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut round = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    match transaction(&client, base + round, round % 10 == 0).await {
                        Ok(()) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("round {round}: {e:#}")),
                    }
                    round += 1;
                }
                failures
            }));
        }
        Ok(Load {
            stop,
            committed,
            tasks,
        })
    }

    /// Transactions committed so far.
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits until `more` further transactions have committed.
    pub async fn progress(&self, more: usize) -> anyhow::Result<()> {
        let target = self.committed() + more;
        eventually("client transactions", Duration::from_secs(30), || async {
            Ok((self.committed() >= target).then_some(()))
        })
        .await
    }

    /// Stops the clients; returns how many transactions committed and every failure.
    pub async fn stop(self) -> anyhow::Result<(usize, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await?);
        }
        Ok((self.committed.load(Ordering::Relaxed), failures))
    }
}

async fn transaction(client: &Client, id: i64, scatter: bool) -> anyhow::Result<()> {
    client.batch_execute("BEGIN").await?;
    client
        .execute("INSERT INTO users (id, name) VALUES ($1, 'load')", &[&id])
        .await?;
    let row = client
        .query_one("SELECT name FROM users WHERE id = $1", &[&id])
        .await?;
    anyhow::ensure!(row.get::<_, String>(0) == "load", "read back another row");
    client.batch_execute("COMMIT").await?;
    if scatter {
        client
            .query("SELECT id FROM users WHERE name = 'nobody'", &[])
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines_parse_and_bad_ones_do_not() {
        let text = "# HELP x y\n# TYPE a counter\na_total{shard=\"s0\",route=\"single\"} 3\nb 1.5\nc_bucket{le=\"+Inf\"} 2\n# EOF\n";
        let samples = parse_metrics(text).unwrap_or_default();
        assert_eq!(samples.len(), 3);
        assert_eq!(metric(&samples, "a_total", &[("shard", "s0")]), 3.0);
        for bad in ["a{b=\"c\" 1", "a 1 2 x", "1a 3", "a{b=c} 1"] {
            assert!(parse_metrics(bad).is_err(), "{bad}");
        }
    }
}
