//! The SQL of the diesel stores, one text per operation and dialect.
//!
//! Texts are written with PostgreSQL's numbered parameters (`$1`, `$2`, ...) and a few
//! `{placeholders}` for what the dialects spell differently. [`Statement::render`] turns a text
//! into the dialect's own form once, when the store is built: the pieces of text between
//! parameters, and for each occurrence of a parameter its index in the one parameter list
//! every dialect shares. diesel writes its own placeholder between the pieces (`$1`, `$2`, ...
//! in order on PostgreSQL, `?` on SQLite and MySQL) and binds one value per occurrence.
//!
//! Every statement names the invariant it keeps. The ones that decide who holds a lock are a
//! single conditional write, so two writers can never both see the lock as theirs.

/// The PostgreSQL channel that every release notifies (see `listener.rs`).
pub(crate) const RELEASE_CHANNEL: &str = "db_locks_released";

/// On PostgreSQL, `text` (an `UPDATE` or `DELETE` that releases a lease) also notifies
/// [`RELEASE_CHANNEL`] with `tenant \x1f key \x1f origin` ($7) when it releases something:
/// the waiters of other processes wake at once. `key` is the parameter naming what they wait
/// for. The notice is sent when the statement commits, by the same round trip.
fn notify_release(dialect: Dialect, text: &str, key: &str) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "WITH released AS ({text}\nRETURNING 1)\n\
             SELECT pg_notify('{RELEASE_CHANNEL}', $1 || chr(31) || {key} || chr(31) || $7) FROM released"
        ),
        Dialect::Sqlite | Dialect::Mysql => text.to_owned(),
    }
}

/// SQL dialect of a diesel store.
// Only the dialects whose features are on are ever built.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// A statement in its dialect's text, with the order in which the parameters are bound.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    /// The text as the server sees it (shown by `Debug`).
    #[allow(dead_code)]
    pub(crate) sql: String,
    /// The text around the parameters, one more piece than there are parameter occurrences:
    /// diesel writes its own placeholder between two pieces (see `sql::Prepared`).
    pub(crate) pieces: Vec<String>,
    /// The parameter index of each occurrence, in text order.
    pub(crate) occurrences: Vec<usize>,
    /// Keep it prepared on each connection: otherwise every run is parsed and planned again
    /// (PostgreSQL: about 0.1 ms of a 0.3 ms statement on loopback) or, on MySQL, prepared,
    /// executed and closed (two round trips). Off for texts built per call (slot batches),
    /// which would fill the cache.
    pub(crate) cache: bool,
}

impl Statement {
    /// Renders `template` for `dialect` (see the module docs).
    pub(crate) fn render(dialect: Dialect, template: &str) -> Statement {
        let text = fill_placeholders(dialect, template);
        let mut sql = String::with_capacity(text.len());
        let mut numbers: Vec<usize> = Vec::new();
        let mut pieces = vec![String::new()];
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                numbers.push(n);
                pieces.push(String::new());
                match dialect {
                    Dialect::Postgres => sql.push_str(&format!("${}", numbers.len())),
                    Dialect::Sqlite | Dialect::Mysql => sql.push('?'),
                }
            } else {
                sql.push(c);
                pieces.last_mut().expect("one piece at least").push(c);
            }
        }
        Statement {
            sql,
            pieces,
            occurrences: numbers.iter().map(|n| n - 1).collect(),
            cache: true,
        }
    }
}

fn fill_placeholders(dialect: Dialect, template: &str) -> String {
    let (now_ms, now_us, greatest) = match dialect {
        Dialect::Postgres => (
            "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)",
            "CAST(EXTRACT(EPOCH FROM now()) * 1000000 AS BIGINT)",
            "GREATEST",
        ),
        // julianday('now') is fixed for the duration of one statement; db_locks_now_us() is
        // registered on every connection (see `SqliteSetup`).
        Dialect::Sqlite => (
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            "db_locks_now_us()",
            "MAX",
        ),
        // Sessions run with time_zone = '+00:00' (set on connect), so UNIX_TIMESTAMP(NOW())
        // is exact; NOW() is fixed for the duration of one statement.
        Dialect::Mysql => (
            "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)",
            "GREATEST",
        ),
    };
    let (skip_locked, for_update) = match dialect {
        // Concurrent acquirers pass over each other's candidate slots instead of queueing.
        Dialect::Postgres => ("FOR UPDATE OF s SKIP LOCKED", "FOR UPDATE"),
        Dialect::Mysql => ("", "FOR UPDATE"),
        // SQLite runs one writer at a time (write transactions are IMMEDIATE): nothing to lock.
        Dialect::Sqlite => ("", ""),
    };
    // Composite placeholders first: their texts hold simple ones.
    template
        .replace("{permit_lease}", PERMIT_LEASE)
        .replace("{live_retired}", LIVE_RETIRED)
        .replace("{cols}", COLS)
        .replace("{now_ms}", now_ms)
        .replace("{now_us}", now_us)
        .replace("{greatest}", greatest)
        .replace("{skip_locked}", skip_locked)
        .replace("{for_update}", for_update)
}

