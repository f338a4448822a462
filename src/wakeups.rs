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
    /// Leases this manager granted and has not seen end, by tenant and key (a semaphore's
    /// key for its permits). While one is held here, its release will bring a hint, so the
    /// first waiter need not poll for it often. A count may stay behind for a record that is
    /// never released here (it expires, or another process releases it); that only makes
    /// waiters for that key poll at the longest interval.
    held: Mutex<HashMap<(String, String), usize>>,
}

/// The waiters of one key, in arrival order.
#[derive(Debug, Default)]
struct Waiters {
    state: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    next_id: u64,
    /// Tickets waiting, oldest first.
    waiting: VecDeque<(u64, Arc<Signal>)>,
}

/// One ticket's wake-up: a hint it has not consumed yet. Each ticket sleeps on its own, so a
/// hint wakes exactly the thread it is for.
#[derive(Debug, Default)]
struct Signal {
    hinted: Mutex<bool>,
    woken: Condvar,
}

impl Signal {
    /// Sets the hint; `false` if it was set already.
    fn hint(&self) -> bool {
        let mut hinted = self.hinted.lock();
        let fresh = !*hinted;
        *hinted = true;
        self.woken.notify_one();
        fresh
    }
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
        let signal = Arc::new(Signal::default());
        let id = {
            let mut q = waiters.state.lock();
            q.next_id += 1;
            let id = q.next_id;
            q.waiting.push_back((id, signal.clone()));
            id
        };
        drop(keys);
        Ticket {
            wakeups: self.clone(),
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            waiters,
            id,
            signal,
        }
    }

    /// The waiters of `(tenant, key)`, if any wait.
    fn waiters(&self, tenant: &str, key: &str) -> Option<Arc<Waiters>> {
        self.keys
            .lock()
            .get(&(tenant.to_owned(), key.to_owned()))
            .cloned()
    }

    /// A lease of `(tenant, key)` ended (released or deleted): wakes its oldest waiter that is
    /// not woken yet, if any.
    pub(crate) fn released(&self, tenant: &str, key: &str) {
        if let Some(waiters) = self.waiters(tenant, key) {
            waiters.wake_one();
        }
    }

    /// Wakes every waiter of `(tenant, key)` (a semaphore grew, or was deleted).
    pub(crate) fn released_all(&self, tenant: &str, key: &str) {
        if let Some(waiters) = self.waiters(tenant, key) {
            for (_, signal) in &waiters.state.lock().waiting {
                signal.hint();
            }
        }
    }

    /// This manager was granted a lease of `(tenant, key)`.
    pub(crate) fn granted(&self, tenant: &str, key: &str) {
        *self
            .held
            .lock()
            .entry((tenant.to_owned(), key.to_owned()))
            .or_default() += 1;
    }

    /// A lease of `(tenant, key)` granted to this manager ended here (released, lost, handed
    /// over or deleted).
    pub(crate) fn ended(&self, tenant: &str, key: &str) {
        let mut held = self.held.lock();
        let entry = (tenant.to_owned(), key.to_owned());
        if let Some(n) = held.get_mut(&entry) {
            *n -= 1;
            if *n == 0 {
                held.remove(&entry);
            }
        }
    }

    /// Whether a lease of `(tenant, key)` is held through this manager.
    pub(crate) fn held_here(&self, tenant: &str, key: &str) -> bool {
        self.held
            .lock()
            .contains_key(&(tenant.to_owned(), key.to_owned()))
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
    /// Hints the oldest ticket that has no hint yet.
    fn wake_one(&self) {
        let q = self.state.lock();
        for (_, signal) in &q.waiting {
            if signal.hint() {
                return;
            }
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
    signal: Arc<Signal>,
}

impl Ticket {
    /// Whether no older waiter of this process waits for the key.
    pub(crate) fn is_first(&self) -> bool {
        self.waiters
            .state
            .lock()
            .waiting
            .front()
            .is_some_and(|(id, _)| *id == self.id)
    }

    /// Sleeps until a hint for this ticket arrives or `timeout` passes; `true` if hinted.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut hinted = self.signal.hinted.lock();
        loop {
            if *hinted {
                *hinted = false;
                return true;
            }
            if self.signal.woken.wait_until(&mut hinted, until).timed_out() {
                return false;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let pass_on = {
            let mut q = self.waiters.state.lock();
            q.waiting.retain(|(id, _)| *id != self.id);
            // Read under the queue's lock: no hint can reach this ticket any more.
            let hinted = *self.signal.hinted.lock();
            hinted
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
    fn leases_held_here_are_counted() {
        let w = Wakeups::default();
        w.granted("t", "sem");
        w.granted("t", "sem");
        w.ended("t", "sem");
        assert!(w.held_here("t", "sem"));
        w.ended("t", "sem");
        w.ended("t", "sem");
        assert!(!w.held_here("t", "sem"));
        assert!(w.held.lock().is_empty());
    }

    #[test]
    fn released_all_wakes_everyone() {
        let w = Arc::new(Wakeups::default());
        let tickets: Vec<Ticket> = (0..3).map(|_| w.ticket("t", "sem")).collect();
        w.released_all("t", "sem");
        assert!(tickets.iter().all(|t| t.wait(Duration::ZERO)));
    }
}
