//! Torture: several processes with several threads each run critical sections on two mutexes
//! and a semaphore of two permits, through the real store, while this test kills holders
//! (SIGKILL, then starts a replacement) and freezes them (SIGSTOP past their lease, then
//! SIGCONT).
//!
//! The referee is outside the store: a fenced resource, one file under an exclusive file
//! lock, that every critical section writes to on entry and on exit with its fencing token,
//! and that refuses a token lower than the highest it has accepted for that lock (or slot).
//! Every event goes to one append-only log, in the order the resource saw it, together with
//! this test's kills, freezes and thaws. Afterwards the log is checked:
//! * critical sections the resource accepted on entry and exit never overlap on a mutex, and
//!   never more than `max_size` are open at once on the semaphore;
//! * a raw overlap (one holder entered while another was still inside) is allowed only when
//!   the earlier holder had been frozen or killed, or its guard had reported the lease lost,
//!   and then the resource must have refused its late exit: fencing caught it;
//! * tokens accepted per mutex (and per slot) strictly increase.
//!
//! Slow: run by `scripts/test-slow.sh`. `DB_LOCKS_TORTURE_SECS` sets the length per store.

// The resource is guarded by `File::lock` (flock: the kernel drops it when a worker holding it
// is killed). It is newer than the library's minimum Rust version; only this test uses it.
#![allow(clippy::incompatible_msrv)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use db_locks::{LeaseGuard, LockOptions, PermitOptions, SemaphoreBuilder};

use support::{unique, Backend};

const WORKER_ENV: &str = "DB_LOCKS_TORTURE_WORKER";
const PROCESSES: usize = 3;
const THREADS: usize = 2;
const MUTEXES: usize = 2;
const PERMITS: i64 = 2;
const LEASE: Duration = Duration::from_millis(700);

// ----- the fenced resource ---------------------------------------------------------------------

/// The protected resource, shared by every process: `state` (highest token accepted per
/// name, one `name token` line each) and `log`, both changed only under the lock of `lock`.
struct Resource {
    dir: PathBuf,
}

/// Appends `line` in one `write`: `writeln!` on a `File` writes each piece of its format
/// separately, and a writer killed (SIGKILL) between two pieces left half a line in the log
/// (seen once in CI: the referee could not parse a token).
fn append_line(log: &mut File, line: &str) {
    log.write_all(format!("{line}\n").as_bytes()).unwrap();
}

impl Resource {
    fn locked<T>(&self, f: impl FnOnce(&mut BTreeMap<String, i64>, &mut File) -> T) -> T {
        let lock = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("lock"))
            .unwrap();
        lock.lock().unwrap();
        let text = std::fs::read_to_string(self.dir.join("state")).unwrap_or_default();
        let mut state: BTreeMap<String, i64> = text
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(name, token)| (name.to_owned(), token.parse().unwrap()))
            .collect();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let out = f(&mut state, &mut log);
        let text: String = state
            .iter()
            .map(|(name, token)| format!("{name} {token}\n"))
            .collect();
        // Written aside and renamed into place: a writer killed halfway through leaves the
        // old state whole, never an empty or half-written one.
        let aside = self.dir.join(format!("state.{}", std::process::id()));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, self.dir.join("state")).unwrap();
        let _ = lock.unlock();
        out
    }

    /// A fenced write: accepted if `token` is at least the highest accepted for `name`.
    /// `held` (whether the writer's guard still holds its lease) is asked under the
    /// resource's lock, so that the log orders it with every other write: asked before, a
    /// writer that then waited for the lock (or was frozen) would log a stale `true` after
    /// others had entered on its expired lease.
    fn write(
        &self,
        event: &str,
        name: &str,
        token: i64,
        who: &str,
        held: impl FnOnce() -> bool,
    ) -> bool {
        self.locked(|state, log| {
            let held = held();
            let highest = state.get(name).copied().unwrap_or(i64::MIN);
            let accepted = token >= highest;
            if accepted {
                state.insert(name.to_owned(), token);
            }
            let verdict = if accepted { "ok" } else { "fenced" };
            append_line(
                log,
                &format!("{event} {verdict} {name} {token} {who} {held}"),
            );
            accepted
        })
    }

    /// A harness event (`kill`, `freeze`, `thaw` with a pid).
    fn note(&self, event: &str, pid: u32) {
        self.locked(|_, log| append_line(log, &format!("{event} {pid}")));
    }
}

