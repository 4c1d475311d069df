//! A client connection from accept to login: TLS negotiation ([`negotiate`]: `SSLRequest`,
//! a direct TLS handshake, GSS declined), cancel requests, the startup packet,
//! authentication, and the greeting a server sends (`ParameterStatus`, `BackendKeyData`,
//! `ReadyForQuery`), all within `login_timeout_ms`. Then the session takes over, or the admin
//! console for an admin user asking for database `shardline`.

pub mod auth;
mod negotiate;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{Either, FutureExt};
use shardline_router::config::TlsMode;
use shardline_router::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::admin;
use crate::backend::conn::BackendError;
use crate::backend::pool::CheckoutError;
use crate::cancel::Registration;
use crate::clients::{Admission, ClientKind, Peer};
use crate::context::ProxyContext;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::encoding::ClientEncoding;
use crate::protocol::{FrameError, FrameReader};
use crate::session::settings::{self, Settings, REPORTED};
use crate::session::{ClientOutput, Identity, Session, SessionEnd};
use crate::socket::SocketRead;
use crate::tls::Offer;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 3 << 16;

/// Serves one accepted connection to the end (a shutdown aborts the task; see
/// `server::accept`).
///
/// This future lives as long as the client stays connected, so what it keeps is what each
/// idle client costs: the login's state is gone once it is over (a function of its own), and
/// the served client is one future that holds its session once ([`Client::serve`]).
pub async fn serve(ctx: Arc<ProxyContext>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let Some(client) = login_within_limit(&ctx, stream, &peer).await else {
        return;
    };
    client.serve(ctx, peer).await;
}

/// Logs the connection in within `login_timeout_ms`; `None` when it did not (said in the
/// log) or was a cancel request.
async fn login_within_limit(
    ctx: &Arc<ProxyContext>,
    stream: TcpStream,
    peer: &str,
) -> Option<Client> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let limit = ctx.snapshot().config.login_timeout;
    // Boxed, like every request's work: a logged-in session keeps only its own state.
    match tokio::time::timeout(limit, Box::pin(open(ctx, stream))).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            ctx.clients.login_failed();
            tracing::info!(%peer, error = %e, "client login failed");
            None
        }
        Err(_) => {
            ctx.clients.login_failed();
            tracing::info!(%peer, timeout = ?limit, "closed a connection that did not log in within login_timeout_ms");
            None
        }
    }
}

/// A connection that logged in: its two halves and who is on it.
struct Client {
    input: FrameReader<SocketRead>,
    out: ClientOutput,
    logged_in: LoggedIn,
}

impl Client {
    /// Serves the client until it disconnects: listed among the clients, as a session of the
    /// shards or on the admin console.
    ///
    /// Built before it is awaited, so the session lives once, inside its own future, and what
    /// happens after it (the log line, the cancel key and the client list entry going) is a
    /// closure run on its result rather than an `async` block that would keep the session a
    /// second time.
    fn serve(self, ctx: Arc<ProxyContext>, peer: String) -> impl Future<Output = ()> + Send {
        let Client {
            input,
            out,
            logged_in,
        } = self;
        let from = Peer {
            address: peer.clone(),
            tls: input.get_ref().is_tls(),
        };
        match logged_in {
            LoggedIn::App {
                identity,
                cancel,
                admission,
            } => {
                let tls = from.tls;
                let listed = ctx.clients.add(
                    from,
                    identity.user.clone(),
                    identity.database.clone(),
                    ClientKind::App,
                    Some(cancel.pid),
                    out.deadlock_flag(),
                );
                tracing::info!(%peer, user = %identity.user, database = %identity.database, tls, "client logged in");
                let session = Session::new(ctx, input, out, identity, cancel);
                Either::Left(session.run().map(move |end| {
                    match end {
                        Ok(()) | Err(SessionEnd::Disconnected) => {
                            tracing::info!(%peer, "client disconnected")
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "client session ended"),
                    }
                    drop((listed, admission));
                }))
            }
            LoggedIn::Console { user } => {
                let listed = ctx.clients.add(
                    from,
                    user.clone(),
                    admin::DATABASE.to_owned(),
                    ClientKind::Console,
                    None,
                    out.deadlock_flag(),
                );
                tracing::info!(%peer, %user, "admin console login");
                Either::Right(Box::pin(admin::serve(ctx, input, out)).map(move |end| {
                    match end {
                        Ok(()) => tracing::info!(%peer, "admin console disconnected"),
                        Err(e) => tracing::warn!(%peer, error = %e, "admin console session ended"),
                    }
                    drop(listed);
                }))
            }
        }
    }
}

