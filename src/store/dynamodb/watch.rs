//! When a waiter may take over a lease that still looks held: DynamoDB has no clock of its own.
//!
//! * [`Takeover::WatchVersion`] (the default, after the AWS DynamoDB lock client): every grant
//!   and renewal writes a fresh record version number (`rvn`). A waiter remembers the `rvn` it
//!   saw and when it saw it, on its own monotonic clock. Once the same `rvn` has stayed for a
//!   whole lease (the lease stored in the record), the holder cannot still hold it: it counts its
//!   lease from before it sent the write that produced that `rvn`, and every renewal changes the
//!   `rvn`. The takeover is then a write conditioned on that very `rvn`. No two clocks are
//!   compared; a newcomer waits one lease before its first takeover.
//! * [`Takeover::TrustExpiry`]: trusts the `expires_at_ms` the holder wrote (its wall clock plus
//!   the lease) plus an allowance for clock skew. Takeover is immediate once that time has passed
//!   on the waiter's wall clock, but two clocks further apart than the allowance can let two
//!   holders overlap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::item::{
    get_bool, get_n, get_s, Item, Key, Params, EXPIRES_AT_MS, LEASE_DURATION_MS, LOCKED, RVN,
};

/// How a waiter decides that a lease that still looks held is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takeover {
    /// Same `rvn` unchanged for a whole lease, on the waiter's monotonic clock.
    WatchVersion,
    /// Stored `expires_at_ms` plus this many milliseconds, on the waiter's wall clock.
    TrustExpiry { skew_ms: i64 },
}

/// Above this many remembered records, old observations are dropped.
const MAX_OBSERVATIONS: usize = 10_000;

#[derive(Debug)]
struct Seen {
    rvn: String,
    since: Instant,
    lease: Duration,
}

impl Seen {
    fn lease_is_over(&self) -> bool {
        self.since.elapsed() >= self.lease
    }
}

