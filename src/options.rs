//! Options: [`LockOptions`] and [`PermitOptions`] for the guard API, and the record-level
//! operations' options with builders that follow the original README. Every option type
//! checks itself ([`AcquireLockOptions::validate`], ...) with the rules of `validate`; the
//! manager runs the same checks before any I/O.

use std::time::Duration;

use crate::error::{LockError, Result};
use crate::validate::{
    validate_data, validate_duration, validate_key, validate_lock_key, validate_version,
};

/// How to hold a mutex with a guard ([`crate::LockManager::lock`] and its `try_` forms).
///
/// ```
/// use std::time::Duration;
/// use db_locks::LockOptions;
/// let opts = LockOptions::new().lease(Duration::from_secs(30)).data("host-a");
/// assert_eq!(opts.lease, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// Length of the lease; `None`: the config's default lease.
    pub lease: Option<Duration>,
    /// How often the guard renews; `None`: the config's period, else a third of the lease
    /// minus the safety margin.
    pub heartbeat_period: Option<Duration>,
    /// Data to store with the lock (kept from the previous holder when `None`).
    pub data: Option<String>,
    /// Delete the mutex record on release instead of marking it free.
    pub delete_on_release: bool,
}

impl LockOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Length of the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How often the guard renews.
    pub fn heartbeat_period(mut self, period: Duration) -> Self {
        self.heartbeat_period = Some(period);
        self
    }

    /// Data to store with the lock.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Delete the record on release.
    pub fn delete_on_release(mut self, delete: bool) -> Self {
        self.delete_on_release = delete;
        self
    }
}

/// How to hold a semaphore permit with a guard ([`crate::LockManager::acquire_permit`] and
/// its `try_` forms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermitOptions {
    /// Length of the lease; `None`: the semaphore's.
    pub lease: Option<Duration>,
    /// How often the permit renews; as for [`LockOptions::heartbeat_period`].
    pub heartbeat_period: Option<Duration>,
    /// Data to store with the permit's slot.
    pub data: Option<String>,
}

impl PermitOptions {
    /// The defaults: the semaphore's lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// Length of the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How often the permit renews.
    pub fn heartbeat_period(mut self, period: Duration) -> Self {
        self.heartbeat_period = Some(period);
        self
    }

    /// Data to store with the slot.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }
}

/// What to acquire and how, for the record-level API: built by [`AcquireLockOptionsBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireLockOptions {
    /// The mutex key, or the semaphore key when `requires_semaphore` is set.
    pub key: String,
    /// Lease length; `None` uses the semaphore's lease for permits, else the config's default.
    pub lease_duration: Option<Duration>,
    /// How long to wait for a busy lock; `None` waits up to the lease duration (for a permit
    /// without a lease, its semaphore's lease), zero tries once.
    pub wait: Option<Duration>,
    /// Acquire one permit of the semaphore `key` instead of the mutex `key`.
    pub requires_semaphore: bool,
    /// Data to store with the lock (kept from the previous holder when `None`).
    pub data: Option<String>,
    /// Delete the mutex record on release instead of marking it free (plain mutexes only).
    pub delete_on_release: bool,
}

impl AcquireLockOptions {
    /// Checks the options without I/O: the key, the data, the lease and the wait.
    pub fn validate(&self) -> Result<()> {
        validate_key(&self.key)?;
        validate_data(self.data.as_deref())?;
        if let Some(lease) = self.lease_duration {
            validate_duration("lease duration", lease, false)?;
        }
        if let Some(wait) = self.wait {
            validate_duration("wait", wait, true)?;
        }
        if self.delete_on_release && self.requires_semaphore {
            return Err(LockError::validation(
                "delete_on_release applies to mutexes, not semaphore permits",
            ));
        }
        Ok(())
    }
}

/// Builds [`AcquireLockOptions`].
///
/// ```
/// use db_locks::AcquireLockOptionsBuilder;
/// let opts = AcquireLockOptionsBuilder::new("nightly-report")
///     .with_lease_duration_secs(30)
///     .with_wait_duration_secs(5)
///     .with_data("host-a")
///     .build();
/// assert_eq!(opts.key, "nightly-report");
/// ```
#[derive(Debug, Clone)]
pub struct AcquireLockOptionsBuilder {
    opts: AcquireLockOptions,
}

