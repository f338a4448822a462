//! Tests of the Redis store beyond the conformance suite: millisecond leases on the server's
//! clock, lost renewal replies, TTLs on every lock key, the key layout, script reloading,
//! reclaiming expired permits, and failing fast (and without leaking a password) when the
//! server cannot be reached. They talk to the Redis at `DB_LOCKS_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`) and fail if it is not running.
#![cfg(feature = "redis")]

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use db_locks::store::{
    LockStore, MutexRequest, PermitRequest, ReleaseRequest, RenewRequest, Target,
};
use db_locks::{
    AcquireLockOptionsBuilder, LockError, LockManager, LockOptions, LocksConfig, PermitOptions,
    SemaphoreBuilder,
};

use support::{unique, Backend, FlakyStore};

const B: Backend = Backend::Redis;

fn version() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn acquire<'a>(
    tenant: &'a str,
    key: &'a str,
    version: &'a str,
    lease: Duration,
) -> MutexRequest<'a> {
    MutexRequest {
        tenant_id: tenant,
        key,
        version,
        lease,
        data: None,
        delete_on_release: false,
    }
}

/// A permit request; `lease: None` takes the semaphore's.
fn permit<'a>(
    tenant: &'a str,
    semaphore: &'a str,
    version: &'a str,
    lease: Option<Duration>,
) -> PermitRequest<'a> {
    PermitRequest {
        tenant_id: tenant,
        semaphore,
        version,
        lease,
        data: None,
        retry: false,
    }
}

/// A raw connection to the test server, for looking at what the store wrote.
fn raw() -> redis::Connection {
    let url = B.config("raw").redis_url;
    redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("the Redis test server is not reachable (start it with scripts/services.sh)")
}

/// A store of its own with key prefix `prefix`.
fn store_with_prefix(prefix: &str) -> Arc<dyn LockStore> {
    let mut config = B.config("prefixed");
    config.redis_key_prefix = prefix.to_owned();
    db_locks::store::connect(&config).unwrap()
}

#[test]
fn a_release_wakes_a_waiter_of_another_process() {
    support::a_release_wakes_a_waiter_of_another_process(B);
}

#[test]
fn sub_second_lease_expires_on_time() {
    let store = B.store();
    let (tenant, key) = ("t-redis-subsecond", unique("subsecond"));
    let lease = Duration::from_millis(250);
    let sent = Instant::now();
    let first = store
        .acquire_mutex(&acquire(tenant, &key, &version(), lease))
        .unwrap()
        .expect("free");
    // expires_at comes from the server's clock: on this machine it is ~250 ms ahead.
    let ahead = first.expires_at - chrono::Utc::now();
    assert!(
        ahead <= chrono::Duration::milliseconds(250) && ahead > chrono::Duration::milliseconds(50),
        "expires_at is {ahead} ahead"
    );
    // Busy until the lease ends, free right after: poll every 5 ms.
    let other = version();
    let granted = loop {
        if let Some(lock) = store
            .acquire_mutex(&acquire(
                tenant,
                &key,
                &other,
                Duration::from_millis(10_000),
            ))
            .unwrap()
        {
            break lock;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the lease never ended"
        );
        thread::sleep(Duration::from_millis(5));
    };
    let took = sent.elapsed();
    assert!(
        took >= lease,
        "granted again after {took:?}, before the lease ended"
    );
    assert!(
        took < lease + Duration::from_millis(300),
        "granted again only after {took:?}"
    );
    assert!(granted.fencing_token > first.fencing_token);
}

