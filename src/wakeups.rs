//! Release hints: how a waiter learns that a busy mutex or semaphore may be free again without
//! polling the store for it.
//!
//! A waiter for `(tenant, key)` (the mutex key, or the semaphore key of a permit) takes a
//! [`Ticket`] before its attempt, and if the attempt finds it busy, sleeps on the ticket for
//! at most its poll interval. A hint, [`Wakeups::released`], wakes the longest-waiting ticket
//! of that key; hints come from this process's own releases (every release path of the
//! manager and its guards) and, on stores that push them, from other processes (PostgreSQL
//! `NOTIFY`, Redis `PUBLISH`; see [`crate::store::LeaseStore::watch_releases`]).
//!
//! Invariants:
//! * A hint never grants anything: the woken waiter still makes the store's conditional write,
//!   so a false or duplicate hint costs one request, and a lost one at most one poll interval.
//! * One hint wakes one waiter (the oldest), so a release costs one request per process with
//!   waiters instead of one per waiting thread, and waiters of one process are served in
//!   arrival order. A woken ticket that goes away without having been granted passes its hint
//!   on to the next one.
//! * A ticket is taken before the attempt whose busy answer it sleeps on, so a release between
//!   that answer and the sleep is not missed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Waiters of one process (one manager and its clones), by tenant and key.
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    keys: Mutex<HashMap<(String, String), Arc<Waiters>>>,
}

/// The waiters of one key, in arrival order.
#[derive(Debug, Default)]
struct Waiters {
    state: Mutex<Queue>,
    woken: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    next_id: u64,
    /// Tickets waiting, oldest first.
    waiting: VecDeque<u64>,
    /// Tickets woken by a hint they have not consumed yet.
    hinted: Vec<u64>,
}

impl Wakeups {
    /// A ticket for `(tenant, key)`: take it before the attempt it may sleep after.
    pub(crate) fn ticket(self: &Arc<Self>, tenant: &str, key: &str) -> Ticket {
        // Queued under the map's lock, so `forget_if_idle` cannot drop the entry in between.
        let mut keys = self.keys.lock();
        let waiters = keys
            .entry((tenant.to_owned(), key.to_owned()))
            .or_default()
            .clone();
        let id = {
            let mut q = waiters.state.lock();
            q.next_id += 1;
            let id = q.next_id;
            q.waiting.push_back(id);
            id
        };
        drop(keys);
        Ticket {
            wakeups: self.clone(),
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            waiters,
            id,
        }
    }

    /// A lease of `(tenant, key)` ended (released or deleted): wakes its oldest waiter that is
    /// not woken yet, if any.
    pub(crate) fn released(&self, tenant: &str, key: &str) {
        let waiters = self
            .keys
            .lock()
            .get(&(tenant.to_owned(), key.to_owned()))
            .cloned();
        if let Some(waiters) = waiters {
            waiters.wake_one();
        }
    }

    /// Wakes every waiter of `(tenant, key)` (a semaphore grew, or was deleted).
    pub(crate) fn released_all(&self, tenant: &str, key: &str) {
        let waiters = self
            .keys
            .lock()
            .get(&(tenant.to_owned(), key.to_owned()))
            .cloned();
        if let Some(waiters) = waiters {
            let mut q = waiters.state.lock();
            let all: Vec<u64> = q.waiting.iter().copied().collect();
            q.hinted = all;
            waiters.woken.notify_all();
        }
    }

    /// Forgets the key's entry once nobody waits on it.
    fn forget_if_idle(&self, tenant: &str, key: &str) {
        let mut keys = self.keys.lock();
        let entry = (tenant.to_owned(), key.to_owned());
        let idle = keys
            .get(&entry)
            .is_some_and(|w| w.state.lock().waiting.is_empty());
        if idle {
            keys.remove(&entry);
        }
    }
}

impl Waiters {
    fn wake_one(&self) {
        let mut q = self.state.lock();
        let next = q.waiting.iter().copied().find(|id| !q.hinted.contains(id));
        if let Some(id) = next {
            q.hinted.push(id);
            self.woken.notify_all();
        }
    }
}

/// One waiter's place in the queue of its key; leaves it when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    wakeups: Arc<Wakeups>,
    tenant: String,
    key: String,
    waiters: Arc<Waiters>,
    id: u64,
}

impl Ticket {
    /// Sleeps until a hint for this ticket arrives or `timeout` passes; `true` if hinted.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut q = self.waiters.state.lock();
        loop {
            if let Some(i) = q.hinted.iter().position(|&id| id == self.id) {
                q.hinted.swap_remove(i);
                return true;
            }
            if self.waiters.woken.wait_until(&mut q, until).timed_out() {
                return false;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let pass_on = {
            let mut q = self.waiters.state.lock();
            q.waiting.retain(|&id| id != self.id);
            let had_hint = q.hinted.iter().position(|&id| id == self.id);
            if let Some(i) = had_hint {
                q.hinted.swap_remove(i);
            }
            had_hint.is_some()
        };
        // A hint this ticket did not use (it was granted meanwhile, or gave up) belongs to
        // the next waiter: the release it announced may still be there to take.
        if pass_on {
            self.waiters.wake_one();
        }
        self.wakeups.forget_if_idle(&self.tenant, &self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_wakes_the_oldest_waiter_only() {
        let w = Arc::new(Wakeups::default());
        let first = w.ticket("t", "k");
        let second = w.ticket("t", "k");
        w.released("t", "k");
        assert!(first.wait(Duration::from_millis(10)));
        assert!(!second.wait(Duration::from_millis(10)));
        w.released("t", "other");
        w.released("u", "k");
        assert!(!first.wait(Duration::from_millis(10)));
    }

    #[test]
    fn an_unused_hint_passes_to_the_next_waiter() {
        let w = Arc::new(Wakeups::default());
        let first = w.ticket("t", "k");
        let second = w.ticket("t", "k");
        w.released("t", "k");
        drop(first);
        assert!(second.wait(Duration::from_millis(10)));
    }

    #[test]
    fn a_hint_before_the_wait_is_kept() {
        let w = Arc::new(Wakeups::default());
        let t = w.ticket("t", "k");
        w.released("t", "k");
        assert!(t.wait(Duration::ZERO));
    }

    #[test]
    fn a_hint_crosses_threads_and_idle_keys_are_forgotten() {
        let w = Arc::new(Wakeups::default());
        let t = w.ticket("t", "k");
        let w2 = w.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.released("t", "k");
        });
        assert!(t.wait(Duration::from_secs(5)));
        waker.join().unwrap();
        drop(t);
        assert!(w.keys.lock().is_empty());
    }

    #[test]
    fn released_all_wakes_everyone() {
        let w = Arc::new(Wakeups::default());
        let tickets: Vec<Ticket> = (0..3).map(|_| w.ticket("t", "sem")).collect();
        w.released_all("t", "sem");
        assert!(tickets.iter().all(|t| t.wait(Duration::ZERO)));
    }
}