impl AcquireLockOptionsBuilder {
    /// Options for the mutex (or semaphore) `key`.
    pub fn new(key: impl Into<String>) -> Self {
        AcquireLockOptionsBuilder {
            opts: AcquireLockOptions {
                key: key.into(),
                lease_duration: None,
                wait: None,
                requires_semaphore: false,
                data: None,
                delete_on_release: false,
            },
        }
    }

    /// Lease length.
    pub fn with_lease_duration(mut self, lease: Duration) -> Self {
        self.opts.lease_duration = Some(lease);
        self
    }

    /// Lease length in milliseconds.
    pub fn with_lease_duration_millis(self, millis: u64) -> Self {
        self.with_lease_duration(Duration::from_millis(millis))
    }

    /// Lease length in seconds.
    pub fn with_lease_duration_secs(self, secs: u64) -> Self {
        self.with_lease_duration(Duration::from_secs(secs))
    }

    /// Lease length in minutes.
    pub fn with_lease_duration_minutes(self, minutes: u64) -> Self {
        self.with_lease_duration(Duration::from_secs(minutes.saturating_mul(60)))
    }

    /// How long to wait while the lock is busy (zero: try once).
    pub fn with_wait_duration(mut self, wait: Duration) -> Self {
        self.opts.wait = Some(wait);
        self
    }

    /// Wait in milliseconds.
    pub fn with_wait_duration_millis(self, millis: u64) -> Self {
        self.with_wait_duration(Duration::from_millis(millis))
    }

    /// Wait in seconds.
    pub fn with_wait_duration_secs(self, secs: u64) -> Self {
        self.with_wait_duration(Duration::from_secs(secs))
    }

    /// Acquire a permit of the semaphore named by the key.
    pub fn with_requires_semaphore(mut self, requires_semaphore: bool) -> Self {
        self.opts.requires_semaphore = requires_semaphore;
        self
    }

    /// Data stored with the lock.
    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.opts.data = Some(data.into());
        self
    }

    /// Delete the record when it is released.
    pub fn with_delete_on_release(mut self, delete_on_release: bool) -> Self {
        self.opts.delete_on_release = delete_on_release;
        self
    }

    /// The options (validated when used, so building never fails).
    pub fn build(self) -> AcquireLockOptions {
        self.opts
    }
}

/// Renews a lease: built by [`SendHeartbeatOptionsBuilder`] or [`crate::MutexLock::to_heartbeat_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendHeartbeatOptions {
    /// The mutex key (a slot key for a permit).
    pub key: String,
    /// The version the holder got from its last grant or renewal.
    pub version: String,
    /// New lease length; `None` keeps the lock's current lease.
    pub lease_duration: Option<Duration>,
    /// The semaphore of a permit slot.
    pub semaphore_key: Option<String>,
    /// Replaces the stored data when set.
    pub data: Option<String>,
    /// The version the renewal writes; `None`: a fresh random one. Naming it makes the renewal
    /// idempotent: if a renewal times out, send it again with the same `new_version` (and the
    /// same `version`): the store accepts it whether or not the first one was applied.
    pub new_version: Option<String>,
}

impl SendHeartbeatOptions {
    /// Checks the options without I/O; returns the permit's slot index for a permit.
    pub fn validate(&self) -> Result<Option<u32>> {
        let slot = validate_lock_key(&self.key, self.semaphore_key.as_deref())?;
        validate_version(&self.version)?;
        if let Some(v) = &self.new_version {
            validate_version(v)?;
        }
        validate_data(self.data.as_deref())?;
        if let Some(lease) = self.lease_duration {
            validate_duration("lease duration", lease, false)?;
        }
        Ok(slot)
    }
}

/// Builds [`SendHeartbeatOptions`].
#[derive(Debug, Clone)]
pub struct SendHeartbeatOptionsBuilder {
    opts: SendHeartbeatOptions,
}

