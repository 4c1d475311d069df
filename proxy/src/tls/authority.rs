//! A certificate authority of the proxy's own, for the demo and the tests: a CA certificate
//! and the certificates it signs for servers (host names and IP addresses) and for clients (a
//! user name as the common name, which `auth: cert` compares with the login name).

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA that signs certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    /// The certificate only: a private key must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<hidden>")
            .finish()
    }
}

impl Authority {
    /// A new CA whose certificate names it `name`.
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Authority { issuer })
    }

    /// The CA certificate, in PEM: what clients trust (`sslrootcert`).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (host names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose common name is `user`.
    pub fn client(&self, user: &str) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Issued, rcgen::Error> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files the demo serves TLS with, in `dir`: `ca.crt` (what clients trust),
/// `server.crt` and `server.key` (for `localhost` and `127.0.0.1`). Made once; a demo run
/// again on the same directory keeps them, so clients keep trusting the same CA.
pub fn demo_files(dir: &Path) -> anyhow::Result<()> {
    let files = ["ca.crt", "server.crt", "server.key"].map(|f| dir.join(f));
    if files.iter().all(|f| f.exists()) {
        return Ok(());
    }
    let authority = Authority::new("shardline demo CA").context("could not make the demo CA")?;
    let server = authority
        .server(&["localhost", "127.0.0.1"])
        .context("could not make the demo server certificate")?;
    let [ca, cert, key] = files;
    write_private(&key, &server.key_pem)?;
    std::fs::write(&cert, server.cert_pem)
        .with_context(|| format!("could not write {}", cert.display()))?;
    std::fs::write(&ca, authority.cert_pem())
        .with_context(|| format!("could not write {}", ca.display()))?;
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not write {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("could not write {}", path.display()))
}
