//! Byte-level oracle tests: the same protocol bytes sent to the proxy and to a plain
//! PostgreSQL database, their answers reduced to what must match and compared.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::wire::{login, login_socket, read_message, trusting_proxy};
use crate::TestCluster;

/// One answer, reduced to what must match between the proxy and PostgreSQL: its type, and the
/// command tag, SQLSTATE or row it carries (error texts differ: the proxy names the shard).
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Tag(char),
    Complete(String),
    Error(String),
    Row(Vec<u8>),
    Ready(char),
}

/// How many answers to read after sending a pipeline.
#[derive(Clone, Copy)]
pub enum Until {
    /// Up to this many `ReadyForQuery` (one per `Sync`).
    Syncs(usize),
    /// Exactly this many answers (after a `Flush` nothing marks the end).
    Answers(usize),
}

/// Sends `bytes` and reads the answers.
pub async fn transcript<S>(
    stream: &mut S,
    bytes: &[u8],
    until: Until,
) -> anyhow::Result<Vec<Answer>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    let mut answers = Vec::new();
    let mut ready = 0;
    loop {
        let done = match until {
            Until::Syncs(n) => ready == n,
            Until::Answers(n) => answers.len() == n,
        };
        if done {
            return Ok(answers);
        }
        let (tag, body) = read_message(stream).await?;
        answers.push(match tag {
            b'C' => Answer::Complete(String::from_utf8_lossy(&body).trim_end_matches('\0').into()),
            b'E' => Answer::Error(error_code(&body)),
            b'D' => Answer::Row(body),
            b'Z' => {
                ready += 1;
                Answer::Ready(body.first().copied().unwrap_or(b'?') as char)
            }
            b'N' | b'S' => continue,
            other => Answer::Tag(other as char),
        });
    }
}

/// The SQLSTATE of an `ErrorResponse` body.
pub fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default()
}

/// The proxy's byte-level connection and the oracle's, fed the same bytes.
pub struct Sides<P, O> {
    pub proxy: P,
    pub oracle: O,
}

impl<P, O> Sides<P, O>
where
    P: AsyncRead + AsyncWrite + Unpin,
    O: AsyncRead + AsyncWrite + Unpin,
{
    /// Sends `bytes` to both and checks that they answer alike; returns the answers.
    pub async fn same(
        &mut self,
        what: &str,
        bytes: &[u8],
        syncs: usize,
    ) -> anyhow::Result<Vec<Answer>> {
        self.compare(what, bytes, Until::Syncs(syncs)).await
    }

    /// [`Sides::same`] for a pipeline that ends with `Flush` and gets `answers` answers.
    pub async fn same_flushed(
        &mut self,
        what: &str,
        bytes: &[u8],
        answers: usize,
    ) -> anyhow::Result<()> {
        self.compare(what, bytes, Until::Answers(answers))
            .await
            .map(drop)
    }

    async fn compare(
        &mut self,
        what: &str,
        bytes: &[u8],
        until: Until,
    ) -> anyhow::Result<Vec<Answer>> {
        let want = transcript(&mut self.oracle, bytes, until).await?;
        let got = transcript(&mut self.proxy, bytes, until).await?;
        assert_eq!(got, want, "{what}: the proxy answered unlike PostgreSQL");
        Ok(got)
    }
}

/// A byte-level client of a proxy over `cluster` that trusts it (see [`trusting_proxy`]), and
/// one of a new, empty database `oracle` on the first shard's server, side by side. The proxy
/// is returned to be stopped.
pub async fn proxy_and_oracle(
    cluster: &TestCluster,
) -> anyhow::Result<(shardline::Proxy, Sides<TcpStream, UnixStream>)> {
    let first = &cluster.pg.servers()[0];
    let admin = crate::connect(&first.superuser_conninfo()).await?;
    admin
        .batch_execute("CREATE DATABASE oracle OWNER app")
        .await?;
    let proxy = trusting_proxy(cluster).await?;
    let sides = Sides {
        proxy: login(proxy.addr.port()).await?,
        oracle: login_socket(first, "app", "oracle").await?,
    };
    Ok((proxy, sides))
}
