//! The renewal thread behind every guard, and the lease state it shares with the guard.
//!
//! Invariants:
//! * `deadline` is when the lease ends by this process's monotonic clock: the instant the
//!   granting or renewing request was *sent*, plus the lease, minus the safety margin. Past it
//!   the guard reports the lease lost whatever the store says, even if the store is unreachable
//!   or a request hangs: the deadline watcher (`deadlines`) fires the loss signal on time.
//! * A loss is final: once the deadline has passed, a late renewal does not make the lease
//!   held again (the store refuses it too: a lease that ran out is never renewed).
//! * One failed request never ends a lease: errors are retried until `deadline`. A retry keeps
//!   the same new version (`in_doubt`), and stores accept a renewal whose new version is
//!   already in place, so a renewal that succeeded but whose reply was lost is not mistaken for
//!   a loss. While a renewal is in doubt, a release names both versions, so it frees the lease
//!   whichever one the store has.
//! * The thread holds no reference to the guard, only to the shared state, so it never keeps
//!   the guard alive. It does every store request of the lease, the final release included, so
//!   the guard never blocks on the store for longer than it chooses to wait for the reply.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::error::{LockError, Result};
use crate::metrics::Metrics;
use crate::model::{new_version, MutexLock};
use crate::store::{LockStore, ReleaseRequest, RenewRequest, Target};

const EXPIRED: &str = "the lease ran out before a renewal succeeded";

/// Who a lease is: fixed for its whole life, so it is read without a lock.
#[derive(Debug, Clone)]
pub(crate) struct LeaseId {
    pub(crate) tenant_id: String,
    /// The mutex key, or the slot's key.
    pub(crate) key: String,
    pub(crate) semaphore_key: Option<String>,
    /// The slot's index, for a permit.
    pub(crate) slot: Option<u32>,
    pub(crate) fencing_token: i64,
    /// Release deletes the record (plain mutexes only).
    pub(crate) delete_on_release: bool,
}

impl LeaseId {
    /// The identity of a granted record (a permit's slot index is read off its key once).
    fn of(record: &MutexLock) -> LeaseId {
        let slot = record.semaphore_key.as_deref().and_then(|sem| {
            crate::validate::validate_lock_key(&record.mutex_key, Some(sem))
                .ok()
                .flatten()
        });
        LeaseId {
            tenant_id: record.tenant_id.clone(),
            key: record.mutex_key.clone(),
            semaphore_key: record.semaphore_key.clone(),
            slot,
            fencing_token: record.fencing_token,
            delete_on_release: record.delete_on_release && record.semaphore_key.is_none(),
        }
    }

    pub(crate) fn target(&self) -> Target<'_> {
        match (&self.semaphore_key, self.slot) {
            (Some(semaphore), Some(index)) => Target::Slot { semaphore, index },
            _ => Target::Mutex(&self.key),
        }
    }
}

/// What the guard, its heartbeat thread and the deadline watcher share.
#[derive(Debug)]
pub(crate) struct LeaseState {
    pub(crate) id: LeaseId,
    inner: Mutex<LeaseInner>,
    /// Subtracted from every lease when computing `deadline`.
    margin: Duration,
    /// Disconnected when the lease is lost or finished.
    lost_rx: Receiver<()>,
}

#[derive(Debug)]
struct LeaseInner {
    record: MutexLock,
    deadline: Instant,
    lost: Option<String>,
    /// The new version of a renewal that was sent and whose outcome is not known yet (in
    /// flight, or its reply lost): the store may hold the lease under it.
    in_doubt: Option<String>,
    /// Dropped (which disconnects `lost_rx`) when the lease is lost or finished.
    lost_tx: Option<Sender<()>>,
}

impl LeaseState {
    /// The state of a fresh grant whose request was sent at `sent_at`.
    pub(crate) fn new(record: MutexLock, sent_at: Instant, margin: Duration) -> Arc<Self> {
        let deadline = deadline_for(&record, sent_at, margin);
        let (lost_tx, lost_rx) = crossbeam_channel::bounded(0);
        let state = Arc::new(LeaseState {
            id: LeaseId::of(&record),
            inner: Mutex::new(LeaseInner {
                record,
                deadline,
                lost: None,
                in_doubt: None,
                lost_tx: Some(lost_tx),
            }),
            margin,
            lost_rx,
        });
        crate::deadlines::watch(deadline, &state);
        state
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
        (Instant::now() >= inner.deadline).then(|| EXPIRED.to_owned())
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.inner.lock().deadline
    }

    /// Becomes ready (disconnected) when the lease is lost or the guard is finished.
    pub(crate) fn lost_signal(&self) -> Receiver<()> {
        self.lost_rx.clone()
    }

    /// Marks the lease lost if its deadline has passed (the deadline watcher calls this).
    pub(crate) fn expire_if_due(&self) {
        let mut inner = self.inner.lock();
        if inner.lost.is_none() && Instant::now() >= inner.deadline {
            inner.lost = Some(EXPIRED.to_owned());
            inner.lost_tx = None;
        }
    }

