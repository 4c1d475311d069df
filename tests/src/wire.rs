//! A byte-level PostgreSQL client for what tokio-postgres cannot do: send hand-built messages
//! (protocol edge cases) and run extended-protocol statements with text results.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::TestCluster;

/// A frontend message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A NUL-terminated string field.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Reads one backend message: tag and body.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut header)).await??;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok((header[0], body))
}

/// Reads messages up to and including one with tag `until`, returning their tags.
pub async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    until: u8,
) -> anyhow::Result<Vec<u8>> {
    let mut tags = Vec::new();
    loop {
        let (tag, _) = read_message(stream).await?;
        tags.push(tag);
        if tag == until {
            return Ok(tags);
        }
    }
}

/// Logs in as `app` to a proxy that trusts it (see [`trusting_proxy`]).
pub async fn login(port: u16) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    start_session(&mut stream, "app", "app").await?;
    Ok(stream)
}

/// Logs in as `user` to `database` of a PostgreSQL server through its Unix socket (trusted
/// by the test servers' `pg_hba.conf`): the byte-level client's oracle.
pub async fn login_socket(
    server: &shardline::localpg::LocalServer,
    user: &str,
    database: &str,
) -> anyhow::Result<UnixStream> {
    let path = server
        .socket_dir()
        .join(format!(".s.PGSQL.{}", server.port()));
    let mut stream = UnixStream::connect(path).await?;
    start_session(&mut stream, user, database).await?;
    Ok(stream)
}

/// Sends the startup message and reads up to the first `ReadyForQuery`, which must follow
/// `AuthenticationOk` (no password is asked).
async fn start_session<S>(stream: &mut S, user: &str, database: &str) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut body = 196608i32.to_be_bytes().to_vec();
    for part in ["user", user, "database", database, ""] {
        body.extend(cstr(part));
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    stream.write_all(&packet).await?;
    let tags = read_until(stream, b'Z').await?;
    anyhow::ensure!(
        tags.first() == Some(&b'R'),
        "expected AuthenticationOk first: {tags:?}"
    );
    Ok(())
}

/// A second proxy over the cluster's shards that lets `app` in without a password, so the
/// byte-level client needs no SCRAM.
pub async fn trusting_proxy(cluster: &TestCluster) -> anyhow::Result<shardline::Proxy> {
    let yaml = cluster.yaml.replace(
        "{name: app, password: app}",
        "{name: app, password: app, auth: trust}",
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    shardline::Proxy::start(config).await
}

/// Rows as text, `None` for NULL.
pub type TextRows = Vec<Vec<Option<String>>>;

/// Runs `sql` in the extended protocol (Parse, Bind with text parameters and text results,
/// Describe, Execute, Sync) and returns its rows, or the server's error message.
pub async fn extended_text(
    stream: &mut TcpStream,
    sql: &str,
    params: &[Option<&str>],
) -> anyhow::Result<Result<TextRows, String>> {
    let mut out = parse("", sql);
    out.extend(bind_values("", params));
    out.extend(describe_portal());
    out.extend(execute(0));
    out.extend(sync());
    stream.write_all(&out).await?;

    let mut rows = Vec::new();
    let mut error = None;
    let mut described = false;
    loop {
        let (tag, body) = read_message(stream).await?;
        match tag {
            b'T' => described = true,
            b'D' => rows.push(data_row(&body)?),
            b'E' => error = Some(String::from_utf8_lossy(&body).into_owned()),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Ok(Err(e)),
        None => {
            anyhow::ensure!(described, "no RowDescription answered the Describe");
            Ok(Ok(rows))
        }
    }
}

/// The text values of a `DataRow` body.
fn data_row(body: &[u8]) -> anyhow::Result<Vec<Option<String>>> {
    let count = u16::from_be_bytes([body[0], body[1]]);
    let mut at = 2;
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = i32::from_be_bytes(body[at..at + 4].try_into()?);
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            let end = at + len as usize;
            values.push(Some(String::from_utf8(body[at..end].to_vec())?));
            at = end;
        }
    }
    Ok(values)
}

/// `Parse` of `sql` as statement `name`, parameter types left to the server.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// `Bind` of `statement` to the unnamed portal with text parameters and text results.
pub fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let values: Vec<Option<&str>> = params.iter().copied().map(Some).collect();
    bind_values(statement, &values)
}

/// [`bind`] with NULLs (`None`).
pub fn bind_values(statement: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(statement));
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

/// `Execute` of the unnamed portal; `max_rows` 0 runs it to the end.
pub fn execute(max_rows: i32) -> Vec<u8> {
    let mut body = cstr("");
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

/// `Describe` of the unnamed portal.
pub fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

/// `Close` of statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    message(b'C', &[b"S".to_vec(), cstr(name)].concat())
}

/// `Sync`.
pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// `Flush`.
pub fn flush() -> Vec<u8> {
    message(b'H', &[])
}

/// The unnamed statement `sql` without parameters, executed (no `Sync`).
pub fn unsynced(sql: &str) -> Vec<u8> {
    let mut out = parse("", sql);
    out.extend(bind("", &[]));
    out.extend(execute(0));
    out
}

/// The unnamed statement `sql` without parameters, executed, and `Sync`.
pub fn run_once(sql: &str) -> Vec<u8> {
    let mut out = unsynced(sql);
    out.extend(sync());
    out
}
