//! State shared by every client connection: the current config, pools, credentials, cancel
//! registry, the plan cache, and the operations side (statistics, pause switch, shutdown
//! phase, connected clients, config source and metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use shardline_router::normalize::Literals;
use shardline_router::{Config, Plan};

use crate::admin::reshard::Confirmed;
use crate::backend::conn::BackendTarget;
use crate::backend::pool::Pools;
use crate::cancel::CancelRegistry;
use crate::client::auth::Credentials;
use crate::clients::Clients;
use crate::keys::KeySource;
use crate::metrics::Metrics;
use crate::migration::{Active, MigrationGate};
use crate::pause::PauseGate;
use crate::reload::ConfigSource;
use crate::resolver::decisions::DecisionTables;
use crate::shutdown::Shutdown;
use crate::stats::{QueryStats, ShardStats};
use crate::tls::ServerTls;

/// Longest statement shape a session remembers (see [`LastShape`]).
const MAX_REMEMBERED_SHAPE: usize = 4096;

/// Most distinct sets of settings shared between clients.
const SHARED_SETTINGS_LIMIT: usize = 64;

/// Most plans kept before the cache is cleared (bounded memory under literal-heavy workloads).
const PLAN_CACHE_LIMIT: usize = 10_000;

/// One loaded configuration with everything derived from it.
pub struct Loaded {
    /// The config served: `shards.yaml` with the running migration's overlay (see
    /// [`shardline_router::migration::Layout::overlay`]).
    pub config: Config,
    /// The resharding migration this proxy takes part in, if any.
    pub migration: Option<Arc<Active>>,
    /// SCRAM material of its users.
    pub credentials: Credentials,
    /// Increases with every successful load; plans are cached per version.
    pub version: u64,
    /// The statistics counters of its shards.
    pub stats: ShardStats,
}

/// Everything a session needs from the proxy as a whole.
pub struct ProxyContext {
    current: ArcSwap<Loaded>,
    /// The version of `current`, stored after it: a session holding a snapshot of this
    /// version may go on using it ([`ProxyContext::refresh`]).
    published: AtomicU64,
    /// `shards.yaml` as last loaded, before any migration overlay; swaps are serialised by
    /// this lock so a reload and a migration change cannot lose each other's update.
    file: Mutex<(Arc<Config>, Option<Arc<Active>>)>,
    /// Draining and holding writes for resharding.
    pub gate: MigrationGate,
    /// The migration whose dual writes this proxy confirmed.
    pub confirmed: Confirmed,
    /// Backend connection pools.
    pub pools: Pools,
    /// Client cancel keys and the backends they reach.
    pub cancels: Arc<CancelRegistry>,
    plans: Mutex<PlanCache>,
    next_version: AtomicU64,
    /// Parameters each shard target reported at its first login, reported to clients at
    /// theirs (so a login does not need a free backend).
    server_params: Mutex<HashMap<BackendTarget, Vec<(String, String)>>>,
    /// The settings clients were told at login and asked for in their startup packets, each
    /// distinct set kept once: nearly every client of a proxy has the same, 10,000 idle
    /// clients should not hold 10,000 copies, and identical sets compare by identity.
    shared: Mutex<Vec<Arc<BTreeMap<String, String>>>>,
    /// Statements, errors and transactions per shard.
    pub stats: QueryStats,
    /// `PAUSE` / `RESUME`, checked before each new transaction.
    pub pause: PauseGate,
    /// Where the proxy is in its life (running, draining, closed).
    pub shutdown: Shutdown,
    /// Connected clients.
    pub clients: Arc<Clients>,
    /// The config file and how reloading it went.
    pub source: ConfigSource,
    /// The Prometheus registry behind `/metrics`.
    pub metrics: Metrics,
    /// Shard keys generated for `INSERT`s that leave them to the table's default.
    pub keys: KeySource,
    /// The shards known to hold the table two-phase commits record their decisions in.
    pub decisions: DecisionTables,
    /// What clients are offered for TLS.
    pub tls: ServerTls,
}

#[derive(Default)]
struct PlanCache {
    version: u64,
    /// Plans by exact statement text.
    plans: HashMap<Box<str>, Arc<Plan>>,
    /// Plans by literal-free text (see `shardline_router::normalize`); `None` marks a shape
    /// that does not parse, whose statements are planned by their exact text instead.
    shapes: HashMap<Box<str>, Option<Arc<Plan>>>,
}

impl PlanCache {
    /// Starts over when the config changed or the cache is full.
    fn prepare(&mut self, version: u64) {
        if self.version != version || self.plans.len() + self.shapes.len() >= PLAN_CACHE_LIMIT {
            self.plans.clear();
            self.shapes.clear();
            self.version = version;
        }
    }
}