/// Negotiates TLS and logs the client in; `Ok(None)` for a cancel request.
async fn open(ctx: &Arc<ProxyContext>, stream: TcpStream) -> Result<Option<Client>, LoginError> {
    let offer = ctx.tls.offer();
    let negotiated = negotiate::negotiate(stream, &offer).await?;
    let limit = ctx.snapshot().config.max_message_bytes as usize;
    let mut input = FrameReader::with_prefix(negotiated.read, limit, &negotiated.prefix);
    let mut out = ClientOutput::new(negotiated.write);
    let client_name = negotiated.client_name.as_deref();
    let logged_in = login(ctx, &mut input, &mut out, &offer, client_name).await?;
    Ok(logged_in.map(|logged_in| Client {
        input,
        out,
        logged_in,
    }))
}

/// A completed login.
enum LoggedIn {
    /// A client of the shards, with its proxy cancel key.
    App {
        identity: Identity,
        cancel: Registration,
        /// Its place under `max_client_connections`, held while it is connected.
        admission: Admission,
    },
    /// An admin user on the console.
    Console { user: String },
}

/// Why a login did not complete.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("refused: {0}")]
    Refused(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

async fn refuse(out: &mut ClientOutput, code: &str, message: &str) -> LoginError {
    auth::reject(out.stream(), code, message).await;
    LoginError::Refused(message.to_owned())
}

/// Runs the startup phase. `Ok(None)` means the connection was a cancel request.
async fn login(
    ctx: &Arc<ProxyContext>,
    input: &mut FrameReader<SocketRead>,
    out: &mut ClientOutput,
    offer: &Offer,
    client_name: Option<&str>,
) -> Result<Option<LoggedIn>, LoginError> {
    let packet = loop {
        let packet = match input.read_startup().await {
            Ok(p) => p,
            Err(FrameError::BadLength(len)) => {
                let text = format!("invalid startup packet length {len}");
                return Err(refuse(out, sqlstate::PROTOCOL_VIOLATION, &text).await);
            }
            Err(e) => return Err(e.into()),
        };
        let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                out.stream().write_all(b"N").await?;
                out.stream().flush().await?;
            }
            CANCEL_REQUEST if packet.len() >= 12 => {
                let pid = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
                let secret = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                ctx.cancels.cancel(ctx.pools.backends(), pid, secret).await;
                return Ok(None);
            }
            _ => break packet,
        }
    };
    let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
    if code >> 16 != 3 {
        let text = format!(
            "unsupported frontend protocol {}.{}: shardline speaks 3.0",
            code >> 16,
            code & 0xffff
        );
        return Err(refuse(out, sqlstate::PROTOCOL_VIOLATION, &text).await);
    }
    let Some(params) = parse_startup(&packet[4..]) else {
        return Err(refuse(
            out,
            sqlstate::PROTOCOL_VIOLATION,
            "invalid startup packet layout",
        )
        .await);
    };
    if code != PROTOCOL_3 {
        // Newer minor versions (3.2): answer with the version we speak, as PostgreSQL does,
        // before authentication (which writes to the socket directly).
        out.push(&negotiate_protocol(&params)).await?;
        out.flush().await?;
    }
    let Some(user_name) = params.get("user").cloned() else {
        return Err(refuse(
            out,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
        .await);
    };
    let database = params
        .get("database")
        .cloned()
        .unwrap_or_else(|| user_name.clone());
    if params.contains_key("replication") {
        return Err(refuse(out, sqlstate::FEATURE_NOT_SUPPORTED, "replication connections are not supported through shardline; connect to a shard directly").await);
    }
    if offer.mode == TlsMode::Require && !input.get_ref().is_tls() {
        let text = format!("shardline accepts only encrypted connections (tls mode require in shards.yaml); connect with sslmode=require, verify-ca or verify-full (user \"{user_name}\")");
        return Err(refuse(out, sqlstate::INVALID_AUTHORIZATION, &text).await);
    }

    let loaded = ctx.snapshot();
    let Some(user) = loaded.config.user(&user_name).cloned() else {
        let text = format!("password authentication failed for user \"{user_name}\"");
        return Err(refuse(out, sqlstate::INVALID_PASSWORD, &text).await);
    };
    let channel = auth::Channel {
        server_certificate: offer
            .certificate
            .as_deref()
            .filter(|_| input.get_ref().is_tls()),
        client_name,
    };
    let authenticated =
        auth::authenticate(input, out.stream(), &user, &loaded.credentials, channel).await;
    if let Err(e) = authenticated {
        return Err(refuse(out, e.sqlstate, &e.message).await);
    }
    match (user.admin, database == admin::DATABASE) {
        (true, true) => {
            admin::greet(out).await?;
            return Ok(Some(LoggedIn::Console { user: user_name }));
        }
        (false, true) => {
            let text = format!("user \"{user_name}\" may not use the shardline admin console; connect as a user marked `admin: true` in shards.yaml");
            return Err(refuse(out, sqlstate::INVALID_AUTHORIZATION, &text).await);
        }
        (true, false) => {
            let text = format!("user \"{user_name}\" is an admin user and may only connect to database \"{}\" (the admin console)", admin::DATABASE);
            return Err(refuse(out, sqlstate::INVALID_AUTHORIZATION, &text).await);
        }
        (false, false) => {}
    }
    let max = loaded.config.max_client_connections;
    let Some(admission) = ctx.clients.admit(max) else {
        let text = format!("sorry, too many clients already: shardline serves at most {max} (max_client_connections in shards.yaml); admins can still reach the console");
        return Err(refuse(out, sqlstate::TOO_MANY_CONNECTIONS, &text).await);
    };

    if let Some(served) = served_database(&loaded.config).filter(|db| *db != database) {
        let text = format!("database \"{database}\" does not exist; shardline serves database \"{served}\" (the database its default shard names in shards.yaml)");
        return Err(refuse(out, sqlstate::INVALID_CATALOG_NAME, &text).await);
    }
    // Check the database exists (and warm the pool) on the default shard, and learn the server
    // parameters to report.
    let server_params = match probe_default_shard(ctx, &user_name, &database).await {
        Ok(params) => params,
        Err(Probe::Refused(frame)) => {
            out.push(&frame).await?;
            out.flush().await?;
            return Err(LoginError::Refused(
                "the default shard refused the login".to_owned(),
            ));
        }
        Err(Probe::Failed(text)) => return Err(refuse(out, sqlstate::CANNOT_CONNECT, &text).await),
    };

    let startup_settings = Settings::from(ctx.shared_settings(settings::from_startup(&params)));
    let mut reported: BTreeMap<String, String> = server_params
        .into_iter()
        .filter(|(name, _)| REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name)))
        .collect();
    for (name, value) in &params {
        if let Some(canonical) = REPORTED.iter().find(|r| r.eq_ignore_ascii_case(name)) {
            // PostgreSQL reports a DateStyle merged with the server's (`ISO` → `ISO, MDY`).
            let server = reported.get(*canonical).map(String::as_str);
            let value = match (*canonical, server) {
                ("DateStyle", Some(server)) => {
                    settings::merged_datestyle(value, server).unwrap_or_else(|| value.clone())
                }
                _ => value.clone(),
            };
            reported.insert((*canonical).to_owned(), value);
        }
    }
    for (name, value) in &reported {
        out.push(&msg::parameter_status(name, value)).await?;
    }
    let cancel = ctx.cancels.register();
    out.push(&msg::backend_key_data(cancel.pid, cancel.secret))
        .await?;
    out.push(&msg::ready_for_query(b'I')).await?;
    out.flush().await?;
    let pool_mode = user.pool_mode.unwrap_or(loaded.config.pool.mode);
    let reported_encoding = reported
        .get("client_encoding")
        .map_or(ClientEncoding::Utf8, |name| ClientEncoding::named(name));
    let identity = Identity {
        user: user_name,
        database,
        pool_mode,
        startup_settings,
        reported: ctx.shared_settings(reported),
        reported_encoding,
    };
    Ok(Some(LoggedIn::App {
        identity,
        cancel,
        admission,
    }))
}

