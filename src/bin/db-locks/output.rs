//! Every result the CLI prints, built here: one JSON line each with `--json` (the shapes the
//! README documents), a short human-readable form otherwise.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use db_locks::{LocksConfig, MutexLock, Semaphore};
use serde_json::{json, Value};

use crate::args::ReleaseArgs;
use crate::bench::{Report, Stats};
use crate::Exit;

/// The output format of one invocation: each method renders one result in it.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Writes `text` to stdout at once: exit code 0, or an error if the write fails (a closed
    /// pipe, a full disk).
    pub fn print(&self, text: &str) -> Result<u8, Exit> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Exit::other(format!("cannot write the result to stdout: {e}")))?;
        Ok(0)
    }

    fn pick(&self, json: impl FnOnce() -> Value, human: impl FnOnce() -> String) -> String {
        if self.json {
            json_line(&json())
        } else {
            human()
        }
    }

    pub fn lock(&self, lock: &MutexLock) -> String {
        self.pick(|| lock_json(lock), || lock_human(lock))
    }

    pub fn locks(&self, locks: &[MutexLock]) -> String {
        self.pick(
            || Value::Array(locks.iter().map(lock_json).collect()),
            || locks_table(locks, ""),
        )
    }

    pub fn semaphore(&self, semaphore: &Semaphore) -> String {
        self.pick(|| semaphore_json(semaphore), || semaphore_human(semaphore))
    }

    pub fn released(&self, a: &ReleaseArgs, tenant: &str) -> String {
        self.pick(
            || {
                json!({
                    "mutex_key": a.key,
                    "semaphore_key": a.semaphore_key,
                    "tenant_id": tenant,
                    "version": a.version,
                    "released": true,
                })
            },
            || format!("released `{}`\n", a.key),
        )
    }

    /// `what` is `mutex` or `semaphore`.
    pub fn deleted(&self, what: &str, key: &str, tenant: &str) -> String {
        self.pick(
            || {
                json!({
                    format!("{what}_key"): key,
                    "tenant_id": tenant,
                    "deleted": true,
                })
            },
            || format!("deleted {what} `{key}`\n"),
        )
    }

    pub fn migrated(&self, config: &LocksConfig) -> String {
        let store = config.store_location();
        self.pick(
            || {
                json!({
                    "provider": config.provider.to_string(),
                    "store": store,
                    "migrated": true,
                })
            },
            || format!("the schema of {store} is up to date\n"),
        )
    }

    pub fn list(
        &self,
        mutexes: &[MutexLock],
        semaphores: &[(Semaphore, Vec<MutexLock>)],
    ) -> String {
        self.pick(
            || list_json(mutexes, semaphores),
            || list_human(mutexes, semaphores),
        )
    }

    pub fn bench(&self, report: &Report, config: &LocksConfig) -> String {
        self.pick(
            || bench_json(report, config),
            || bench_human(report, config),
        )
    }
}

/// One JSON value on one line.
fn json_line(value: &Value) -> String {
    let mut s = value.to_string();
    s.push('\n');
    s
}

/// A lock's JSON object: its fields by name, the lease in milliseconds.
fn lock_json(lock: &MutexLock) -> Value {
    json!({
        "mutex_key": lock.mutex_key,
        "tenant_id": lock.tenant_id,
        "version": lock.version,
        "fencing_token": lock.fencing_token,
        "lease_duration_ms": millis(lock.lease_duration),
        "semaphore_key": lock.semaphore_key,
        "data": lock.data,
        "delete_on_release": lock.delete_on_release,
        "locked": lock.locked,
        "expires_at": lock.expires_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    })
}

