//! Before the startup packet: whether the connection is encrypted. A client asks with an
//! `SSLRequest` (answered `S` and a TLS handshake when the proxy offers TLS, `N` otherwise), or
//! opens with a TLS handshake at once (PostgreSQL 17's `sslnegotiation=direct`, which must
//! name ALPN protocol `postgresql`); a `GSSENCRequest` is always answered `N`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use x509_certificate::X509Certificate;

use super::{LoginError, GSSENC_REQUEST, SSL_REQUEST};
use crate::socket::{self, SocketRead, SocketWrite};
use crate::tls::{Offer, ALPN_POSTGRESQL};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A connection whose encryption is settled.
pub(super) struct Negotiated {
    pub(super) read: SocketRead,
    pub(super) write: SocketWrite,
    /// The bytes of the first packet already read (the start of the startup or cancel packet
    /// on a clear-text connection).
    pub(super) prefix: Vec<u8>,
    /// The common name of the client certificate TLS verified, if the client sent one.
    pub(super) client_name: Option<String>,
}

/// Settles encryption.
pub(super) async fn negotiate(
    mut stream: TcpStream,
    offer: &Offer,
) -> Result<Negotiated, LoginError> {
    loop {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if first[0] == TLS_HANDSHAKE {
            return direct(stream, offer).await.map(encrypted);
        }
        // Requests to encrypt are 8 bytes long; anything else is the startup (or cancel)
        // packet, whose length the session's reader checks.
        let mut head = [0u8; 8];
        stream.read_exact(&mut head[..4]).await?;
        let length = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if length != 8 {
            return Ok(clear_text(stream, head[..4].to_vec()));
        }
        stream.read_exact(&mut head[4..]).await?;
        let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        match code {
            SSL_REQUEST => {
                let Some(acceptor) = offer.acceptor.clone() else {
                    stream.write_all(b"N").await?;
                    continue;
                };
                stream.write_all(b"S").await?;
                // Anything the client sent after its SSLRequest would now be read as part of
                // the handshake: bytes injected in clear text cannot reach the session.
                let tls = acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| LoginError::Tls(e.to_string()))?;
                return Ok(encrypted(tls));
            }
            GSSENC_REQUEST => stream.write_all(b"N").await?,
            _ => return Ok(clear_text(stream, head.to_vec())),
        }
    }
}

/// A connection that opened with a TLS handshake.
async fn direct(stream: TcpStream, offer: &Offer) -> Result<TlsStream<TcpStream>, LoginError> {
    let Some(acceptor) = offer.acceptor.clone() else {
        return Err(LoginError::Tls(
            "a direct TLS connection, but TLS is off (tls: in shards.yaml)".to_owned(),
        ));
    };
    let tls = acceptor
        .accept(stream)
        .await
        .map_err(|e| LoginError::Tls(e.to_string()))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(LoginError::Tls(
            "a direct TLS connection must name ALPN protocol \"postgresql\"".to_owned(),
        ));
    }
    Ok(tls)
}

/// A clear-text connection whose first `prefix` bytes were read.
fn clear_text(stream: TcpStream, prefix: Vec<u8>) -> Negotiated {
    let (read, write) = socket::plain(stream);
    Negotiated {
        read,
        write,
        prefix,
        client_name: None,
    }
}

/// An encrypted connection, with the name on the client's certificate.
fn encrypted(tls: TlsStream<TcpStream>) -> Negotiated {
    let client_name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| X509Certificate::from_der(der.as_ref()).ok())
        .and_then(|cert| cert.subject_common_name());
    let (read, write) = socket::encrypted(tls);
    Negotiated {
        read,
        write,
        prefix: Vec::new(),
        client_name,
    }
}
