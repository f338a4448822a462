//! Generated operation sequences against every store, checked after every step against a
//! reference model of what the store may answer.
//!
//! Each case drives the record API and guards with a random sequence of operations over three
//! look-alike tenants, a dozen adversarial mutex keys and four semaphore keys: acquires (once,
//! and waiting), renewals with the right, a stale and a caller-named version (sent twice, as a
//! retry after a lost reply), releases, deletes, semaphore creation, growth, shrinking and
//! deletion, permits, data, delete-on-release, guards, invalid input, and sleeps across lease
//! ends (leases of 300–900 ms).
//!
//! The model knows when each lease was granted or renewed: it is *definitely live* until
//! `sent + lease - TOLERANCE` and *possibly live* until `received + lease + TOLERANCE` (plus,
//! on DynamoDB, its clock-skew bound). Near a lease end both answers are allowed; elsewhere
//! the store must answer as the model says. After every step the test also reads the store
//! back. What it checks:
//! * at most one live holder per mutex: a grant while another lease is definitely live fails;
//! * never more live permits than `max_size`, at any moment of a resize;
//! * fencing tokens strictly increase per mutex and per slot;
//! * nothing is visible, renewable or releasable across tenants or look-alike names (a busy
//!   answer for a name the model knows to be free is a collision);
//! * every error is of the expected kind (no store errors: nothing is injected here), and
//!   nothing panics.
//!
//! Cases: `DB_LOCKS_PROPTEST_CASES` (default 6 per store), so a long run is one command:
//! `DB_LOCKS_PROPTEST_CASES=2000 scripts/test-all.sh --test properties`. A failure shrinks to a
//! minimal sequence, prints it, and proptest records its seed in `proptest-regressions/`.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use db_locks::{
    AcquireLockOptionsBuilder, LockError, LockManager, LockOptions, MutexGuard, MutexLock,
    ReleaseLockOptionsBuilder, SemaphoreBuilder, SendHeartbeatOptionsBuilder,
};
use proptest::prelude::*;

use support::{unique, Backend};

/// How far the store's view of a lease end may be from the model's (scheduling, round trips).
const TOLERANCE: Duration = Duration::from_millis(150);
/// DynamoDB's clock-skew bound in these tests (takeover of an expired lease waits this long).
const DYNAMODB_SKEW: Duration = Duration::from_millis(100);

// ----- the operations ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Version {
    /// The version the store has.
    Current,
    /// One it had before (or, with no earlier one, a version it never had).
    Stale,
    /// A caller-named new version, sent twice: a retry after a lost reply.
    Named,
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        tenant: usize,
        key: usize,
        lease_ms: u64,
        wait: bool,
        data: bool,
        delete_on_release: bool,
    },
    Renew {
        handle: usize,
        version: Version,
        lease_ms: Option<u64>,
        data: bool,
    },
    Release {
        handle: usize,
        version: Version,
        delete: bool,
        data: bool,
    },
    DeleteMutex {
        tenant: usize,
        key: usize,
        with_version_of: Option<usize>,
    },
    PutSemaphore {
        tenant: usize,
        sem: usize,
        size: i64,
        lease_ms: u64,
    },
    AcquirePermit {
        tenant: usize,
        sem: usize,
        lease_ms: Option<u64>,
    },
    DeleteSemaphore {
        tenant: usize,
        sem: usize,
    },
    Lock {
        tenant: usize,
        key: usize,
    },
    DropGuard {
        guard: usize,
    },
    Invalid {
        which: usize,
    },
    Sleep {
        ms: u64,
    },
}