impl SendHeartbeatOptionsBuilder {
    /// Renew mutex `key` held with `version`.
    pub fn new(key: impl Into<String>, version: impl Into<String>) -> Self {
        SendHeartbeatOptionsBuilder {
            opts: SendHeartbeatOptions {
                key: key.into(),
                version: version.into(),
                lease_duration: None,
                semaphore_key: None,
                data: None,
                new_version: None,
            },
        }
    }

    /// The version the renewal writes (see [`SendHeartbeatOptions::new_version`]): a retry
    /// with the same one is safe after a timeout.
    pub fn with_new_version(mut self, new_version: impl Into<String>) -> Self {
        self.opts.new_version = Some(new_version.into());
        self
    }

    /// New lease length.
    pub fn with_lease_duration(mut self, lease: Duration) -> Self {
        self.opts.lease_duration = Some(lease);
        self
    }

    /// New lease length in seconds.
    pub fn with_lease_duration_secs(self, secs: u64) -> Self {
        self.with_lease_duration(Duration::from_secs(secs))
    }

    /// New lease length in milliseconds.
    pub fn with_lease_duration_millis(self, millis: u64) -> Self {
        self.with_lease_duration(Duration::from_millis(millis))
    }

    /// The key names a slot of this semaphore.
    pub fn with_semaphore_key(mut self, semaphore_key: impl Into<String>) -> Self {
        self.opts.semaphore_key = Some(semaphore_key.into());
        self
    }

    /// Replace the stored data.
    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.opts.data = Some(data.into());
        self
    }

    /// The options.
    pub fn build(self) -> SendHeartbeatOptions {
        self.opts
    }
}

/// Releases a lease: built by [`ReleaseLockOptionsBuilder`] or [`crate::MutexLock::to_release_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleaseLockOptions {
    /// The mutex key (a slot key for a permit).
    pub key: String,
    /// The version the holder got from its last grant or renewal.
    pub version: String,
    /// The semaphore of a permit slot.
    pub semaphore_key: Option<String>,
    /// Replaces the stored data when set (a hand-over note for the next holder).
    pub data: Option<String>,
    /// Delete the record (`None`: as the record's `delete_on_release` says, which costs a read
    /// of it first; permits are never deleted).
    pub delete_lock: Option<bool>,
}

impl ReleaseLockOptions {
    /// Checks the options without I/O; returns the permit's slot index for a permit.
    pub fn validate(&self) -> Result<Option<u32>> {
        let slot = validate_lock_key(&self.key, self.semaphore_key.as_deref())?;
        validate_version(&self.version)?;
        validate_data(self.data.as_deref())?;
        if slot.is_some() && self.delete_lock == Some(true) {
            return Err(LockError::validation(
                "a permit's slot belongs to its semaphore and cannot be deleted",
            ));
        }
        Ok(slot)
    }
}

/// Builds [`ReleaseLockOptions`].
#[derive(Debug, Clone)]
pub struct ReleaseLockOptionsBuilder {
    opts: ReleaseLockOptions,
}

impl ReleaseLockOptionsBuilder {
    /// Release mutex `key` held with `version`.
    pub fn new(key: impl Into<String>, version: impl Into<String>) -> Self {
        ReleaseLockOptionsBuilder {
            opts: ReleaseLockOptions {
                key: key.into(),
                version: version.into(),
                semaphore_key: None,
                data: None,
                delete_lock: None,
            },
        }
    }

    /// The key names a slot of this semaphore.
    pub fn with_semaphore_key(mut self, semaphore_key: impl Into<String>) -> Self {
        self.opts.semaphore_key = Some(semaphore_key.into());
        self
    }

    /// Replace the stored data.
    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.opts.data = Some(data.into());
        self
    }

    /// Delete the record instead of marking it free.
    pub fn with_delete_lock(mut self, delete: bool) -> Self {
        self.opts.delete_lock = Some(delete);
        self
    }

    /// The options.
    pub fn build(self) -> ReleaseLockOptions {
        self.opts
    }
}
