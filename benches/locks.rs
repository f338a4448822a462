//! Criterion benchmarks of db-locks against real stores.
//!
//! Every group carries its own baseline: `get_mutex`, one primary-key read through the same
//! pool, i.e. a raw round trip to the same server. Quote results as ratios to it, measured in
//! the same run: these machines are shared and noisy.
//!
//! Stores: `DB_LOCKS_BENCH_STORES=sqlite,postgres,mysql,redis,dynamodb` (default `sqlite`),
//! reached at the URLs the tests use (see tests/support/mod.rs), e.g.
//! `DB_LOCKS_BENCH_STORES=sqlite,postgres cargo bench --all-features --bench locks`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use db_locks::{AcquireLockOptionsBuilder, LockManager, LockOptions, SemaphoreBuilder};

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
    targets = uncontended, contended, semaphore_size
}
criterion_main!(benches);
