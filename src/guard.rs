//! Guards: [`LeaseGuard`], the held lease that [`MutexGuard`] and [`SemaphorePermit`] share.
//!
//! A guard owns its lease: a heartbeat thread renews it, and `Drop` asks that thread to
//! release it. `release()` does the same and returns the error for callers who want it;
//! `hand_over()` stops the heartbeat and hands the lease on without releasing it.
//!
//! Invariant: a guard never waits on the store for longer than the I/O timeout plus
//! [`FINISH_SLACK`]: every store request runs on the heartbeat thread, and the guard waits for
//! its outcome only that long (the lease then ends at its expiry instead).

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{LockError, Result};
use crate::heartbeat::{Finish, Heartbeat, HeartbeatConfig, LeaseState};
use crate::model::MutexLock;
use crate::shared::Shared;

/// How much longer than the I/O timeout a guard waits for its release or hand-over: the time
/// to hand the request to the heartbeat thread and to hear back.
const FINISH_SLACK: Duration = Duration::from_millis(250);

/// A lease held by this process and renewed in the background until it is released (on
/// `Drop`, or by [`LeaseGuard::release`]) or handed over ([`LeaseGuard::hand_over`]).
///
/// [`MutexGuard`] and [`SemaphorePermit`] are both a `LeaseGuard` (they deref to it and
/// convert into it), so code that holds either kind can take a `LeaseGuard`.
#[must_use = "the lease is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LeaseGuard {
    shared: Arc<Shared>,
    state: Arc<LeaseState>,
    /// `Some` until the lease is finished, so `release()`, `hand_over()` and `Drop` share one
    /// path and run it once.
    heartbeat: Option<Heartbeat>,
}

impl LeaseGuard {
    /// Starts the heartbeat of a fresh grant, whose request was sent at `sent_at`.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        record: MutexLock,
        sent_at: Instant,
        margin: Duration,
        period: Duration,
    ) -> Result<LeaseGuard> {
        let state = LeaseState::new(record, sent_at, margin);
        let heartbeat = Heartbeat::spawn(HeartbeatConfig {
            store: shared.store.clone(),
            state: state.clone(),
            metrics: shared.metrics.clone(),
            granted_at: sent_at,
            period,
            retry: shared.config.retry_base.max(period / 10),
        })
        .map_err(|e| LockError::Store(format!("cannot start the heartbeat thread: {e}")))?;
        shared.metrics.guard_started();
        Ok(LeaseGuard {
            shared: shared.clone(),
            state,
            heartbeat: Some(heartbeat),
        })
    }

    /// The mutex key, or the permit's slot key (`<semaphore>_<index>`).
    pub fn key(&self) -> &str {
        &self.state.id.key
    }

    /// The tenant the lease belongs to.
    pub fn tenant_id(&self) -> &str {
        &self.state.id.tenant_id
    }

    /// The semaphore of a permit; `None` for a mutex.
    pub fn semaphore_key(&self) -> Option<&str> {
        self.state.id.semaphore_key.as_deref()
    }

    /// The fencing token of this grant: pass it to the protected resource, which rejects
    /// writers whose token is lower than the highest it has seen.
    pub fn fencing_token(&self) -> i64 {
        self.state.id.fencing_token
    }

    /// The record as of the last renewal (its version changes with every renewal; its
    /// `expires_at` is the store's time).
    pub fn record(&self) -> MutexLock {
        self.state.record()
    }

    /// Whether the lease is still held by this process's clock: no renewal was rejected,
    /// and the lease (minus the safety margin) has not run out since the last renewal was sent.
    pub fn is_held(&self) -> bool {
        self.heartbeat.is_some() && self.state.lost_reason().is_none()
    }

    /// `Err(LockError::LeaseLost)` once [`Self::is_held`] is false: use it with `?` inside the
    /// critical section before each step that needs the lock.
    pub fn ensure_held(&self) -> Result<()> {
        match self.state.lost_reason() {
            None => Ok(()),
            Some(reason) => Err(LockError::LeaseLost {
                key: self.key().to_owned(),
                reason,
            }),
        }
    }

    /// When the lease ends on this process's monotonic clock unless renewed: the local
    /// deadline, the safety margin before the store's expiry.
    pub fn local_deadline(&self) -> Instant {
        self.state.deadline()
    }

    /// A channel that becomes ready (disconnected) when the lease is lost, by the local
    /// deadline at the latest, whatever a renewal in flight is doing; also when the guard is
    /// finished. Use it in `crossbeam_channel::select!` to stop work promptly.
    pub fn lost_signal(&self) -> Receiver<()> {
        self.state.lost_signal()
    }

    /// Releases the lease now, returning the error that `Drop` would only log. Waits for the
    /// store at most the I/O timeout (plus a moment); if a renewal was in doubt, the release
    /// names both versions, so it frees the lease whichever one the store has.
    pub fn release(mut self) -> Result<()> {
        self.finish(Finish::Release).map(|_| ())
    }

    /// Stops renewing and hands the lease on without releasing it: it stays held until it
    /// expires, or until whoever receives the record renews or releases it with its version
    /// (the CLI's `acquire` hands leases to shell scripts this way). A renewal whose outcome
    /// is in doubt is settled first, so the record's version is the one the store has.
    /// `Err(LeaseLost)` if the lease is lost (or cannot be confirmed before its deadline).
    pub fn hand_over(mut self) -> Result<MutexLock> {
        self.finish(Finish::HandOver)
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
        let released = matches!(finish, Finish::Release);
        let finished = heartbeat.finish(finish, self.shared.config.io_timeout + FINISH_SLACK);
        let id = &self.state.id;
        if released && finished.is_ok() {
            self.shared
                .released(&id.tenant_id, &id.key, id.semaphore_key.as_deref());
        } else {
            // Lost, or handed on: no longer this manager's to release.
            let key = id.semaphore_key.as_deref().unwrap_or(&id.key);
            self.shared.wakeups.ended(&id.tenant_id, key);
        }
        finished
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            if let Err(e) = self.finish(Finish::Release) {
                // Drop never panics; the lease expires on its own if the release failed.
                log::warn!("db-locks: release on drop failed: {e}");
            }
        }
    }
}

/// An exclusive lease on a mutex, renewed in the background and released on `Drop`. Derefs to
/// [`LeaseGuard`], which has its methods.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct MutexGuard(LeaseGuard);

/// One permit of a counting semaphore, renewed in the background and released on `Drop`.
/// Derefs to [`LeaseGuard`], which has its methods.
#[must_use = "the permit is released as soon as it is dropped"]
#[derive(Debug)]
pub struct SemaphorePermit(LeaseGuard);

macro_rules! kind_of_guard {
    ($guard:ident) => {
        impl $guard {
            pub(crate) fn new(lease: LeaseGuard) -> Self {
                $guard(lease)
            }

            /// Releases the lease now (see [`LeaseGuard::release`]).
            pub fn release(self) -> Result<()> {
                self.0.release()
            }

            /// Stops renewing and hands the lease on (see [`LeaseGuard::hand_over`]).
            pub fn hand_over(self) -> Result<MutexLock> {
                self.0.hand_over()
            }
        }

        impl Deref for $guard {
            type Target = LeaseGuard;

            fn deref(&self) -> &LeaseGuard {
                &self.0
            }
        }

        impl From<$guard> for LeaseGuard {
            fn from(guard: $guard) -> LeaseGuard {
                guard.0
            }
        }
    };
}

kind_of_guard!(MutexGuard);
kind_of_guard!(SemaphorePermit);
