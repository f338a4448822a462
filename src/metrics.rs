//! Prometheus metrics of a [`crate::LockManager`].

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The manager's collectors. Cheap to clone (prometheus collectors are shared handles).
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// `db_locks_operations_total{store, op, outcome}`.
    operations: IntCounterVec,
    /// `db_locks_acquire_wait_seconds{store, kind}`: from the first attempt to the grant.
    acquire_wait: HistogramVec,
    /// `db_locks_guards_held`: guards alive in this process.
    guards_held: IntGauge,
    store: &'static str,
}

impl Metrics {
    /// Creates the collectors and registers them in `registry`. A registry that already has
    /// them (a second manager on the same registry) keeps counting through the first set.
    pub(crate) fn new(store: &'static str, registry: &Registry) -> Metrics {
        let operations = IntCounterVec::new(
            Opts::new(
                "db_locks_operations_total",
                "Lock store operations by outcome",
            ),
            &["store", "op", "outcome"],
        )
        .expect("valid metric definition");
        let acquire_wait = HistogramVec::new(
            HistogramOpts::new(
                "db_locks_acquire_wait_seconds",
                "Time from the first acquire attempt to the grant",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
            ]),
            &["store", "kind"],
        )
        .expect("valid metric definition");
        let guards_held = IntGauge::new("db_locks_guards_held", "Guards alive in this process")
            .expect("valid metric definition");
        let metrics = Metrics {
            operations,
            acquire_wait,
            guards_held,
            store,
        };
        for collector in [
            Box::new(metrics.operations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.acquire_wait.clone()),
            Box::new(metrics.guards_held.clone()),
        ] {
            if let Err(e) = registry.register(collector) {
                log::debug!("db-locks metrics not registered again: {e}");
            }
        }
        metrics
    }

    pub(crate) fn count(&self, op: &str, outcome: &str) {
        self.operations
            .with_label_values(&[self.store, op, outcome])
            .inc();
    }

    pub(crate) fn observe_wait(&self, kind: &str, seconds: f64) {
        self.acquire_wait
            .with_label_values(&[self.store, kind])
            .observe(seconds);
    }

    pub(crate) fn guard_started(&self) {
        self.guards_held.inc();
    }

    pub(crate) fn guard_ended(&self) {
        self.guards_held.dec();
    }
}