/// Columns read into a mutex row, in the order of `MutexRow`.
const COLS: &str = "tenant_id, semaphore_key, mutex_key, version, fencing_token, \
    lease_duration_ms, data, delete_on_release, locked, expires_at_ms";

/// A permit's lease: the request's ($4), or (NULL) the semaphore's.
const PERMIT_LEASE: &str =
    "COALESCE($4, (SELECT sem.lease_duration_ms FROM db_locks_semaphores sem \
    WHERE sem.tenant_id = $1 AND sem.semaphore_key = $2))";

/// Whether semaphore ($1, $2) has a retired slot that is still live: a range on the
/// retired-slot index (PostgreSQL, SQLite: partial, retired slots only; it names no
/// `semaphore_key <> ''`, so the free-slot index is no candidate).
const LIVE_RETIRED: &str = "EXISTS (SELECT 1 FROM db_locks_mutexes r \
    WHERE r.tenant_id = $1 AND r.semaphore_key = $2 \
    AND r.retired = TRUE AND r.slot_expires_at_ms > {now_ms})";

/// All statements of one dialect.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    pub(crate) dialect: Dialect,
    /// Params: $1 tenant, $2 semaphore key (''), $3 key, $4 version, $5 lease ms, $6 data,
    /// $7 delete_on_release.
    pub(crate) acquire_mutex: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 version, $4 lease ms (NULL: the semaphore's),
    /// $5 data.
    pub(crate) acquire_permit: Statement,
    /// Params as `acquire_permit`.
    pub(crate) regrant_permit: Statement,
    /// Params: $1 tenant, $2 semaphore key. One row if the semaphore exists: `has_retired` = 1
    /// if it has retired slots (live or not), else 0.
    pub(crate) semaphore_state: Statement,
    /// Params: $1 tenant, $2 semaphore key (''), $3 key, $4 version, $5 new version, $6 lease
    /// ms (NULL: keep the record's), $7 data.
    pub(crate) renew_mutex: Statement,
    /// As `renew_mutex`, for a permit slot ($2 its semaphore key).
    pub(crate) renew_permit: Statement,
    /// MySQL only (no RETURNING): reads back the mutex or permit a mutex acquire or a renewal
    /// just wrote. MariaDB has `INSERT ... RETURNING`, but its prepare does not describe the
    /// result (diesel then fails with "No metadata exists"), and diesel prepares every query. Params: $1 tenant, $2 semaphore key ('' for a mutex), $3 key, $4 version.
    pub(crate) select_by_key_version: Statement,
    /// MySQL only: reads back the permit `acquire_permit` or `regrant_permit` just wrote, on
    /// the same connection. Params: $1 tenant, $2 semaphore key, $3 version.
    pub(crate) select_permit_by_version: Statement,
    /// Params: $1 tenant, $2 semaphore key (''), $3 key, $4 version, $5 in-doubt version,
    /// $6 data, $7 origin (PostgreSQL's release notice).
    pub(crate) release_mutex: Statement,
    /// As `release_mutex`, for a permit slot ($2 its semaphore key).
    pub(crate) release_permit: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 key, $4 version, $5 in-doubt version, $7 origin.
    pub(crate) release_delete: Statement,
    /// Params: $1 tenant, $2 key.
    pub(crate) get_mutex: Statement,
    /// Params: $1 tenant, $2 key, $3 version.
    pub(crate) delete_mutex_with_version: Statement,
    /// Params: $1 tenant, $2 key.
    pub(crate) delete_mutex_if_free: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 version, $4 max size, $5 lease ms.
    pub(crate) upsert_semaphore: Statement,
    /// Params: $1 tenant, $2 semaphore key. Locks the semaphore row; returns `n` = max_size.
    pub(crate) lock_semaphore: Statement,
    /// Params: $1 tenant, $2 semaphore key. Every slot, locked, with the server's clock.
    pub(crate) lock_slots: Statement,
    /// Params: $1 tenant, $2 semaphore key. Deletes the retired slots that are not live.
    pub(crate) reap_retired: Statement,
    /// Params: $1 tenant, $2 semaphore key. The live retired slots, locked.
    pub(crate) live_retired_slots: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 limit. Up to $3 free active slots, locked.
    pub(crate) free_active_slots: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 slot key.
    pub(crate) drop_free_slot: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 slot key.
    pub(crate) unretire_slot: Statement,
    /// Params: $1 tenant.
    pub(crate) list_semaphores: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) get_semaphore: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) delete_slots: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) delete_semaphore: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) semaphore_mutexes: Statement,
    /// Params: $1 tenant.
    pub(crate) list_mutexes: Statement,
}

