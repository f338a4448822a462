// The README is the crate documentation, so its examples run as doc tests.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod backoff;
mod config;
mod deadlines;
mod error;
mod guard;
mod heartbeat;
mod manager;
mod metrics;
mod model;
mod options;
mod shared;
pub mod store;
mod validate;
mod wakeups;

/// The prometheus crate, for a `Registry` of the version the metrics use.
pub use prometheus;

pub use config::{LocksConfig, Provider};
pub use error::{redact_url, ErrorKind, LockError, Redactor, Result};
pub use guard::{LeaseGuard, MutexGuard, SemaphorePermit};
pub use manager::LockManager;
pub use model::{MutexLock, Semaphore, SemaphoreBuilder};
pub use options::{
    AcquireLockOptions, AcquireLockOptionsBuilder, LockOptions, PermitOptions, ReleaseLockOptions,
    ReleaseLockOptionsBuilder, SendHeartbeatOptions, SendHeartbeatOptionsBuilder,
};
pub use validate::{
    validate_data, validate_duration, validate_key, validate_lock_key, validate_semaphore_size,
    validate_tenant, validate_version, MAX_DATA_LEN, MAX_KEY_LEN, MAX_LEASE, MAX_SEMAPHORE_SIZE,
    MAX_TENANT_LEN, MAX_VERSION_LEN,
};