/// The one database name clients may ask for when the default shard names its database in
/// `shards.yaml` (every client then reaches that database, whatever it asked for, so a name
/// that does not match is a mistake to report at login, as PostgreSQL reports it). `None` when
/// shards use the database the client asks for.
fn served_database(config: &Config) -> Option<&str> {
    config
        .shards
        .get(config.default_shard)
        .and_then(|shard| shard.database.as_deref())
}

enum Probe {
    Refused(Bytes),
    Failed(String),
}

/// Checks out a connection to the default shard to validate user and database.
async fn probe_default_shard(
    ctx: &ProxyContext,
    user: &str,
    database: &str,
) -> Result<Vec<(String, String)>, Probe> {
    let loaded = ctx.snapshot();
    let config = &loaded.config;
    let shard = config
        .shards
        .get(config.default_shard)
        .ok_or_else(|| Probe::Failed("no shards configured".into()))?;
    let password = config.user(user).and_then(|u| u.backend_password());
    let target = crate::backend::conn::BackendTarget::new(shard, user, password, database);
    if let Some(params) = ctx.server_params(&target) {
        return Ok(params);
    }
    match ctx.pools.checkout(&target, &config.pool).await {
        Ok(conn) => {
            let params = conn.server_params.clone();
            ctx.remember_server_params(target, params.clone());
            Ok(params)
        }
        Err(CheckoutError::Backend(BackendError::Refused(frame))) => {
            Err(Probe::Refused(msg::error_naming_shard(&frame, &shard.name)))
        }
        Err(e @ CheckoutError::Exhausted { .. }) => Err(Probe::Refused(msg::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            &format!("shard {}: {e}", shard.name),
        ))),
        Err(e) => Err(Probe::Failed(format!(
            "could not connect to shard {} at {}:{}: {e}",
            shard.name, shard.host, shard.port
        ))),
    }
}

