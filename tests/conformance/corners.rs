//! Cases for the corners an adversarial review walked: resizes meeting expiries and renewals,
//! names that look alike, requests that hang or lose their replies, schedules that cannot
//! work. Each one failed on the code before its fix.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use db_locks::{
    AcquireLockOptions, AcquireLockOptionsBuilder, LockError, MutexLock, SemaphoreBuilder,
    SendHeartbeatOptionsBuilder,
};

use crate::support::{lease, ms, unique, Backend, FlakyStore};

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

/// The slot index of a permit record (`<semaphore>_<index>`).
fn slot(record: &MutexLock) -> i64 {
    let (_, index) = record.mutex_key.rsplit_once('_').unwrap();
    index.parse().unwrap()
}

/// A renewal of a retired slot whose lease ran out must not bring it back: that would make
/// more than `max_size` permits live. Both orders: after another grant (SQL stores), and
/// before any acquire reclaimed the slot (Redis, DynamoDB).
pub fn renewal_after_shrink_and_expiry_is_refused(b: Backend) {
    let m = b.manager(&unique("t-shrink-renew"));
    // Order 1: A holds both slots, releases one, the semaphore shrinks to 1, A's other lease
    // runs out, B takes the one permit, then A renews its expired slot.
    let key = unique("pool");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 2).build())
        .unwrap();
    let first = m.acquire_lock(&permit_opts(&key, 600, 0)).unwrap();
    let second = m.acquire_lock(&permit_opts(&key, 600, 0)).unwrap();
    m.release_lock(&first.to_release_options()).unwrap();
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    thread::sleep(Duration::from_millis(900));
    let b_permit = m.acquire_lock(&permit_opts(&key, 10_000, 5_000)).unwrap();
    let renewal = m.send_heartbeat(&second.to_heartbeat_options());
    let busy = m.get_semaphore(&key).unwrap().unwrap().busy_count;
    assert!(busy <= 1, "{busy} permits live with max_size 1");
    assert!(
        matches!(renewal, Err(LockError::NotHeld { .. })),
        "an expired retired permit was renewed: {renewal:?}"
    );
    m.release_lock(&b_permit.to_release_options()).unwrap();

    // Order 2: pool_0 held for 30 s, pool_1 for 1 s; shrink to 1; pool_1 runs out; renew it.
    let key = unique("pool");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 2).build())
        .unwrap();
    let long = m.acquire_lock(&permit_opts(&key, 30_000, 0)).unwrap();
    let short = m.acquire_lock(&permit_opts(&key, 1_000, 0)).unwrap();
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    thread::sleep(Duration::from_millis(1_500));
    let renewal = m.send_heartbeat(&short.to_heartbeat_options());
    let busy = m.get_semaphore(&key).unwrap().unwrap().busy_count;
    assert!(busy <= 1, "{busy} permits live with max_size 1");
    assert!(
        matches!(renewal, Err(LockError::NotHeld { .. })),
        "an expired retired permit was renewed: {renewal:?}"
    );
    m.release_lock(&long.to_release_options()).unwrap();
}

/// A lease that has run out by the store's clock is lost: renewing it fails, for mutexes and
/// permits alike, even when nobody has taken it over.
pub fn expired_lease_is_not_renewed(b: Backend) {
    let m = b.manager(&unique("t-expired-renew"));
    let key = unique("expired");
    let lock = m.acquire_lock(&opts(&key, 400, 0)).unwrap();
    thread::sleep(Duration::from_millis(700));
    assert!(matches!(
        m.send_heartbeat(&lock.to_heartbeat_options()),
        Err(LockError::NotHeld { .. })
    ));
    // Still releasable: nobody took it, and freeing it early harms nobody.
    m.release_lock(&lock.to_release_options()).unwrap();
    let sem = unique("expired-sem");
    m.create_semaphore(&SemaphoreBuilder::new(&sem, 1).build())
        .unwrap();
    let permit = m.acquire_lock(&permit_opts(&sem, 400, 0)).unwrap();
    thread::sleep(Duration::from_millis(700));
    assert!(matches!(
        m.send_heartbeat(&permit.to_heartbeat_options()),
        Err(LockError::NotHeld { .. })
    ));
}

