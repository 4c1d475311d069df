//! Client authentication: SCRAM-SHA-256 (pgwire's sans-I/O server state machine), md5 and
//! trust, per user as `shards.yaml` says. Over TLS, SCRAM-SHA-256-PLUS is offered too: its
//! `tls-server-end-point` channel binding ties the password proof to the certificate this
//! connection was shown, so a man in the middle with another certificate cannot relay it.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use pgwire::api::auth::sasl::scram::{
    gen_salted_password, ScramSecret, ScramServerAuth, SCRAM_ITERATIONS,
};
use shardline_router::config::{AuthMethod, Config, User};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::{Frame, FrameReader};
use crate::socket::SocketRead;

/// SCRAM material for one user, derived once per config load (PBKDF2 is deliberately slow).
#[derive(Clone)]
enum ScramMaterial {
    Salted {
        salt: Vec<u8>,
        salted_password: Vec<u8>,
    },
    Verifier {
        salt: Vec<u8>,
        iterations: usize,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
}

impl ScramMaterial {
    fn secret(&self) -> ScramSecret {
        match self.clone() {
            ScramMaterial::Salted {
                salt,
                salted_password,
            } => ScramSecret::SaltedPassword {
                salt,
                salted_password,
            },
            ScramMaterial::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            } => ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            },
        }
    }

    /// Parses a `pg_authid`-style verifier: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    fn from_verifier(text: &str) -> Option<ScramMaterial> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(ScramMaterial::Verifier {
            salt: STANDARD.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        })
    }
}

/// Credentials of every configured user, ready for logins.
#[derive(Clone, Default)]
pub struct Credentials {
    scram: HashMap<String, ScramMaterial>,
}

impl Credentials {
    /// Precomputes SCRAM material for the users of `config`.
    pub fn from_config(config: &Config) -> Credentials {
        let mut scram = HashMap::new();
        for user in &config.users {
            let material = match (&user.scram_verifier, &user.password) {
                (Some(v), _) => ScramMaterial::from_verifier(v),
                (None, Some(password)) => {
                    let salt: [u8; 16] = rand::random();
                    Some(ScramMaterial::Salted {
                        salted_password: gen_salted_password(password, &salt, SCRAM_ITERATIONS),
                        salt: salt.to_vec(),
                    })
                }
                (None, None) => None,
            };
            if let Some(m) = material {
                scram.insert(user.name.clone(), m);
            }
        }
        Credentials { scram }
    }
}

/// Why a login failed; the message is what the client is told.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthFailed {
    pub sqlstate: &'static str,
    pub message: String,
}

fn failed(user: &str) -> AuthFailed {
    AuthFailed {
        sqlstate: sqlstate::INVALID_PASSWORD,
        message: format!("password authentication failed for user \"{user}\""),
    }
}

fn protocol(message: &str) -> AuthFailed {
    AuthFailed {
        sqlstate: sqlstate::PROTOCOL_VIOLATION,
        message: message.to_owned(),
    }
}

/// What TLS established about a connection, as authentication uses it (all `None` in clear
/// text).
#[derive(Debug, Default, Clone, Copy)]
pub struct Channel<'a> {
    /// The certificate chain (PEM) the client was shown: SCRAM-SHA-256-PLUS binds to it.
    pub server_certificate: Option<&'a [u8]>,
    /// The common name of the client certificate TLS verified, if the client sent one.
    pub client_name: Option<&'a str>,
}

/// Runs the authentication exchange for `user`; on success `AuthenticationOk` has been sent.
pub async fn authenticate<W>(
    reader: &mut FrameReader<SocketRead>,
    writer: &mut W,
    user: &User,
    credentials: &Credentials,
    channel: Channel<'_>,
) -> Result<(), AuthFailed>
where
    W: AsyncWrite + Unpin,
{
    match user.auth {
        AuthMethod::Trust => {}
        AuthMethod::Cert if channel.client_name == Some(user.name.as_str()) => {}
        AuthMethod::Cert => {
            return Err(AuthFailed {
                sqlstate: sqlstate::INVALID_AUTHORIZATION,
                message: format!("certificate authentication failed for user \"{}\": connect over TLS with a client certificate, signed by a CA in tls.client_ca, whose common name is the user name", user.name),
            })
        }
        AuthMethod::Md5 => md5(reader, writer, user).await?,
        AuthMethod::ScramSha256 => {
            let material = credentials
                .scram
                .get(&user.name)
                .ok_or_else(|| failed(&user.name))?;
            scram(reader, writer, &user.name, material, channel.server_certificate).await?;
        }
    }
    send(writer, &auth_message(0, &[])).await
}