/// Startup parameters: NUL-terminated name/value pairs ending with an empty name.
fn parse_startup(body: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut fields = body.split(|b| *b == 0);
    loop {
        let name = fields.next()?;
        if name.is_empty() {
            return Some(params);
        }
        let value = fields.next()?;
        params.insert(
            String::from_utf8(name.to_vec()).ok()?,
            String::from_utf8(value.to_vec()).ok()?,
        );
    }
}

/// `NegotiateProtocolVersion`: we speak 3.0 and none of the `_pq_.` options.
fn negotiate_protocol(params: &BTreeMap<String, String>) -> Bytes {
    use bytes::BufMut;
    let options: Vec<&String> = params.keys().filter(|k| k.starts_with("_pq_.")).collect();
    let mut body = bytes::BytesMut::new();
    body.put_i32(0);
    body.put_i32(options.len() as i32);
    for o in options {
        body.put_slice(o.as_bytes());
        body.put_u8(0);
    }
    let mut buf = bytes::BytesMut::new();
    buf.put_u8(b'v');
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(&body);
    buf.freeze()
}
#[cfg(test)]
mod tests {
    /// Idle clients are cheap only if a connection's task is: the work of each request (and
    /// the login) runs in a future of its own, so the task holds little more than the session.
    #[tokio::test]
    async fn a_connection_task_stays_small() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stream = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let config = shardline_router::Config::from_yaml(
            "shards:\n  - name: a\n    host: 127.0.0.1\n    port: 1\nusers:\n  - name: app\n    password: app\n",
        )?;
        let ctx = crate::context::ProxyContext::new(
            config,
            crate::reload::ConfigSource::in_memory(),
            crate::tls::ServerTls::disabled(),
        );
        let task = super::serve(ctx, stream);
        let size = std::mem::size_of_val(&task);
        assert!(size < 1600, "a connection's future takes {size} bytes");
        Ok(())
    }
}