/// After a shrink below the busy count, grants resume as soon as fewer than the new size are
/// busy, whichever slots the remaining holders have.
pub fn grants_resume_after_a_shrink_once_fewer_are_busy(b: Backend) {
    let m = b.manager(&unique("t-shrink-resume"));
    let key = unique("pool");
    m.create_semaphore(&SemaphoreBuilder::new(&key, 4).build())
        .unwrap();
    let mut held: Vec<MutexLock> = (0..4)
        .map(|_| m.acquire_lock(&permit_opts(&key, 20_000, 0)).unwrap())
        .collect();
    held.sort_by_key(slot);
    assert_eq!(held.iter().map(slot).collect::<Vec<_>>(), [0, 1, 2, 3]);
    // Slots 0 and 3 stay busy.
    for middle in held.drain(1..3) {
        m.release_lock(&middle.to_release_options()).unwrap();
    }
    let shrunk = m
        .create_semaphore(&SemaphoreBuilder::new(&key, 3).build())
        .unwrap();
    assert_eq!((shrunk.max_size, shrunk.busy_count), (3, 2));
    let third = m
        .try_acquire_lock(&permit_opts(&key, 20_000, 0))
        .unwrap()
        .expect("2 of 3 busy: a permit is free");
    assert!(
        m.try_acquire_lock(&permit_opts(&key, 20_000, 0))
            .unwrap()
            .is_none(),
        "3 of 3 busy"
    );
    assert_eq!(m.get_semaphore(&key).unwrap().unwrap().busy_count, 3);
    // Below the busy count: 3 live, size 1; releasing two leaves one live, still no grant.
    m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
        .unwrap();
    m.release_lock(&third.to_release_options()).unwrap();
    assert!(m
        .try_acquire_lock(&permit_opts(&key, 20_000, 0))
        .unwrap()
        .is_none());
    m.release_lock(&held[0].to_release_options()).unwrap();
    assert!(
        m.try_acquire_lock(&permit_opts(&key, 20_000, 0))
            .unwrap()
            .is_none(),
        "1 of 1 busy"
    );
    m.release_lock(&held[1].to_release_options()).unwrap();
    let last = m
        .try_acquire_lock(&permit_opts(&key, 20_000, 0))
        .unwrap()
        .expect("0 of 1 busy");
    assert_eq!(m.get_semaphore(&key).unwrap().unwrap().busy_count, 1);
    m.release_lock(&last.to_release_options()).unwrap();
}

