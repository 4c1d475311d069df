//! TLS towards clients: the acceptor built from the certificate and key `shards.yaml` names
//! (rustls, TLS 1.2 and 1.3), rebuilt when the files or the `tls:` section change. A
//! connection keeps the acceptor it was accepted with, so a rotated certificate drops no one.
//! [`authority`] makes certificates for the demo and the tests.

pub mod authority;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use shardline_router::config::{ClientTls, TlsMode};
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol name PostgreSQL clients send (required for a direct TLS connection).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("the TLS certificate and key do not make a usable server identity: {0}")]
    Identity(#[from] rustls::Error),
    #[error("the client CA {path} gives no usable certificate authority: {reason}")]
    ClientCa { path: String, reason: String },
}

/// What clients are offered now: the acceptor (none when TLS is off), the mode, and the
/// certificate chain it shows (PEM), which SCRAM's channel binding hashes.
pub struct Offer {
    pub mode: TlsMode,
    pub acceptor: Option<TlsAcceptor>,
    pub certificate: Option<Vec<u8>>,
}

/// The proxy's TLS state: the current offer and what it was built from. Paths are used as
/// the config gives them (`Config::from_file_text` makes them relative to `shards.yaml`).
pub struct ServerTls {
    current: ArcSwapOption<Built>,
}

struct Built {
    offer: Arc<Offer>,
    source: Source,
}

/// What an offer was built from: the section and the files' modification times.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    section: ClientTls,
    stamps: Vec<Option<SystemTime>>,
}

impl ServerTls {
    /// Builds the offer `section` describes.
    pub fn new(section: &ClientTls) -> Result<ServerTls, TlsError> {
        let tls = ServerTls::disabled();
        tls.refresh(section)?;
        Ok(tls)
    }

    /// No TLS: every `SSLRequest` is declined (a proxy built in memory, a benchmark).
    pub fn disabled() -> ServerTls {
        ServerTls {
            current: ArcSwapOption::empty(),
        }
    }

    /// The offer for a client connecting now.
    pub fn offer(&self) -> Arc<Offer> {
        self.current.load().as_ref().map_or_else(
            || {
                Arc::new(Offer {
                    mode: TlsMode::Disable,
                    acceptor: None,
                    certificate: None,
                })
            },
            |built| built.offer.clone(),
        )
    }

    /// Rebuilds the offer when `section` or its files changed since it was built; true when
    /// it did. On failure the previous offer stays.
    pub fn refresh(&self, section: &ClientTls) -> Result<bool, TlsError> {
        let source = Source {
            section: section.clone(),
            stamps: self.files(section).iter().map(|p| modified(p)).collect(),
        };
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|built| built.source == source)
        {
            return Ok(false);
        }
        let (acceptor, certificate) = if section.enabled() {
            let (config, certificate) = self.server_config(section)?;
            (Some(TlsAcceptor::from(Arc::new(config))), Some(certificate))
        } else {
            (None, None)
        };
        let offer = Arc::new(Offer {
            mode: section.mode,
            acceptor,
            certificate,
        });
        self.current.store(Some(Arc::new(Built { offer, source })));
        Ok(true)
    }

    /// The files `section` names, resolved.
    fn files(&self, section: &ClientTls) -> Vec<PathBuf> {
        [&section.cert, &section.key, &section.client_ca]
            .into_iter()
            .flatten()
            .map(PathBuf::from)
            .collect()
    }

    /// The server config `section` describes, and the certificate chain's PEM.
    fn server_config(&self, section: &ClientTls) -> Result<(ServerConfig, Vec<u8>), TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_path = PathBuf::from(section.cert.as_deref().unwrap_or_default());
        let key_path = PathBuf::from(section.key.as_deref().unwrap_or_default());
        let pem = read(&cert_path, "certificate")?;
        let chain = certificates(&pem, &cert_path, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path, "private key")?).map_err(|e| {
            TlsError::File {
                what: "private key",
                path: key_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &section.client_ca {
            Some(ca) => {
                let path = PathBuf::from(ca);
                let mut roots = RootCertStore::empty();
                let pem = read(&path, "client CA")?;
                for cert in certificates(&pem, &path, "client CA")? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
                // Clients without a certificate still log in by password; `auth: cert`
                // users need one.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok((config, pem))
    }
}

/// Every certificate in `pem` (read from `path`); at least one.
fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if chain.is_empty() {
        return Err(failed("it holds no PEM certificate".to_owned()));
    }
    Ok(chain)
}

/// The bytes of a file the TLS setup names.
fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
