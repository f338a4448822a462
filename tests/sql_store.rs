//! Tests of the SQL stores beyond the conformance suite, which need a second, raw connection
//! to the database: to hold a row lock across an operation, to end the store's connections,
//! or to lay down a database as an earlier version left it. They talk to the servers at
//! `DB_LOCKS_TEST_POSTGRES_URL` and `DB_LOCKS_TEST_MYSQL_URL` and fail if those are not running.
// Most of the helpers serve the PostgreSQL and MySQL modules only.
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql")),
    allow(unused_imports, dead_code)
)]
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

#[path = "support/mod.rs"]
mod support;

use std::thread;
use std::time::{Duration, Instant};

use db_locks::{AcquireLockOptionsBuilder, LockError, LockManager, LocksConfig, SemaphoreBuilder};

use support::{unique, Backend};

/// The first migration's version: a database created by it has the landed schema.
const FIRST_MIGRATION: &str = "20261126000000";

/// Fills a database that has the first migration's schema (and nothing newer) with records as
/// that version wrote them: a held mutex, and a semaphore of size 2 shrunk from 3 while slots
/// 1 and 2 were held (slot 2 beyond the size: retired, told apart then by its index). Returns
/// the statements, for any dialect.
fn old_records(tenant: &str) -> Vec<String> {
    let now = chrono::Utc::now().timestamp_millis();
    let live = now + 600_000;
    let row = |sem: &str, key: &str, index: i64, version: &str, locked: bool, expires: i64| {
        format!(
            "INSERT INTO db_locks_mutexes (tenant_id, semaphore_key, mutex_key, slot_index, version, \
             fencing_token, lease_duration_ms, data, delete_on_release, locked, expires_at_ms, \
             created_at_ms, updated_at_ms) VALUES ('{tenant}', '{sem}', '{key}', {index}, '{version}', \
             7, 600000, NULL, FALSE, {}, {expires}, {now}, {now})",
            if locked { "TRUE" } else { "FALSE" }
        )
    };
    vec![
        row("", "old-mutex", 0, "v-mutex", true, live),
        row("pool", "pool_0", 0, "", false, now),
        row("pool", "pool_1", 1, "v-slot-1", true, live),
        row("pool", "pool_2", 2, "v-slot-2", true, live),
        format!(
            "INSERT INTO db_locks_semaphores (tenant_id, semaphore_key, version, max_size, \
             lease_duration_ms, created_at_ms, updated_at_ms) \
             VALUES ('{tenant}', 'pool', 'v-sem', 2, 600000, {now}, {now})"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY \
             NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        ),
        format!("INSERT INTO __diesel_schema_migrations (version) VALUES ('{FIRST_MIGRATION}')"),
    ]
}

/// Connects to a database holding `old_records` (which runs the newer migrations on it) and
/// checks that every record kept its meaning.
fn check_upgraded(database_url: String, tenant: &str) {
    let mut config = LocksConfig::new(tenant).with_database_url(database_url);
    config.retry_max = Duration::from_millis(50);
    let m = LockManager::connect(&config).expect("the upgrade runs");
    let held = m.get_mutex("old-mutex").unwrap().unwrap();
    assert!(held.locked && held.version == "v-mutex" && held.fencing_token == 7);
    let renewed = m
        .send_heartbeat(&held.to_heartbeat_options())
        .expect("a lease granted before the upgrade renews after it");
    m.release_lock(&renewed.to_release_options()).unwrap();
    // Two live permits (one of them on the retired slot) fill the semaphore of size 2.
    let pool = m.get_semaphore("pool").unwrap().unwrap();
    assert_eq!((pool.max_size, pool.busy_count), (2, 2));
    let try_permit = || {
        m.try_acquire_lock(
            &AcquireLockOptionsBuilder::new("pool")
                .with_requires_semaphore(true)
                .with_wait_duration_millis(0)
                .build(),
        )
        .unwrap()
    };
    assert!(try_permit().is_none(), "the retired slot must still count");
    let slots = m.get_semaphore_mutexes("pool").unwrap();
    let retired = slots.iter().find(|s| s.mutex_key == "pool_2").unwrap();
    m.release_lock(&retired.to_release_options()).unwrap();
    let permit = try_permit().expect("1 of 2 live: a permit is free");
    // The busy try above let the live retired slot take the free one's place; either way the
    // permit is not on the slot still held.
    assert_ne!(permit.mutex_key, "pool_1");
    assert!(try_permit().is_none());
    assert_eq!(m.get_semaphore("pool").unwrap().unwrap().busy_count, 2);
    // Names are exact now.
    let mut padded_config = config.clone();
    padded_config.tenant_id = format!("{tenant} ");
    let padded = LockManager::connect(&padded_config).unwrap();
    assert!(padded.get_mutex("old-mutex").unwrap().is_none());
}

