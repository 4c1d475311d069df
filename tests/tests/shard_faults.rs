//! Shards that hang, stall, vanish or crawl, injected by a fault proxy between shardline and
//! one shard (real PostgreSQL behind it): the circuit breaker opens and closes, statements past
//! `query_timeout` are cancelled on the shard, a client idle in a transaction is cut off, a
//! queue for one shard is bounded, keepalive is on backend sockets, and
//! `shardline.partial_results` answers from the shards that are up — while clients of the
//! healthy shards see nothing of it.

use std::time::{Duration, Instant};

use shardline_tests::fault::Fault;
use shardline_tests::ops::{eventually, metric, scrape};
use shardline_tests::txn::users_table;
use shardline_tests::TestCluster;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// `n` keys of `users` on `shard`.
fn keys_on(cluster: &TestCluster, shard: usize, n: usize) -> anyhow::Result<Vec<i64>> {
    let mut keys = Vec::new();
    for key in 1..100_000 {
        if cluster.shard_of("users", key)? == shard {
            keys.push(key);
            if keys.len() == n {
                return Ok(keys);
            }
        }
    }
    anyhow::bail!("fewer than {n} keys on shard {shard}")
}

/// Inserts `users` rows with ids 1..=`n` through the proxy.
async fn fill(client: &Client, n: i64) -> anyhow::Result<()> {
    users_table(client).await?;
    let rows: Vec<String> = (1..=n).map(|i| format!("({i}, 'user {i}')")).collect();
    client
        .batch_execute(&format!(
            "INSERT INTO users (id, name) VALUES {}",
            rows.join(", ")
        ))
        .await?;
    Ok(())
}

/// The breaker state of shard `shard`'s address in `/metrics` (0 closed, 1 half-open, 2 open).
async fn breaker_state(cluster: &TestCluster, shard: usize) -> anyhow::Result<f64> {
    let s = cluster
        .config
        .shards
        .get(shard)
        .ok_or_else(|| anyhow::anyhow!("no shard {shard}"))?;
    let backend = format!("{}:{}", s.host, s.port);
    let samples = scrape(&cluster.proxy).await?;
    Ok(metric(
        &samples,
        "shardline_shard_breaker_state",
        &[("backend", &backend)],
    ))
}

/// The 99th percentile of `latencies`.
fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort_unstable();
    let at = (latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1));
    latencies.get(at).copied().unwrap_or_default()
}

/// What 8 clients saw reading keys of every shard for `run`: healthy-shard latencies, and the
/// errors (SQLSTATE, shard) of every failed read.
struct Observed {
    healthy: Vec<Duration>,
    errors: Vec<(String, usize)>,
}

