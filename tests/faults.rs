//! Faults at the store boundary (a wrapper that fails, loses replies, hangs or slows any
//! operation) and on the wire (a loopback TCP proxy that delays, stalls, cuts and resets the
//! connections to PostgreSQL, MariaDB, Redis and the DynamoDB-compatible server), and what a
//! guard (and `run`) must do under them:
//! * a lease is reported lost by its local deadline, and never after someone else got it;
//! * a fault shorter than the slack of the renewal schedule never costs the lease;
//! * `Drop` returns within the I/O timeout plus a small bound, whatever the store does;
//! * a grant or renewal whose reply was lost is settled, not orphaned or mistaken for a loss.
//!
//! Fault schedules are generated (`DB_LOCKS_FAULT_CASES` per store, default 3).
// The network half needs a networked store: a SQLite-only build leaves it unused.
#![cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "dynamodb"
    )),
    allow(dead_code)
)]

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use db_locks::{
    AcquireLockOptionsBuilder, LeaseGuard, LockManager, LockOptions, LocksConfig, PermitOptions,
    SemaphoreBuilder,
};
use proptest::prelude::*;

use support::proxy::{FaultProxy, Mode};
use support::{unique, Backend, Fault, FlakyStore, OpKind};

/// The I/O timeout of the faulty managers: hangs last up to it.
const IO_TIMEOUT: Duration = Duration::from_millis(600);
/// Leases of the guards under test: margin 150 ms, renewals every 450 ms, deadline 1.35 s
/// after a renewal was sent.
const LEASE: Duration = Duration::from_millis(1_500);
/// How late an observation may come (polling, a loaded machine).
const SLACK: Duration = Duration::from_millis(60);
/// How much longer than the I/O timeout `Drop` may take (the library allows 250 ms).
const DROP_BOUND: Duration = Duration::from_millis(400);

fn mutex_opts(key: &str, wait: Duration) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_lease_duration(LEASE)
        .with_wait_duration(wait)
        .build()
}

fn permit_opts(key: &str, wait: Duration) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_requires_semaphore(true)
        .with_lease_duration(LEASE)
        .with_wait_duration(wait)
        .build()
}

// ----- store-boundary faults: generated schedules --------------------------------------------

#[derive(Debug, Clone)]
enum Weather {
    /// Each renewal faults with this probability (percent), at most two in a row, hangs and
    /// delays up to 150 ms: the lease must survive.
    Transient { percent: u32, seed: u64 },
    /// From `after` on, every renewal and release faults (with kinds drawn from `seed`): the
    /// lease must be reported lost by its deadline, before anyone else gets it.
    Outage { after: Duration, seed: u64 },
}

#[derive(Debug, Clone)]
struct Schedule {
    permit: bool,
    weather: Weather,
    /// The first acquire attempt's fault (a lost reply must be settled).
    first_acquire: Option<Fault>,
    /// The release on `Drop` hangs this long (beyond the I/O timeout: `Drop` must not wait).
    release_hang: Duration,
}

fn fault_from(kind: u32, ms: u64) -> Fault {
    let d = Duration::from_millis(ms);
    match kind % 5 {
        0 => Fault::FailBefore,
        1 => Fault::LoseReply,
        2 => Fault::HangBefore(d),
        3 => Fault::HangAfter(d),
        _ => Fault::Slow(d),
    }
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let weather = prop_oneof![
        (10u32..60, any::<u64>()).prop_map(|(percent, seed)| Weather::Transient { percent, seed }),
        (300u64..1_500, any::<u64>()).prop_map(|(ms, seed)| Weather::Outage {
            after: Duration::from_millis(ms),
            seed
        }),
    ];
    let first_acquire = prop::option::of(prop_oneof![
        Just(Fault::FailBefore),
        Just(Fault::LoseReply),
        Just(Fault::HangAfter(Duration::from_millis(200))),
    ]);
    (any::<bool>(), weather, first_acquire, 0u64..3).prop_map(
        |(permit, weather, first_acquire, hang)| Schedule {
            permit,
            weather,
            first_acquire,
            release_hang: IO_TIMEOUT * (hang as u32 + 1),
        },
    )
}

