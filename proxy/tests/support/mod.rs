//! What the process tests share: the `shardline` binary run as an operator runs it, and
//! clients that wait for it to come up.

// Each test file is a crate of its own and uses only part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// A running `shardline` process, killed if the test ends early.
pub struct Shardline(pub Child);

impl Drop for Shardline {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Shardline {
    pub fn start(config: &Path) -> anyhow::Result<Shardline> {
        Shardline::start_with(config, &[])
    }

    /// Starts it with `args` before the config's (`--threads 1`, say).
    pub fn start_with(config: &Path, args: &[&str]) -> anyhow::Result<Shardline> {
        let child = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(args)
            .arg("--config")
            .arg(config)
            .arg("--no-watch")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Shardline(child))
    }

    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(started.elapsed() < limit, "shardline did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn connect(conninfo: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects, retrying while the process starts.
pub async fn connect_when_up(conninfo: &str) -> anyhow::Result<Client> {
    let started = Instant::now();
    loop {
        match connect(conninfo).await {
            Ok(client) => return Ok(client),
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
