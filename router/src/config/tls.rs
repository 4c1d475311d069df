//! TLS in `shards.yaml`, checked: `tls:` towards clients, `shard_tls:` (and a shard's own
//! `tls:`) towards the shards, and the limits on who may hold a client socket
//! (`login_timeout_ms`, `max_client_connections`).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::validate::{positive, Problems};

/// Time a client gets to finish logging in (TLS handshake, startup, authentication).
pub const DEFAULT_LOGIN_TIMEOUT_MS: u64 = 10_000;

/// Clients served at once; beyond it a new client is refused (admins still get in).
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;

/// `tls:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub mode: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub client_ca: Option<Spanned<String>>,
}

/// `shard_tls:`, or a shard's `tls:`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShardTls {
    pub mode: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
}

/// How the proxy secures its connections to a shard, as libpq's `sslmode` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShardTlsMode {
    /// Clear text.
    #[default]
    Disable,
    /// Encrypted; the shard's certificate is not checked.
    Require,
    /// Encrypted; the certificate must chain to `ca`.
    VerifyCa,
    /// Encrypted; the certificate must chain to `ca` and name the shard's host.
    VerifyFull,
}

/// TLS towards one shard. `ca` is as written (relative to the directory of `shards.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ShardTls {
    pub mode: ShardTlsMode,
    pub ca: Option<String>,
}

impl std::fmt::Display for ShardTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShardTlsMode::Disable => "disable",
            ShardTlsMode::Require => "require",
            ShardTlsMode::VerifyCa => "verify-ca",
            ShardTlsMode::VerifyFull => "verify-full",
        })
    }
}

/// A shard's TLS: its own `tls:` over `shard_tls:` field by field, checked: the verifying
/// modes need a CA.
pub(super) fn shard_tls(
    own: Option<&RawShardTls>,
    all: Option<&RawShardTls>,
    problems: &mut Problems,
) -> ShardTls {
    let mode_field = own
        .and_then(|t| t.mode.as_ref())
        .or_else(|| all.and_then(|t| t.mode.as_ref()));
    let ca = own
        .and_then(|t| t.ca.as_ref())
        .or_else(|| all.and_then(|t| t.ca.as_ref()));
    let mode = match mode_field.map(|m| m.value.as_str()) {
        None | Some("disable") => ShardTlsMode::Disable,
        Some("require") => ShardTlsMode::Require,
        Some("verify-ca") => ShardTlsMode::VerifyCa,
        Some("verify-full") => ShardTlsMode::VerifyFull,
        Some(other) => {
            if let Some(at) = mode_field {
                problems.at(
                    at,
                    format!("shard tls mode {other:?} is not disable, require, verify-ca or verify-full"),
                );
            }
            ShardTlsMode::Disable
        }
    };
    if matches!(mode, ShardTlsMode::VerifyCa | ShardTlsMode::VerifyFull) && ca.is_none() {
        if let Some(at) = mode_field {
            problems.at(at, format!("shard tls mode {mode} needs `ca` (PEM certificates of the CAs that sign the shards' certificates)"));
        }
    }
    ShardTls {
        mode,
        ca: ca.map(|c| c.value.clone()),
    }
}

/// Whether clients may, or must, encrypt their connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Every `SSLRequest` is answered `N`: clients talk in clear text.
    Disable,
    /// Clients that ask for TLS get it; the others talk in clear text.
    Allow,
    /// Clients that do not ask for TLS are refused.
    Require,
}

/// TLS towards clients: the certificate the proxy shows and what it asks of clients. Paths
/// are as written; a relative one is read from the directory of `shards.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: TlsMode,
    /// PEM certificate chain, leaf first.
    pub cert: Option<String>,
    /// PEM private key of the leaf certificate.
    pub key: Option<String>,
    /// PEM certificates of the CAs whose client certificates are accepted (for `auth: cert`);
    /// without it clients are not asked for a certificate.
    pub client_ca: Option<String>,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            mode: TlsMode::Disable,
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

impl ClientTls {
    /// Whether the proxy serves TLS at all.
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disable
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Require => "require",
        })
    }
}

