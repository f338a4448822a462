//! Criterion benchmarks of db-locks against real stores.
//!
//! Every group carries its own baseline: `get_mutex`, one primary-key read through the same
//! pool, i.e. a raw round trip to the same server. Quote results as ratios to it, measured in
//! the same run: these machines are shared and noisy.
//!
//! Stores: `DB_LOCKS_BENCH_STORES=sqlite,postgres,mysql,redis,dynamodb` (default `sqlite`; also
//! `redis-tls`, `redis-sentinel`, `redis-cluster`, as `scripts/redis_topologies.sh` starts them),
//! reached at the URLs the tests use (see tests/support/mod.rs), e.g.
//! `DB_LOCKS_BENCH_STORES=sqlite,postgres cargo bench --all-features --bench locks`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use db_locks::{AcquireLockOptionsBuilder, LockManager, LockOptions, MutexLock, SemaphoreBuilder};

#[path = "../tests/support/mod.rs"]
mod support;
use support::Backend;

/// The stores `DB_LOCKS_BENCH_STORES` names (default: sqlite), reached as the tests reach them.
fn managers() -> Vec<(String, LockManager)> {
    let stores = std::env::var("DB_LOCKS_BENCH_STORES").unwrap_or_else(|_| "sqlite".into());
    stores
        .split(',')
        .map(|name| {
            let backend = Backend::from_name(name);
            let manager = backend.manager_with(
                &format!("bench-{}", uuid::Uuid::new_v4().simple()),
                backend.store(),
                |config| {
                    config.retry_base = Duration::from_millis(1);
                    config.retry_max = Duration::from_millis(20);
                },
            );
            (name.to_owned(), manager)
        })
        .collect()
}

/// One uncontended acquire + release, next to the raw round trip.
fn uncontended(c: &mut Criterion) {
    for (store, m) in managers() {
        let mut group = c.benchmark_group(format!("uncontended/{store}"));
        let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let opts = AcquireLockOptionsBuilder::new(&key)
            .with_lease_duration_secs(30)
            .build();
        m.release_lock(&m.acquire_lock(&opts).unwrap().to_release_options())
            .unwrap();
        group.bench_function("raw_round_trip(get_mutex)", |b| {
            b.iter(|| m.get_mutex(&key).unwrap())
        });
        group.bench_function("acquire_lock", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let lock = m.acquire_lock(&opts).unwrap();
                    spent += start.elapsed();
                    m.release_lock(&lock.to_release_options()).unwrap();
                }
                spent
            })
        });
        group.bench_function("acquire_and_release", |b| {
            b.iter(|| {
                m.release_lock(&m.acquire_lock(&opts).unwrap().to_release_options())
                    .unwrap()
            })
        });
        group.bench_function("send_heartbeat", |b| {
            let mut lock = m.acquire_lock(&opts).unwrap();
            b.iter(|| lock = m.send_heartbeat(&lock.to_heartbeat_options()).unwrap());
            m.release_lock(&lock.to_release_options()).unwrap();
        });
        group.bench_function("guard_lock_and_drop", |b| {
            let opts = LockOptions::new().lease(Duration::from_secs(30));
            b.iter(|| drop(m.lock(&key, &opts).unwrap()))
        });
        group.finish();
    }
}

/// Threads contending for one mutex: time per grant (hand-over included).
fn contended(c: &mut Criterion) {
    for (store, m) in managers() {
        let mut group = c.benchmark_group(format!("contended/{store}"));
        group.sample_size(10);
        for threads in [2usize, 8] {
            group.bench_with_input(
                BenchmarkId::new("grants", threads),
                &threads,
                |b, &threads| {
                    let key = format!("bench-contended-{}", uuid::Uuid::new_v4().simple());
                    b.iter_custom(|iters| {
                        let per_thread = (iters as usize).div_ceil(threads);
                        let start = Instant::now();
                        let workers: Vec<_> = (0..threads)
                            .map(|_| {
                                let (m, key) = (m.clone(), key.clone());
                                std::thread::spawn(move || {
                                    let opts = AcquireLockOptionsBuilder::new(&key)
                                        .with_lease_duration_secs(30)
                                        .with_wait_duration_secs(120)
                                        .build();
                                    for _ in 0..per_thread {
                                        let lock = m.acquire_lock(&opts).unwrap();
                                        m.release_lock(&lock.to_release_options()).unwrap();
                                    }
                                })
                            })
                            .collect();
                        workers.into_iter().for_each(|w| w.join().unwrap());
                        // `iters` grants in all, spread over the threads: wall time per grant.
                        start.elapsed()
                    })
                },
            );
        }
        group.finish();
    }
}