    /// Starts a renewal: the record to renew and the new version to write (the one already in
    /// doubt, if any, so that a retry is idempotent). `None` once the lease is lost.
    fn begin_renewal(&self) -> Option<(MutexLock, String)> {
        let mut inner = self.inner.lock();
        if inner.lost.is_some() || Instant::now() >= inner.deadline {
            return None;
        }
        let new_version = inner.in_doubt.get_or_insert_with(new_version).clone();
        Some((inner.record.clone(), new_version))
    }

    /// Records a successful renewal. A loss is final: a renewal whose reply arrives after the
    /// lease ran out locally does not revive it (code that saw `is_held() == false` may already
    /// have stopped), but its record is kept so that the release uses the new version.
    fn renewed(self: &Arc<Self>, record: MutexLock, sent_at: Instant) {
        let mut inner = self.inner.lock();
        inner.in_doubt = None;
        let held = inner.lost.is_none() && Instant::now() < inner.deadline;
        if held {
            inner.deadline = deadline_for(&record, sent_at, self.margin);
            crate::deadlines::watch(inner.deadline, self);
        } else {
            inner.lost.get_or_insert_with(|| EXPIRED.into());
            inner.lost_tx = None;
        }
        inner.record = record;
    }

    /// The store refused the renewal: it holds the lease under neither version.
    fn rejected(&self, reason: &str) {
        let mut inner = self.inner.lock();
        inner.in_doubt = None;
        inner.lost.get_or_insert_with(|| reason.to_owned());
        inner.lost_tx = None;
    }

    fn mark_lost(&self, reason: String) {
        let mut inner = self.inner.lock();
        inner.lost.get_or_insert(reason);
        inner.lost_tx = None;
    }

    /// Ends the lease locally: the loss signal fires for anyone still listening.
    fn finish(&self) {
        self.inner.lock().lost_tx = None;
    }

    /// The record with the version a release must name, and the in-doubt one.
    fn versions(&self) -> (MutexLock, Option<String>) {
        let inner = self.inner.lock();
        (inner.record.clone(), inner.in_doubt.clone())
    }
}

fn deadline_for(record: &MutexLock, sent_at: Instant, margin: Duration) -> Instant {
    sent_at + record.lease_duration.saturating_sub(margin)
}

/// How a guard ends its lease.
pub(crate) enum Finish {
    /// Release the lease in the store.
    Release,
    /// Stop renewing and hand the lease on: the reply is the record with a settled version.
    HandOver,
}

struct Command {
    finish: Finish,
    reply: Sender<Result<MutexLock>>,
}

/// The guard's handle on its heartbeat thread.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

pub(crate) struct HeartbeatConfig {
    pub(crate) store: Arc<dyn LockStore>,
    pub(crate) state: Arc<LeaseState>,
    pub(crate) metrics: Metrics,
    /// When the granting request was sent: the first renewal is due `period` after it.
    pub(crate) granted_at: Instant,
    pub(crate) period: Duration,
    /// First retry delay after a failed renewal.
    pub(crate) retry: Duration,
}

impl Heartbeat {
    pub(crate) fn spawn(cfg: HeartbeatConfig) -> std::io::Result<Heartbeat> {
        let (commands, inbox) = crossbeam_channel::bounded::<Command>(1);
        let key = cfg.state.id.key.clone();
        let thread = std::thread::Builder::new()
            .name(format!("db-locks-heartbeat:{key}"))
            .spawn(move || run(cfg, inbox))?;
        Ok(Heartbeat {
            commands,
            thread: Some(thread),
        })
    }

    /// Asks the thread to finish the lease and waits for the outcome at most `wait`. The thread
    /// may be inside a request (for up to the store's I/O timeout); if it does not answer in
    /// time, the guard goes on without it: the thread still finishes the lease when its request
    /// returns, and a lease that is never released ends at its expiry.
    pub(crate) fn finish(mut self, finish: Finish, wait: Duration) -> Result<MutexLock> {
        let (reply, outcome) = crossbeam_channel::bounded(1);
        if self.commands.send(Command { finish, reply }).is_err() {
            return Err(LockError::Store("the heartbeat thread has stopped".into()));
        }
        match outcome.recv_timeout(wait) {
            Ok(result) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                result
            }
            Err(_) => Err(LockError::Unavailable(format!(
                "the store did not answer within {} ms; the lease ends on its own when it expires",
                wait.as_millis()
            ))),
        }
    }
}

