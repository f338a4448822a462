//! The store boundary: what every backend provides, in two traits by what their methods
//! promise. Waiting, backoff, heartbeats, validation and metrics are built on top of them
//! once, in the `LockManager`.
//!
//! * [`LeaseStore`]: the lease operations (acquire, renew, release). Each is one atomic,
//!   conditional step in the store, made of the number of requests its contract line gives,
//!   each bounded by the I/O timeout ([`crate::LocksConfig::io_timeout`]). None of them waits
//!   for a busy lock.
//! * [`AdminStore`]: schema, reads, deletes and semaphores. These may take several requests
//!   (their lines say how many) and are not on any guard's path.
//!
//! Both take inputs the manager has already validated, and both keep these invariants (the
//! conformance suite in `tests/` checks them on every store):
//! * Expiry is decided by the store's clock where it has one.
//! * `version` is compare-and-set: only a caller presenting the current version can renew or
//!   release. A lease that has run out by the store's clock is never renewed.
//! * `fencing_token` strictly increases with every grant of the same mutex or slot, also
//!   across deletion of the record, and is unchanged by renewals.
//! * `tenant_id` is part of every key; nothing crosses tenants, and names that differ in any
//!   byte are different names.
//! * Retries are idempotent: an acquire that finds the record already held with its own
//!   version re-grants it in place; a renewal accepts its own new version; a release accepts
//!   the new version of a renewal whose outcome is in doubt.
//!
//! "One request" for a SQL store means one statement on a pooled connection (no check on
//! checkout); PostgreSQL and MySQL have no client-side read timeout in diesel, so their bound
//! is the server's statement and lock timeouts plus TCP's (see the README's guarantee 8).
//! For DynamoDB, a `Query` counts once per 1 MB page it reads.

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{LockError, Result};
use crate::model::{slot_key, MutexLock, Semaphore};

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;

/// What a renewal or release names: a plain mutex, or one permit slot of a semaphore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A plain mutex.
    Mutex(&'a str),
    /// Permit slot `index` of `semaphore`.
    Slot {
        /// The semaphore key.
        semaphore: &'a str,
        /// The slot's index.
        index: u32,
    },
}

impl Target<'_> {
    /// The record's key: the mutex key, or the slot key `<semaphore>_<index>`.
    pub fn key(&self) -> Cow<'_, str> {
        match *self {
            Target::Mutex(key) => Cow::Borrowed(key),
            Target::Slot { semaphore, index } => Cow::Owned(slot_key(semaphore, index)),
        }
    }

    /// The semaphore of a slot.
    pub fn semaphore(&self) -> Option<&str> {
        match *self {
            Target::Mutex(_) => None,
            Target::Slot { semaphore, .. } => Some(semaphore),
        }
    }
}

/// One grant attempt on a mutex, for [`LeaseStore::acquire_mutex`].
#[derive(Debug, Clone)]
pub struct MutexRequest<'a> {
    /// Tenant of the record.
    pub tenant_id: &'a str,
    /// The mutex key.
    pub key: &'a str,
    /// The version to write if granted; every attempt of one acquire writes the same one.
    pub version: &'a str,
    /// Length of the lease (> 0).
    pub lease: Duration,
    /// Replaces the stored data when `Some`.
    pub data: Option<&'a str>,
    /// Stored with the record: release deletes it.
    pub delete_on_release: bool,
}

/// One grant attempt on a semaphore, for [`LeaseStore::acquire_permit`].
#[derive(Debug, Clone)]
pub struct PermitRequest<'a> {
    /// Tenant of the semaphore.
    pub tenant_id: &'a str,
    /// The semaphore key.
    pub semaphore: &'a str,
    /// The version to write if granted; every attempt of one acquire writes the same one.
    pub version: &'a str,
    /// Length of the lease; `None`: the semaphore's.
    pub lease: Option<Duration>,
    /// Replaces the slot's stored data when `Some`.
    pub data: Option<&'a str>,
    /// An earlier attempt with this same version may have been granted (its reply was lost):
    /// look for a slot held with `version` first. Finding it may read every slot, so only a
    /// retry asks for it.
    pub retry: bool,
}

/// One renewal attempt, for [`LeaseStore::renew`].
#[derive(Debug, Clone)]
pub struct RenewRequest<'a> {
    /// Tenant of the record.
    pub tenant_id: &'a str,
    /// The mutex or slot.
    pub target: Target<'a>,
    /// The version the holder believes is current.
    pub version: &'a str,
    /// The version to write. A renewal also succeeds when the record already has this
    /// version, so retrying a renewal whose reply was lost is safe and idempotent.
    pub new_version: &'a str,
    /// New length of the lease; `None`: the lease the record has.
    pub lease: Option<Duration>,
    /// Replaces the stored data when `Some`.
    pub data: Option<&'a str>,
}

