//! What a manager, its guards and their heartbeat threads share: the store, the settings,
//! the metrics and the release hints of the manager's waiters.

use std::sync::{Arc, Once};
use std::time::Duration;

use prometheus::Registry;

use crate::config::LocksConfig;
use crate::metrics::Metrics;
use crate::store::LockStore;
use crate::wakeups::Wakeups;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn LockStore>,
    pub(crate) config: LocksConfig,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
    pub(crate) wakeups: Arc<Wakeups>,
    /// The store's release notices are wired to `wakeups` (once, by the first waiter).
    pub(crate) watching: Once,
}

impl Shared {
    /// Wires the store's release notices of other processes to this manager's waiters, once.
    pub(crate) fn watch_releases(&self) {
        self.watching.call_once(|| {
            let wakeups = self.wakeups.clone();
            self.store.watch_releases(
                &self.config.tenant_id,
                Arc::new(move |tenant, key| wakeups.released(tenant, key)),
            );
        });
    }

    /// A lease of `key` (a mutex, or a permit of semaphore `semaphore`) was released (or
    /// deleted): wakes one of this manager's waiters for it.
    pub(crate) fn released(&self, tenant: &str, key: &str, semaphore: Option<&str>) {
        let key = semaphore.unwrap_or(key);
        self.wakeups.ended(tenant, key);
        self.wakeups.released(tenant, key);
    }

    /// A guard reports its lease lost this long before it ends by the local clock.
    pub(crate) fn safety_margin(&self, lease: Duration) -> Duration {
        self.config
            .lease_safety_margin
            .unwrap_or_else(|| (lease / 10).min(Duration::from_secs(1)))
    }
}