#[test]
fn sub_second_permit_expires_on_time() {
    let m = B.manager("t-redis-subsecond-permit");
    let store = B.store();
    let key = unique("subsecond-permit");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    let tenant = m.tenant_id().to_owned();
    let sent = Instant::now();
    let crashed = store
        .acquire_permit(&permit(
            &tenant,
            &key,
            &version(),
            Some(Duration::from_millis(300)),
        ))
        .unwrap()
        .expect("free");
    assert_eq!(crashed.lease_duration, Duration::from_millis(300));
    assert_eq!(m.get_semaphore(&key).unwrap().unwrap().busy_count, 1);
    let granted = loop {
        if let Some(p) = store
            .acquire_permit(&permit(
                &tenant,
                &key,
                &version(),
                Some(Duration::from_millis(10_000)),
            ))
            .unwrap()
        {
            break p;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the permit never expired"
        );
        thread::sleep(Duration::from_millis(5));
    };
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "reclaimed after {took:?}"
    );
    assert!(
        took < Duration::from_millis(600),
        "reclaimed only after {took:?}"
    );
    assert_eq!(
        granted.mutex_key, crashed.mutex_key,
        "the one slot, reclaimed"
    );
    assert!(granted.fencing_token > crashed.fencing_token);
    // The crashed holder can neither renew nor release the reclaimed slot.
    let index = db_locks::validate_lock_key(&crashed.mutex_key, Some(&key))
        .unwrap()
        .expect("a slot key");
    let slot = Target::Slot {
        semaphore: &key,
        index,
    };
    let renew = RenewRequest {
        tenant_id: &tenant,
        target: slot,
        version: &crashed.version,
        new_version: &version(),
        lease: Some(Duration::from_millis(1_000)),
        data: None,
    };
    assert!(store.renew(&renew).unwrap().is_none());
    let release = ReleaseRequest {
        tenant_id: &tenant,
        target: slot,
        version: &crashed.version,
        in_doubt_version: None,
        data: None,
        delete: false,
    };
    assert!(!store.release(&release).unwrap());
    assert_eq!(m.get_semaphore(&key).unwrap().unwrap().busy_count, 1);
}

#[test]
fn lost_renewal_reply_is_retried_idempotently() {
    let store = B.store();
    let (tenant, key) = ("t-redis-lost-reply", unique("lost-reply"));
    let lock = store
        .acquire_mutex(&acquire(
            tenant,
            &key,
            &version(),
            Duration::from_millis(5_000),
        ))
        .unwrap()
        .unwrap();
    let new_version = version();
    let renew = RenewRequest {
        tenant_id: tenant,
        target: Target::Mutex(&key),
        version: &lock.version,
        new_version: &new_version,
        lease: Some(Duration::from_millis(5_000)),
        data: None,
    };
    // The first renewal succeeds on the server; say its reply was lost. The retry of the
    // same request succeeds too, with the same result.
    let first = store.renew(&renew).unwrap().expect("renewed");
    let retry = store
        .renew(&renew)
        .unwrap()
        .expect("the retry must succeed");
    assert_eq!(retry.version, new_version);
    assert_eq!(retry.fencing_token, first.fencing_token);
    assert_eq!(retry.fencing_token, lock.fencing_token);
    assert!(retry.expires_at >= first.expires_at);
    assert!(store
        .acquire_mutex(&acquire(
            tenant,
            &key,
            &version(),
            Duration::from_millis(5_000)
        ))
        .unwrap()
        .is_none());
}

