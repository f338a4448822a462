//! Tests of the DynamoDB store beyond the conformance suite: how a process that has never
//! watched a lock takes it over after its holder crashed. Each "process" is a store of its
//! own (a fresh connection, with nothing observed yet). They talk to the server at
//! `DB_LOCKS_TEST_DYNAMODB_ENDPOINT` (default `http://127.0.0.1:8000`) and fail if it is not
//! running.
#![cfg(feature = "dynamodb")]

#[path = "support/mod.rs"]
mod support;

use std::thread;
use std::time::{Duration, Instant};

use db_locks::{AcquireLockOptionsBuilder, LockManager};

use support::{unique, Backend};

const B: Backend = Backend::DynamoDb;

/// A manager over a store of its own (a new process, as far as DynamoDB can tell).
fn process(tenant: &str, skew_bound_ms: Option<u64>) -> LockManager {
    B.store(); // sets the test credentials
    let mut config = B.config(tenant);
    config.dynamodb_trust_expiry_with_skew = skew_bound_ms.map(Duration::from_millis);
    LockManager::connect(&config).expect("the DynamoDB test server is reachable")
}

fn opts(key: &str, lease_ms: u64, wait_ms: u64) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_millis(lease_ms)
        .with_wait_duration_millis(wait_ms)
        .build()
}

/// The README's cron example: a holder dies; a later `run -w 0` (a new process that tries
/// once) must take over once the lease and the clock-skew bound have passed, and not before.
#[test]
fn a_try_once_process_takes_over_an_abandoned_lock() {
    let tenant = unique("t-ddb-abandoned");
    let key = unique("cron");
    let crashed = process(&tenant, Some(500))
        .acquire_lock(&opts(&key, 1_000, 0))
        .unwrap();
    let granted_at = Instant::now();
    // Within the lease, and within lease + bound: busy for a newcomer.
    for at in [Duration::from_millis(200), Duration::from_millis(1_200)] {
        thread::sleep(at.saturating_sub(granted_at.elapsed()));
        let newcomer = process(&tenant, Some(500));
        assert!(
            newcomer
                .try_acquire_lock(&opts(&key, 5_000, 0))
                .unwrap()
                .is_none(),
            "taken over {:?} after the grant",
            granted_at.elapsed()
        );
    }
    thread::sleep(Duration::from_millis(1_800).saturating_sub(granted_at.elapsed()));
    let newcomer = process(&tenant, Some(500));
    let taken = newcomer
        .try_acquire_lock(&opts(&key, 5_000, 0))
        .unwrap()
        .expect("a try-once process takes over after lease + bound");
    assert!(taken.fencing_token > crashed.fencing_token);
    // Ok: released (a lease not held so is `Err(NotHeld)`).
    newcomer.release_lock(&taken.to_release_options()).unwrap();
}

/// With the clock rule off, only watching for a whole lease takes over: a try-once newcomer
/// never does, a waiter does.
#[test]
fn without_the_clock_bound_only_a_watcher_takes_over() {
    let tenant = unique("t-ddb-watch-only");
    let key = unique("watched");
    process(&tenant, None)
        .acquire_lock(&opts(&key, 800, 0))
        .unwrap();
    thread::sleep(Duration::from_millis(1_500));
    assert!(process(&tenant, None)
        .try_acquire_lock(&opts(&key, 5_000, 0))
        .unwrap()
        .is_none());
    let waiter = process(&tenant, None);
    let started = Instant::now();
    let taken = waiter.acquire_lock(&opts(&key, 5_000, 5_000)).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "took over after {:?}, before watching a whole lease",
        started.elapsed()
    );
    waiter.release_lock(&taken.to_release_options()).unwrap();
}
