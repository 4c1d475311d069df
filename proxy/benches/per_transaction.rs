//! The proxy's own work per single-shard transaction, without sockets: finding the plan of a
//! statement (literal scan + plan cache for the simple protocol, the cache alone for a
//! prepared statement), routing its key, checking the backend's settings, checking a
//! connection out of its pool and back, recording the statistics, and framing the proxy's own
//! messages. Regressions here show without a cluster;
//! `bench/pgbench_proxy.sh` measures the whole path (sockets, runtime, PostgreSQL).
//!
//!     cargo bench -p shardline --bench per_transaction

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shardline::backend::slots::{Homed, Slots, Taken};
use shardline::context::{LastShape, ProxyContext};
use shardline::protocol::backend as msg;
use shardline::reload::ConfigSource;
use shardline::session::settings::{sync_sql, Settings};
use shardline_router::{Config, Param, Route};

const CONFIG: &str = "
shards:
  - { name: s0, host: 127.0.0.1, port: 5432 }
  - { name: s1, host: 127.0.0.1, port: 5433 }
  - { name: s2, host: 127.0.0.1, port: 5434 }
  - { name: s3, host: 127.0.0.1, port: 5435 }
tables:
  - { name: users, sharding: hash, column: id, type: int8 }
users:
  - { name: app, password: app }
";

fn per_transaction(c: &mut Criterion) {
    let config = match Config::from_yaml(CONFIG) {
        Ok(config) => config,
        Err(e) => panic!("the bench config does not load: {e}"),
    };
    let ctx = ProxyContext::new(
        config,
        ConfigSource::in_memory(),
        shardline::tls::ServerTls::disabled(),
    );
    let loaded = ctx.snapshot();
    let mut group = c.benchmark_group("per_transaction");

    let mut id = 0u64;
    let mut texts: Vec<String> = (0..1024)
        .map(|i| format!("SELECT name FROM users WHERE id = {}", i * 7919 % 100_000))
        .collect();
    texts.shrink_to_fit();
    let mut last = LastShape::default();
    group.bench_function("simple: scan, cached plan, route", |b| {
        b.iter(|| {
            id = id.wrapping_add(1);
            let sql = &texts[id as usize % texts.len()];
            let (plan, literals) = ctx.plan_simple(&loaded, sql, &mut last);
            let params: Vec<Param<'_>> =
                literals.iter().map(|l| Param::Text(l.as_bytes())).collect();
            let route = plan.route(&loaded.config, &params);
            assert!(matches!(route, Ok(Route::Single(_))));
            black_box(route)
        })
    });

    let prepared = "SELECT name FROM users WHERE id = $1";
    group.bench_function("extended: cached plan, route a binary Bind", |b| {
        b.iter(|| {
            id = id.wrapping_add(1);
            let key = (id % 100_000).to_be_bytes();
            let plan = ctx.plan(&loaded, prepared);
            let route = plan.route(&loaded.config, &vec![Param::Binary(&key)]);
            assert!(matches!(route, Ok(Route::Single(_))));
            black_box(route)
        })
    });

    let pairs = [
        ("application_name", "'pgbench'"),
        ("client_encoding", "'UTF8'"),
        ("datestyle", "'ISO, MDY'"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let settings: Settings = pairs.clone().into_iter().collect();
    // Synced to another client with the same settings (equal, not shared).
    let applied: Settings = pairs.into_iter().collect();
    group.bench_function("settings: backend in line, compared", |b| {
        b.iter(|| black_box(sync_sql(Some(&applied), &settings)))
    });
    // Synced to this client last time (the map is shared).
    let shared = settings.clone();
    group.bench_function("settings: backend in line, shared", |b| {
        b.iter(|| black_box(sync_sql(Some(&shared), &settings)))
    });

    group.bench_function("stats: record one exchange", |b| {
        b.iter(|| {
            ctx.stats
                .record_query(&loaded, 1, true, true, Duration::from_micros(80))
        })
    });

    // The pool's bookkeeping around one transaction: take the free connection, give it back.
    let slots: Slots<Box<Connection>> = Slots::new(4, drop);
    if let Some(Taken::Open) = slots.take_now(0) {
        slots.give_back(Box::new(Connection([0; 512])), Instant::now());
    }
    group.bench_function("pool: check out and return a free connection", |b| {
        b.iter(|| {
            if let Some(Taken::Idle(conn)) = slots.take_now(0) {
                slots.give_back(black_box(conn), Instant::now());
            }
        })
    });

    group.bench_function("framing: CommandComplete + ReadyForQuery", |b| {
        b.iter(|| {
            black_box(msg::command_complete("SELECT 1"));
            black_box(msg::ready_for_query(b'I'))
        })
    });
    group.finish();
}

criterion_group!(benches, per_transaction);
criterion_main!(benches);

/// A stand-in for a pooled connection: something of a backend's size, whose first byte
/// names its serving thread (0).
struct Connection([u8; 512]);

impl Homed for Connection {
    fn home(&self) -> u16 {
        u16::from(self.0[0])
    }
}
