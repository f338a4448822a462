//! Redis release notices: every release script also `PUBLISH`es `tenant \x1f key \x1f origin`
//! (`origin` names the store instance, whose own notices are skipped) on its tenant's channel
//! `P:{T}:released`, and one subscriber connection per store, opened by the first waiter,
//! subscribes to the channels of the tenants whose managers wait and hands the notices to
//! the waiters. A channel per tenant keeps tenants' key names apart, down to the ACL rule (a
//! user of one tenant is granted that tenant's channel only).
//!
//! Notices are hints (`crate::wakeups`): one lost while the subscriber reconnects, or sent
//! before a new tenant's channel is subscribed (within [`POLL`]), costs a waiter at most its
//! poll interval. The subscriber is one connection besides the pool, on a thread of its own
//! that ends when the store is dropped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use parking_lot::Mutex;

use super::topology::Topology;
use crate::store::{ReleaseSink, ReleaseSinks};

/// How often the subscriber thread looks at whether its store is gone or a channel was
/// added.
const POLL: Duration = Duration::from_millis(50);

/// The subscriber of one store.
pub(crate) struct Listener {
    topology: Arc<Topology>,
    /// The channels to subscribe to (one per tenant that waits).
    channels: Arc<Mutex<BTreeSet<String>>>,
    sinks: ReleaseSinks,
    started: Once,
    stop: Arc<AtomicBool>,
}

impl Listener {
    pub(crate) fn new(topology: Arc<Topology>) -> Self {
        Listener {
            topology,
            channels: Arc::default(),
            sinks: ReleaseSinks::new(),
            started: Once::new(),
            stop: Arc::default(),
        }
    }

    /// The notice of a release of `key` by this store.
    pub(crate) fn payload(&self, tenant: &str, key: &str) -> String {
        self.sinks.payload(tenant, key)
    }

    /// Adds `sink` and `channel`, and starts the subscriber thread if it is not running yet.
    pub(crate) fn watch(&self, channel: &str, sink: ReleaseSink) -> bool {
        self.sinks.add(sink);
        self.channels.lock().insert(channel.to_owned());
        self.started.call_once(|| {
            let (topology, channels) = (self.topology.clone(), self.channels.clone());
            let (sinks, stop) = (self.sinks.clone(), self.stop.clone());
            let spawned = std::thread::Builder::new()
                .name("db-locks-redis-subscribe".into())
                .spawn(move || subscribe(&topology, &channels, &sinks, &stop));
            if let Err(e) = spawned {
                log::warn!("db-locks: cannot start the Redis subscriber, waiters poll: {e}");
            }
        });
        true
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Connects, subscribes to every wanted channel (and to each one added later) and delivers
/// until `stop`; reconnects after a failure.
fn subscribe(
    topology: &Topology,
    channels: &Mutex<BTreeSet<String>>,
    sinks: &ReleaseSinks,
    stop: &AtomicBool,
) {
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match topology.subscriber() {
            Ok(conn) => conn,
            Err(e) => {
                if !warned {
                    log::warn!("db-locks: Redis subscriber not connected, waiters poll: {e}");
                    warned = true;
                }
                std::thread::sleep(POLL * 20);
                continue;
            }
        };
        let mut pubsub = conn.as_pubsub();
        if pubsub.set_read_timeout(Some(POLL)).is_err() {
            std::thread::sleep(POLL * 20);
            continue;
        }
        let mut subscribed: BTreeSet<String> = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) {
            let wanted: Vec<String> = channels.lock().difference(&subscribed).cloned().collect();
            if !wanted.is_empty() {
                if let Err(e) = pubsub.subscribe(&wanted) {
                    // NOPERM for a channel the ACL user lacks: its waiters poll.
                    log::warn!("db-locks: cannot subscribe to {wanted:?}, waiters poll: {e}");
                    if !e.is_io_error() && !e.is_timeout() {
                        subscribed.extend(wanted);
                        continue;
                    }
                    break;
                }
                subscribed.extend(wanted);
            }
            match pubsub.get_message() {
                Ok(message) => {
                    if let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) {
                        sinks.deliver(payload);
                    }
                }
                Err(e) if e.is_timeout() => {}
                // Reconnect.
                Err(_) => break,
            }
        }
    }
}
