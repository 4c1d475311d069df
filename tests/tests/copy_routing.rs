//! `COPY … FROM STDIN` into a sharded table (psql's `\copy`): every row lands on the shard that
//! owns its key (checked on each shard directly), in text and CSV, with or without a column
//! list; a row that cannot be placed fails the whole COPY and no shard keeps any row.

use shardline_router::KeyValue;
use shardline_tests::TestCluster;

/// Rows of `table` per shard, read from each shard directly, with the router's placement checked.
async fn placed_rows(
    cluster: &TestCluster,
    table: &str,
    key: &str,
    text_key: bool,
) -> anyhow::Result<usize> {
    let rule = cluster.rule(table)?;
    let mut total = 0;
    for i in 0..cluster.shard_count() {
        let shard = cluster.shard(i).await?;
        for row in shard
            .query(&format!("SELECT {key}::text FROM {table}"), &[])
            .await?
        {
            let value: String = row.get(0);
            let key_value = if text_key {
                KeyValue::Text(value.clone())
            } else {
                KeyValue::Int(value.parse()?)
            };
            assert_eq!(
                rule.shard_for(&key_value)?,
                i,
                "{table} row {value} is on shard {i}"
            );
            total += 1;
        }
    }
    Ok(total)
}

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
    assert_eq!(placed_rows(&cluster, "users", "id", false).await?, 3000);
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
    assert_eq!(placed_rows(&cluster, "users", "id", false).await?, 3500);

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
    assert_eq!(
        placed_rows(&cluster, "accounts", "email", true).await?,
        1000
    );
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
    assert_eq!(placed_rows(&cluster, "users", "id", false).await?, 3500);
    // A duplicate key on one shard: the shards that succeeded roll back too.
    let file = dir.join("dup.txt");
    std::fs::write(&file, "900001\tok\n900002\tok\n77\tduplicate\n900003\tok\n")?;
    let (ok, _, err) = cluster.psql(&[
        "-At",
        "-c",
        &format!("\\copy users (id, name) from '{}'", file.display()),
    ])?;
    assert!(!ok && err.contains("duplicate key"), "{err}");
    assert_eq!(placed_rows(&cluster, "users", "id", false).await?, 3500);
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