/// A small deterministic generator (the schedule's seed drives the faults).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Faults injected per kind, over a store's schedules.
type Tally = parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>;

fn run_schedule(b: Backend, s: &Schedule, tally: &Tally) -> Result<(), String> {
    let flaky = FlakyStore::new(b.store());
    let outcome = run_schedule_on(b, s, &flaky);
    let mut tally = tally.lock();
    for (kind, n) in flaky.injected.lock().iter() {
        *tally.entry(kind).or_default() += n;
    }
    outcome
}

fn run_schedule_on(b: Backend, s: &Schedule, flaky: &Arc<FlakyStore>) -> Result<(), String> {
    let tenant = unique("t-faults");
    let key = unique("faulty");
    let m = b.manager_with(&tenant, flaky.clone(), |c| {
        c.io_timeout = IO_TIMEOUT;
    });
    let referee = b.manager_with(&tenant, b.store(), |c| {
        c.dynamodb_trust_expiry_with_skew = Some(Duration::from_millis(100));
    });
    if s.permit {
        m.create_semaphore(&SemaphoreBuilder::new(&key, 1).build())
            .map_err(|e| format!("create semaphore: {e:?}"))?;
    }

    // The grant: its first attempt may fail, lose its reply, or hang.
    let mut first = s.first_acquire;
    flaky.inject(move |kind| match kind {
        OpKind::Acquire => first.take(),
        _ => None,
    });
    let wait = Duration::from_secs(5);
    let guard = if s.permit {
        let permit = m
            .try_acquire_permit_for(&key, wait, &PermitOptions::new().lease(LEASE))
            .map_err(|e| format!("acquire_permit: {e:?}"))?
            .ok_or("permit not granted")?;
        let busy = referee.get_semaphore(&key).unwrap().unwrap().busy_count;
        if busy != 1 {
            return Err(format!("{busy} permits busy after one grant: an orphan"));
        }
        LeaseGuard::from(permit)
    } else {
        let guard = m
            .try_lock_for(&key, wait, &LockOptions::new().lease(LEASE))
            .map_err(|e| format!("lock: {e:?}"))?
            .ok_or("lock not granted")?;
        let stored = referee.get_mutex(&key).unwrap().unwrap();
        if stored.version != guard.record().version {
            return Err("the store holds another version than the guard's: an orphan".into());
        }
        LeaseGuard::from(guard)
    };
    let lost_signal = guard.lost_signal();

    // The weather.
    let started = Instant::now();
    match s.weather.clone() {
        Weather::Transient { percent, seed } => {
            let mut dice = Dice(seed);
            let mut in_a_row = 0;
            flaky.inject(move |kind| {
                if kind != OpKind::Renew {
                    return None;
                }
                if in_a_row >= 2 || dice.next() % 100 >= u64::from(percent) {
                    in_a_row = 0;
                    return None;
                }
                in_a_row += 1;
                Some(fault_from(dice.next() as u32, dice.next() % 150))
            });
        }
        Weather::Outage { after, seed } => {
            let mut dice = Dice(seed);
            let from = started + after;
            flaky.inject(move |kind| {
                if !matches!(kind, OpKind::Renew | OpKind::Release) || Instant::now() < from {
                    return None;
                }
                let hang = IO_TIMEOUT.as_millis() as u64;
                Some(match dice.next() % 4 {
                    0 => Fault::FailBefore,
                    1 => Fault::LoseReply,
                    2 => Fault::HangBefore(Duration::from_millis(dice.next() % hang)),
                    _ => Fault::HangAfter(Duration::from_millis(dice.next() % hang)),
                })
            });
        }
    }

    // Watch the guard, and let a referee (no faults) try to take the lock meanwhile.
    let run_for = Duration::from_millis(3_200);
    let stop = AtomicBool::new(false);
    let mut lost_at = None;
    let mut last_deadline = guard.local_deadline();
    let mut referee_got: Option<(Instant, Instant)> = None;
    thread::scope(|scope| {
        let referee_thread = scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let got = if s.permit {
                    referee
                        .try_acquire_lock(&permit_opts(&key, Duration::ZERO))
                        .map(|g| g.is_some())
                } else {
                    referee
                        .try_acquire_lock(&mutex_opts(&key, Duration::ZERO))
                        .map(|g| g.is_some())
                };
                if got.unwrap_or(false) {
                    return Some((sent, Instant::now()));
                }
                thread::sleep(Duration::from_millis(20));
            }
            None
        });
        while started.elapsed() < run_for {
            if lost_at.is_none() {
                if guard.is_held() {
                    last_deadline = guard.local_deadline();
                }
                match lost_signal.recv_timeout(Duration::from_millis(5)) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    _ => lost_at = Some(Instant::now()),
                }
            } else {
                thread::sleep(Duration::from_millis(5));
            }
        }
        stop.store(true, Ordering::SeqCst);
        referee_got = referee_thread.join().unwrap();
    });

    let outage = matches!(s.weather, Weather::Outage { .. });
    match (lost_at, outage) {
        (Some(at), false) => {
            return Err(format!(
                "lost under transient faults, {:?} after the start",
                at - started
            ))
        }
        (None, true) => return Err("an outage of the whole run did not end the lease".into()),
        (Some(at), true) if at > last_deadline + SLACK => {
            return Err(format!(
                "the loss was signalled {:?} after the deadline",
                at - last_deadline
            ))
        }
        _ => {}
    }
    if let Some((_, got)) = referee_got {
        match lost_at {
            Some(at) if at <= got + SLACK => {}
            _ => {
                return Err(format!(
                    "someone else got the lock {:?} after the start while the guard held it \
                     (lost at {:?})",
                    got - started,
                    lost_at.map(|at| at - started)
                ))
            }
        }
    }

    // Drop under a hanging release: bounded.
    let hang = s.release_hang;
    flaky.inject(move |kind| (kind == OpKind::Release).then_some(Fault::HangBefore(hang)));
    let dropping = Instant::now();
    drop(guard);
    let took = dropping.elapsed();
    flaky.stop_injecting();
    if took > IO_TIMEOUT + DROP_BOUND {
        return Err(format!(
            "Drop took {took:?} with a {IO_TIMEOUT:?} I/O timeout"
        ));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("DB_LOCKS_FAULT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn store_faults(b: Backend) {
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let tally = Tally::default();
    let schedules = AtomicU64::new(0);
    if let Err(e) = runner.run(&schedule(), |s| {
        schedules.fetch_add(1, Ordering::Relaxed);
        run_schedule(b, &s, &tally).map_err(TestCaseError::fail)
    }) {
        panic!("{} store: {e}", b.name());
    }
    println!(
        "{}: {} fault schedules, faults injected: {:?}",
        b.name(),
        schedules.load(Ordering::Relaxed),
        tally.lock()
    );
}

// ----- network faults through the proxy --------------------------------------------------------

/// The store's server address and a config for a manager that reaches it through `proxy`.
fn through(b: Backend, proxy_port: u16, tenant: &str) -> LocksConfig {
    let mut config = b.config(tenant);
    config.io_timeout = Duration::from_millis(IO_TIMEOUT.as_millis() as u64 * 2);
    config.pool_size = 4;
    let swap = |url: &str| {
        let mut parsed = url::Url::parse(url).unwrap();
        parsed.set_port(Some(proxy_port)).unwrap();
        parsed.to_string()
    };
    match b {
        Backend::Postgres | Backend::Mysql => {
            config.database_url = Some(swap(config.database_url.as_deref().unwrap()))
        }
        Backend::Redis => config.redis_url = swap(&config.redis_url),
        Backend::DynamoDb => {
            config.dynamodb_endpoint = Some(swap(config.dynamodb_endpoint.as_deref().unwrap()))
        }
        Backend::Sqlite => unreachable!("SQLite has no network"),
        other => unreachable!("network faults are tested on one plain server, not {other:?}"),
    }
    config
}

fn server_addr(b: Backend) -> std::net::SocketAddr {
    let config = b.config("addr");
    let url = match b {
        Backend::Postgres | Backend::Mysql => config.database_url.unwrap(),
        Backend::Redis => config.redis_url,
        Backend::DynamoDb => config.dynamodb_endpoint.unwrap(),
        Backend::Sqlite => unreachable!(),
        other => unreachable!("network faults are tested on one plain server, not {other:?}"),
    };
    let parsed = url::Url::parse(&url).unwrap();
    format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port_or_known_default().unwrap()
    )
    .parse()
    .unwrap()
}