// ----- the workers -----------------------------------------------------------------------------

fn spawn_worker(spec: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "torture_worker_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, spec)
        .env("DB_LOCKS_TEST_SQLITE_PATH", support::sqlite_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker process")
}

/// Not a test of its own: the body of the worker processes the torture tests start.
/// Spec: `backend|tenant|key prefix|resource dir|until (unix ms)`.
#[test]
#[ignore = "entry point of the worker processes started by the torture tests"]
fn torture_worker_entry() {
    let spec = std::env::var(WORKER_ENV).expect("started by a torture test");
    let parts: Vec<&str> = spec.split('|').collect();
    let backend = Backend::from_name(parts[0]);
    let (tenant, prefix) = (parts[1].to_owned(), parts[2].to_owned());
    let resource = Resource {
        dir: PathBuf::from(parts[3]),
    };
    let until: u128 = parts[4].parse().unwrap();
    let pid = std::process::id();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (tenant, prefix, resource) = (&tenant, &prefix, &resource);
            scope.spawn(move || {
                let manager = backend.manager_with(tenant, backend.store(), |c| {
                    c.dynamodb_trust_expiry_with_skew = Some(Duration::from_millis(100));
                });
                let who = format!("{pid}/{thread}");
                let mut n = 0u64;
                while unix_ms() < until {
                    n += 1;
                    let target = (n as usize + thread) % (MUTEXES + 1);
                    let permit = target == MUTEXES;
                    let key = if permit {
                        format!("{prefix}-sem")
                    } else {
                        format!("{prefix}-m{target}")
                    };
                    let wait = Duration::from_secs(5);
                    let guard: LeaseGuard = if permit {
                        let opts = PermitOptions::new().lease(LEASE);
                        match manager.try_acquire_permit_for(&key, wait, &opts) {
                            Ok(Some(p)) => p.into(),
                            _ => continue,
                        }
                    } else {
                        let opts = LockOptions::new().lease(LEASE);
                        match manager.try_lock_for(&key, wait, &opts) {
                            Ok(Some(g)) => g.into(),
                            _ => continue,
                        }
                    };
                    // The name the resource knows it by (a permit: its slot).
                    let (name, token) = (guard.key().to_owned(), guard.fencing_token());
                    if resource.write("enter", &name, token, &who, || guard.is_held()) {
                        std::thread::sleep(Duration::from_millis(n % 4));
                        // The guard may have lost the lease meanwhile (a freeze, a starved
                        // heartbeat): the exit says whether it still holds it, and the
                        // resource judges by the token.
                        resource.write("exit", &name, token, &who, || guard.is_held());
                    }
                    drop(guard);
                }
            });
        }
    });
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

// ----- the referee -----------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Verdict {
    critical_sections: u64,
    fenced: u64,
    refused_entries: u64,
    explained_overlaps: u64,
    violations: Vec<String>,
    kills: u64,
    freezes: u64,
}

/// One critical section, as the log tells it.
#[derive(Debug, Clone, Default)]
struct Section {
    group: String,
    token: i64,
    pid: u32,
    /// Its holder was frozen or killed while inside.
    interrupted: bool,
    /// How it left: (accepted by the resource, the guard still held the lease). `None`:
    /// killed inside.
    exit: Option<(bool, bool)>,
}

