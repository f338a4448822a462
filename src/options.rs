//! Options of the record-level operations, with builders that follow the original README.

use std::time::Duration;

/// What to acquire and how: built by [`AcquireLockOptionsBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How often a guard renews; `None` uses the config's period or a third of the lease.
    pub heartbeat_period: Option<Duration>,
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
                heartbeat_period: None,
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

    /// How often a guard renews its lease.
    pub fn with_heartbeat_period(mut self, period: Duration) -> Self {
        self.opts.heartbeat_period = Some(period);
        self
    }

    /// The options (validated when used, so building never fails).
    pub fn build(self) -> AcquireLockOptions {
        self.opts
    }
}

/// Renews a lease: built by [`SendHeartbeatOptionsBuilder`] or [`crate::MutexLock::to_heartbeat_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendHeartbeatOptions {
    /// The mutex key (a slot key for a permit).
    pub key: String,
    /// The version the holder got from its last grant or renewal.
    pub version: String,
    /// New lease length; `None` keeps the lock's current lease, at the cost of one read.
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
pub struct ReleaseLockOptions {
    /// The mutex key (a slot key for a permit).
    pub key: String,
    /// The version the holder got from its last grant or renewal.
    pub version: String,
    /// The semaphore of a permit slot.
    pub semaphore_key: Option<String>,
    /// Replaces the stored data when set (a hand-over note for the next holder).
    pub data: Option<String>,
    /// Delete the record (`None`: as the record's `delete_on_release` says; never for permits).
    pub delete_lock: Option<bool>,
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