fn proxied_manager(b: Backend, proxy: &FaultProxy, tenant: &str) -> LockManager {
    b.store(); // sets the test credentials for DynamoDB
    LockManager::connect(&through(b, proxy.port(), tenant)).expect("connects through the proxy")
}

/// A server that stops answering (the proxy stalls): the guard reports the loss by its
/// deadline, nobody else gets the lock before that, and `Drop` is bounded.
fn stalled_server(b: Backend) {
    let proxy = FaultProxy::start(server_addr(b));
    let tenant = unique("t-stall");
    let key = unique("stalled");
    let m = proxied_manager(b, &proxy, &tenant);
    let io_timeout = m.config().io_timeout;
    let guard = m
        .try_lock(&key, &LockOptions::new().lease(LEASE))
        .unwrap()
        .expect("free");
    let lost = guard.lost_signal();
    thread::sleep(Duration::from_millis(200));
    proxy.set(Mode::Stall);
    let deadline = guard.local_deadline() + Duration::from_millis(450); // at most one more renewal
    let referee = b.manager_with(&tenant, b.store(), |c| {
        c.dynamodb_trust_expiry_with_skew = Some(Duration::from_millis(100));
    });
    let fired = lost.recv_timeout(Duration::from_secs(10));
    let lost_at = Instant::now();
    assert!(
        !matches!(fired, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        "no loss signal while the server is stalled"
    );
    assert!(
        lost_at <= deadline + SLACK,
        "loss signalled {:?} after the deadline",
        lost_at - deadline
    );
    let got = referee
        .acquire_lock(&mutex_opts(&key, Duration::from_secs(10)))
        .expect("the lock is free once its lease ends");
    assert!(
        Instant::now() >= lost_at,
        "taken before the loss was signalled"
    );
    let started = Instant::now();
    drop(guard);
    let drop_took = started.elapsed();
    assert!(
        drop_took <= io_timeout + DROP_BOUND,
        "Drop took {drop_took:?} with a stalled server"
    );
    println!(
        "{}: server stalled; loss signalled {:?} before the latest possible deadline; Drop took \
         {drop_took:?} (I/O timeout {io_timeout:?})",
        b.name(),
        deadline.saturating_duration_since(lost_at)
    );
    proxy.set(Mode::Pass);
    referee.release_lock(&got.to_release_options()).unwrap();
}

/// Connections cut (FIN) and reset (RST) again and again, and a slow network: the guard keeps
/// its lease throughout (each failed renewal is retried on a new connection in time).
fn cut_reset_and_slow_connections(b: Backend) {
    let proxy = FaultProxy::start(server_addr(b));
    let tenant = unique("t-cut");
    let key = unique("cut");
    let m = proxied_manager(b, &proxy, &tenant);
    let guard = m
        .lock(
            &key,
            &LockOptions::new().lease(Duration::from_millis(3_000)),
        )
        .unwrap();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        thread::sleep(Duration::from_millis(250));
        if round % 2 == 0 {
            proxy.cut();
        } else {
            proxy.reset();
        }
        round += 1;
        assert!(guard.is_held(), "lost after {round} cut/reset rounds");
    }
    // 20 ms per chunk each way: a 40 ms round trip, and every connection has to be opened
    // again after the cuts (MariaDB's handshake and statements take about 20 exchanges).
    proxy.set(Mode::Delay(Duration::from_millis(20)));
    thread::sleep(Duration::from_millis(2_500));
    assert!(guard.is_held(), "lost on a slow network");
    proxy.set(Mode::Pass);
    println!(
        "{}: {round} connection cuts and resets, then a slow network: the lease held",
        b.name()
    );
    guard.release().expect("released after the faults");
    let referee = b.manager(&tenant);
    assert!(referee
        .try_acquire_lock(&mutex_opts(&key, Duration::ZERO))
        .unwrap()
        .is_some());
}

