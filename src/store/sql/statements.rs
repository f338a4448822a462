//! The SQL of the diesel stores, one text per operation and dialect.
//!
//! Texts are written with PostgreSQL's numbered parameters (`$1`, `$2`, ...) and a few
//! `{placeholders}` for what the dialects spell differently. [`Statement::render`] turns a text
//! into the dialect's own form once, when the store is built, so that one list of parameters
//! serves every dialect: SQLite takes `?N` (numbered, reusable), MySQL takes `?` (positional),
//! and the parameters are bound in the order the dialect reads them.
//!
//! Every statement names the invariant it keeps. The ones that decide who holds a lock are a
//! single conditional write, so two writers can never both see the lock as theirs.

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
    pub(crate) sql: String,
    /// Indexes into the parameter list, in binding order.
    pub(crate) binds: Vec<usize>,
}

impl Statement {
    /// Renders `template` for `dialect` (see the module docs).
    pub(crate) fn render(dialect: Dialect, template: &str) -> Statement {
        let text = fill_placeholders(dialect, template);
        let mut sql = String::with_capacity(text.len());
        let mut numbers = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                numbers.push(n);
                match dialect {
                    Dialect::Postgres => sql.push_str(&format!("${n}")),
                    Dialect::Sqlite => sql.push_str(&format!("?{n}")),
                    Dialect::Mysql => sql.push('?'),
                }
            } else {
                sql.push(c);
            }
        }
        let binds = match dialect {
            // Numbered dialects bind $1..$max once each.
            Dialect::Postgres | Dialect::Sqlite => {
                (0..numbers.iter().copied().max().unwrap_or(0)).collect()
            }
            // Positional: one bind per occurrence.
            Dialect::Mysql => numbers.iter().map(|n| n - 1).collect(),
        };
        Statement { sql, binds }
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
    let skip_locked = match dialect {
        // Concurrent acquirers pass over each other's candidate slots instead of queueing.
        Dialect::Postgres => "FOR UPDATE OF s SKIP LOCKED",
        // SQLite runs one writer at a time: nothing to skip.
        Dialect::Sqlite | Dialect::Mysql => "",
    };
    template
        .replace("{cols}", COLS)
        .replace("{now_ms}", now_ms)
        .replace("{now_us}", now_us)
        .replace("{greatest}", greatest)
        .replace("{skip_locked}", skip_locked)
        .replace("{permit_lease}", PERMIT_LEASE)
        .replace("{max_size}", MAX_SIZE)
}

/// Columns read into a mutex row, in the order of `MutexRow`.
const COLS: &str = "tenant_id, semaphore_key, mutex_key, version, fencing_token, \
    lease_duration_ms, data, delete_on_release, locked, expires_at_ms";

/// A permit's lease: the request's, or (0) the semaphore's.
const PERMIT_LEASE: &str =
    "COALESCE(NULLIF($4, 0), (SELECT sem.lease_duration_ms FROM db_locks_semaphores sem \
    WHERE sem.tenant_id = $1 AND sem.semaphore_key = $2))";

/// The semaphore's size (no row: NULL, so nothing is granted).
const MAX_SIZE: &str = "(SELECT sem.max_size FROM db_locks_semaphores sem \
    WHERE sem.tenant_id = $1 AND sem.semaphore_key = $2)";

/// All statements of one dialect.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    pub(crate) dialect: Dialect,
    /// Params: $1 tenant, $2 semaphore key (''), $3 key, $4 version, $5 lease ms, $6 data,
    /// $7 delete_on_release.
    pub(crate) acquire_mutex: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 version, $4 lease ms (0: the semaphore's), $5 data.
    pub(crate) acquire_permit: Statement,
    /// Params: $1 tenant, $2 semaphore key ('' for a mutex), $3 key, $4 version, $5 new version,
    /// $6 lease ms, $7 data.
    pub(crate) renew: Statement,
    /// MySQL only (no RETURNING): reads back the mutex or permit a mutex acquire or a renewal
    /// just wrote. Params: $1 tenant, $2 semaphore key ('' for a mutex), $3 key, $4 version.
    pub(crate) select_by_key_version: Statement,
    /// MySQL only: reads back the permit `acquire_permit` just granted, on the same connection.
    /// Params: $1 tenant, $2 semaphore key, $3 version.
    pub(crate) select_permit_by_version: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 key, $4 version, $5 data.
    pub(crate) release: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 key, $4 version.
    pub(crate) release_delete: Statement,
    /// Params as `release_delete`.
    pub(crate) release_delete_if_flagged: Statement,
    /// Params: $1 tenant, $2 key.
    pub(crate) get_mutex: Statement,
    /// Params: $1 tenant, $2 key, $3 version.
    pub(crate) delete_mutex_with_version: Statement,
    /// Params: $1 tenant, $2 key.
    pub(crate) delete_mutex_if_free: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 version, $4 max size, $5 lease ms.
    pub(crate) upsert_semaphore: Statement,
    /// Params: $1 tenant, $2 semaphore key, $3 max size.
    pub(crate) retire_free_slots: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) get_semaphore: Statement,
    /// Params: $1 tenant.
    pub(crate) list_semaphores: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) count_live_permits: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) delete_slots: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) delete_semaphore: Statement,
    /// Params: $1 tenant, $2 semaphore key.
    pub(crate) semaphore_mutexes: Statement,
    /// Params: $1 tenant.
    pub(crate) list_mutexes: Statement,
}

