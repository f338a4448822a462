//! The records a store keeps: [`MutexLock`] (a mutex, or one permit slot of a semaphore)
//! and [`Semaphore`].

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::options::{ReleaseLockOptions, SendHeartbeatOptions};

/// One mutex record: a plain mutex, or one permit slot of a semaphore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MutexLock {
    /// The mutex key (for a semaphore permit: the slot's key, `<semaphore_key>_<index>`).
    pub mutex_key: String,
    /// The tenant that owns the record.
    pub tenant_id: String,
    /// Fresh random token written by every grant and renewal; renew and release must present it.
    pub version: String,
    /// Strictly increases with every grant of this mutex (or slot); unchanged by renewals.
    pub fencing_token: i64,
    /// Length of the current lease.
    pub lease_duration: Duration,
    /// The semaphore this slot belongs to; `None` for a plain mutex.
    pub semaphore_key: Option<String>,
    /// Free-form data stored with the lock; kept across grants unless a grant replaces it.
    pub data: Option<String>,
    /// Whether release deletes the record instead of marking it free.
    pub delete_on_release: bool,
    /// Whether the record is held (it may still have expired: see [`MutexLock::expires_at`]).
    pub locked: bool,
    /// When the lease ends, by the store's clock.
    pub expires_at: DateTime<Utc>,
}

impl MutexLock {
    /// Options that renew this lock's lease (same lease duration).
    pub fn to_heartbeat_options(&self) -> SendHeartbeatOptions {
        SendHeartbeatOptions {
            key: self.mutex_key.clone(),
            version: self.version.clone(),
            lease_duration: Some(self.lease_duration),
            semaphore_key: self.semaphore_key.clone(),
            data: None,
            new_version: None,
        }
    }

    /// Options that release this lock (deleting it if it was acquired with delete-on-release).
    pub fn to_release_options(&self) -> ReleaseLockOptions {
        ReleaseLockOptions {
            key: self.mutex_key.clone(),
            version: self.version.clone(),
            semaphore_key: self.semaphore_key.clone(),
            data: None,
            delete_lock: Some(self.delete_on_release && self.semaphore_key.is_none()),
        }
    }

    /// Whether this record is a semaphore permit slot.
    pub fn is_semaphore_permit(&self) -> bool {
        self.semaphore_key.is_some()
    }
}

/// A counting semaphore: `max_size` permits, each a slot [`MutexLock`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Semaphore {
    /// The semaphore key.
    pub semaphore_key: String,
    /// The tenant that owns the record (filled in by the manager).
    pub tenant_id: String,
    /// Changes on every create or resize.
    pub version: String,
    /// Number of permits.
    pub max_size: i64,
    /// Default lease of a permit. In a record given to
    /// [`crate::LockManager::create_semaphore`], zero stands for the manager's default lease.
    pub lease_duration: Duration,
    /// Permits held with a live lease when the record was read (ignored on write).
    pub busy_count: i64,
}

/// Builds a [`Semaphore`] for [`crate::LockManager::create_semaphore`].
#[derive(Debug, Clone)]
pub struct SemaphoreBuilder {
    key: String,
    max_size: i64,
    lease: Option<Duration>,
}

impl SemaphoreBuilder {
    /// A semaphore named `key` with `max_size` permits (validated when it is created).
    pub fn new(key: impl Into<String>, max_size: i64) -> Self {
        SemaphoreBuilder {
            key: key.into(),
            max_size,
            lease: None,
        }
    }

    /// Default lease of a permit (without one: the manager's default lease).
    pub fn with_lease_duration(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Default lease of a permit, in milliseconds.
    pub fn with_lease_duration_millis(self, millis: u64) -> Self {
        self.with_lease_duration(Duration::from_millis(millis))
    }

    /// Default lease of a permit, in seconds.
    pub fn with_lease_duration_secs(self, secs: u64) -> Self {
        self.with_lease_duration(Duration::from_secs(secs))
    }

    /// Default lease of a permit, in minutes.
    pub fn with_lease_duration_minutes(self, minutes: u64) -> Self {
        self.with_lease_duration(Duration::from_secs(minutes.saturating_mul(60)))
    }

    /// The semaphore record (tenant and version are set by the manager).
    pub fn build(self) -> Semaphore {
        Semaphore {
            semaphore_key: self.key,
            tenant_id: String::new(),
            version: String::new(),
            max_size: self.max_size,
            lease_duration: self.lease.unwrap_or(Duration::ZERO),
            busy_count: 0,
        }
    }
}

/// A fresh random version token (UUID v4).
pub(crate) fn new_version() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Converts milliseconds since the Unix epoch (as stores keep them) to a timestamp.
pub(crate) fn millis_to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Milliseconds of a duration, as stores keep them (saturating).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A duration from stored milliseconds (negative: zero).
pub(crate) fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

/// The key of slot `index` of semaphore `semaphore_key`.
pub(crate) fn slot_key(semaphore_key: &str, index: u32) -> String {
    format!("{semaphore_key}_{index}")
}