/// `template` for a plain mutex: it leaves `slot_expires_at_ms` alone (NULL for mutexes).
fn for_mutex(template: &str) -> String {
    template.replace("{slot_expiry}", "")
}

/// `template` for a permit slot: it also sets `slot_expires_at_ms` to `expiry`.
fn for_slot(template: &str, expiry: &str) -> String {
    template.replace(
        "{slot_expiry}",
        &format!(",\n    slot_expires_at_ms = {expiry}"),
    )
}

impl Statements {
    pub(crate) fn new(dialect: Dialect) -> Statements {
        let mysql = dialect == Dialect::Mysql;
        let r = |template: &str| Statement::render(dialect, template);
        let pick =
            |mysql_text: &'static str, text: &'static str| r(if mysql { mysql_text } else { text });
        Statements {
            dialect,
            acquire_mutex: pick(ACQUIRE_MUTEX_MYSQL, ACQUIRE_MUTEX),
            acquire_permit: pick(ACQUIRE_PERMIT_MYSQL, ACQUIRE_PERMIT),
            regrant_permit: pick(REGRANT_PERMIT_MYSQL, REGRANT_PERMIT),
            semaphore_state: r(SEMAPHORE_STATE),
            renew_mutex: r(&for_mutex(if mysql { RENEW_MYSQL } else { RENEW })),
            renew_permit: r(&for_slot(
                if mysql { RENEW_MYSQL } else { RENEW },
                "{now_ms} + COALESCE($6, lease_duration_ms)",
            )),
            select_by_key_version: r(SELECT_BY_KEY_VERSION),
            select_permit_by_version: r(SELECT_PERMIT_BY_VERSION),
            release_mutex: r(&notify_release(dialect, &for_mutex(RELEASE), "$3")),
            release_permit: r(&notify_release(
                dialect,
                &for_slot(RELEASE, "{now_ms}"),
                "$2",
            )),
            release_delete: r(&notify_release(dialect, RELEASE_DELETE, "$3")),
            get_mutex: r(GET_MUTEX),
            delete_mutex_with_version: r(DELETE_MUTEX_WITH_VERSION),
            delete_mutex_if_free: r(DELETE_MUTEX_IF_FREE),
            upsert_semaphore: pick(UPSERT_SEMAPHORE_MYSQL, UPSERT_SEMAPHORE),
            lock_semaphore: r("SELECT max_size AS n FROM db_locks_semaphores \
                WHERE tenant_id = $1 AND semaphore_key = $2 {for_update}"),
            lock_slots: r(LOCK_SLOTS),
            reap_retired: r(REAP_RETIRED),
            live_retired_slots: r(LIVE_RETIRED_SLOTS),
            free_active_slots: r(FREE_ACTIVE_SLOTS),
            drop_free_slot: r(DROP_FREE_SLOT),
            unretire_slot: r(UNRETIRE_SLOT),
            get_semaphore: r(&format!("{SELECT_SEMAPHORES} AND s.semaphore_key = $2")),
            list_semaphores: r(&format!("{SELECT_SEMAPHORES} ORDER BY s.semaphore_key")),
            delete_slots: r(
                "DELETE FROM db_locks_mutexes WHERE tenant_id = $1 AND semaphore_key = $2",
            ),
            delete_semaphore: r(
                "DELETE FROM db_locks_semaphores WHERE tenant_id = $1 AND semaphore_key = $2",
            ),
            semaphore_mutexes: r(SEMAPHORE_MUTEXES),
            list_mutexes: r("SELECT {cols} FROM db_locks_mutexes \
                WHERE tenant_id = $1 AND semaphore_key = '' ORDER BY mutex_key"),
        }
    }

