//! Crashes while clients commit transactions that span two shards: the `shardline` process
//! killed with SIGKILL and started again, and the shard that decides the commits crashed
//! (immediate shutdown) and restarted under the proxy. Either way every acknowledged
//! transaction is on both shards, every one that failed before its COMMIT on neither, every
//! other one on both or on neither (never half), and nothing stays prepared once the resolver
//! has looked (it finishes what a crash left from the decider's fate).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline::localpg::{free_port, free_ports, ClusterOptions, LocalCluster};
use shardline_router::{Config, KeyValue};
use support::{connect, connect_when_up, Shardline};
use tokio_postgres::Client;

/// What became of the transactions the clients ran, by number.
#[derive(Default)]
struct Ledger {
    /// The client heard COMMIT.
    acknowledged: BTreeSet<i64>,
    /// COMMIT was sent but failed or no answer came back: committed on both shards or on
    /// neither.
    unknown: BTreeSet<i64>,
    /// A statement before COMMIT failed: committed nowhere.
    rolled_back: BTreeSet<i64>,
}

/// What a client does when a transaction fails.
#[derive(Clone, Copy, PartialEq)]
enum OnError {
    /// Stop (the proxy is gone).
    Stop,
    /// Roll back (or reconnect) and go on with the next transaction.
    GoOn,
}

fn config(port: u16, shard_ports: &[u16]) -> String {
    let mut yaml =
        format!("listen: 127.0.0.1:{port}\nusers:\n  - {{name: app, password: app}}\nshards:\n");
    for (i, p) in shard_ports.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{name: s{i}, host: 127.0.0.1, port: {p}, database: app}}\n"
        ));
    }
    yaml.push_str("tables:\n  - {name: ledger, sharding: hash, column: id, type: int8}\n");
    yaml
}

/// Transaction `n` writes rows `n` and `pair(n)`, which the router places on different shards.
fn pair(config: &Config, n: i64) -> anyhow::Result<i64> {
    let rule = config
        .table("ledger")
        .ok_or_else(|| anyhow::anyhow!("no ledger table"))?;
    let home = rule.shard_for(&KeyValue::Int(n))?;
    (1..1000)
        .map(|step| n + 10_000_000 * step)
        .find(|other| rule.shard_for(&KeyValue::Int(*other)).ok() != Some(home))
        .ok_or_else(|| anyhow::anyhow!("no key on another shard than {n}'s"))
}

/// Runs transactions numbered `first`, `first + stride`, … until `deadline` (or the first
/// failure, with [`OnError::Stop`]), recording each one's fate. Commits are synchronous, so an
/// acknowledged one survives a shard's crash.
async fn run_client(
    mut client: Client,
    conninfo: String,
    config: Arc<Config>,
    ledger: Arc<Mutex<Ledger>>,
    (first, stride): (i64, i64),
    deadline: Instant,
    on_error: OnError,
) -> anyhow::Result<()> {
    let mut n = first - stride;
    while Instant::now() < deadline {
        n += stride;
        if client.is_closed() {
            match durable_client(&conninfo).await {
                Ok(fresh) => client = fresh,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let other = pair(&config, n)?;
        let wrote = async {
            client.batch_execute("BEGIN").await?;
            client
                .batch_execute(&format!("INSERT INTO ledger (id) VALUES ({n})"))
                .await?;
            client
                .batch_execute(&format!("INSERT INTO ledger (id) VALUES ({other})"))
                .await
        }
        .await;
        if wrote.is_err() {
            // The transaction never reached its COMMIT.
            lock(&ledger)?.rolled_back.insert(n);
            if on_error == OnError::Stop {
                return Ok(());
            }
            let _ = client.batch_execute("ROLLBACK").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let committed = client.batch_execute("COMMIT").await;
        match committed {
            Ok(()) => lock(&ledger)?.acknowledged.insert(n),
            Err(_) if on_error == OnError::Stop => {
                lock(&ledger)?.unknown.insert(n);
                return Ok(());
            }
            Err(_) => lock(&ledger)?.unknown.insert(n),
        };
    }
    Ok(())
}

/// A client of the proxy whose commits wait for their WAL to be written, so an acknowledged
/// commit survives a shard's crash (the test servers run with `synchronous_commit=off`).
async fn durable_client(conninfo: &str) -> anyhow::Result<Client> {
    let client = connect(conninfo).await?;
    client.batch_execute("SET synchronous_commit = on").await?;
    Ok(client)
}

fn lock(ledger: &Mutex<Ledger>) -> anyhow::Result<std::sync::MutexGuard<'_, Ledger>> {
    ledger.lock().map_err(|_| anyhow::anyhow!("poisoned"))
}

/// Runs `clients` clients against the proxy at `conninfo` for `time`, or until it dies.
async fn load(
    conninfo: &str,
    config: &Arc<Config>,
    ledger: &Arc<Mutex<Ledger>>,
    (first, clients): (i64, i64),
    time: Duration,
    on_error: OnError,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let deadline = Instant::now() + time;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = durable_client(conninfo).await?;
        tasks.push(tokio::spawn(run_client(
            client,
            conninfo.to_owned(),
            config.clone(),
            ledger.clone(),
            (first + c, clients),
            deadline,
            on_error,
        )));
    }
    Ok(tasks)
}

/// Two shards and a `shards.yaml` for the `shardline` binary, with the `ledger` table's rule.
struct Setup {
    _dir: tempfile::TempDir,
    opts: ClusterOptions,
    cluster: LocalCluster,
    config: Arc<Config>,
    path: std::path::PathBuf,
    conninfo: String,
}

async fn setup(label: &str) -> anyhow::Result<Setup> {
    let dir = tempfile::Builder::new().prefix(label).tempdir()?;
    let mut opts = ClusterOptions::new(dir.path().join("data"), free_ports(2));
    opts.keep_data = false;
    opts.reuse_existing = false;
    let started = opts.clone();
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&started)).await??;
    let port = free_port();
    let yaml = config(port, &cluster.ports());
    let config = Arc::new(Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?);
    let path = dir.path().join("shards.yaml");
    std::fs::write(&path, &yaml)?;
    Ok(Setup {
        _dir: dir,
        opts,
        cluster,
        config,
        path,
        conninfo: format!("host=127.0.0.1 port={port} user=app password=app dbname=app"),
    })
}

