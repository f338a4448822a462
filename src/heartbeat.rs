//! The renewal thread behind every guard, and the lease state it shares with the guard.
//!
//! Invariants:
//! * `deadline` is when the lease ends by this process's monotonic clock: the instant the
//!   granting or renewing request was *sent*, plus the lease, minus the safety margin. Past it
//!   the guard reports the lease lost whatever the store says, even if the store is unreachable.
//! * A loss is final: once the deadline has passed, a late renewal does not make the lease
//!   held again.
//! * One failed request never ends a lease: errors are retried until `deadline`. A retry keeps
//!   the same new version, and stores accept a renewal whose new version is already in place,
//!   so a renewal that succeeded but whose reply was lost is not mistaken for a loss.
//! * The thread holds no reference to the guard, only to the shared state, so it never keeps
//!   the guard alive; dropping the stop sender ends it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::model::MutexLock;
use crate::store::{LockStore, RenewRequest};

/// What the guard and its heartbeat thread share.
#[derive(Debug)]
pub(crate) struct LeaseState {
    inner: Mutex<LeaseInner>,
    /// Subtracted from every lease when computing `deadline`.
    margin: Duration,
}

#[derive(Debug)]
struct LeaseInner {
    record: MutexLock,
    deadline: Instant,
    lost: Option<String>,
}

impl LeaseState {
    pub(crate) fn new(record: MutexLock, sent_at: Instant, margin: Duration) -> Self {
        let deadline = deadline_for(&record, sent_at, margin);
        LeaseState {
            inner: Mutex::new(LeaseInner {
                record,
                deadline,
                lost: None,
            }),
            margin,
        }
    }

    pub(crate) fn record(&self) -> MutexLock {
        self.inner.lock().record.clone()
    }

    /// Why the lease is lost, if it is: reported loss, or the local deadline has passed.
    pub(crate) fn lost_reason(&self) -> Option<String> {
        let inner = self.inner.lock();
        if let Some(reason) = &inner.lost {
            return Some(reason.clone());
        }
        (Instant::now() >= inner.deadline)
            .then(|| "the lease ran out before a renewal succeeded".to_owned())
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.inner.lock().deadline
    }

    /// Records a successful renewal. A loss is final: a renewal whose reply arrives after the
    /// lease ran out locally does not revive it (code that saw `is_held() == false` may already
    /// have stopped), but its record is kept so that the release on drop uses the new version.
    /// Returns whether the lease is still held.
    fn renewed(&self, record: MutexLock, sent_at: Instant) -> bool {
        let mut inner = self.inner.lock();
        let held = inner.lost.is_none() && Instant::now() < inner.deadline;
        if held {
            inner.deadline = deadline_for(&record, sent_at, self.margin);
        } else {
            inner
                .lost
                .get_or_insert_with(|| "the lease ran out before a renewal succeeded".into());
        }
        inner.record = record;
        held
    }

    fn mark_lost(&self, reason: String) {
        let mut inner = self.inner.lock();
        inner.lost.get_or_insert(reason);
    }
}

fn deadline_for(record: &MutexLock, sent_at: Instant, margin: Duration) -> Instant {
    let lease = Duration::from_millis(record.lease_duration_ms.max(0) as u64);
    sent_at + lease.saturating_sub(margin)
}

/// Stops the thread (dropping the sender) and waits for it.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends: the lease was lost, or the guard stopped it.
    ended: Receiver<()>,
}

pub(crate) struct HeartbeatConfig {
    pub(crate) store: Arc<dyn LockStore>,
    pub(crate) state: Arc<LeaseState>,
    pub(crate) metrics: Metrics,
    pub(crate) period: Duration,
    /// First retry delay after a failed renewal.
    pub(crate) retry: Duration,
}

impl Heartbeat {
    pub(crate) fn spawn(cfg: HeartbeatConfig) -> std::io::Result<Heartbeat> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (ended_tx, ended_rx) = crossbeam_channel::bounded::<()>(0);
        let key = cfg.state.record().mutex_key;
        let thread = std::thread::Builder::new()
            .name(format!("db-locks-heartbeat:{key}"))
            .spawn(move || {
                run(cfg, stop_rx);
                drop(ended_tx);
            })?;
        Ok(Heartbeat {
            stop: Some(stop_tx),
            thread: Some(thread),
            ended: ended_rx,
        })
    }

    pub(crate) fn ended(&self) -> &Receiver<()> {
        &self.ended
    }

    /// Stops the thread and waits until it has ended (at most one in-flight request, which
    /// the store's I/O timeout bounds).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("db-locks heartbeat thread panicked");
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(cfg: HeartbeatConfig, stop: Receiver<()>) {
    let HeartbeatConfig {
        store,
        state,
        metrics,
        period,
        retry,
    } = cfg;
    let mut wait = period;
    // The version a renewal in doubt tried to write; retries reuse it.
    let mut pending_version: Option<String> = None;
    loop {
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let record = state.record();
        let new_version = pending_version
            .get_or_insert_with(crate::manager::new_version)
            .clone();
        let sent_at = Instant::now();
        let outcome = store.renew(&RenewRequest {
            tenant_id: &record.tenant_id,
            semaphore_key: record.semaphore_key.as_deref(),
            key: &record.mutex_key,
            version: &record.version,
            new_version: &new_version,
            lease_ms: record.lease_duration_ms,
            data: None,
        });
        match outcome {
            Ok(Some(renewed)) => {
                metrics.count("heartbeat", "ok");
                pending_version = None;
                if !state.renewed(renewed, sent_at) {
                    metrics.count("lease", "lost");
                    log::warn!(
                        "db-locks: lease on `{}` lost: renewal came back too late",
                        record.mutex_key
                    );
                    return;
                }
                wait = period;
            }
            Ok(None) => {
                metrics.count("heartbeat", "not_held");
                metrics.count("lease", "lost");
                state.mark_lost(
                    "the store no longer has the lease under our version (released, deleted or taken over)"
                        .into(),
                );
                log::warn!(
                    "db-locks: lease on `{}` lost: version rejected",
                    record.mutex_key
                );
                return;
            }
            Err(e) => {
                metrics.count("heartbeat", "error");
                let deadline = state.deadline();
                let now = Instant::now();
                if now >= deadline {
                    metrics.count("lease", "lost");
                    log::warn!("db-locks: lease on `{}` lost: {e}", record.mutex_key);
                    state.mark_lost(format!("renewals failed until the lease ran out: {e}"));
                    return;
                }
                log::debug!(
                    "db-locks: renewal of `{}` failed, retrying: {e}",
                    record.mutex_key
                );
                // Retry soon, but leave room for a few more tries before the deadline.
                wait = retry
                    .min((deadline - now) / 2)
                    .max(Duration::from_millis(1));
            }
        }
        if let Some(reason) = state.lost_reason() {
            metrics.count("lease", "lost");
            state.mark_lost(reason);
            return;
        }
    }
}