    /// Inserts free slots with the given indexes (keys `<semaphore>_<index>`, which must not
    /// exist). Params: $1 tenant, $2 semaphore key, then one key per slot.
    pub(crate) fn insert_slots(&self, indexes: &[i64]) -> Statement {
        let mut stmt = self.insert_slots_text(indexes);
        stmt.cache = false;
        stmt
    }

    fn insert_slots_text(&self, indexes: &[i64]) -> Statement {
        let rows: Vec<String> = indexes
            .iter()
            .enumerate()
            .map(|(i, index)| {
                format!(
                    "($1, $2, ${}, {index}, '', {{now_us}}, 0, FALSE, FALSE, {{now_ms}}, {{now_ms}}, {{now_ms}}, {{now_ms}})",
                    i + 3,
                )
            })
            .collect();
        Statement::render(
            self.dialect,
            &format!(
                "INSERT INTO db_locks_mutexes (tenant_id, semaphore_key, mutex_key, slot_index, version, \
                 fencing_token, lease_duration_ms, locked, retired, expires_at_ms, slot_expires_at_ms, \
                 created_at_ms, updated_at_ms) VALUES {}",
                rows.join(", ")
            ),
        )
    }

    /// `UPDATE` of the slots named by keys ($3, $4, ...): `set` is `retired = TRUE` or
    /// `retired = FALSE`, or `DELETE` when `set` is `None`. Params: $1 tenant, $2 semaphore key,
    /// then the keys.
    pub(crate) fn slots_by_key(&self, set: Option<&str>, count: usize) -> Statement {
        let mut stmt = self.slots_by_key_text(set, count);
        stmt.cache = false;
        stmt
    }

    fn slots_by_key_text(&self, set: Option<&str>, count: usize) -> Statement {
        let keys: Vec<String> = (0..count).map(|i| format!("${}", i + 3)).collect();
        let filter = format!(
            "WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key IN ({})",
            keys.join(", ")
        );
        Statement::render(
            self.dialect,
            &match set {
                Some(set) => format!("UPDATE db_locks_mutexes SET {set} {filter}"),
                None => format!("DELETE FROM db_locks_mutexes {filter}"),
            },
        )
    }
}

// Invariant: at most one live holder per mutex. The row is written only when it is new, free
// or expired by the server's clock, all in one statement; a busy row returns nothing. A row
// already held with this very version (an earlier attempt of the same acquire, whose reply was
// lost) is re-granted in place: the lease restarts, the fencing token stays.
// The fencing token grows by at least one per grant, and never falls below the server's clock
// in microseconds, so it also grows across deletion of the row.
const ACQUIRE_MUTEX: &str = "\
INSERT INTO db_locks_mutexes AS m (tenant_id, semaphore_key, mutex_key, slot_index, version, fencing_token, \
    lease_duration_ms, data, delete_on_release, locked, expires_at_ms, created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, 0, $4, {now_us}, $5, $6, $7, TRUE, {now_ms} + $5, {now_ms}, {now_ms})
ON CONFLICT (tenant_id, semaphore_key, mutex_key) DO UPDATE SET
    version = excluded.version,
    fencing_token = CASE WHEN m.version = excluded.version AND m.locked = TRUE THEN m.fencing_token
        ELSE {greatest}(m.fencing_token + 1, excluded.fencing_token) END,
    lease_duration_ms = excluded.lease_duration_ms,
    data = COALESCE(excluded.data, m.data),
    delete_on_release = excluded.delete_on_release,
    locked = TRUE,
    expires_at_ms = excluded.expires_at_ms,
    updated_at_ms = excluded.updated_at_ms
WHERE m.locked = FALSE OR m.expires_at_ms <= {now_ms} OR m.version = excluded.version
RETURNING {cols}";

