//! Byte-level protocol checks that drivers rely on but tokio-postgres does not exercise:
//! `Flush` in the middle of an extended-protocol segment, garbage after login, and a startup
//! asking for a newer protocol version.

use shardline_tests::wire::{cstr, login, message, read_message, read_until, trusting_proxy};
use shardline_tests::TestCluster;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

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

/// Sends a startup packet asking for protocol 3.2 with an option the server cannot know, as
/// user `app` to database `app`, and returns the tags of the answers up to the first
/// `ReadyForQuery`.
async fn startup_3_2_tags<S>(stream: &mut S) -> anyhow::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut body = ((3i32 << 16) | 2).to_be_bytes().to_vec();
    for part in [
        "user",
        "app",
        "database",
        "app",
        "_pq_.shardline_test",
        "on",
        "",
    ] {
        body.extend(cstr(part));
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    stream.write_all(&packet).await?;
    read_until(stream, b'Z').await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_protocol_version_is_negotiated_before_authentication() -> anyhow::Result<()> {
    let cluster = TestCluster::start("negotiate", 1).await?;
    let server = &cluster.pg.servers()[0];
    let socket = server
        .socket_dir()
        .join(format!(".s.PGSQL.{}", server.port()));
    let oracle = startup_3_2_tags(&mut UnixStream::connect(socket).await?).await?;
    assert_eq!(&oracle[..2], b"vR", "PostgreSQL's own answer: {oracle:?}");

    let proxy = trusting_proxy(&cluster).await?;
    let mut stream = TcpStream::connect(proxy.addr).await?;
    let proxied = startup_3_2_tags(&mut stream).await?;
    assert_eq!(
        &proxied[..2],
        &oracle[..2],
        "NegotiateProtocolVersion, then authentication, as PostgreSQL answers: {proxied:?}"
    );
    proxy.stop().await;
    Ok(())
}