impl Statements {
    pub(crate) fn new(dialect: Dialect) -> Statements {
        let mysql = dialect == Dialect::Mysql;
        let r = |template: &str| Statement::render(dialect, template);
        Statements {
            dialect,
            acquire_mutex: r(if mysql {
                ACQUIRE_MUTEX_MYSQL
            } else {
                ACQUIRE_MUTEX
            }),
            acquire_permit: r(if mysql {
                ACQUIRE_PERMIT_MYSQL
            } else {
                ACQUIRE_PERMIT
            }),
            renew: r(if mysql { RENEW_MYSQL } else { RENEW }),
            select_by_key_version: r(SELECT_BY_KEY_VERSION),
            select_permit_by_version: r(SELECT_PERMIT_BY_VERSION),
            release: r(RELEASE),
            release_delete: r(RELEASE_DELETE),
            release_delete_if_flagged: r(RELEASE_DELETE_IF_FLAGGED),
            get_mutex: r(GET_MUTEX),
            delete_mutex_with_version: r(DELETE_MUTEX_WITH_VERSION),
            delete_mutex_if_free: r(DELETE_MUTEX_IF_FREE),
            upsert_semaphore: r(if mysql {
                UPSERT_SEMAPHORE_MYSQL
            } else {
                UPSERT_SEMAPHORE
            }),
            retire_free_slots: r(RETIRE_FREE_SLOTS),
            get_semaphore: r(&format!("{SELECT_SEMAPHORES} AND s.semaphore_key = $2")),
            list_semaphores: r(&format!("{SELECT_SEMAPHORES} ORDER BY s.semaphore_key")),
            count_live_permits: r(COUNT_LIVE_PERMITS),
            delete_slots: r(
                "DELETE FROM db_locks_mutexes WHERE tenant_id = $1 AND semaphore_key = $2",
            ),
            delete_semaphore: r(
                "DELETE FROM db_locks_semaphores WHERE tenant_id = $1 AND semaphore_key = $2",
            ),
            semaphore_mutexes: r("SELECT {cols} FROM db_locks_mutexes \
                WHERE tenant_id = $1 AND semaphore_key = $2 ORDER BY slot_index"),
            list_mutexes: r("SELECT {cols} FROM db_locks_mutexes \
                WHERE tenant_id = $1 AND semaphore_key = '' ORDER BY mutex_key"),
        }
    }

    /// Inserts the missing slots `first..first + count` of a semaphore; existing slots (held
    /// or not) are left as they are. Params: $1 tenant, $2 semaphore key, then one key per slot.
    pub(crate) fn insert_slots(&self, first: i64, count: i64) -> Statement {
        let rows: Vec<String> = (0..count)
            .map(|i| {
                format!(
                    "($1, $2, ${}, {}, '', {{now_us}}, 0, FALSE, {{now_ms}}, {{now_ms}}, {{now_ms}})",
                    i + 3,
                    first + i
                )
            })
            .collect();
        let conflict = if self.dialect == Dialect::Mysql {
            "ON DUPLICATE KEY UPDATE slot_index = slot_index"
        } else {
            "ON CONFLICT (tenant_id, semaphore_key, mutex_key) DO NOTHING"
        };
        Statement::render(
            self.dialect,
            &format!(
                "INSERT INTO db_locks_mutexes (tenant_id, semaphore_key, mutex_key, slot_index, version, \
                 fencing_token, lease_duration_ms, locked, expires_at_ms, created_at_ms, updated_at_ms) \
                 VALUES {} {conflict}",
                rows.join(", ")
            ),
        )
    }
}

