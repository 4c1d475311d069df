//! The running proxies, driven through their admin consoles (plain SQL, as DESIGN.md asks):
//! the resharder advances a phase only when every proxy it was told about has confirmed it,
//! and stops, naming the proxy, when one cannot be reached.

use anyhow::{bail, Context};
use shardline_router::migration::Phase;
use shardline_router::Config;
use std::collections::HashMap;
use std::sync::Arc;

use shardline::backend::tls::{client_config, open_control};
use shardline_router::config::{ShardTls, ShardTlsMode};
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The admin database of a shardline proxy.
const ADMIN_DATABASE: &str = "shardline";

/// Every proxy of the cluster, by admin address (`host:port`).
pub struct Proxies {
    addresses: Vec<String>,
    user: String,
    password: Option<String>,
    /// Console connections, opened once: a cutover's pause must not wait for logins.
    open: Mutex<HashMap<String, Arc<Client>>>,
}

impl Proxies {
    /// The proxies at `addresses`, logged in to as the first admin user of `config`.
    pub fn new(addresses: Vec<String>, config: &Config) -> anyhow::Result<Proxies> {
        let admin = config.users.iter().find(|u| u.admin);
        if addresses.is_empty() {
            return Ok(Proxies {
                addresses,
                user: String::new(),
                password: None,
                open: Mutex::new(HashMap::new()),
            });
        }
        let Some(admin) = admin else {
            bail!("the source shards.yaml has no admin user (admin: true); the resharder needs one to reach the proxies' consoles");
        };
        Ok(Proxies {
            addresses,
            user: admin.name.clone(),
            password: admin.password.clone(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The admin addresses, for messages.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Asks every proxy to read the catalog (`RESHARD`) and checks each now serves `phase`.
    pub async fn confirm(&self, phase: Phase) -> anyhow::Result<()> {
        for address in &self.addresses {
            let rows = self.command(address, "RESHARD").await?;
            let served = rows.get(1).map(String::as_str).unwrap_or("none");
            if served != phase.as_str() {
                bail!("proxy {address} serves phase {served}, not {phase}; is it connected to the same cluster?");
            }
        }
        Ok(())
    }

    /// Sends `command` to every proxy, in order; the first failure names its proxy.
    pub async fn broadcast(&self, command: &str) -> anyhow::Result<()> {
        for address in &self.addresses {
            self.command(address, command).await?;
        }
        Ok(())
    }

    /// Sends `command` to every proxy, ignoring failures (used while backing out).
    pub async fn broadcast_quietly(&self, command: &str) {
        for address in &self.addresses {
            if let Err(e) = self.command(address, command).await {
                eprintln!("warning: {e:#}");
            }
        }
    }

    /// Logs in to every proxy's console now, so later commands do not wait for logins.
    pub async fn connect_all(&self) -> anyhow::Result<()> {
        for address in &self.addresses {
            self.client(address).await?;
        }
        Ok(())
    }

    /// Runs one console command on the proxy at `address`; the first row's values.
    pub async fn command(&self, address: &str, command: &str) -> anyhow::Result<Vec<String>> {
        let client = self.client(address).await?;
        let messages = client
            .simple_query(command)
            .await
            .with_context(|| format!("proxy {address} refused {command}"))?;
        Ok(messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or_default().to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// The console connection to the proxy at `address`, opened on first use.
    async fn client(&self, address: &str) -> anyhow::Result<Arc<Client>> {
        let mut open = self.open.lock().await;
        if let Some(client) = open.get(address).filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .with_context(|| format!("proxy address {address:?} is not host:port"))?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port)
            .user(&self.user)
            .dbname(ADMIN_DATABASE)
            .application_name("shardline-reshard")
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(password) = &self.password {
            pg.password(password);
        }
        // As libpq's default (sslmode=prefer): encrypted when the proxy serves TLS (a proxy
        // in `require` mode accepts nothing else), its certificate not checked.
        let tls = client_config(&ShardTls {
            mode: ShardTlsMode::Require,
            ca: None,
        })
        .map_err(anyhow::Error::msg)?;
        pg.ssl_mode(tokio_postgres::config::SslMode::Prefer);
        let (client, _connection) = open_control(&pg, tls).await.with_context(|| {
            format!("could not reach proxy {address}; start it (or leave it out of --proxy if it is gone for good) and run this step again")
        })?;
        let client = Arc::new(client);
        open.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}