const TENANTS: usize = 3;
const KEYS: usize = 13;
const SEMS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let lease = 300u64..900;
    prop_oneof![
        6 => (0..TENANTS, 0..KEYS, lease.clone(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(tenant, key, lease_ms, wait, data, delete_on_release)| Op::Acquire {
                tenant, key, lease_ms, wait: wait && lease_ms < 600, data, delete_on_release
            }),
        4 => (any::<usize>(), prop_oneof![3 => Just(Version::Current), 1 => Just(Version::Stale), 1 => Just(Version::Named)],
              prop::option::of(lease.clone()), any::<bool>())
            .prop_map(|(handle, version, lease_ms, data)| Op::Renew { handle, version, lease_ms, data }),
        3 => (any::<usize>(), prop_oneof![4 => Just(Version::Current), 1 => Just(Version::Stale)], any::<bool>(), any::<bool>())
            .prop_map(|(handle, version, delete, data)| Op::Release { handle, version, delete, data }),
        1 => (0..TENANTS, 0..KEYS, prop::option::of(any::<usize>()))
            .prop_map(|(tenant, key, with_version_of)| Op::DeleteMutex { tenant, key, with_version_of }),
        3 => (0..TENANTS, 0..SEMS, 0i64..=4, lease.clone())
            .prop_map(|(tenant, sem, size, lease_ms)| Op::PutSemaphore { tenant, sem, size, lease_ms }),
        5 => (0..TENANTS, 0..SEMS, prop::option::of(lease.clone()))
            .prop_map(|(tenant, sem, lease_ms)| Op::AcquirePermit { tenant, sem, lease_ms }),
        1 => (0..TENANTS, 0..SEMS).prop_map(|(tenant, sem)| Op::DeleteSemaphore { tenant, sem }),
        1 => (0..TENANTS, 0..KEYS).prop_map(|(tenant, key)| Op::Lock { tenant, key }),
        1 => any::<usize>().prop_map(|guard| Op::DropGuard { guard }),
        1 => (0usize..5).prop_map(|which| Op::Invalid { which }),
        4 => (0u64..700).prop_map(|ms| Op::Sleep { ms }),
    ]
}

// ----- the names ---------------------------------------------------------------------------

/// Look-alike tenants, keys and semaphores: every one of them is a name of its own.
struct Names {
    tenants: Vec<String>,
    keys: Vec<String>,
    sems: Vec<String>,
}

impl Names {
    fn new() -> Names {
        let t = unique("pt");
        let s = "sem".to_owned();
        Names {
            tenants: vec![t.clone(), format!("{t} "), t.to_uppercase()],
            keys: vec![
                "k".into(),
                "k ".into(),
                " k".into(),
                "K".into(),
                "k\u{e9}".into(),
                "ke\u{301}".into(),
                "k:{x}".into(),
                "k%_'\"".into(),
                "k\u{a0}".into(),
                "\u{65e5}\u{672c}".into(),
                format!("k{}", "x".repeat(db_locks::MAX_KEY_LEN - 1)),
                format!("{s}_0"),
                s.clone(),
            ],
            sems: vec![
                s.clone(),
                format!("{s} "),
                s.to_uppercase(),
                format!("s{}", "y".repeat(db_locks::MAX_KEY_LEN - 1)),
            ],
        }
    }
}

// ----- the model ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Granted (it may have run out since: the clock says).
    Held,
    /// Released by its holder.
    Released,
    /// Ended by someone else: taken over, or its record deleted.
    Taken,
}

/// A lease the test holds through the record API (or a guard, `guard` set).
#[derive(Debug, Clone)]
struct Lease {
    tenant: usize,
    /// The mutex key, or the slot's key.
    name: String,
    semaphore: Option<usize>,
    version: String,
    earlier: Vec<String>,
    token: i64,
    sent: Instant,
    received: Instant,
    lease: Duration,
    state: State,
    /// A renewal was refused as run out: no later renewal may succeed.
    refused: bool,
    delete_on_release: bool,
    guard: bool,
}

/// Whose record a name is: (tenant, semaphore index or none, name).
type Id = (usize, Option<usize>, String);

struct Model {
    backend: Backend,
    leases: Vec<Lease>,
    /// Highest fencing token seen per mutex and per slot.
    /// (Leases are judged by when the store may have acted: "must have worked" at the latest
    /// moment of the request, "must have failed" at the earliest.)
    tokens: HashMap<Id, i64>,
    /// Mutex records known to exist, with their data.
    records: HashMap<(usize, usize), Option<String>>,
    /// Semaphores: (tenant, sem) -> (max_size, lease).
    semaphores: HashMap<(usize, usize), (i64, Duration)>,
    guards: Vec<(MutexGuard, usize)>,
    step: usize,
    names_counter: usize,
}

impl Model {
    fn slack(&self) -> Duration {
        match self.backend {
            Backend::DynamoDb => TOLERANCE + DYNAMODB_SKEW,
            _ => TOLERANCE,
        }
    }

    fn definitely_live(&self, l: &Lease, now: Instant) -> bool {
        l.state == State::Held && (l.guard || now + TOLERANCE < l.sent + l.lease)
    }

    fn possibly_live(&self, l: &Lease, now: Instant) -> bool {
        l.state == State::Held && (l.guard || now < l.received + l.lease + self.slack())
    }

