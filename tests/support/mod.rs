//! Shared test support: which stores a run covers, how to reach them, unique keys, a store
//! wrapper that injects faults, and (in `proxy`) a TCP proxy that injects network faults.
//!
//! A store is covered when its cargo feature is on. Its tests then talk to the real server
//! (URLs below, overridable by environment) and fail loudly if it cannot be reached:
//! nothing is skipped in silence.
#![allow(dead_code)]

pub mod proxy;
pub mod redis_topology;
pub mod servers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use db_locks::store::{
    AdminStore, LeaseStore, LockStore, MutexRequest, PermitRequest, ReleaseRequest, RenewRequest,
};
use db_locks::{
    LockError, LockManager, LockOptions, LocksConfig, MutexLock, PermitOptions, Provider, Result,
    Semaphore,
};
use parking_lot::Mutex;

/// A store the suite can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
    Redis,
    /// Redis over TLS with a client certificate (`scripts/redis_topologies.sh` starts it).
    RedisTls,
    /// The primary of a Sentinel group.
    RedisSentinel,
    /// A Redis Cluster of three primaries and three replicas.
    RedisCluster,
    DynamoDb,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
            Backend::Redis => "redis",
            Backend::RedisTls => "redis-tls",
            Backend::RedisSentinel => "redis-sentinel",
            Backend::RedisCluster => "redis-cluster",
            Backend::DynamoDb => "dynamodb",
        }
    }

    /// Whether this is one of the Redis deployments.
    pub fn is_redis(self) -> bool {
        matches!(
            self,
            Backend::Redis | Backend::RedisTls | Backend::RedisSentinel | Backend::RedisCluster
        )
    }

    pub fn from_name(name: &str) -> Backend {
        match name {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            "mysql" => Backend::Mysql,
            "redis" => Backend::Redis,
            "redis-tls" => Backend::RedisTls,
            "redis-sentinel" => Backend::RedisSentinel,
            "redis-cluster" => Backend::RedisCluster,
            "dynamodb" => Backend::DynamoDb,
            other => panic!("unknown backend {other}"),
        }
    }

    /// The config that reaches this backend for `tenant`.
    pub fn config(self, tenant: &str) -> LocksConfig {
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let mut config = LocksConfig::new(tenant);
        config.pool_size = 16;
        config.connect_timeout = Duration::from_secs(10);
        config.retry_base = Duration::from_millis(5);
        config.retry_max = Duration::from_millis(100);
        match self {
            Backend::Sqlite => {
                config.database_url = Some(sqlite_path());
            }
            Backend::Postgres => {
                config.database_url = Some(env(
                    "DB_LOCKS_TEST_POSTGRES_URL",
                    "postgres://postgres@127.0.0.1:5432/test",
                ));
            }
            Backend::Mysql => {
                config.database_url = Some(env(
                    "DB_LOCKS_TEST_MYSQL_URL",
                    "mysql://root@127.0.0.1:3306/test",
                ));
            }
            Backend::Redis => {
                config.provider = Provider::Redis;
                config.redis_url = env("DB_LOCKS_TEST_REDIS_URL", "redis://127.0.0.1:6379");
            }
            Backend::RedisTls => {
                config.provider = Provider::Redis;
                config.redis_url = env("DB_LOCKS_TEST_REDIS_TLS_URL", "rediss://127.0.0.1:6381");
                let tls = redis_topology::default_dir().join("tls");
                config.redis_tls_ca_file = Some(tls.join("ca.crt"));
                config.redis_tls_client_cert_file = Some(tls.join("client.crt"));
                config.redis_tls_client_key_file = Some(tls.join("client.key"));
            }
            Backend::RedisSentinel => {
                config.provider = Provider::Redis;
                config.redis_url = env(
                    "DB_LOCKS_TEST_REDIS_SENTINEL_URL",
                    "redis+sentinel://127.0.0.1:26391,127.0.0.1:26392,127.0.0.1:26393/db-locks-primary",
                );
            }
            Backend::RedisCluster => {
                config.provider = Provider::Redis;
                config.redis_url = env(
                    "DB_LOCKS_TEST_REDIS_CLUSTER_URL",
                    "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,\
                     127.0.0.1:7004,127.0.0.1:7005,127.0.0.1:7006",
                );
            }
            Backend::DynamoDb => {
                config.provider = Provider::Ddb;
                config.dynamodb_endpoint = Some(env(
                    "DB_LOCKS_TEST_DYNAMODB_ENDPOINT",
                    "http://127.0.0.1:8000",
                ));
                config.dynamodb_region = Some("us-east-1".into());
            }
        }
        config
    }

    /// One store (and pool) per backend per test process, shared by every test.
    pub fn store(self) -> Arc<dyn LockStore> {
        static STORES: OnceLock<Mutex<HashMap<Backend, Arc<dyn LockStore>>>> = OnceLock::new();
        let stores = STORES.get_or_init(Default::default);
        let mut stores = stores.lock();
        stores
            .entry(self)
            .or_insert_with(|| {
                if self == Backend::DynamoDb {
                    // The AWS SDK wants credentials even for a local server.
                    for (k, v) in [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")] {
                        if std::env::var_os(k).is_none() {
                            std::env::set_var(k, v);
                        }
                    }
                }
                let config = self.config("conformance");
                db_locks::store::connect(&config).unwrap_or_else(|e| {
                    panic!(
                        "the {} store is not reachable, and this run was asked to cover it (its cargo \
                         feature is on): {e}\nStart the local services with scripts/services.sh",
                        self.name()
                    )
                })
            })
            .clone()
    }

    /// A manager for `tenant` over the shared store.
    pub fn manager(self, tenant: &str) -> LockManager {
        self.manager_over(tenant, self.store())
    }

    /// A manager for `tenant` over `store` (e.g. a [`FlakyStore`] around the shared one).
    pub fn manager_over(self, tenant: &str, store: Arc<dyn LockStore>) -> LockManager {
        self.manager_with(tenant, store, |_| {})
    }

    /// As [`Backend::manager_over`], with settings changed by `tweak`.
    pub fn manager_with(
        self,
        tenant: &str,
        store: Arc<dyn LockStore>,
        tweak: impl FnOnce(&mut LocksConfig),
    ) -> LockManager {
        let mut config = self.config(tenant);
        tweak(&mut config);
        LockManager::from_store(&config, store, &prometheus::Registry::new()).unwrap()
    }
}

