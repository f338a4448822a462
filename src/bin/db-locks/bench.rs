//! `bench`: the quick, command-line counterpart of `benches/locks.rs`.
//!
//! Every latency is measured next to `round_trip` (`get_mutex`: one primary-key read through
//! the same pool) and also given as a ratio to it, measured in the same run: machines are
//! noisy, ratios travel better than microseconds. On PostgreSQL and Redis the same run also
//! measures what a user would pick instead of db-locks (`baseline.rs`).
//!
//! Everything here uses the record API (`acquire_lock` / `release_lock`), except
//! `guard_cycle`, which measures the guard API.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use db_locks::prometheus::Registry;
use db_locks::{
    validate_duration, validate_key, validate_semaphore_size, AcquireLockOptions,
    AcquireLockOptionsBuilder, LockError, LockManager, LockOptions, LocksConfig, MutexLock,
    SemaphoreBuilder,
};
use parking_lot::{Condvar, Mutex};

use crate::args::BenchArgs;
use crate::baseline::{self, Baseline};
use crate::Exit;

/// Lease of every lock the benchmark takes: long enough never to run out during a run.
const LEASE_SECS: u64 = 30;
/// How long a contending thread or a hand-off waiter may wait for one grant before the run
/// fails.
const CONTENDED_WAIT_SECS: u64 = 120;
/// Unmeasured operations of each kind before measuring (connections opened, caches warm).
const WARM_UP: u64 = 5;
/// Most threads any one measurement starts.
pub const MAX_THREADS: u64 = 256;