/// One release, for [`LeaseStore::release`].
#[derive(Debug, Clone)]
pub struct ReleaseRequest<'a> {
    /// Tenant of the record.
    pub tenant_id: &'a str,
    /// The mutex or slot.
    pub target: Target<'a>,
    /// The current version.
    pub version: &'a str,
    /// The new version of a renewal whose outcome is unknown (its reply was lost): the record
    /// may carry this one instead, and the release matches either.
    pub in_doubt_version: Option<&'a str>,
    /// Replaces the stored data when `Some` (ignored when the record is deleted).
    pub data: Option<&'a str>,
    /// Delete the mutex record instead of marking it free (never a slot: the manager resolves
    /// it once).
    pub delete: bool,
}

/// Where a store delivers release notices of other processes: `(tenant, key)`, the key being
/// the mutex key or, for a permit, the semaphore key.
pub type ReleaseSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The sinks of one store's release notices, and the notices' format:
/// `tenant \x1f key \x1f origin` (validation keeps control characters out of tenants and
/// keys). `origin` names the store instance that released: its own notices are not delivered
/// again, since its manager has woken its waiters already.
#[derive(Clone)]
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub(crate) struct ReleaseSinks {
    sinks: Arc<parking_lot::Mutex<Vec<ReleaseSink>>>,
    origin: Arc<str>,
}

#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
impl ReleaseSinks {
    pub(crate) fn new() -> Self {
        ReleaseSinks {
            sinks: Arc::default(),
            origin: crate::model::new_version().into(),
        }
    }

    /// This store instance's name in the notices it sends (the SQL store's statements bind it;
    /// Redis builds whole payloads with [`ReleaseSinks::payload`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn add(&self, sink: ReleaseSink) {
        self.sinks.lock().push(sink);
    }

    /// Hands a notice, as it came from the store, to every sink, unless it is our own.
    pub(crate) fn deliver(&self, payload: &str) {
        let mut fields = payload.split('\u{1f}');
        let (Some(tenant), Some(key), origin) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        if origin == Some(&*self.origin) {
            return;
        }
        for sink in self.sinks.lock().iter() {
            sink(tenant, key);
        }
    }

    /// Our notice of a release of `key` (a mutex key, or a permit's semaphore key).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn payload(&self, tenant: &str, key: &str) -> String {
        format!("{tenant}\u{1f}{key}\u{1f}{}", self.origin)
    }
}

/// The lease operations. Each is one conditional step: it either happens entirely or not at
/// all, and a refusal changes nothing.
pub trait LeaseStore: Send + Sync + Debug + 'static {
    /// Short name for messages and metrics (`sqlite`, `postgres`, `mysql`, `redis`, `dynamodb`).
    fn name(&self) -> &'static str;

    /// Grants the mutex if it is free or its lease has expired, writing `req.version` and a
    /// higher fencing token; if it is already held with `req.version`, restarts that lease in
    /// place (same token). `Ok(None)`: another live lease holds it.
    /// Requests: 1 (MySQL: 2, the second a read by primary key; DynamoDB: 2 when a retry finds
    /// its own grant). Blocks: the I/O timeout each.
    fn acquire_mutex(&self, req: &MutexRequest<'_>) -> Result<Option<MutexLock>>;

    /// Grants one free or expired permit slot, chosen inside the store at a cost that does not
    /// grow with `max_size`, and only while fewer than `max_size` permits are live (slots
    /// retired by a shrink included). With `req.retry`, a slot already held with
    /// `req.version` is re-granted in place instead. `Ok(None)`: all permits are busy.
    /// `Err(NotFound)`: no such semaphore.
    /// Requests: SQL 1 (MySQL 2; a busy answer +1; while a shrink drains, a short
    /// transaction); Redis 1; DynamoDB 2 when its first random probe is free (+1 `GetItem` on a
    /// process's first use of the semaphore, +1 `UpdateItem` for a second probe); when both
    /// probes miss, +1 `Query` of the slots and +1 `UpdateItem` per free slot it then tries (a
    /// busy answer: 4); a retry +1 `Query`; more while a shrink drains, and up to 4 rounds when
    /// a resize races the grant. Blocks: the I/O timeout each.
    fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<Option<MutexLock>>;

    /// Extends the lease if the record is held with `req.version` (or already
    /// `req.new_version`) and the lease has not run out by the store's clock.
    /// `Ok(None)`: not held with that version (released, deleted, taken over or expired).
    /// Requests: 1 (MySQL: 2). Blocks: the I/O timeout each.
    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>>;

    /// Releases the lease if held with `req.version` (or `req.in_doubt_version`), deleting a
    /// mutex record if `req.delete`. A lease that ran out but that nobody took over is
    /// released too. `Ok(false)`: it was not held so.
    /// Requests: 1. Blocks: the I/O timeout.
    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool>;

    /// Starts delivering notices of releases of `tenant_id`'s locks made through this store
    /// by anyone (other processes included) to `sink`, on a thread and connection of the
    /// store's own, if the store can push them; `false` if it cannot (waiters then poll). A
    /// notice is a hint: it may be late, lost or duplicated, and a sink may also get other
    /// tenants' notices. Called when a manager's first waiter waits; later calls add sinks and
    /// tenants. Requests: none on the caller's thread. Default: no push.
    fn watch_releases(&self, tenant_id: &str, sink: ReleaseSink) -> bool {
        let _ = (tenant_id, sink);
        false
    }
}

