//! TLS towards shards, as libpq's `sslmode` does it: `require` encrypts without checking the
//! shard's certificate, `verify-ca` checks that it chains to the configured CA, `verify-full`
//! also that it names the shard's host.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use shardline_router::config::{ShardTls, ShardTlsMode};

/// The rustls client config for connections to a shard with `tls` (its `ca` already resolved
/// to a path); `None` for `disable`.
pub fn client_config(tls: &ShardTls) -> Result<Option<Arc<ClientConfig>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let roots = || -> Result<Arc<RootCertStore>, String> {
        let path = tls.ca.as_deref().unwrap_or_default();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(Path::new(path))
            .map_err(|e| format!("cannot read the shards' CA {path}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("cannot read the shards' CA {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the shards' CA {path} is not usable: {e}"))?;
        }
        Ok(Arc::new(roots))
    };
    let config = match tls.mode {
        ShardTlsMode::Disable => return Ok(None),
        ShardTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: None,
                provider,
            }))
            .with_no_client_auth(),
        ShardTlsMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: Some(roots()?),
                provider,
            }))
            .with_no_client_auth(),
        ShardTlsMode::VerifyFull => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots()?, provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// A control connection (not pooled; tokio-postgres) opened with `pg`, encrypted with
/// `tls` when given (the caller sets `pg`'s `ssl_mode`); the task driving it is spawned and
/// ends when the client is dropped.
pub async fn open_control(
    pg: &tokio_postgres::Config,
    tls: Option<Arc<ClientConfig>>,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    match tls {
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            Ok((client, tokio::spawn(connection)))
        }
        Some(config) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone());
            let (client, connection) = pg.connect(tls).await?;
            Ok((client, tokio::spawn(connection)))
        }
    }
}

/// The control-connection TLS for `tls`: the rustls config, with `pg` told to require it.
pub fn control_tls(
    pg: &mut tokio_postgres::Config,
    tls: &ShardTls,
) -> Result<Option<Arc<ClientConfig>>, String> {
    let config = client_config(tls)?;
    if config.is_some() {
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    Ok(config)
}

/// The name a shard's certificate is checked against: its host, a name or an address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("shard host {host:?} cannot be checked against a certificate: {e}"))
}

/// The check of `require` (`roots: None`: any certificate, though the handshake's signatures
/// are still checked, so the connection is encrypted to whoever holds the certificate's key)
/// and of `verify-ca` (the certificate must chain to one of `roots`; its names are not
/// checked).
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::authority::Authority;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS server on loopback presenting a certificate for `names`, signed by `authority`;
    /// answers one byte per connection.
    async fn server(authority: &Authority, names: &[&str]) -> anyhow::Result<u16> {
        let issued = authority.server(names)?;
        let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(b"!").await;
                }
            }
        });
        Ok(port)
    }

    /// Whether a client with `mode` (trusting `ca`) completes a handshake with the server.
    async fn connects(mode: ShardTlsMode, ca: &std::path::Path, port: u16) -> bool {
        let tls = ShardTls {
            mode,
            ca: Some(ca.display().to_string()),
        };
        let Ok(Some(config)) = client_config(&tls) else {
            return false;
        };
        let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        let Ok(name) = server_name("127.0.0.1") else {
            return false;
        };
        match tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
        {
            Ok(mut tls) => {
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.is_ok()
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn each_mode_checks_what_libpq_checks() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let trusted = Authority::new("trusted")?;
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, trusted.cert_pem())?;
        let named = server(&trusted, &["127.0.0.1"]).await?;
        let misnamed = server(&trusted, &["shard.invalid"]).await?;
        let stranger = server(&Authority::new("stranger")?, &["127.0.0.1"]).await?;
        let expected = [
            // (mode, server, connects)
            (ShardTlsMode::VerifyFull, named, true),
            (ShardTlsMode::VerifyFull, misnamed, false),
            (ShardTlsMode::VerifyFull, stranger, false),
            (ShardTlsMode::VerifyCa, named, true),
            (ShardTlsMode::VerifyCa, misnamed, true),
            (ShardTlsMode::VerifyCa, stranger, false),
            (ShardTlsMode::Require, named, true),
            (ShardTlsMode::Require, misnamed, true),
            (ShardTlsMode::Require, stranger, true),
        ];
        for (mode, port, want) in expected {
            assert_eq!(
                connects(mode, &ca, port).await,
                want,
                "{mode} against port {port}"
            );
        }
        assert!(matches!(client_config(&ShardTls::default()), Ok(None)));
        Ok(())
    }
}
