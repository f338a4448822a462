//! Prometheus metrics of a [`crate::LockManager`].

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The collectors registered in one registry, shared by every manager that uses it.
#[derive(Debug)]
struct Collectors {
    /// `db_locks_operations_total{store, op, outcome}`.
    operations: IntCounterVec,
    /// `db_locks_acquire_wait_seconds{store, kind}`: from the first attempt to the grant.
    acquire_wait: HistogramVec,
    /// `db_locks_guards_held`: guards alive in this process.
    guards_held: IntGauge,
}

/// A manager's handle on its registry's collectors. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    collectors: Arc<Collectors>,
    store: &'static str,
}

/// The registries collectors were registered in, with those collectors while a manager uses
/// them. A prometheus `Registry` has no identity of its own to compare by; `same_registry`
/// tells two apart.
static REGISTERED: Mutex<Vec<(Registry, Weak<Collectors>)>> = Mutex::new(Vec::new());

impl Metrics {
    /// The collectors of `registry`: those another manager registered there, or new ones,
    /// registered now. So every manager on one registry counts into the series it exports
    /// (a second set, unregistered, would count where nobody looks).
    pub(crate) fn new(store: &'static str, registry: &Registry) -> Metrics {
        let mut registered = REGISTERED.lock();
        registered.retain(|(_, collectors)| collectors.strong_count() > 0);
        let known = registered
            .iter()
            .filter(|(other, _)| same_registry(other, registry))
            .find_map(|(_, collectors)| collectors.upgrade());
        let collectors = match known {
            Some(collectors) => collectors,
            None => {
                let collectors = Arc::new(Collectors::new());
                collectors.register(registry);
                registered.push((registry.clone(), Arc::downgrade(&collectors)));
                collectors
            }
        };
        Metrics { collectors, store }
    }

    pub(crate) fn count(&self, op: &str, outcome: &str) {
        self.collectors
            .operations
            .with_label_values(&[self.store, op, outcome])
            .inc();
    }

    pub(crate) fn observe_wait(&self, kind: &str, seconds: f64) {
        self.collectors
            .acquire_wait
            .with_label_values(&[self.store, kind])
            .observe(seconds);
    }

    pub(crate) fn guard_started(&self) {
        self.collectors.guards_held.inc();
    }

    pub(crate) fn guard_ended(&self) {
        self.collectors.guards_held.dec();
    }
}

impl Collectors {
    fn new() -> Collectors {
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
        Collectors {
            operations,
            acquire_wait,
            guards_held,
        }
    }

    /// Registers the collectors in `registry`, replacing any left there by managers that are
    /// gone (their counts restart, which counters' readers expect of a restart).
    fn register(&self, registry: &Registry) {
        fn replace(registry: &Registry, collector: impl Collector + Clone + 'static) {
            if registry.register(Box::new(collector.clone())).is_err() {
                let _ = registry.unregister(Box::new(collector.clone()));
                if let Err(e) = registry.register(Box::new(collector)) {
                    log::warn!("db-locks: metrics not registered: {e}");
                }
            }
        }
        replace(registry, self.operations.clone());
        replace(registry, self.acquire_wait.clone());
        replace(registry, self.guards_held.clone());
    }
}

/// Whether `a` and `b` are the same registry (clones share one): a probe registered in `b`
/// can be unregistered from `a` only then.
fn same_registry(a: &Registry, b: &Registry) -> bool {
    let name = format!("db_locks_registry_probe_{}", uuid::Uuid::new_v4().simple());
    let Ok(probe) = IntGauge::new(name, "probe") else {
        return false;
    };
    if b.register(Box::new(probe.clone())).is_err() {
        return false;
    }
    let same = a.unregister(Box::new(probe.clone())).is_ok();
    if !same {
        let _ = b.unregister(Box::new(probe));
    }
    same
}