#[cfg(feature = "sqlite")]
#[test]
fn an_old_sqlite_database_is_upgraded_in_place() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite").display().to_string();
    let mut conn = diesel::SqliteConnection::establish(&path).unwrap();
    conn.batch_execute(include_str!(
        "../migrations/sqlite/2026-11-26-000000_create_db_locks/up.sql"
    ))
    .unwrap();
    for statement in old_records("t-upgrade") {
        conn.batch_execute(&statement).unwrap();
    }
    drop(conn);
    check_upgraded(path, "t-upgrade");
}

fn permit(key: &str, lease_ms: u64, wait_ms: u64) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_requires_semaphore(true)
        .with_lease_duration_millis(lease_ms)
        .with_wait_duration_millis(wait_ms)
        .build()
}

fn mutex(key: &str, lease_ms: u64, wait_ms: u64) -> db_locks::AcquireLockOptions {
    AcquireLockOptionsBuilder::new(key)
        .with_lease_duration_millis(lease_ms)
        .with_wait_duration_millis(wait_ms)
        .build()
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, PgConnection};

    #[test]
    fn a_release_wakes_a_waiter_of_another_process() {
        support::a_release_wakes_a_waiter_of_another_process(Backend::Postgres);
    }

    fn raw() -> PgConnection {
        let url = Backend::Postgres.config("raw").database_url.unwrap();
        PgConnection::establish(&url).expect("the PostgreSQL test server is reachable")
    }

    /// In a schema of its own, so the shared one is untouched.
    #[test]
    fn an_old_postgres_database_is_upgraded_in_place() {
        let schema = unique("upgrade").replace('-', "_");
        let mut conn = raw();
        conn.batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};"
        ))
        .unwrap();
        conn.batch_execute(include_str!(
            "../migrations/postgres/2026-11-26-000000_create_db_locks/up.sql"
        ))
        .unwrap();
        for statement in old_records("t-upgrade") {
            conn.batch_execute(&statement).unwrap();
        }
        let url = Backend::Postgres.config("raw").database_url.unwrap();
        let url = format!("{url}?options=-csearch_path%3D{schema}");
        check_upgraded(url, "t-upgrade");
        conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }

    /// Deleting a semaphore is atomic with respect to grants: a permit granted while the
    /// deletion is under way (here: while another session holds a row lock on the slot the
    /// deletion reaches first) makes it fail with `Conflict`, instead of being deleted under
    /// its holder.
    #[test]
    fn a_grant_during_delete_semaphore_makes_it_conflict() {
        let b = Backend::Postgres;
        let tenant = unique("t-pg-delete-race");
        let m = b.manager(&tenant);
        let sem = unique("pool");
        m.create_semaphore(&SemaphoreBuilder::new(&sem, 2).build())
            .unwrap();
        let mut holder = raw();
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM db_locks_mutexes WHERE tenant_id = '{tenant}' \
                 AND semaphore_key = '{sem}' AND mutex_key = '{sem}_0' FOR UPDATE;"
            ))
            .unwrap();
        let deleter = {
            let (m, sem) = (b.manager(&tenant), sem.clone());
            thread::spawn(move || m.delete_semaphore(&sem))
        };
        thread::sleep(Duration::from_millis(500));
        let granted = m.try_acquire_lock(&permit(&sem, 20_000, 0)).unwrap();
        holder.batch_execute("COMMIT").unwrap();
        let deleted = deleter.join().unwrap();
        let granted = granted.expect("the other slot was free during the deletion");
        assert!(
            matches!(deleted, Err(LockError::Conflict(_))),
            "delete_semaphore with a permit granted meanwhile: {deleted:?}"
        );
        let renewed = m.send_heartbeat(&granted.to_heartbeat_options());
        assert!(
            renewed.is_ok(),
            "the permit was deleted under its holder: {renewed:?}"
        );
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, MysqlConnection};

    const USER: &str = "db_locks_kill_test";

    fn raw() -> MysqlConnection {
        let url = Backend::Mysql.config("raw").database_url.unwrap();
        MysqlConnection::establish(&url).expect("the MariaDB test server is reachable")
    }

    /// In a database of its own, so the shared one is untouched.
    #[test]
    fn an_old_mysql_database_is_upgraded_in_place() {
        let database = unique("db_locks_upgrade").replace('-', "_");
        let mut conn = raw();
        conn.batch_execute(&format!("CREATE DATABASE {database}; USE {database};"))
            .unwrap();
        conn.batch_execute(include_str!(
            "../migrations/mysql/2026-11-26-000000_create_db_locks/up.sql"
        ))
        .unwrap();
        for statement in old_records("t-upgrade") {
            conn.batch_execute(&statement).unwrap();
        }
        let url = Backend::Mysql.config("raw").database_url.unwrap();
        let url = format!("{}/{database}", url.rsplit_once('/').unwrap().0);
        check_upgraded(url, "t-upgrade");
        conn.batch_execute(&format!("DROP DATABASE {database}"))
            .unwrap();
    }

    /// A store that connects as a user of its own, so that ending its connections touches no
    /// other test's.
    fn store_as_own_user(
        conn: &mut MysqlConnection,
    ) -> std::sync::Arc<dyn db_locks::store::LockStore> {
        conn.batch_execute(&format!(
            "CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY 'kill-test';
             CREATE USER IF NOT EXISTS '{USER}'@'localhost' IDENTIFIED BY 'kill-test';
             GRANT ALL ON test.* TO '{USER}'@'%';
             GRANT ALL ON test.* TO '{USER}'@'localhost';"
        ))
        .unwrap();
        let mut config = Backend::Mysql.config("t-mysql-kill");
        config.database_url = Some(format!("mysql://{USER}:kill-test@127.0.0.1:3306/test"));
        db_locks::store::connect(&config).expect("the test user connects")
    }

    /// A lost connection (error 2013, "Lost connection to server during query", or 2006) is
    /// retryable: a wait goes on, and gets the lock once its holder's lease ends.
    #[test]
    fn killed_connections_during_a_wait_are_retried() {
        let b = Backend::Mysql;
        let mut admin = raw();
        let store = store_as_own_user(&mut admin);
        let tenant = unique("t-mysql-kill");
        let key = unique("killed");
        b.manager(&tenant)
            .acquire_lock(&mutex(&key, 2_000, 0))
            .unwrap();
        let waiter = {
            let (m, key) = (b.manager_over(&tenant, store), key.clone());
            thread::spawn(move || m.acquire_lock(&mutex(&key, 10_000, 15_000)))
        };
        let started = Instant::now();
        let mut killed = 0;
        while started.elapsed() < Duration::from_millis(1_500) {
            thread::sleep(Duration::from_millis(250));
            #[derive(diesel::QueryableByName)]
            struct Id {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                id: i64,
            }
            use diesel::RunQueryDsl;
            let ids: Vec<Id> = diesel::sql_query(format!(
                "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist \
                 WHERE user = '{USER}'"
            ))
            .load(&mut admin)
            .unwrap();
            for Id { id } in ids {
                if admin
                    .batch_execute(&format!("KILL CONNECTION {id}"))
                    .is_ok()
                {
                    killed += 1;
                }
            }
        }
        assert!(killed > 0, "no connection of the waiter was killed");
        let granted = waiter.join().unwrap();
        assert!(
            granted.is_ok(),
            "the wait stopped at a lost connection: {granted:?}"
        );
    }

    /// A lock wait timeout (error 1205) is retryable too: recognised by its number, which the
    /// store reads back from the session (`SHOW ERRORS`).
    #[test]
    fn a_lock_wait_timeout_is_retryable() {
        let b = Backend::Mysql;
        let tenant = unique("t-mysql-lock-wait");
        let key = unique("row-locked");
        let m = b.manager(&tenant);
        let lock = m.acquire_lock(&mutex(&key, 20_000, 0)).unwrap();
        m.release_lock(&lock.to_release_options()).unwrap();
        let mut holder = raw();
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM db_locks_mutexes WHERE tenant_id = '{tenant}' \
                 AND semaphore_key = '' AND mutex_key = '{key}' FOR UPDATE;"
            ))
            .unwrap();
        let mut config = b.config(&tenant);
        config.io_timeout = Duration::from_millis(1_000); // innodb_lock_wait_timeout = 1 s
        let store = db_locks::store::connect(&config).unwrap();
        let m = b.manager_over(&tenant, store);
        let err = m.try_acquire_lock(&mutex(&key, 20_000, 0)).unwrap_err();
        holder.batch_execute("ROLLBACK").unwrap();
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("1205") || err.to_string().contains("Lock wait"));
    }
}