    fn mutex_leases(&self, tenant: usize, name: &str) -> impl Iterator<Item = usize> + '_ {
        let name = name.to_owned();
        (0..self.leases.len()).filter(move |&i| {
            let l = &self.leases[i];
            l.tenant == tenant && l.semaphore.is_none() && l.name == name
        })
    }

    fn permit_leases(&self, tenant: usize, sem: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.leases.len()).filter(move |&i| {
            let l = &self.leases[i];
            l.tenant == tenant && l.semaphore == Some(sem)
        })
    }

    fn named_version(&mut self) -> String {
        self.names_counter += 1;
        format!("named-{}-{}", self.step, self.names_counter)
    }

    /// A grant: checks the token and that nobody else is definitely live, and ends the leases
    /// it took over.
    fn granted(
        &mut self,
        lock: &MutexLock,
        tenant: usize,
        semaphore: Option<usize>,
        sent: Instant,
        received: Instant,
    ) -> Result<usize, String> {
        let id: Id = (tenant, semaphore, lock.mutex_key.clone());
        let last = self.tokens.get(&id).copied().unwrap_or(i64::MIN);
        if lock.fencing_token <= last {
            return Err(format!(
                "fencing token of {id:?} went from {last} to {}",
                lock.fencing_token
            ));
        }
        self.tokens.insert(id, lock.fencing_token);
        let others: Vec<usize> = self
            .leases
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.tenant == tenant && l.semaphore == semaphore && l.name == lock.mutex_key
            })
            .map(|(i, _)| i)
            .collect();
        for i in others {
            // The grant was made at some point in [sent, received].
            if self.definitely_live(&self.leases[i], received) {
                return Err(format!(
                    "{:?} granted while lease {i} ({:?}) was definitely live",
                    lock.mutex_key, self.leases[i]
                ));
            }
            if self.leases[i].state == State::Held {
                self.leases[i].state = State::Taken;
            }
        }
        self.leases.push(Lease {
            tenant,
            name: lock.mutex_key.clone(),
            semaphore,
            version: lock.version.clone(),
            earlier: Vec::new(),
            token: lock.fencing_token,
            sent,
            received,
            lease: lock.lease_duration,
            state: State::Held,
            refused: false,
            delete_on_release: lock.delete_on_release,
            guard: false,
        });
        Ok(self.leases.len() - 1)
    }
}

/// Everything a case works with.
struct Case {
    names: Names,
    managers: Vec<LockManager>,
    model: Model,
}

fn expect_kind(what: &str, r: &LockError, ok: impl Fn(&LockError) -> bool) -> Result<(), String> {
    if ok(r) {
        Ok(())
    } else {
        Err(format!("{what}: unexpected error {r:?}"))
    }
}

impl Case {
    fn new(backend: Backend) -> Case {
        let names = Names::new();
        let managers = names
            .tenants
            .iter()
            .map(|t| {
                backend.manager_with(t, backend.store(), |c| {
                    c.dynamodb_trust_expiry_with_skew =
                        Some(Duration::from_millis(DYNAMODB_SKEW.as_millis() as u64));
                })
            })
            .collect();
        Case {
            names,
            managers,
            model: Model {
                backend,
                leases: Vec::new(),
                tokens: HashMap::new(),
                records: HashMap::new(),
                semaphores: HashMap::new(),
                guards: Vec::new(),
                step: 0,
                names_counter: 0,
            },
        }
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), String> {
        for (step, op) in ops.iter().enumerate() {
            self.model.step = step;
            self.apply(op)
                .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
            self.check()
                .map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
        }
        // Guards are released by Drop: the record is then free.
        for (guard, lease) in std::mem::take(&mut self.model.guards) {
            if !guard.is_held() {
                return Err(format!("guard {lease} lost its lease on a healthy store"));
            }
            guard
                .release()
                .map_err(|e| format!("guard release: {e:?}"))?;
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Acquire {
                tenant,
                key,
                lease_ms,
                wait,
                data,
                delete_on_release,
            } => self.acquire(tenant, key, lease_ms, wait, data, delete_on_release),
            Op::Renew {
                handle,
                version,
                lease_ms,
                data,
            } => self.renew(handle, version, lease_ms, data),
            Op::Release {
                handle,
                version,
                delete,
                data,
            } => self.release(handle, version, delete, data),
            Op::DeleteMutex {
                tenant,
                key,
                with_version_of,
            } => self.delete_mutex(tenant, key, with_version_of),
            Op::PutSemaphore {
                tenant,
                sem,
                size,
                lease_ms,
            } => self.put_semaphore(tenant, sem, size, lease_ms),
            Op::AcquirePermit {
                tenant,
                sem,
                lease_ms,
            } => self.acquire_permit(tenant, sem, lease_ms),
            Op::DeleteSemaphore { tenant, sem } => self.delete_semaphore(tenant, sem),
            Op::Lock { tenant, key } => self.lock(tenant, key),
            Op::DropGuard { guard } => self.drop_guard(guard),
            Op::Invalid { which } => self.invalid(which),
            Op::Sleep { ms } => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
        }
    }