/// Schema, reads, deletes and semaphores.
pub trait AdminStore: Send + Sync + Debug + 'static {
    /// Creates or upgrades the schema (tables, indexes). Idempotent; safe to race.
    /// Requests: SQL one per pending migration; Redis 2 (version check, script loads);
    /// DynamoDB 1 `DescribeTable` per table; for a missing one, a `CreateTable`, then a
    /// `DescribeTable` every 250 ms until it is active (up to 5 minutes).
    fn migrate(&self) -> Result<()>;

    /// Reads one plain mutex. Requests: 1.
    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>>;

    /// Deletes a plain mutex: with `version`, only if it is the record's; without, only if no
    /// live lease holds it (`Err(Conflict)` otherwise). `Ok(false)`: nothing was deleted
    /// (no such mutex, or another version). Requests: 1 (SQL: a refusal +1, to tell why).
    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool>;

    /// Creates the semaphore or resizes it, atomically. Shrinking retires the extra slots:
    /// free ones at once, held ones when they are released or expire. A retired slot that is
    /// still live counts against the new size, so no grant ever makes more than `max_size`
    /// permits live, and grants resume as soon as fewer than `max_size` are. Returns the stored
    /// record. Requests: SQL one transaction of a few statements; Redis 1; DynamoDB 1–8
    /// compare-and-set rounds of a `GetItem`, a `PutItem` per new slot and an `UpdateItem`, then
    /// a `Query` (the busy count); a shrink adds a `Query`, a write per retired slot settled and
    /// an `UpdateItem`.
    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore>;

    /// Reads a semaphore with its live `busy_count` (a count over its slots).
    /// Requests: 1 (DynamoDB 2).
    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>>;

    /// Deletes a semaphore and its slots, atomically with respect to grants: `Err(Conflict)`
    /// if any permit is live at the moment of deletion. `Ok(false)`: no such semaphore.
    /// Requests: SQL one transaction; Redis 1; DynamoDB 4 (read, mark, read slots, finish).
    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool>;

    /// The permit slots of a semaphore, by slot index (the retired ones while they are held).
    /// `Ok(None)`: no such semaphore. Requests: 1 (DynamoDB 2).
    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Option<Vec<MutexLock>>>;

    /// The tenant's plain mutexes, by key. Requests: 1 (Redis 2).
    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>>;

    /// The tenant's semaphores, by key, with live busy counts.
    /// Requests: 1 (Redis 2, DynamoDB 1 + 1 per semaphore).
    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>>;
}

/// A whole store: the lease operations and the administration.
pub trait LockStore: LeaseStore + AdminStore {}

impl<T: LeaseStore + AdminStore + ?Sized> LockStore for T {}

/// Connects to the store that `config` names (its provider and URL), running migrations when
/// the config asks for them. The one place that turns a provider into a store.
pub fn connect(config: &crate::LocksConfig) -> Result<Arc<dyn LockStore>> {
    use crate::config::Provider;
    match config.provider {
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        Provider::Rdb => Ok(Arc::new(sql::SqlStore::connect(config)?)),
        #[cfg(feature = "redis")]
        Provider::Redis => Ok(Arc::new(redis::RedisStore::connect(config)?)),
        #[cfg(feature = "dynamodb")]
        Provider::Ddb => Ok(Arc::new(dynamodb::DynamoDbStore::connect(config)?)),
        #[allow(unreachable_patterns)]
        other => Err(LockError::Config(format!(
            "provider `{other}` is not compiled in (enable its cargo feature)"
        ))),
    }
}
