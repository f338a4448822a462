//! `bench`: the quick, command-line counterpart of `benches/locks.rs`.
//!
//! Every latency is measured next to `round_trip` (`get_mutex`: one primary-key read through
//! the same pool) and also given as a ratio to it, measured in the same run: machines are
//! noisy, ratios travel better than microseconds.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use db_locks::{
    validate_key, validate_semaphore_size, AcquireLockOptions, AcquireLockOptionsBuilder,
    LockError, LockManager, LockOptions, SemaphoreBuilder,
};

use crate::args::BenchArgs;
use crate::Exit;

/// Lease of every lock the benchmark takes: long enough never to run out during a run.
const LEASE_SECS: u64 = 30;
/// How long a contending thread may wait for one grant before the run fails.
const CONTENDED_WAIT_SECS: u64 = 120;
/// Unmeasured operations of each kind before measuring (connections opened, caches warm).
const WARM_UP: u64 = 5;

/// The keys of one run: the prefix and a random suffix, so runs never share a key.
struct Keys {
    /// A private mutex: round_trip, acquire_release, heartbeat and guard_cycle.
    mutex: String,
    /// The semaphore of permit_cycle.
    semaphore: String,
    /// The mutex the contending threads share.
    contended: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let base = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        Keys {
            mutex: base.clone(),
            semaphore: format!("{base}-sem"),
            contended: format!("{base}-contended"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.mutex, &self.semaphore, &self.contended]
    }
}

/// Checks the arguments before connecting: bad input is exit 2 even when the store is down.
pub fn check(args: &BenchArgs) -> Result<(), LockError> {
    if args.iterations < 1 {
        return Err(LockError::Validation(
            "-n (iterations) must be at least 1".into(),
        ));
    }
    if args.key_prefix.is_empty() {
        return Err(LockError::Validation(
            "-k (key prefix) must not be empty".into(),
        ));
    }
    if args.threads < 1 {
        return Err(LockError::Validation("--threads must be at least 1".into()));
    }
    validate_semaphore_size(args.semaphore_size)?;
    Keys::new(&args.key_prefix)
        .all()
        .into_iter()
        .try_for_each(validate_key)
}

/// Latencies of one operation, in microseconds.
pub struct Stats {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        // Nearest rank: the smallest sample with at least p of them at or below it.
        let rank = |p: f64| {
            let i = (p * samples.len() as f64).ceil() as usize;
            us(samples[i.clamp(1, samples.len()) - 1])
        };
        Stats {
            mean_us: samples.iter().copied().map(us).sum::<f64>() / samples.len() as f64,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
        }
    }

    /// The ratio of the means.
    pub fn ratio_to(&self, base: &Stats) -> f64 {
        self.mean_us / base.mean_us
    }
}

/// The contended run.
pub struct Contended {
    pub threads: u64,
    pub grants: u64,
    pub grants_per_sec: f64,
    pub mean_us_per_grant: f64,
}

/// Everything one run measured.
pub struct Report {
    pub iterations: u64,
    pub semaphore_size: i64,
    pub round_trip: Stats,
    pub acquire_release: Stats,
    pub heartbeat: Stats,
    pub guard_cycle: Stats,
    pub permit_cycle: Stats,
    pub contended: Contended,
}

/// Runs `op` `warm_up` times unmeasured, then `n` times measured.
fn measure(
    warm_up: u64,
    n: u64,
    mut op: impl FnMut() -> Result<(), LockError>,
) -> Result<Stats, LockError> {
    for _ in 0..warm_up {
        op()?;
    }
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let started = Instant::now();
        op()?;
        samples.push(started.elapsed());
    }
    Ok(Stats::of(samples))
}

fn mutex_opts(key: &str) -> AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_secs(LEASE_SECS)
        .build()
}

/// Measures everything. The keys it creates are deleted at the end, also when a measurement
/// fails.
pub fn run(manager: &LockManager, args: &BenchArgs) -> Result<Report, Exit> {
    let keys = Keys::new(&args.key_prefix);
    let measured = measure_all(manager, &keys, args);
    let cleaned = clean_up(manager, &keys);
    let report = measured?;
    cleaned?;
    Ok(report)
}

