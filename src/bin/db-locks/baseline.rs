//! `bench`'s baselines: what a user would pick instead of db-locks on the same server,
//! measured in the same run, so db-locks' figures can be given as ratios to them.
//!
//! * PostgreSQL: `pg_advisory_lock` / `pg_advisory_unlock` on plain sessions (diesel
//!   `PgConnection`s, no pool). The waiter of a hand-off blocks inside `pg_advisory_lock`;
//!   the server wakes it.
//! * Redis: `SET key value NX PX 30000` and a compare-and-delete script. Redis has no
//!   blocking lock, so the waiter of a hand-off polls `SET NX` every [`POLL`].
//!
//! Both also measure `raw_write`: one committed single-statement write by primary key through
//! the same client library (PostgreSQL: `UPDATE … RETURNING` of the benchmark's own mutex row,
//! on a plain session; Redis: `HSET`), the floor of any acquire or release. An uncontended
//! acquire + release is two writes: `raw_efficiency` = 2 × raw_write / acquire_release (p50s).
//!
//! Other stores have no baseline: [`measure`] answers `None`.

use std::time::Duration;

use db_locks::LocksConfig;
#[cfg(any(feature = "postgres", feature = "redis"))]
use db_locks::Provider;

use crate::bench::{HandoffLatency, Stats};
use crate::Exit;

/// Redis: how often a waiting client retries `SET NX`.
pub const POLL: Duration = Duration::from_millis(10);

/// Which baseline a store has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub enum BaselineKind {
    /// PostgreSQL session-level advisory locks.
    Advisory,
    /// Redis `SET NX PX` + compare-and-delete, waiters polling.
    SetNx,
}

impl BaselineKind {
    /// Its name in the JSON (`baseline.kind`).
    pub fn name(self) -> &'static str {
        match self {
            BaselineKind::Advisory => "pg_advisory_lock",
            BaselineKind::SetNx => "redis_set_nx",
        }
    }

    /// The field that gives a db-locks figure as a ratio to this baseline.
    pub fn ratio_field(self) -> &'static str {
        match self {
            BaselineKind::Advisory => "ratio_to_advisory",
            BaselineKind::SetNx => "ratio_to_set_nx",
        }
    }

    /// What its cycle and hand-off are, for the human output.
    pub fn description(self) -> String {
        match self {
            BaselineKind::Advisory => {
                "pg_advisory_lock + pg_advisory_unlock on one session; hand-off: a second \
                 session blocked in pg_advisory_lock"
                    .to_owned()
            }
            BaselineKind::SetNx => format!(
                "SET NX PX + compare-and-delete script; hand-off: the waiter polls SET NX every \
                 {} ms",
                POLL.as_millis()
            ),
        }
    }
}

/// One baseline's figures.
pub struct Baseline {
    pub kind: BaselineKind,
    /// Lock + unlock on one connection, uncontended.
    pub cycle: Stats,
    /// One committed single-statement write by primary key, through the same client.
    pub raw_write: Stats,
    /// From the holder's unlock (its return, and its start) to the waiter's lock returning.
    pub handoff: HandoffLatency,
    /// Redis: the waiter's poll period.
    pub poll: Option<Duration>,
}

/// The baseline of the store `config` names, measured `n` times (after a few unmeasured
/// rounds), with `key` naming what it locks and `mutex` the benchmark's own mutex (which must
/// exist: the raw writes touch its row); `None` for stores without one.
pub fn measure(
    config: &LocksConfig,
    key: &str,
    mutex: &str,
    n: u64,
    hold: Duration,
) -> Result<Option<Baseline>, Exit> {
    #[cfg(feature = "postgres")]
    if matches!(config.provider, Provider::Rdb) {
        if let Some(url) = config.database_url.as_deref().filter(|u| is_postgres(u)) {
            return advisory::measure(url, key, &config.tenant_id, mutex, n).map(Some);
        }
    }
    // One plain server only (the baseline's client has none of the store's TLS settings).
    #[cfg(feature = "redis")]
    if matches!(config.provider, Provider::Redis) && config.redis_url.starts_with("redis://") {
        let key = format!("{}:bench:{key}", config.redis_key_prefix);
        return set_nx::measure(&config.redis_url, &key, n, hold).map(Some);
    }
    let _ = (config, key, mutex, n, hold);
    Ok(None)
}