// MySQL has no conditional DO UPDATE, so every column is set through IF(<granted>, new, old).
// MySQL assigns left to right, and later conditions see the values assigned before them: the
// fencing token goes first (it must tell a re-grant, which keeps it, from a fresh grant), then
// the version, which changes exactly when this statement grants, and every later column keys
// off `version = VALUES(version)`. The caller reads the row back by its key and the new version
// (`select_by_key_version`): found means granted. Cost: two round trips, the second a
// primary-key lookup.
const ACQUIRE_MUTEX_MYSQL: &str = "\
INSERT INTO db_locks_mutexes (tenant_id, semaphore_key, mutex_key, slot_index, version, fencing_token, \
    lease_duration_ms, data, delete_on_release, locked, expires_at_ms, created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, 0, $4, {now_us}, $5, $6, $7, TRUE, {now_ms} + $5, {now_ms}, {now_ms})
ON DUPLICATE KEY UPDATE
    fencing_token = IF(version = VALUES(version) AND locked = TRUE, fencing_token,
        IF(locked = FALSE OR expires_at_ms <= {now_ms}, GREATEST(fencing_token + 1, VALUES(fencing_token)), fencing_token)),
    version = IF(locked = FALSE OR expires_at_ms <= {now_ms} OR version = VALUES(version), VALUES(version), version),
    lease_duration_ms = IF(version = VALUES(version), VALUES(lease_duration_ms), lease_duration_ms),
    data = IF(version = VALUES(version), COALESCE(VALUES(data), data), data),
    delete_on_release = IF(version = VALUES(version), VALUES(delete_on_release), delete_on_release),
    updated_at_ms = IF(version = VALUES(version), VALUES(updated_at_ms), updated_at_ms),
    expires_at_ms = IF(version = VALUES(version), VALUES(expires_at_ms), expires_at_ms),
    locked = IF(version = VALUES(version), TRUE, locked)";

// Semaphore slots. Invariants (kept by every statement below and by `put_semaphore`):
// * A semaphore of max_size N has exactly N active slots (retired = FALSE); a shrink marks
//   slots it cannot drop yet (they are held) retired. A retired slot is never granted.
// * A slot is live iff locked = TRUE and expires_at_ms > now. A slot that is not locked has
//   expires_at_ms <= now (release and creation set it to now), so "free or expired" is
//   `expires_at_ms <= now`: one range on the free-slot index (tenant_id, semaphore_key,
//   retired, slot_expires_at_ms), whatever max_size and however many slots are busy.
// * slot_expires_at_ms = expires_at_ms for every slot (every statement that writes one writes
//   the other), and is NULL for plain mutexes, whose statements never write it: so the index
//   over it costs mutex updates nothing, and PostgreSQL can still update mutex rows in place
//   (HOT), which it cannot when an indexed column changes.
// * A lease that ran out is never renewed (RENEW checks expiry), so a slot that is not live
//   never becomes live again except through a grant.
// Bound: a grant happens only while no retired slot is live, so every live permit is on an
// active slot: at most N. While a retired slot is live, the slow path (in the store) pairs it
// with a free active slot, deleting the free one and un-retiring the live one, which keeps N
// active slots; grants resume as soon as fewer than N permits are live.

// The fast path of a permit acquire: the free or expired active slot that was freed last, if
// no retired slot is live. Last, not first: the scan starts at the live end of the index and
// does not walk the dead entries that grants leave behind (PostgreSQL keeps them until
// vacuum), which taking the oldest slot first did, growing with the number of slots.
// PostgreSQL locks the candidate with SKIP LOCKED so concurrent acquirers take different
// slots, and re-evaluates the candidate's conditions on its latest version when it locks it.
// The outer WHERE re-checks that the slot is free on columns no index holds: naming the
// indexed ones there, PostgreSQL found the slot again through the free-slot index (walking its
// dead entries) instead of the primary key.
// Cost: a range on the free-slot index (the candidate), a probe of the retired-slot index (the
// live-retired check) and a primary-key update; a busy answer reads one entry of each index.
// The candidate subquery names `semaphore_key <> ''`, the free-slot index's predicate
// (PostgreSQL and SQLite index only slots there); the retired-slot index's is `retired = TRUE`.
const ACQUIRE_PERMIT: &str = "\
UPDATE db_locks_mutexes SET
    version = $3,
    fencing_token = {greatest}(fencing_token + 1, {now_us}),
    lease_duration_ms = {permit_lease},
    expires_at_ms = {now_ms} + {permit_lease},
    slot_expires_at_ms = {now_ms} + {permit_lease},
    data = COALESCE($5, data),
    delete_on_release = FALSE,
    locked = TRUE,
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND (locked = FALSE OR expires_at_ms <= {now_ms})
  AND mutex_key = (
    SELECT s.mutex_key FROM db_locks_mutexes s
    WHERE s.tenant_id = $1 AND s.semaphore_key = $2 AND s.semaphore_key <> ''
      AND s.retired = FALSE AND s.slot_expires_at_ms <= {now_ms}
      AND NOT {live_retired}
    ORDER BY s.slot_expires_at_ms DESC
    LIMIT 1
    {skip_locked})
