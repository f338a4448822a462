//! Redis release notices: every release script also `PUBLISH`es `tenant \x1f key \x1f origin`
//! (`origin` names the store instance, whose own notices are skipped) on the
//! channel `P:released`, and one subscriber connection per store, opened by the first waiter,
//! hands the notices to the waiters.
//!
//! Notices are hints (`crate::wakeups`): one lost while the subscriber reconnects costs a
//! waiter at most its poll interval. The subscriber is one connection besides the pool, on a
//! thread of its own that ends when the store is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use super::topology::Topology;
use crate::store::{ReleaseSink, ReleaseSinks};

/// How often the subscriber thread looks at whether its store is gone.
const POLL: Duration = Duration::from_secs(1);

/// The subscriber of one store.
pub(crate) struct Listener {
    topology: Arc<Topology>,
    channel: String,
    sinks: ReleaseSinks,
    started: Once,
    stop: Arc<AtomicBool>,
}

impl Listener {
    pub(crate) fn new(topology: Arc<Topology>, channel: &str) -> Self {
        Listener {
            topology,
            channel: channel.to_owned(),
            sinks: ReleaseSinks::new(),
            started: Once::new(),
            stop: Arc::default(),
        }
    }

    /// The notice of a release of `key` by this store.
    pub(crate) fn payload(&self, tenant: &str, key: &str) -> String {
        self.sinks.payload(tenant, key)
    }

    /// Adds `sink`, and starts the subscriber thread if it is not running yet.
    pub(crate) fn watch(&self, sink: ReleaseSink) -> bool {
        self.sinks.add(sink);
        self.started.call_once(|| {
            let (topology, channel) = (self.topology.clone(), self.channel.clone());
            let (sinks, stop) = (self.sinks.clone(), self.stop.clone());
            let spawned = std::thread::Builder::new()
                .name("db-locks-redis-subscribe".into())
                .spawn(move || subscribe(&topology, &channel, &sinks, &stop));
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

/// Connects, subscribes and delivers until `stop`; reconnects after a failure.
fn subscribe(topology: &Topology, channel: &str, sinks: &ReleaseSinks, stop: &AtomicBool) {
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match topology.subscriber() {
            Ok(conn) => conn,
            Err(e) => {
                if !warned {
                    log::warn!("db-locks: Redis subscriber not connected, waiters poll: {e}");
                    warned = true;
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        let mut pubsub = conn.as_pubsub();
        if pubsub.subscribe(channel).is_err() || pubsub.set_read_timeout(Some(POLL)).is_err() {
            std::thread::sleep(POLL);
            continue;
        }
        while !stop.load(Ordering::SeqCst) {
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