/// The keys of one run: the prefix and a random suffix, so runs never share a key.
pub struct Keys {
    /// A private mutex: round_trip, acquire_release, heartbeat and guard_cycle.
    mutex: String,
    /// The semaphore of permit_cycle.
    semaphore: String,
    /// The mutex the contending threads share.
    contended: String,
    /// The mutex handed off between waiters.
    handoff: String,
    /// The base of the baselines' keys (their own namespaces: advisory lock ids, Redis keys
    /// outside db-locks' records).
    pub baseline: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let base = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        Keys {
            mutex: base.clone(),
            semaphore: format!("{base}-sem"),
            contended: format!("{base}-contended"),
            handoff: format!("{base}-handoff"),
            baseline: format!("{base}-baseline"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.mutex,
            &self.semaphore,
            &self.contended,
            &self.handoff,
            &self.baseline,
        ]
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
    let count = |what: &str, n: u64, min: u64, max: u64| {
        if (min..=max).contains(&n) {
            Ok(())
        } else {
            Err(LockError::Validation(format!(
                "{what} must be between {min} and {max}, not {n}"
            )))
        }
    };
    count("--threads", args.threads, 1, MAX_THREADS)?;
    for &n in &args.threads_sweep {
        count("each --threads-sweep count", n, 1, MAX_THREADS)?;
    }
    if args.handoff_waiters.is_empty() {
        return Err(LockError::Validation(
            "--handoff-waiters must name at least one number of waiters".into(),
        ));
    }
    for &n in &args.handoff_waiters {
        count("each --handoff-waiters count", n, 1, MAX_THREADS - 1)?;
    }
    validate_duration("--contended-secs", args.contended_secs, false)?;
    validate_duration("--handoff-hold", args.handoff_hold, false)?;
    validate_semaphore_size(args.semaphore_size)?;
    Keys::new(&args.key_prefix)
        .all()
        .into_iter()
        .try_for_each(validate_key)
}

/// Latencies of one operation, in microseconds.
pub struct Stats {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        assert!(!samples.is_empty(), "statistics of no samples");
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        // Nearest rank: the smallest sample with at least p of them at or below it.
        let rank = |p: f64| {
            let i = (p * samples.len() as f64).ceil() as usize;
            us(samples[i.clamp(1, samples.len()) - 1])
        };
        Stats {
            samples: samples.len() as u64,
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

/// One time-boxed contended run: `threads` threads taking turns on one mutex.
pub struct ContendedRun {
    pub threads: u64,
    /// The length of the box, in seconds.
    pub secs: f64,
    /// Grants returned within the box, by thread.
    pub per_thread: Vec<u64>,
    /// Acquire attempts (granted, busy or failed) and grants the manager counted in its
    /// registry from the start of the run to its end (grants just after the box included).
    pub attempts: u64,
    pub counted_grants: u64,
}

impl ContendedRun {
    pub fn grants(&self) -> u64 {
        self.per_thread.iter().sum()
    }

    pub fn grants_per_sec(&self) -> f64 {
        self.grants() as f64 / self.secs
    }

    /// Wall-clock time per grant, in µs.
    pub fn mean_us_per_grant(&self) -> f64 {
        self.secs * 1e6 / self.grants().max(1) as f64
    }

    /// Each thread's share of the grants: min, mean, max.
    pub fn shares(&self) -> (f64, f64, f64) {
        let total = self.grants().max(1) as f64;
        let shares: Vec<f64> = self.per_thread.iter().map(|&g| g as f64 / total).collect();
        let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
        let max = shares.iter().copied().fold(0.0, f64::max);
        (min, 1.0 / shares.len() as f64, max)
    }

    /// All acquire attempts per grant (1 when nobody ever found the mutex busy).
    pub fn requests_per_grant(&self) -> Option<f64> {
        (self.counted_grants > 0).then(|| self.attempts as f64 / self.counted_grants as f64)
    }
}

/// The contended runs: always 1 thread and `--threads`, plus the sweep's counts.
pub struct Contended {
    /// `--threads`.
    pub threads: u64,
    /// By thread count, ascending.
    pub runs: Vec<ContendedRun>,
}

impl Contended {
    pub fn run(&self, threads: u64) -> &ContendedRun {
        self.runs
            .iter()
            .find(|r| r.threads == threads)
            .expect("every run asked for was made")
    }

    /// The `--threads` run.
    pub fn main(&self) -> &ContendedRun {
        self.run(self.threads)
    }

    /// The 1-thread run: the rate every other run is compared with.
    pub fn single(&self) -> &ContendedRun {
        self.run(1)
    }
}

/// How the waiters of a hand-off reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Threads of one process: clones of one manager.
    Threads,
    /// Managers of separate `LockManager::connect` calls, as separate processes would have.
    Processes,
}

impl Sharing {
    pub fn name(self) -> &'static str {
        match self {
            Sharing::Threads => "threads",
            Sharing::Processes => "processes",
        }
    }
}

/// One hand-off setting, while `waiters` waiters were already waiting.
pub struct Handoff {
    pub sharing: Sharing,
    pub waiters: u64,
    pub latency: HandoffLatency,
}

/// The latency of hand-offs, taken two ways.
pub struct HandoffLatency {
    /// From the release call returning to the next grant returning. A grant that returned
    /// before the release call did counts as 0.
    pub from_return: Stats,
    /// From the release call starting to the next grant returning: never 0, and what ratios
    /// between stores and baselines compare (a store that wakes its waiter itself, such as
    /// PostgreSQL's advisory locks, often answers the waiter before the releaser).
    pub from_call: Stats,
    /// Samples in which the grant returned before the release call did.
    pub early: u64,
}

/// One hand-off's instants: the release call's start and return, the grant's return.
#[derive(Debug, Clone, Copy)]
pub struct HandoffTimes {
    pub release_called: Instant,
    pub released: Instant,
    pub granted: Instant,
}

/// Collects hand-off samples.
#[derive(Default)]
pub struct HandoffSamples {
    from_return: Vec<Duration>,
    from_call: Vec<Duration>,
    early: u64,
}

impl HandoffSamples {
    pub fn with_capacity(n: u64) -> HandoffSamples {
        HandoffSamples {
            from_return: Vec::with_capacity(n as usize),
            from_call: Vec::with_capacity(n as usize),
            early: 0,
        }
    }

    pub fn push(&mut self, t: HandoffTimes) {
        if t.granted < t.released {
            self.early += 1;
        }
        self.from_return
            .push(t.granted.saturating_duration_since(t.released));
        self.from_call
            .push(t.granted.saturating_duration_since(t.release_called));
    }

    pub fn len(&self) -> u64 {
        self.from_return.len() as u64
    }