/// `run` over a stalled server: the command is stopped (SIGTERM) by the lease's deadline, and
/// db-locks exits 3.
#[cfg(feature = "cli")]
fn run_over_a_stalled_server(b: Backend) {
    use std::process::{Command, Stdio};
    let proxy = FaultProxy::start(server_addr(b));
    let tenant = unique("t-run-stall");
    let config = through(b, proxy.port(), &tenant);
    let dir = tempfile::tempdir().unwrap();
    let (marker, stopped_marker) = (dir.path().join("started"), dir.path().join("stopped"));
    let settings = dir.path().join("db-locks.toml");
    std::fs::write(&settings, "io_timeout_ms = 1200\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_db-locks"));
    cmd.arg("-c").arg(&settings);
    cmd.env_remove("DATABASE_URL").env_remove("REDIS_URL");
    for (k, v) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ] {
        cmd.env(k, v);
    }
    match b {
        Backend::Postgres | Backend::Mysql => {
            cmd.args([
                "rdb",
                "--database-url",
                config.database_url.as_deref().unwrap(),
            ]);
        }
        Backend::Redis => {
            cmd.args(["redis", "--redis-url", &config.redis_url]);
        }
        Backend::DynamoDb => {
            cmd.args([
                "ddb",
                "--dynamodb-endpoint",
                config.dynamodb_endpoint.as_deref().unwrap(),
            ]);
        }
        Backend::Sqlite => unreachable!(),
        other => unreachable!("network faults are tested on one plain server, not {other:?}"),
    }
    cmd.args([
        "-t",
        &tenant,
        "run",
        "-k",
        "stalled-run",
        "-l",
        "2",
        "--kill-after",
        "5",
        "--",
    ])
    .args([
        "sh",
        "-c",
        &format!(
            "trap 'touch {}; exit 143' TERM; touch {}; sleep 30 & wait",
            stopped_marker.display(),
            marker.display()
        ),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < until, "the command never started");
        thread::sleep(Duration::from_millis(10));
    }
    let stalled = Instant::now();
    proxy.set(Mode::Stall);
    let mut stopped = None;
    let status = loop {
        if stopped.is_none() && stopped_marker.exists() {
            stopped = Some(stalled.elapsed());
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(15),
            "run never stopped"
        );
        thread::sleep(Duration::from_millis(5));
    };
    let exited = stalled.elapsed();
    proxy.set(Mode::Pass);
    assert_eq!(status.code(), Some(3), "{status:?}");
    // Lease 2 s: the deadline is 1.8 s after the last renewal was sent, which was before the
    // stall; SIGTERM comes by then.
    let stopped = stopped.expect("the command got SIGTERM");
    assert!(
        stopped <= Duration::from_millis(1_800 + 300),
        "the command was stopped {stopped:?} after the stall"
    );
    // db-locks then tries to release (the server does not answer) for at most the I/O
    // timeout, and exits 3.
    assert!(
        exited <= stopped + Duration::from_millis(1_200) + DROP_BOUND,
        "db-locks exited {exited:?} after the stall, the command {stopped:?}"
    );
}