impl ProxyContext {
    /// A context serving `config` (read from `source`) as version 1.
    pub fn new(config: Config, source: ConfigSource, tls: ServerTls) -> Arc<ProxyContext> {
        let credentials = Credentials::from_config(&config);
        let pools = Pools::default();
        pools.backends().configure_breakers(config.breaker);
        let stats = QueryStats::default();
        let clients = Arc::new(Clients::default());
        let metrics = Metrics::new(&pools, &stats, &clients, &source);
        Arc::new(ProxyContext {
            current: ArcSwap::from_pointee(Loaded {
                stats: stats.for_config(&config),
                config: config.clone(),
                migration: None,
                credentials,
                version: 1,
            }),
            published: AtomicU64::new(1),
            file: Mutex::new((Arc::new(config), None)),
            gate: MigrationGate::default(),
            confirmed: Confirmed::default(),
            pools,
            cancels: Arc::default(),
            plans: Mutex::new(PlanCache::default()),
            next_version: AtomicU64::new(2),
            server_params: Mutex::new(HashMap::new()),
            shared: Mutex::default(),
            stats,
            pause: PauseGate::default(),
            shutdown: Shutdown::default(),
            clients,
            source,
            metrics,
            keys: KeySource::default(),
            decisions: DecisionTables::default(),
            tls,
        })
    }

    /// The config a request should use from its start to its end.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// [`ProxyContext::snapshot`] for a session that kept its last request's: that one while
    /// it is still current. Taking a fresh snapshot adds to a count every serving thread
    /// shares (and arc-swap's bookkeeping); checking the version reads a line nobody writes
    /// between reloads.
    pub fn refresh(&self, held: Option<Arc<Loaded>>) -> Arc<Loaded> {
        match held {
            Some(loaded) if loaded.version == self.published.load(Ordering::Acquire) => loaded,
            _ => self.snapshot(),
        }
    }

    /// Replaces the config read from `shards.yaml`; requests already running keep the snapshot
    /// they took. A running migration's overlay is applied to it, so a reload keeps the phase.
    pub fn replace(&self, config: Config) -> u64 {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.0 = Arc::new(config);
        self.publish(&file)
    }

    /// Serves `migration` (read from the catalog) on top of the current `shards.yaml`.
    pub fn set_migration(&self, migration: Option<Active>) -> u64 {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.1 = migration.map(Arc::new);
        self.publish(&file)
    }

    /// What serving `file` as `shards.yaml` would serve: `file` with the migration overlay.
    pub fn would_serve(&self, file: &Config) -> Config {
        let current = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        overlaid(file, current.1.as_deref())
    }

    /// `shards.yaml` as last loaded, without the migration overlay.
    pub fn file_config(&self) -> Arc<Config> {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    fn publish(&self, (file, migration): &(Arc<Config>, Option<Arc<Active>>)) -> u64 {
        let config = overlaid(file, migration.as_deref());
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let credentials = Credentials::from_config(&config);
        self.current.store(Arc::new(Loaded {
            stats: self.stats.for_config(&config),
            config,
            migration: migration.clone(),
            credentials,
            version,
        }));
        self.published.store(version, Ordering::Release);
        version
    }

    /// Server parameters remembered for `target`, if a login already learned them.
    pub fn server_params(&self, target: &BackendTarget) -> Option<Vec<(String, String)>> {
        self.server_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
            .cloned()
    }

    /// Remembers the parameters `target` reported.
    pub fn remember_server_params(&self, target: BackendTarget, params: Vec<(String, String)>) {
        self.server_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, params);
    }

    /// `settings` (reported to a client, or asked for at its startup), shared with the
    /// clients that had the same before: one copy in memory, and backends synced to one
    /// client's settings are seen to match the next client's by identity.
    pub fn shared_settings(
        &self,
        settings: BTreeMap<String, String>,
    ) -> Arc<BTreeMap<String, String>> {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = shared.iter().find(|known| ***known == settings) {
            return known.clone();
        }
        let settings = Arc::new(settings);
        if shared.len() < SHARED_SETTINGS_LIMIT {
            shared.push(settings.clone());
        }
        settings
    }

    /// The routing plan of `sql` under `loaded`, analysed once per config version.
    pub fn plan(&self, loaded: &Loaded, sql: &str) -> Arc<Plan> {
        {
            let cache = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.version == loaded.version {
                if let Some(plan) = cache.plans.get(sql) {
                    return plan.clone();
                }
            }
        }
        let plan = Arc::new(shardline_router::plan(&loaded.config, sql));
        let mut cache = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        cache.prepare(loaded.version);
        cache.plans.insert(sql.into(), plan.clone());
        plan
    }

