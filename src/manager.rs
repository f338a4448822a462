//! [`LockManager`]: the record-level API and the guard API, over any [`LockStore`].
//!
//! Validation, the wait loop with its backoff, heartbeat settings and metrics live here,
//! once, for every store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;

use crate::backoff::Backoff;
use crate::config::LocksConfig;
use crate::error::{LockError, Result};
use crate::guard::{self, MutexGuard, SemaphorePermit};
use crate::heartbeat::{Heartbeat, LeaseState};
use crate::metrics::Metrics;
use crate::model::{MutexLock, Semaphore};
use crate::options::{AcquireLockOptions, ReleaseLockOptions, SendHeartbeatOptions};
use crate::store::{AcquireRequest, LockStore, ReleaseRequest, RenewRequest};

/// Longest mutex or semaphore key, in characters.
pub const MAX_KEY_LEN: usize = 200;
/// Longest tenant id, in characters.
pub const MAX_TENANT_LEN: usize = 100;
/// Largest `data` stored with a lock, in bytes.
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// Largest semaphore.
pub const MAX_SEMAPHORE_SIZE: i64 = 10_000;
/// Longest lease (and wait): 30 days.
pub const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Hands out locks, permits and guards for one tenant, over one store.
/// Cheap to clone; clones share the store and its connection pool.
///
/// ```
/// use db_locks::{AcquireLockOptionsBuilder, LockManager, LocksConfig};
/// # let dir = tempfile::tempdir().unwrap();
/// # let url = dir.path().join("locks.sqlite").display().to_string();
/// let manager = LockManager::connect(&LocksConfig::new("docs").with_database_url(url))?;
/// let opts = AcquireLockOptionsBuilder::new("nightly-report").with_lease_duration_secs(10).build();
/// {
///     let guard = manager.lock(&opts)?;        // waits up to the lease for a busy lock
///     guard.ensure_held()?;                    // a heartbeat thread keeps renewing it
///     println!("fencing token {}", guard.fencing_token());
/// }                                            // released here
/// # Ok::<(), db_locks::LockError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LockManager {
    shared: Arc<Shared>,
}

/// What the manager, its guards and their heartbeat threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn LockStore>,
    pub(crate) config: LocksConfig,
    pub(crate) metrics: Metrics,
    registry: Registry,
}

impl Shared {
    /// A guard reports its lease lost this long before it ends by the local clock.
    pub(crate) fn safety_margin(&self, lease: Duration) -> Duration {
        match self.config.lease_safety_margin_ms {
            Some(ms) => Duration::from_millis(ms),
            None => (lease / 10).min(Duration::from_secs(1)),
        }
    }

    pub(crate) fn retry_base(&self) -> Duration {
        Duration::from_millis(self.config.retry_base_ms)
    }
}