#[test]
fn lost_renewal_replies_do_not_lose_a_guards_lease() {
    let flaky = FlakyStore::new(B.store());
    let m = B.manager_over("t-redis-lost-replies", flaky.clone());
    let key = unique("lost-replies");
    let guard = m
        .lock(&key, &LockOptions::new().lease(Duration::from_millis(600)))
        .unwrap();
    let token = guard.fencing_token();
    flaky.lose_renewal_replies.store(3, Ordering::SeqCst);
    let other = B.manager("t-redis-lost-replies");
    let until = Instant::now() + Duration::from_millis(1_800);
    while Instant::now() < until {
        assert!(
            guard.is_held(),
            "a renewal whose reply was lost ended the lease"
        );
        assert!(
            other.try_lock(&key, &LockOptions::new()).unwrap().is_none(),
            "taken while the holder's renewals succeeded"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(flaky.lose_renewal_replies.load(Ordering::SeqCst), 0);
    guard.ensure_held().unwrap();
    assert_eq!(guard.fencing_token(), token);
    let stored = m.get_mutex(&key).unwrap().unwrap();
    assert_eq!(stored.version, guard.record().version);
    guard.release().unwrap();
}

#[test]
fn every_lock_key_has_a_ttl_and_every_key_names_its_tenant() {
    let prefix = unique("dbl-test");
    let store = store_with_prefix(&prefix);
    let tenant = "tenant:{odd}";
    let key = "key:with{braces}";
    let mut conn = raw();
    let lock = store
        .acquire_mutex(&acquire(
            tenant,
            key,
            &version(),
            Duration::from_millis(1_500),
        ))
        .unwrap()
        .unwrap();
    let lock_key = format!("{prefix}:{{tenant%3A%7Bodd%7D}}:m:key%3Awith%7Bbraces%7D:lock");
    let pttl: i64 = redis::cmd("PTTL").arg(&lock_key).query(&mut conn).unwrap();
    assert!(pttl > 0 && pttl <= 1_500, "PTTL {pttl}");
    let new_version = version();
    store
        .renew(&RenewRequest {
            tenant_id: tenant,
            target: Target::Mutex(key),
            version: &lock.version,
            new_version: &new_version,
            lease: Some(Duration::from_millis(800)),
            data: None,
        })
        .unwrap()
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(&lock_key).query(&mut conn).unwrap();
    assert!(pttl > 0 && pttl <= 800, "PTTL after renewal {pttl}");
    let stored: String = redis::cmd("GET").arg(&lock_key).query(&mut conn).unwrap();
    assert_eq!(stored, new_version);

    let sem = "pool:1";
    let mut semaphore = SemaphoreBuilder::new(sem, 2)
        .with_lease_duration_millis(1_000)
        .build();
    semaphore.tenant_id = tenant.into();
    semaphore.version = version();
    store.put_semaphore(&semaphore).unwrap();
    store
        .acquire_permit(&permit(tenant, sem, &version(), None))
        .unwrap()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    assert!(keys.len() >= 8, "{keys:?}");
    for k in &keys {
        assert!(
            k.starts_with(&format!("{prefix}:{{tenant%3A%7Bodd%7D}}:")),
            "{k} is not in the tenant's hash tag"
        );
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut conn).unwrap();
        if k.ends_with(":lock") {
            assert!(ttl > 0, "{k} has no TTL");
        } else {
            assert_eq!(ttl, -1, "{k} must not expire");
        }
    }
    // Clean up the keys of this prefix (the fencing counters are meant to stay otherwise).
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

#[test]
fn scripts_are_reloaded_after_a_script_flush() {
    let store = B.store();
    let (tenant, key) = ("t-redis-noscript", unique("noscript"));
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    let lock = store
        .acquire_mutex(&acquire(
            tenant,
            &key,
            &version(),
            Duration::from_millis(5_000),
        ))
        .unwrap()
        .expect("granted after reloading the script");
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw()).unwrap();
    assert!(store
        .release(&ReleaseRequest {
            tenant_id: tenant,
            target: Target::Mutex(&key),
            version: &lock.version,
            in_doubt_version: None,
            data: None,
            delete: true,
        })
        .unwrap());
}

#[test]
fn shrinking_retires_held_slots_when_released() {
    let m = B.manager("t-redis-retire");
    let key = unique("retire");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 3).build())
        .unwrap();
    let permits: Vec<_> = (0..3)
        .map(|_| {
            m.acquire_permit(&key, &PermitOptions::new().lease(Duration::from_secs(10)))
                .unwrap()
        })
        .collect();
    let first_tokens: Vec<i64> = permits.iter().map(|p| p.fencing_token()).collect();
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    // All three slots are listed while held; the retired ones go once released.
    assert_eq!(m.get_semaphore_mutexes(&key).unwrap().len(), 3);
    drop(permits);
    let slots = m.get_semaphore_mutexes(&key).unwrap();
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert!(!slots[0].locked);
    assert_eq!(slots[0].mutex_key, format!("{key}_0"));
    // Growing again offers the retired indexes, with fencing tokens that kept growing.
    m.create_semaphore(&SemaphoreBuilder::new(&key, 3).build())
        .unwrap();
    let slots = m.get_semaphore_mutexes(&key).unwrap();
    assert_eq!(slots.len(), 3);
    let mut shown: Vec<i64> = slots.iter().map(|s| s.fencing_token).collect();
    let mut expected = first_tokens.clone();
    shown.sort_unstable();
    expected.sort_unstable();
    assert_eq!(shown, expected, "each slot shows its last token: {slots:?}");
    let again: Vec<_> = (0..3)
        .map(|_| m.acquire_permit(&key, &PermitOptions::new()).unwrap())
        .collect();
    let highest = first_tokens.iter().max().unwrap();
    assert!(again.iter().all(|p| p.fencing_token() > *highest));
}

