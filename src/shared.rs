//! What a manager, its guards and their heartbeat threads share: the store, the settings and
//! the metrics.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use crate::config::LocksConfig;
use crate::metrics::Metrics;
use crate::store::LockStore;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn LockStore>,
    pub(crate) config: LocksConfig,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
}

impl Shared {
    /// A guard reports its lease lost this long before it ends by the local clock.
    pub(crate) fn safety_margin(&self, lease: Duration) -> Duration {
        self.config
            .lease_safety_margin
            .unwrap_or_else(|| (lease / 10).min(Duration::from_secs(1)))
    }
}
