//! One raw protocol connection from the proxy to a shard.
//!
//! The proxy logs in like any client (SCRAM-SHA-256, md5 or cleartext, via `postgres-protocol`),
//! remembers what the server reported (parameters, cancel key), and from then on moves framed
//! bytes. It also records the state the proxy put on the session — applied settings and
//! prepared statements — so a later client can reuse the connection without replaying them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustc_hash::FxHashSet;
use shardline_router::config::{Keepalive, Shard, ShardTls, ShardTlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::breaker::Breaker;
use super::held::HeldBy;
use crate::protocol::backend::{error_field, tag};
use crate::protocol::encoding::ClientEncoding;
use crate::protocol::{BufferedMessages, Frame, FrameError, FrameReader};
use crate::session::settings::Settings;
use crate::socket::{self, SocketRead, SocketWrite};

/// Largest message accepted from a shard (rows can be big; PostgreSQL caps a field at 1 GB).
const MAX_BACKEND_MESSAGE: usize = 1 << 30;

/// What the proxy needs to cancel a query running on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelKey {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// Where and as whom to connect.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// TLS towards the shard, its CA resolved to a path.
    pub tls: ShardTls,
}

impl BackendTarget {
    /// Where `user` (with `password` for the shard) reaches `shard`: the shard's own database,
    /// else `database`.
    pub fn new(shard: &Shard, user: &str, password: Option<&str>, database: &str) -> BackendTarget {
        BackendTarget {
            host: shard.host.clone(),
            port: shard.port,
            user: user.to_owned(),
            password: password.map(str::to_owned),
            database: shard
                .database
                .clone()
                .unwrap_or_else(|| database.to_owned()),
            tls: shard.tls.clone(),
        }
    }
}

impl std::fmt::Debug for BackendTarget {
    /// Everything but the password, which must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why a backend connection failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The shard answered with an `ErrorResponse` (kept whole so the client sees its SQLSTATE).
    #[error("the shard refused the connection: {}", refusal_text(.0))]
    Refused(Frame),
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    Timeout(String),
    #[error("shard asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(&'static str),
    #[error("shard asked for a password but shards.yaml has none for this user")]
    NoPassword,
    #[error("unexpected message {0:?} from the shard")]
    Unexpected(char),
    #[error("TLS to the shard failed: {0}")]
    Tls(String),
    /// A statement ran past `pool.query_timeout_ms`; it was cancelled on the shard and the
    /// connection is closed.
    #[error("the statement ran longer than query_timeout ({0:?}) and was cancelled on the shard")]
    QueryTimeout(Duration),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BackendError {
    /// Whether the shard itself answered (an `ErrorResponse` to the login: unknown database,
    /// wrong password, too many connections): it is reachable, so its breaker has no reason
    /// to stay open; every other failure means it could not be reached.
    pub fn shard_answered(&self) -> bool {
        matches!(self, BackendError::Refused(_))
    }
}

/// The message and SQLSTATE of a shard's `ErrorResponse` to a login, for logs and breakers.
fn refusal_text(frame: &Frame) -> String {
    let message = error_field(frame, b'M').unwrap_or("(no message)");
    let code = error_field(frame, b'C').unwrap_or("?????");
    format!("{message} (SQLSTATE {code})")
}

/// Encrypts a new connection as `target.tls` says: an `SSLRequest`, then the TLS handshake.
async fn secure(
    mut stream: TcpStream,
    target: &BackendTarget,
) -> Result<(SocketRead, SocketWrite), BackendError> {
    if target.tls.mode == ShardTlsMode::Disable {
        return Ok(socket::plain(stream));
    }
    let config = super::tls::client_config(&target.tls)
        .map_err(BackendError::Tls)?
        .ok_or_else(|| BackendError::Tls("no TLS configured".to_owned()))?;
    let name = super::tls::server_name(&target.host).map_err(BackendError::Tls)?;
    stream.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(BackendError::Tls(format!(
            "the shard does not accept TLS (it answered {:?} to SSLRequest); turn on ssl there or set its tls mode to disable",
            answer[0] as char
        )));
    }
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| BackendError::Tls(e.to_string()))?;
    Ok(socket::encrypted(tls))
}

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// A logged-in connection to a shard.
#[derive(Debug)]
pub struct Backend {
    reader: FrameReader<SocketRead>,
    writer: SocketWrite,
    /// Cancel key of the server process behind this connection.
    pub cancel_key: CancelKey,
    /// The client holding the connection right now, if any.
    pub held_by: HeldBy,
    /// Parameters the server reported at startup (`server_version`, `TimeZone`…).
    pub server_params: Vec<(String, String)>,
    /// Session settings the proxy applied with `SET`; `None` when unknown (after a rollback
    /// could have undone some), which forces a full reset before the next use.
    pub settings: Option<Settings>,
    /// Proxy-named prepared statements that exist on this connection (ids the proxy hands
    /// out, looked up at every `Bind`: Fx-hashed).
    pub prepared: FxHashSet<u64>,
    pub created: Instant,
    /// The serving thread that opened it ([`crate::threads`]).
    home: u16,
    /// Set when the connection can no longer be trusted; the pool drops it.
    pub broken: bool,
    /// The last thing the server said was `ReadyForQuery` idle: nothing is in flight and no
    /// transaction is open. Only such a connection may serve another client.
    pub idle: bool,
    /// Extended-protocol messages were sent since the last `Sync`: the server holds an
    /// implicit transaction open for them and answers nothing more until `Sync` or `Flush`
    /// ends the pipeline. Such a connection belongs to its client until then.
    pub unsynced: bool,
    /// The breaker of the shard's address, told when the shard answers or the connection
    /// breaks; `None` for a connection outside the pools (a probe).
    pub breaker: Option<Arc<Breaker>>,
    /// Longest a statement may run (`pool.query_timeout_ms`), set at each checkout.
    query_timeout: Option<Duration>,
    /// When the statement now running must have answered, under `query_timeout`.
    deadline: Option<tokio::time::Instant>,
    /// `ReadyForQuery` answers still to come for what was sent.
    cycles_due: u32,
    /// The length of the message [`Backend::next_message`] lent, until it is consumed.
    lent: usize,
}

