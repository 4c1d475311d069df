//! Byte-level protocol checks that drivers rely on but tokio-postgres does not exercise:
//! `Flush` in the middle of an extended-protocol segment, and garbage after login.

use std::time::Duration;

use shardline_tests::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Reads one backend message.
async fn read_message(stream: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header)).await??;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok((header[0], body))
}

/// Reads messages up to and including one with tag `until`, returning their tags.
async fn read_until(stream: &mut TcpStream, until: u8) -> anyhow::Result<Vec<u8>> {
    let mut tags = Vec::new();
    loop {
        let (tag, _) = read_message(stream).await?;
        tags.push(tag);
        if tag == until {
            return Ok(tags);
        }
    }
}

/// Logs in as `app` to a proxy that trusts it.
async fn login(port: u16) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut body = 196608i32.to_be_bytes().to_vec();
    for part in ["user", "app", "database", "app", ""] {
        body.extend(cstr(part));
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    stream.write_all(&packet).await?;
    let tags = read_until(&mut stream, b'Z').await?;
    assert_eq!(
        tags.first(),
        Some(&b'R'),
        "expected AuthenticationOk first: {tags:?}"
    );
    Ok(stream)
}

async fn trusting_proxy(cluster: &TestCluster) -> anyhow::Result<shardline::Proxy> {
    let yaml = cluster.yaml.replace(
        "{name: app, password: app}",
        "{name: app, password: app, auth: trust}",
    );
    let config = shardline_router::Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    shardline::Proxy::start(config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_mid_segment_then_bind_and_sync() -> anyhow::Result<()> {
    let cluster = TestCluster::start("flush", 2).await?;
    let setup = cluster.client().await?;
    setup
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    setup
        .batch_execute("INSERT INTO users (id, name) VALUES (7, 'seven')")
        .await?;
    let proxy = trusting_proxy(&cluster).await?;
    let mut stream = login(proxy.addr.port()).await?;

    // Parse + Describe + Flush: answers arrive without a Sync.
    let mut parse = cstr("q1");
    parse.extend(cstr("SELECT name FROM users WHERE id = $1"));
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut out = message(b'P', &parse);
    let mut describe = vec![b'S'];
    describe.extend(cstr("q1"));
    out.extend(message(b'D', &describe));
    out.extend(message(b'H', &[]));
    stream.write_all(&out).await?;
    assert_eq!(read_message(&mut stream).await?.0, b'1');
    assert_eq!(read_message(&mut stream).await?.0, b't');
    assert_eq!(read_message(&mut stream).await?.0, b'T');

    // Then Bind + Execute + Sync on the same statement, keyed to wherever id 7 lives.
    let mut bind = cstr("");
    bind.extend(cstr("q1"));
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i32.to_be_bytes());
    bind.extend_from_slice(b"7");
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut out = message(b'B', &bind);
    let mut execute = cstr("");
    execute.extend_from_slice(&0i32.to_be_bytes());
    out.extend(message(b'E', &execute));
    out.extend(message(b'S', &[]));
    stream.write_all(&out).await?;
    assert_eq!(read_message(&mut stream).await?.0, b'2');
    let (tag, row) = read_message(&mut stream).await?;
    assert_eq!(tag, b'D');
    assert!(row.ends_with(b"seven"), "{row:?}");
    assert_eq!(read_message(&mut stream).await?.0, b'C');
    assert_eq!(read_message(&mut stream).await?, (b'Z', vec![b'I']));
    proxy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_after_login_is_a_protocol_error_and_others_keep_working() -> anyhow::Result<()> {
    let cluster = TestCluster::start("garbage", 1).await?;
    let proxy = trusting_proxy(&cluster).await?;
    let mut stream = login(proxy.addr.port()).await?;
    let bystander = login(proxy.addr.port()).await;
    stream
        .write_all(b"\x00\xff\xfe garbage \x01\x02\x03")
        .await?;
    let (tag, body) = read_message(&mut stream).await?;
    assert_eq!(tag, b'E');
    assert!(
        String::from_utf8_lossy(&body).contains("08P01"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // A message claiming to be 1 GB is refused without reading it.
    let mut other = login(proxy.addr.port()).await?;
    other.write_all(&[b'Q', 0x40, 0, 0, 0]).await?;
    let (tag, body) = read_message(&mut other).await?;
    assert_eq!(tag, b'E');
    assert!(String::from_utf8_lossy(&body).contains("54000"));
    // Someone else's session is unaffected.
    let mut bystander = bystander?;
    let mut q = message(b'Q', &cstr("SELECT 1"));
    q.extend(message(b'X', &[]));
    bystander.write_all(&q).await?;
    let tags = read_until(&mut bystander, b'Z').await?;
    assert_eq!(tags, vec![b'T', b'D', b'C', b'Z']);
    proxy.stop().await;
    Ok(())
}