/// Names that differ in any byte are different names: trailing and leading spaces, case,
/// Unicode normalisation, and a semaphore whose key is blank against plain mutexes.
pub fn look_alike_names_are_different_names(b: Backend) {
    let tenant = unique("t-alike");
    let (plain, padded) = (b.manager(&tenant), b.manager(&format!("{tenant} ")));
    let key = unique("alike");
    let lock = plain.acquire_lock(&opts(&key, 20_000, 0)).unwrap();
    assert!(
        padded.list_mutexes().unwrap().is_empty(),
        "tenant `T ` sees T's locks"
    );
    assert!(padded.get_mutex(&key).unwrap().is_none());
    assert!(matches!(
        padded.release_lock(&lock.to_release_options()),
        Err(LockError::NotHeld { .. })
    ));
    assert!(padded.send_heartbeat(&lock.to_heartbeat_options()).is_err());
    assert!(plain.get_mutex(&key).unwrap().unwrap().locked);

    // Keys: each look-alike is a lock of its own.
    let m = b.manager(&unique("t-alike-keys"));
    let base = unique("Job");
    let alikes = [
        base.clone(),
        format!("{base} "),
        format!(" {base}"),
        base.to_lowercase(),
        base.to_uppercase(),
        format!("{base}-\u{e9}"),
        format!("{base}-e\u{301}"),
        format!("{base}\u{a0}"),
    ];
    let records: Vec<MutexLock> = alikes
        .iter()
        .map(|k| {
            m.try_acquire_lock(&opts(k, 20_000, 0))
                .unwrap()
                .unwrap_or_else(|| panic!("`{k}` is busy: it collided with a look-alike"))
        })
        .collect();
    for (k, record) in alikes.iter().zip(&records) {
        assert_eq!(&record.mutex_key, k);
        assert_eq!(m.get_mutex(k).unwrap().unwrap().version, record.version);
    }
    assert_eq!(m.list_mutexes().unwrap().len(), alikes.len());

    // Semaphores `pool` and `pool ` do not share permits.
    let pool = unique("pool");
    let padded_pool = format!("{pool} ");
    m.create_semaphore(&SemaphoreBuilder::new(&pool, 2).build())
        .unwrap();
    m.create_semaphore(&SemaphoreBuilder::new(&padded_pool, 2).build())
        .unwrap();
    for _ in 0..2 {
        m.try_acquire_lock(&permit_opts(&padded_pool, 20_000, 0))
            .unwrap()
            .expect("a permit of `pool `");
    }
    assert_eq!(m.get_semaphore(&pool).unwrap().unwrap().busy_count, 0);
    for _ in 0..2 {
        m.try_acquire_lock(&permit_opts(&pool, 20_000, 0))
            .unwrap()
            .expect("a permit of `pool`");
    }
    assert!(m
        .try_acquire_lock(&permit_opts(&pool, 20_000, 0))
        .unwrap()
        .is_none());
    assert_eq!(m.get_semaphore_mutexes(&pool).unwrap().len(), 2);

    // A semaphore with a blank key is not the set of plain mutexes (stored with an empty
    // semaphore key on SQL).
    let m = b.manager(&unique("t-alike-blank"));
    let free_mutex = unique("free");
    let held_free = m.acquire_lock(&opts(&free_mutex, 20_000, 0)).unwrap();
    m.release_lock(&held_free.to_release_options()).unwrap();
    assert!(matches!(
        m.try_acquire_lock(&permit_opts(" ", 20_000, 0)),
        Err(LockError::NotFound(_))
    ));
    m.create_semaphore(&SemaphoreBuilder::new(" ", 1).build())
        .unwrap();
    let permit = m
        .try_acquire_lock(&permit_opts(" ", 20_000, 0))
        .unwrap()
        .unwrap();
    assert_eq!(permit.semaphore_key.as_deref(), Some(" "));
    assert_ne!(permit.mutex_key, free_mutex);
    assert!(!m.get_mutex(&free_mutex).unwrap().unwrap().locked);
    assert_eq!(m.list_mutexes().unwrap().len(), 1);
}

/// The loss signal comes by the local deadline even while a renewal hangs in the store.
pub fn loss_is_signalled_by_the_deadline_while_a_renewal_hangs(b: Backend) {
    let key = unique("hung-renewal");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over("t-hung-renewal", flaky.clone());
    // Lease 3 s: margin 300 ms, so the local deadline is 2.7 s after the grant was sent. The
    // first renewal (at 0.9 s) hangs for 2.9 s, far past it.
    flaky.renewal_delay_ms.store(2_900, Ordering::SeqCst);
    let sent = Instant::now();
    let guard = m.try_lock(&key, &lease(3_000)).unwrap().expect("granted");
    let lost = guard.lost_signal();
    let fired = lost.recv_timeout(Duration::from_secs(10));
    let at = sent.elapsed();
    assert!(
        !matches!(fired, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        "no loss signal"
    );
    assert!(!guard.is_held());
    assert!(
        at <= Duration::from_millis(2_700 + 250),
        "the loss was signalled {at:?} after the grant, past the 2.7 s deadline"
    );
    assert!(
        at >= Duration::from_millis(2_600),
        "signalled early: {at:?}"
    );
    flaky.renewal_delay_ms.store(0, Ordering::SeqCst);
}

/// A renewal applied in the store whose reply was lost leaves the lease in doubt; a release
/// must free it whichever version the store has.
pub fn release_after_an_in_doubt_renewal_frees_the_lease(b: Backend) {
    let key = unique("doubt-release");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over("t-doubt-release", flaky.clone());
    let guard = m.try_lock(&key, &lease(3_000)).unwrap().expect("granted");
    let granted = guard.record();
    flaky
        .fail_renewals_after_lost_reply
        .store(true, Ordering::SeqCst);
    flaky.lose_renewal_replies.store(1, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(5);
    while flaky.lose_renewal_replies.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < until, "no renewal was sent");
        thread::sleep(Duration::from_millis(20));
    }
    // The store now has the renewal's version, the guard still the granted one.
    let stored = m.get_mutex(&key).unwrap().unwrap();
    assert_ne!(stored.version, granted.version);
    assert!(guard.is_held());
    guard
        .release()
        .expect("the release names the in-doubt version too");
    assert!(!m.get_mutex(&key).unwrap().unwrap().locked, "still held");

    // into_lock settles the doubt first and hands on the version the store has.
    let key = unique("doubt-hand-over");
    let guard = m.try_lock(&key, &lease(3_000)).unwrap().expect("granted");
    flaky.fail_renewals.store(false, Ordering::SeqCst);
    flaky.lose_renewal_replies.store(1, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(5);
    while flaky.lose_renewal_replies.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < until, "no renewal was sent");
        thread::sleep(Duration::from_millis(20));
    }
    flaky.fail_renewals.store(false, Ordering::SeqCst);
    let handed = guard.hand_over().unwrap();
    assert_eq!(m.get_mutex(&key).unwrap().unwrap().version, handed.version);
    m.release_lock(&handed.to_release_options()).unwrap();
}

