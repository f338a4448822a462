//! The records a store keeps: [`MutexLock`] (a mutex, or one permit slot of a semaphore)
//! and [`Semaphore`].

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::options::{ReleaseLockOptions, SendHeartbeatOptions};

/// One mutex record: a plain mutex, or one permit slot of a semaphore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub lease_duration_ms: i64,
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
            lease_duration: Some(std::time::Duration::from_millis(
                self.lease_duration_ms.max(0) as u64,
            )),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// The semaphore key.
    pub semaphore_key: String,
    /// The tenant that owns the record (filled in by the manager).
    pub tenant_id: String,
    /// Changes on every create or resize.
    pub version: String,
    /// Number of permits.
    pub max_size: i64,
    /// Default lease of a permit.
    pub lease_duration_ms: i64,
    /// Permits held with a live lease when the record was read (ignored on write).
    pub busy_count: i64,
}

/// Builds a [`Semaphore`] for [`crate::LockManager::create_semaphore`].
#[derive(Debug, Clone)]
pub struct SemaphoreBuilder {
    key: String,
    max_size: i64,
    lease_duration_ms: i64,
}

impl SemaphoreBuilder {
    /// A semaphore named `key` with `max_size` permits (validated when it is created).
    pub fn new(key: impl Into<String>, max_size: i64) -> Self {
        SemaphoreBuilder {
            key: key.into(),
            max_size,
            lease_duration_ms: 0,
        }
    }

    /// Default lease of a permit, in milliseconds (0: the manager's default lease).
    pub fn with_lease_duration_millis(mut self, millis: i64) -> Self {
        self.lease_duration_ms = millis;
        self
    }

    /// Default lease of a permit, in seconds.
    pub fn with_lease_duration_secs(self, secs: i64) -> Self {
        self.with_lease_duration_millis(secs.saturating_mul(1000))
    }

    /// Default lease of a permit, in minutes.
    pub fn with_lease_duration_minutes(self, minutes: i64) -> Self {
        self.with_lease_duration_secs(minutes.saturating_mul(60))
    }

    /// The semaphore record (tenant and version are set by the manager).
    pub fn build(self) -> Semaphore {
        Semaphore {
            semaphore_key: self.key,
            tenant_id: String::new(),
            version: String::new(),
            max_size: self.max_size,
            lease_duration_ms: self.lease_duration_ms,
            busy_count: 0,
        }
    }
}

/// Converts milliseconds since the Unix epoch (as stores keep them) to a timestamp.
pub(crate) fn millis_to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The key of slot `index` of semaphore `semaphore_key`.
pub(crate) fn slot_key(semaphore_key: &str, index: i64) -> String {
    format!("{semaphore_key}_{index}")
}