/// 8 threads, each looping acquire + release on a mutex of its own tenant: the grant rate a
/// store sustains when tenants spread over it (on a Redis Cluster, over its shards, since the
/// tenant is the hash tag). Compare `tenants/redis-cluster` with `tenants/redis` of one run:
/// `DB_LOCKS_BENCH_STORES=redis,redis-cluster cargo bench --all-features --bench locks -- tenants`.
fn spread_tenants(c: &mut Criterion) {
    const THREADS: usize = 8;
    for (store, _) in managers() {
        let backend = Backend::from_name(&store);
        let run = uuid::Uuid::new_v4().simple().to_string();
        let managers: Vec<LockManager> = (0..THREADS)
            .map(|i| backend.manager(&format!("bench-{run}-tenant-{i}")))
            .collect();
        let mut group = c.benchmark_group(format!("tenants/{store}"));
        group.sample_size(10);
        group.bench_function("8_threads_8_tenants(per grant)", |b| {
            let opts = AcquireLockOptionsBuilder::new("spread")
                .with_lease_duration_secs(30)
                .build();
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(THREADS as u64);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for m in &managers {
                        let opts = &opts;
                        scope.spawn(move || {
                            for _ in 0..per_thread {
                                let lock = m.acquire_lock(opts).unwrap();
                                m.release_lock(&lock.to_release_options()).unwrap();
                            }
                        });
                    }
                });
                // `iters` grants in all (rounded up per thread): wall time per grant.
                start.elapsed()
            })
        });
        group.finish();
    }
}

/// How long a hand-off's holder keeps the mutex after the last waiter found it busy.
const HANDOFF_HOLD: Duration = Duration::from_millis(5);

/// Hand-off: from a holder's `release_lock` returning to the next `acquire_lock` returning,
/// while 1 or 8 threads of the same manager already wait. Criterion's time per iteration is
/// the mean hand-off (the holds are not counted). The same protocol as `db-locks bench`'s
/// `handoff` (see src/bin/db-locks/bench.rs), with this file's short backoff (1 to 20 ms).
fn handoff(c: &mut Criterion) {
    for (store, m) in managers() {
        let mut group = c.benchmark_group(format!("handoff/{store}"));
        group.sample_size(10);
        let key = format!("bench-handoff-{}", uuid::Uuid::new_v4().simple());
        m.release_lock(
            &m.acquire_lock(&opts_for(&key))
                .unwrap()
                .to_release_options(),
        )
        .unwrap();
        group.bench_function("raw_round_trip(get_mutex)", |b| {
            b.iter(|| m.get_mutex(&key).unwrap())
        });
        for waiters in [1usize, 8] {
            group.bench_with_input(
                BenchmarkId::new("release_to_grant", waiters),
                &waiters,
                |b, &waiters| b.iter_custom(|iters| handoffs(&m, &key, waiters, iters)),
            );
        }
        group.finish();
    }
}

fn opts_for(key: &str) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_secs(30)
        .build()
}

/// What the threads of [`handoffs`] share.
#[derive(Default)]
struct Turns {
    /// Threads that found the mutex busy and wait for it.
    waiting: usize,
    /// Grants so far.
    grants: u64,
    /// The current hand-off's two ends; whichever comes second adds the sample.
    released_at: Option<Instant>,
    granted_at: Option<Instant>,
    /// Hand-offs still to discard, hand-offs still to measure, and the measured total.
    warm_up: u64,
    left: u64,
    total: Duration,
}

impl Turns {
    fn end(&mut self, released: Option<Instant>, granted: Option<Instant>) {
        if released.is_some() {
            self.released_at = released;
        }
        if granted.is_some() {
            self.granted_at = granted;
        }
        if let (Some(r), Some(g)) = (self.released_at, self.granted_at) {
            self.released_at = None;
            self.granted_at = None;
            if self.warm_up > 0 {
                self.warm_up -= 1;
            } else if self.left > 0 {
                self.left -= 1;
                self.total += g.saturating_duration_since(r);
            }
        }
    }

    fn done(&self) -> bool {
        self.left == 0
    }
}

