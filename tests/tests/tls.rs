//! TLS towards clients and the limits on who may hold a client socket, with real clients:
//! psql over `verify-full` against the proxy's certificate, clear text refused in `require`
//! mode, a direct TLS handshake (ALPN `postgresql`), garbage and half-finished handshakes, a
//! login that never finishes, the connection cap, and a certificate rotated while clients
//! keep connecting.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline::tls::authority::Authority;
use shardline_tests::{connect, psql_at, scratch_dir, TestCluster};
use tokio_postgres::error::SqlState;

/// A CA and a server certificate for 127.0.0.1 written to `dir`; returns the CA's path.
fn certificates(dir: &Path, authority: &Authority) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let server = authority.server(&["localhost", "127.0.0.1"])?;
    // Written next to each other and renamed into place, as an operator rotating files would.
    std::fs::write(dir.join("server.crt.new"), server.cert_pem)?;
    std::fs::write(dir.join("server.key.new"), server.key_pem)?;
    std::fs::rename(dir.join("server.key.new"), dir.join("server.key"))?;
    std::fs::rename(dir.join("server.crt.new"), dir.join("server.crt"))?;
    static ISSUED: AtomicUsize = AtomicUsize::new(0);
    let ca = dir.join(format!("ca-{}.crt", ISSUED.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&ca, authority.cert_pem())?;
    Ok(ca)
}

fn tls_yaml(dir: &Path, mode: &str, extra: &str) -> String {
    format!(
        "tls: {{mode: {mode}, cert: {}, key: {}}}\n{extra}",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    )
}

/// psql through the proxy with `sslmode` (and the CA to verify against), printing bare
/// values; (ok, stdout, stderr).
fn psql(
    port: u16,
    sslmode: &str,
    ca: Option<&Path>,
    sql: &str,
) -> anyhow::Result<(bool, String, String)> {
    let ca = ca.map(|p| p.display().to_string());
    let mut env = vec![("PGPASSWORD", "app"), ("PGSSLMODE", sslmode)];
    if let Some(ca) = &ca {
        env.push(("PGSSLROOTCERT", ca));
    }
    psql_at(port, &env, &["-A", "-t", "-c", sql])
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_connect_over_tls_and_clear_text_is_refused_when_required() -> anyhow::Result<()> {
    let dir = scratch_dir("tls-files");
    let authority = Authority::new("test CA")?;
    let ca = certificates(&dir, &authority)?;
    let cluster = TestCluster::start_with("tls", 2, &tls_yaml(&dir, "require", "")).await?;
    let port = cluster.port();

    // verify-full: the chain and the name 127.0.0.1 check out; psql reports the encryption.
    let (ok, out, err) = psql(port, "verify-full", Some(&ca), "SELECT 40 + 2")?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");
    let (ok, out, err) = psql(port, "require", None, "\\conninfo")?;
    assert!(ok && out.contains("SSL connection"), "{out}{err}");
    // Sharded work goes on as usual over TLS.
    for sql in [
        "CREATE TABLE users (id bigint PRIMARY KEY, name text)",
        "INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    ] {
        let (ok, _, err) = psql(port, "require", None, sql)?;
        assert!(ok, "{sql}: {err}");
    }
    let (ok, out, err) = psql(port, "require", None, "SELECT count(*) FROM users")?;
    assert!(ok && out.trim() == "3", "{out}{err}");

    // A client that trusts another CA refuses the proxy's certificate.
    let other = certificates(&scratch_dir("tls-other"), &Authority::new("another CA")?)?;
    let (ok, _, err) = psql(port, "verify-full", Some(&other), "SELECT 1")?;
    assert!(!ok && err.contains("certificate"), "{err}");

    // Clear text in require mode: refused with a message that says what to do.
    let (ok, _, err) = psql(port, "disable", None, "SELECT 1")?;
    assert!(!ok && err.contains("sslmode=require"), "{err}");
    let plain = connect(&format!("{} sslmode=disable", cluster.proxy_conninfo())).await;
    let code = plain.err().and_then(|e| {
        e.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code().cloned())
    });
    assert_eq!(code, Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION));
    Ok(())
}