/// One SQLite file per test process (or the one `DB_LOCKS_TEST_SQLITE_PATH` names, which is
/// how cross-process tests share theirs with the processes they start).
pub fn sqlite_path() -> String {
    if let Ok(path) = std::env::var("DB_LOCKS_TEST_SQLITE_PATH") {
        return path;
    }
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    dir.path().join("locks.sqlite").display().to_string()
}

/// A key of its own for each test (name plus random suffix), so tests run in parallel
/// against one server.
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// `ms` milliseconds.
pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Guard options with a lease of `lease_ms`.
pub fn lease(lease_ms: u64) -> LockOptions {
    LockOptions::new().lease(ms(lease_ms))
}

/// Permit options with a lease of `lease_ms`.
pub fn permit_lease(lease_ms: u64) -> PermitOptions {
    PermitOptions::new().lease(ms(lease_ms))
}

/// What a store operation is, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Acquire,
    Renew,
    Release,
    /// Reads, deletes, semaphores, migrations.
    Other,
}

/// A fault injected into one store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with a retryable error without reaching the store.
    FailBefore,
    /// Reaches the store, then fails with a retryable error: the reply was lost.
    LoseReply,
    /// Hangs this long, then fails (a client timeout) without reaching the store.
    HangBefore(Duration),
    /// Reaches the store, then hangs this long and fails: a reply lost after a long wait.
    HangAfter(Duration),
    /// Takes this long, then answers normally.
    Slow(Duration),
}

/// One operation as the wrapper saw it.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: OpKind,
    pub fault: Option<Fault>,
    pub started: Instant,
    pub ended: Instant,
    /// The operation reached the store.
    pub applied: bool,
    pub outcome: Outcome,
}

/// What the caller got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `Ok(Some(_))` or `Ok(true)`.
    Done,
    /// `Ok(None)` or `Ok(false)`.
    Refused,
    Failed,
}

impl Fault {
    /// Its kind, for tallies.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::FailBefore => "failed before the store",
            Fault::LoseReply => "reply lost",
            Fault::HangBefore(_) => "hung, not applied",
            Fault::HangAfter(_) => "hung, applied",
            Fault::Slow(_) => "slow",
        }
    }
}

/// Chooses the fault of each operation.
pub type Injector = Box<dyn FnMut(OpKind) -> Option<Fault> + Send>;