impl crate::backend::slots::Homed for Backend {
    fn home(&self) -> u16 {
        self.home
    }
}

impl Backend {
    /// The `client_encoding` this backend reads and writes text in: the one the proxy set on
    /// it, or the server's default it reported at login.
    pub fn client_encoding(&self) -> ClientEncoding {
        let set = self
            .settings
            .as_ref()
            .and_then(|s| s.get("client_encoding"));
        let default = || {
            self.server_params
                .iter()
                .find(|(name, _)| name == "client_encoding")
                .map(|(_, value)| value)
        };
        set.or_else(default)
            .map_or(ClientEncoding::Utf8, |name| ClientEncoding::named(name))
    }

    /// Connects and logs in, all within `timeout`; `keepalive` is set on the socket.
    pub async fn connect(
        target: &BackendTarget,
        timeout: Duration,
        keepalive: Option<Keepalive>,
    ) -> Result<Backend, BackendError> {
        let addr_text = format!("{}:{}", target.host, target.port);
        match tokio::time::timeout(timeout, Backend::open(target, &addr_text, keepalive)).await {
            Err(_) => Err(BackendError::Timeout(addr_text)),
            Ok(result) => result,
        }
    }

    async fn open(
        target: &BackendTarget,
        addr_text: &str,
        keepalive: Option<Keepalive>,
    ) -> Result<Backend, BackendError> {
        let stream =
            TcpStream::connect(addr_text)
                .await
                .map_err(|source| BackendError::Connect {
                    addr: addr_text.to_owned(),
                    source,
                })?;
        stream.set_nodelay(true)?;
        if let Some(k) = keepalive {
            let params = socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            socket2::SockRef::from(&stream).set_tcp_keepalive(&params)?;
        }
        let addr = stream.peer_addr()?;
        let (read, writer) = secure(stream, target).await?;
        let mut backend = Backend {
            reader: FrameReader::new(read, MAX_BACKEND_MESSAGE),
            writer,
            cancel_key: CancelKey {
                addr,
                pid: 0,
                secret: 0,
            },
            held_by: HeldBy::default(),
            server_params: Vec::new(),
            settings: Some(Settings::new()),
            prepared: FxHashSet::default(),
            created: Instant::now(),
            home: crate::threads::home(),
            broken: false,
            idle: false,
            unsynced: false,
            breaker: None,
            query_timeout: None,
            deadline: None,
            cycles_due: 0,
            lent: 0,
        };
        backend.startup(target).await?;
        Ok(backend)
    }

    /// Prepares a connection for the client it was just checked out for: statements get
    /// `query_timeout` each, and nothing is owed from its last use (a pooled connection is
    /// idle).
    pub fn checked_out(&mut self, query_timeout: Option<Duration>) {
        self.query_timeout = query_timeout;
        self.deadline = None;
        self.cycles_due = 0;
    }

    /// Whether this connection to the shard is encrypted.
    pub fn is_tls(&self) -> bool {
        self.reader.get_ref().is_tls()
    }

