//! The manager's prometheus metrics count what happened (on SQLite; the counting is the
//! same code for every store).
#![cfg(feature = "sqlite")]

use db_locks::prometheus::Registry;
use std::time::Duration;

use db_locks::{LockManager, LockOptions, LocksConfig};

fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

#[test]
fn operations_and_guards_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocksConfig::new("metrics")
        .with_database_url(dir.path().join("m.sqlite").display().to_string());
    let registry = Registry::new();
    let manager = LockManager::with_registry(&config, &registry).unwrap();
    let opts = LockOptions::new().lease(Duration::from_secs(10));

    let guard = manager.try_lock("metered", &opts).unwrap().expect("free");
    assert_eq!(counter(&registry, "db_locks_guards_held", &[]), 1.0);
    assert!(manager.try_lock("metered", &opts).unwrap().is_none());
    guard.release().unwrap();
    assert_eq!(counter(&registry, "db_locks_guards_held", &[]), 0.0);

    let granted = [
        ("store", "sqlite"),
        ("op", "acquire_mutex"),
        ("outcome", "granted"),
    ];
    let busy = [
        ("store", "sqlite"),
        ("op", "acquire_mutex"),
        ("outcome", "busy"),
    ];
    let released = [("store", "sqlite"), ("op", "release"), ("outcome", "ok")];
    assert_eq!(
        counter(&registry, "db_locks_operations_total", &granted),
        1.0
    );
    assert_eq!(counter(&registry, "db_locks_operations_total", &busy), 1.0);
    assert_eq!(
        counter(&registry, "db_locks_operations_total", &released),
        1.0
    );
    let waits = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "db_locks_acquire_wait_seconds")
        .expect("wait histogram registered");
    assert_eq!(waits.get_metric()[0].get_histogram().get_sample_count(), 1);
}

/// Two managers on one registry count into the same series: one cycle each shows 2 grants and
/// 2 releases, not 1 (the second manager's counts used to go to collectors nobody exported).
#[test]
fn managers_on_one_registry_share_their_counters() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocksConfig::new("metrics-shared")
        .with_database_url(dir.path().join("m.sqlite").display().to_string());
    let registry = Registry::new();
    let first = LockManager::with_registry(&config, &registry).unwrap();
    let second = LockManager::with_registry(&config, &registry.clone()).unwrap();
    let elsewhere = LockManager::with_registry(&config, &Registry::new()).unwrap();
    for (i, manager) in [&first, &second, &elsewhere].into_iter().enumerate() {
        let opts = LockOptions::new().lease(Duration::from_secs(10));
        manager
            .lock(&format!("shared-{i}"), &opts)
            .unwrap()
            .release()
            .unwrap();
    }
    let granted = [
        ("store", "sqlite"),
        ("op", "acquire_mutex"),
        ("outcome", "granted"),
    ];
    let released = [("store", "sqlite"), ("op", "release"), ("outcome", "ok")];
    assert_eq!(
        counter(&registry, "db_locks_operations_total", &granted),
        2.0
    );
    assert_eq!(
        counter(&registry, "db_locks_operations_total", &released),
        2.0
    );
    assert_eq!(
        counter(elsewhere.registry(), "db_locks_operations_total", &granted),
        1.0
    );
    // No probe is left behind in either registry.
    assert!(registry
        .gather()
        .iter()
        .all(|f| !f.name().contains("probe")));
}