/// Round trips of one acquire, one renewal and one release, on a warm connection: the
/// one-round-trip rule (MySQL and MariaDB read a grant or a renewal back: no `RETURNING` that
/// diesel can use; DynamoDB sends an HTTP request's headers and body apart).
fn round_trips_per_cycle(b: Backend) -> u64 {
    match b {
        Backend::Mysql => 5,
        Backend::DynamoDb => 6,
        _ => 3,
    }
}

/// Counts what the client sends for acquire, renew and release cycles through the proxy: no
/// probe per checkout, no read before a write.
fn each_operation_is_one_round_trip(b: Backend) {
    let proxy = FaultProxy::start(server_addr(b));
    let tenant = unique("t-round-trips");
    let key = unique("round-trips");
    let m = proxied_manager(b, &proxy, &tenant);
    let opts = AcquireLockOptionsBuilder::new(&key)
        .with_lease_duration(Duration::from_secs(30))
        .with_wait_duration(Duration::ZERO)
        .build();
    let cycle = || {
        let lock = m.acquire_lock(&opts).unwrap();
        let renew = db_locks::SendHeartbeatOptionsBuilder::new(&key, &lock.version).build();
        let lock = m.send_heartbeat(&renew).unwrap();
        m.release_lock(&lock.to_release_options()).unwrap();
    };
    cycle(); // statements prepared, connection warm
    let cycles = 20;
    let before = proxy.client_writes();
    for _ in 0..cycles {
        cycle();
    }
    let sent = proxy.client_writes() - before;
    let expected = cycles * round_trips_per_cycle(b);
    assert!(
        sent <= expected + cycles / 4,
        "{}: {sent} requests for {cycles} cycles of acquire, renew (keeping its lease) and \
         release; expected {expected}",
        b.name()
    );
}

