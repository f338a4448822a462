//! Printing results: one JSON line each with `--json`, a short human-readable form otherwise.

use std::fmt::Write as _;
use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use db_locks::{MutexLock, Semaphore};
use serde_json::{json, Value};

/// Writes `text` to stdout at once; a failed write (a closed pipe, a full disk) is an error.
pub fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// One JSON value on one line.
pub fn json_line(value: &Value) -> String {
    let mut s = value.to_string();
    s.push('\n');
    s
}

pub fn lock_json(lock: &MutexLock) -> Value {
    serde_json::to_value(lock).expect("a MutexLock serializes")
}

pub fn semaphore_json(semaphore: &Semaphore) -> Value {
    serde_json::to_value(semaphore).expect("a Semaphore serializes")
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `1.5s`, `15s`, `2m30s`.
pub fn secs(ms: i64) -> String {
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
pub fn state(lock: &MutexLock) -> &'static str {
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
pub fn lock_human(lock: &MutexLock) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "mutex_key:         {}", lock.mutex_key);
    if let Some(sem) = &lock.semaphore_key {
        let _ = writeln!(s, "semaphore_key:     {sem}");
    }
    let _ = writeln!(s, "tenant_id:         {}", lock.tenant_id);
    let _ = writeln!(s, "version:           {}", lock.version);
    let _ = writeln!(s, "fencing_token:     {}", lock.fencing_token);
    let _ = writeln!(s, "state:             {}", state(lock));
    let _ = writeln!(s, "lease:             {}", secs(lock.lease_duration_ms));
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
pub fn semaphore_human(semaphore: &Semaphore) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "semaphore_key: {}", semaphore.semaphore_key);
    let _ = writeln!(s, "tenant_id:     {}", semaphore.tenant_id);
    let _ = writeln!(s, "version:       {}", semaphore.version);
    let _ = writeln!(
        s,
        "permits:       {} busy of {}",
        semaphore.busy_count, semaphore.max_size
    );
    let _ = writeln!(s, "lease:         {}", secs(semaphore.lease_duration_ms));
    s
}

/// Locks as a table, one line each.
pub fn locks_table(locks: &[MutexLock], indent: &str) -> String {
    let width = |f: &dyn Fn(&MutexLock) -> usize, title: &str| {
        locks.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let key_w = width(&|l| l.mutex_key.chars().count(), "KEY");
    let token_w = width(&|l| l.fencing_token.to_string().len(), "FENCING_TOKEN");
    let lease_w = width(&|l| secs(l.lease_duration_ms).len(), "LEASE");
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
            secs(l.lease_duration_ms),
            l.data.as_deref().unwrap_or("-")
        );
    }
    s
}

/// What `list` prints.
pub fn list(
    mutexes: &[MutexLock],
    semaphores: &[(Semaphore, Vec<MutexLock>)],
    as_json: bool,
) -> String {
    if as_json {
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
        return json_line(&Value::Array(items));
    }
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
                secs(sem.lease_duration_ms)
            );
            if !slots.is_empty() {
                s.push_str(&locks_table(slots, "    "));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_well() {
        assert_eq!(secs(1500), "1.5s");
        assert_eq!(secs(15_000), "15s");
        assert_eq!(secs(150_000), "2m30s");
        assert_eq!(secs(3_600_000), "60m");
    }
}