impl Section {
    /// It held its lease, by its own guard's word, from entry to exit, undisturbed.
    fn sound(&self) -> bool {
        !self.interrupted && matches!(self.exit, Some((_, true)))
    }
}

fn referee(log: &Path, semaphore_prefix: &str) -> Verdict {
    let mut v = Verdict::default();
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| {
        panic!("the resource logged nothing ({e}): no worker ever got a lock (see their output)")
    });
    let mut sections: Vec<Section> = Vec::new();
    // Sections inside, per group (a mutex, or the semaphore with all its slots).
    let mut inside: HashMap<String, Vec<usize>> = HashMap::new();
    let mut highest: HashMap<String, i64> = HashMap::new();
    // Each entry that found its group full: who entered, and who was inside.
    let mut crowded: Vec<(usize, Vec<usize>)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "kill" | "freeze" => {
                let pid: u32 = f[1].parse().unwrap();
                if f[0] == "kill" {
                    v.kills += 1;
                } else {
                    v.freezes += 1;
                }
                for holders in inside.values_mut() {
                    for &i in holders.iter() {
                        if sections[i].pid == pid {
                            sections[i].interrupted = true;
                        }
                    }
                    if f[0] == "kill" {
                        holders.retain(|&i| sections[i].pid != pid);
                    }
                }
            }
            "thaw" => {}
            "enter" | "exit" => {
                let accepted = f[1] == "ok";
                let (name, token) = (f[2], f[3].parse::<i64>().unwrap());
                let pid: u32 = f[4].split('/').next().unwrap().parse().unwrap();
                let held = f[5] == "true";
                let group = if name.starts_with(semaphore_prefix) {
                    semaphore_prefix
                } else {
                    name
                };
                let holders = inside.entry(group.to_owned()).or_default();
                if f[0] == "enter" {
                    if !accepted {
                        v.refused_entries += 1;
                        continue;
                    }
                    let last = highest.insert(name.to_owned(), token);
                    if last.is_some_and(|last| last >= token) {
                        v.violations
                            .push(format!("{name}: token {token} accepted after {last:?}"));
                    }
                    let limit = if group == semaphore_prefix {
                        PERMITS as usize
                    } else {
                        1
                    };
                    sections.push(Section {
                        group: group.to_owned(),
                        token,
                        pid,
                        ..Section::default()
                    });
                    let me = sections.len() - 1;
                    if holders.len() >= limit {
                        crowded.push((me, holders.clone()));
                    }
                    holders.push(me);
                } else if let Some(at) = holders
                    .iter()
                    .position(|&i| sections[i].token == token && sections[i].pid == pid)
                {
                    let i = holders.remove(at);
                    sections[i].exit = Some((accepted, held));
                    if accepted {
                        v.critical_sections += 1;
                    } else {
                        v.fenced += 1;
                    }
                }
            }
            other => panic!("unknown log line {other}: {line}"),
        }
    }
    // A crowded entry is explained if enough of those inside were not sound (frozen, killed,
    // or their guard had reported the lease lost by the time they left).
    for (entered, others) in crowded {
        let group = &sections[entered].group;
        let limit = if group == semaphore_prefix {
            PERMITS as usize
        } else {
            1
        };
        let sound: Vec<&Section> = others
            .iter()
            .map(|&i| &sections[i])
            .filter(|s| s.sound())
            .collect();
        if sound.len() >= limit {
            v.violations.push(format!(
                "{group}: token {} entered while {} holder(s) that kept their leases were inside: \
                 {sound:?}",
                sections[entered].token,
                sound.len()
            ));
        } else {
            v.explained_overlaps += 1;
            // Fencing must have caught every unsound holder that tried to leave after being
            // overtaken by a higher token on its own slot or mutex.
            for s in others.iter().map(|&i| &sections[i]) {
                if matches!(s.exit, Some((true, _)))
                    && s.token < sections[entered].token
                    && !s.sound()
                    && group != semaphore_prefix
                {
                    v.violations.push(format!(
                        "{group}: an overtaken holder's exit (token {}) was accepted",
                        s.token
                    ));
                }
            }
        }
    }
    v
}