// Invariant: at most one live holder per mutex. The row is written only when it is new, free
// or expired by the server's clock, all in one statement; a busy row returns nothing.
// The fencing token grows by at least one per grant, and never falls below the server's clock
// in microseconds, so it also grows across deletion of the row.
const ACQUIRE_MUTEX: &str = "\
INSERT INTO db_locks_mutexes AS m (tenant_id, semaphore_key, mutex_key, slot_index, version, fencing_token, \
    lease_duration_ms, data, delete_on_release, locked, expires_at_ms, created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, 0, $4, {now_us}, $5, $6, $7, TRUE, {now_ms} + $5, {now_ms}, {now_ms})
ON CONFLICT (tenant_id, semaphore_key, mutex_key) DO UPDATE SET
    version = excluded.version,
    fencing_token = {greatest}(m.fencing_token + 1, excluded.fencing_token),
    lease_duration_ms = excluded.lease_duration_ms,
    data = COALESCE(excluded.data, m.data),
    delete_on_release = excluded.delete_on_release,
    locked = TRUE,
    expires_at_ms = excluded.expires_at_ms,
    updated_at_ms = excluded.updated_at_ms
WHERE m.locked = FALSE OR m.expires_at_ms <= {now_ms}
RETURNING {cols}";

// MySQL has no conditional DO UPDATE, so every column is set through IF(<free>, new, old).
// <free> reads `locked` and `expires_at_ms`, so those two are assigned last: MySQL assigns
// left to right, and the conditions above must see the old values. `locked` then keys off the
// version, which changed exactly when the grant happened. The caller reads the row back by
// its key and the new version (`select_by_key_version`): found means granted. Cost: two
// round trips, the second a primary-key lookup.
const ACQUIRE_MUTEX_MYSQL: &str = "\
INSERT INTO db_locks_mutexes (tenant_id, semaphore_key, mutex_key, slot_index, version, fencing_token, \
    lease_duration_ms, data, delete_on_release, locked, expires_at_ms, created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, 0, $4, {now_us}, $5, $6, $7, TRUE, {now_ms} + $5, {now_ms}, {now_ms})
ON DUPLICATE KEY UPDATE
    version = IF(locked = FALSE OR expires_at_ms <= {now_ms}, VALUES(version), version),
    fencing_token = IF(version = VALUES(version), GREATEST(fencing_token + 1, VALUES(fencing_token)), fencing_token),
    lease_duration_ms = IF(version = VALUES(version), VALUES(lease_duration_ms), lease_duration_ms),
    data = IF(version = VALUES(version), COALESCE(VALUES(data), data), data),
    delete_on_release = IF(version = VALUES(version), VALUES(delete_on_release), delete_on_release),
    updated_at_ms = IF(version = VALUES(version), VALUES(updated_at_ms), updated_at_ms),
    expires_at_ms = IF(version = VALUES(version), VALUES(expires_at_ms), expires_at_ms),
    locked = IF(version = VALUES(version), TRUE, locked)";

// Invariant: at most max_size live permits. A slot is granted only if it is free or expired,
// its index is below max_size, and no retired slot (index >= max_size, left over from a
// shrink) is still live. Retired slots are never granted again, so once they drain the live
// count is bounded by the slots below max_size. PostgreSQL locks the chosen candidate with
// SKIP LOCKED so concurrent acquirers take different slots; the outer WHERE re-checks that
// the slot is still free once it is locked.
// Cost: the subqueries on the semaphore row and on retired slots use only parameters, so
// they run once per statement; the candidate scan and the retired check are ranges on the
// slot-index index (the candidate scan stops at the first free slot, the retired check
// starts past the last live slot index), and the update finds the slot again by primary
// key, whatever max_size is.
// Both subqueries name `semaphore_key <> ''` and `slot_index >= 0` (true of every slot), the
// slot-index index's predicate, to be allowed to use it (see the migration). In the retired
// check `slot_index >= 0` comes after `slot_index >= max_size`: of two lower bounds SQLite
// ranges on the first it meets, and on `>= 0` it read every slot. The outer WHERE names
// neither: finding the slot by index there, next to `slot_index >= 0`, SQLite again ranged
// over every slot; by primary key it is one lookup everywhere.
const ACQUIRE_PERMIT: &str = "\
UPDATE db_locks_mutexes SET
    version = $3,
    fencing_token = {greatest}(fencing_token + 1, {now_us}),
    lease_duration_ms = {permit_lease},
    expires_at_ms = {now_ms} + {permit_lease},
    data = COALESCE($5, data),
    delete_on_release = FALSE,
    locked = TRUE,
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2
  AND (locked = FALSE OR expires_at_ms <= {now_ms})
  AND mutex_key = (
    SELECT s.mutex_key FROM db_locks_mutexes s
    WHERE s.tenant_id = $1 AND s.semaphore_key = $2 AND s.semaphore_key <> ''
      AND s.slot_index >= 0 AND s.slot_index < {max_size}
      AND (s.locked = FALSE OR s.expires_at_ms <= {now_ms})
      AND NOT EXISTS (
        SELECT 1 FROM db_locks_mutexes r
        WHERE r.tenant_id = $1 AND r.semaphore_key = $2 AND r.semaphore_key <> ''
          AND r.slot_index >= {max_size} AND r.slot_index >= 0
          AND r.locked = TRUE AND r.expires_at_ms > {now_ms})
    LIMIT 1
    {skip_locked})