/// A fresh random version token.
pub(crate) fn new_version() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn validate_name(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(LockError::validation(format!("{what} must not be empty")));
    }
    let len = value.chars().count();
    if len > max {
        return Err(LockError::validation(format!(
            "{what} is {len} characters long; the limit is {max}"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(LockError::validation(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Checks a mutex or semaphore key.
pub fn validate_key(key: &str) -> Result<()> {
    validate_name("key", key, MAX_KEY_LEN)
}

/// Checks the key of a held lock that a caller names to renew or release it: a mutex key, or,
/// with `semaphore_key`, the key of one of that semaphore's permit slots,
/// `<semaphore_key>_<index>` (up to [`MAX_KEY_LEN`] plus the index: a slot of the longest
/// semaphore key is longer than a mutex key may be).
pub fn validate_lock_key(key: &str, semaphore_key: Option<&str>) -> Result<()> {
    let Some(semaphore_key) = semaphore_key else {
        return validate_key(key);
    };
    validate_key(semaphore_key)?;
    let index = key
        .strip_prefix(semaphore_key)
        .and_then(|rest| rest.strip_prefix('_'))
        .filter(|i| i.parse::<u32>().is_ok_and(|n| n.to_string() == *i));
    match index {
        Some(_) => Ok(()),
        None => Err(LockError::validation(format!(
            "`{key}` is not a permit of semaphore `{semaphore_key}`: its permits are \
             `{semaphore_key}_<index>`"
        ))),
    }
}

pub(crate) fn validate_tenant(tenant: &str) -> Result<()> {
    validate_name("tenant id", tenant, MAX_TENANT_LEN)
}

fn validate_lease(what: &str, lease: Duration) -> Result<i64> {
    if lease.is_zero() {
        return Err(LockError::validation(format!(
            "{what} must be greater than zero"
        )));
    }
    if lease > MAX_LEASE {
        return Err(LockError::validation(format!(
            "{what} of {} s is longer than the limit of {} s",
            lease.as_secs(),
            MAX_LEASE.as_secs()
        )));
    }
    Ok(lease.as_millis().max(1) as i64)
}

fn validate_data(data: Option<&str>) -> Result<()> {
    match data {
        Some(d) if d.len() > MAX_DATA_LEN => Err(LockError::validation(format!(
            "data is {} bytes; the limit is {MAX_DATA_LEN}",
            d.len()
        ))),
        _ => Ok(()),
    }
}

/// Longest version, in bytes (a UUID takes 36).
pub const MAX_VERSION_LEN: usize = 64;

/// Versions are tokens: 1 to [`MAX_VERSION_LEN`] printable ASCII characters, no spaces.
fn validate_version(version: &str) -> Result<()> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(LockError::validation(format!(
            "a version is 1 to {MAX_VERSION_LEN} characters long, not {}",
            version.len()
        )));
    }
    if !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(LockError::validation(
            "a version may contain only printable ASCII characters, without spaces",
        ));
    }
    Ok(())
}

/// A grant, with the instant its request was sent (the start of the lease on our clock).
struct Grant {
    record: MutexLock,
    sent_at: Instant,
}

impl LockManager {
    /// Connects to the store that `config` names, with metrics in a registry of its own
    /// ([`LockManager::registry`]).
    pub fn connect(config: &LocksConfig) -> Result<LockManager> {
        Self::with_registry(config, &Registry::new())
    }

    /// Connects to the store that `config` names and registers metrics in `registry`.
    pub fn with_registry(config: &LocksConfig, registry: &Registry) -> Result<LockManager> {
        config.validate()?;
        let store = crate::store::connect(config)?;
        Self::from_store(config, store, registry)
    }

    /// Builds a manager over a store built by hand (or wrapped, e.g. for fault injection).
    pub fn from_store(
        config: &LocksConfig,
        store: Arc<dyn LockStore>,
        registry: &Registry,
    ) -> Result<LockManager> {
        config.validate()?;
        let metrics = Metrics::new(store.name(), registry);
        Ok(LockManager {
            shared: Arc::new(Shared {
                store,
                config: config.clone(),
                metrics,
                registry: registry.clone(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LocksConfig {
        &self.shared.config
    }

    /// The tenant every call of this manager works in.
    pub fn tenant_id(&self) -> &str {
        &self.shared.config.tenant_id
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.shared.store
    }

    /// The registry holding this manager's metrics.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Creates or upgrades the store's schema now.
    pub fn migrate(&self) -> Result<()> {
        self.shared.store.migrate()
    }

    // ----- record-level API -------------------------------------------------------------

    /// Acquires a mutex (or, with `requires_semaphore`, a permit slot of a semaphore),
    /// waiting as the options say. The caller renews it with [`LockManager::send_heartbeat`]
    /// and releases it with [`LockManager::release_lock`]; nothing renews it in the background.
    /// `Err(NotGranted)` if it stayed busy for the whole wait.
    pub fn acquire_lock(&self, opts: &AcquireLockOptions) -> Result<MutexLock> {
        self.acquire_waiting(opts).map(|g| g.record)
    }

    /// Tries once: `Ok(None)` when the lock (or every permit) is busy.
    pub fn try_acquire_lock(&self, opts: &AcquireLockOptions) -> Result<Option<MutexLock>> {
        self.acquire_once(opts).map(|g| g.map(|g| g.record))
    }

    /// Renews a lease, returning the record with its new version.
    /// `Err(NotHeld)` if the version is stale (released, deleted, or taken over) or the lease
    /// has run out by the store's clock. With [`SendHeartbeatOptions::new_version`] the call
    /// is idempotent: after a timeout, send the same options again.
    pub fn send_heartbeat(&self, opts: &SendHeartbeatOptions) -> Result<MutexLock> {
        validate_lock_key(&opts.key, opts.semaphore_key.as_deref())?;
        validate_version(&opts.version)?;
        validate_data(opts.data.as_deref())?;
        let lease = match opts.lease_duration {
            Some(lease) => lease,
            None => self.current_lease(&opts.key, opts.semaphore_key.as_deref())?,
        };
        let lease = validate_lease("lease duration", lease)?;
        let new_version = match &opts.new_version {
            Some(v) => {
                validate_version(v)?;
                v.clone()
            }
            None => new_version(),
        };
        let renewed = self.shared.store.renew(&RenewRequest {
            tenant_id: self.tenant_id(),
            semaphore_key: opts.semaphore_key.as_deref(),
            key: &opts.key,
            version: &opts.version,
            new_version: &new_version,
            lease_ms: lease,
            data: opts.data.as_deref(),
        });
        self.count("heartbeat", renewed.as_ref().ok().map(Option::is_some));
        renewed?.ok_or_else(|| LockError::NotHeld {
            key: opts.key.clone(),
            version: opts.version.clone(),
        })
    }

    /// Releases a lease. `Ok(false)` if it was not held with that version.
    pub fn release_lock(&self, opts: &ReleaseLockOptions) -> Result<bool> {
        validate_lock_key(&opts.key, opts.semaphore_key.as_deref())?;
        validate_version(&opts.version)?;
        validate_data(opts.data.as_deref())?;
        let released = self.shared.store.release(&ReleaseRequest {
            tenant_id: self.tenant_id(),
            semaphore_key: opts.semaphore_key.as_deref(),
            key: &opts.key,
            version: &opts.version,
            in_doubt_version: None,
            data: opts.data.as_deref(),
            delete: opts.delete_lock,
        });
        self.count("release", released.as_ref().ok().copied());
        released
    }

    /// Reads a plain mutex.
    pub fn get_mutex(&self, key: &str) -> Result<Option<MutexLock>> {
        validate_key(key)?;
        self.shared.store.get_mutex(self.tenant_id(), key)
    }

    /// Deletes a plain mutex: with `version`, only if it is current; without, only if no live
    /// lease holds it (`Err(Conflict)` otherwise). `Ok(false)`: nothing to delete.
    pub fn delete_mutex(&self, key: &str, version: Option<&str>) -> Result<bool> {
        validate_key(key)?;
        if let Some(v) = version {
            validate_version(v)?;
        }
        self.shared
            .store
            .delete_mutex(self.tenant_id(), key, version)
    }

    /// Creates a semaphore, or resizes an existing one (growing adds permits at once;
    /// shrinking retires busy permits as they are released). Returns the stored record.
    pub fn create_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        validate_key(&semaphore.semaphore_key)?;
        if semaphore.max_size < 1 || semaphore.max_size > MAX_SEMAPHORE_SIZE {
            return Err(LockError::validation(format!(
                "semaphore size must be between 1 and {MAX_SEMAPHORE_SIZE}, not {}",
                semaphore.max_size
            )));
        }
        let lease = if semaphore.lease_duration_ms == 0 {
            Duration::from_millis(self.shared.config.default_lease_ms)
        } else if semaphore.lease_duration_ms < 0 {
            return Err(LockError::validation(
                "semaphore lease must be greater than zero",
            ));
        } else {
            Duration::from_millis(semaphore.lease_duration_ms as u64)
        };
        let record = Semaphore {
            tenant_id: self.tenant_id().to_owned(),
            version: new_version(),
            lease_duration_ms: validate_lease("semaphore lease", lease)?,
            busy_count: 0,
            ..semaphore.clone()
        };
        self.shared.store.put_semaphore(&record)
    }

    /// Reads a semaphore with its live busy count.
    pub fn get_semaphore(&self, key: &str) -> Result<Option<Semaphore>> {
        validate_key(key)?;
        self.shared.store.get_semaphore(self.tenant_id(), key)
    }

    /// Deletes a semaphore and its slots; `Err(Conflict)` while a permit is live.
    pub fn delete_semaphore(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        self.shared.store.delete_semaphore(self.tenant_id(), key)
    }

    /// The permit slots of a semaphore, with their holders and expiry.
    pub fn get_semaphore_mutexes(&self, key: &str) -> Result<Vec<MutexLock>> {
        validate_key(key)?;
        self.shared.store.semaphore_mutexes(self.tenant_id(), key)
    }

    /// The tenant's plain mutexes.
    pub fn list_mutexes(&self) -> Result<Vec<MutexLock>> {
        self.shared.store.list_mutexes(self.tenant_id())
    }

    /// The tenant's semaphores.
    pub fn list_semaphores(&self) -> Result<Vec<Semaphore>> {
        self.shared.store.list_semaphores(self.tenant_id())
    }

    // ----- guard API --------------------------------------------------------------------

    /// Acquires the mutex `opts.key`, waiting as the options say, and keeps it renewed until
    /// the guard is dropped. `Err(NotGranted)` if it stayed busy for the whole wait.
    pub fn lock(&self, opts: &AcquireLockOptions) -> Result<MutexGuard> {
        self.expect_semaphore(opts, false)?;
        self.guard(self.acquire_waiting(opts)?, opts, guard::mutex_guard)
    }

    /// Tries once: `Ok(None)` when the mutex is busy.
    pub fn try_lock(&self, opts: &AcquireLockOptions) -> Result<Option<MutexGuard>> {
        self.expect_semaphore(opts, false)?;
        self.acquire_once(opts)?
            .map(|grant| self.guard(grant, opts, guard::mutex_guard))
            .transpose()
    }

    /// Acquires one permit of the semaphore `opts.key` (which must exist), waiting as the
    /// options say, and keeps it renewed until the permit is dropped.
    pub fn acquire_permit(&self, opts: &AcquireLockOptions) -> Result<SemaphorePermit> {
        self.expect_semaphore(opts, true)?;
        self.guard(self.acquire_waiting(opts)?, opts, guard::semaphore_permit)
    }

    /// Tries once: `Ok(None)` when every permit is busy.
    pub fn try_acquire_permit(&self, opts: &AcquireLockOptions) -> Result<Option<SemaphorePermit>> {
        self.expect_semaphore(opts, true)?;
        self.acquire_once(opts)?
            .map(|grant| self.guard(grant, opts, guard::semaphore_permit))
            .transpose()
    }

    // ----- internals --------------------------------------------------------------------

    /// Checks that the options ask for the right kind of lease, and the guard settings.
    fn expect_semaphore(&self, opts: &AcquireLockOptions, semaphore: bool) -> Result<()> {
        if opts.requires_semaphore == semaphore {
            return self.check_guard(opts);
        }
        Err(LockError::validation(if semaphore {
            "acquire_permit needs options with requires_semaphore set"
        } else {
            "lock takes a mutex; use acquire_permit for a semaphore"
        }))
    }

    /// The lease a renewal keeps when it names none: the lock's current lease (one read; for
    /// a permit, a read of its semaphore's slots); the config's default if there is none (the
    /// renewal then reports that it is not held).
    fn current_lease(&self, key: &str, semaphore_key: Option<&str>) -> Result<Duration> {
        let tenant = self.tenant_id();
        let store = &self.shared.store;
        let stored = match semaphore_key {
            None => store.get_mutex(tenant, key)?,
            Some(sem) => store
                .semaphore_mutexes(tenant, sem)?
                .into_iter()
                .find(|l| l.mutex_key == key),
        }
        .map(|lock| lock.lease_duration_ms);
        Ok(match stored.filter(|ms| *ms > 0) {
            Some(ms) => Duration::from_millis(ms as u64),
            None => self.lease_or_default(None),
        })
    }

    fn lease_or_default(&self, lease: Option<Duration>) -> Duration {
        lease.unwrap_or(Duration::from_millis(self.shared.config.default_lease_ms))
    }

    /// Counts a renew or release: `Some(true)` done, `Some(false)` not held, `None` error.
    fn count(&self, op: &str, outcome: Option<bool>) {
        let label = match outcome {
            Some(true) => "ok",
            Some(false) => "not_held",
            None => "error",
        };
        self.shared.metrics.count(op, label);
    }

    /// Validates acquire options; returns the lease in ms (0: the semaphore's) and the wait.
    fn check_acquire(&self, opts: &AcquireLockOptions) -> Result<(i64, Duration)> {
        validate_key(&opts.key)?;
        validate_data(opts.data.as_deref())?;
        let lease_ms = match opts.lease_duration {
            Some(lease) => validate_lease("lease duration", lease)?,
            None if opts.requires_semaphore => 0,
            None => validate_lease("lease duration", self.lease_or_default(None))?,
        };
        let wait = opts.wait.unwrap_or(Duration::from_millis(if lease_ms > 0 {
            lease_ms as u64
        } else {
            self.shared.config.default_lease_ms
        }));
        if wait > MAX_LEASE {
            return Err(LockError::validation(format!(
                "wait of {} s is longer than the limit of {} s",
                wait.as_secs(),
                MAX_LEASE.as_secs()
            )));
        }
        if opts.delete_on_release && opts.requires_semaphore {
            return Err(LockError::validation(
                "delete_on_release applies to mutexes, not semaphore permits",
            ));
        }
        Ok((lease_ms, wait))
    }

    /// One grant attempt with `version`. `Ok(None)` when busy. `retry`: an earlier attempt
    /// with the same version may have been applied.
    fn attempt(
        &self,
        opts: &AcquireLockOptions,
        lease_ms: i64,
        version: &str,
        retry: bool,
    ) -> Result<Option<Grant>> {
        let req = AcquireRequest {
            tenant_id: self.tenant_id(),
            key: &opts.key,
            version,
            lease_ms,
            data: opts.data.as_deref(),
            delete_on_release: opts.delete_on_release,
            retry,
        };
        let sent_at = Instant::now();
        let outcome = if opts.requires_semaphore {
            self.shared.store.try_acquire_permit(&req)
        } else {
            self.shared.store.try_acquire_mutex(&req)
        };
        let op = if opts.requires_semaphore {
            "acquire_permit"
        } else {
            "acquire_mutex"
        };
        self.shared.metrics.count(
            op,
            match &outcome {
                Ok(Some(_)) => "granted",
                Ok(None) => "busy",
                Err(_) => "error",
            },
        );
        Ok(outcome?.map(|record| Grant { record, sent_at }))
    }

    fn acquire_once(&self, opts: &AcquireLockOptions) -> Result<Option<Grant>> {
        let (lease_ms, _) = self.check_acquire(opts)?;
        self.acquire_until(opts, lease_ms, Some(Duration::ZERO))
    }

    fn acquire_waiting(&self, opts: &AcquireLockOptions) -> Result<Grant> {
        let started = Instant::now();
        let (lease_ms, wait) = self.check_acquire(opts)?;
        // A permit without a lease or a wait waits as long as its semaphore's lease, which is
        // known only from the store: `None` reads it if the first attempt finds all busy.
        let wait =
            (!opts.requires_semaphore || opts.lease_duration.is_some() || opts.wait.is_some())
                .then_some(wait);
        self.acquire_until(opts, lease_ms, wait)?
            .ok_or_else(|| LockError::NotGranted {
                key: opts.key.clone(),
                waited_ms: started.elapsed().as_millis() as u64,
            })
    }

    /// The wait loop, written once for every store: attempts until granted or the wait is
    /// over (`Ok(None)`), sleeping with capped exponential backoff and full jitter in between.
    /// `wait` `None`: the semaphore's lease (a permit's default).
    ///
    /// Invariants:
    /// * Every attempt of one call writes the same version. Once an attempt has failed in a
    ///   way that may have been applied (a retryable error: the reply may be what was lost),
    ///   later attempts ask the store to find a grant under that version, so a grant whose
    ///   reply was lost is returned, not orphaned.
    /// * Retryable errors are retried within the wait, and at least once more after an error
    ///   even when the wait is over (or zero), to settle a grant that may have been made.
    fn acquire_until(
        &self,
        opts: &AcquireLockOptions,
        lease_ms: i64,
        wait: Option<Duration>,
    ) -> Result<Option<Grant>> {
        let started = Instant::now();
        let mut deadline = wait.map(|w| started + w);
        let mut backoff = Backoff::new(
            Duration::from_millis(self.shared.config.retry_base_ms),
            Duration::from_millis(self.shared.config.retry_max_ms),
        );
        let version = new_version();
        let mut in_doubt = false;
        let mut settling_try_used = false;
        loop {
            let failed = match self.attempt(opts, lease_ms, &version, in_doubt) {
                Ok(Some(grant)) => {
                    let kind = if opts.requires_semaphore {
                        "permit"
                    } else {
                        "mutex"
                    };
                    self.shared
                        .metrics
                        .observe_wait(kind, started.elapsed().as_secs_f64());
                    return Ok(Some(grant));
                }
                // Busy; if an earlier attempt was in doubt, this one looked for it: settled.
                Ok(None) => None,
                Err(e) if e.is_retryable() => {
                    log::debug!("db-locks: acquire of `{}` failed, retrying: {e}", opts.key);
                    in_doubt = true;
                    Some(e)
                }
                Err(e) => return Err(e),
            };
            let deadline = match deadline {
                Some(d) => d,
                None => *deadline.insert(started + self.semaphore_lease(&opts.key)?),
            };
            let now = Instant::now();
            let pause = backoff.next_delay();
            if now < deadline {
                std::thread::sleep(pause.min(deadline - now));
                continue;
            }
            match failed {
                None => return Ok(None),
                Some(e) if settling_try_used => return Err(e),
                // One more try after the wait, to settle a grant that may have been made.
                Some(_) => {
                    settling_try_used = true;
                    std::thread::sleep(pause.min(self.shared.retry_base()));
                }
            }
        }
    }

    /// The default lease of semaphore `key` (one read). `Err(NotFound)` if it does not exist.
    fn semaphore_lease(&self, key: &str) -> Result<Duration> {
        let semaphore = self
            .shared
            .store
            .get_semaphore(self.tenant_id(), key)?
            .ok_or_else(|| LockError::NotFound(format!("semaphore `{key}` does not exist")))?;
        Ok(Duration::from_millis(
            semaphore.lease_duration_ms.max(0) as u64
        ))
    }

    /// The renewal schedule of a guard on `lease`: its safety margin and heartbeat period (the
    /// options', the config's, or a third of what is left of the lease after the margin).
    /// Refused when it cannot work: a margin not shorter than the lease, or a period longer
    /// than half of `lease - margin`, which would leave a failed renewal no time for a retry
    /// before the local deadline (the lease would then be lost on a healthy store, or at the
    /// first hiccup).
    fn schedule(&self, opts: &AcquireLockOptions, lease: Duration) -> Result<(Duration, Duration)> {
        let margin = self.shared.safety_margin(lease);
        if margin >= lease {
            return Err(LockError::validation(format!(
                "the lease safety margin ({} ms) must be shorter than the lease ({} ms)",
                margin.as_millis(),
                lease.as_millis()
            )));
        }
        let window = lease - margin;
        let period = opts
            .heartbeat_period
            .or(self
                .shared
                .config
                .heartbeat_period_ms
                .map(Duration::from_millis))
            .unwrap_or((window / 3).max(Duration::from_millis(1)));
        if period.is_zero() || period > window / 2 {
            return Err(LockError::validation(format!(
                "a heartbeat period of {} ms does not fit a lease of {} ms: less the safety \
                 margin of {} ms, a renewal must land within {} ms, and the period may be at \
                 most half of that ({} ms), so that a failed renewal can be retried in time",
                period.as_millis(),
                lease.as_millis(),
                margin.as_millis(),
                window.as_millis(),
                (window / 2).as_millis()
            )));
        }
        Ok((margin, period))
    }

    /// Checks the guard-only options before any I/O (a permit's lease may be the
    /// semaphore's, known only after the grant; `start` checks it again then).
    fn check_guard(&self, opts: &AcquireLockOptions) -> Result<()> {
        match opts.lease_duration {
            Some(lease) => self.schedule(opts, lease).map(|_| ()),
            None if opts.requires_semaphore => Ok(()),
            None => self.schedule(opts, self.lease_or_default(None)).map(|_| ()),
        }
    }

    /// Starts the heartbeat of a grant and wraps it in a guard of the caller's kind.
    fn guard<G>(
        &self,
        grant: Grant,
        opts: &AcquireLockOptions,
        wrap: fn(Arc<Shared>, Arc<LeaseState>, Heartbeat) -> G,
    ) -> Result<G> {
        let (state, heartbeat) = self.start(grant, opts)?;
        Ok(wrap(self.shared.clone(), state, heartbeat))
    }

    /// Starts the heartbeat of a grant; releases the grant if that fails.
    fn start(
        &self,
        grant: Grant,
        opts: &AcquireLockOptions,
    ) -> Result<(Arc<LeaseState>, Heartbeat)> {
        let lease = Duration::from_millis(grant.record.lease_duration_ms.max(1) as u64);
        let record = grant.record.clone();
        let started = self.schedule(opts, lease).and_then(|(margin, period)| {
            guard::start_lease(&self.shared, grant.record, grant.sent_at, margin, period)
        });
        if started.is_err() {
            let _ = self.shared.store.release(&ReleaseRequest {
                tenant_id: &record.tenant_id,
                semaphore_key: record.semaphore_key.as_deref(),
                key: &record.mutex_key,
                version: &record.version,
                in_doubt_version: None,
                data: None,
                delete: Some(false),
            });
        }
        started
    }
}