/// Wraps a store and injects faults: by an injector that decides for every operation, or by
/// the simpler knobs below (which older tests use).
#[derive(Default)]
pub struct FlakyStore {
    pub inner: Option<Arc<dyn LockStore>>,
    /// Decides a fault for every operation, when set.
    pub injector: Mutex<Option<Injector>>,
    /// Every acquire, renewal and release, while `record` is set.
    pub events: Mutex<Vec<Event>>,
    pub record: AtomicBool,
    /// How many faults of each kind the injector chose.
    pub injected: Mutex<HashMap<&'static str, u64>>,
    /// Renewals fail with a retryable error without reaching the store.
    pub fail_renewals: AtomicBool,
    /// The next N renewals reach the store and succeed there, but report a timeout: the
    /// reply was "lost".
    pub lose_renewal_replies: AtomicUsize,
    /// Once a renewal reply has been lost, every later renewal fails without reaching the
    /// store, so the lost one stays in doubt.
    pub fail_renewals_after_lost_reply: AtomicBool,
    /// Releases fail with a retryable error.
    pub fail_releases: AtomicBool,
    /// Releases reach the store only after this many milliseconds (a stalled server).
    pub release_delay_ms: AtomicUsize,
    /// Renewals reach the store only after this many milliseconds (a slow network).
    pub renewal_delay_ms: AtomicUsize,
    /// The next N acquires (mutex or permit) reach the store, but report a timeout whatever
    /// happened there: the reply was "lost".
    pub lose_acquire_replies: AtomicUsize,
    pub renewals_seen: AtomicUsize,
    pub acquires_seen: AtomicUsize,
}

impl std::fmt::Debug for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyStore").finish_non_exhaustive()
    }
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn LockStore>) -> Arc<FlakyStore> {
        Arc::new(FlakyStore {
            inner: Some(inner),
            ..FlakyStore::default()
        })
    }

    /// Sets the injector (replacing any earlier one).
    pub fn inject(&self, injector: impl FnMut(OpKind) -> Option<Fault> + Send + 'static) {
        *self.injector.lock() = Some(Box::new(injector));
    }

    pub fn stop_injecting(&self) {
        *self.injector.lock() = None;
    }

    fn inner(&self) -> &dyn LockStore {
        &**self.inner.as_ref().expect("a FlakyStore wraps a store")
    }

    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Runs `op` of `kind` under the injector's fault, and records it.
    fn faulty<T>(
        &self,
        kind: OpKind,
        op: impl FnOnce() -> Result<T>,
        done: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let fault = self
            .injector
            .lock()
            .as_mut()
            .and_then(|choose| choose(kind));
        if let Some(f) = fault {
            *self.injected.lock().entry(f.name()).or_default() += 1;
        }
        let started = Instant::now();
        let injected = |what: &str| Err(LockError::Unavailable(format!("injected: {what}")));
        let (result, applied) = match fault {
            Some(Fault::FailBefore) => (injected("failed before reaching the store"), false),
            Some(Fault::HangBefore(d)) => {
                std::thread::sleep(d);
                (injected("timed out before reaching the store"), false)
            }
            Some(Fault::LoseReply) => {
                let _ = op();
                (injected("reply lost"), true)
            }
            Some(Fault::HangAfter(d)) => {
                let _ = op();
                std::thread::sleep(d);
                (injected("timed out waiting for the reply"), true)
            }
            Some(Fault::Slow(d)) => {
                std::thread::sleep(d);
                (op(), true)
            }
            None => (op(), true),
        };
        if self.record.load(Ordering::SeqCst) {
            self.events.lock().push(Event {
                kind,
                fault,
                started,
                ended: Instant::now(),
                applied,
                outcome: match &result {
                    Ok(v) if done(v) => Outcome::Done,
                    Ok(_) => Outcome::Refused,
                    Err(_) => Outcome::Failed,
                },
            });
        }
        result
    }

    fn acquire_knobs(
        &self,
        f: impl FnOnce() -> Result<Option<MutexLock>>,
    ) -> Result<Option<MutexLock>> {
        self.acquires_seen.fetch_add(1, Ordering::SeqCst);
        let result = f();
        if Self::take(&self.lose_acquire_replies) {
            return Err(LockError::Unavailable(
                "injected: acquire reply lost".into(),
            ));
        }
        result
    }

    fn renew_knobs(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        self.renewals_seen.fetch_add(1, Ordering::SeqCst);
        if self.fail_renewals.load(Ordering::SeqCst) {
            return Err(LockError::Unavailable("injected: renewal failed".into()));
        }
        let delay = self.renewal_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay as u64));
        }
        let result = self.inner().renew(req);
        if Self::take(&self.lose_renewal_replies) {
            assert!(
                matches!(result, Ok(Some(_))),
                "the renewal whose reply is lost must have succeeded: {result:?}"
            );
            if self.fail_renewals_after_lost_reply.load(Ordering::SeqCst) {
                self.fail_renewals.store(true, Ordering::SeqCst);
            }
            return Err(LockError::Unavailable(
                "injected: renewal reply lost".into(),
            ));
        }
        result
    }

    fn release_knobs(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        if self.fail_releases.load(Ordering::SeqCst) {
            return Err(LockError::Unavailable("injected: release failed".into()));
        }
        let delay = self.release_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay as u64));
        }
        self.inner().release(req)
    }
}