async fn read_everywhere(
    cluster: &TestCluster,
    keys: &[Vec<i64>],
    stalled: usize,
    run: Duration,
) -> anyhow::Result<Observed> {
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let client = cluster.client().await?;
        let keys = keys.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut seen = Observed {
                healthy: Vec::new(),
                errors: Vec::new(),
            };
            let started = Instant::now();
            let mut i = client_no;
            while started.elapsed() < run {
                let shard = i % keys.len();
                let key = keys[shard][i % keys[shard].len()];
                i += 1;
                let at = Instant::now();
                let read = client
                    .query_one("SELECT name FROM users WHERE id = $1", &[&key])
                    .await;
                match read {
                    Ok(_) if shard != stalled => seen.healthy.push(at.elapsed()),
                    Ok(_) => {}
                    Err(e) => {
                        let code = e.code().map_or("none", |c| c.code()).to_owned();
                        seen.errors.push((code, shard));
                    }
                }
            }
            seen
        }));
    }
    let mut all = Observed {
        healthy: Vec::new(),
        errors: Vec::new(),
    };
    for task in tasks {
        let seen = task.await?;
        all.healthy.extend(seen.healthy);
        all.errors.extend(seen.errors);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_shard_fails_fast_behind_its_breaker_and_other_shards_never_notice(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start_faulty(
        "hung-shard",
        4,
        "metrics_listen: 127.0.0.1:0\nbreaker: {failures: 3, open_ms: 1500, successes: 2}\npool: {connect_timeout_ms: 1000, checkout_timeout_ms: 3000, query_timeout_ms: 1000}\n",
        3,
    )
    .await?;
    let client = cluster.client().await?;
    fill(&client, 400).await?;
    let keys: Vec<Vec<i64>> = (0..4)
        .map(|s| keys_on(&cluster, s, 20))
        .collect::<anyhow::Result<_>>()?;
    let fault = cluster
        .fault
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no fault proxy"))?;

    let mut before = read_everywhere(&cluster, &keys, 3, Duration::from_secs(2)).await?;
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    assert_eq!(breaker_state(&cluster, 3).await?, 0.0);

    // The host stops answering: open connections stall mid-conversation, new ones hang.
    fault.set(Fault::Blackhole);
    let mut during = read_everywhere(&cluster, &keys, 3, Duration::from_secs(4)).await?;
    let healthy_errors: Vec<_> = during.errors.iter().filter(|(_, s)| *s != 3).collect();
    assert!(
        healthy_errors.is_empty(),
        "clients of healthy shards failed: {healthy_errors:?}"
    );
    assert!(!during.errors.is_empty(), "the stalled shard never failed");
    for (code, _) in &during.errors {
        assert!(
            code == "08006" || code == "57014",
            "a stalled-shard read failed with {code}, not 08006 or 57014"
        );
    }
    let (p99_before, p99_during) = (p99(&mut before.healthy), p99(&mut during.healthy));
    println!("healthy-shard read p99: {p99_before:?} before, {p99_during:?} with shard s3 hung");
    // Far below the 1 s the hung shard makes its own clients wait: nobody queued behind it.
    assert!(
        p99_during < Duration::from_millis(900),
        "healthy reads waited on the hung shard: p99 {p99_during:?}"
    );
    assert_ne!(
        breaker_state(&cluster, 3).await?,
        0.0,
        "the breaker is still closed"
    );

    // Once open, a statement for the shard fails at once, naming it and its breaker.
    let started = Instant::now();
    let err = client
        .query_one("SELECT name FROM users WHERE id = $1", &[&keys[3][0]])
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a read of the hung shard succeeded"))?;
    let waited = started.elapsed();
    println!("a read of the hung shard behind its open breaker failed in {waited:?}");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE));
    let text = err.as_db_error().map(|e| e.message().to_owned());
    let text = text.unwrap_or_default();
    assert!(
        text.contains("s3") && text.contains("circuit breaker open"),
        "{text}"
    );
    assert!(
        waited < Duration::from_millis(500),
        "an open breaker still waited {waited:?}"
    );

    // A transaction that writes to a healthy shard and then the hung one commits nowhere.
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!(
            "UPDATE users SET name = 'moved' WHERE id = {}",
            keys[0][0]
        ))
        .await?;
    let failed = client
        .simple_query(&format!(
            "UPDATE users SET name = 'moved' WHERE id = {}",
            keys[3][0]
        ))
        .await;
    assert!(failed.is_err());
    client.simple_query("ROLLBACK").await?;
    let name: String = cluster
        .shard(0)
        .await?
        .query_one("SELECT name FROM users WHERE id = $1", &[&keys[0][0]])
        .await?
        .get(0);
    assert_ne!(name, "moved", "a failed transaction committed on shard s0");

    // The host answers again, but refuses the proxy's logins: a refusal is an answer (the
    // shard is reachable, and its clients should hear why it refuses), so probes close the
    // breaker all the same.
    let s3_admin =
        shardline_tests::connect(&cluster.pg.servers()[3].superuser_conninfo_db("app")).await?;
    s3_admin.batch_execute("ALTER ROLE app NOLOGIN").await?;
    fault.set(Fault::Pass);
    eventually("the breaker to close", Duration::from_secs(10), || async {
        Ok((breaker_state(&cluster, 3).await? == 0.0).then_some(()))
    })
    .await?;
    s3_admin.batch_execute("ALTER ROLE app LOGIN").await?;
    let name: String = client
        .query_one("SELECT name FROM users WHERE id = $1", &[&keys[3][0]])
        .await?
        .get(0);
    assert_eq!(name, format!("user {}", keys[3][0]));
    let samples = scrape(&cluster.proxy).await?;
    assert!(
        metric(
            &samples,
            "shardline_shard_breaker_transitions_total",
            &[("to", "open")]
        ) >= 1.0
    );
    assert!(
        metric(
            &samples,
            "shardline_shard_breaker_transitions_total",
            &[("to", "closed")]
        ) >= 1.0
    );
    for shard in 0..4 {
        let prepared: i64 = cluster
            .shard(shard)
            .await?
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?
            .get(0);
        assert_eq!(
            prepared, 0,
            "a prepared transaction was left on shard {shard}"
        );
    }
    Ok(())
}

