//! [`LockManager`]: the record-level API and the guard API, over any [`LockStore`].
//!
//! Validation, the wait loop with its backoff, the renewal schedule and metrics live here,
//! once, for every store.
//!
//! # Missing, not held, busy: one policy
//!
//! * Reads answer `Ok(None)` for what does not exist ([`LockManager::get_mutex`],
//!   [`LockManager::get_semaphore`]); [`LockManager::get_semaphore_mutexes`] answers
//!   `Err(NotFound)` for a missing semaphore, as does every acquire of a permit.
//! * Renewing or releasing a lease that is not held with the given version (released,
//!   deleted, taken over, run out, or never granted) is `Err(NotHeld)`.
//! * Deletes answer `Ok(false)` when there is nothing to delete, `Err(NotHeld)` when a version
//!   is given and the record has another one, and `Err(Conflict)` when, without a version, a
//!   live lease holds it.
//! * An acquire that stays busy for its whole wait is `Err(NotGranted)`; the `try_` forms
//!   answer `Ok(None)` instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;

use crate::backoff::Backoff;
use crate::config::LocksConfig;
use crate::error::{LockError, Result};
use crate::guard::{LeaseGuard, MutexGuard, SemaphorePermit};
use crate::metrics::Metrics;
use crate::model::{new_version, MutexLock, Semaphore};
use crate::options::{
    AcquireLockOptions, LockOptions, PermitOptions, ReleaseLockOptions, SendHeartbeatOptions,
};
use crate::shared::Shared;
use crate::store::{LockStore, MutexRequest, PermitRequest, ReleaseRequest, RenewRequest, Target};
use crate::validate::{
    validate_data, validate_duration, validate_key, validate_semaphore_size, validate_version,
};

/// Hands out locks, permits and guards for one tenant, over one store.
/// Cheap to clone; clones share the store and its connection pool.
///
/// ```
/// use db_locks::{LockManager, LockOptions, LocksConfig};
/// # let dir = tempfile::tempdir().unwrap();
/// # let url = dir.path().join("locks.sqlite").display().to_string();
/// let manager = LockManager::connect(&LocksConfig::new("docs").with_database_url(url))?;
/// let opts = LockOptions::new().lease(std::time::Duration::from_secs(10));
/// {
///     let guard = manager.lock("nightly-report", &opts)?; // waits up to the lease if busy
///     guard.ensure_held()?;                               // a heartbeat thread renews it
///     println!("fencing token {}", guard.fencing_token());
/// }                                                       // released here
/// # Ok::<(), db_locks::LockError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LockManager {
    shared: Arc<Shared>,
}

/// A grant, with the instant its request was sent (the start of the lease on our clock).
struct Grant {
    record: MutexLock,
    sent_at: Instant,
}

