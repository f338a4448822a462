//! The deadline watcher: one thread for the whole process that marks a lease lost at its
//! local deadline, whatever its heartbeat thread is doing.
//!
//! A heartbeat thread can sit in one renewal for the store's whole I/O timeout (a stalled
//! server, a lost packet), far past the safety margin. The loss signal must not wait for it:
//! code inside the critical section, and `run`'s stop of its command, rely on hearing of the
//! loss by the deadline. So every deadline a lease gets is also handed to this thread, which
//! sleeps until the earliest one and then asks the lease to expire itself if its deadline has
//! really passed (a renewal may have moved it since).
//!
//! Invariants:
//! * The thread holds only weak references: it never keeps a lease alive.
//! * A stale entry (its lease was renewed, finished or dropped) does nothing when it fires.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::heartbeat::LeaseState;

struct Entry {
    at: Instant,
    seq: u64,
    lease: Weak<LeaseState>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A deadline handed to the watcher.
type Due = (Instant, Weak<LeaseState>);

/// Asks the watcher to expire `lease` at `at` unless its deadline has moved by then.
pub(crate) fn watch(at: Instant, lease: &Arc<LeaseState>) {
    static WATCHER: OnceLock<Option<Sender<Due>>> = OnceLock::new();
    let watcher = WATCHER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Due>();
        let spawned = std::thread::Builder::new()
            .name("db-locks-deadlines".into())
            .spawn(move || {
                let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
                let mut seq = 0u64;
                loop {
                    let next = match heap.peek() {
                        Some(Reverse(first)) => rx.recv_deadline(first.at),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok((at, lease)) => {
                            seq += 1;
                            heap.push(Reverse(Entry { at, seq, lease }));
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    while heap.peek().is_some_and(|Reverse(first)| first.at <= now) {
                        let Some(Reverse(due)) = heap.pop() else {
                            break;
                        };
                        if let Some(lease) = due.lease.upgrade() {
                            lease.expire_if_due();
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                // Without it, losses are still reported, by the heartbeat threads themselves.
                log::error!("db-locks: cannot start the deadline thread: {e}");
                None
            }
        }
    });
    if let Some(tx) = watcher {
        let _ = tx.send((at, Arc::downgrade(lease)));
    }
}
