//! [`MutexGuard`] and [`SemaphorePermit`]: RAII leases over one private [`Lease`].
//!
//! A guard owns its lease: a heartbeat thread renews it, and `Drop` stops the thread and
//! releases it. `release()` does the same and returns the error for callers who want it;
//! `into_lock()` stops the heartbeat and hands the lease on without releasing it.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::error::{LockError, Result};
use crate::heartbeat::{Heartbeat, LeaseState};
use crate::manager::Shared;
use crate::model::MutexLock;
use crate::store::ReleaseRequest;

/// The lease behind both guard types. `heartbeat` is `Some` until the lease is finished, so
/// `release()`, `into_lock()` and `Drop` share one path and run it once.
#[derive(Debug)]
struct Lease {
    shared: Arc<Shared>,
    state: Arc<LeaseState>,
    heartbeat: Option<Heartbeat>,
}

impl Lease {
    fn is_held(&self) -> bool {
        self.heartbeat.is_some() && self.state.lost_reason().is_none()
    }

    fn ensure_held(&self) -> Result<()> {
        match self.state.lost_reason() {
            None => Ok(()),
            Some(reason) => Err(LockError::LeaseLost {
                key: self.state.record().mutex_key,
                reason,
            }),
        }
    }

    /// Stops the heartbeat; then releases the lease if `release` is set. Runs once.
    fn finish(&mut self, release: bool) -> Result<()> {
        let Some(mut heartbeat) = self.heartbeat.take() else {
            return Ok(());
        };
        heartbeat.stop();
        self.shared.metrics.guard_ended();
        if !release {
            return Ok(());
        }
        // Released even after a local loss: if nobody took it over, this frees it now
        // instead of at expiry; if somebody did, the version no longer matches and nothing changes.
        let record = self.state.record();
        let released = self.shared.store.release(&ReleaseRequest {
            tenant_id: &record.tenant_id,
            semaphore_key: record.semaphore_key.as_deref(),
            key: &record.mutex_key,
            version: &record.version,
            data: None,
            delete: Some(record.delete_on_release && record.semaphore_key.is_none()),
        });
        match released {
            Ok(true) => {
                self.shared.metrics.count("release", "ok");
                Ok(())
            }
            Ok(false) => {
                self.shared.metrics.count("release", "not_held");
                Err(LockError::NotHeld {
                    key: record.mutex_key,
                    version: record.version,
                })
            }
            Err(e) => {
                self.shared.metrics.count("release", "error");
                Err(e)
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            if let Err(e) = self.finish(true) {
                // Drop never panics; the lease expires on its own if the release failed.
                log::warn!("db-locks: release on drop failed: {e}");
            }
        }
    }
}

macro_rules! guard_methods {
    () => {
        /// The fencing token of this grant: pass it to the protected resource, which rejects
        /// writers whose token is lower than the highest it has seen.
        pub fn fencing_token(&self) -> i64 {
            self.lease.state.record().fencing_token
        }

        /// The current record (its version changes with every renewal).
        pub fn lock_record(&self) -> MutexLock {
            self.lease.state.record()
        }

        /// The mutex (or slot) key.
        pub fn key(&self) -> String {
            self.lease.state.record().mutex_key
        }

        /// Whether the lease is still held by this process's clock: no renewal was rejected,
        /// and the lease (minus the safety margin) has not run out since the last renewal was sent.
        pub fn is_held(&self) -> bool {
            self.lease.is_held()
        }

        /// `Err(LockError::LeaseLost)` once [`Self::is_held`] is false: use it with `?` inside
        /// the critical section before each step that needs the lock.
        pub fn ensure_held(&self) -> Result<()> {
            self.lease.ensure_held()
        }

        /// When the lease ends by this process's monotonic clock unless renewed.
        pub fn expires_at(&self) -> Instant {
            self.lease.state.deadline()
        }

        /// A channel that becomes ready (disconnected) when the heartbeat stops because the
        /// lease was lost. Use it in `crossbeam_channel::select!` to stop work promptly.
        pub fn lost_signal(&self) -> Receiver<()> {
            match &self.lease.heartbeat {
                Some(h) => h.ended().clone(),
                None => crossbeam_channel::never(),
            }
        }

        /// Releases the lease now, returning the error that `Drop` would only log.
        pub fn release(mut self) -> Result<()> {
            self.lease.finish(true)
        }

        /// Stops renewing and returns the record without releasing it: the lease stays held
        /// until it expires, or until whoever receives the record renews or releases it with
        /// its version (the CLI's `acquire` hands leases to shell scripts this way).
        pub fn into_lock(mut self) -> MutexLock {
            let _ = self.lease.finish(false);
            self.lease.state.record()
        }
    };
}

/// An exclusive lease on a mutex, renewed in the background and released on `Drop`.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct MutexGuard {
    lease: Lease,
}

impl MutexGuard {
    guard_methods!();
}

/// One permit of a counting semaphore, renewed in the background and released on `Drop`.
#[must_use = "the permit is released as soon as it is dropped"]
#[derive(Debug)]
pub struct SemaphorePermit {
    lease: Lease,
}

impl SemaphorePermit {
    guard_methods!();

    /// The semaphore this permit belongs to.
    pub fn semaphore_key(&self) -> String {
        self.lease.state.record().semaphore_key.unwrap_or_default()
    }
}

/// Starts the heartbeat of a fresh grant and wraps it.
pub(crate) fn start_lease(
    shared: &Arc<Shared>,
    record: MutexLock,
    sent_at: Instant,
    period: std::time::Duration,
) -> Result<(Arc<LeaseState>, Heartbeat)> {
    let margin = shared.safety_margin(record.lease_duration_ms);
    let state = Arc::new(LeaseState::new(record, sent_at, margin));
    let heartbeat = Heartbeat::spawn(crate::heartbeat::HeartbeatConfig {
        store: shared.store.clone(),
        state: state.clone(),
        metrics: shared.metrics.clone(),
        period,
        retry: shared.retry_base().max(period / 10),
    });
    match heartbeat {
        Ok(h) => {
            shared.metrics.guard_started();
            Ok((state, h))
        }
        Err(e) => Err(LockError::Store(format!(
            "cannot start the heartbeat thread: {e}"
        ))),
    }
}

pub(crate) fn mutex_guard(
    shared: Arc<Shared>,
    state: Arc<LeaseState>,
    heartbeat: Heartbeat,
) -> MutexGuard {
    MutexGuard {
        lease: Lease {
            shared,
            state,
            heartbeat: Some(heartbeat),
        },
    }
}

pub(crate) fn semaphore_permit(
    shared: Arc<Shared>,
    state: Arc<LeaseState>,
    heartbeat: Heartbeat,
) -> SemaphorePermit {
    SemaphorePermit {
        lease: Lease {
            shared,
            state,
            heartbeat: Some(heartbeat),
        },
    }
}
