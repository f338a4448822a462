//! When a waiter may take over a lease that still looks held: DynamoDB has no clock of its own.
//!
//! Two rules, either of which allows a takeover:
//! * **Watching** (after the AWS DynamoDB lock client): every grant and renewal writes a fresh
//!   record version number (`rvn`). A waiter remembers the `rvn` it saw and when it saw it, on
//!   its own monotonic clock. Once the same `rvn` has stayed for a whole lease (the lease stored
//!   in the record), the holder cannot still hold it: it counts its lease from before it sent
//!   the write that produced that `rvn`, and every renewal changes the `rvn`. The takeover is
//!   then a write conditioned on that very `rvn`. No two clocks are compared; but a process that
//!   has not watched the lock for a lease (a fresh try-once process) cannot use this rule.
//! * **Stored expiry, with a bound on clock skew** (`dynamodb_trust_expiry_with_skew`,
//!   default one minute; `None` turns the rule off): the `expires_at_ms` the holder wrote (its
//!   wall clock plus the lease) is more than the bound in the past on the waiter's wall clock.
//!   Safe as long as the two clocks are within the bound of each other; it is what lets a
//!   try-once caller take over a lock abandoned by a crashed holder, once the lease plus the
//!   bound have passed.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::item::{
    get_bool, get_n, get_s, Item, Key, Params, EXPIRES_AT_MS, LEASE_DURATION_MS, LOCKED, RVN,
};

/// How a waiter decides that a lease that still looks held is over: watching always, and the
/// stored expiry too when a clock-skew bound is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Takeover {
    /// The stored `expires_at_ms` plus this many milliseconds, on the waiter's wall clock.
    pub(super) skew_ms: Option<i64>,
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
    /// its values to `params`; `None` while no rule allows it yet.
    pub(super) fn takeover_clause(&self, key: &Key, params: &mut Params) -> Option<&'static str> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let watched = {
            let seen = self.seen.lock();
            seen.get(key)
                .filter(|s| s.lease_is_over())
                .map(|s| s.rvn.clone())
        };
        if let Some(rvn) = &watched {
            params.set(":watched_rvn", AttributeValue::S(rvn.clone()));
        }
        if let Some(skew_ms) = self.mode.skew_ms {
            params.set(
                ":expired_before",
                AttributeValue::N(now_ms().saturating_sub(skew_ms).to_string()),
            );
        }
        // Watching: the record still carries the rvn seen a whole lease ago, never renewed
        // since. Expiry: the holder's own clock put the end of its lease more than the bound ago.
        match (watched.is_some(), self.mode.skew_ms.is_some()) {
            (true, true) => Some("(#rvn = :watched_rvn OR #expires_at_ms < :expired_before)"),
            (true, false) => Some("#rvn = :watched_rvn"),
            (false, true) => Some("#expires_at_ms < :expired_before"),
            (false, false) => None,
        }
    }

    /// Whether the holder of `item` may still hold it, for decisions (deleting a mutex or a
    /// semaphore, freeing a retired slot). Notes the observation first.
    pub(super) fn may_be_live(&self, key: &Key, item: &Item) -> bool {
        if !get_bool(item, LOCKED) {
            return false;
        }
        self.observe(key, item);
        let watched_over = self
            .seen
            .lock()
            .get(key)
            .is_some_and(|s| Some(s.rvn.as_str()) == get_s(item, RVN) && s.lease_is_over());
        let expired = self.mode.skew_ms.is_some_and(|skew_ms| {
            get_n(item, EXPIRES_AT_MS).unwrap_or(i64::MAX) < now_ms().saturating_sub(skew_ms)
        });
        !(watched_over || expired)
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
        let w = Watcher::new(Takeover { skew_ms: None });
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
        let w = Watcher::new(Takeover {
            skew_ms: Some(1_000),
        });
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
        assert_eq!(
            w.takeover_clause(&key, &mut Params::new()),
            Some("#expires_at_ms < :expired_before"),
            "a fresh process, which has watched nothing, may take over by expiry"
        );
    }
}
