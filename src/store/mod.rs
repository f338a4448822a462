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
//!   or release.
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
    /// higher fencing token. `Ok(None)`: another live lease holds it.
    fn try_acquire_mutex(&self, req: &AcquireRequest<'_>) -> Result<Option<MutexLock>>;

    /// Grants one free or expired permit slot of semaphore `req.key`, choosing the slot inside
    /// the store in a number of round trips that does not grow with `max_size`.
    /// `Ok(None)`: all permits are busy. `Err(NotFound)`: no such semaphore.
    fn try_acquire_permit(&self, req: &AcquireRequest<'_>) -> Result<Option<MutexLock>>;

    /// Extends the lease if the record is held with `req.version` (or already `req.new_version`).
    /// `Ok(None)`: not held with that version (released, deleted or taken over).
    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>>;

    /// Releases the lease if held with `req.version`. `Ok(false)`: it was not.
    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool>;

    /// Reads one plain mutex.
    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>>;

    /// Deletes a plain mutex: with `version`, only if it matches; without, only if no live
    /// lease holds it (`Err(Conflict)` otherwise). `Ok(false)`: nothing was deleted.
    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool>;

    /// Creates the semaphore or resizes it, atomically. Shrinking retires the extra slots:
    /// free ones at once, held ones when they are released or expire; until then no new
    /// permit is granted, so the bound is never exceeded. Returns the stored record.
    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore>;

    /// Reads a semaphore with its live `busy_count`.
    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>>;

    /// Deletes a semaphore and its slots; `Err(Conflict)` while any permit is live.
    /// `Ok(false)`: no such semaphore.
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
