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