/// The observations of one store: record key -> the `rvn` seen, and since when.
#[derive(Debug)]
pub(super) struct Watcher {
    mode: Takeover,
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Watcher {
    pub(super) fn new(mode: Takeover) -> Watcher {
        Watcher {
            mode,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Notes the state of `item`, just read (or returned by a rejected write). The clock starts
    /// when the reply arrived, which is after the holder's write, hence after its lease began.
    pub(super) fn observe(&self, key: &Key, item: &Item) {
        let Some(rvn) = get_s(item, RVN).filter(|_| get_bool(item, LOCKED)) else {
            self.seen.lock().remove(key);
            return;
        };
        let mut seen = self.seen.lock();
        if seen.get(key).is_some_and(|s| s.rvn == rvn) {
            return;
        }
        let lease =
            Duration::from_millis(get_n(item, LEASE_DURATION_MS).unwrap_or(0).max(0) as u64);
        Self::prune(&mut seen);
        seen.insert(
            key.clone(),
            Seen {
                rvn: rvn.to_owned(),
                since: Instant::now(),
                lease,
            },
        );
    }

    /// Notes a grant or renewal this store just wrote: its `rvn` existed by the time the reply
    /// arrived, so the watch starts now, as for any observation.
    pub(super) fn own_write(&self, key: &Key, item: &Item) {
        self.observe(key, item);
    }

    /// Forgets a record this store released or deleted.
    pub(super) fn forget(&self, key: &Key) {
        self.seen.lock().remove(key);
    }

    fn prune(seen: &mut HashMap<Key, Seen>) {
        if seen.len() >= MAX_OBSERVATIONS {
            // Dropping an observation only delays a takeover; it never allows an early one.
            seen.retain(|_, s| s.since.elapsed() < s.lease + Duration::from_secs(60));
            if seen.len() >= MAX_OBSERVATIONS {
                seen.clear();
            }
        }
    }

    /// The condition clause under which a write may take over the held record `key`, adding
    /// its values to `params`; `None` while the holder may still hold it.
    pub(super) fn takeover_clause(&self, key: &Key, params: &mut Params) -> Option<&'static str> {
        match self.mode {
            Takeover::WatchVersion => {
                let seen = self.seen.lock();
                let s = seen.get(key).filter(|s| s.lease_is_over())?;
                params.set(
                    ":watched_rvn",
                    aws_sdk_dynamodb::types::AttributeValue::S(s.rvn.clone()),
                );
                // The record still carries the rvn seen a whole lease ago: never renewed since.
                Some("#rvn = :watched_rvn")
            }
            Takeover::TrustExpiry { skew_ms } => {
                params.set(
                    ":expired_before",
                    aws_sdk_dynamodb::types::AttributeValue::N((now_ms() - skew_ms).to_string()),
                );
                // The holder's own clock put the end of its lease more than the skew ago.
                Some("#expires_at_ms < :expired_before")
            }
        }
    }

    /// Whether the holder of `item` may still hold it, for decisions (deleting a mutex or a
    /// semaphore). Notes the observation first.
    pub(super) fn may_be_live(&self, key: &Key, item: &Item) -> bool {
        if !get_bool(item, LOCKED) {
            return false;
        }
        match self.mode {
            Takeover::WatchVersion => {
                self.observe(key, item);
                let seen = self.seen.lock();
                !seen
                    .get(key)
                    .is_some_and(|s| Some(s.rvn.as_str()) == get_s(item, RVN) && s.lease_is_over())
            }
            Takeover::TrustExpiry { skew_ms } => {
                get_n(item, EXPIRES_AT_MS).unwrap_or(i64::MAX) >= now_ms() - skew_ms
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether `item` looks held by its writer's clock, for reports (busy counts): held and not
/// past its stored expiry on this machine's wall clock.
pub(super) fn looks_live(item: &Item, now_ms: i64) -> bool {
    get_bool(item, LOCKED) && get_n(item, EXPIRES_AT_MS).is_some_and(|e| e > now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    fn item(rvn: &str, lease_ms: i64, locked: bool) -> Item {
        Item::from([
            (RVN.to_owned(), AttributeValue::S(rvn.to_owned())),
            (
                LEASE_DURATION_MS.to_owned(),
                AttributeValue::N(lease_ms.to_string()),
            ),
            (LOCKED.to_owned(), AttributeValue::Bool(locked)),
            (EXPIRES_AT_MS.to_owned(), AttributeValue::N("0".into())),
        ])
    }

    #[test]
    fn takeover_needs_the_same_rvn_for_a_whole_lease() {
        let w = Watcher::new(Takeover::WatchVersion);
        let key = Key::mutex("t", None, "k");
        let mut p = Params::new();
        assert!(w.takeover_clause(&key, &mut p).is_none(), "never seen");
        w.observe(&key, &item("a", 50, true));
        assert!(w.takeover_clause(&key, &mut p).is_none(), "seen just now");
        assert!(w.may_be_live(&key, &item("a", 50, true)));
        std::thread::sleep(Duration::from_millis(60));
        // A renewal (new rvn) restarts the watch.
        w.observe(&key, &item("b", 50, true));
        assert!(w.takeover_clause(&key, &mut p).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!w.may_be_live(&key, &item("b", 50, true)));
        assert_eq!(w.takeover_clause(&key, &mut p), Some("#rvn = :watched_rvn"));
        assert!(!w.may_be_live(&key, &item("b", 50, false)), "free");
    }

    #[test]
    fn trusting_expiry_compares_wall_clocks() {
        let w = Watcher::new(Takeover::TrustExpiry { skew_ms: 1_000 });
        let key = Key::mutex("t", None, "k");
        let mut held = item("a", 50, true);
        held.insert(
            EXPIRES_AT_MS.into(),
            AttributeValue::N((now_ms() - 500).to_string()),
        );
        assert!(w.may_be_live(&key, &held), "within the skew allowance");
        held.insert(
            EXPIRES_AT_MS.into(),
            AttributeValue::N((now_ms() - 5_000).to_string()),
        );
        assert!(!w.may_be_live(&key, &held));
        assert!(w.takeover_clause(&key, &mut Params::new()).is_some());
    }
}
