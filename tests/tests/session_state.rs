//! What a session carries across the proxy as one PostgreSQL would show it, checked byte by
//! byte against a shard spoken to directly: the `ParameterStatus` a setting change produces,
//! including a `SET` the proxy held inside a transaction that had not reached a shard yet, and
//! its revert at `ROLLBACK`.

use shardline_tests::wire::{cstr, login, login_socket, message, read_message, trusting_proxy};
use shardline_tests::TestCluster;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Runs `sql` and returns the `DateStyle` values reported on the way, and the rows' first
/// column.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    stream.write_all(&message(b'Q', &cstr(sql))).await?;
    let (mut reported, mut rows) = (Vec::new(), Vec::new());
    loop {
        let (tag, body) = read_message(stream).await?;
        match tag {
            b'S' => {
                let mut fields = body.split(|b| *b == 0);
                if fields.next() == Some(b"DateStyle") {
                    let value = fields.next().unwrap_or_default();
                    reported.push(String::from_utf8_lossy(value).into_owned());
                }
            }
            b'D' => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                rows.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'E' => anyhow::bail!("{sql}: {}", String::from_utf8_lossy(&body)),
            b'Z' => return Ok((reported, rows)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_set_reports_its_parameter_status_like_postgres() -> anyhow::Result<()> {
    let cluster = TestCluster::start("session-state", 2).await?;
    let proxy = trusting_proxy(&cluster).await?;
    let mut through = login(proxy.addr.port()).await?;
    let server = &cluster.pg.servers()[0];
    let mut direct = login_socket(server, "app", "app").await?;
    let script = [
        "BEGIN",
        "SET datestyle = German, YMD",
        "SELECT '2000-01-10 12:00'::timestamp::text",
        "ROLLBACK",
        "SELECT '2000-01-10 12:00'::timestamp::text",
    ];
    // What the client has been told DateStyle is, after each statement, and the rows.
    let (mut told_direct, mut told_through) = (String::new(), String::new());
    for sql in script {
        let (reported, rows) = run(&mut direct, sql).await?;
        told_direct = reported.last().cloned().unwrap_or(told_direct);
        let (reported, proxied_rows) = run(&mut through, sql).await?;
        told_through = reported.last().cloned().unwrap_or(told_through);
        assert_eq!(proxied_rows, rows, "{sql}");
        if !rows.is_empty() {
            assert_eq!(
                told_through, told_direct,
                "the client must know the DateStyle its rows are written in ({sql})"
            );
        }
    }
    assert_eq!(told_through, told_direct, "after ROLLBACK");
    Ok(())
}