    async fn startup(&mut self, target: &BackendTarget) -> Result<(), BackendError> {
        let mut buf = BytesMut::new();
        let params = [
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut buf)?;
        self.send(&buf).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.read().await?;
            match frame.tag() {
                tag::AUTHENTICATION => self.authenticate(&frame, target, &mut scram).await?,
                tag::PARAMETER_STATUS => {
                    if let Some((name, value)) = crate::protocol::backend::parameter(&frame) {
                        self.server_params.push((name.to_owned(), value.to_owned()));
                    }
                }
                tag::BACKEND_KEY_DATA => {
                    let body = frame.body();
                    if body.len() >= 8 {
                        self.cancel_key.pid =
                            i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        self.cancel_key.secret =
                            i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    }
                }
                tag::NOTICE_RESPONSE => {}
                tag::READY_FOR_QUERY => return Ok(()),
                tag::ERROR_RESPONSE => return Err(BackendError::Refused(frame)),
                other => return Err(BackendError::Unexpected(other as char)),
            }
        }
    }

    async fn authenticate(
        &mut self,
        frame: &Frame,
        target: &BackendTarget,
        scram: &mut Option<ScramSha256>,
    ) -> Result<(), BackendError> {
        let mut raw = BytesMut::from(&frame.bytes()[..]);
        let message = Message::parse(&mut raw)?.ok_or(BackendError::Unexpected('R'))?;
        let password = || target.password.as_deref().ok_or(BackendError::NoPassword);
        let mut out = BytesMut::new();
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(target.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut offered = false;
                while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)? {
                    offered |= m == SCRAM_SHA_256;
                }
                if !offered {
                    return Err(BackendError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                }
                let client =
                    ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out)?;
                *scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().ok_or(BackendError::Unexpected('R'))?;
                client.update(body.data())?;
                frontend::sasl_response(client.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram.as_mut().ok_or(BackendError::Unexpected('R'))?;
                client.finish(body.data())?;
                return Ok(());
            }
            _ => return Err(BackendError::UnsupportedAuth("GSS, SSPI or Kerberos")),
        }
        self.send(&out).await
    }

    /// True when an idle connection has been closed or sent something unprompted (a shard
    /// shutting down sends a FATAL error and closes): such a connection must not be reused.
    pub fn closed_while_idle(&mut self) -> bool {
        self.reader.idle_input(|half, buf| half.try_read(buf))
    }

    /// The shard's answers buffered whole (see [`FrameReader::buffered_messages`]).
    pub fn buffered_messages(&self) -> BufferedMessages<'_> {
        self.reader.buffered_messages()
    }

    /// The first `len` buffered bytes.
    pub fn buffered(&self, len: usize) -> &[u8] {
        self.reader.buffered(len)
    }

    /// Drops the first `len` buffered bytes, once relayed; `ready` is the status of the
    /// `ReadyForQuery` they end with, if they do.
    pub fn consume_relayed(&mut self, len: usize, ready: Option<u8>) {
        self.reader.consume(len);
        if ready.is_some() {
            self.ready(ready);
        }
    }

    /// Reads the next message from the shard. Past the statement's `query_timeout` the
    /// statement is cancelled on the shard and the connection marked broken.
    pub async fn read(&mut self) -> Result<Frame, BackendError> {
        let frame = match self.deadline {
            None => self.reader.read().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, self.reader.read()).await {
                Ok(frame) => frame,
                Err(_) => return Err(self.timed_out()),
            },
        };
        match frame {
            Ok(frame) => {
                self.received(frame.bytes());
                Ok(frame)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The shard's next message, read where it lies in the buffer (waiting for it as
    /// [`Backend::read`] does); [`Backend::consume_message`] drops it once handled. Relaying
    /// an answer this way costs no reference count on the buffer.
    pub async fn next_message(&mut self) -> Result<&[u8], BackendError> {
        let len = self.await_message().await?;
        self.lent = len;
        Ok(self.reader.buffered(len))
    }

    /// Waits until the shard's next message is buffered whole (as [`Backend::read`] does) and
    /// returns its length, without lending it.
    pub async fn await_message(&mut self) -> Result<usize, BackendError> {
        let waited = match self.deadline {
            None => self.reader.await_message().await,
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, self.reader.await_message()).await {
                    Ok(waited) => waited,
                    Err(_) => return Err(self.timed_out()),
                }
            }
        };
        waited.map_err(|e| self.failed(e))
    }

    /// Drops the message [`Backend::next_message`] lent, noting what it says of the
    /// connection.
    pub fn consume_message(&mut self) {
        let len = std::mem::take(&mut self.lent);
        let message = self.reader.buffered(len);
        if message.first() == Some(&tag::READY_FOR_QUERY) {
            self.ready(message.get(5).copied());
        }
        self.reader.consume(len);
    }

    /// Notes what a message read from the shard (`message`, whole) says of the connection.
    fn received(&mut self, message: &[u8]) {
        if message.first() == Some(&tag::READY_FOR_QUERY) {
            self.ready(message.get(5).copied());
        }
    }

    /// The shard said `ReadyForQuery` with transaction status `status`.
    fn ready(&mut self, status: Option<u8>) {
        self.idle = status == Some(b'I');
        self.cycles_due = self.cycles_due.saturating_sub(1);
        // The next statement sent in the same write starts its own clock.
        self.deadline = match self.query_timeout {
            Some(limit) if self.cycles_due > 0 => Some(tokio::time::Instant::now() + limit),
            _ => None,
        };
        if let Some(breaker) = &self.breaker {
            breaker.succeeded();
        }
    }

    /// The connection failed while reading (`error`).
    fn failed(&mut self, error: FrameError) -> BackendError {
        self.lost(&error.to_string());
        error.into()
    }

    /// Writes bytes (one or many messages) to the shard.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.idle = false;
        let sent = sent(bytes);
        if let Some(unsynced) = sent.unsynced {
            self.unsynced = unsynced;
        }
        self.cycles_due += sent.cycles;
        if self.deadline.is_none() {
            if let Some(limit) = self.query_timeout {
                self.deadline = Some(tokio::time::Instant::now() + limit);
            }
        }
        let written = self.writer.send_all(bytes).await;
        if let Err(e) = &written {
            self.lost(&e.to_string());
        }
        Ok(written?)
    }

    /// The connection failed under a statement: it is not reused, and the breaker hears of it.
    fn lost(&mut self, why: &str) {
        self.broken = true;
        if let Some(breaker) = &self.breaker {
            breaker.failed(&format!("connection lost: {why}"));
        }
    }

    /// The statement ran out of time: cancel it on the shard (the connection is dropped after
    /// this, and PostgreSQL would otherwise run the statement to its end) and give up the
    /// connection.
    fn timed_out(&mut self) -> BackendError {
        let limit = self.query_timeout.unwrap_or_default();
        self.lost(&format!("no answer within query_timeout ({limit:?})"));
        let key = self.cancel_key;
        tokio::spawn(async move {
            if let Err(e) = crate::cancel::send_cancel(&key).await {
                tracing::warn!(error = %e, backend = %key.addr, "could not cancel a statement past query_timeout");
            }
        });
        BackendError::QueryTimeout(limit)
    }
}