/// Whether the rdb URL names PostgreSQL (as the library reads its scheme).
#[cfg(feature = "postgres")]
fn is_postgres(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        matches!(
            scheme.to_ascii_lowercase().as_str(),
            "postgres" | "postgresql"
        )
    })
}

/// Unmeasured rounds before measuring.
#[cfg(any(feature = "postgres", feature = "redis"))]
const WARM_UP: u64 = 5;

/// How long the holder waits for the waiter to be waiting before the run fails.
#[cfg(any(feature = "postgres", feature = "redis"))]
const WAITER_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(feature = "postgres")]
mod advisory {
    use std::hash::{Hash, Hasher};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use diesel::pg::PgConnection;
    use diesel::sql_types::{BigInt, Integer};
    use diesel::{
        Connection, ExpressionMethods, QueryDsl, QueryResult, QueryableByName, RunQueryDsl,
    };

    use super::{Baseline, BaselineKind, WAITER_TIMEOUT, WARM_UP};
    use crate::bench::{measure as measure_op, HandoffLatency, HandoffSamples, HandoffTimes};
    use crate::Exit;

    #[derive(QueryableByName)]
    struct Int {
        #[diesel(sql_type = Integer)]
        n: i32,
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    // Declared to diesel so that each statement stays prepared on the session (as the store's
    // own statements do): the baseline pays no parse and plan per run either.
    diesel::define_sql_function! {
        /// Returns `void`; `execute` never reads it, so any SQL type will do.
        fn pg_advisory_lock(key: BigInt) -> Bool;
    }
    diesel::define_sql_function! { fn pg_advisory_unlock(key: BigInt) -> Bool; }

    diesel::table! {
        /// The columns of the store's mutex table that the raw write touches.
        db_locks_mutexes (tenant_id, semaphore_key, mutex_key) {
            tenant_id -> Text,
            semaphore_key -> Text,
            mutex_key -> Text,
            fencing_token -> BigInt,
            updated_at_ms -> BigInt,
        }
    }

    fn lock(c: &mut PgConnection, id: i64) -> QueryResult<()> {
        diesel::select(pg_advisory_lock(id)).execute(c).map(drop)
    }

    fn unlock(c: &mut PgConnection, id: i64) -> QueryResult<()> {
        diesel::select(pg_advisory_unlock(id)).execute(c).map(drop)
    }

    /// Whether session `pid` waits for an advisory lock.
    fn waits(c: &mut PgConnection, pid: i32) -> QueryResult<bool> {
        let count: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_locks \
             WHERE locktype = 'advisory' AND NOT granted AND pid = $1",
        )
        .bind::<Integer, _>(pid)
        .get_result(c)?;
        Ok(count.n > 0)
    }

    fn failed(what: &str, e: impl std::fmt::Display) -> Exit {
        Exit::other(format!("baseline pg_advisory_lock: {what}: {e}"))
    }

    /// The benchmark's mutex row, written in place: a committed single-statement write
    /// (`UPDATE … RETURNING`, prepared once).
    fn raw_write(c: &mut PgConnection, tenant: &str, mutex: &str) -> QueryResult<()> {
        use db_locks_mutexes::dsl;
        diesel::update(dsl::db_locks_mutexes.find((tenant, "", mutex)))
            .set(dsl::updated_at_ms.eq(dsl::updated_at_ms + 1))
            .returning(dsl::fencing_token)
            .get_result::<i64>(c)
            .map(drop)
    }

    pub fn measure(
        url: &str,
        key: &str,
        tenant: &str,
        mutex: &str,
        n: u64,
    ) -> Result<Baseline, Exit> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let id = hasher.finish() as i64;
        let connect = || PgConnection::establish(url).map_err(|e| failed("cannot connect", e));
        let mut holder = connect()?;
        let mut waiter = connect()?;
        let waiter_pid = diesel::sql_query("SELECT pg_backend_pid() AS n")
            .get_result::<Int>(&mut waiter)
            .map_err(|e| failed("pg_backend_pid", e))?
            .n;