/// What one acquire asks for, whichever API it came through.
#[derive(Debug, Clone, Copy)]
struct Wanted<'a> {
    key: &'a str,
    permit: bool,
    /// `None`: the config's default lease (a mutex), the semaphore's (a permit).
    lease: Option<Duration>,
    data: Option<&'a str>,
    delete_on_release: bool,
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
                wakeups: Default::default(),
                watching: std::sync::Once::new(),
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

    /// The registry holding this manager's metrics.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Creates or upgrades the store's schema now.
    pub fn migrate(&self) -> Result<()> {
        self.store().migrate()
    }

    fn store(&self) -> &dyn LockStore {
        &*self.shared.store
    }

    // ----- record-level API -------------------------------------------------------------

    /// Acquires a mutex (or, with `requires_semaphore`, a permit slot of a semaphore),
    /// waiting as the options say (by default as long as the lease). The caller renews it
    /// with [`LockManager::send_heartbeat`] and releases it with [`LockManager::release_lock`];
    /// nothing renews it in the background. `Err(NotGranted)` if it stayed busy for the whole
    /// wait.
    pub fn acquire_lock(&self, opts: &AcquireLockOptions) -> Result<MutexLock> {
        opts.validate()?;
        let started = Instant::now();
        self.acquire_until(&Self::wanted(opts), opts.wait)?
            .map(|g| g.record)
            .ok_or_else(|| not_granted(&opts.key, started))
    }

    /// Tries once: `Ok(None)` when the lock (or every permit) is busy.
    pub fn try_acquire_lock(&self, opts: &AcquireLockOptions) -> Result<Option<MutexLock>> {
        opts.validate()?;
        Ok(self
            .acquire_until(&Self::wanted(opts), Some(Duration::ZERO))?
            .map(|g| g.record))
    }

    fn wanted(opts: &AcquireLockOptions) -> Wanted<'_> {
        Wanted {
            key: &opts.key,
            permit: opts.requires_semaphore,
            lease: opts.lease_duration,
            data: opts.data.as_deref(),
            delete_on_release: opts.delete_on_release,
        }
    }

    /// Renews a lease, returning the record with its new version. Without a lease in the
    /// options, the lock keeps its own. `Err(NotHeld)` if the version is stale (released,
    /// deleted, taken over) or the lease has run out by the store's clock. With
    /// [`SendHeartbeatOptions::new_version`] the call is idempotent: after a timeout, send the
    /// same options again.
    pub fn send_heartbeat(&self, opts: &SendHeartbeatOptions) -> Result<MutexLock> {
        let slot = opts.validate()?;
        let new_version = opts.new_version.clone().unwrap_or_else(new_version);
        let renewed = self.store().renew(&RenewRequest {
            tenant_id: self.tenant_id(),
            target: target(&opts.key, opts.semaphore_key.as_deref(), slot),
            version: &opts.version,
            new_version: &new_version,
            lease: opts.lease_duration,
            data: opts.data.as_deref(),
        });
        self.count("heartbeat", renewed.as_ref().ok().map(Option::is_some));
        renewed?.ok_or_else(|| LockError::NotHeld {
            key: opts.key.clone(),
            version: opts.version.clone(),
        })
    }

    /// Releases a lease (deleting the mutex record if the options, or with `delete_lock:
    /// None` the record's own flag, say so). `Err(NotHeld)` if it was not held with that
    /// version.
    pub fn release_lock(&self, opts: &ReleaseLockOptions) -> Result<()> {
        let slot = opts.validate()?;
        let delete = match (slot, opts.delete_lock) {
            (Some(_), _) => false,
            (None, Some(delete)) => delete,
            // As the record says (one read).
            (None, None) => self
                .get_mutex(&opts.key)?
                .is_some_and(|lock| lock.delete_on_release),
        };
        let released = self.store().release(&ReleaseRequest {
            tenant_id: self.tenant_id(),
            target: target(&opts.key, opts.semaphore_key.as_deref(), slot),
            version: &opts.version,
            in_doubt_version: None,
            data: opts.data.as_deref(),
            delete,
        });
        self.count("release", released.as_ref().ok().copied());
        if released? {
            self.shared
                .released(self.tenant_id(), &opts.key, opts.semaphore_key.as_deref());
            Ok(())
        } else {
            Err(LockError::NotHeld {
                key: opts.key.clone(),
                version: opts.version.clone(),
            })
        }
    }

    /// Reads a plain mutex. `Ok(None)`: no such mutex.
    pub fn get_mutex(&self, key: &str) -> Result<Option<MutexLock>> {
        validate_key(key)?;
        self.store().get_mutex(self.tenant_id(), key)
    }

    /// Deletes a plain mutex: with `version`, only if it is the record's (`Err(NotHeld)`
    /// otherwise); without, only if no live lease holds it (`Err(Conflict)` otherwise).
    /// `Ok(false)`: there is no such mutex.
    pub fn delete_mutex(&self, key: &str, version: Option<&str>) -> Result<bool> {
        validate_key(key)?;
        if let Some(v) = version {
            validate_version(v)?;
        }
        if self.store().delete_mutex(self.tenant_id(), key, version)? {
            self.shared.released(self.tenant_id(), key, None);
            return Ok(true);
        }
        match (version, self.get_mutex(key)?) {
            (Some(version), Some(_)) => Err(LockError::NotHeld {
                key: key.to_owned(),
                version: version.to_owned(),
            }),
            _ => Ok(false),
        }
    }

    /// Creates a semaphore, or resizes an existing one (growing adds permits at once;
    /// shrinking retires busy permits as they end). A record lease of zero stands for the
    /// config's default lease. Returns the stored record.
    pub fn create_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        validate_key(&semaphore.semaphore_key)?;
        validate_semaphore_size(semaphore.max_size)?;
        let lease = match semaphore.lease_duration {
            d if d.is_zero() => self.shared.config.default_lease,
            d => d,
        };
        validate_duration("semaphore lease", lease, false)?;
        let record = Semaphore {
            tenant_id: self.tenant_id().to_owned(),
            version: new_version(),
            lease_duration: lease,
            busy_count: 0,
            ..semaphore.clone()
        };
        let stored = self.store().put_semaphore(&record)?;
        // More permits may be free now.
        self.shared
            .wakeups
            .released_all(self.tenant_id(), &record.semaphore_key);
        Ok(stored)
    }

    /// Reads a semaphore with its live busy count. `Ok(None)`: no such semaphore.
    pub fn get_semaphore(&self, key: &str) -> Result<Option<Semaphore>> {
        validate_key(key)?;
        self.store().get_semaphore(self.tenant_id(), key)
    }

    /// Deletes a semaphore and its slots. `Err(Conflict)` while a permit is live;
    /// `Ok(false)`: there is no such semaphore.
    pub fn delete_semaphore(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let deleted = self.store().delete_semaphore(self.tenant_id(), key)?;
        // Its waiters learn that it is gone at their next attempt.
        self.shared.wakeups.released_all(self.tenant_id(), key);
        Ok(deleted)
    }

    /// The permit slots of a semaphore, with their holders and expiry. `Err(NotFound)`: there
    /// is no such semaphore.
    pub fn get_semaphore_mutexes(&self, key: &str) -> Result<Vec<MutexLock>> {
        validate_key(key)?;
        self.store()
            .semaphore_mutexes(self.tenant_id(), key)?
            .ok_or_else(|| missing_semaphore(key))
    }

    /// The tenant's plain mutexes.
    pub fn list_mutexes(&self) -> Result<Vec<MutexLock>> {
        self.store().list_mutexes(self.tenant_id())
    }

    /// The tenant's semaphores.
    pub fn list_semaphores(&self) -> Result<Vec<Semaphore>> {
        self.store().list_semaphores(self.tenant_id())
    }

    // ----- guard API --------------------------------------------------------------------

    /// Acquires mutex `key`, waiting for it as long as its lease (`Err(NotGranted)` if it
    /// stays busy that long), and keeps it renewed until the guard is dropped.
    pub fn lock(&self, key: &str, opts: &LockOptions) -> Result<MutexGuard> {
        let started = Instant::now();
        self.lock_waiting(key, None, opts)?
            .ok_or_else(|| not_granted(key, started))
    }

    /// Tries once: `Ok(None)` when the mutex is busy.
    pub fn try_lock(&self, key: &str, opts: &LockOptions) -> Result<Option<MutexGuard>> {
        self.lock_waiting(key, Some(Duration::ZERO), opts)
    }

    /// Waits up to `wait` for mutex `key`: `Ok(None)` if it stays busy that long.
    pub fn try_lock_for(
        &self,
        key: &str,
        wait: Duration,
        opts: &LockOptions,
    ) -> Result<Option<MutexGuard>> {
        validate_duration("wait", wait, true)?;
        self.lock_waiting(key, Some(wait), opts)
    }

    /// Acquires one permit of `semaphore` (which must exist: `Err(NotFound)`), waiting for
    /// one as long as the permit's lease (`Err(NotGranted)` if all stay busy that long), and
    /// keeps it renewed until it is dropped.
    pub fn acquire_permit(&self, semaphore: &str, opts: &PermitOptions) -> Result<SemaphorePermit> {
        let started = Instant::now();
        self.permit_waiting(semaphore, None, opts)?
            .ok_or_else(|| not_granted(semaphore, started))
    }

    /// Tries once: `Ok(None)` when every permit is busy.
    pub fn try_acquire_permit(
        &self,
        semaphore: &str,
        opts: &PermitOptions,
    ) -> Result<Option<SemaphorePermit>> {
        self.permit_waiting(semaphore, Some(Duration::ZERO), opts)
    }

    /// Waits up to `wait` for a permit of `semaphore`: `Ok(None)` if all stay busy that long.
    pub fn try_acquire_permit_for(
        &self,
        semaphore: &str,
        wait: Duration,
        opts: &PermitOptions,
    ) -> Result<Option<SemaphorePermit>> {
        validate_duration("wait", wait, true)?;
        self.permit_waiting(semaphore, Some(wait), opts)
    }

    /// How long `lock` (and `acquire_lock` without a wait) waits for a mutex with this lease:
    /// the lease, else the config's default lease.
    pub fn default_wait(&self, lease: Option<Duration>) -> Duration {
        self.mutex_lease(lease)
    }

    /// How long `acquire_permit` (and `acquire_lock` of a permit without a wait) waits for a
    /// permit of `semaphore` with this lease: the lease, else the semaphore's (one read;
    /// `Err(NotFound)` if it does not exist).
    pub fn permit_default_wait(
        &self,
        semaphore: &str,
        lease: Option<Duration>,
    ) -> Result<Duration> {
        match lease {
            Some(lease) => Ok(lease),
            None => self.semaphore_lease(semaphore),
        }
    }

    // ----- internals --------------------------------------------------------------------

    /// The lease of a mutex grant: the one asked for, else the config's default.
    fn mutex_lease(&self, lease: Option<Duration>) -> Duration {
        lease.unwrap_or(self.shared.config.default_lease)
    }

    fn lock_waiting(
        &self,
        key: &str,
        wait: Option<Duration>,
        opts: &LockOptions,
    ) -> Result<Option<MutexGuard>> {
        validate_key(key)?;
        validate_data(opts.data.as_deref())?;
        let lease = self.mutex_lease(opts.lease);
        validate_duration("lease duration", lease, false)?;
        // The schedule is checked before anything is acquired.
        self.schedule(opts.heartbeat_period, lease)?;
        let wanted = Wanted {
            key,
            permit: false,
            lease: Some(lease),
            data: opts.data.as_deref(),
            delete_on_release: opts.delete_on_release,
        };
        self.acquire_until(&wanted, wait)?
            .map(|grant| {
                self.guard(grant, opts.heartbeat_period)
                    .map(MutexGuard::new)
            })
            .transpose()
    }

    fn permit_waiting(
        &self,
        semaphore: &str,
        wait: Option<Duration>,
        opts: &PermitOptions,
    ) -> Result<Option<SemaphorePermit>> {
        validate_key(semaphore)?;
        validate_data(opts.data.as_deref())?;
        if let Some(lease) = opts.lease {
            validate_duration("lease duration", lease, false)?;
            self.schedule(opts.heartbeat_period, lease)?;
        }
        let wanted = Wanted {
            key: semaphore,
            permit: true,
            lease: opts.lease,
            data: opts.data.as_deref(),
            delete_on_release: false,
        };
        // A permit's lease may be its semaphore's, known only from the grant: `guard` checks
        // the schedule again then, and gives the permit back if it cannot work.
        self.acquire_until(&wanted, wait)?
            .map(|grant| {
                self.guard(grant, opts.heartbeat_period)
                    .map(SemaphorePermit::new)
            })
            .transpose()
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

    /// One grant attempt with `version`. `Ok(None)` when busy. `retry`: an earlier attempt
    /// with the same version may have been applied.
    fn attempt(&self, wanted: &Wanted, version: &str, retry: bool) -> Result<Option<Grant>> {
        let sent_at = Instant::now();
        let outcome = if wanted.permit {
            self.store().acquire_permit(&PermitRequest {
                tenant_id: self.tenant_id(),
                semaphore: wanted.key,
                version,
                lease: wanted.lease,
                data: wanted.data,
                retry,
            })
        } else {
            self.store().acquire_mutex(&MutexRequest {
                tenant_id: self.tenant_id(),
                key: wanted.key,
                version,
                lease: self.mutex_lease(wanted.lease),
                data: wanted.data,
                delete_on_release: wanted.delete_on_release,
            })
        };
        let op = if wanted.permit {
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

    /// The wait loop, written once for every store: attempts until granted or the wait is
    /// over (`Ok(None)`). The first waiter of this process for a key sleeps between attempts
    /// until a release hint (`wakeups`) or its poll interval (capped exponential backoff with
    /// full jitter), whichever comes first; later waiters of this process queue behind it and
    /// attempt when a hint reaches them (or, as a last resort, every `retry_max`), so threads
    /// are served in arrival order and a release costs about one request, not one per waiter.
    /// `wait` `None`: the default wait (the lease; a permit without a lease: its semaphore's).
    ///
    /// Invariants:
    /// * Every attempt of one call writes the same version. Once an attempt has failed in a
    ///   way that may have been applied (a retryable error: the reply may be what was lost),
    ///   later attempts ask the store to find a grant under that version, so a grant whose
    ///   reply was lost is returned, not orphaned.
    /// * Retryable errors are retried within the wait, and at least once more after an error
    ///   even when the wait is over (or zero), to settle a grant that may have been made.
    fn acquire_until(&self, wanted: &Wanted, wait: Option<Duration>) -> Result<Option<Grant>> {
        let started = Instant::now();
        let mut deadline = match (wait, wanted.permit, wanted.lease) {
            (Some(w), _, _) => Some(started + w),
            (None, false, lease) => Some(started + self.default_wait(lease)),
            (None, true, Some(lease)) => Some(started + lease),
            // The semaphore's lease: read when it is first needed.
            (None, true, None) => None,
        };
        let mut backoff = Backoff::new(self.shared.config.retry_base, self.shared.config.retry_max);
        // Taken before the first attempt, so a release right after its busy answer wakes us.
        let ticket = (wait != Some(Duration::ZERO)).then(|| {
            self.shared.watch_releases();
            self.shared.wakeups.ticket(self.tenant_id(), wanted.key)
        });
        let version = new_version();
        let mut in_doubt = false;
        let mut settling_try_used = false;
        // Behind an older waiter of this process: it goes first.
        let mut queued = ticket.as_ref().is_some_and(|t| !t.is_first());
        loop {
            if let (true, Some(ticket)) = (queued, &ticket) {
                let deadline = self.resolve(&mut deadline, started, wanted)?;
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                // Until the release that the waiters before us leave behind comes to us (or
                // a poll of last resort).
                ticket.wait(self.shared.config.retry_max.min(deadline - now));
            }
            let failed = match self.attempt(wanted, &version, in_doubt) {
                Ok(Some(grant)) => {
                    self.shared.wakeups.granted(self.tenant_id(), wanted.key);
                    let kind = if wanted.permit { "permit" } else { "mutex" };
                    self.shared
                        .metrics
                        .observe_wait(kind, started.elapsed().as_secs_f64());
                    return Ok(Some(grant));
                }
                // Busy; if an earlier attempt was in doubt, this one looked for it: settled.
                Ok(None) => None,
                Err(e) if e.is_retryable() => {
                    log::debug!(
                        "db-locks: acquire of `{}` failed, retrying: {e}",
                        wanted.key
                    );
                    in_doubt = true;
                    Some(e)
                }
                Err(e) => return Err(e),
            };
            let deadline = self.resolve(&mut deadline, started, wanted)?;
            let now = Instant::now();
            let pause = backoff.next_delay();
            if now < deadline {
                match &ticket {
                    // The first waiter of this process: until a release hint, the poll
                    // interval (the longest one while the lease is held here: its release
                    // brings a hint), or the end of the wait.
                    Some(ticket) if ticket.is_first() => {
                        let poll = if self.shared.wakeups.held_here(self.tenant_id(), wanted.key) {
                            self.shared.config.retry_max
                        } else {
                            pause
                        };
                        ticket.wait(poll.min(deadline - now));
                    }
                    // Others wait for their turn.
                    Some(_) => queued = true,
                    None => std::thread::sleep(pause.min(deadline - now)),
                }
                continue;
            }
            match failed {
                None => return Ok(None),
                Some(e) if settling_try_used => return Err(e),
                // One more try after the wait, to settle a grant that may have been made.
                Some(_) => {
                    settling_try_used = true;
                    queued = false;
                    std::thread::sleep(pause.min(self.shared.config.retry_base));
                }
            }
        }
    }

    /// The end of the wait: `deadline`, or for a permit of the semaphore's lease, its start
    /// plus that lease (one read, the first time).
    fn resolve(
        &self,
        deadline: &mut Option<Instant>,
        started: Instant,
        wanted: &Wanted,
    ) -> Result<Instant> {
        match *deadline {
            Some(d) => Ok(d),
            None => Ok(*deadline.insert(started + self.semaphore_lease(wanted.key)?)),
        }
    }

    /// The default lease of semaphore `key` (one read). `Err(NotFound)` if it does not exist.
    fn semaphore_lease(&self, key: &str) -> Result<Duration> {
        let semaphore = self
            .store()
            .get_semaphore(self.tenant_id(), key)?
            .ok_or_else(|| missing_semaphore(key))?;
        Ok(semaphore.lease_duration)
    }

    /// The renewal schedule of a guard on `lease`: its safety margin and heartbeat period (the
    /// options', the config's, or a third of what is left of the lease after the margin).
    /// Refused when it cannot work: a margin not shorter than the lease, or a period longer
    /// than half of `lease - margin`, which would leave a failed renewal no time for a retry
    /// before the local deadline (the lease would then be lost on a healthy store, or at the
    /// first hiccup).
    fn schedule(&self, period: Option<Duration>, lease: Duration) -> Result<(Duration, Duration)> {
        let margin = self.shared.safety_margin(lease);
        if margin >= lease {
            return Err(LockError::validation(format!(
                "the lease safety margin ({} ms) must be shorter than the lease ({} ms)",
                margin.as_millis(),
                lease.as_millis()
            )));
        }
        let window = lease - margin;
        let period = period
            .or(self.shared.config.heartbeat_period)
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

    /// Starts the heartbeat of a grant; gives the grant back if that fails.
    fn guard(&self, grant: Grant, period: Option<Duration>) -> Result<LeaseGuard> {
        let record = grant.record.clone();
        let started =
            self.schedule(period, grant.record.lease_duration)
                .and_then(|(margin, period)| {
                    LeaseGuard::start(&self.shared, grant.record, grant.sent_at, margin, period)
                });
        if started.is_err() {
            let slot = record.semaphore_key.as_deref().and_then(|sem| {
                crate::validate::validate_lock_key(&record.mutex_key, Some(sem))
                    .ok()
                    .flatten()
            });
            let _ = self.store().release(&ReleaseRequest {
                tenant_id: &record.tenant_id,
                target: target(&record.mutex_key, record.semaphore_key.as_deref(), slot),
                version: &record.version,
                in_doubt_version: None,
                data: None,
                delete: false,
            });
        }
        started
    }
}

/// What a caller names: a mutex, or a slot (its index already read off the key).
fn target<'a>(key: &'a str, semaphore: Option<&'a str>, slot: Option<u32>) -> Target<'a> {
    match (semaphore, slot) {
        (Some(semaphore), Some(index)) => Target::Slot { semaphore, index },
        _ => Target::Mutex(key),
    }
}

fn not_granted(key: &str, started: Instant) -> LockError {
    LockError::NotGranted {
        key: key.to_owned(),
        waited_ms: started.elapsed().as_millis() as u64,
    }
}

fn missing_semaphore(key: &str) -> LockError {
    LockError::NotFound(format!("semaphore `{key}` does not exist"))
}