/// What sending `bytes` (whole messages back to back) does to the conversation.
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    /// Whether the backend is inside an extended-protocol pipeline (messages sent, no `Sync`
    /// yet) afterwards, or `None` when they do not change that: a `Flush` alone starts
    /// nothing, and COPY data, `CopyDone` and `CopyFail` continue whatever was started.
    unsynced: Option<bool>,
    /// `ReadyForQuery` answers they will get (one per `Query`, `Sync` and `FunctionCall`).
    cycles: u32,
}

fn sent(bytes: &[u8]) -> Sent {
    let mut at = 0;
    let mut sent = Sent {
        unsynced: None,
        cycles: 0,
    };
    while let Some(header) = bytes.get(at..at + 5) {
        match header[0] {
            b'P' | b'B' | b'D' | b'E' | b'C' => sent.unsynced = Some(true),
            b'S' | b'Q' | b'F' => {
                sent.unsynced = Some(false);
                sent.cycles += 1;
            }
            _ => {}
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        at += 1 + len;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::sent;

    #[test]
    fn pipeline_state_walks_message_lengths() {
        let parse = [b'P', 0, 0, 0, 8, 0, 1, 2, 3];
        let sync = [b'S', 0, 0, 0, 4];
        let flush = [b'H', 0, 0, 0, 4];
        let query = [b'Q', 0, 0, 0, 5, 0];
        let join = |parts: &[&[u8]]| parts.concat();
        let unsynced_after = |bytes: &[u8]| sent(bytes).unsynced;
        assert_eq!(unsynced_after(&join(&[&parse, &sync])), Some(false));
        assert_eq!(unsynced_after(&parse), Some(true));
        assert_eq!(unsynced_after(&join(&[&parse, &flush])), Some(true));
        assert_eq!(unsynced_after(&flush), None, "a Flush alone starts nothing");
        assert_eq!(unsynced_after(&join(&[&sync, &flush])), Some(false));
        assert_eq!(unsynced_after(&[]), None);
        assert_eq!(sent(&join(&[&query, &parse, &sync, &query])).cycles, 3);
        assert_eq!(sent(&join(&[&parse, &flush])).cycles, 0);
    }
}
