//! `COPY … FROM STDIN` into a sharded table (psql's `\copy`): every row lands on the shard that
//! owns its key (checked on each shard directly), in text and CSV, with or without a column
//! list; a row that cannot be placed fails the whole COPY and no shard keeps any row.

use shardline_tests::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn copy_rows_go_to_their_shards() -> anyhow::Result<()> {
    let cluster = TestCluster::start("copyroute", 3).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    client
        .batch_execute("CREATE TABLE accounts (email text PRIMARY KEY, note text, n int)")
        .await?;
    let dir = std::env::temp_dir().join(format!("shardline-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // Text format, column list in a different order than the table, escapes in the data.
    let mut text = String::new();
    for i in 1..=3000 {
        text.push_str(&format!("name\\t{i}\\\\x\t{i}\n"));
    }
    let file = dir.join("users.txt");
    std::fs::write(&file, &text)?;
    let (ok, out, err) = cluster.psql(&[
        "-At",
        "-c",
        &format!("\\copy users (name, id) from '{}'", file.display()),
    ])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 3000");
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3000);
    let name: String = client
        .query_one("SELECT name FROM users WHERE id = 77", &[])
        .await?
        .get(0);
    assert_eq!(name, "name\t77\\x");

    // No column list: the key position comes from the table definition.
    let file = dir.join("more.txt");
    std::fs::write(
        &file,
        (3001..=3500)
            .map(|i| format!("{i}\tn{i}\n"))
            .collect::<String>(),
    )?;
    let (ok, out, err) = cluster.psql(&[
        "-At",
        "-c",
        &format!("\\copy users from '{}'", file.display()),
    ])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 500");
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3500);

    // CSV with a header, quoted delimiters and newlines, text keys.
    let mut csv = String::from("email,note,n\n");
    for i in 0..1000 {
        csv.push_str(&format!(
            "\"user{i}@example.com\",\"a, \"\"quoted\"\"\nnote\",{i}\n"
        ));
    }
    let file = dir.join("accounts.csv");
    std::fs::write(&file, &csv)?;
    let (ok, out, err) = cluster.psql(&[
        "-At",
        "-c",
        &format!(
            "\\copy accounts from '{}' with (format csv, header true)",
            file.display()
        ),
    ])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 1000");
    assert_eq!(cluster.placed_rows("accounts", "email", true).await?, 1000);
    let note: String = client
        .query_one(
            "SELECT note FROM accounts WHERE email = 'user5@example.com'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(note, "a, \"quoted\"\nnote");

    // A NULL key: the whole COPY fails and nothing of it stays on any shard.
    let file = dir.join("bad.txt");
    std::fs::write(&file, "900001\tok\n900002\tok\n\\N\tbad\n900003\tok\n")?;
    let (ok, _, err) = cluster.psql(&[
        "-At",
        "-c",
        &format!("\\copy users (id, name) from '{}'", file.display()),
    ])?;
    assert!(!ok && err.contains("NULL shard key"), "{err}");
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3500);
    // A duplicate key on one shard: the shards that succeeded roll back too.
    let file = dir.join("dup.txt");
    std::fs::write(&file, "900001\tok\n900002\tok\n77\tduplicate\n900003\tok\n")?;
    let (ok, _, err) = cluster.psql(&[
        "-At",
        "-c",
        &format!("\\copy users (id, name) from '{}'", file.display()),
    ])?;
    assert!(!ok && err.contains("duplicate key"), "{err}");
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3500);
    for i in 0..cluster.shard_count() {
        let prepared: i64 = cluster
            .shard(i)
            .await?
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?
            .get(0);
        assert_eq!(prepared, 0);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_copy_routes_rows_and_keeps_the_session_in_step() -> anyhow::Result<()> {
    use futures::SinkExt;

    let cluster = TestCluster::start("copy-extended", 3).await?;
    let client = cluster.client().await?;
    client
        .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        .await?;
    // tokio-postgres runs COPY through Bind/Execute/Sync, then CopyData…, CopyDone, Sync.
    for round in 0..3i64 {
        let sink = client.copy_in("COPY users (id, name) FROM STDIN").await?;
        futures::pin_mut!(sink);
        let rows: String = (0..1000)
            .map(|i| format!("{}\tround {round}\n", round * 1000 + i + 1))
            .collect();
        sink.send(bytes::Bytes::from(rows)).await?;
        let copied = sink.finish().await?;
        assert_eq!(copied, 1000, "COPY row count of round {round}");
        // The session is in step: a query right after the COPY gets its own answer.
        let n: i64 = client
            .query_one("SELECT count(*) FROM users", &[])
            .await?
            .get(0);
        assert_eq!(n, (round + 1) * 1000);
    }
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3000);

    // A row that collides fails the whole COPY, nothing is kept, and the client goes on.
    let sink = client.copy_in("COPY users (id, name) FROM STDIN").await?;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"5001\tnew\n5002\tnew\n7\tduplicate\n",
    ))
    .await?;
    let err = sink.finish().await.err();
    assert_eq!(
        err.and_then(|e| e.code().cloned()),
        Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(cluster.placed_rows("users", "id", false).await?, 3000);
    let n: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await?
        .get(0);
    assert_eq!(n, 3000);
    Ok(())
}