async fn create_ledger(conninfo: &str) -> anyhow::Result<()> {
    connect_when_up(conninfo)
        .await?
        .batch_execute("CREATE TABLE ledger (id bigint PRIMARY KEY)")
        .await?;
    Ok(())
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Waits until the resolver left nothing prepared, then checks every transaction's fate
/// against the rows on the shards.
async fn check_fates(setup: &Setup, ledger: &Mutex<Ledger>) -> anyhow::Result<()> {
    let mut shards = Vec::new();
    for server in setup.cluster.servers() {
        shards.push(connect_when_up(&server.app_conninfo()).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut prepared = 0;
        for shard in &shards {
            let n: i64 = shard
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await?
                .get(0);
            prepared += n;
        }
        if prepared == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{prepared} prepared transactions left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut present = BTreeSet::new();
    for shard in &shards {
        for row in shard.query("SELECT id FROM ledger", &[]).await? {
            present.insert(row.get::<_, i64>(0));
        }
    }
    let config = &setup.config;
    let ledger = lock(ledger)?;
    eprintln!(
        "fates: {} acknowledged, {} unknown, {} failed before COMMIT",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        ledger.rolled_back.len()
    );
    anyhow::ensure!(
        ledger.acknowledged.len() > 10,
        "too few transactions ran to tell anything"
    );
    for n in &ledger.acknowledged {
        let both = present.contains(n) && present.contains(&pair(config, *n)?);
        anyhow::ensure!(both, "acknowledged transaction {n} is not on both shards");
    }
    for n in &ledger.rolled_back {
        let none = !present.contains(n) && !present.contains(&pair(config, *n)?);
        anyhow::ensure!(none, "transaction {n} failed before COMMIT but has rows");
    }
    for n in &ledger.unknown {
        let halves = [present.contains(n), present.contains(&pair(config, *n)?)];
        anyhow::ensure!(
            halves[0] == halves[1],
            "transaction {n} is on one shard only: {halves:?}"
        );
    }
    let known: BTreeSet<i64> = ledger
        .acknowledged
        .iter()
        .chain(&ledger.unknown)
        .map(|n| pair(config, *n).map(|other| [*n, other]))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let strays: Vec<&i64> = present.difference(&known).collect();
    anyhow::ensure!(
        strays.is_empty(),
        "rows of transactions never committed: {strays:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_proxy_leaves_no_transaction_half_committed() -> anyhow::Result<()> {
    let setup = setup("shardline-crash").await?;
    let (config, conninfo) = (&setup.config, setup.conninfo.as_str());
    let mut proxy = Shardline::start(&setup.path)?;
    create_ledger(conninfo).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Load, then SIGKILL in the middle of it (many commits are between their phases).
    let tasks = load(
        conninfo,
        config,
        &ledger,
        (1, 6),
        Duration::from_secs(30),
        OnError::Stop,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.0.kill()?;
    proxy.0.wait()?;
    finish(tasks).await?;

    // Start again and go on; the resolver settles what the killed process left.
    let _restarted = Shardline::start(&setup.path)?;
    connect_when_up(conninfo).await?;
    let time = Duration::from_secs(1);
    finish(
        load(
            conninfo,
            config,
            &ledger,
            (1_000_001, 4),
            time,
            OnError::Stop,
        )
        .await?,
    )
    .await?;
    check_fates(&setup, &ledger).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_deciding_shard_leaves_no_transaction_half_committed() -> anyhow::Result<()> {
    let mut setup = setup("shardline-shard-crash").await?;
    let (config, conninfo) = (setup.config.clone(), setup.conninfo.clone());
    let _proxy = Shardline::start(&setup.path)?;
    create_ledger(&conninfo).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // The first shard decides every commit (it comes first among the writers). Crash it under
    // load, start it again, and let the clients go on through the proxy.
    let time = Duration::from_secs(8);
    let tasks = load(&conninfo, &config, &ledger, (1, 6), time, OnError::GoOn).await?;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tokio::task::block_in_place(|| setup.cluster.crash_one(0))?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let opts = setup.opts.clone();
    tokio::task::block_in_place(|| setup.cluster.restart_one(0, &opts))?;
    finish(tasks).await?;
    {
        let ledger = lock(&ledger)?;
        anyhow::ensure!(
            !ledger.rolled_back.is_empty() || !ledger.unknown.is_empty(),
            "the crash failed no transaction; the test did not test anything"
        );
    }
    check_fates(&setup, &ledger).await
}