#[test]
fn unreachable_server_fails_fast_without_leaking_the_password() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config =
        LocksConfig::new("t").with_redis_url(format!("redis://:hunter2secret@127.0.0.1:{port}"));
    config.provider = db_locks::Provider::Redis;
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = LockManager::connect(&config).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, LockError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2secret"), "{err:?}");
}

#[test]
fn a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _accepting = thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let mut config = LocksConfig::new("t").with_redis_url(format!("redis://127.0.0.1:{port}"));
    config.provider = db_locks::Provider::Redis;
    config.connect_timeout = Duration::from_millis(400);
    config.io_timeout = Duration::from_millis(400);
    let started = Instant::now();
    let err = db_locks::store::connect(&config).unwrap_err();
    assert!(matches!(err, LockError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// Fencing tokens never go backwards when the counters are lost (a restart without
/// persistence, a failover to a replica that missed them, a FLUSHALL): a token is at least the
/// server's clock in microseconds. The counters of this test's keys are deleted to stand in
/// for the loss, so the shared server is not flushed under the other tests.
#[test]
fn fencing_tokens_survive_the_loss_of_their_counters() {
    let tenant = unique("t-redis-fence");
    let m = B.manager(&tenant);
    let (key, sem) = (unique("fence"), unique("fence-sem"));
    m.create_semaphore(&SemaphoreBuilder::new(&sem, 1).build())
        .unwrap();
    let opts = |key: &str, permit: bool| {
        AcquireLockOptionsBuilder::new(key)
            .with_requires_semaphore(permit)
            .with_lease_duration_secs(10)
            .build()
    };
    let mut last = (0, 0);
    for _ in 0..3 {
        let lock = m.acquire_lock(&opts(&key, false)).unwrap();
        let permit = m.acquire_lock(&opts(&sem, true)).unwrap();
        assert!(lock.fencing_token > last.0 && permit.fencing_token > last.1);
        last = (lock.fencing_token, permit.fencing_token);
        m.release_lock(&lock.to_release_options()).unwrap();
        m.release_lock(&permit.to_release_options()).unwrap();
    }
    let mut raw = raw();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("db-locks:{{{tenant}}}:m:{key}:fence"))
        .arg(format!("db-locks:{{{tenant}}}:s:{sem}:fence"))
        .query(&mut raw)
        .unwrap();
    assert_eq!(deleted, 2, "the counters are where the key layout says");
    let lock = m.acquire_lock(&opts(&key, false)).unwrap();
    let permit = m.acquire_lock(&opts(&sem, true)).unwrap();
    assert!(
        lock.fencing_token > last.0,
        "mutex token went back from {} to {}",
        last.0,
        lock.fencing_token
    );
    assert!(
        permit.fencing_token > last.1,
        "permit token went back from {} to {}",
        last.1,
        permit.fencing_token
    );
}