    pub fn stats(self) -> HandoffLatency {
        HandoffLatency {
            from_return: Stats::of(self.from_return),
            from_call: Stats::of(self.from_call),
            early: self.early,
        }
    }
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
    pub handoff_hold: Duration,
    pub handoff: Vec<Handoff>,
    /// Why the `processes` hand-offs were not measured, if they were not.
    pub processes_skipped: Option<String>,
    pub contended: Contended,
    /// `None` on stores without one.
    pub baseline: Option<Baseline>,
}

/// Runs `op` `warm_up` times unmeasured, then `n` times measured.
pub fn measure<E>(warm_up: u64, n: u64, mut op: impl FnMut() -> Result<(), E>) -> Result<Stats, E> {
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
pub fn run(manager: &LockManager, config: &LocksConfig, args: &BenchArgs) -> Result<Report, Exit> {
    let keys = Keys::new(&args.key_prefix);
    let measured = measure_all(manager, config, &keys, args);
    let cleaned = clean_up(manager, &keys);
    let report = measured?;
    cleaned?;
    Ok(report)
}

fn measure_all(
    manager: &LockManager,
    config: &LocksConfig,
    keys: &Keys,
    args: &BenchArgs,
) -> Result<Report, Exit> {
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
    let heartbeat = measure(WARM_UP, n, || -> Result<(), LockError> {
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

    // Hand-off: threads of this manager, then managers of their own (one connect each).
    let most_waiters = *args
        .handoff_waiters
        .iter()
        .max()
        .expect("checked: not empty");
    let mut handoff = Vec::new();
    for &waiters in &args.handoff_waiters {
        let managers = vec![m.clone(); waiters as usize + 1];
        handoff.push(handoff_setting(
            Sharing::Threads,
            &managers,
            &keys.handoff,
            n,
            args.handoff_hold,
        )?);
    }
    let others = (0..=most_waiters)
        .map(|_| LockManager::connect(config))
        .collect::<Result<Vec<_>, _>>()?;
    // The threads left the hand-off mutex behind: a connect that cannot see it has a store of
    // its own (an in-memory SQLite database), and no waiter of it would ever wait.
    let mut processes_skipped = None;
    for other in &others {
        if other.get_mutex(&keys.handoff)?.is_none() {
            processes_skipped = Some(
                "separate connects do not share this store (an in-memory database?)".to_owned(),
            );
            break;
        }
    }
    if processes_skipped.is_none() {
        for &waiters in &args.handoff_waiters {
            handoff.push(handoff_setting(
                Sharing::Processes,
                &others[..waiters as usize + 1],
                &keys.handoff,
                n,
                args.handoff_hold,
            )?);
        }
    }

    // Contended: 1 thread first, then --threads and the sweep, ascending.
    let counts: BTreeSet<u64> = [1, args.threads]
        .into_iter()
        .chain(args.threads_sweep.iter().copied())
        .collect();
    let mut runs = Vec::new();
    for threads in counts {
        runs.push(contended(m, &keys.contended, threads, args.contended_secs)?);
    }
    let contended = Contended {
        threads: args.threads,
        runs,
    };

    let baseline = baseline::measure(config, &keys.baseline, &keys.mutex, n, args.handoff_hold)?;

    Ok(Report {
        iterations: n,
        semaphore_size: args.semaphore_size,
        round_trip,
        acquire_release,
        heartbeat,
        guard_cycle,
        permit_cycle,
        handoff_hold: args.handoff_hold,
        handoff,
        processes_skipped,
        contended,
        baseline,
    })
}

fn release(manager: &LockManager, lock: &MutexLock) -> Result<(), LockError> {
    manager.release_lock(&lock.to_release_options())
}

// ----- hand-off ------------------------------------------------------------------------------

/// What the threads of one hand-off setting share.
#[derive(Default)]
struct Turns {
    /// Threads that found the mutex busy and are waiting for it.
    waiting: u64,
    /// Grants so far.
    grants: u64,
    /// The current hand-off's two ends (the release call's start and return, the grant's
    /// return): whichever comes second makes the sample.
    released_at: Option<(Instant, Instant)>,
    granted_at: Option<Instant>,
    /// Hand-offs left to discard before samples are kept.
    warm_up: u64,
    samples: HandoffSamples,
    /// Enough samples, or an error: every thread ends as soon as it can.
    stop: bool,
}

impl Turns {
    /// Records one end of the current hand-off; with both ends, the sample.
    fn end(&mut self, released: Option<(Instant, Instant)>, granted: Option<Instant>, wanted: u64) {
        if released.is_some() {
            self.released_at = released;
        }
        if granted.is_some() {
            self.granted_at = granted;
        }
        if let (Some((called, released)), Some(granted)) = (self.released_at, self.granted_at) {
            self.released_at = None;
            self.granted_at = None;
            if self.warm_up > 0 {
                self.warm_up -= 1;
            } else if !self.stop {
                self.samples.push(HandoffTimes {
                    release_called: called,
                    released,
                    granted,
                });
                if self.samples.len() >= wanted {
                    self.stop = true;
                }
            }
        }
    }
}

/// Measures `n` hand-offs of mutex `key` between `managers.len()` threads, one on each
/// manager, that take turns: one holds the mutex while all the others wait for it. The holder
/// keeps it until every other thread has found it busy (a try-once answered busy, after which
/// the thread calls `acquire_lock` with a long wait) and then for `hold` more, so each waiter
/// is inside its wait loop (an attempt made, backing off) when the mutex is released. It then
/// releases it and, once someone else has been granted it, joins the waiters again: a thread
/// never competes for the release it made. A sample runs from the release call returning
/// (on the releasing thread) to the grant returning (on the new holder's thread). The first
/// `max(5, threads)` hand-offs are not kept.
fn handoff_setting(
    sharing: Sharing,
    managers: &[LockManager],
    key: &str,
    n: u64,
    hold: Duration,
) -> Result<Handoff, Exit> {
    let threads = managers.len() as u64;
    let waiters = threads - 1;
    let turns = Mutex::new(Turns {
        warm_up: WARM_UP.max(threads),
        samples: HandoffSamples::with_capacity(n),
        ..Turns::default()
    });
    let changed = Condvar::new();
    let first = managers[0].acquire_lock(
        &AcquireLockOptionsBuilder::new(key)
            .with_lease_duration_secs(LEASE_SECS)
            .with_wait_duration_secs(CONTENDED_WAIT_SECS)
            .build(),
    )?;
    let errors: Vec<LockError> = std::thread::scope(|scope| {
        let mut workers = Vec::new();
        let mut first = Some(first);
        for (i, m) in managers.iter().enumerate() {
            let held = first.take();
            let (turns, changed) = (&turns, &changed);
            let spawned = std::thread::Builder::new()
                .name(format!("handoff-{i}"))
                .spawn_scoped(scope, move || {
                    let result = take_turns(m, key, held, waiters, n, hold, turns, changed);
                    if result.is_err() {
                        turns.lock().stop = true;
                        changed.notify_all();
                    }
                    result
                });
            match spawned {
                Ok(worker) => workers.push(worker),
                Err(e) => {
                    turns.lock().stop = true;
                    changed.notify_all();
                    return vec![LockError::Store(format!(
                        "cannot start hand-off thread {} of {threads}: {e}",
                        i + 1
                    ))];
                }
            }
        }
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(LockError::Store("a hand-off thread panicked".into())),
            })
            .collect()
    });
    if let Some(e) = errors.into_iter().next() {
        return Err(e.into());
    }
    let turns = turns.into_inner();
    Ok(Handoff {
        sharing,
        waiters,
        latency: turns.samples.stats(),
    })
}

/// One thread of a hand-off setting; `held`: the mutex, granted before the threads started.
#[allow(clippy::too_many_arguments)]
fn take_turns(
    m: &LockManager,
    key: &str,
    mut held: Option<MutexLock>,
    waiters: u64,
    n: u64,
    hold: Duration,
    turns: &Mutex<Turns>,
    changed: &Condvar,
) -> Result<(), LockError> {
    let try_once = AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_secs(LEASE_SECS)
        .with_wait_duration(Duration::ZERO)
        .build();
    let wait = AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_secs(LEASE_SECS)
        .with_wait_duration_secs(CONTENDED_WAIT_SECS)
        .build();
    loop {
        let lock = match held.take() {
            Some(lock) => lock,
            None => {
                // Join the waiters: the mutex must be held by someone else now.
                if let Some(lock) = m.try_acquire_lock(&try_once)? {
                    release(m, &lock)?;
                    if turns.lock().stop {
                        return Ok(());
                    }
                    return Err(LockError::Store(format!(
                        "the hand-off mutex `{key}` was free while it should have been held"
                    )));
                }
                turns.lock().waiting += 1;
                changed.notify_all();
                let lock = m.acquire_lock(&wait)?;
                let granted_at = Instant::now();
                let mut t = turns.lock();
                t.waiting -= 1;
                t.grants += 1;
                t.end(None, Some(granted_at), n);
                let stop = t.stop;
                drop(t);
                changed.notify_all();
                if stop {
                    return release(m, &lock);
                }
                lock
            }
        };
        // The holder: wait until every other thread waits, then hold a little longer.
        let grants = {
            let mut t = turns.lock();
            while t.waiting < waiters && !t.stop {
                changed.wait(&mut t);
            }
            if t.stop {
                drop(t);
                return release(m, &lock);
            }
            t.grants
        };
        std::thread::sleep(hold);
        let release_called = Instant::now();
        release(m, &lock)?;
        let released_at = Instant::now();
        let mut t = turns.lock();
        t.end(Some((release_called, released_at)), None, n);
        changed.notify_all();
        // Rejoin only once another thread has been granted it.
        while t.grants == grants && !t.stop {
            changed.wait(&mut t);
        }
        if t.stop {
            return Ok(());
        }
    }
}

// ----- contended -----------------------------------------------------------------------------

/// `db_locks_operations_total{op="acquire_mutex"}` in `registry`: (all attempts, grants).
fn acquire_counts(registry: &Registry) -> (u64, u64) {
    let mut attempts = 0.0;
    let mut granted = 0.0;
    for family in registry.gather() {
        if family.name() != "db_locks_operations_total" {
            continue;
        }
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
            };
            if label("op").as_deref() != Some("acquire_mutex") {
                continue;
            }
            let value = metric.get_counter().get_value();
            match label("outcome").as_deref() {
                Some("granted") => {
                    granted += value;
                    attempts += value;
                }
                Some("busy") | Some("error") => attempts += value,
                _ => {}
            }
        }
    }
    (attempts as u64, granted as u64)
}