/// Checks `tls:`: a mode that serves TLS needs a certificate and its key; without a mode, a
/// certificate means `allow`.
pub(super) fn client_tls(raw: Option<&RawTls>, problems: &mut Problems) -> ClientTls {
    let Some(raw) = raw else {
        return ClientTls::default();
    };
    let value = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.value.clone());
    let (cert, key) = (value(&raw.cert), value(&raw.key));
    let mode = match raw.mode.as_ref() {
        None if cert.is_some() => TlsMode::Allow,
        None => TlsMode::Disable,
        Some(mode) => match mode.value.as_str() {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "require" => TlsMode::Require,
            other => {
                problems.at(
                    mode,
                    format!("tls mode {other:?} is not disable, allow or require"),
                );
                TlsMode::Disable
            }
        },
    };
    if mode != TlsMode::Disable && (cert.is_none() || key.is_none()) {
        let message = format!(
            "tls mode {mode} needs both `cert` and `key` (PEM files; `shardline demo` makes a pair)"
        );
        match raw.mode.as_ref().or(raw.cert.as_ref()).or(raw.key.as_ref()) {
            Some(at) => problems.at(at, message),
            None => problems.general(message),
        }
    }
    ClientTls {
        mode,
        cert,
        key,
        client_ca: value(&raw.client_ca),
    }
}

/// `login_timeout_ms`, checked: zero would close every connection at once.
pub(super) fn login_timeout(raw: &Option<Spanned<u64>>, problems: &mut Problems) -> Duration {
    Duration::from_millis(
        positive(raw, "login_timeout_ms", problems).unwrap_or(DEFAULT_LOGIN_TIMEOUT_MS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::minimal_with as with;
    use crate::config::Config;

    #[test]
    fn no_section_means_no_tls_and_default_limits() {
        let config = with("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tls, ClientTls::default());
        assert_eq!(config.login_timeout, Duration::from_secs(10));
        assert_eq!(config.max_client_connections, 10_000);
    }

    #[test]
    fn a_certificate_alone_means_allow() {
        let config = with("tls: {cert: server.crt, key: server.key}\nlogin_timeout_ms: 2500\nmax_client_connections: 5\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tls.mode, TlsMode::Allow);
        assert_eq!(config.tls.cert.as_deref(), Some("server.crt"));
        assert_eq!(config.login_timeout, Duration::from_millis(2500));
        assert_eq!(config.max_client_connections, 5);
    }

    #[test]
    fn shards_take_shard_tls_unless_they_say_otherwise() {
        let config = Config::from_yaml(
            "users: [{name: app, password: app}]\nshard_tls: {mode: verify-full, ca: shards.crt}\nshards:\n  - {name: s0, port: 5432}\n  - {name: s1, port: 5433, tls: {mode: require}}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let modes: Vec<(ShardTlsMode, Option<&str>)> = config
            .shards
            .iter()
            .map(|s| (s.tls.mode, s.tls.ca.as_deref()))
            .collect();
        assert_eq!(
            modes,
            [
                (ShardTlsMode::VerifyFull, Some("shards.crt")),
                (ShardTlsMode::Require, Some("shards.crt"))
            ]
        );
        let error = with("shard_tls: {mode: verify-ca}\n")
            .err()
            .unwrap_or_default();
        assert!(error.contains("needs `ca`"), "{error}");
        let error = with("shard_tls: {mode: prefer}\n")
            .err()
            .unwrap_or_default();
        assert!(error.contains("is not disable, require"), "{error}");
    }

    #[test]
    fn bad_modes_and_missing_files_are_reported_with_their_line() {
        let errors = [
            ("tls: {mode: require}\n", "needs both `cert` and `key`"),
            (
                "tls: {mode: always, cert: a, key: b}\n",
                "is not disable, allow or require",
            ),
            ("tls: {cert: a}\n", "needs both `cert` and `key`"),
            ("login_timeout_ms: 0\n", "must be above 0"),
            (
                "tls: {mode: require, cert: a, key: b, ca: c}\n",
                "unknown field",
            ),
        ];
        for (yaml, expected) in errors {
            let error = with(yaml).err().unwrap_or_default();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        let error = with("tls:\n  mode: require\n").err().unwrap_or_default();
        assert!(error.starts_with("line 5:"), "{error}");
    }
}