    fn acquire(
        &mut self,
        tenant: usize,
        key: usize,
        lease_ms: u64,
        wait: bool,
        data: bool,
        delete_on_release: bool,
    ) -> Result<(), String> {
        let name = self.names.keys[key].clone();
        let data = data.then(|| format!("data-{}", self.model.step));
        let mut opts = AcquireLockOptionsBuilder::new(&name)
            .with_lease_duration_millis(lease_ms)
            .with_wait_duration_millis(if wait { lease_ms } else { 0 })
            .with_delete_on_release(delete_on_release);
        if let Some(d) = &data {
            opts = opts.with_data(d);
        }
        let sent = Instant::now();
        let outcome = self.managers[tenant].acquire_lock(&opts.build());
        let received = Instant::now();
        match outcome {
            Ok(lock) => {
                let previous = self.model.records.get(&(tenant, key)).cloned().flatten();
                let expected = data.or(previous);
                if lock.data != expected {
                    return Err(format!("data {:?}, expected {expected:?}", lock.data));
                }
                if lock.mutex_key != name || lock.tenant_id != self.names.tenants[tenant] {
                    return Err(format!("granted another record: {lock:?}"));
                }
                self.model.records.insert((tenant, key), lock.data.clone());
                self.model.granted(&lock, tenant, None, sent, received)?;
                Ok(())
            }
            Err(LockError::NotGranted { .. }) => {
                // Busy: somebody must possibly hold it (at the start of the wait, or later).
                let held = self
                    .model
                    .mutex_leases(tenant, &name)
                    .any(|i| self.model.possibly_live(&self.model.leases[i], sent));
                if held {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}` busy though nobody holds it (a look-alike collided?)"
                    ))
                }
            }
            Err(e) => Err(format!("acquire: {e:?}")),
        }
    }

    /// The handle a generated index names, if any lease exists.
    fn handle(&self, handle: usize) -> Option<usize> {
        let count = self.model.leases.iter().filter(|l| !l.guard).count();
        let n = handle % count.max(1);
        (0..self.model.leases.len())
            .filter(|&i| !self.model.leases[i].guard)
            .nth(n)
    }

    fn renew(
        &mut self,
        handle: usize,
        version: Version,
        lease_ms: Option<u64>,
        data: bool,
    ) -> Result<(), String> {
        let Some(i) = self.handle(handle) else {
            return Ok(());
        };
        let lease = self.model.leases[i].clone();
        let presented = match version {
            Version::Stale => lease
                .earlier
                .last()
                .cloned()
                .unwrap_or_else(|| "never-a-version".into()),
            _ => lease.version.clone(),
        };
        let named = matches!(version, Version::Named).then(|| self.model.named_version());
        let data = data.then(|| format!("renewed-{}", self.model.step));
        let mut opts = SendHeartbeatOptionsBuilder::new(&lease.name, &presented);
        if let Some(ms) = lease_ms {
            opts = opts.with_lease_duration_millis(ms);
        }
        if let Some(sem) = lease.semaphore {
            opts = opts.with_semaphore_key(&self.names.sems[sem]);
        }
        if let Some(v) = &named {
            opts = opts.with_new_version(v);
        }
        if let Some(d) = &data {
            opts = opts.with_data(d);
        }
        let opts = opts.build();
        let m = &self.managers[lease.tenant];
        let sent = Instant::now();
        let mut outcome = m.send_heartbeat(&opts);
        if named.is_some() && outcome.is_ok() {
            // The retry of a renewal whose reply was lost: the same request again.
            let again = m.send_heartbeat(&opts);
            match (&outcome, &again) {
                (Ok(a), Ok(b)) if a.version == b.version && a.fencing_token == b.fencing_token => {}
                _ => {
                    return Err(format!(
                        "a renewal retried with the same new version: {outcome:?} then {again:?}"
                    ))
                }
            }
            outcome = again;
        }
        let received = Instant::now();
        let stale = matches!(version, Version::Stale);
        let live = self.model.definitely_live(&lease, received);
        let possible = self.model.possibly_live(&lease, sent) && !lease.refused;
        match outcome {
            Ok(renewed) => {
                if stale || !possible {
                    return Err(format!(
                        "renewed with {} version: lease {lease:?}",
                        if stale {
                            "a stale"
                        } else {
                            "an expired or ended"
                        }
                    ));
                }
                if renewed.fencing_token != lease.token {
                    return Err("a renewal changed the fencing token".into());
                }
                if let (None, Some(d)) = (lease.semaphore, &data) {
                    if let Some(k) = self.names.keys.iter().position(|k| *k == lease.name) {
                        self.model
                            .records
                            .insert((lease.tenant, k), Some(d.clone()));
                    }
                }
                let l = &mut self.model.leases[i];
                l.earlier
                    .push(std::mem::replace(&mut l.version, renewed.version));
                l.sent = sent;
                l.received = received;
                l.lease = renewed.lease_duration;
                Ok(())
            }
            Err(LockError::NotHeld { .. }) => {
                if !stale && live {
                    return Err(format!("renewal refused while definitely live: {lease:?}"));
                }
                if !stale {
                    // Run out (or ended): it must never renew again.
                    self.model.leases[i].refused = true;
                }
                Ok(())
            }
            Err(e) => Err(format!("renew: {e:?}")),
        }
    }

    fn release(
        &mut self,
        handle: usize,
        version: Version,
        delete: bool,
        data: bool,
    ) -> Result<(), String> {
        let Some(i) = self.handle(handle) else {
            return Ok(());
        };
        let lease = self.model.leases[i].clone();
        let stale = matches!(version, Version::Stale);
        let presented = if stale {
            lease
                .earlier
                .last()
                .cloned()
                .unwrap_or_else(|| "never-a-version".into())
        } else {
            lease.version.clone()
        };
        let data = data.then(|| format!("released-{}", self.model.step));
        let mut opts = ReleaseLockOptionsBuilder::new(&lease.name, &presented);
        if let Some(sem) = lease.semaphore {
            opts = opts.with_semaphore_key(&self.names.sems[sem]);
        } else if delete {
            opts = opts.with_delete_lock(true);
        }
        if let Some(d) = &data {
            opts = opts.with_data(d);
        }
        let released = match self.managers[lease.tenant].release_lock(&opts.build()) {
            Ok(()) => true,
            Err(LockError::NotHeld { .. }) => false,
            Err(e) => return Err(format!("release: {e:?}")),
        };
        let received = Instant::now();
        let live = self.model.definitely_live(&lease, received);
        // A lease that ran out but that nobody took is still the holder's to release.
        if released && (stale || lease.state != State::Held) {
            return Err(format!(
                "released with a stale version or an ended lease: {lease:?}"
            ));
        }
        if !released && !stale && live {
            return Err(format!("release refused while definitely live: {lease:?}"));
        }
        if released {
            self.model.leases[i].state = State::Released;
            if lease.semaphore.is_none() {
                if let Some(k) = self.names.keys.iter().position(|k| *k == lease.name) {
                    if delete || lease.delete_on_release {
                        self.model.records.remove(&(lease.tenant, k));
                    } else if let Some(d) = data {
                        self.model.records.insert((lease.tenant, k), Some(d));
                    }
                }
            }
        }
        Ok(())
    }

    fn delete_mutex(
        &mut self,
        tenant: usize,
        key: usize,
        with_version_of: Option<usize>,
    ) -> Result<(), String> {
        let name = self.names.keys[key].clone();
        let version = with_version_of
            .and_then(|h| self.handle(h))
            .map(|i| self.model.leases[i].clone());
        let sent = Instant::now();
        let outcome =
            self.managers[tenant].delete_mutex(&name, version.as_ref().map(|l| l.version.as_str()));
        let received = Instant::now();
        let holders: Vec<usize> = self.model.mutex_leases(tenant, &name).collect();
        let definitely = holders
            .iter()
            .any(|&i| self.model.definitely_live(&self.model.leases[i], received));
        let possibly = holders
            .iter()
            .any(|&i| self.model.possibly_live(&self.model.leases[i], sent));
        let exists = self.model.records.contains_key(&(tenant, key));
        // With a version, the record goes if that version is still its own (held or not).
        let own = exists
            && version.as_ref().is_some_and(|l| {
                l.tenant == tenant
                    && l.semaphore.is_none()
                    && l.name == name
                    && l.state != State::Taken
            });
        match (&outcome, &version) {
            (Ok(true), Some(_)) if !own => {
                return Err(format!(
                    "deleted with a version that is not the holder's: {version:?}"
                ))
            }
            (Ok(true), None) if definitely => {
                return Err("deleted a definitely live mutex without its version".into())
            }
            (Ok(true), _) if !exists => return Err("deleted a mutex that does not exist".into()),
            (Ok(false), None) if exists && !possibly => {
                return Err("a free mutex was not deleted".into())
            }
            (Ok(false) | Err(LockError::NotHeld { .. }), Some(_)) if own => {
                return Err("not deleted with the holder's own version".into())
            }
            // A version that is not the record's is `NotHeld`; no record at all, `Ok(false)`.
            (Ok(false), Some(_)) if exists => {
                return Err("Ok(false) for an existing mutex and another version".into())
            }
            (Err(LockError::NotHeld { .. }), Some(_)) if !exists => {
                return Err("NotHeld for a mutex that does not exist".into())
            }
            (Err(LockError::Conflict(_)), None) if !possibly => {
                return Err("Conflict for a mutex nobody holds".into())
            }
            (Err(LockError::Conflict(_)), Some(_)) => {
                return Err("Conflict for a delete with a version".into())
            }
            (Err(LockError::NotHeld { .. }), Some(_)) => {}
            (Err(e), _) if !matches!(e, LockError::Conflict(_)) => {
                return Err(format!("delete_mutex: {e:?}"))
            }
            _ => {}
        }
        if matches!(outcome, Ok(true)) {
            self.model.records.remove(&(tenant, key));
            for i in holders {
                if self.model.leases[i].state != State::Released {
                    self.model.leases[i].state = State::Taken;
                }
            }
        }
        Ok(())
    }

    fn put_semaphore(
        &mut self,
        tenant: usize,
        sem: usize,
        size: i64,
        lease_ms: u64,
    ) -> Result<(), String> {
        let key = self.names.sems[sem].clone();
        let outcome = self.managers[tenant].create_semaphore(
            &SemaphoreBuilder::new(&key, size)
                .with_lease_duration_millis(lease_ms)
                .build(),
        );
        match outcome {
            Ok(s) if size >= 1 => {
                if s.max_size != size || s.semaphore_key != key {
                    return Err(format!("stored {s:?}"));
                }
                self.model
                    .semaphores
                    .insert((tenant, sem), (size, Duration::from_millis(lease_ms)));
                Ok(())
            }
            Err(LockError::Validation(_)) if size < 1 => Ok(()),
            other => Err(format!("create_semaphore({size}): {other:?}")),
        }
    }

    fn acquire_permit(
        &mut self,
        tenant: usize,
        sem: usize,
        lease_ms: Option<u64>,
    ) -> Result<(), String> {
        let key = self.names.sems[sem].clone();
        let mut opts = AcquireLockOptionsBuilder::new(&key)
            .with_requires_semaphore(true)
            .with_wait_duration_millis(0);
        if let Some(ms) = lease_ms {
            opts = opts.with_lease_duration_millis(ms);
        }
        let sent = Instant::now();
        let outcome = self.managers[tenant].try_acquire_lock(&opts.build());
        let received = Instant::now();
        let known = self.model.semaphores.get(&(tenant, sem)).copied();
        let permits: Vec<usize> = self.model.permit_leases(tenant, sem).collect();
        let definitely = permits
            .iter()
            .filter(|&&i| self.model.definitely_live(&self.model.leases[i], received))
            .count() as i64;
        let possibly = permits
            .iter()
            .filter(|&&i| self.model.possibly_live(&self.model.leases[i], sent))
            .count() as i64;
        match (outcome, known) {
            (Ok(Some(lock)), Some((max_size, sem_lease))) => {
                if definitely >= max_size {
                    return Err(format!(
                        "a permit granted with {definitely} definitely live of {max_size}"
                    ));
                }
                if lock.semaphore_key.as_deref() != Some(key.as_str()) {
                    return Err(format!("a permit of another semaphore: {lock:?}"));
                }
                let expected = lease_ms.map(Duration::from_millis).unwrap_or(sem_lease);
                if lock.lease_duration != expected {
                    return Err(format!(
                        "permit lease {:?}, expected {expected:?}",
                        lock.lease_duration
                    ));
                }
                self.model
                    .granted(&lock, tenant, Some(sem), sent, received)?;
                Ok(())
            }
            (Ok(None), Some((max_size, _))) => {
                if possibly < max_size {
                    return Err(format!(
                        "busy with only {possibly} possibly live permits of {max_size}"
                    ));
                }
                Ok(())
            }
            (Err(LockError::NotFound(_)), None) => Ok(()),
            (other, known) => Err(format!("acquire permit (model {known:?}): {other:?}")),
        }
    }

    fn delete_semaphore(&mut self, tenant: usize, sem: usize) -> Result<(), String> {
        let key = self.names.sems[sem].clone();
        let sent = Instant::now();
        let outcome = self.managers[tenant].delete_semaphore(&key);
        let received = Instant::now();
        let permits: Vec<usize> = self.model.permit_leases(tenant, sem).collect();
        let definitely = permits
            .iter()
            .any(|&i| self.model.definitely_live(&self.model.leases[i], received));
        let possibly = permits
            .iter()
            .any(|&i| self.model.possibly_live(&self.model.leases[i], sent));
        let exists = self.model.semaphores.contains_key(&(tenant, sem));
        match outcome {
            Ok(true) if !exists => Err("deleted a semaphore that does not exist".into()),
            Ok(true) if definitely => Err("deleted a semaphore with a live permit".into()),
            Ok(false) if exists => Err("an existing semaphore was not deleted".into()),
            Err(LockError::Conflict(_)) if !possibly => {
                Err("Conflict with no permit possibly live".into())
            }
            Err(LockError::Conflict(_)) | Ok(_) => {
                if matches!(outcome, Ok(true)) {
                    self.model.semaphores.remove(&(tenant, sem));
                    for i in permits {
                        if self.model.leases[i].state == State::Held {
                            self.model.leases[i].state = State::Taken;
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(format!("delete_semaphore: {e:?}")),
        }
    }

    fn lock(&mut self, tenant: usize, key: usize) -> Result<(), String> {
        let name = self.names.keys[key].clone();
        let opts = LockOptions::new().lease(Duration::from_millis(2_000));
        let sent = Instant::now();
        let outcome = self.managers[tenant].try_lock(&name, &opts);
        let received = Instant::now();
        match outcome {
            Ok(Some(guard)) => {
                let lock = guard.record();
                let previous = self.model.records.get(&(tenant, key)).cloned().flatten();
                if lock.data != previous {
                    return Err(format!("guard data {:?}, expected {previous:?}", lock.data));
                }
                self.model.records.insert((tenant, key), lock.data.clone());
                let i = self.model.granted(&lock, tenant, None, sent, received)?;
                self.model.leases[i].guard = true;
                self.model.guards.push((guard, i));
                Ok(())
            }
            Ok(None) => {
                let held = self
                    .model
                    .mutex_leases(tenant, &name)
                    .any(|i| self.model.possibly_live(&self.model.leases[i], sent));
                if held {
                    Ok(())
                } else {
                    Err(format!("`{name}` busy for a guard though nobody holds it"))
                }
            }
            Err(e) => Err(format!("try_lock: {e:?}")),
        }
    }

    fn drop_guard(&mut self, guard: usize) -> Result<(), String> {
        if self.model.guards.is_empty() {
            return Ok(());
        }
        let (guard, i) = self.model.guards.remove(guard % self.model.guards.len());
        if !guard.is_held() {
            return Err(format!("guard {i} lost its lease on a healthy store"));
        }
        guard
            .release()
            .map_err(|e| format!("guard release: {e:?}"))?;
        self.model.leases[i].state = State::Released;
        Ok(())
    }

    fn invalid(&mut self, which: usize) -> Result<(), String> {
        let m = &self.managers[0];
        let long = "x".repeat(db_locks::MAX_KEY_LEN + 1);
        let outcome = match which {
            0 => m
                .try_acquire_lock(&AcquireLockOptionsBuilder::new("").build())
                .map(|_| ()),
            1 => m
                .try_acquire_lock(&AcquireLockOptionsBuilder::new("bad\u{1f}key").build())
                .map(|_| ()),
            2 => m
                .try_acquire_lock(&AcquireLockOptionsBuilder::new(&long).build())
                .map(|_| ()),
            3 => m
                .try_acquire_lock(
                    &AcquireLockOptionsBuilder::new("k")
                        .with_lease_duration_millis(0)
                        .build(),
                )
                .map(|_| ()),
            _ => m
                .create_semaphore(&SemaphoreBuilder::new("sem", 0).build())
                .map(|_| ()),
        };
        match outcome {
            Err(e) => expect_kind("invalid input", &e, |e| {
                matches!(e, LockError::Validation(_))
            }),
            Ok(()) => Err(format!("invalid input {which} accepted")),
        }
    }

    /// Reads the store back and compares it with the model.
    fn check(&mut self) -> Result<(), String> {
        for (tenant, m) in self.managers.iter().enumerate() {
            let before = Instant::now();
            let listed = m
                .list_mutexes()
                .map_err(|e| format!("list_mutexes: {e:?}"))?;
            for record in &listed {
                let Some(key) = self.names.keys.iter().position(|k| *k == record.mutex_key) else {
                    return Err(format!("tenant {tenant} lists a foreign mutex {record:?}"));
                };
                if !self.model.records.contains_key(&(tenant, key)) {
                    return Err(format!(
                        "tenant {tenant} lists `{}`, which it never created or deleted",
                        record.mutex_key
                    ));
                }
                if record.tenant_id != self.names.tenants[tenant] {
                    return Err(format!("listed under the wrong tenant: {record:?}"));
                }
            }
            for (key, name) in self.names.keys.iter().enumerate() {
                let stored = listed.iter().find(|r| r.mutex_key == *name);
                if self.model.records.contains_key(&(tenant, key)) && stored.is_none() {
                    // A record the model expects (delete-on-release deletes it: then the
                    // model removed it too).
                    return Err(format!("tenant {tenant} lost its record `{name}`"));
                }
                for i in self.model.mutex_leases(tenant, name).collect::<Vec<_>>() {
                    let l = &self.model.leases[i];
                    if self.model.definitely_live(l, Instant::now()) && !l.guard {
                        let matches = stored.is_some_and(|r| r.locked && r.version == l.version);
                        if !matches && self.model.definitely_live(l, before) {
                            return Err(format!(
                                "lease {i} is definitely live but the store shows {stored:?}"
                            ));
                        }
                    }
                }
            }
            for (sem, key) in self.names.sems.iter().enumerate() {
                let stored = m
                    .get_semaphore(key)
                    .map_err(|e| format!("get_semaphore: {e:?}"))?;
                let now = Instant::now();
                match (stored, self.model.semaphores.get(&(tenant, sem))) {
                    (None, None) => {}
                    (Some(s), Some(&(max_size, _))) => {
                        if s.max_size != max_size {
                            return Err(format!("semaphore {key:?}: {s:?}, model {max_size}"));
                        }
                        let permits: Vec<usize> = self.model.permit_leases(tenant, sem).collect();
                        let definitely = permits
                            .iter()
                            .filter(|&&i| self.model.definitely_live(&self.model.leases[i], now))
                            .count() as i64;
                        let possibly = permits
                            .iter()
                            .filter(|&&i| self.model.possibly_live(&self.model.leases[i], before))
                            .count() as i64;
                        if s.busy_count < definitely || s.busy_count > possibly {
                            return Err(format!(
                                "semaphore {key:?} busy_count {} outside [{definitely}, {possibly}]",
                                s.busy_count
                            ));
                        }
                    }
                    (stored, model) => {
                        return Err(format!(
                        "semaphore {key:?} of tenant {tenant}: store {stored:?}, model {model:?}"
                    ))
                    }
                }
            }
        }
        for (guard, i) in &self.model.guards {
            if !guard.is_held() {
                return Err(format!("guard {i} lost its lease on a healthy store"));
            }
        }
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("DB_LOCKS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

fn run_property(backend: Backend) {
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 200,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let (sequences, operations) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = runner.run(&prop::collection::vec(op(), 5..40), |ops| {
        sequences.fetch_add(1, Ordering::Relaxed);
        operations.fetch_add(ops.len() as u64, Ordering::Relaxed);
        let mut case = Case::new(backend);
        case.run(&ops).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{} store: {e}", backend.name());
    }
    println!(
        "{}: {} generated sequences, {} operations, each checked against the model and read back",
        backend.name(),
        sequences.load(Ordering::Relaxed),
        operations.load(Ordering::Relaxed)
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite() {
    run_property(Backend::Sqlite);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres() {
    run_property(Backend::Postgres);
}

#[cfg(feature = "mysql")]
#[test]
fn mysql() {
    run_property(Backend::Mysql);
}

#[cfg(feature = "redis")]
#[test]
fn redis() {
    run_property(Backend::Redis);
}

#[cfg(feature = "dynamodb")]
#[test]
fn dynamodb() {
    run_property(Backend::DynamoDb);
}