/// Reads until the peer closes; how long that took (None: still open after `within`).
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).ok()?;
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_handshakes_and_silent_sockets_are_closed_and_the_proxy_serves_on() -> anyhow::Result<()>
{
    let dir = scratch_dir("tls-bad-files");
    let authority = Authority::new("test CA")?;
    let ca = certificates(&dir, &authority)?;
    let cluster = TestCluster::start_with(
        "tls-bad",
        1,
        &tls_yaml(&dir, "allow", "login_timeout_ms: 700\n"),
    )
    .await?;
    let address = format!("127.0.0.1:{}", cluster.port());

    // A socket that never sends its startup packet is closed after the login timeout.
    let mut silent = TcpStream::connect(&address)?;
    let waited = closed_within(&mut silent, Duration::from_secs(10));
    assert!(
        waited.is_some_and(|w| w >= Duration::from_millis(500)),
        "{waited:?}"
    );

    // An SSLRequest answered S, then nothing: closed after the timeout too.
    let mut half = TcpStream::connect(&address)?;
    half.write_all(&[0, 0, 0, 8, 4, 210, 22, 47])?;
    let mut answer = [0u8; 1];
    half.read_exact(&mut answer)?;
    assert_eq!(&answer, b"S");
    assert!(closed_within(&mut half, Duration::from_secs(10)).is_some());

    // Garbage where a TLS handshake should be: the connection is dropped at once.
    for garbage in [&b"\x16\x03\x01\x00\x05hello garbage"[..], &[0x16; 64][..]] {
        let mut bad = TcpStream::connect(&address)?;
        bad.write_all(garbage)?;
        let waited = closed_within(&mut bad, Duration::from_secs(10));
        assert!(
            waited.is_some_and(|w| w < Duration::from_millis(600)),
            "{waited:?}"
        );
    }

    // A direct TLS connection (PostgreSQL 17's sslnegotiation=direct) with ALPN postgresql.
    let greeting = direct_tls_startup(cluster.port(), &ca).await?;
    assert_eq!(greeting, b'R', "expected an authentication request");

    // The proxy still serves, in clear text (allow) and over TLS.
    let (ok, out, err) = psql(cluster.port(), "disable", None, "SELECT 1")?;
    assert!(ok && out.trim() == "1", "{err}");
    let (ok, out, err) = psql(cluster.port(), "verify-full", Some(&ca), "SELECT 2")?;
    assert!(ok && out.trim() == "2", "{err}");
    Ok(())
}