fn run(cfg: HeartbeatConfig, inbox: Receiver<Command>) {
    let HeartbeatConfig {
        store,
        state,
        metrics,
        granted_at,
        period,
        retry,
    } = cfg;
    let mut next = granted_at + period;
    let mut failures = 0u32;
    let mut loss_noted = false;
    loop {
        // A loss is noted once, whoever saw it first (this thread or the deadline watcher).
        // After it there is nothing to renew: the thread waits for the guard to finish.
        if !loss_noted {
            if let Some(reason) = state.lost_reason() {
                metrics.count("lease", "lost");
                log::warn!("db-locks: lease on `{}` lost: {reason}", state.id.key);
                loss_noted = true;
            }
        }
        let command = if loss_noted {
            inbox.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            inbox.recv_deadline(next)
        };
        match command {
            Ok(Command { finish, reply }) => {
                let outcome = match finish {
                    Finish::Release => release(&*store, &state, &metrics),
                    Finish::HandOver => hand_over(&*store, &state, &metrics),
                };
                state.finish();
                let _ = reply.send(outcome);
                return;
            }
            // The guard is gone without finishing (it cannot be: Drop finishes): stop.
            Err(RecvTimeoutError::Disconnected) => {
                state.finish();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let Some((record, new_version)) = state.begin_renewal() else {
            continue;
        };
        let sent_at = Instant::now();
        match renew_once(&*store, &state, &record, &new_version) {
            Ok(Some(renewed)) => {
                metrics.count("heartbeat", "ok");
                failures = 0;
                // Too late (the lease ran out meanwhile) counts as a loss, noted above.
                state.renewed(renewed, sent_at);
                next = sent_at + period;
            }
            Ok(None) => {
                metrics.count("heartbeat", "not_held");
                state.rejected(
                    "the store no longer has the lease under our version (released, deleted, \
                     taken over or expired)",
                );
            }
            Err(e) => {
                metrics.count("heartbeat", "error");
                let now = Instant::now();
                let deadline = state.deadline();
                if now >= deadline {
                    state.mark_lost(format!("renewals failed until the lease ran out: {e}"));
                    continue;
                }
                log::debug!(
                    "db-locks: renewal of `{}` failed, retrying: {e}",
                    record.mutex_key
                );
                // Retry soon, doubling the pause, but leave room for more tries before the
                // deadline.
                failures = failures.saturating_add(1);
                let pause = retry.saturating_mul(1 << failures.min(6).saturating_sub(1));
                next = now
                    + pause
                        .min((deadline - now) / 2)
                        .max(Duration::from_millis(1));
            }
        }
    }
}

fn renew_once(
    store: &dyn LockStore,
    state: &LeaseState,
    record: &MutexLock,
    new_version: &str,
) -> Result<Option<MutexLock>> {
    store.renew(&RenewRequest {
        tenant_id: &state.id.tenant_id,
        target: state.id.target(),
        version: &record.version,
        new_version,
        lease: Some(record.lease_duration),
        data: None,
    })
}

/// Releases the lease, naming the in-doubt version too. Released even after a local loss: if
/// nobody took it over, this frees it now instead of at expiry; if somebody did, neither
/// version matches and nothing changes.
fn release(store: &dyn LockStore, state: &Arc<LeaseState>, metrics: &Metrics) -> Result<MutexLock> {
    let (record, in_doubt) = state.versions();
    let released = store.release(&ReleaseRequest {
        tenant_id: &state.id.tenant_id,
        target: state.id.target(),
        version: &record.version,
        in_doubt_version: in_doubt.as_deref(),
        data: None,
        delete: state.id.delete_on_release,
    });
    match released {
        Ok(true) => {
            metrics.count("release", "ok");
            Ok(record)
        }
        Ok(false) => {
            metrics.count("release", "not_held");
            Err(LockError::NotHeld {
                key: record.mutex_key,
                version: record.version,
            })
        }
        Err(e) => {
            metrics.count("release", "error");
            Err(e)
        }
    }
}

/// Stops renewing and returns the record under a settled version: a renewal in doubt is sent
/// again (same new version) until the store says yes or no, or the lease runs out.
fn hand_over(
    store: &dyn LockStore,
    state: &Arc<LeaseState>,
    metrics: &Metrics,
) -> Result<MutexLock> {
    let lost = |state: &LeaseState| LockError::LeaseLost {
        key: state.id.key.clone(),
        reason: state.lost_reason().unwrap_or_else(|| EXPIRED.into()),
    };
    loop {
        let (record, in_doubt) = state.versions();
        if state.lost_reason().is_some() {
            return Err(lost(state));
        }
        let Some(new_version) = in_doubt else {
            return Ok(record);
        };
        let sent_at = Instant::now();
        match renew_once(store, state, &record, &new_version) {
            Ok(Some(renewed)) => {
                metrics.count("heartbeat", "ok");
                state.renewed(renewed, sent_at);
            }
            Ok(None) => {
                metrics.count("heartbeat", "not_held");
                state.rejected("the store no longer has the lease under our version");
            }
            Err(e) => {
                metrics.count("heartbeat", "error");
                let now = Instant::now();
                if now >= state.deadline() {
                    state.mark_lost(format!("renewals failed until the lease ran out: {e}"));
                } else {
                    std::thread::sleep(Duration::from_millis(20).min(state.deadline() - now));
                }
            }
        }
    }
}