RETURNING {cols}";

// The same invariant as ACQUIRE_PERMIT. MySQL updates the first qualifying slot with
// ORDER BY ... LIMIT 1 (InnoDB locks it); the retired-slot count sits in a derived table
// with an aggregate, which MySQL materialises, because it cannot read the table it updates
// in a plain subquery. LAST_INSERT_ID(slot_index) records the granted slot's index in the
// session, so that `select_permit_by_version` finds that slot by index. It sits in the
// assignment of delete_on_release (always FALSE: slot indexes are >= 0) rather than in one of
// slot_index, so that the UPDATE assigns no column of the index it walks.
// Cost: two round trips, each an index range or lookup of a few rows, whatever max_size is:
// - FORCE INDEX walks the slot-index index and stops at the first free slot; left to
//   itself, MariaDB reads every slot of the semaphore by primary key and sorts them.
// - ORDER BY names the index's leading columns, though they are fixed by the WHERE: the
//   parameters come in the connection's collation (utf8mb4_general_ci), not the keys'
//   (utf8mb4_bin), so MariaDB does not count those columns as constant, and `ORDER BY
//   slot_index` alone did not match the index order: it read every slot of the semaphore
//   through the index and sorted them (slower than without FORCE INDEX).
// - The retired-slot count joins the semaphore row by primary key, which MariaDB reads as a
//   constant while planning, so `slot_index >= max_size` is a range on the slot-index index
//   (past the last slot: empty). With max_size from a scalar subquery instead, it read every
//   slot of the semaphore by primary key.
// - That read takes shared locks (InnoDB locks what an UPDATE's subqueries read), so FORCE
//   INDEX holds it to the range, too: had it read the live slots, an acquirer holding a shared
//   lock on a busy slot and then asking for the exclusive one deadlocked with that slot's
//   release (1 run in 10 of the conformance suite's semaphore contention case, where
//   MariaDB read the 3 slots by primary key).
const ACQUIRE_PERMIT_MYSQL: &str = "\
UPDATE db_locks_mutexes FORCE INDEX (db_locks_mutexes_slot_index) SET
    version = $3,
    fencing_token = GREATEST(fencing_token + 1, {now_us}),
    lease_duration_ms = {permit_lease},
    expires_at_ms = {now_ms} + {permit_lease},
    data = COALESCE($5, data),
    delete_on_release = (LAST_INSERT_ID(slot_index) < 0),
    locked = TRUE,
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2
  AND (locked = FALSE OR expires_at_ms <= {now_ms})
  AND slot_index < {max_size}
  AND (SELECT live.n FROM (
        SELECT COUNT(*) AS n FROM db_locks_semaphores sem
        JOIN db_locks_mutexes r FORCE INDEX (db_locks_mutexes_slot_index)
          ON r.tenant_id = sem.tenant_id AND r.semaphore_key = sem.semaphore_key
        WHERE sem.tenant_id = $1 AND sem.semaphore_key = $2 AND r.slot_index >= sem.max_size
          AND r.locked = TRUE AND r.expires_at_ms > {now_ms}) AS live) = 0
ORDER BY tenant_id, semaphore_key, slot_index
LIMIT 1";

