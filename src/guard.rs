//! [`MutexGuard`] and [`SemaphorePermit`]: RAII leases over one private [`Lease`].
//!
//! A guard owns its lease: a heartbeat thread renews it, and `Drop` asks that thread to
//! release it. `release()` does the same and returns the error for callers who want it;
//! `into_lock()` stops the heartbeat and hands the lease on without releasing it.
//!
//! Invariant: a guard never waits on the store for longer than the I/O timeout plus
//! [`FINISH_SLACK`]: every store request runs on the heartbeat thread, and the guard waits for
//! its outcome only that long (the lease then ends at its expiry instead).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{LockError, Result};
use crate::heartbeat::{Finish, Heartbeat, LeaseState};
use crate::manager::Shared;
use crate::model::MutexLock;

/// How much longer than the I/O timeout a guard waits for its release or hand-over: the time
/// to hand the request to the heartbeat thread and to hear back.
const FINISH_SLACK: Duration = Duration::from_millis(250);

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
                key: self.state.key(),
                reason,
            }),
        }
    }

    /// Releases the lease, or hands it over. Runs once; later calls return `NotHeld`.
    fn finish(&mut self, finish: Finish) -> Result<MutexLock> {
        let Some(heartbeat) = self.heartbeat.take() else {
            let record = self.state.record();
            return Err(LockError::NotHeld {
                key: record.mutex_key,
                version: record.version,
            });
        };
        self.shared.metrics.guard_ended();
        heartbeat.finish(finish, self.shared.config.io_timeout() + FINISH_SLACK)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            if let Err(e) = self.finish(Finish::Release) {
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

        /// A channel that becomes ready (disconnected) when the lease is lost, by the local
        /// deadline at the latest, whatever a renewal in flight is doing; also when the guard
        /// is finished. Use it in `crossbeam_channel::select!` to stop work promptly.
        pub fn lost_signal(&self) -> Receiver<()> {
            self.lease.state.lost_signal()
        }

        /// Releases the lease now, returning the error that `Drop` would only log. Waits for
        /// the store at most the I/O timeout (plus a moment); if a renewal was in doubt, the
        /// release names both versions, so it frees the lease whichever one the store has.
        pub fn release(mut self) -> Result<()> {
            self.lease.finish(Finish::Release).map(|_| ())
        }

        /// Stops renewing and returns the record without releasing it: the lease stays held
        /// until it expires, or until whoever receives the record renews or releases it with
        /// its version (the CLI's `acquire` hands leases to shell scripts this way). A renewal
        /// whose outcome is in doubt is settled first, so the record's version is the one the
        /// store has. `Err(LeaseLost)` if the lease is lost (or cannot be confirmed before its
        /// deadline).
        pub fn into_lock(mut self) -> Result<MutexLock> {
            self.lease.finish(Finish::HandOver)
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

/// Starts the heartbeat of a fresh grant, sent at `sent_at`, renewing every `period`.
pub(crate) fn start_lease(
    shared: &Arc<Shared>,
    record: MutexLock,
    sent_at: Instant,
    margin: Duration,
    period: Duration,
) -> Result<(Arc<LeaseState>, Heartbeat)> {
    let state = LeaseState::new(record, sent_at, margin);
    let heartbeat = Heartbeat::spawn(crate::heartbeat::HeartbeatConfig {
        store: shared.store.clone(),
        state: state.clone(),
        metrics: shared.metrics.clone(),
        granted_at: sent_at,
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
