//! The cases of the conformance suite, each a function of the backend under test.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use db_locks::{
    AcquireLockOptions, AcquireLockOptionsBuilder, ErrorKind, LockError, PermitOptions,
    ReleaseLockOptionsBuilder, SemaphoreBuilder, SendHeartbeatOptionsBuilder,
};

use crate::support::{lease, ms, permit_lease, unique, Backend, FlakyStore};

fn opts(key: &str, lease_ms: u64, wait_ms: u64) -> AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_millis(lease_ms)
        .with_wait_duration_millis(wait_ms)
        .build()
}

fn permit_opts(key: &str, lease_ms: u64, wait_ms: u64) -> AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_requires_semaphore(true)
        .with_lease_duration_millis(lease_ms)
        .with_wait_duration_millis(wait_ms)
        .build()
}

/// Counts how many threads are inside a critical section at once, and the most ever seen.
#[derive(Default)]
struct Occupancy {
    inside: AtomicUsize,
    most: AtomicUsize,
}

impl Occupancy {
    fn enter(&self) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

pub fn exclusion_across_threads(b: Backend) {
    let key = unique("exclusion");
    let occupancy = Arc::new(Occupancy::default());
    // A read-sleep-write counter: any overlap loses an update.
    let counter = Arc::new(AtomicI64::new(0));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (key, occupancy, counter) = (key.clone(), occupancy.clone(), counter.clone());
            thread::spawn(move || {
                // Separate managers: as separate as threads get without separate processes.
                let manager = b.manager("t-exclusion");
                for _ in 0..8 {
                    let guard = manager
                        .try_lock_for(&key, ms(30_000), &lease(5_000))
                        .unwrap()
                        .expect("granted");
                    occupancy.enter();
                    let seen = counter.load(Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(1 + i % 2));
                    counter.store(seen + 1, Ordering::SeqCst);
                    occupancy.leave();
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(occupancy.most(), 1, "two holders at once");
    assert_eq!(counter.load(Ordering::SeqCst), 48, "lost updates");
}

/// A manager whose poll interval is far longer than the test: only the release hint can get
/// its waiter the lock in time.
fn sleepy_manager(b: Backend, tenant: &str) -> db_locks::LockManager {
    b.manager_with(tenant, b.store(), |c| {
        c.retry_base = Duration::from_secs(60);
        c.retry_max = Duration::from_secs(60);
    })
}

/// Releasing (through a guard, and through the record API) wakes a thread of the same
/// manager that waits for the mutex, instead of leaving it to its next poll.
pub fn a_release_wakes_a_waiter_of_the_same_manager(b: Backend) {
    let key = unique("wake");
    let m = sleepy_manager(b, "t-wake");
    // Four rounds: a poll could land in time by chance (its jitter), four in a row cannot.
    for through_guard in [true, false, true, false] {
        let (guard, record) = if through_guard {
            (
                Some(m.try_lock(&key, &lease(10_000)).unwrap().expect("free")),
                None,
            )
        } else {
            (None, Some(m.acquire_lock(&opts(&key, 10_000, 0)).unwrap()))
        };
        let waiter = {
            let (m, key) = (m.clone(), key.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let granted = m.try_lock_for(&key, ms(40_000), &lease(10_000)).unwrap();
                (granted.is_some(), started.elapsed())
            })
        };
        // Long enough for its first attempt to find the mutex busy (it then sleeps).
        thread::sleep(ms(500));
        match (guard, record) {
            (Some(guard), _) => guard.release().unwrap(),
            (_, Some(record)) => m.release_lock(&record.to_release_options()).unwrap(),
            _ => unreachable!(),
        }
        let (granted, waited) = waiter.join().unwrap();
        assert!(granted, "not granted within the wait");
        assert!(
            waited < Duration::from_secs(20),
            "waited {waited:?}: the release did not wake the waiter (guard: {through_guard})"
        );
    }
}

/// The same for a permit of a full semaphore.
pub fn a_released_permit_wakes_a_waiter_of_the_same_manager(b: Backend) {
    let key = unique("wake-sem");
    let m = sleepy_manager(b, "t-wake-sem");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    let permit = m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .expect("free");
    let waiter = {
        let (m, key) = (m.clone(), key.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let granted = m
                .try_acquire_permit_for(&key, ms(40_000), &permit_lease(10_000))
                .unwrap();
            (granted.is_some(), started.elapsed())
        })
    };
    thread::sleep(ms(500));
    permit.release().unwrap();
    let (granted, waited) = waiter.join().unwrap();
    assert!(granted, "not granted within the wait");
    assert!(
        waited < Duration::from_secs(20),
        "waited {waited:?}: the release did not wake the waiter"
    );
}

pub fn busy_then_not_granted_after_wait(b: Backend) {
    let key = unique("busy");
    let m = b.manager("t-busy");
    let _held = m.try_lock(&key, &lease(10_000)).unwrap().expect("granted");
    assert!(m.try_lock(&key, &lease(10_000)).unwrap().is_none());
    let started = Instant::now();
    assert!(m
        .try_lock_for(&key, ms(300), &lease(10_000))
        .unwrap()
        .is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "gave up before the wait was over"
    );
    // `lock` waits as long as the lease it asks for.
    let started = Instant::now();
    let err = m.lock(&key, &lease(300)).unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "gave up before the wait was over"
    );
    match err {
        LockError::NotGranted { key: k, .. } => assert_eq!(k, key),
        other => panic!("expected NotGranted, got {other:?}"),
    }
    assert_eq!(
        m.acquire_lock(&opts(&key, 10_000, 50)).unwrap_err().kind(),
        ErrorKind::Busy
    );
}

pub fn zero_wait_tries_once(b: Backend) {
    let key = unique("zero-wait");
    let m = b.manager("t-zero-wait");
    let _held = m.try_lock(&key, &lease(10_000)).unwrap().expect("granted");
    let started = Instant::now();
    assert!(matches!(m.try_lock(&key, &lease(10_000)), Ok(None)));
    assert!(started.elapsed() < Duration::from_secs(5));
}

pub fn stale_versions_are_rejected(b: Backend) {
    let key = unique("stale");
    let m = b.manager("t-stale");
    let first = m.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    let renewed = m.send_heartbeat(&first.to_heartbeat_options()).unwrap();
    assert_ne!(
        renewed.version, first.version,
        "a renewal writes a new version"
    );
    assert_eq!(
        renewed.fencing_token, first.fencing_token,
        "renewals keep the fencing token"
    );
    // The old version no longer renews or releases.
    let err = m.send_heartbeat(&first.to_heartbeat_options()).unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
    assert!(matches!(
        m.release_lock(&first.to_release_options()),
        Err(LockError::NotHeld { .. })
    ));
    // Without a lease, a renewal keeps the current one (not the config's default).
    let kept = m
        .send_heartbeat(&SendHeartbeatOptionsBuilder::new(&key, &renewed.version).build())
        .unwrap();
    assert_eq!(kept.lease_duration, Duration::from_millis(10_000));
    let renewed = kept;
    // A made-up version neither.
    let bogus = SendHeartbeatOptionsBuilder::new(&key, uuid::Uuid::new_v4().to_string()).build();
    assert!(matches!(
        m.send_heartbeat(&bogus),
        Err(LockError::NotHeld { .. })
    ));
    assert!(
        m.get_mutex(&key).unwrap().unwrap().locked,
        "failed calls change nothing"
    );
    // The current one does, once.
    m.release_lock(&renewed.to_release_options()).unwrap();
    assert!(matches!(
        m.release_lock(&renewed.to_release_options()),
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(
        m.send_heartbeat(&renewed.to_heartbeat_options()),
        Err(LockError::NotHeld { .. })
    ));
}

pub fn expired_lease_is_taken_over(b: Backend) {
    let key = unique("takeover");
    let holder = b.manager("t-takeover");
    let crashed = holder.acquire_lock(&opts(&key, 400, 0)).unwrap(); // nobody renews it
    let other = b.manager("t-takeover");
    assert!(other
        .try_acquire_lock(&opts(&key, 5_000, 0))
        .unwrap()
        .is_none());
    let taken = other.acquire_lock(&opts(&key, 5_000, 10_000)).unwrap();
    assert!(taken.fencing_token > crashed.fencing_token);
    assert_ne!(taken.version, crashed.version);
    // The crashed holder comes back: it can neither renew nor release.
    assert!(matches!(
        holder.send_heartbeat(&crashed.to_heartbeat_options()),
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(
        holder.release_lock(&crashed.to_release_options()),
        Err(LockError::NotHeld { .. })
    ));
    other.release_lock(&taken.to_release_options()).unwrap();
}

pub fn fencing_tokens_increase(b: Backend) {
    let key = unique("fencing");
    let m = b.manager("t-fencing");
    let mut last = i64::MIN;
    for _ in 0..5 {
        let guard = m
            .try_lock_for(&key, ms(1_000), &lease(10_000))
            .unwrap()
            .expect("granted");
        assert!(
            guard.fencing_token() > last,
            "{} <= {last}",
            guard.fencing_token()
        );
        last = guard.fencing_token();
        guard.release().unwrap();
    }
}

pub fn fencing_tokens_increase_across_deletion(b: Backend) {
    let key = unique("fencing-delete");
    let m = b.manager("t-fencing-delete");
    let mut last = i64::MIN;
    for _ in 0..4 {
        let lock = m
            .acquire_lock(
                &AcquireLockOptionsBuilder::new(&key)
                    .with_lease_duration_secs(10)
                    .with_delete_on_release(true)
                    .build(),
            )
            .unwrap();
        assert!(
            lock.fencing_token > last,
            "{} <= {last}",
            lock.fencing_token
        );
        last = lock.fencing_token;
        m.release_lock(&lock.to_release_options()).unwrap();
        assert!(
            m.get_mutex(&key).unwrap().is_none(),
            "delete-on-release deletes"
        );
    }
    // An administrative delete does not reset the token either.
    let lock = m.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    m.release_lock(&lock.to_release_options()).unwrap();
    assert!(m.delete_mutex(&key, None).unwrap());
    let again = m.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    assert!(again.fencing_token > lock.fencing_token);
}

pub fn data_is_kept_and_replaced(b: Backend) {
    let key = unique("data");
    let m = b.manager("t-data");
    let lock = m
        .acquire_lock(
            &AcquireLockOptionsBuilder::new(&key)
                .with_lease_duration_secs(10)
                .with_data("v1")
                .build(),
        )
        .unwrap();
    assert_eq!(lock.data.as_deref(), Some("v1"));
    let renewed = m
        .send_heartbeat(
            &SendHeartbeatOptionsBuilder::new(&key, &lock.version)
                .with_data("v2")
                .build(),
        )
        .unwrap();
    assert_eq!(renewed.data.as_deref(), Some("v2"));
    // A release can leave a note for the next holder.
    m.release_lock(
        &ReleaseLockOptionsBuilder::new(&key, &renewed.version)
            .with_data("handover")
            .build(),
    )
    .unwrap();
    let stored = m.get_mutex(&key).unwrap().unwrap();
    assert!(!stored.locked);
    assert_eq!(stored.data.as_deref(), Some("handover"));
    // A grant without data keeps it; a grant with data replaces it.
    let next = m.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    assert_eq!(next.data.as_deref(), Some("handover"));
    m.release_lock(&next.to_release_options()).unwrap();
    let third = m
        .acquire_lock(
            &AcquireLockOptionsBuilder::new(&key)
                .with_lease_duration_secs(10)
                .with_data("v3")
                .build(),
        )
        .unwrap();
    assert_eq!(third.data.as_deref(), Some("v3"));
}

pub fn delete_on_release_removes_the_record(b: Backend) {
    let key = unique("delete-on-release");
    let m = b.manager("t-dor");
    let guard = m
        .lock(&key, &lease(10_000).delete_on_release(true))
        .unwrap();
    assert!(guard.record().delete_on_release);
    assert!(m.get_mutex(&key).unwrap().is_some());
    guard.release().unwrap();
    assert!(m.get_mutex(&key).unwrap().is_none());
    // Without the flag the record stays, free.
    let guard = m.try_lock(&key, &lease(10_000)).unwrap().expect("granted");
    drop(guard);
    let stored = m.get_mutex(&key).unwrap().expect("kept");
    assert!(!stored.locked);
}

pub fn delete_mutex_respects_live_leases(b: Backend) {
    let key = unique("delete-mutex");
    let m = b.manager("t-delete-mutex");
    assert!(!m.delete_mutex(&key, None).unwrap(), "nothing to delete");
    let lock = m.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    let err = m.delete_mutex(&key, None).unwrap_err();
    assert!(matches!(err, LockError::Conflict(_)), "{err:?}");
    assert!(matches!(
        m.delete_mutex(&key, Some("not-the-version")),
        Err(LockError::NotHeld { .. })
    ));
    assert!(m.get_mutex(&key).unwrap().unwrap().locked);
    assert!(m.delete_mutex(&key, Some(&lock.version)).unwrap());
    assert!(m.get_mutex(&key).unwrap().is_none());
}

pub fn semaphore_bounds_under_contention(b: Backend) {
    let key = unique("sem-bounds");
    let m = b.manager("t-sem-bounds");
    m.create_semaphore(
        &SemaphoreBuilder::new(&key, 3)
            .with_lease_duration_secs(10)
            .build(),
    )
    .unwrap();
    let occupancy = Arc::new(Occupancy::default());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (key, occupancy) = (key.clone(), occupancy.clone());
            thread::spawn(move || {
                let manager = b.manager("t-sem-bounds");
                for _ in 0..5 {
                    let permit = manager
                        .try_acquire_permit_for(&key, ms(60_000), &permit_lease(10_000))
                        .unwrap()
                        .expect("granted");
                    occupancy.enter();
                    thread::sleep(Duration::from_millis(15));
                    occupancy.leave();
                    permit.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        occupancy.most() <= 3,
        "{} permits at once",
        occupancy.most()
    );
    assert!(
        occupancy.most() >= 2,
        "the semaphore never admitted more than one"
    );
    assert_eq!(m.get_semaphore(&key).unwrap().unwrap().busy_count, 0);
}

pub fn semaphore_resize_up_and_down(b: Backend) {
    let key = unique("sem-resize");
    let m = b.manager("t-sem-resize");
    let created = m
        .create_semaphore(
            &SemaphoreBuilder::new(&key, 2)
                .with_lease_duration_secs(10)
                .build(),
        )
        .unwrap();
    assert_eq!((created.max_size, created.busy_count), (2, 0));
    let p1 = m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .unwrap();
    let p2 = m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .unwrap();
    assert!(m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .is_none());
    // Grow: two more permits, the held ones untouched.
    let grown = m
        .create_semaphore(
            &SemaphoreBuilder::new(&key, 4)
                .with_lease_duration_secs(10)
                .build(),
        )
        .unwrap();
    assert_eq!((grown.max_size, grown.busy_count), (4, 2));
    let p3 = m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .unwrap();
    let p4 = m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .unwrap();
    assert!(m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .is_none());
    assert!(p1.is_held() && p2.is_held());
    // Shrink below the busy count: nothing fails, every holder keeps its permit, and no
    // permit is granted until fewer than the new size are busy.
    let shrunk = m
        .create_semaphore(
            &SemaphoreBuilder::new(&key, 2)
                .with_lease_duration_secs(10)
                .build(),
        )
        .unwrap();
    assert_eq!((shrunk.max_size, shrunk.busy_count), (2, 4));
    let mut held = vec![p1, p2, p3, p4];
    while held.len() > 1 {
        assert!(
            m.try_acquire_permit(&key, &permit_lease(10_000))
                .unwrap()
                .is_none(),
            "{} busy of 2",
            held.len()
        );
        held.pop().unwrap().release().unwrap();
    }
    let live = m.get_semaphore(&key).unwrap().unwrap().busy_count;
    assert_eq!(live, 1);
    let p = m.try_acquire_permit(&key, &permit_lease(10_000)).unwrap();
    assert!(p.is_some(), "one of two permits is free");
    assert!(m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .is_none());
    drop(held);
    drop(p);
    assert_eq!(m.get_semaphore(&key).unwrap().unwrap().busy_count, 0);
    let slots = m.get_semaphore_mutexes(&key).unwrap();
    assert!(slots.len() >= 2);
}

pub fn semaphore_must_exist(b: Backend) {
    let key = unique("sem-missing");
    let m = b.manager("t-sem-missing");
    let err = m
        .try_acquire_permit_for(&key, ms(100), &permit_lease(10_000))
        .unwrap_err();
    assert!(matches!(err, LockError::NotFound(_)), "{err:?}");
    assert!(m.get_semaphore(&key).unwrap().is_none());
    assert!(!m.delete_semaphore(&key).unwrap());
}

pub fn permit_default_wait_is_the_semaphores_lease(b: Backend) {
    let key = unique("sem-default-wait");
    let m = b.manager("t-sem-default-wait");
    m.create_semaphore(
        &SemaphoreBuilder::new(&key, 1)
            .with_lease_duration_millis(800)
            .build(),
    )
    .unwrap();
    let no_lease_no_wait = PermitOptions::new();
    let held = m.acquire_permit(&key, &no_lease_no_wait).unwrap();
    assert_eq!(held.record().lease_duration, Duration::from_millis(800));
    let started = Instant::now();
    let err = m.acquire_permit(&key, &no_lease_no_wait).unwrap_err();
    assert!(matches!(err, LockError::NotGranted { .. }), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "gave up after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(10_000),
        "waited the config's 15 s default: {waited:?}"
    );
}

pub fn semaphore_mutexes_list_slots(b: Backend) {
    let key = unique("sem-slots");
    let m = b.manager("t-sem-slots");
    m.create_semaphore(
        &SemaphoreBuilder::new(&key, 3)
            .with_lease_duration_secs(10)
            .build(),
    )
    .unwrap();
    let permit = m
        .acquire_permit(&key, &PermitOptions::new().data("worker-1"))
        .unwrap();
    let record = permit.record();
    assert_eq!(record.semaphore_key.as_deref(), Some(key.as_str()));
    assert_eq!(
        record.lease_duration,
        Duration::from_millis(10_000),
        "a permit takes the semaphore's lease by default"
    );
    let slots = m.get_semaphore_mutexes(&key).unwrap();
    assert_eq!(slots.len(), 3);
    assert!(slots
        .iter()
        .all(|s| s.semaphore_key.as_deref() == Some(key.as_str())));
    let held: Vec<_> = slots
        .iter()
        .filter(|s| s.locked && s.version == record.version)
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].mutex_key, record.mutex_key);
    assert_eq!(held[0].data.as_deref(), Some("worker-1"));
    // Slots are not plain mutexes.
    assert!(m.get_mutex(&record.mutex_key).unwrap().is_none());
    // A permit renewed without a lease keeps its own lease, not the semaphore's.
    let other = m.acquire_lock(&permit_opts(&key, 4_000, 0)).unwrap();
    let renewed = m
        .send_heartbeat(
            &SendHeartbeatOptionsBuilder::new(&other.mutex_key, &other.version)
                .with_semaphore_key(&key)
                .build(),
        )
        .unwrap();
    assert_eq!(renewed.lease_duration, Duration::from_millis(4_000));
}

pub fn delete_semaphore_respects_live_permits(b: Backend) {
    let key = unique("sem-delete");
    let m = b.manager("t-sem-delete");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 2).build())
        .unwrap();
    let permit = m
        .try_acquire_permit(&key, &permit_lease(10_000))
        .unwrap()
        .expect("granted");
    assert!(matches!(
        m.delete_semaphore(&key),
        Err(LockError::Conflict(_))
    ));
    permit.release().unwrap();
    assert!(m.delete_semaphore(&key).unwrap());
    assert!(m.get_semaphore(&key).unwrap().is_none());
    assert!(matches!(
        m.get_semaphore_mutexes(&key),
        Err(LockError::NotFound(_))
    ));
}

pub fn permit_slots_have_increasing_fencing_tokens(b: Backend) {
    let key = unique("sem-fencing");
    let m = b.manager("t-sem-fencing");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    let mut last = i64::MIN;
    for _ in 0..4 {
        let p = m
            .try_acquire_permit_for(&key, ms(1_000), &permit_lease(10_000))
            .unwrap()
            .expect("granted");
        assert!(p.fencing_token() > last);
        last = p.fencing_token();
        p.release().unwrap();
    }
}

pub fn tenants_are_isolated(b: Backend) {
    let key = unique("tenants");
    let (a, other) = (
        b.manager(&unique("tenant-a")),
        b.manager(&unique("tenant-b")),
    );
    let lock_a = a.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    // Same key, other tenant: free.
    let lock_b = other.acquire_lock(&opts(&key, 10_000, 0)).unwrap();
    assert_eq!(lock_b.tenant_id, other.tenant_id());
    // Tenant B can neither see, renew nor release A's lock, even with A's version.
    assert!(matches!(
        other.release_lock(&lock_a.to_release_options()),
        Err(LockError::NotHeld { .. })
    ));
    assert!(other
        .send_heartbeat(&lock_a.to_heartbeat_options())
        .is_err());
    assert!(matches!(
        other.delete_mutex(&key, Some(&lock_a.version)),
        Err(LockError::NotHeld { .. })
    ));
    assert_eq!(a.get_mutex(&key).unwrap().unwrap().version, lock_a.version);
    assert_eq!(a.list_mutexes().unwrap().len(), 1);
    // Semaphores too.
    a.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    assert!(other.get_semaphore(&key).unwrap().is_none());
    assert!(matches!(
        other.try_acquire_permit(&key, &permit_lease(1_000)),
        Err(LockError::NotFound(_))
    ));
    a.release_lock(&lock_a.to_release_options()).unwrap();
    other.release_lock(&lock_b.to_release_options()).unwrap();
}

pub fn guard_heartbeat_keeps_a_short_lease_alive(b: Backend) {
    let key = unique("heartbeat");
    let m = b.manager("t-heartbeat");
    // 1.5 s: short enough that the test outlives two leases, long enough that a renewal
    // queued behind a loaded test server (moto serves one request at a time) still lands.
    let guard = m.try_lock(&key, &lease(1_500)).unwrap().expect("granted");
    let token = guard.fencing_token();
    let other = b.manager("t-heartbeat");
    let until = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < until {
        assert!(guard.is_held());
        assert!(
            other.try_lock(&key, &lease(1_500)).unwrap().is_none(),
            "taken while renewed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    guard.ensure_held().unwrap();
    assert_eq!(guard.fencing_token(), token, "renewals keep the token");
    drop(guard);
    assert!(other.try_lock(&key, &lease(1_500)).unwrap().is_some());
}

pub fn permit_heartbeat_keeps_a_short_lease_alive(b: Backend) {
    let key = unique("permit-heartbeat");
    let m = b.manager("t-permit-heartbeat");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    let permit = m
        .try_acquire_permit(&key, &permit_lease(1_500))
        .unwrap()
        .expect("granted");
    assert_eq!(permit.semaphore_key(), Some(key.as_str()));
    thread::sleep(Duration::from_millis(3_500));
    assert!(permit.is_held());
    assert!(m
        .try_acquire_permit(&key, &permit_lease(1_500))
        .unwrap()
        .is_none());
    drop(permit);
    assert!(m
        .try_acquire_permit(&key, &permit_lease(1_500))
        .unwrap()
        .is_some());
}

pub fn drop_releases_the_lock(b: Backend) {
    let key = unique("drop");
    let m = b.manager("t-drop");
    {
        let _guard = m.try_lock(&key, &lease(30_000)).unwrap().expect("granted");
        assert!(m.get_mutex(&key).unwrap().unwrap().locked);
    }
    assert!(!m.get_mutex(&key).unwrap().unwrap().locked);
    assert!(m.try_lock(&key, &lease(30_000)).unwrap().is_some());
}

pub fn explicit_release_returns_errors(b: Backend) {
    let key = unique("release-error");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over("t-release-error", flaky.clone());
    let guard = m.try_lock(&key, &lease(5_000)).unwrap().expect("granted");
    flaky.fail_releases.store(true, Ordering::SeqCst);
    let err = guard.release().unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    flaky.fail_releases.store(false, Ordering::SeqCst);
    // The lease was not released: it stays until it expires.
    assert!(m.get_mutex(&key).unwrap().unwrap().locked);
    // Releasing a lease somebody deleted reports NotHeld.
    let guard = m
        .try_lock(&unique("release-error-2"), &lease(5_000))
        .unwrap()
        .expect("granted");
    let record = guard.record();
    assert!(m
        .delete_mutex(&record.mutex_key, Some(&record.version))
        .unwrap());
    assert!(matches!(guard.release(), Err(LockError::NotHeld { .. })));
}

pub fn loss_is_reported_when_renewals_fail(b: Backend) {
    let key = unique("loss");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over("t-loss", flaky.clone());
    let guard = m.try_lock(&key, &lease(900)).unwrap().expect("granted");
    let lost = guard.lost_signal();
    flaky.fail_renewals.store(true, Ordering::SeqCst);
    // Within the lease (plus scheduling slack) the guard must say it is lost.
    let signalled = lost.recv_timeout(Duration::from_secs(5));
    assert!(
        signalled.is_err()
            && !matches!(signalled, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        "no loss signal"
    );
    assert!(!guard.is_held());
    assert!(matches!(
        guard.ensure_held(),
        Err(LockError::LeaseLost { .. })
    ));
    assert!(
        flaky.renewals_seen.load(Ordering::SeqCst) >= 2,
        "one failed request must not end a lease"
    );
    flaky.fail_renewals.store(false, Ordering::SeqCst);
    drop(guard);

    // A rejected renewal (someone deleted the lease) is a loss too, reported at once.
    let key = unique("loss-rejected");
    let guard = m.try_lock(&key, &lease(900)).unwrap().expect("granted");
    let record = guard.record();
    assert!(m.delete_mutex(&key, Some(&record.version)).unwrap());
    let signalled = guard.lost_signal().recv_timeout(Duration::from_secs(5));
    assert!(
        !matches!(signalled, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        "no loss signal"
    );
    assert!(!guard.is_held());
}

pub fn late_renewal_does_not_revive_a_lost_lease(b: Backend) {
    let key = unique("late-renewal");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over("t-late-renewal", flaky.clone());
    // Lease 2 s: safety margin 200 ms, renewals every 667 ms. The first renewal is sent at
    // ~667 ms and takes 1.4 s, so the lease runs out locally at ~1.8 s, and the reply comes
    // back at ~2.07 s, in time for the deadline it would set (~2.47 s) but after the loss.
    let guard = m.try_lock(&key, &lease(2_000)).unwrap().expect("granted");
    flaky.renewal_delay_ms.store(1_400, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(1_950));
    assert!(!guard.is_held(), "held past its lease with no renewal back");
    flaky.renewal_delay_ms.store(0, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(300));
    assert!(flaky.renewals_seen.load(Ordering::SeqCst) >= 1);
    assert!(
        !guard.is_held(),
        "a late renewal made a lost lease held again"
    );
    assert!(matches!(
        guard.ensure_held(),
        Err(LockError::LeaseLost { .. })
    ));
    let signalled = guard.lost_signal().recv_timeout(Duration::from_secs(5));
    assert!(
        !matches!(signalled, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        "no loss signal"
    );
    // The renewal did succeed in the store: drop releases with the version it wrote.
    drop(guard);
    assert!(!m.get_mutex(&key).unwrap().unwrap().locked);
}

pub fn lost_renewal_reply_does_not_lose_the_lease(b: Backend) {
    let key = unique("lost-reply");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over("t-lost-reply", flaky.clone());
    let guard = m.try_lock(&key, &lease(1_500)).unwrap().expect("granted");
    flaky.lose_renewal_replies.store(2, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(3_000));
    assert_eq!(
        flaky.lose_renewal_replies.load(Ordering::SeqCst),
        0,
        "replies were lost"
    );
    assert!(
        guard.is_held(),
        "a renewal that succeeded but whose reply was lost ended the lease"
    );
    let stored = m.get_mutex(&key).unwrap().unwrap();
    assert_eq!(stored.version, guard.record().version);
    guard.release().unwrap();
}

pub fn into_lock_hands_the_lease_on(b: Backend) {
    let key = unique("into-lock");
    let m = b.manager("t-into-lock");
    let record = m
        .try_lock(&key, &lease(10_000))
        .unwrap()
        .expect("granted")
        .hand_over()
        .unwrap();
    assert!(
        m.try_lock(&key, &lease(10_000)).unwrap().is_none(),
        "still held after the guard is gone"
    );
    let renewed = m.send_heartbeat(&record.to_heartbeat_options()).unwrap();
    m.release_lock(&renewed.to_release_options()).unwrap();
}

pub fn invalid_input_is_rejected_before_io(b: Backend) {
    let m = b.manager("t-invalid");
    let invalid = |r: db_locks::Result<_>| matches!(r, Err(LockError::Validation(_)));
    let key = unique("invalid");
    assert!(invalid(m.try_lock("", &lease(1_000)).map(|_| ())));
    assert!(invalid(
        m.try_lock(&"k".repeat(db_locks::MAX_KEY_LEN + 1), &lease(1_000))
            .map(|_| ())
    ));
    assert!(invalid(m.try_lock("bad\nkey", &lease(1_000)).map(|_| ())));
    assert!(invalid(m.try_lock(&key, &lease(0)).map(|_| ())));
    assert!(invalid(
        m.acquire_lock(
            &AcquireLockOptionsBuilder::new(&key)
                .with_data("x".repeat(db_locks::MAX_DATA_LEN + 1))
                .build()
        )
        .map(|_| ())
    ));
    assert!(invalid(
        m.lock(&key, &lease(300).heartbeat_period(ms(300)))
            .map(|_| ())
    ));
    assert!(invalid(
        m.create_semaphore(&SemaphoreBuilder::new(&key, 0).build())
            .map(|_| ())
    ));
    assert!(invalid(
        m.create_semaphore(&SemaphoreBuilder::new(&key, -3).build())
            .map(|_| ())
    ));
    assert!(invalid(
        m.create_semaphore(&SemaphoreBuilder::new(&key, db_locks::MAX_SEMAPHORE_SIZE + 1).build())
            .map(|_| ())
    ));
    assert!(invalid(
        m.create_semaphore(
            &SemaphoreBuilder::new(&key, 2)
                .with_lease_duration(db_locks::MAX_LEASE + Duration::from_secs(1))
                .build()
        )
        .map(|_| ())
    ));
    assert!(invalid(
        m.send_heartbeat(&SendHeartbeatOptionsBuilder::new(&key, "").build())
            .map(|_| ())
    ));
    // A permit cannot be asked of `lock` at all: it takes `LockOptions`, not `PermitOptions`.
    // Nothing was written by any of them.
    assert!(m.get_mutex(&key).unwrap().is_none());
    assert!(m.get_semaphore(&key).unwrap().is_none());
}

pub fn list_shows_the_tenants_locks(b: Backend) {
    let tenant = unique("t-list");
    let m = b.manager(&tenant);
    let (k1, k2, s1) = (unique("list-a"), unique("list-b"), unique("list-sem"));
    let _g1 = m.try_lock(&k1, &lease(10_000)).unwrap().expect("granted");
    let g2 = m.try_lock(&k2, &lease(10_000)).unwrap().expect("granted");
    g2.release().unwrap();
    m.create_semaphore(&SemaphoreBuilder::new(&s1, 2).build())
        .unwrap();
    let _p = m
        .try_acquire_permit(&s1, &permit_lease(10_000))
        .unwrap()
        .expect("granted");
    let mutexes = m.list_mutexes().unwrap();
    let mut keys: Vec<_> = mutexes.iter().map(|l| l.mutex_key.clone()).collect();
    keys.sort();
    let mut expected = vec![k1.clone(), k2.clone()];
    expected.sort();
    assert_eq!(keys, expected, "plain mutexes only, not permit slots");
    assert!(mutexes.iter().find(|l| l.mutex_key == k1).unwrap().locked);
    let sems = m.list_semaphores().unwrap();
    assert_eq!(sems.len(), 1);
    assert_eq!(
        (sems[0].semaphore_key.as_str(), sems[0].busy_count),
        (s1.as_str(), 1)
    );
}