// Invariant: only the current holder renews. Compare-and-set on the version; the new version
// is accepted too, so a retry of a renewal whose reply was lost succeeds instead of
// reporting the lease lost.
const RENEW: &str = "\
UPDATE db_locks_mutexes SET
    version = $5,
    lease_duration_ms = $6,
    expires_at_ms = {now_ms} + $6,
    data = COALESCE($7, data),
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3
  AND locked = TRUE AND version IN ($4, $5)
RETURNING {cols}";

// As RENEW; read back with `select_by_key_version` on the new version.
const RENEW_MYSQL: &str = "\
UPDATE db_locks_mutexes SET
    version = $5,
    lease_duration_ms = $6,
    expires_at_ms = {now_ms} + $6,
    data = COALESCE($7, data),
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3
  AND locked = TRUE AND version IN ($4, $5)";

// MySQL's read-back after a conditional write: the row carries the new version only if this
// write granted it (versions are never reused), so found means granted.
// Cost: a primary-key lookup. (By version alone it read every mutex of the tenant, or every
// slot of the semaphore: no index has the version.)
const SELECT_BY_KEY_VERSION: &str = "\
SELECT {cols} FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version = $4 AND locked = TRUE";

// As SELECT_BY_KEY_VERSION, for a permit: the slot is the one ACQUIRE_PERMIT_MYSQL recorded
// with LAST_INSERT_ID on this connection. If that statement granted nothing, LAST_INSERT_ID()
// still holds an earlier value, but no slot carries this attempt's new version: not granted.
// Cost: a lookup on the slot-index index.
const SELECT_PERMIT_BY_VERSION: &str = "\
SELECT {cols} FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND slot_index = LAST_INSERT_ID() AND version = $3
  AND locked = TRUE";

// Invariant: only the current holder releases (compare-and-set on the version). The row and
// its fencing token stay, so the next grant's token is higher.
// Cost, here and in RENEW: a primary-key lookup. Neither names `slot_index >= 0`, so neither
// can take the partial slot-index index (see the migration).
const RELEASE: &str = "\
UPDATE db_locks_mutexes SET
    locked = FALSE,
    data = COALESCE($5, data),
    expires_at_ms = {now_ms},
    updated_at_ms = {now_ms}
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version = $4 AND locked = TRUE";

// Invariant: only the current holder deletes on release. The next grant re-creates the row
// with a fencing token from the server clock, above every earlier token.
const RELEASE_DELETE: &str = "\
DELETE FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version = $4 AND locked = TRUE";

const RELEASE_DELETE_IF_FLAGGED: &str = "\
DELETE FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND mutex_key = $3 AND version = $4 AND locked = TRUE
  AND delete_on_release = TRUE";

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

// Shrinking: free slots beyond the new size go at once; held ones stay until released or
// expired (ACQUIRE_PERMIT never grants them, and the next resize removes them).
const RETIRE_FREE_SLOTS: &str = "\
DELETE FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND slot_index >= $3
  AND (locked = FALSE OR expires_at_ms <= {now_ms})";

const SELECT_SEMAPHORES: &str = "\
SELECT s.tenant_id, s.semaphore_key, s.version, s.max_size, s.lease_duration_ms,
    (SELECT COUNT(*) FROM db_locks_mutexes m
     WHERE m.tenant_id = s.tenant_id AND m.semaphore_key = s.semaphore_key
       AND m.locked = TRUE AND m.expires_at_ms > {now_ms}) AS busy_count
FROM db_locks_semaphores s
WHERE s.tenant_id = $1";

const COUNT_LIVE_PERMITS: &str = "\
SELECT COUNT(*) AS n FROM db_locks_mutexes
WHERE tenant_id = $1 AND semaphore_key = $2 AND locked = TRUE AND expires_at_ms > {now_ms}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_parameters_per_dialect() {
        let t = "SELECT $1, $2, $1 FROM t WHERE x = {now_ms}";
        let pg = Statement::render(Dialect::Postgres, t);
        assert_eq!(pg.binds, vec![0, 1]);
        assert!(pg.sql.starts_with("SELECT $1, $2, $1"));
        let lite = Statement::render(Dialect::Sqlite, t);
        assert!(lite.sql.starts_with("SELECT ?1, ?2, ?1"));
        assert_eq!(lite.binds, vec![0, 1]);
        let my = Statement::render(Dialect::Mysql, t);
        assert!(my.sql.starts_with("SELECT ?, ?, ?"));
        assert_eq!(my.binds, vec![0, 1, 0]);
        assert!(my.sql.contains("UNIX_TIMESTAMP"));
    }
}