    /// The plan of a simple-protocol statement, shared by every statement of the same shape
    /// (constants replaced by parameters), and the constants to route it with.
    /// `last` is the caller's memo of its previous shape: a client repeating a statement
    /// shape (nearly every client, nearly always) finds its plan there, without the shared
    /// cache's lock or a hash of the text.
    pub fn plan_simple<'l, 's>(
        &self,
        loaded: &Loaded,
        sql: &'s str,
        last: &'l mut LastShape,
    ) -> (SimplePlan<'l>, Literals<'s>) {
        let literals = match last.matching(loaded.version, sql) {
            Some(literals) => literals,
            None => match self.plan_shape(loaded, sql) {
                Planned::Kept(shape, literals) => {
                    last.0 = Some(shape);
                    literals
                }
                Planned::Own(plan, literals) => return (SimplePlan::Own(plan), literals),
            },
        };
        match &last.0 {
            Some(shape) => (SimplePlan::Last(&shape.plan), literals),
            None => (SimplePlan::Own(self.plan(loaded, sql)), literals),
        }
    }

    /// The plan of `sql`'s shape from the shared cache (planned now if it is not there), as
    /// a shape for the session to keep unless the statement is huge or has no shape.
    fn plan_shape<'s>(&self, loaded: &Loaded, sql: &'s str) -> Planned<'s> {
        let Some(shape) = shardline_router::normalize::normalize(sql) else {
            return Planned::Own(self.plan(loaded, sql), Literals::new());
        };
        let cached = {
            let cache = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
            (cache.version == loaded.version)
                .then(|| cache.shapes.get(shape.text.as_str()).cloned())
                .flatten()
        };
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let plan = shardline_router::normalize::parses(&shape.text)
                    .then(|| Arc::new(shardline_router::plan(&loaded.config, &shape.text)));
                let mut cache = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
                cache.prepare(loaded.version);
                cache
                    .shapes
                    .insert(shape.text.as_str().into(), plan.clone());
                plan
            }
        };
        match plan {
            // A huge statement (a bulk VALUES list) is not kept per session.
            Some(plan) if shape.text.len() > MAX_REMEMBERED_SHAPE => {
                Planned::Own(plan, shape.literals)
            }
            Some(plan) => Planned::Kept(
                Shape {
                    version: loaded.version,
                    text: shape.text,
                    holes: shape.holes,
                    plan,
                },
                shape.literals,
            ),
            None => Planned::Own(self.plan(loaded, sql), Literals::new()),
        }
    }
}

/// A simple-protocol statement planned by [`ProxyContext::plan_shape`], with its constants.
enum Planned<'s> {
    /// A shape for the session to keep.
    Kept(Shape, Literals<'s>),
    /// A plan for this statement only.
    Own(Arc<Plan>, Literals<'s>),
}

/// The plan [`ProxyContext::plan_simple`] found: the session's last shape's, borrowed (no
/// count to add to on the plan every session of that shape shares), or one of its own.
pub enum SimplePlan<'l> {
    /// The plan of the statement shape the session keeps.
    Last(&'l Plan),
    /// A plan not kept by the session (a huge statement, or one with no shape).
    Own(Arc<Plan>),
}

impl std::ops::Deref for SimplePlan<'_> {
    type Target = Plan;

    fn deref(&self) -> &Plan {
        match self {
            SimplePlan::Last(plan) => plan,
            SimplePlan::Own(plan) => plan,
        }
    }
}

/// One client's last simple-protocol statement shape and its plan (see
/// [`ProxyContext::plan_simple`]).
#[derive(Default)]
pub struct LastShape(Option<Shape>);

/// A statement shape (see `shardline_router::normalize`) planned under a config version.
struct Shape {
    version: u64,
    text: String,
    holes: Vec<usize>,
    plan: Arc<Plan>,
}

impl LastShape {
    /// The constants of `sql` if it has the last shape, planned under config `version`.
    fn matching<'s>(&self, version: u64, sql: &'s str) -> Option<Literals<'s>> {
        let shape = self.0.as_ref().filter(|shape| shape.version == version)?;
        shardline_router::normalize::literals_in(&shape.text, &shape.holes, sql)
    }
}

/// `file` as served while `migration` (if any) runs.
fn overlaid(file: &Config, migration: Option<&Active>) -> Config {
    match migration {
        Some(active) => active.layout.overlay(file, active.phase),
        None => file.clone(),
    }
}