RETURNING {cols}";

// The same invariant as ACQUIRE_PERMIT. MySQL updates the first qualifying slot with
// ORDER BY ... LIMIT 1 on the free-slot index (InnoDB locks it; a concurrent acquirer waits
// for it, then reads it busy and moves on). Every ORDER BY column is DESC, so MariaDB walks
// the index backwards from the most recently freed slot; with the fixed columns ascending and
// the last descending it sorted every free slot instead. It assigns slot_expires_at_ms, a column of the index it
// walks, so MariaDB buffers the rows it picked ("Using buffer"); with LIMIT 1 that is one.
// The live-retired check sits in a derived table with an aggregate, which MySQL materialises,
// because it cannot read the table it updates in a plain subquery.
// LAST_INSERT_ID(slot_index) records the granted slot's index in the session, so that
// `select_permit_by_version` finds that slot; it sits in the assignment of delete_on_release
// (always FALSE: slot indexes are >= 0).
const ACQUIRE_PERMIT_MYSQL: &str = "\
UPDATE db_locks_mutexes FORCE INDEX (db_locks_mutexes_free_slots) SET
    version = $3,
    fencing_token = GREATEST(fencing_token + 1, {now_us}),
    lease_duration_ms = {permit_lease},
    expires_at_ms = {now_ms} + {permit_lease},
    slot_expires_at_ms = {now_ms} + {permit_lease},
    data = COALESCE($5, data),
    delete_on_release = (LAST_INSERT_ID(slot_index) < 0),
    locked = TRUE,
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND retired = FALSE AND slot_expires_at_ms <= {now_ms}
  AND (SELECT live.n FROM (
        SELECT COUNT(*) AS n FROM db_locks_mutexes r FORCE INDEX (db_locks_mutexes_free_slots)
        WHERE r.tenant_id = $1 AND r.semaphore_key = $2 AND r.retired = TRUE
          AND r.slot_expires_at_ms > {now_ms}) AS live) = 0
ORDER BY tenant_id DESC, semaphore_key DESC, retired DESC, slot_expires_at_ms DESC
LIMIT 1";

// A retried permit acquire whose first attempt may have been granted (its reply was lost):
// the slot held with this acquire's own version, if any, re-granted in place (the lease
// restarts, the fencing token stays). Only after a failed attempt: with no index on the
// version it reads every slot of the semaphore.
const REGRANT_PERMIT: &str = "\
UPDATE db_locks_mutexes SET
    lease_duration_ms = {permit_lease},
    expires_at_ms = {now_ms} + {permit_lease},
    slot_expires_at_ms = {now_ms} + {permit_lease},
    data = COALESCE($5, data),
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND version = $3 AND locked = TRUE
  AND expires_at_ms > {now_ms}
RETURNING {cols}";

const REGRANT_PERMIT_MYSQL: &str = "\
UPDATE db_locks_mutexes SET
    lease_duration_ms = {permit_lease},
    expires_at_ms = {now_ms} + {permit_lease},
    slot_expires_at_ms = {now_ms} + {permit_lease},
    data = COALESCE($5, data),
    delete_on_release = (LAST_INSERT_ID(slot_index) < 0),
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND version = $3 AND locked = TRUE
  AND expires_at_ms > {now_ms}";

// Tells a busy semaphore from a missing one, and says whether the slow path may help (it has
// retired slots). Cost: a primary-key lookup and one probe of the retired-slot index.
const SEMAPHORE_STATE: &str = "\
SELECT (SELECT COUNT(*) FROM (SELECT 1 AS one FROM db_locks_mutexes r
        WHERE r.tenant_id = $1 AND r.semaphore_key = $2 AND r.retired = TRUE
        LIMIT 1) AS any_retired) AS has_retired