/// A semaphore's JSON object, the lease in milliseconds.
fn semaphore_json(semaphore: &Semaphore) -> Value {
    json!({
        "semaphore_key": semaphore.semaphore_key,
        "tenant_id": semaphore.tenant_id,
        "version": semaphore.version,
        "max_size": semaphore.max_size,
        "lease_duration_ms": millis(semaphore.lease_duration),
        "busy_count": semaphore.busy_count,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `1.5s`, `15s`, `2m30s`.
fn secs(d: Duration) -> String {
    let ms = millis(d);
    if ms % 1000 != 0 {
        return format!("{}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s >= 60 && s % 60 != 0 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `held`, `expired` (locked, but its lease has run out) or `free`, by this machine's clock.
fn state(lock: &MutexLock) -> &'static str {
    if !lock.locked {
        "free"
    } else if lock.expires_at > Utc::now() {
        "held"
    } else {
        "expired"
    }
}

/// `in 12.3s` or `12.3s ago`.
fn relative(t: &DateTime<Utc>) -> String {
    let ms = (*t - Utc::now()).num_milliseconds();
    let s = format!("{:.1}s", ms.unsigned_abs() as f64 / 1000.0);
    if ms >= 0 {
        format!("in {s}")
    } else {
        format!("{s} ago")
    }
}

/// A lock as `field: value` lines.
fn lock_human(lock: &MutexLock) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "mutex_key:         {}", lock.mutex_key);
    if let Some(sem) = &lock.semaphore_key {
        let _ = writeln!(s, "semaphore_key:     {sem}");
    }
    let _ = writeln!(s, "tenant_id:         {}", lock.tenant_id);
    let _ = writeln!(s, "version:           {}", lock.version);
    let _ = writeln!(s, "fencing_token:     {}", lock.fencing_token);
    let _ = writeln!(s, "state:             {}", state(lock));
    let _ = writeln!(s, "lease:             {}", secs(lock.lease_duration));
    let _ = writeln!(
        s,
        "expires_at:        {} ({})",
        rfc3339(&lock.expires_at),
        relative(&lock.expires_at)
    );
    if let Some(data) = &lock.data {
        let _ = writeln!(s, "data:              {data}");
    }
    if lock.delete_on_release {
        let _ = writeln!(s, "delete_on_release: true");
    }
    s
}

/// A semaphore as `field: value` lines.
fn semaphore_human(semaphore: &Semaphore) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "semaphore_key: {}", semaphore.semaphore_key);
    let _ = writeln!(s, "tenant_id:     {}", semaphore.tenant_id);
    let _ = writeln!(s, "version:       {}", semaphore.version);
    let _ = writeln!(
        s,
        "permits:       {} busy of {}",
        semaphore.busy_count, semaphore.max_size
    );
    let _ = writeln!(s, "lease:         {}", secs(semaphore.lease_duration));
    s
}

/// Locks as a table, one line each.
fn locks_table(locks: &[MutexLock], indent: &str) -> String {
    let width = |f: &dyn Fn(&MutexLock) -> usize, title: &str| {
        locks.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let key_w = width(&|l| l.mutex_key.chars().count(), "KEY");
    let token_w = width(&|l| l.fencing_token.to_string().len(), "FENCING_TOKEN");
    let lease_w = width(&|l| secs(l.lease_duration).len(), "LEASE");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{indent}{:key_w$}  {:7}  {:>token_w$}  {:24}  {:>lease_w$}  DATA",
        "KEY", "STATE", "FENCING_TOKEN", "EXPIRES_AT", "LEASE"
    );
    for l in locks {
        let _ = writeln!(
            s,
            "{indent}{:key_w$}  {:7}  {:>token_w$}  {:24}  {:>lease_w$}  {}",
            l.mutex_key,
            state(l),
            l.fencing_token,
            rfc3339(&l.expires_at),
            secs(l.lease_duration),
            l.data.as_deref().unwrap_or("-")
        );
    }
    s
}

fn list_json(mutexes: &[MutexLock], semaphores: &[(Semaphore, Vec<MutexLock>)]) -> Value {
    let mut items: Vec<Value> = Vec::new();
    for m in mutexes {
        let mut v = lock_json(m);
        v["kind"] = json!("mutex");
        items.push(v);
    }
    for (sem, slots) in semaphores {
        let mut v = semaphore_json(sem);
        v["kind"] = json!("semaphore");
        v["mutexes"] = Value::Array(slots.iter().map(lock_json).collect());
        items.push(v);
    }
    Value::Array(items)
}

fn list_human(mutexes: &[MutexLock], semaphores: &[(Semaphore, Vec<MutexLock>)]) -> String {
    let mut s = String::new();
    if mutexes.is_empty() && semaphores.is_empty() {
        s.push_str("no mutexes or semaphores\n");
        return s;
    }
    if !mutexes.is_empty() {
        let _ = writeln!(s, "Mutexes:");
        s.push_str(&locks_table(mutexes, "  "));
    }
    if !semaphores.is_empty() {
        if !mutexes.is_empty() {
            s.push('\n');
        }
        let _ = writeln!(s, "Semaphores:");
        for (sem, slots) in semaphores {
            let _ = writeln!(
                s,
                "  {}: {} busy of {}, lease {}",
                sem.semaphore_key,
                sem.busy_count,
                sem.max_size,
                secs(sem.lease_duration)
            );
            if !slots.is_empty() {
                s.push_str(&locks_table(slots, "    "));
            }
        }
    }
    s
}

/// `value` rounded to 3 decimals, for JSON.
fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn stats_json(stats: &Stats, base: Option<&Stats>) -> Value {
    let mut v = json!({
        "mean_us": round3(stats.mean_us),
        "p50_us": round3(stats.p50_us),
        "p99_us": round3(stats.p99_us),
    });
    if let Some(base) = base {
        v["ratio_to_round_trip"] = json!(round3(stats.ratio_to(base)));
    }
    v
}

fn bench_json(r: &Report, config: &LocksConfig) -> Value {
    let base = &r.round_trip;
    let mut permit_cycle = stats_json(&r.permit_cycle, Some(base));
    permit_cycle["semaphore_size"] = json!(r.semaphore_size);
    json!({
        "provider": config.provider.to_string(),
        "store": config.store_location(),
        "tenant_id": config.tenant_id,
        "iterations": r.iterations,
        "round_trip": stats_json(base, None),
        "acquire_release": stats_json(&r.acquire_release, Some(base)),
        "heartbeat": stats_json(&r.heartbeat, Some(base)),
        "guard_cycle": stats_json(&r.guard_cycle, Some(base)),
        "permit_cycle": permit_cycle,
        "contended": {
            "threads": r.contended.threads,
            "grants": r.contended.grants,
            "grants_per_sec": round3(r.contended.grants_per_sec),
            "mean_us_per_grant": round3(r.contended.mean_us_per_grant),
            "ratio_to_round_trip": round3(r.contended.mean_us_per_grant / base.mean_us),
        },
    })
}

fn bench_human(r: &Report, config: &LocksConfig) -> String {
    let base = &r.round_trip;
    let rows = [
        (
            "round_trip",
            base,
            "get_mutex: one primary-key read".to_owned(),
        ),
        (
            "acquire_release",
            &r.acquire_release,
            "acquire_lock + release_lock".to_owned(),
        ),
        ("heartbeat", &r.heartbeat, "send_heartbeat".to_owned()),
        (
            "guard_cycle",
            &r.guard_cycle,
            "lock() + release, heartbeat thread included".to_owned(),
        ),
        (
            "permit_cycle",
            &r.permit_cycle,
            format!("a permit of {}", r.semaphore_size),
        ),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} at {}, tenant `{}`, {} iterations each\n",
        config.provider,
        config.store_location(),
        config.tenant_id,
        r.iterations
    );
    let _ = writeln!(
        s,
        "{:15}  {:>10}  {:>10}  {:>10}  {:>7}  NOTE",
        "OPERATION", "MEAN_US", "P50_US", "P99_US", "RATIO"
    );
    for (name, stats, note) in rows {
        let _ = writeln!(
            s,
            "{name:15}  {:>10.1}  {:>10.1}  {:>10.1}  {:>7.2}  {note}",
            stats.mean_us,
            stats.p50_us,
            stats.p99_us,
            stats.ratio_to(base)
        );
    }
    let c = &r.contended;
    let _ = writeln!(
        s,
        "{:15}  {:>10.1}  {:>10}  {:>10}  {:>7.2}  per grant: {} threads, {} grants, {:.0} grants/s",
        "contended",
        c.mean_us_per_grant,
        "-",
        "-",
        c.mean_us_per_grant / base.mean_us,
        c.threads,
        c.grants,
        c.grants_per_sec
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_well() {
        let ms = Duration::from_millis;
        assert_eq!(secs(ms(1500)), "1.5s");
        assert_eq!(secs(ms(15_000)), "15s");
        assert_eq!(secs(ms(150_000)), "2m30s");
        assert_eq!(secs(ms(3_600_000)), "60m");
    }
}