// ----- the harness -----------------------------------------------------------------------------

fn torture(b: Backend) {
    let secs: u64 = std::env::var("DB_LOCKS_TORTURE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let tenant = unique("t-torture");
    let prefix = unique("tortured");
    let dir = tempfile::tempdir().unwrap();
    let resource = Resource {
        dir: dir.path().to_owned(),
    };
    b.manager(&tenant)
        .create_semaphore(&SemaphoreBuilder::new(format!("{prefix}-sem"), PERMITS).build())
        .unwrap();
    let until = unix_ms() + u128::from(secs) * 1000;
    let spec = format!(
        "{}|{tenant}|{prefix}|{}|{until}",
        b.name(),
        dir.path().display()
    );
    let mut workers: Vec<Child> = (0..PROCESSES).map(|_| spawn_worker(&spec)).collect();
    let mut dice = 0x9e3779b97f4a7c15u64;
    let mut roll = move |n: u64| {
        dice ^= dice << 13;
        dice ^= dice >> 7;
        dice ^= dice << 17;
        dice % n
    };
    let started = Instant::now();
    // Let the workers connect (and take their first locks) before the chaos starts.
    std::thread::sleep(Duration::from_secs(2));
    while unix_ms() + 1_500 < until {
        std::thread::sleep(Duration::from_millis(300 + roll(500)));
        let victim = roll(workers.len() as u64) as usize;
        let pid = workers[victim].id();
        if roll(3) == 0 {
            resource.note("kill", pid);
            let _ = workers[victim].kill();
            let _ = workers[victim].wait();
            workers[victim] = spawn_worker(&spec);
        } else {
            resource.note("freeze", pid);
            signal(pid, "STOP");
            std::thread::sleep(LEASE + Duration::from_millis(300 + roll(300)));
            signal(pid, "CONT");
            resource.note("thaw", pid);
        }
    }
    for mut w in workers {
        let _ = w.wait();
    }
    let v = referee(&dir.path().join("log"), &format!("{prefix}-sem"));
    println!(
        "{}: {} s, {} processes x {} threads: {} critical sections, {} refused entries, {} late \
         exits fenced, {} overlaps explained by a freeze or a lost lease, {} kills, {} freezes, \
         {} violations",
        b.name(),
        started.elapsed().as_secs(),
        PROCESSES,
        THREADS,
        v.critical_sections,
        v.refused_entries,
        v.fenced,
        v.explained_overlaps,
        v.kills,
        v.freezes,
        v.violations.len()
    );
    assert!(
        v.violations.is_empty(),
        "{}: {:#?}",
        b.name(),
        &v.violations[..v.violations.len().min(10)]
    );
    assert!(
        v.critical_sections > 50,
        "{}: barely any progress: {v:?}",
        b.name()
    );
    assert!(
        v.kills + v.freezes > 5,
        "{}: too little chaos: {v:?}",
        b.name()
    );
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

#[cfg(feature = "sqlite")]
#[test]
#[ignore = "slow: run by scripts/test-slow.sh"]
fn sqlite() {
    torture(Backend::Sqlite);
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "slow: run by scripts/test-slow.sh"]
fn postgres() {
    torture(Backend::Postgres);
}

#[cfg(feature = "mysql")]
#[test]
#[ignore = "slow: run by scripts/test-slow.sh"]
fn mysql() {
    torture(Backend::Mysql);
}

#[cfg(feature = "redis")]
#[test]
#[ignore = "slow: run by scripts/test-slow.sh"]
fn redis() {
    torture(Backend::Redis);
}

#[cfg(feature = "dynamodb")]
#[test]
#[ignore = "slow: run by scripts/test-slow.sh"]
fn dynamodb() {
    torture(Backend::DynamoDb);
}