/// `threads` threads loop acquire + release on one mutex for `secs`, each waiting while it is
/// busy, at most until the end of the box. Each thread takes one unmeasured grant first
/// (opening its connection), then all start together. A grant counts if it returned within
/// the box.
fn contended(
    manager: &LockManager,
    key: &str,
    threads: u64,
    secs: Duration,
) -> Result<ContendedRun, Exit> {
    let warmed = Arc::new(Barrier::new(threads as usize + 1));
    let go = Arc::new(Barrier::new(threads as usize + 1));
    let deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let warm_opts = AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_secs(LEASE_SECS)
        .with_wait_duration_secs(CONTENDED_WAIT_SECS)
        .build();
    let mut workers = Vec::new();
    for i in 0..threads {
        let (m, warmed, go, deadline, warm_opts) = (
            manager.clone(),
            warmed.clone(),
            go.clone(),
            deadline.clone(),
            warm_opts.clone(),
        );
        let key = key.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || -> Result<u64, LockError> {
                let warm = m
                    .acquire_lock(&warm_opts)
                    .and_then(|lock| release(&m, &lock));
                warmed.wait();
                go.wait();
                warm?;
                let deadline = *deadline.get().expect("set before the start");
                let mut grants = 0;
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(grants);
                    }
                    let opts = AcquireLockOptionsBuilder::new(&key)
                        .with_lease_duration_secs(LEASE_SECS)
                        .with_wait_duration(deadline - now)
                        .build();
                    let lock = match m.acquire_lock(&opts) {
                        Ok(lock) => lock,
                        // Busy until the end of the box.
                        Err(LockError::NotGranted { .. }) => return Ok(grants),
                        Err(e) => return Err(e),
                    };
                    if Instant::now() <= deadline {
                        grants += 1;
                    }
                    release(&m, &lock)?;
                }
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
    warmed.wait();
    let before = acquire_counts(manager.registry());
    let _ = deadline.set(Instant::now() + secs);
    go.wait();
    let mut per_thread = Vec::with_capacity(workers.len());
    let mut first_error = None;
    for worker in workers {
        match worker.join() {
            Ok(Ok(grants)) => per_thread.push(grants),
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
    let after = acquire_counts(manager.registry());
    Ok(ContendedRun {
        threads,
        secs: secs.as_secs_f64(),
        per_thread,
        attempts: after.0.saturating_sub(before.0),
        counted_grants: after.1.saturating_sub(before.1),
    })
}

// ----- clean-up ------------------------------------------------------------------------------

/// Deletes every key of the run that exists: held leases are ended by their current
/// version, so a run that failed half-way leaves nothing behind either.
fn clean_up(manager: &LockManager, keys: &Keys) -> Result<(), Exit> {
    let mut first_error: Option<LockError> = None;
    let mut note = |r: Result<(), LockError>| {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    };
    for key in [&keys.mutex, &keys.contended, &keys.handoff] {
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
