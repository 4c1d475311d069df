//! A fault-injecting TCP proxy between shardline and one shard (toxiproxy's idea, in-process,
//! loopback only): it forwards bytes both ways until told to misbehave. Also a second
//! address for a shard, for tests that move one.
//!
//! - `Pass`: forward.
//! - `Reset`: new connections are accepted and reset at once (a refusing shard).
//! - `Blackhole`: new connections are accepted and never answered, and open ones stop
//!   delivering in both directions, mid-result included (a hung host, a dropped route); the
//!   held bytes flow again when the fault is lifted.
//! - `Latency`: every chunk waits `base` plus up to `jitter`.
//!
//! [`FaultProxy::cut`] closes every open connection at once (a shard killed mid-transaction).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Reset,
    Blackhole,
    Latency { base: Duration, jitter: Duration },
}

/// A running fault proxy; stopped when dropped.
pub struct FaultProxy {
    /// Port the proxy listens on (127.0.0.1).
    pub port: u16,
    fault: watch::Sender<Fault>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    listener: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (fault, watching) = watch::channel(Fault::Pass);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = connections.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let listener = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(serve(client, upstream, watching.clone()));
                let mut tracked = tracked.lock().unwrap_or_else(PoisonError::into_inner);
                tracked.retain(|t| !t.is_finished());
                tracked.push(task);
            }
        });
        Ok(FaultProxy {
            port,
            fault,
            connections,
            accepted,
            listener,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Starts misbehaving as `fault` says (or stops, with [`Fault::Pass`]).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Closes every open connection now, both ways.
    pub fn cut(&self) {
        let open: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in open {
            task.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let now = *fault.borrow_and_update();
    match now {
        Fault::Reset => {
            // SO_LINGER 0: the close sends RST, as a host refusing the port would.
            let _ = client.set_zero_linger();
            return;
        }
        Fault::Blackhole => {
            // Never answered, whatever comes later: the peer's own timeout must end it.
            let _keep = client;
            std::future::pending::<()>().await;
            return;
        }
        Fault::Pass | Fault::Latency { .. } => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Both directions in this task, so aborting it (a cut) closes all four halves; when one
    // direction ends the connection is over.
    tokio::select! {
        () = pump(client_read, server_write, fault.clone()) => {}
        () = pump(server_read, client_write, fault) => {}
    }
}

/// Copies `from` to `to`, holding bytes while the fault is a blackhole and delaying them
/// under latency.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut fault: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        loop {
            let now = *fault.borrow_and_update();
            match now {
                Fault::Blackhole => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Latency { base, jitter } => {
                    let extra = jitter.mul_f64(rand::random::<f64>());
                    tokio::time::sleep(base + extra).await;
                    break;
                }
                Fault::Pass | Fault::Reset => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