fn measure_all(manager: &LockManager, keys: &Keys, args: &BenchArgs) -> Result<Report, Exit> {
    let n = args.iterations;
    let m = manager;
    let opts = mutex_opts(&keys.mutex);

    // The private mutex exists, free, from here on: round_trip reads it.
    let acquire_release = || -> Result<(), LockError> {
        let lock = m.acquire_lock(&opts)?;
        release(m, &lock)
    };
    acquire_release()?;
    let round_trip = measure(WARM_UP, n, || match m.get_mutex(&keys.mutex)? {
        Some(_) => Ok(()),
        None => Err(LockError::Store(format!(
            "the benchmark's mutex `{}` disappeared",
            keys.mutex
        ))),
    })?;
    let acquire_release = measure(WARM_UP, n, acquire_release)?;

    let mut lock = m.acquire_lock(&opts)?;
    let heartbeat = measure(WARM_UP, n, || {
        lock = m.send_heartbeat(&lock.to_heartbeat_options())?;
        Ok(())
    });
    release(m, &lock)?;
    let heartbeat = heartbeat?;

    let guard_opts = LockOptions::new().lease(Duration::from_secs(LEASE_SECS));
    let guard_cycle = measure(WARM_UP, n, || m.lock(&keys.mutex, &guard_opts)?.release())?;

    m.create_semaphore(
        &SemaphoreBuilder::new(&keys.semaphore, args.semaphore_size)
            .with_lease_duration_secs(LEASE_SECS)
            .build(),
    )?;
    let permit_opts = AcquireLockOptionsBuilder::new(&keys.semaphore)
        .with_requires_semaphore(true)
        .build();
    let permit_cycle = measure(WARM_UP, n, || {
        let permit = m.acquire_lock(&permit_opts)?;
        release(m, &permit)
    })?;

    let contended = contended(m, &keys.contended, args.threads, n)?;

    Ok(Report {
        iterations: n,
        semaphore_size: args.semaphore_size,
        round_trip,
        acquire_release,
        heartbeat,
        guard_cycle,
        permit_cycle,
        contended,
    })
}

fn release(manager: &LockManager, lock: &db_locks::MutexLock) -> Result<(), LockError> {
    manager.release_lock(&lock.to_release_options())
}

/// `threads` threads take turns on one mutex (acquire + release, waiting while it is busy),
/// `n` grants in all (rounded up to a multiple of `threads`). Each thread takes one
/// unmeasured grant first (opening its connection), then all start together. The run lasts
/// from the first thread's start to the last one's end, each taken on the thread itself: the
/// main thread may be scheduled only after the others are done.
fn contended(manager: &LockManager, key: &str, threads: u64, n: u64) -> Result<Contended, Exit> {
    let per_thread = n.div_ceil(threads);
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let opts = Arc::new(
        AcquireLockOptionsBuilder::new(key)
            .with_lease_duration_secs(LEASE_SECS)
            .with_wait_duration_secs(CONTENDED_WAIT_SECS)
            .build(),
    );
    let mut workers = Vec::new();
    for i in 0..threads {
        let (m, start, opts) = (manager.clone(), start.clone(), opts.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || -> Result<(Instant, Instant), LockError> {
                let cycle = || release(&m, &m.acquire_lock(&opts)?);
                let warmed = cycle();
                start.wait();
                let started = Instant::now();
                warmed?;
                (0..per_thread).try_for_each(|_| cycle())?;
                Ok((started, Instant::now()))
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                // Those already started wait at the barrier: this run cannot go on.
                return Err(Exit::other(format!(
                    "cannot start bench thread {} of {threads}: {e}",
                    i + 1
                )));
            }
        }
    }
    start.wait();
    let mut spans = Vec::with_capacity(workers.len());
    let mut first_error = None;
    for worker in workers {
        match worker.join() {
            Ok(Ok(span)) => spans.push(span),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(LockError::Store("a bench thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    let started = spans.iter().map(|s| s.0).min().expect("threads >= 1");
    let ended = spans.iter().map(|s| s.1).max().expect("threads >= 1");
    let elapsed = ended - started;
    let grants = per_thread * threads;
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(Contended {
        threads,
        grants,
        grants_per_sec: grants as f64 / secs,
        mean_us_per_grant: secs * 1e6 / grants as f64,
    })
}

/// Deletes every key of the run that exists: held leases are ended by their current
/// version, so a run that failed half-way leaves nothing behind either.
fn clean_up(manager: &LockManager, keys: &Keys) -> Result<(), Exit> {
    let mut first_error: Option<LockError> = None;
    let mut note = |r: Result<(), LockError>| {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    };
    for key in [&keys.mutex, &keys.contended] {
        note((|| {
            if let Some(lock) = manager.get_mutex(key)? {
                manager.delete_mutex(key, Some(&lock.version))?;
            }
            Ok(())
        })());
    }
    note((|| {
        let slots = match manager.get_semaphore_mutexes(&keys.semaphore) {
            Err(LockError::NotFound(_)) => return Ok(()),
            slots => slots?,
        };
        for slot in slots {
            if slot.locked {
                manager.release_lock(&slot.to_release_options())?;
            }
        }
        manager.delete_semaphore(&keys.semaphore)?;
        Ok(())
    })());
    match first_error {
        None => Ok(()),
        Some(e) => Err(Exit::other(format!(
            "cannot delete the benchmark's keys ({}*): {e}",
            keys.mutex
        ))),
    }
}