/// An acquire applied in the store whose reply was lost: the retry, which writes the same
/// version, finds its own grant instead of waiting for it to expire (mutex) or taking a
/// second slot (permit).
pub fn acquire_whose_reply_was_lost_gets_its_own_grant(b: Backend) {
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_over(&unique("t-lost-acquire"), flaky.clone());
    let key = unique("lost-acquire");
    flaky.lose_acquire_replies.store(1, Ordering::SeqCst);
    let started = Instant::now();
    let guard = m
        .try_lock_for(&key, ms(10_000), &lease(20_000))
        .unwrap()
        .expect("granted");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} for its own grant",
        started.elapsed()
    );
    let stored = m.get_mutex(&key).unwrap().unwrap();
    assert_eq!(stored.version, guard.record().version);
    let token = guard.fencing_token();
    assert_eq!(stored.fencing_token, token, "a re-grant keeps the token");
    guard.release().unwrap();

    // A try-once caller too (one settling retry after the error).
    let key = unique("lost-try");
    flaky.lose_acquire_replies.store(1, Ordering::SeqCst);
    let lock = m
        .try_acquire_lock(&opts(&key, 20_000, 0))
        .unwrap()
        .expect("its own grant");
    m.release_lock(&lock.to_release_options()).unwrap();

    // A permit: no second slot, no orphan.
    let sem = unique("lost-permit");
    m.create_semaphore(&SemaphoreBuilder::new(&sem, 2).build())
        .unwrap();
    flaky.lose_acquire_replies.store(1, Ordering::SeqCst);
    let permit = m
        .try_acquire_lock(&permit_opts(&sem, 20_000, 0))
        .unwrap()
        .expect("its own permit");
    assert_eq!(
        m.get_semaphore(&sem).unwrap().unwrap().busy_count,
        1,
        "the grant whose reply was lost is orphaned"
    );
    m.release_lock(&permit.to_release_options()).unwrap();
    assert_eq!(m.get_semaphore(&sem).unwrap().unwrap().busy_count, 0);
}

/// A caller that names the new version can retry a renewal that timed out.
pub fn caller_named_renewal_version_is_idempotent(b: Backend) {
    let m = b.manager(&unique("t-named-renewal"));
    let key = unique("named-renewal");
    let lock = m.acquire_lock(&opts(&key, 20_000, 0)).unwrap();
    let renew = SendHeartbeatOptionsBuilder::new(&key, &lock.version)
        .with_new_version("renewal-2")
        .build();
    let first = m.send_heartbeat(&renew).unwrap();
    assert_eq!(first.version, "renewal-2");
    // The same request again (its reply was lost, say): accepted, same version.
    let again = m.send_heartbeat(&renew).unwrap();
    assert_eq!(again.version, "renewal-2");
    assert_eq!(again.fencing_token, lock.fencing_token);
    // A different new version with the old version is not.
    let other = SendHeartbeatOptionsBuilder::new(&key, &lock.version)
        .with_new_version("renewal-3")
        .build();
    assert!(matches!(
        m.send_heartbeat(&other),
        Err(LockError::NotHeld { .. })
    ));
    // Versions are tokens.
    for bad in ["", "has space", "tab\there", &"v".repeat(65), "caf\u{e9}"] {
        let opts = SendHeartbeatOptionsBuilder::new(&key, "renewal-2")
            .with_new_version(bad)
            .build();
        assert!(
            matches!(m.send_heartbeat(&opts), Err(LockError::Validation(_))),
            "{bad:?} accepted"
        );
    }
    m.release_lock(&again.to_release_options()).unwrap();
}