        let cycle = measure_op(WARM_UP, n, || {
            lock(&mut holder, id)?;
            unlock(&mut holder, id)
        })
        .map_err(|e| failed("lock + unlock", e))?;
        let raw_write = measure_op(WARM_UP, n, || raw_write(&mut holder, tenant, mutex))
            .map_err(|e| failed("raw write", e))?;

        // The waiter thread takes the lock whenever told to, and reports when it had it.
        let handoff = std::thread::scope(|scope| -> Result<HandoffLatency, Exit> {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (done_tx, done_rx) = mpsc::channel::<QueryResult<Instant>>();
            let mut waiter = waiter;
            scope.spawn(move || {
                for () in go_rx {
                    let granted = lock(&mut waiter, id).map(|()| Instant::now());
                    let granted = granted.and_then(|t| unlock(&mut waiter, id).map(|()| t));
                    let stop = granted.is_err();
                    if done_tx.send(granted).is_err() || stop {
                        return;
                    }
                }
            });
            // The holder session lives in this closure: if it fails, it is closed on the way
            // out, which frees a waiter blocked behind it, before the scope joins the thread.
            let mut holder = holder;
            let mut samples = HandoffSamples::with_capacity(n);
            for round in 0..WARM_UP + n {
                lock(&mut holder, id).map_err(|e| failed("lock", e))?;
                go_tx
                    .send(())
                    .map_err(|_| failed("the waiter", "it stopped"))?;
                let asked = Instant::now();
                while !waits(&mut holder, waiter_pid).map_err(|e| failed("pg_locks", e))? {
                    if let Ok(result) = done_rx.try_recv() {
                        return Err(match result {
                            Err(e) => failed("the waiter's lock", e),
                            Ok(_) => failed("the waiter", "granted a lock that was held"),
                        });
                    }
                    if asked.elapsed() > WAITER_TIMEOUT {
                        return Err(failed("the waiter", "never waited for the lock"));
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                let release_called = Instant::now();
                unlock(&mut holder, id).map_err(|e| failed("unlock", e))?;
                let released = Instant::now();
                let granted = done_rx
                    .recv_timeout(WAITER_TIMEOUT)
                    .map_err(|_| failed("the waiter", "was not granted the lock"))?
                    .map_err(|e| failed("the waiter's lock", e))?;
                if round >= WARM_UP {
                    samples.push(HandoffTimes {
                        release_called,
                        released,
                        granted,
                    });
                }
            }
            Ok(samples.stats())
        })?;
        Ok(Baseline {
            kind: BaselineKind::Advisory,
            cycle,
            raw_write,
            handoff,
            poll: None,
        })
    }
}

#[cfg(feature = "redis")]
mod set_nx {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use rand::Rng;
    use redis::{Connection, RedisResult, Script};

    use super::{Baseline, BaselineKind, POLL, WAITER_TIMEOUT, WARM_UP};
    use crate::bench::{measure as measure_op, HandoffLatency, HandoffSamples, HandoffTimes};
    use crate::Exit;

    /// Deletes the key only if it still holds the caller's value.
    const COMPARE_AND_DELETE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
        return redis.call('del', KEYS[1]) else return 0 end";

    /// `SET key value NX PX 30000`: whether it was set.
    fn try_lock(c: &mut Connection, key: &str, value: &str) -> RedisResult<bool> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query(c)?;
        Ok(reply.is_some())
    }

    fn unlock(c: &mut Connection, script: &Script, key: &str, value: &str) -> RedisResult<bool> {
        let deleted: i64 = script.key(key).arg(value).invoke(c)?;
        Ok(deleted == 1)
    }

    fn failed(what: &str, e: impl std::fmt::Display) -> Exit {
        Exit::other(format!("baseline redis SET NX: {what}: {e}"))
    }

    enum Waiter {
        /// Its first `SET NX` found the key set: it polls from now on.
        Polling,
        Granted(Instant),
        Failed(String),
    }

