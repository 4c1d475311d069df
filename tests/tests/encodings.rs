//! A client whose `client_encoding` is not UTF8 (LATIN9 here, as psycopg's
//! `test_query_encode[latin9]` sets it): its query text, parameters and COPY rows are read in
//! that encoding, so text shard keys are placed where PostgreSQL's hash puts them, and its
//! answers (rows merged across shards included) are byte for byte what one PostgreSQL server
//! sends the same client.

use shardline_tests::oracle::{proxy_and_oracle, transcript, Answer, Until};
use shardline_tests::wire::{
    bind, close_statement, cstr, execute, message, parse, read_message, sync,
};
use shardline_tests::TestCluster;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// LATIN9 keys: é, €, ï, å, ö, ü, à and one plain ASCII key.
const KEYS: [&[u8]; 8] = [
    b"caf\xe9",
    b"\xa4uro",
    b"na\xefve",
    b"\xe5ngstr\xf6m",
    b"plain",
    b"\xfcber",
    b"\xe9t\xe9",
    b"d\xe9j\xe0",
];

/// The same keys as UTF-8 text.
fn key_text(key: &[u8]) -> String {
    key.iter()
        .map(|&b| if b == 0xa4 { '\u{20ac}' } else { char::from(b) })
        .collect()
}

/// A simple `Query` of raw bytes.
fn query(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    message(b'Q', &body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_latin9_client_is_read_and_answered_as_postgres_would() -> anyhow::Result<()> {
    let cluster = TestCluster::start("encodings", 4).await?;
    let ddl = "CREATE TABLE accounts (email text PRIMARY KEY, n int)";
    cluster.client().await?.batch_execute(ddl).await?;
    let (wire_proxy, mut sides) = proxy_and_oracle(&cluster).await?;
    transcript(&mut sides.oracle, &query(ddl.as_bytes()), Until::Syncs(1)).await?;
    let latin9 = query(b"SET client_encoding TO 'LATIN9'");
    sides.same("SET client_encoding", &latin9, 1).await?;

    // Literals in the simple protocol (one row, then a multi-row INSERT split over shards).
    let mut split = b"INSERT INTO accounts (email, n) VALUES ".to_vec();
    for (i, key) in KEYS[..4].iter().enumerate() {
        let mut one = b"INSERT INTO accounts (email, n) VALUES ('".to_vec();
        one.extend_from_slice(key);
        one.extend_from_slice(format!("x', {i})").as_bytes());
        sides.same("a one-row INSERT", &query(&one), 1).await?;
        if i > 0 {
            split.extend_from_slice(b", ");
        }
        split.extend_from_slice(b"('");
        split.extend_from_slice(key);
        split.extend_from_slice(format!("', {i})").as_bytes());
    }
    sides
        .same("a multi-row INSERT over shards", &query(&split), 1)
        .await?;

    // Text parameters in the extended protocol.
    let insert = "INSERT INTO accounts (email, n) VALUES ($1, $2)";
    for (i, key) in KEYS.iter().enumerate().skip(4) {
        let mut bytes = message(b'P', &[cstr(""), cstr(insert), vec![0, 0]].concat());
        let mut bind = vec![0u8, 0, 0, 0, 0, 2];
        for value in [key.to_vec(), i.to_string().into_bytes()] {
            bind.extend_from_slice(&(value.len() as i32).to_be_bytes());
            bind.extend_from_slice(&value);
        }
        bind.extend_from_slice(&[0, 0]);
        bytes.extend(message(b'B', &bind));
        bytes.extend(message(b'E', &[0, 0, 0, 0, 0]));
        bytes.extend(message(b'S', &[]));
        sides
            .same("an INSERT with text parameters", &bytes, 1)
            .await?;
    }

    // COPY rows in LATIN9.
    let copy = query(b"COPY accounts (email, n) FROM STDIN");
    let mut rows = b"copi\xe9\t100\n".to_vec();
    rows.extend_from_slice(b"\xa4copy\t101\n");
    let mut data = message(b'd', &rows);
    data.extend(message(b'c', &[]));
    for (copy_in, copied) in [
        copy_rows(&mut sides.proxy, &copy, &data).await?,
        copy_rows(&mut sides.oracle, &copy, &data).await?,
    ] {
        assert_eq!(copy_in, b'G', "COPY starts");
        assert!(
            matches!(copied.first(), Some(Answer::Complete(_))),
            "{copied:?}"
        );
    }

    // Every row is where PostgreSQL's hash of its UTF-8 key puts it, and reads back by key
    // from a UTF8 client.
    let placed = cluster.placed_rows("accounts", "email", true).await?;
    assert_eq!(placed, 4 + 4 + 4 + 2);
    let utf8 = cluster.client().await?;
    for key in KEYS {
        let text = key_text(key);
        let found = utf8
            .query_opt("SELECT n FROM accounts WHERE email = $1", &[&text])
            .await?;
        assert!(found.is_some(), "{text} cannot be found by its key");
    }

    // Rows merged across shards in ORDER BY come in the order one server gives, in LATIN9.
    for sql in [
        &b"SELECT email, n FROM accounts ORDER BY email"[..],
        b"SELECT email FROM accounts ORDER BY email DESC LIMIT 5",
        b"SELECT n FROM accounts WHERE email = '\xa4uro'",
    ] {
        sides
            .same(&format!("{}", String::from_utf8_lossy(sql)), &query(sql), 1)
            .await?;
    }

    // Bytes that are not text in the client's encoding: 22021, and the session goes on.
    let utf8_again = query(b"SET client_encoding TO 'UTF8'");
    transcript(&mut sides.proxy, &utf8_again, Until::Syncs(1)).await?;
    let invalid = transcript(&mut sides.proxy, &query(b"SELECT '\xe9'"), Until::Syncs(1)).await?;
    assert_eq!(invalid.first(), Some(&Answer::Error("22021".into())));
    let after = transcript(&mut sides.proxy, &query(b"SELECT 1"), Until::Syncs(1)).await?;
    assert_eq!(after.first(), Some(&Answer::Tag('T')));

    // A statement parsed again is read in the encoding of the moment: the same bytes are one
    // character in UTF8 and two in LATIN9, whether the encoding changed since the last parse
    // or not (named statements are closed after each run, as a driver's statement cache does
    // when it is cleared).
    for encoding in [&latin9, &utf8_again, &utf8_again, &latin9] {
        transcript(&mut sides.proxy, encoding, Until::Syncs(1)).await?;
        transcript(&mut sides.oracle, encoding, Until::Syncs(1)).await?;
        for name in ["", "length"] {
            let mut run = parse(name, "SELECT length('\u{e9}')");
            run.extend(bind(name, &[]));
            run.extend(execute(0));
            if !name.is_empty() {
                run.extend(close_statement(name));
            }
            run.extend(sync());
            sides
                .same(
                    &format!("{name:?} under {}", String::from_utf8_lossy(encoding)),
                    &run,
                    1,
                )
                .await?;
        }
    }
    wire_proxy.stop().await;
    Ok(())
}

/// Runs a `COPY … FROM STDIN` with `data`: the tag of the answer that starts it, and the
/// answers to the data.
async fn copy_rows<S>(stream: &mut S, copy: &[u8], data: &[u8]) -> anyhow::Result<(u8, Vec<Answer>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(copy).await?;
    let (tag, _) = read_message(stream).await?;
    Ok((tag, transcript(stream, data, Until::Syncs(1)).await?))
}