FROM db_locks_semaphores s WHERE s.tenant_id = $1 AND s.semaphore_key = $2";

// Every slot of a semaphore, locked (resize and delete decide on all of them, under the lock
// of the semaphore row), with the server's clock to judge liveness by.
const LOCK_SLOTS: &str = "\
SELECT mutex_key, slot_index, retired, locked, expires_at_ms, {now_ms} AS now_ms
FROM db_locks_mutexes WHERE tenant_id = $1 AND semaphore_key = $2
ORDER BY slot_index {for_update}";

// A retired slot that is not live holds nobody and never will again: it goes.
const REAP_RETIRED: &str = "\
DELETE FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND retired = TRUE AND slot_expires_at_ms <= {now_ms}";

// The slow path's view: the live retired slots, and (FREE_ACTIVE_SLOTS) as many free
// active ones, to pair them with. Both locked: the pairing re-checks nothing else.
const LIVE_RETIRED_SLOTS: &str = "\
SELECT mutex_key, slot_index, retired, locked, expires_at_ms, {now_ms} AS now_ms
FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND retired = TRUE AND slot_expires_at_ms > {now_ms}
ORDER BY slot_index {for_update}";

const FREE_ACTIVE_SLOTS: &str = "\
SELECT mutex_key, slot_index, retired, locked, expires_at_ms, {now_ms} AS now_ms
FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND semaphore_key <> ''
  AND retired = FALSE AND slot_expires_at_ms <= {now_ms}
ORDER BY slot_expires_at_ms LIMIT $3 {for_update}";

// Pairing, half one: a free active slot goes (the other half un-retires a live retired slot in
// its place, in the same transaction, so N active slots remain). Re-checks that it is free.
const DROP_FREE_SLOT: &str = "\
DELETE FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND retired = FALSE
  AND slot_expires_at_ms <= {now_ms}";

// Pairing, half two.
const UNRETIRE_SLOT: &str = "\
UPDATE db_locks_mutexes SET retired = FALSE
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND retired = TRUE";

// Invariant: only the current holder renews, and only a lease that has not run out. Compare-
// and-set on the version; the new version is accepted too, so a retry of a renewal whose
// reply was lost succeeds instead of reporting the lease lost. An expired lease is not
// renewed even if nobody took it over: for a permit, the slot may already have been counted
// free (a shrink, a grant of another slot), and bringing it back would exceed max_size.
const RENEW: &str = "\
UPDATE db_locks_mutexes SET
    version = $5,
    lease_duration_ms = COALESCE($6, lease_duration_ms),
    expires_at_ms = {now_ms} + COALESCE($6, lease_duration_ms){slot_expiry},
    data = COALESCE($7, data),
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3
  AND locked = TRUE AND version IN ($4, $5) AND expires_at_ms > {now_ms}
RETURNING {cols}";

// As RENEW; read back with `select_by_key_version` on the new version.
const RENEW_MYSQL: &str = "\
UPDATE db_locks_mutexes SET
    version = $5,
    lease_duration_ms = COALESCE($6, lease_duration_ms),
    expires_at_ms = {now_ms} + COALESCE($6, lease_duration_ms){slot_expiry},
    data = COALESCE($7, data),
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3
  AND locked = TRUE AND version IN ($4, $5) AND expires_at_ms > {now_ms}";

// MySQL's read-back after a conditional write: the row carries the new version only if this
// write granted it (versions are never reused), so found means granted.
// Cost: a primary-key lookup.
const SELECT_BY_KEY_VERSION: &str = "\
SELECT {cols} FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version = $4 AND locked = TRUE";

// As SELECT_BY_KEY_VERSION, for a permit: the slot is the one the permit statement recorded
// with LAST_INSERT_ID on this connection. If that statement granted nothing, LAST_INSERT_ID()
// still holds an earlier value, but no slot carries this attempt's version: not granted.
// Cost: a lookup on the slot-index index (MySQL keeps it for this).
const SELECT_PERMIT_BY_VERSION: &str = "\
SELECT {cols} FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND slot_index = LAST_INSERT_ID() AND version = $3
  AND locked = TRUE";