/// Opens a direct TLS connection, sends a startup packet inside it and returns the type of
/// the proxy's first message.
async fn direct_tls_startup(port: u16, ca: &Path) -> anyhow::Result<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for field in ["user", "app", "database", "app", ""] {
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    tls.write_all(&packet).await?;
    let mut first = [0u8; 1];
    tls.read_exact(&mut first).await?;
    Ok(first[0])
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_over_the_cap_are_refused_and_admins_still_get_in() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with("client-cap", 1, "max_client_connections: 3\n").await?;
    // The same shards behind a proxy that also has an admin user.
    let yaml = cluster.yaml.replacen(
        "users:\n",
        "users:\n  - {name: admin, password: admin, admin: true}\n  - {name: crowd, password: crowd, auth: trust}\n",
        1,
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&conninfo).await?);
    }
    // 1,000 clients beyond the cap, 100 at a time: each refused with 53300; the three keep
    // working.
    use futures::StreamExt;
    // (`crowd` logs in without a password: the refusal comes after authentication, and
    // computing 1,000 SCRAM proofs would only slow the test down.)
    let crowd = conninfo.replace("user=app password=app", "user=crowd");
    let refusals: Vec<Option<SqlState>> = futures::stream::iter(0..1000)
        .map(|_| {
            let conninfo = crowd.clone();
            async move {
                connect(&conninfo).await.err().map(|error| {
                    error
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(|e| e.code().cloned())
                        .unwrap_or(SqlState::INTERNAL_ERROR)
                })
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    assert_eq!(refusals.len(), 1000);
    for refusal in refusals {
        assert_eq!(refusal, Some(SqlState::TOO_MANY_CONNECTIONS));
    }
    for client in &held {
        assert_eq!(client.query_one("SELECT 7", &[]).await?.get::<_, i32>(0), 7);
    }
    // The admin console still takes its admin, and lists the three clients.
    let admin = connect(&conninfo.replace(
        "user=app password=app dbname=app",
        "user=admin password=admin dbname=shardline",
    ))
    .await?;
    let listed = admin.simple_query("SHOW CLIENTS").await?;
    let apps: Vec<Option<&str>> = listed
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) if row.get("user") == Some("app") => {
                Some(row.get("tls"))
            }
            _ => None,
        })
        .collect();
    // Listed with their encryption: these three connected in clear text.
    assert_eq!(apps, [Some("false"); 3]);
    // A freed place is taken again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = connect(&conninfo).await?;
    assert_eq!(again.query_one("SELECT 8", &[]).await?.get::<_, i32>(0), 8);
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_served_to_new_clients_without_failing_any() -> anyhow::Result<()>
{
    let dir = scratch_dir("tls-rotate-files");
    let first = Authority::new("first CA")?;
    let first_ca = certificates(&dir, &first)?;
    let cluster = TestCluster::start_with("tls-rotate", 1, &tls_yaml(&dir, "require", "")).await?;
    let port = cluster.port();

    // Clients connect and query over TLS in a loop while the certificate is replaced by one
    // of the same CA: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let loop_ca = first_ca.clone();
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop.load(Ordering::Acquire) {
                let (ok, out, err) = psql(port, "verify-full", Some(&loop_ca), "SELECT 1")?;
                anyhow::ensure!(
                    ok && out.trim() == "1",
                    "a query failed during rotation: {err}"
                );
                done.fetch_add(1, Ordering::AcqRel);
            }
            Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    certificates(&dir, &first)?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Release);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the client loop panicked"))??;
    assert!(done.load(Ordering::Acquire) > 3, "too few queries ran");

    // Replaced by a certificate of another CA: new clients see it within the refresh.
    let second_ca = certificates(&dir, &Authority::new("second CA")?)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, _) = psql(port, "verify-full", Some(&second_ca), "SELECT 1")?;
        if ok {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _, err) = psql(port, "verify-full", Some(&first_ca), "SELECT 1")?;
    assert!(!ok, "the old certificate is still served: {err}");
    Ok(())
}

/// psql as `app` with a client certificate (or none) and no password.
fn psql_with_certificate(
    port: u16,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> anyhow::Result<(bool, String, String)> {
    // A certificate file that does not exist: libpq sends none.
    let (cert, key) = cert.map_or_else(
        || ("/nonexistent.crt".to_owned(), "/nonexistent.key".to_owned()),
        |(c, k)| (c.display().to_string(), k.display().to_string()),
    );
    let ca = ca.display().to_string();
    let env = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGSSLCERT", cert.as_str()),
        ("PGSSLKEY", key.as_str()),
    ];
    psql_at(port, &env, &["-w", "-A", "-t", "-c", "SELECT 'in'"])
}