/// Every pooled connection dies at once (a server restart, a failover): the first request
/// fails, the others find their connections suspect and probe them instead of failing one
/// request per dead connection.
fn a_reset_pool_fails_one_request_at_most(b: Backend) {
    let proxy = FaultProxy::start(server_addr(b));
    let tenant = unique("t-reset-pool");
    let m = proxied_manager(b, &proxy, &tenant);
    // Fill the pool: several threads at once each hold a connection.
    thread::scope(|s| {
        for i in 0..4 {
            let m = &m;
            s.spawn(move || {
                for _ in 0..5 {
                    m.get_mutex(&format!("fill-{i}")).unwrap();
                }
            });
        }
    });
    proxy.reset();
    let failures = (0..20)
        .filter(|i| m.get_mutex(&format!("after-{i}")).is_err())
        .count();
    assert!(
        failures <= 1,
        "{}: {failures} of 20 requests failed after the connections were reset",
        b.name()
    );
}

macro_rules! store_tests {
    ($store:ident, $backend:expr, network: $network:tt) => {
        mod $store {
            use super::*;
            #[test]
            fn guards_under_store_faults() {
                store_faults($backend);
            }
            store_tests!(@network $backend, $network);
        }
    };
    (@network $backend:expr, true) => {
        #[test]
        fn stalled_server() {
            super::stalled_server($backend);
        }
        #[test]
        fn cut_reset_and_slow_connections() {
            super::cut_reset_and_slow_connections($backend);
        }
        #[test]
        fn each_operation_is_one_round_trip() {
            super::each_operation_is_one_round_trip($backend);
        }
        #[test]
        fn a_reset_pool_fails_one_request_at_most() {
            super::a_reset_pool_fails_one_request_at_most($backend);
        }
        #[cfg(feature = "cli")]
        #[test]
        fn run_over_a_stalled_server() {
            super::run_over_a_stalled_server($backend);
        }
    };
    (@network $backend:expr, false) => {};
}

#[cfg(feature = "sqlite")]
store_tests!(sqlite, Backend::Sqlite, network: false);
#[cfg(feature = "postgres")]
store_tests!(postgres, Backend::Postgres, network: true);
#[cfg(feature = "mysql")]
store_tests!(mysql, Backend::Mysql, network: true);
#[cfg(feature = "redis")]
store_tests!(redis, Backend::Redis, network: true);
#[cfg(feature = "dynamodb")]
store_tests!(dynamodb, Backend::DynamoDb, network: true);