// Invariant: only the current holder releases (compare-and-set on the version, or on the new
// version of a renewal whose outcome the holder does not know). The row and its fencing token
// stay, so the next grant's token is higher. expires_at_ms = now keeps "not locked implies
// expired" (the free-slot index relies on it).
const RELEASE: &str = "\
UPDATE db_locks_mutexes SET
    locked = FALSE,
    data = COALESCE($6, data),
    expires_at_ms = {now_ms}{slot_expiry},
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version IN ($4, $5)
  AND locked = TRUE";

// Invariant: only the current holder deletes on release. The next grant re-creates the row
// with a fencing token from the server clock, above every earlier token.
const RELEASE_DELETE: &str = "\
DELETE FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version IN ($4, $5)
  AND locked = TRUE";

const GET_MUTEX: &str = "\
SELECT {cols} FROM db_locks_mutexes WHERE tenant_id = $1 AND semaphore_key = '' AND mutex_key = $2";

const DELETE_MUTEX_WITH_VERSION: &str = "\
DELETE FROM db_locks_mutexes WHERE tenant_id = $1 AND semaphore_key = '' AND mutex_key = $2 AND version = $3";

// Invariant: an administrative delete never removes a live lease.
const DELETE_MUTEX_IF_FREE: &str = "\
DELETE FROM db_locks_mutexes WHERE tenant_id = $1 AND semaphore_key = '' AND mutex_key = $2
  AND (locked = FALSE OR expires_at_ms <= {now_ms})";

const UPSERT_SEMAPHORE: &str = "\
INSERT INTO db_locks_semaphores (tenant_id, semaphore_key, version, max_size, lease_duration_ms, \
    created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, $4, $5, {now_ms}, {now_ms})
ON CONFLICT (tenant_id, semaphore_key) DO UPDATE SET
    version = excluded.version,
    max_size = excluded.max_size,
    lease_duration_ms = excluded.lease_duration_ms,
    updated_at_ms = excluded.updated_at_ms";

const UPSERT_SEMAPHORE_MYSQL: &str = "\
INSERT INTO db_locks_semaphores (tenant_id, semaphore_key, version, max_size, lease_duration_ms, \
    created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, $4, $5, {now_ms}, {now_ms})
ON DUPLICATE KEY UPDATE
    version = VALUES(version),
    max_size = VALUES(max_size),
    lease_duration_ms = VALUES(lease_duration_ms),
    updated_at_ms = VALUES(updated_at_ms)";

// busy_count: live permits, retired slots included (a report: it reads every slot).
const SELECT_SEMAPHORES: &str = "\
SELECT s.tenant_id, s.semaphore_key, s.version, s.max_size, s.lease_duration_ms,
    (SELECT COUNT(*) FROM db_locks_mutexes m
     WHERE m.tenant_id = s.tenant_id AND m.semaphore_key = s.semaphore_key
       AND m.locked = TRUE AND m.expires_at_ms > {now_ms}) AS busy_count
FROM db_locks_semaphores s
WHERE s.tenant_id = $1";

// The active slots, and the retired ones while they are live.
const SEMAPHORE_MUTEXES: &str = "\
SELECT {cols} FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2
  AND (retired = FALSE OR (locked = TRUE AND expires_at_ms > {now_ms}))
ORDER BY slot_index";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_parameters_per_dialect() {
        let t = "SELECT $1, $2, $1 FROM t WHERE x = {now_ms}";
        let pg = Statement::render(Dialect::Postgres, t);
        assert!(pg.sql.starts_with("SELECT $1, $2, $3"));
        assert_eq!(pg.occurrences, vec![0, 1, 0]);
        assert_eq!(&pg.pieces[..3], ["SELECT ", ", ", ", "]);
        assert!(pg.pieces[3].starts_with(" FROM t WHERE x = CAST(EXTRACT"));
        assert!(pg.cache);
        let lite = Statement::render(Dialect::Sqlite, t);
        assert!(lite.sql.starts_with("SELECT ?, ?, ?"));
        assert_eq!(lite.occurrences, vec![0, 1, 0]);
        let my = Statement::render(Dialect::Mysql, t);
        assert!(my.sql.starts_with("SELECT ?, ?, ?"));
        assert_eq!(my.occurrences, vec![0, 1, 0]);
        assert!(my.sql.contains("UNIX_TIMESTAMP"));
        assert!(my.cache);
    }
}