impl LeaseStore for FlakyStore {
    fn name(&self) -> &'static str {
        self.inner().name()
    }
    fn acquire_mutex(&self, req: &MutexRequest<'_>) -> Result<Option<MutexLock>> {
        self.faulty(
            OpKind::Acquire,
            || self.acquire_knobs(|| self.inner().acquire_mutex(req)),
            Option::is_some,
        )
    }
    fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<Option<MutexLock>> {
        self.faulty(
            OpKind::Acquire,
            || self.acquire_knobs(|| self.inner().acquire_permit(req)),
            Option::is_some,
        )
    }
    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        self.faulty(OpKind::Renew, || self.renew_knobs(req), Option::is_some)
    }
    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        self.faulty(
            OpKind::Release,
            || self.release_knobs(req),
            |released| *released,
        )
    }
}

impl AdminStore for FlakyStore {
    fn migrate(&self) -> Result<()> {
        self.inner().migrate()
    }
    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>> {
        self.inner().get_mutex(tenant_id, key)
    }
    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool> {
        self.inner().delete_mutex(tenant_id, key, version)
    }
    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        self.inner().put_semaphore(semaphore)
    }
    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        self.inner().get_semaphore(tenant_id, key)
    }
    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool> {
        self.inner().delete_semaphore(tenant_id, key)
    }
    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Option<Vec<MutexLock>>> {
        self.inner().semaphore_mutexes(tenant_id, key)
    }
    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>> {
        self.inner().list_mutexes(tenant_id)
    }
    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>> {
        self.inner().list_semaphores(tenant_id)
    }
}

/// The backends this build covers (by cargo feature).
pub fn covered_backends() -> Vec<Backend> {
    let mut v = Vec::new();
    if cfg!(feature = "sqlite") {
        v.push(Backend::Sqlite);
    }
    if cfg!(feature = "postgres") {
        v.push(Backend::Postgres);
    }
    if cfg!(feature = "mysql") {
        v.push(Backend::Mysql);
    }
    if cfg!(feature = "redis") {
        v.push(Backend::Redis);
    }
    if cfg!(feature = "dynamodb") {
        v.push(Backend::DynamoDb);
    }
    v
}

/// A release in one process wakes a waiter of another at once, on a store that pushes release
/// notices (PostgreSQL, Redis). The two managers are connected separately, so they share
/// nothing but the server, as two processes would; the waiter's poll interval is a minute, so
/// only the notice can get it the lock in time. Mutexes and permits alike.
pub fn a_release_wakes_a_waiter_of_another_process(b: Backend) {
    let tenant = unique("t-notify");
    let holder = LockManager::connect(&b.config(&tenant)).unwrap();
    let mut sleepy = b.config(&tenant);
    sleepy.retry_base = Duration::from_secs(60);
    sleepy.retry_max = Duration::from_secs(60);
    let waiter = LockManager::connect(&sleepy).unwrap();
    let sem = unique("notify-sem");
    holder
        .create_semaphore(&db_locks::SemaphoreBuilder::new(&sem, 1).build())
        .unwrap();
    // Four rounds each: a poll could land in time by chance (its jitter), four cannot.
    for permit in [false, true, false, true, false, true, false, true] {
        let key = if permit {
            sem.clone()
        } else {
            unique("notify")
        };
        let held: db_locks::LeaseGuard = if permit {
            holder
                .try_acquire_permit(&key, &permit_lease(10_000))
                .unwrap()
                .expect("free")
                .into()
        } else {
            holder
                .try_lock(&key, &lease(10_000))
                .unwrap()
                .expect("free")
                .into()
        };
        let waiting = {
            let (waiter, key) = (waiter.clone(), key.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let granted = if permit {
                    waiter
                        .try_acquire_permit_for(&key, ms(40_000), &permit_lease(10_000))
                        .unwrap()
                        .map(db_locks::LeaseGuard::from)
                } else {
                    waiter
                        .try_lock_for(&key, ms(40_000), &lease(10_000))
                        .unwrap()
                        .map(db_locks::LeaseGuard::from)
                };
                (granted, started.elapsed())
            })
        };
        // Long enough for the first attempt to find it busy and for the listener to start.
        std::thread::sleep(ms(700));
        held.release().unwrap();
        let (granted, waited) = waiting.join().unwrap();
        assert!(granted.is_some(), "{}: not granted", b.name());
        assert!(
            waited < Duration::from_secs(20),
            "{}: waited {waited:?}: the release did not wake the other process's waiter \
             (permit: {permit})",
            b.name()
        );
    }
}