    pub fn measure(url: &str, key: &str, n: u64, hold: Duration) -> Result<Baseline, Exit> {
        let client = redis::Client::open(url).map_err(|e| failed("bad URL", e))?;
        let connect = || {
            client
                .get_connection()
                .map_err(|e| failed("cannot connect", e))
        };
        let mut holder = connect()?;
        let mut waiter = connect()?;
        let script = Script::new(COMPARE_AND_DELETE);
        let holder_value = format!("holder-{}", uuid::Uuid::new_v4().simple());
        let waiter_value = format!("waiter-{}", uuid::Uuid::new_v4().simple());

        let expect = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(failed(what, "the key was not in the expected state"))
            }
        };
        let cycle = measure_op(WARM_UP, n, || -> Result<(), Exit> {
            let set = try_lock(&mut holder, key, &holder_value).map_err(|e| failed("SET NX", e))?;
            expect(set, "SET NX")?;
            let deleted = unlock(&mut holder, &script, key, &holder_value)
                .map_err(|e| failed("compare-and-delete", e))?;
            expect(deleted, "compare-and-delete")
        })?;
        let raw_key = format!("{key}:raw");
        let raw_write = measure_op(WARM_UP, n, || -> Result<(), Exit> {
            redis::cmd("HSET")
                .arg(&raw_key)
                .arg("n")
                .arg(1)
                .query::<i64>(&mut holder)
                .map(drop)
                .map_err(|e| failed("raw write", e))
        })?;
        let _: RedisResult<i64> = redis::cmd("DEL").arg(&raw_key).query(&mut holder);

        let handoff = std::thread::scope(|scope| -> Result<HandoffLatency, Exit> {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (report_tx, report_rx) = mpsc::channel::<Waiter>();
            let (script, waiter_value) = (&script, &waiter_value);
            scope.spawn(move || {
                let mut round = || -> RedisResult<Instant> {
                    let mut first = true;
                    loop {
                        if try_lock(&mut waiter, key, waiter_value)? {
                            let granted = Instant::now();
                            unlock(&mut waiter, script, key, waiter_value)?;
                            return Ok(granted);
                        }
                        if std::mem::take(&mut first) {
                            let _ = report_tx.send(Waiter::Polling);
                        }
                        std::thread::sleep(POLL);
                    }
                };
                for () in go_rx {
                    let report = match round() {
                        Ok(granted) => Waiter::Granted(granted),
                        Err(e) => Waiter::Failed(e.to_string()),
                    };
                    let stop = matches!(report, Waiter::Failed(_));
                    if report_tx.send(report).is_err() || stop {
                        return;
                    }
                }
            });
            let next = |what: &str| -> Result<Waiter, Exit> {
                match report_rx.recv_timeout(WAITER_TIMEOUT) {
                    Ok(Waiter::Failed(e)) => Err(failed("the waiter", e)),
                    Ok(report) => Ok(report),
                    Err(_) => Err(failed("the waiter", what)),
                }
            };
            let mut samples = HandoffSamples::with_capacity(n);
            let mut rng = rand::rng();
            for round in 0..WARM_UP + n {
                let set =
                    try_lock(&mut holder, key, &holder_value).map_err(|e| failed("SET NX", e))?;
                expect(set, "SET NX")?;
                go_tx
                    .send(())
                    .map_err(|_| failed("the waiter", "it stopped"))?;
                match next("never polled")? {
                    Waiter::Polling => {}
                    _ => return Err(failed("the waiter", "was granted a key that was set")),
                }
                // Released at a random point of the waiter's poll period, as a holder that
                // knows nothing of its waiters would.
                let offset = rng.random_range(0..POLL.as_micros() as u64);
                std::thread::sleep(hold + Duration::from_micros(offset));
                let release_called = Instant::now();
                let deleted = unlock(&mut holder, script, key, &holder_value)
                    .map_err(|e| failed("compare-and-delete", e))?;
                let released = Instant::now();
                expect(deleted, "compare-and-delete")?;
                let Waiter::Granted(granted) = next("was not granted the key")? else {
                    return Err(failed("the waiter", "reported twice"));
                };
                if round >= WARM_UP {
                    samples.push(HandoffTimes {
                        release_called,
                        released,
                        granted,
                    });
                }
            }
            drop(go_tx);
            Ok(samples.stats())
        })?;
        Ok(Baseline {
            kind: BaselineKind::SetNx,
            cycle,
            raw_write,
            handoff,
            poll: Some(POLL),
        })
    }
}
