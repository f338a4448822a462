//! Every result the CLI prints, built here: one JSON line each with `--json` (the shapes the
//! README documents), a short human-readable form otherwise.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use db_locks::{LocksConfig, MutexLock, Semaphore};
use serde_json::{json, Value};

use crate::args::ReleaseArgs;
use crate::bench::{ContendedRun, Handoff, HandoffLatency, Report, Sharing, Stats};
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

/// One line of a latency table: name, mean, p50, p99, ratio to `base`, note.
fn stats_row(s: &mut String, name: &str, stats: &Stats, base: &Stats, note: &str) {
    let _ = writeln!(
        s,
        "{name:15}  {:>10.1}  {:>10.1}  {:>10.1}  {:>7.2}  {note}",
        stats.mean_us,
        stats.p50_us,
        stats.p99_us,
        stats.ratio_to(base)
    );
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

/// The ratio of two p50s and of two p99s, as `{"p50": .., "p99": ..}`.
fn percentile_ratios(stats: &Stats, base: &Stats) -> Value {
    json!({
        "p50": round3(stats.p50_us / base.p50_us),
        "p99": round3(stats.p99_us / base.p99_us),
    })
}

fn shares_json(run: &ContendedRun) -> Value {
    let (min, mean, max) = run.shares();
    json!({
        "min": round3(min),
        "mean": round3(mean),
        "max": round3(max),
        "min_over_mean": round3(min / mean),
    })
}

fn contended_json(r: &Report) -> Value {
    let base = &r.round_trip;
    let c = &r.contended;
    let (main, single) = (c.main(), c.single());
    let per_thread_count = |run: &ContendedRun| {
        json!({
            "threads": run.threads,
            "grants": run.grants(),
            "grants_per_sec": round3(run.grants_per_sec()),
            "ratio_to_single_thread": round3(run.grants_per_sec() / single.grants_per_sec()),
            "requests_per_grant": run.requests_per_grant().map(round3),
            "shares": shares_json(run),
        })
    };
    json!({
        "threads": c.threads,
        "secs": round3(main.secs),
        "grants": main.grants(),
        "grants_per_sec": round3(main.grants_per_sec()),
        "mean_us_per_grant": round3(main.mean_us_per_grant()),
        "ratio_to_round_trip": round3(main.mean_us_per_grant() / base.mean_us),
        "single_thread_grants_per_sec": round3(single.grants_per_sec()),
        "ratio_to_single_thread": round3(main.grants_per_sec() / single.grants_per_sec()),
        "shares": shares_json(main),
        "requests_per_grant": main.requests_per_grant().map(round3),
        "sweep": c.runs.iter().map(per_thread_count).collect::<Vec<_>>(),
    })
}

/// A hand-off's latency: from the release returning (the main figures, with their ratio to
/// the round trip), `early` and `from_release_call`.
fn handoff_latency_json(latency: &HandoffLatency, base: &Stats) -> Value {
    let mut v = stats_json(&latency.from_return, Some(base));
    v["samples"] = json!(latency.from_return.samples);
    v["early"] = json!(latency.early);
    v["from_release_call"] = stats_json(&latency.from_call, None);
    v
}

fn handoff_json(r: &Report, config: &LocksConfig) -> Value {
    let entry = |h: &Handoff| {
        let mut v = json!({ "waiters": h.waiters });
        if let Value::Object(fields) = handoff_latency_json(&h.latency, &r.round_trip) {
            v.as_object_mut().expect("an object").extend(fields);
        }
        if let Some(b) = &r.baseline {
            v[b.kind.ratio_field()] = percentile_ratios(&h.latency.from_call, &b.handoff.from_call);
        }
        v
    };
    let of = |sharing: Sharing| {
        r.handoff
            .iter()
            .filter(|h| h.sharing == sharing)
            .map(entry)
            .collect::<Vec<_>>()
    };
    let mut v = json!({
        "api": "record",
        "hold_ms": round3(r.handoff_hold.as_secs_f64() * 1e3),
        "retry_base_ms": round3(config.retry_base.as_secs_f64() * 1e3),
        "retry_max_ms": round3(config.retry_max.as_secs_f64() * 1e3),
        "threads": of(Sharing::Threads),
        "processes": of(Sharing::Processes),
    });
    if let Some(why) = &r.processes_skipped {
        v["processes_skipped"] = json!(why);
    }
    v
}

/// Two raw single-statement writes over one acquire + release (1.0: nothing but the writes),
/// by medians: a few slow outliers of either would sway means.
fn raw_efficiency(r: &Report, b: &crate::baseline::Baseline) -> f64 {
    2.0 * b.raw_write.p50_us / r.acquire_release.p50_us
}

fn baseline_json(r: &Report) -> Option<Value> {
    let b = r.baseline.as_ref()?;
    let mut handoff = handoff_latency_json(&b.handoff, &r.round_trip);
    if let Some(poll) = b.poll {
        handoff["poll_ms"] = json!(millis(poll));
    }
    Some(json!({
        "kind": b.kind.name(),
        "cycle": stats_json(&b.cycle, Some(&r.round_trip)),
        "raw_write": stats_json(&b.raw_write, Some(&r.round_trip)),
        "handoff": handoff,
    }))
}

fn bench_json(r: &Report, config: &LocksConfig) -> Value {
    let base = &r.round_trip;
    let mut acquire_release = stats_json(&r.acquire_release, Some(base));
    let mut guard_cycle = stats_json(&r.guard_cycle, Some(base));
    if let Some(b) = &r.baseline {
        acquire_release[b.kind.ratio_field()] = json!(round3(r.acquire_release.ratio_to(&b.cycle)));
        acquire_release["raw_efficiency"] = json!(round3(raw_efficiency(r, b)));
        guard_cycle[b.kind.ratio_field()] = json!(round3(r.guard_cycle.ratio_to(&b.cycle)));
    }
    let mut permit_cycle = stats_json(&r.permit_cycle, Some(base));
    permit_cycle["semaphore_size"] = json!(r.semaphore_size);
    let mut v = json!({
        "provider": config.provider.to_string(),
        "store": config.store_location(),
        "tenant_id": config.tenant_id,
        "iterations": r.iterations,
        "round_trip": stats_json(base, None),
        "acquire_release": acquire_release,
        "heartbeat": stats_json(&r.heartbeat, Some(base)),
        "guard_cycle": guard_cycle,
        "permit_cycle": permit_cycle,
        "handoff": handoff_json(r, config),
        "contended": contended_json(r),
    });
    if let Some(b) = baseline_json(r) {
        v["baseline"] = b;
    }
    v
}

/// `x` as `1.23×`, or `n/a`.
fn times(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}×"))
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
        stats_row(&mut s, name, stats, base, &note);
    }
    let c = &r.contended;
    let main = c.main();
    let _ = writeln!(
        s,
        "{:15}  {:>10.1}  {:>10}  {:>10}  {:>7.2}  per grant: {} threads for {}, {} grants, {:.0} grants/s",
        "contended",
        main.mean_us_per_grant(),
        "-",
        "-",
        main.mean_us_per_grant() / base.mean_us,
        main.threads,
        secs(Duration::from_secs_f64(main.secs)),
        main.grants(),
        main.grants_per_sec()
    );

    let _ = writeln!(
        s,
        "\nhand-off to waiters already waiting (record API; released {} after the last waiter \
         found it busy; backoff {} to {}). P50/P99: from the release call returning to the next \
         grant returning (EARLY: grants first, counted as 0); CALL_: from the release call's \
         start; ×: CALL_ figures as ratios to {}",
        secs(r.handoff_hold),
        secs(config.retry_base),
        secs(config.retry_max),
        r.baseline
            .as_ref()
            .map_or("a baseline (none on this store)", |b| b.kind.name()),
    );
    let _ = writeln!(
        s,
        "{:10}  {:>7}  {:>10}  {:>10}  {:>5}  {:>10}  {:>10}  {:>8}  {:>8}",
        "SHARING", "WAITERS", "P50_US", "P99_US", "EARLY", "CALL_P50", "CALL_P99", "×P50", "×P99"
    );
    let handoff_row = |s: &mut String, name: &str, waiters: String, l: &HandoffLatency| {
        let ratios = r.baseline.as_ref().map(|b| {
            (
                l.from_call.p50_us / b.handoff.from_call.p50_us,
                l.from_call.p99_us / b.handoff.from_call.p99_us,
            )
        });
        let _ = writeln!(
            s,
            "{name:10}  {waiters:>7}  {:>10.1}  {:>10.1}  {:>5}  {:>10.1}  {:>10.1}  {:>8}  {:>8}",
            l.from_return.p50_us,
            l.from_return.p99_us,
            l.early,
            l.from_call.p50_us,
            l.from_call.p99_us,
            times(ratios.map(|r| r.0)),
            times(ratios.map(|r| r.1)),
        );
    };
    for h in &r.handoff {
        handoff_row(&mut s, h.sharing.name(), h.waiters.to_string(), &h.latency);
    }
    if let Some(why) = &r.processes_skipped {
        let _ = writeln!(s, "{:10}  {:>7}  n/a: {why}", "processes", "-");
    }
    if let Some(b) = &r.baseline {
        handoff_row(&mut s, "baseline", "1".to_owned(), &b.handoff);
    }

    let single = c.single();
    let (min, mean, max) = main.shares();
    let _ = writeln!(
        s,
        "\ncontended: {} threads, {:.0} grants/s = {:.2}× the 1-thread rate ({:.0} grants/s); \
         shares of the grants min {:.3}, mean {:.3}, max {:.3} (min/mean {:.2}); {} requests per grant",
        main.threads,
        main.grants_per_sec(),
        main.grants_per_sec() / single.grants_per_sec(),
        single.grants_per_sec(),
        min,
        mean,
        max,
        min / mean,
        main.requests_per_grant()
            .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}")),
    );
    let _ = writeln!(
        s,
        "{:>7}  {:>10}  {:>8}  {:>10}  {:>8}",
        "THREADS", "GRANTS/S", "RATIO", "REQ/GRANT", "MIN/MEAN"
    );
    for run in &c.runs {
        let (min, mean, _) = run.shares();
        let _ = writeln!(
            s,
            "{:>7}  {:>10.0}  {:>8.2}  {:>10}  {:>8.2}",
            run.threads,
            run.grants_per_sec(),
            run.grants_per_sec() / single.grants_per_sec(),
            run.requests_per_grant()
                .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}")),
            min / mean
        );
    }

    match &r.baseline {
        None => {
            let _ = writeln!(s, "\nbaseline: n/a (none for this store)");
        }
        Some(b) => {
            let _ = writeln!(s, "\nbaseline {}: {}", b.kind.name(), b.kind.description());
            let _ = writeln!(
                s,
                "{:15}  {:>10}  {:>10}  {:>10}  {:>7}  NOTE",
                "OPERATION", "MEAN_US", "P50_US", "P99_US", "RATIO"
            );
            for (name, stats, note) in [
                (
                    "cycle",
                    &b.cycle,
                    format!(
                        "acquire_release is {:.2}× this (means)",
                        r.acquire_release.ratio_to(&b.cycle)
                    ),
                ),
                (
                    "raw_write",
                    &b.raw_write,
                    format!(
                        "one committed write by key; 2 of them are {:.2} of acquire_release",
                        raw_efficiency(r, b)
                    ),
                ),
                (
                    "handoff",
                    &b.handoff.from_return,
                    "1 waiter, from the unlock returning".to_owned(),
                ),
                (
                    "handoff_call",
                    &b.handoff.from_call,
                    "1 waiter, from the unlock's start".to_owned(),
                ),
            ] {
                stats_row(&mut s, name, stats, base, &note);
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
        let ms = Duration::from_millis;
        assert_eq!(secs(ms(1500)), "1.5s");
        assert_eq!(secs(ms(15_000)), "15s");
        assert_eq!(secs(ms(150_000)), "2m30s");
        assert_eq!(secs(ms(3_600_000)), "60m");
    }
}