/// `waiters + 1` threads take turns on mutex `key`: one holds it until every other thread has
/// found it busy (then [`HANDOFF_HOLD`] more) and releases it; once someone else has it, the
/// releaser waits for it again. Returns the total of `iters` hand-offs, after `waiters + 1`
/// unmeasured ones.
fn handoffs(m: &LockManager, key: &str, waiters: usize, iters: u64) -> Duration {
    let opts = |wait: Duration| {
        AcquireLockOptionsBuilder::new(key)
            .with_lease_duration_secs(30)
            .with_wait_duration(wait)
            .build()
    };
    let (try_once, wait) = (opts(Duration::ZERO), opts(Duration::from_secs(120)));
    let turns = Mutex::new(Turns {
        warm_up: waiters as u64 + 1,
        left: iters,
        ..Turns::default()
    });
    let changed = Condvar::new();
    let first = m.acquire_lock(&wait).unwrap();
    std::thread::scope(|scope| {
        let mut first = Some(first);
        for _ in 0..=waiters {
            let mut held: Option<MutexLock> = first.take();
            let (turns, changed, try_once, wait) = (&turns, &changed, &try_once, &wait);
            scope.spawn(move || loop {
                let lock = match held.take() {
                    Some(lock) => lock,
                    None => {
                        if let Some(lock) = m.try_acquire_lock(try_once).unwrap() {
                            // Free only once the run is over.
                            assert!(turns.lock().unwrap().done(), "the mutex was free");
                            m.release_lock(&lock.to_release_options()).unwrap();
                            return;
                        }
                        turns.lock().unwrap().waiting += 1;
                        changed.notify_all();
                        let lock = m.acquire_lock(wait).unwrap();
                        let granted = Instant::now();
                        let mut t = turns.lock().unwrap();
                        t.waiting -= 1;
                        t.grants += 1;
                        t.end(None, Some(granted));
                        let done = t.done();
                        drop(t);
                        changed.notify_all();
                        if done {
                            m.release_lock(&lock.to_release_options()).unwrap();
                            return;
                        }
                        lock
                    }
                };
                let grants = {
                    let mut t = turns.lock().unwrap();
                    while t.waiting < waiters && !t.done() {
                        t = changed.wait(t).unwrap();
                    }
                    t.grants
                };
                if !turns.lock().unwrap().done() {
                    std::thread::sleep(HANDOFF_HOLD);
                }
                m.release_lock(&lock.to_release_options()).unwrap();
                let released = Instant::now();
                let mut t = turns.lock().unwrap();
                t.end(Some(released), None);
                changed.notify_all();
                while t.grants == grants && !t.done() {
                    t = changed.wait(t).unwrap();
                }
                if t.done() {
                    return;
                }
            });
        }
    });
    turns.into_inner().unwrap().total
}

/// A permit acquire + release for semaphores of growing size, and the busy answer of a try
/// on a full one: neither cost may grow with the size.
fn semaphore_size(c: &mut Criterion) {
    for (store, m) in managers() {
        let mut group = c.benchmark_group(format!("semaphore/{store}"));
        let sizes: &[i64] = if store == "dynamodb" {
            &[1, 100]
        } else {
            &[1, 100, 1_000, 10_000]
        };
        let baseline = format!("bench-sem-baseline-{}", uuid::Uuid::new_v4().simple());
        group.bench_function("raw_round_trip(get_mutex)", |b| {
            b.iter(|| m.get_mutex(&baseline).unwrap())
        });
        for &size in sizes {
            let key = format!("bench-sem-{size}-{}", uuid::Uuid::new_v4().simple());
            m.create_semaphore(
                &SemaphoreBuilder::new(&key, size)
                    .with_lease_duration_secs(30)
                    .build(),
            )
            .unwrap();
            let opts = Arc::new(
                AcquireLockOptionsBuilder::new(&key)
                    .with_requires_semaphore(true)
                    .build(),
            );
            group.bench_with_input(
                BenchmarkId::new("permit_acquire_and_release", size),
                &size,
                |b, _| {
                    b.iter(|| {
                        m.release_lock(&m.acquire_lock(&opts).unwrap().to_release_options())
                            .unwrap()
                    })
                },
            );
            // Every permit busy: a try must answer "busy" as cheaply at any size.
            let held: Vec<_> = (0..size)
                .map(|_| m.try_acquire_lock(&opts).unwrap().expect("a free permit"))
                .collect();
            let try_once = AcquireLockOptionsBuilder::new(&key)
                .with_requires_semaphore(true)
                .with_wait_duration(Duration::ZERO)
                .build();
            group.bench_with_input(BenchmarkId::new("permit_busy", size), &size, |b, _| {
                b.iter(|| assert!(m.try_acquire_lock(&try_once).unwrap().is_none()))
            });
            for permit in held {
                m.release_lock(&permit.to_release_options()).unwrap();
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = uncontended, contended, handoff, semaphore_size, spread_tenants
}
criterion_main!(benches);
