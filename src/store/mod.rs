//! The store trait: the few atomic operations every backend provides. Waiting, backoff,
//! heartbeats, validation and metrics are built on top of it once, in the `LockManager`.
//!
//! # Contract (what the conformance suite in `tests/` checks for every store)
//!
//! * Every method is one atomic step in the store: one conditional statement, script or
//!   request in the common case. None of them waits for a busy lock; each may block only
//!   for the store's I/O timeout ([`crate::LocksConfig::io_timeout_ms`]).
//! * Expiry is decided by the store's clock where it has one.
//! * `version` is compare-and-set: only a caller presenting the current version can renew
//!   or release. A lease that has run out by the store's clock is never renewed: it is lost,
//!   even if nobody has taken it over yet (so an expired permit cannot come back to life
//!   after its slot was counted free).
//! * Retries are idempotent. An acquire that finds the record already held with its own
//!   version (an earlier attempt was applied but its reply was lost) re-grants it in place;
//!   a renewal accepts its own new version; a release accepts the new version of a renewal
//!   whose outcome is in doubt.
//! * `fencing_token` strictly increases with every grant of the same mutex or slot, also
//!   across deletion of the record, and is unchanged by renewals.
//! * `tenant_id` is part of every key; nothing crosses tenants.
//! * Inputs are already validated by the manager.

use std::fmt::Debug;

use crate::error::Result;
use crate::model::{MutexLock, Semaphore};

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;

/// One grant attempt, for [`LockStore::try_acquire_mutex`] and [`LockStore::try_acquire_permit`].
#[derive(Debug, Clone)]
pub struct AcquireRequest<'a> {
    /// Tenant of the record.
    pub tenant_id: &'a str,
    /// The mutex key, or the semaphore key for a permit.
    pub key: &'a str,
    /// The version to write if granted (a fresh UUID).
    pub version: &'a str,
    /// Lease length in milliseconds (> 0). For a permit, 0 means "the semaphore's lease".
    pub lease_ms: i64,
    /// Replaces the stored data when `Some`.
    pub data: Option<&'a str>,
    /// Stored with the record (plain mutexes only).
    pub delete_on_release: bool,
    /// An earlier attempt with this same version may have been applied (its reply was lost).
    /// Mutex stores always look for their own version; permit stores look for a slot held
    /// with `version` only when this is set, since finding it may cost a scan of the slots.
    pub retry: bool,
}

/// One renewal attempt, for [`LockStore::renew`].
#[derive(Debug, Clone)]
pub struct RenewRequest<'a> {
    /// Tenant of the record.
    pub tenant_id: &'a str,
    /// The semaphore of a permit slot.
    pub semaphore_key: Option<&'a str>,
    /// The mutex (or slot) key.
    pub key: &'a str,
    /// The version the holder believes is current.
    pub version: &'a str,
    /// The version to write. A renewal also succeeds when the record already has this
    /// version, so retrying a renewal whose reply was lost is safe and idempotent.
    pub new_version: &'a str,
    /// New lease length in milliseconds (> 0).
    pub lease_ms: i64,
    /// Replaces the stored data when `Some`.
    pub data: Option<&'a str>,
}

/// One release, for [`LockStore::release`].
#[derive(Debug, Clone)]
pub struct ReleaseRequest<'a> {
    /// Tenant of the record.
    pub tenant_id: &'a str,
    /// The semaphore of a permit slot.
    pub semaphore_key: Option<&'a str>,
    /// The mutex (or slot) key.
    pub key: &'a str,
    /// The current version.
    pub version: &'a str,
    /// The new version of a renewal whose outcome is unknown (its reply was lost): the record
    /// may carry this one instead, and the release matches either.
    pub in_doubt_version: Option<&'a str>,
    /// Replaces the stored data when `Some` (ignored when the record is deleted).
    pub data: Option<&'a str>,
    /// Delete the record; `None`: as its `delete_on_release` says. Permit slots are never deleted.
    pub delete: Option<bool>,
}

/// The atomic operations of a lock store. See the module docs for the contract.
pub trait LockStore: Send + Sync + Debug + 'static {
    /// Short name for messages and metrics (`sqlite`, `postgres`, `mysql`, `redis`, `dynamodb`).
    fn name(&self) -> &'static str;

    /// Creates or upgrades the schema (tables, indexes). Idempotent; safe to race.
    fn migrate(&self) -> Result<()>;

    /// Grants the mutex if it is free or its lease has expired, writing a new version and a
    /// higher fencing token; if it is already held with `req.version`, restarts that lease
    /// in place (same fencing token). `Ok(None)`: another live lease holds it.
    fn try_acquire_mutex(&self, req: &AcquireRequest<'_>) -> Result<Option<MutexLock>>;

    /// Grants one free or expired permit slot of semaphore `req.key`, choosing the slot inside
    /// the store in a number of round trips that does not grow with `max_size`, and only while
    /// fewer than `max_size` permits are live (retired slots of a shrink included). With
    /// `req.retry`, a slot already held with `req.version` is re-granted in place instead.
    /// `Ok(None)`: all permits are busy. `Err(NotFound)`: no such semaphore.
    fn try_acquire_permit(&self, req: &AcquireRequest<'_>) -> Result<Option<MutexLock>>;

    /// Extends the lease if the record is held with `req.version` (or already `req.new_version`)
    /// and the lease has not run out by the store's clock. `Ok(None)`: not held with that
    /// version (released, deleted, taken over or expired).
    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>>;

    /// Releases the lease if held with `req.version` (or `req.in_doubt_version`). A lease that
    /// ran out but that nobody took over is released too. `Ok(false)`: it was not held so.
    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool>;

    /// Reads one plain mutex.
    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>>;

    /// Deletes a plain mutex: with `version`, only if it matches; without, only if no live
    /// lease holds it (`Err(Conflict)` otherwise). `Ok(false)`: nothing was deleted.
    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool>;

    /// Creates the semaphore or resizes it, atomically. Shrinking retires the extra slots:
    /// free ones at once, held ones when they are released or expire. A retired slot that is
    /// still live counts against the new size, so no grant ever makes more than `max_size`
    /// permits live, and grants resume as soon as fewer than `max_size` are. Returns the stored
    /// record.
    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore>;

    /// Reads a semaphore with its live `busy_count`.
    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>>;

    /// Deletes a semaphore and its slots, atomically with respect to grants: `Err(Conflict)`
    /// if any permit is live at the moment of deletion. `Ok(false)`: no such semaphore.
    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool>;

    /// The permit slots of a semaphore, by slot index.
    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Vec<MutexLock>>;

    /// The tenant's plain mutexes, by key.
    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>>;

    /// The tenant's semaphores, by key, with live busy counts.
    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>>;
}

/// Connects to the store that `config` names (its provider and URL), running migrations
/// when the config asks for them.
pub fn connect(config: &crate::LocksConfig) -> Result<std::sync::Arc<dyn LockStore>> {
    use crate::config::Provider;
    use crate::error::LockError;
    match config.provider {
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        Provider::Rdb => Ok(std::sync::Arc::new(sql::SqlStore::connect(config)?)),
        #[cfg(feature = "redis")]
        Provider::Redis => Ok(std::sync::Arc::new(redis::RedisStore::connect(config)?)),
        #[cfg(feature = "dynamodb")]
        Provider::Ddb => Ok(std::sync::Arc::new(dynamodb::DynamoDbStore::connect(
            config,
        )?)),
        #[allow(unreachable_patterns)]
        other => Err(LockError::Config(format!(
            "provider `{other}` is not compiled in (enable its cargo feature)"
        ))),
    }
}
