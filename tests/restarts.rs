//! Servers restarted under held guards, on private instances started on free loopback ports
//! (the shared servers are untouched): PostgreSQL (initdb, pg_ctl; crashed with an immediate
//! stop), and Redis with and without an append-only file (`appendfsync always`; crashed with
//! SIGKILL). While the server is down, a guard's renewals fail; after the restart they
//! succeed, on a durable store, or are refused, on a store that forgot the lease. Either way:
//! no one else holds the lock while the guard does (except, on a store that forgot, until
//! the guard's next renewal, which the fencing token covers), and fencing tokens never go
//! backwards.
//!
//! Slow (they start servers): run by `scripts/test-slow.sh`.
#![cfg(any(feature = "postgres", feature = "redis"))]

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use db_locks::{
    AcquireLockOptionsBuilder, LockManager, LockOptions, LocksConfig, PermitOptions,
    SemaphoreBuilder,
};

use support::unique;

const LEASE: Duration = Duration::from_millis(3_000);
/// How long after the restart a guard may still believe it holds a lease the store forgot:
/// until its next renewal (a third of the lease minus the margin) and that renewal's reply.
const FORGOTTEN_FOR: Duration = Duration::from_millis(900 + 300);

fn opts(key: &str, permit: bool) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_requires_semaphore(permit)
        .with_lease_duration(LEASE)
        .with_wait_duration(Duration::ZERO)
        .build()
}

/// Holds a mutex guard and a permit through a crash and restart of the server, while a
/// referee keeps trying to take both. `durable`: the store keeps leases across the restart.
fn restart_under_guards(config: LocksConfig, crash: impl Fn(), restart: impl Fn(), durable: bool) {
    let m = LockManager::connect(&config).unwrap();
    let referee = LockManager::connect(&config).unwrap();
    let (key, sem) = (unique("restart"), unique("restart-sem"));
    m.create_semaphore(&SemaphoreBuilder::new(&sem, 1).build())
        .unwrap();
    let guard = m
        .try_lock(&key, &LockOptions::new().lease(LEASE))
        .unwrap()
        .expect("free");
    let permit = m
        .try_acquire_permit(&sem, &PermitOptions::new().lease(LEASE))
        .unwrap()
        .expect("free");
    let (guard_token, permit_token) = (guard.fencing_token(), permit.fencing_token());
    let (guard_lost, permit_lost) = (guard.lost_signal(), permit.lost_signal());
    let stop = AtomicBool::new(false);
    let mut grants: Vec<(bool, Instant, i64)> = Vec::new();
    let mut lost: Vec<(bool, Instant)> = Vec::new();
    let mut restarted_at = Instant::now();
    thread::scope(|scope| {
        let referee_thread = scope.spawn(|| {
            let mut got = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for permit in [false, true] {
                    let name = if permit { &sem } else { &key };
                    if let Ok(Some(lock)) = referee.try_acquire_lock(&opts(name, permit)) {
                        got.push((permit, Instant::now(), lock.fencing_token));
                        let _ = referee.release_lock(&lock.to_release_options());
                    }
                }
                thread::sleep(Duration::from_millis(30));
            }
            got
        });
        let started = Instant::now();
        thread::sleep(Duration::from_millis(400));
        crash();
        thread::sleep(Duration::from_millis(600));
        restart();
        restarted_at = Instant::now();
        while started.elapsed() < Duration::from_secs(7) {
            for (permit, signal) in [(false, &guard_lost), (true, &permit_lost)] {
                if !lost.iter().any(|(p, _)| *p == permit)
                    && !matches!(
                        signal.recv_timeout(Duration::from_millis(5)),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout)
                    )
                {
                    lost.push((permit, Instant::now()));
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        grants = referee_thread.join().unwrap();
    });
    if durable {
        assert!(
            lost.is_empty(),
            "a lease was lost across the restart: {lost:?}"
        );
        assert!(
            grants.is_empty(),
            "someone else got a lock the guard held: {grants:?}"
        );
        assert!(guard.is_held() && permit.is_held());
    } else {
        assert_eq!(
            lost.len(),
            2,
            "the store forgot the leases; the guards must notice"
        );
        for (permit, at) in &lost {
            assert!(
                *at <= restarted_at + FORGOTTEN_FOR,
                "permit {permit}: the loss was noticed {:?} after the restart",
                *at - restarted_at
            );
        }
    }
    // Tokens never go backwards, whatever the store forgot.
    let mut last = (guard_token, permit_token);
    for (permit, at, token) in &grants {
        let previous = if *permit { &mut last.1 } else { &mut last.0 };
        assert!(
            token > previous,
            "{} token went from {previous} to {token}",
            if *permit { "permit" } else { "mutex" }
        );
        *previous = *token;
        // Only after the guard lost it (the overlap is what fencing is for).
        let lost_at = lost.iter().find(|(p, _)| p == permit).map(|(_, at)| *at);
        assert!(
            lost_at.is_some() || !durable,
            "granted at {at:?} while the guard held it"
        );
    }
    drop((guard, permit));
}

fn config(url: impl FnOnce(&mut LocksConfig)) -> LocksConfig {
    let mut config = LocksConfig::new(unique("t-restart"));
    config.io_timeout = Duration::from_millis(1_000);
    config.connect_timeout = Duration::from_millis(1_000);
    config.retry_base = Duration::from_millis(5);
    config.retry_max = Duration::from_millis(50);
    url(&mut config);
    config
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "slow: starts a server; run by scripts/test-slow.sh"]
fn postgres_restart_keeps_leases() {
    let pg = support::servers::PrivatePostgres::start();
    let config = config(|c| c.database_url = Some(pg.url()));
    restart_under_guards(config, || pg.crash(), || pg.start_server(), true);
}

#[cfg(feature = "redis")]
#[test]
#[ignore = "slow: starts a server; run by scripts/test-slow.sh"]
fn redis_with_aof_restart_keeps_leases() {
    let redis = support::servers::PrivateRedis::start(true);
    let config = config(|c| {
        c.provider = db_locks::Provider::Redis;
        c.redis_url = redis.url();
    });
    restart_under_guards(config, || redis.crash(), || redis.start_server(), true);
}

#[cfg(feature = "redis")]
#[test]
#[ignore = "slow: starts a server; run by scripts/test-slow.sh"]
fn redis_without_persistence_restart_loses_leases_and_tokens_still_grow() {
    let redis = support::servers::PrivateRedis::start(false);
    let config = config(|c| {
        c.provider = db_locks::Provider::Redis;
        c.redis_url = redis.url();
    });
    restart_under_guards(config, || redis.crash(), || redis.start_server(), false);
}