/// Writes a client certificate for `user` signed by `authority`; returns (cert, key) paths.
fn client_files(
    dir: &Path,
    authority: &Authority,
    user: &str,
    tag: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let issued = authority.client(user)?;
    let (cert, key) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert, issued.cert_pem)?;
    std::fs::write(&key, issued.key_pem)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok((cert, key))
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_logins_and_channel_binding() -> anyhow::Result<()> {
    let dir = scratch_dir("tls-cert-files");
    let authority = Authority::new("test CA")?;
    let ca = certificates(&dir, &authority)?;
    let cluster = TestCluster::start_with("tls-cert", 1, &tls_yaml(&dir, "allow", "")).await?;

    // SCRAM-SHA-256-PLUS: a client that insists on channel binding logs in over TLS, and
    // cannot be made to log in without it.
    let ca_path = ca.display().to_string();
    let bound = |sslmode: &str| {
        let env = [
            ("PGPASSWORD", "app"),
            ("PGSSLMODE", sslmode),
            ("PGSSLROOTCERT", ca_path.as_str()),
            ("PGCHANNELBINDING", "require"),
        ];
        psql_at(cluster.port(), &env, &["-A", "-t", "-c", "SELECT 'bound'"])
    };
    let (ok, out, err) = bound("verify-full")?;
    assert!(ok && out.trim() == "bound", "{err}");
    let (ok, _, err) = bound("disable")?;
    assert!(!ok && err.contains("channel binding"), "{err}");

    // A second proxy over the same shards where app logs in by certificate.
    let yaml = cluster
        .yaml
        .replace(
            "  - {name: app, password: app}\n",
            "  - {name: app, password: app, auth: cert}\n",
        )
        .replace(
            &tls_yaml(&dir, "allow", ""),
            &format!(
                "tls: {{mode: require, cert: {}, key: {}, client_ca: {}}}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display(),
                ca.display()
            ),
        );
    anyhow::ensure!(
        yaml.contains("auth: cert") && yaml.contains("client_ca"),
        "{yaml}"
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let port = proxy.addr.port();

    let good = client_files(&dir, &authority, "app", "app")?;
    let (ok, out, err) = psql_with_certificate(port, &ca, Some((&good.0, &good.1)))?;
    assert!(ok && out.trim() == "in", "{err}");
    let wrong_name = client_files(&dir, &authority, "mallory", "mallory")?;
    let (ok, _, err) = psql_with_certificate(port, &ca, Some((&wrong_name.0, &wrong_name.1)))?;
    assert!(
        !ok && err.contains("certificate authentication failed"),
        "{err}"
    );
    let untrusted = client_files(&dir, &Authority::new("rogue CA")?, "app", "rogue")?;
    let (ok, _, err) = psql_with_certificate(port, &ca, Some((&untrusted.0, &untrusted.1)))?;
    assert!(!ok, "a certificate of an unknown CA got in: {err}");
    let (ok, _, err) = psql_with_certificate(port, &ca, None)?;
    assert!(
        !ok && err.contains("certificate authentication failed"),
        "{err}"
    );
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_reaches_shards_over_verified_tls() -> anyhow::Result<()> {
    let dir = scratch_dir("shard-tls-files");
    let authority = Authority::new("shards CA")?;
    let ca = certificates(&dir, &authority)?;
    let identity = authority.server(&["localhost", "127.0.0.1"])?;
    let yaml = format!("shard_tls: {{mode: verify-full, ca: {}}}\n", ca.display());
    let cluster = TestCluster::start_serving("shard-tls", 2, &yaml, Some(identity)).await?;
    let client = cluster.client().await?;
    // The default shard sees the proxy's connection encrypted (for a clear-text client, even).
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(
        encrypted,
        "the proxy's connection to the shard is in clear text"
    );
    // Control connections too: generated keys take their blocks from the default shard.
    client
        .batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY, name text)")
        .await?;
    let id: i64 = client
        .query_one("INSERT INTO users (name) VALUES ('tls') RETURNING id", &[])
        .await?
        .get(0);
    assert!(id > 0);
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 1);

    // A proxy that trusts another CA refuses the shards' certificates, with a message.
    let other = certificates(
        &scratch_dir("shard-tls-other"),
        &Authority::new("other CA")?,
    )?;
    let wrong = cluster
        .yaml
        .replace(&ca.display().to_string(), &other.display().to_string());
    let config = shardline_router::Config::from_yaml(&wrong).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = shardline::Proxy::start(config).await?;
    let refused = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    ))
    .await;
    let message = format!("{:?}", refused.err());
    assert!(message.contains("TLS to the shard failed"), "{message}");
    proxy.stop().await;
    Ok(())
}
