//! The `shardline` process killed with SIGKILL while clients commit transactions that span two
//! shards, then started again: every acknowledged transaction is on both shards, every other
//! one on both or on neither (never half), and nothing stays prepared once the restarted
//! proxy's resolver has looked (it finishes what the killed one left from the decider's fate).

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
    /// COMMIT was sent but no answer came back: committed on both shards or on neither.
    unknown: BTreeSet<i64>,
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

/// Runs transactions numbered `first`, `first + stride`, … until the proxy goes away or
/// `deadline`, recording each one's fate.
async fn run_client(
    client: Client,
    config: Arc<Config>,
    ledger: Arc<Mutex<Ledger>>,
    first: i64,
    stride: i64,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut n = first;
    while Instant::now() < deadline {
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
            // Nothing was committed: the transaction never reached its COMMIT.
            return Ok(());
        }
        let committed = client.batch_execute("COMMIT").await;
        let mut ledger = ledger.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        match committed {
            Ok(()) => ledger.acknowledged.insert(n),
            Err(_) => {
                ledger.unknown.insert(n);
                return Ok(());
            }
        };
        n += stride;
    }
    Ok(())
}

/// Runs `clients` clients against the proxy at `conninfo` for `time`, or until it dies.
async fn load(
    conninfo: &str,
    config: &Arc<Config>,
    ledger: &Arc<Mutex<Ledger>>,
    first: i64,
    clients: i64,
    time: Duration,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let deadline = Instant::now() + time;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = connect(conninfo).await?;
        tasks.push(tokio::spawn(run_client(
            client,
            config.clone(),
            ledger.clone(),
            first + c,
            clients,
            deadline,
        )));
    }
    Ok(tasks)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_proxy_leaves_no_transaction_half_committed() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shardline-crash")
        .tempdir()?;
    let mut opts = ClusterOptions::new(dir.path().join("data"), free_ports(2));
    opts.keep_data = false;
    opts.reuse_existing = false;
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
    let port = free_port();
    let yaml = config(port, &cluster.ports());
    let parsed = Arc::new(Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?);
    let path = dir.path().join("shards.yaml");
    std::fs::write(&path, &yaml)?;
    let conninfo = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");

    let mut proxy = Shardline::start(&path)?;
    connect_when_up(&conninfo)
        .await?
        .batch_execute("CREATE TABLE ledger (id bigint PRIMARY KEY)")
        .await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Load, then SIGKILL in the middle of it (many commits are between their phases).
    let tasks = load(&conninfo, &parsed, &ledger, 1, 6, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.0.kill()?;
    proxy.0.wait()?;
    for task in tasks {
        task.await??;
    }

    // Start again and go on; the resolver settles what the killed process left.
    let _restarted = Shardline::start(&path)?;
    connect_when_up(&conninfo).await?;
    let tasks = load(
        &conninfo,
        &parsed,
        &ledger,
        1_000_001,
        4,
        Duration::from_secs(1),
    )
    .await?;
    for task in tasks {
        task.await??;
    }
    let shards = [
        connect(&cluster.servers()[0].app_conninfo()).await?,
        connect(&cluster.servers()[1].app_conninfo()).await?,
    ];
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
    let ledger = ledger.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    anyhow::ensure!(
        ledger.acknowledged.len() > 10,
        "too few transactions ran to tell anything"
    );
    for n in &ledger.acknowledged {
        let both = present.contains(n) && present.contains(&pair(&parsed, *n)?);
        anyhow::ensure!(both, "acknowledged transaction {n} is not on both shards");
    }
    for n in &ledger.unknown {
        let halves = [present.contains(n), present.contains(&pair(&parsed, *n)?)];
        anyhow::ensure!(
            halves[0] == halves[1],
            "transaction {n} is on one shard only: {halves:?}"
        );
    }
    let known: BTreeSet<i64> = ledger
        .acknowledged
        .iter()
        .chain(&ledger.unknown)
        .map(|n| pair(&parsed, *n).map(|other| [*n, other]))
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