async fn md5<W>(
    reader: &mut FrameReader<SocketRead>,
    writer: &mut W,
    user: &User,
) -> Result<(), AuthFailed>
where
    W: AsyncWrite + Unpin,
{
    let salt: [u8; 4] = rand::random();
    send(writer, &auth_message(5, &salt)).await?;
    let answer = password_message(reader).await?;
    let password = user.password.as_deref().ok_or_else(|| failed(&user.name))?;
    let inner = hex(&Md5::digest(format!("{password}{}", user.name).as_bytes()));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    let expected = format!("md5{}", hex(&outer.finalize()));
    let given = answer.body().strip_suffix(&[0]).unwrap_or(answer.body());
    if given == expected.as_bytes() {
        Ok(())
    } else {
        Err(failed(&user.name))
    }
}

async fn scram<W>(
    reader: &mut FrameReader<SocketRead>,
    writer: &mut W,
    user: &str,
    material: &ScramMaterial,
    certificate: Option<&[u8]>,
) -> Result<(), AuthFailed>
where
    W: AsyncWrite + Unpin,
{
    let mut server = ScramServerAuth::new();
    let bound = certificate.is_some_and(|pem| server.configure_certificate(pem).is_ok());
    let mut mechanisms = BytesMut::new();
    if bound {
        mechanisms.put_slice(SCRAM_PLUS);
        mechanisms.put_u8(0);
    }
    mechanisms.put_slice(SCRAM);
    mechanisms.put_slice(b"\0\0");
    send(writer, &auth_message(10, &mechanisms)).await?;

    // SASLInitialResponse: mechanism name, then length-prefixed client-first message.
    let initial = password_message(reader).await?;
    let body = initial.body();
    let name_end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| protocol("malformed SASLInitialResponse"))?;
    let mechanism = &body[..name_end];
    let plus = mechanism == SCRAM_PLUS;
    if !(mechanism == SCRAM || (plus && bound)) {
        return Err(protocol(if bound {
            "only SCRAM-SHA-256 and SCRAM-SHA-256-PLUS are supported"
        } else {
            "only SCRAM-SHA-256 is supported (SCRAM-SHA-256-PLUS needs a TLS connection)"
        }));
    }
    let data = body
        .get(name_end + 5..)
        .ok_or_else(|| protocol("malformed SASLInitialResponse"))?;
    if plus && !data.starts_with(b"p=") {
        return Err(protocol(
            "SCRAM-SHA-256-PLUS was chosen without binding the channel",
        ));
    }
    let (server_first, waiting) = server
        .on_client_first_message_with_secret(data, material.secret())
        .map_err(|e| protocol(&format!("invalid SCRAM client-first message: {e}")))?;
    send(writer, &auth_message(11, server_first.as_bytes())).await?;

    let response = password_message(reader).await?;
    let server_final = waiting
        .on_client_final_message(response.body())
        .map_err(|_| failed(user))?;
    send(writer, &auth_message(12, server_final.as_bytes())).await
}

/// The SASL mechanisms offered: plain SCRAM, and SCRAM bound to the TLS channel.
const SCRAM: &[u8] = b"SCRAM-SHA-256";
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// Reads the client's next `p` message (PasswordMessage / SASL responses).
async fn password_message(reader: &mut FrameReader<SocketRead>) -> Result<Frame, AuthFailed> {
    let during = |e: &dyn std::fmt::Display| protocol(&format!("during authentication: {e}"));
    // Many clients may be logging in at once: none holds a buffer while the proxy waits.
    reader.await_input().await.map_err(|e| during(&e))?;
    let frame = reader.read().await.map_err(|e| during(&e))?;
    if frame.tag() != b'p' {
        return Err(protocol(
            "expected a password message during authentication",
        ));
    }
    Ok(frame)
}

/// `AuthenticationRequest` with sub-code and payload.
fn auth_message(code: i32, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(9 + payload.len());
    buf.put_u8(b'R');
    buf.put_i32(8 + payload.len() as i32);
    buf.put_i32(code);
    buf.put_slice(payload);
    buf.freeze()
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), AuthFailed> {
    writer
        .write_all(bytes)
        .await
        .map_err(|e| protocol(&e.to_string()))?;
    writer.flush().await.map_err(|e| protocol(&e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends a FATAL error for a failed login.
pub async fn reject<W: AsyncWrite + Unpin>(writer: &mut W, sqlstate: &str, message: &str) {
    let _ = writer.write_all(&msg::fatal(sqlstate, message)).await;
    let _ = writer.flush().await;
}