/// Statements on `shard` (direct) that are still running `needle`.
async fn running(cluster: &TestCluster, shard: usize, needle: &str) -> anyhow::Result<i64> {
    Ok(cluster
        .shard(shard)
        .await?
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle' AND query LIKE $1",
            &[&format!("%{needle}%")],
        )
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_cancels_the_statement_on_the_shard() -> anyhow::Result<()> {
    let cluster =
        TestCluster::start_faulty("query-timeout", 2, "pool: {query_timeout_ms: 500}\n", 1).await?;
    let client = cluster.client().await?;
    fill(&client, 100).await?;
    let key = keys_on(&cluster, 0, 1)?[0];

    // One shard: 57014 after the limit, the statement gone from the shard, the session goes on.
    let started = Instant::now();
    let err = client
        .query_one(
            "SELECT pg_sleep(30), name FROM users WHERE id = $1",
            &[&key],
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 30 s statement finished under a 500 ms limit"))?;
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    eventually(
        "the shard to cancel the statement",
        Duration::from_secs(5),
        || async { Ok((running(&cluster, 0, "pg_sleep(30)").await? == 0).then_some(())) },
    )
    .await?;
    let name: String = client
        .query_one("SELECT name FROM users WHERE id = $1", &[&key])
        .await?
        .get(0);
    assert_eq!(name, format!("user {key}"));

    // Across shards: the same code.
    let err = client
        .simple_query("SELECT count(*) FROM users WHERE pg_sleep(0.05) IS NOT NULL")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 2.5 s scatter finished under a 500 ms limit"))?;
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");

    // Mid-result: rows flow, then the shard stalls; the statement is cancelled, not hung.
    let fault = cluster
        .fault
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no fault proxy"))?;
    let far = keys_on(&cluster, 1, 1)?[0];
    let reader = cluster.client().await?;
    fault.set(Fault::Latency {
        base: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
    });
    let stream = reader
        .query_raw(
            "SELECT g, repeat('x', 200) FROM users, generate_series(1, 200000) g WHERE id = $1",
            [far],
        )
        .await;
    let outcome = match stream {
        Ok(rows) => {
            use futures::TryStreamExt;
            let mut rows = std::pin::pin!(rows);
            let first = rows.try_next().await;
            assert!(matches!(first, Ok(Some(_))), "no row arrived: {first:?}");
            fault.set(Fault::Blackhole);
            loop {
                match rows.try_next().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        }
        Err(e) => Err(e),
    };
    fault.set(Fault::Pass);
    let err = outcome
        .err()
        .ok_or_else(|| anyhow::anyhow!("a stalled result completed"))?;
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");

    // Inside a transaction the backend and its work are gone: the session ends with 57014.
    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!("UPDATE users SET name = 'in tx' WHERE id = {key}"))
        .await?;
    let err = client
        .simple_query(&format!("SELECT pg_sleep(30) FROM users WHERE id = {key}"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 30 s statement finished in a transaction"))?;
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session went on"
    );
    let fresh = cluster.client().await?;
    let name: String = fresh
        .query_one("SELECT name FROM users WHERE id = $1", &[&key])
        .await?
        .get(0);
    assert_eq!(
        name,
        format!("user {key}"),
        "the transaction's update survived"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_mid_transaction_is_discarded_and_the_shard_serves_again(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start_faulty("cut", 2, "", 1).await?;
    let client = cluster.client().await?;
    fill(&client, 100).await?;
    let fault = cluster
        .fault
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no fault proxy"))?;
    let keys = keys_on(&cluster, 1, 2)?;

    client.simple_query("BEGIN").await?;
    client
        .simple_query(&format!("DELETE FROM users WHERE id = {}", keys[0]))
        .await?;
    fault.cut();
    let err = client
        .simple_query(&format!("DELETE FROM users WHERE id = {}", keys[1]))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a statement ran on a cut connection"))?;
    let code = err.code().cloned();
    assert!(
        code == Some(SqlState::CONNECTION_FAILURE) || code == Some(SqlState::ADMIN_SHUTDOWN),
        "{err:?}"
    );

    // A new client's transaction on the shard works: the broken backends were discarded.
    let fresh = cluster.client().await?;
    fresh.simple_query("BEGIN").await?;
    fresh
        .simple_query(&format!(
            "UPDATE users SET name = 'after' WHERE id = {}",
            keys[1]
        ))
        .await?;
    fresh.simple_query("COMMIT").await?;
    let names: Vec<String> = cluster
        .shard(1)
        .await?
        .query(
            "SELECT name FROM users WHERE id = ANY($1) ORDER BY id",
            &[&keys],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        [format!("user {}", keys[0]), "after".to_owned()],
        "the cut transaction's delete must be rolled back"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_idle_in_a_transaction_is_cut_off_and_its_work_rolled_back() -> anyhow::Result<()>
{
    let cluster =
        TestCluster::start_with("idle-tx", 2, "idle_transaction_timeout_ms: 300\n").await?;
    let client = cluster.client().await?;
    fill(&client, 10).await?;
    client.simple_query("BEGIN").await?;
    client
        .simple_query("UPDATE users SET name = 'held' WHERE id = 1")
        .await?;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let err = client
        .simple_query("SELECT 1")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an idle transaction outlived the limit"))?;
    let db = err.as_db_error().map(|e| e.code().clone());
    let closed = db.is_none() && client.is_closed();
    assert!(
        db == Some(SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT) || closed,
        "{err:?}"
    );
    let shard = cluster.shard_of("users", 1)?;
    eventually(
        "the held backend to be released",
        Duration::from_secs(5),
        || async { Ok((running(&cluster, shard, "held").await? == 0).then_some(())) },
    )
    .await?;
    let fresh = cluster.client().await?;
    let name: String = fresh
        .query_one("SELECT name FROM users WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(name, "user 1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_queued_for_one_shard_are_bounded() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(
        "queue-bound",
        2,
        "pool: {size: 1, max_waiting_clients: 2, checkout_timeout_ms: 10000}\n",
    )
    .await?;
    let client = cluster.client().await?;
    fill(&client, 50).await?;
    let key = keys_on(&cluster, 0, 1)?[0];
    let other = keys_on(&cluster, 1, 1)?[0];
    let holder = cluster.client().await?;
    let held = tokio::spawn(async move {
        holder
            .query_one(
                "SELECT pg_sleep(1.5), name FROM users WHERE id = $1",
                &[&key],
            )
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let c = cluster.client().await?;
        waiters.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = c
                .query_one("SELECT name FROM users WHERE id = $1", &[&key])
                .await;
            (
                result.err().and_then(|e| e.code().cloned()),
                started.elapsed(),
            )
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The other shard's pool is untouched by the queue (the simple protocol: a statement
    // prepared without its key is described on the default shard, s0).
    let started = Instant::now();
    client
        .simple_query(&format!("SELECT name FROM users WHERE id = {other}"))
        .await?;
    assert!(started.elapsed() < Duration::from_millis(900));
    held.await??;
    let mut served = 0;
    let mut refused = Vec::new();
    for waiter in waiters {
        match waiter.await? {
            (None, _) => served += 1,
            (Some(code), waited) => refused.push((code, waited)),
        }
    }
    assert_eq!(served, 2, "two clients may wait: {refused:?}");
    assert_eq!(refused.len(), 3);
    for (code, waited) in refused {
        assert_eq!(code, SqlState::TOO_MANY_CONNECTIONS);
        assert!(
            waited < Duration::from_millis(900),
            "refused only after {waited:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_sockets_carry_tcp_keepalive() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(
        "keepalive",
        1,
        "pool: {tcp_keepalive: {idle_s: 37, interval_s: 5, count: 2}}\n",
    )
    .await?;
    let client = cluster.client().await?;
    client.simple_query("SELECT 1").await?;
    let port = cluster.pg.ports()[0];
    let out = std::process::Command::new("ss")
        .args(["-tno", "state", "established", &format!("dport = :{port}")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The proxy's own connection shows `timer:(keepalive,…)`; the test's none to this port.
    assert!(
        text.contains("timer:(keepalive"),
        "no keepalive timer:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_results_answer_from_the_shards_that_are_up_when_asked() -> anyhow::Result<()> {
    let cluster = TestCluster::start_faulty(
        "partial",
        3,
        "breaker: {failures: 100}\npool: {connect_timeout_ms: 1000}\n",
        2,
    )
    .await?;
    let client = cluster.client().await?;
    fill(&client, 60).await?;
    let fault = cluster
        .fault
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no fault proxy"))?;
    fault.set(Fault::Reset);
    fault.cut();

    // By default the read fails as a whole, naming the shard.
    let err = client
        .simple_query("SELECT id FROM users ORDER BY id")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a read over a down shard succeeded"))?;
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE));

    // Asked for, the rows of the reachable shards, exactly, and a WARNING naming the missing.
    let mut expected = Vec::new();
    for shard in 0..2 {
        for row in cluster
            .shard(shard)
            .await?
            .query("SELECT id::text FROM users", &[])
            .await?
        {
            expected.push(row.get::<_, String>(0).parse::<i64>()?);
        }
    }
    expected.sort_unstable();
    let read = |sql: &str| -> anyhow::Result<(Vec<i64>, String)> {
        let (ok, stdout, stderr) =
            cluster.psql(&["-At", "-c", "SET shardline.partial_results = on", "-c", sql])?;
        anyhow::ensure!(ok, "{sql}: {stderr}");
        let values = stdout
            .lines()
            .filter(|l| *l != "SET")
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok((values, stderr))
    };
    // Merged, concatenated and combined reads alike.
    let (ordered, warned) = read("SELECT id FROM users ORDER BY id")?;
    assert_eq!(ordered, expected);
    assert!(
        warned.contains("WARNING") && warned.contains("s2"),
        "{warned}"
    );
    let (mut plain, warned) = read("SELECT id FROM users")?;
    plain.sort_unstable();
    assert_eq!(plain, expected);
    assert!(
        warned.contains("WARNING") && warned.contains("s2"),
        "{warned}"
    );
    let (count, _) = read("SELECT count(*) FROM users")?;
    assert_eq!(count, [expected.len() as i64]);

    // Writes never go partial.
    let (ok, _, stderr) = cluster.psql(&[
        "-c",
        "SET shardline.partial_results = on",
        "-c",
        "UPDATE users SET name = 'all of them'",
    ])?;
    assert!(!ok, "a write across a down shard succeeded");
    assert!(stderr.contains("s2"), "{stderr}");
    Ok(())
}