/// A heartbeat period that leaves no time to retry, or a safety margin not below the lease,
/// is refused before anything is acquired.
pub fn unworkable_renewal_schedules_are_refused(b: Backend) {
    let key = unique("schedule");
    let m = b.manager_with("t-schedule", b.store(), |c| {
        c.heartbeat_period = Some(Duration::from_millis(2_800))
    });
    let err = m.try_lock(&key, &lease(3_000)).unwrap_err();
    assert!(matches!(err, LockError::Validation(_)), "{err:?}");
    assert!(err.to_string().contains("heartbeat period"), "{err}");
    let m = b.manager_with("t-schedule", b.store(), |c| {
        c.lease_safety_margin = Some(Duration::from_millis(3_000))
    });
    let err = m.try_lock(&key, &lease(3_000)).unwrap_err();
    assert!(matches!(err, LockError::Validation(_)), "{err:?}");
    // The period may be up to half of lease minus margin (here (3000 - 300) / 2).
    let m = b.manager_with("t-schedule", b.store(), |c| {
        c.heartbeat_period = Some(Duration::from_millis(1_350))
    });
    m.try_lock(&key, &lease(3_000))
        .unwrap()
        .expect("granted")
        .release()
        .unwrap();
    // Nothing was left held by the refused attempts.
    assert!(b
        .manager("t-schedule")
        .try_lock(&key, &lease(3_000))
        .unwrap()
        .is_some());
}

/// `Drop` (and `release()`) return within the I/O timeout plus a small bound when the store
/// stalls, and the lease then ends at its expiry.
pub fn drop_returns_within_the_io_timeout_when_the_store_stalls(b: Backend) {
    let key = unique("stalled-release");
    let flaky = FlakyStore::new(b.store());
    let m = b.manager_with("t-stalled-release", flaky.clone(), |c| {
        c.io_timeout = Duration::from_millis(1_000)
    });
    let guard = m.try_lock(&key, &lease(2_000)).unwrap().expect("granted");
    flaky.release_delay_ms.store(6_000, Ordering::SeqCst);
    let started = Instant::now();
    drop(guard);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_000 + 500),
        "Drop took {took:?} with a 1 s I/O timeout"
    );
    let guard = m
        .try_lock(&unique("stalled-release"), &lease(2_000))
        .unwrap()
        .expect("granted");
    let started = Instant::now();
    let err = guard.release().unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert!(err.is_retryable(), "{err:?}");
    flaky.release_delay_ms.store(0, Ordering::SeqCst);
    // The stalled release of the first guard lands eventually (here after 6 s) or the lease
    // expires: either way the key is free within the lease.
    let other = b.manager("t-stalled-release");
    assert!(other
        .try_lock_for(&key, ms(10_000), &lease(2_000))
        .unwrap()
        .is_some());
}

/// A permit of a semaphore with the longest allowed key has a slot key longer than a mutex
/// key may be; it must still renew and release through the record API (found by the
/// generated sequences: the slot key was validated as a plain key and refused).
pub fn permits_of_the_longest_semaphore_key_renew_and_release(b: Backend) {
    let m = b.manager(&unique("t-long-sem"));
    let sem = format!("s{}", "y".repeat(db_locks::MAX_KEY_LEN - 1));
    m.create_semaphore(&SemaphoreBuilder::new(&sem, 12).build())
        .unwrap();
    let permits: Vec<MutexLock> = (0..12)
        .map(|_| m.acquire_lock(&permit_opts(&sem, 20_000, 0)).unwrap())
        .collect();
    let longest = permits.iter().max_by_key(|p| p.mutex_key.len()).unwrap();
    assert!(longest.mutex_key.chars().count() > db_locks::MAX_KEY_LEN);
    let renewed = m.send_heartbeat(&longest.to_heartbeat_options()).unwrap();
    m.release_lock(&renewed.to_release_options()).unwrap();
    // A key that is not one of the semaphore's slots is refused as input, not looked up.
    let not_a_slot = SendHeartbeatOptionsBuilder::new(format!("{sem}_x"), &renewed.version)
        .with_semaphore_key(&sem)
        .build();
    assert!(matches!(
        m.send_heartbeat(&not_a_slot),
        Err(LockError::Validation(_))
    ));
}
