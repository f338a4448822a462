//! The diesel stores: SQLite (embedded default), PostgreSQL and MySQL/MariaDB.
//!
//! One [`SqlStore`] serves all three. The operations are written once, generic over the
//! connection; `with_connection!` checks out a pooled connection of whichever backend the
//! store was built for and runs the body with it. The SQL texts live in `statements.rs`.

mod errors;
#[cfg(feature = "postgres")]
mod listener;
mod pool;
mod slots;
mod statements;

use std::time::Duration;

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};

use self::pool::{Manager, OnConnection};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Bool, HasSqlType, Nullable, Text, Untyped};
use diesel::{Connection, QueryResult, QueryableByName, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use self::errors::{classify, Detail, LastError};
use self::statements::{Dialect, Statement, Statements};
use super::{
    AdminStore, LeaseStore, MutexRequest, PermitRequest, ReleaseRequest, RenewRequest, Target,
};
use crate::config::LocksConfig;
use crate::error::{LockError, Redactor, Result};
use crate::model::{from_millis, millis, millis_to_datetime, slot_key, MutexLock, Semaphore};

#[cfg(feature = "mysql")]
use diesel::mysql::MysqlConnection;
#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
#[cfg(feature = "sqlite")]
use diesel::sqlite::SqliteConnection;

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

/// Largest number of slots one statement of a resize inserts, updates or deletes.
const SLOT_BATCH: usize = 500;

enum SqlPool {
    #[cfg(feature = "sqlite")]
    Sqlite(Pool<Manager<SqliteConnection>>),
    #[cfg(feature = "postgres")]
    Postgres(Pool<Manager<PgConnection>>),
    #[cfg(feature = "mysql")]
    Mysql(Pool<Manager<MysqlConnection>>),
}

/// A lock store in a relational database, reached through diesel and an r2d2 pool.
pub struct SqlStore {
    pool: SqlPool,
    sql: Statements,
    redactor: Redactor,
    name: &'static str,
    /// PostgreSQL: the LISTEN connection that hands release notices to waiters.
    #[cfg(feature = "postgres")]
    listener: Option<listener::Listener>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

/// Runs `$body` with `$conn` bound to a pooled connection of the store's backend.
macro_rules! with_connection {
    ($store:expr, $conn:ident => $body:expr) => {
        match &$store.pool {
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(pool) => {
                let mut pooled = $store.checkout(pool)?;
                let $conn: &mut SqliteConnection = &mut pooled.conn;
                $body
            }
            #[cfg(feature = "postgres")]
            SqlPool::Postgres(pool) => {
                let mut pooled = $store.checkout(pool)?;
                let $conn: &mut PgConnection = &mut pooled.conn;
                $body
            }
            #[cfg(feature = "mysql")]
            SqlPool::Mysql(pool) => {
                let mut pooled = $store.checkout(pool)?;
                let $conn: &mut MysqlConnection = &mut pooled.conn;
                $body
            }
        }
    };
}

/// One bound parameter.
#[derive(Debug, Clone, Copy)]
enum Param<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
}

/// A statement with its parameters, as a diesel query of any backend: the pieces of text with
/// one bound value per parameter occurrence between them. A `cache` statement stays prepared
/// on each connection (diesel caches it by its text); the others are prepared per run, as
/// `sql_query` does.
#[derive(Clone, Copy)]
struct Prepared<'s, 'p> {
    stmt: &'s Statement,
    params: &'s [Param<'p>],
}

impl QueryId for Prepared<'_, '_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_, '_> {
    type SqlType = Untyped;
}

impl<C> RunQueryDsl<C> for Prepared<'_, '_> {}

impl<DB> QueryFragment<DB> for Prepared<'_, '_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt> + HasSqlType<Bool>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    bool: ToSql<Bool, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.stmt.cache {
            out.unsafe_to_cache_prepared();
        }
        let pieces = &self.stmt.pieces;
        for (piece, &i) in pieces.iter().zip(&self.stmt.occurrences) {
            out.push_sql(piece);
            match &self.params[i] {
                Param::Text(v) => out.push_bind_param::<Text, _>(*v)?,
                Param::OptText(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Param::Int(v) => out.push_bind_param::<BigInt, _>(v)?,
                Param::OptInt(v) => out.push_bind_param::<Nullable<BigInt>, _>(v)?,
                Param::Bool(v) => out.push_bind_param::<Bool, _>(v)?,
            }
        }
        out.push_sql(pieces.last().map_or("", String::as_str));
        Ok(())
    }
}

/// Loads rows of `$row` from `$stmt` with `$params`.
macro_rules! load {
    ($conn:expr, $stmt:expr, $params:expr) => {
        Prepared {
            stmt: $stmt,
            params: $params,
        }
        .load($conn)
    };
}

/// Executes `$stmt` with `$params`, returning the number of rows it changed.
macro_rules! execute {
    ($conn:expr, $stmt:expr, $params:expr) => {
        Prepared {
            stmt: $stmt,
            params: $params,
        }
        .execute($conn)
    };
}

/// Runs `$body` in a write transaction on `$conn`, and classifies its error with what the
/// session says about it before the transaction is rolled back.
macro_rules! in_transaction {
    ($store:expr, $conn:ident => $body:expr) => {{
        let mut detail = Detail::Unknown;
        $conn
            .write_transaction(|$conn| {
                let outcome = (|| $body)();
                if outcome.is_err() {
                    detail = $conn.last_error_in_transaction();
                }
                outcome
            })
            .map_err(|e| suspect_if_retryable(classify(&e, detail, &$store.redactor)))
    }};
}

/// An error that may mean the store is unreachable also means the connection it came on may
/// be broken: it is not given to anyone else (see `pool`).
fn suspect_if_retryable(e: LockError) -> LockError {
    if e.is_retryable() {
        pool::discard_current();
    }
    e
}

#[derive(QueryableByName)]
struct MutexRow {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Text)]
    semaphore_key: String,
    #[diesel(sql_type = Text)]
    mutex_key: String,
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = BigInt)]
    fencing_token: i64,
    #[diesel(sql_type = BigInt)]
    lease_duration_ms: i64,
    #[diesel(sql_type = Nullable<Text>)]
    data: Option<String>,
    #[diesel(sql_type = Bool)]
    delete_on_release: bool,
    #[diesel(sql_type = Bool)]
    locked: bool,
    #[diesel(sql_type = BigInt)]
    expires_at_ms: i64,
}

impl From<MutexRow> for MutexLock {
    fn from(row: MutexRow) -> Self {
        MutexLock {
            mutex_key: row.mutex_key,
            tenant_id: row.tenant_id,
            version: row.version,
            fencing_token: row.fencing_token,
            lease_duration: from_millis(row.lease_duration_ms),
            semaphore_key: Some(row.semaphore_key).filter(|k| !k.is_empty()),
            data: row.data,
            delete_on_release: row.delete_on_release,
            locked: row.locked,
            expires_at: millis_to_datetime(row.expires_at_ms),
        }
    }
}

#[derive(QueryableByName)]
struct SemaphoreRow {
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Text)]
    semaphore_key: String,
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = BigInt)]
    max_size: i64,
    #[diesel(sql_type = BigInt)]
    lease_duration_ms: i64,
    #[diesel(sql_type = BigInt)]
    busy_count: i64,
}

impl From<SemaphoreRow> for Semaphore {
    fn from(row: SemaphoreRow) -> Self {
        Semaphore {
            semaphore_key: row.semaphore_key,
            tenant_id: row.tenant_id,
            version: row.version,
            max_size: row.max_size,
            lease_duration: from_millis(row.lease_duration_ms),
            busy_count: row.busy_count,
        }
    }
}

/// A locked semaphore row (`lock_semaphore`); its presence is what counts.
#[derive(QueryableByName)]
struct LockedRow {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)]
    n: i64,
}

/// Whether an existing semaphore has retired slots (`semaphore_state`; no row: no semaphore).
#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = BigInt)]
    has_retired: i64,
}

/// One slot as `lock_slots` and the pairing reads see it, with the server's clock.
#[derive(QueryableByName)]
struct SlotRow {
    #[diesel(sql_type = Text)]
    mutex_key: String,
    #[diesel(sql_type = BigInt)]
    slot_index: i64,
    #[diesel(sql_type = Bool)]
    retired: bool,
    #[diesel(sql_type = Bool)]
    locked: bool,
    #[diesel(sql_type = BigInt)]
    expires_at_ms: i64,
    #[diesel(sql_type = BigInt)]
    now_ms: i64,
}

impl SlotRow {
    fn live(&self) -> bool {
        self.locked && self.expires_at_ms > self.now_ms
    }
}

/// A transaction that takes the write lock up front. SQLite needs `BEGIN IMMEDIATE`: a
/// deferred transaction that upgrades from read to write fails with SQLITE_BUSY at once
/// instead of waiting for the busy timeout.
trait WriteTransaction: Connection {
    fn write_transaction<T, F>(&mut self, f: F) -> QueryResult<T>
    where
        F: FnOnce(&mut Self) -> QueryResult<T>;
}

#[cfg(feature = "sqlite")]
impl WriteTransaction for SqliteConnection {
    fn write_transaction<T, F>(&mut self, f: F) -> QueryResult<T>
    where
        F: FnOnce(&mut Self) -> QueryResult<T>,
    {
        self.immediate_transaction(f)
    }
}

#[cfg(feature = "postgres")]
impl WriteTransaction for PgConnection {
    fn write_transaction<T, F>(&mut self, f: F) -> QueryResult<T>
    where
        F: FnOnce(&mut Self) -> QueryResult<T>,
    {
        self.transaction(f)
    }
}

#[cfg(feature = "mysql")]
impl WriteTransaction for MysqlConnection {
    fn write_transaction<T, F>(&mut self, f: F) -> QueryResult<T>
    where
        F: FnOnce(&mut Self) -> QueryResult<T>,
    {
        self.transaction(f)
    }
}

/// Session settings run on every new pooled connection: one statement, one round trip (a
/// reconnect on a slow link costs enough round trips already).
#[derive(Debug)]
struct SessionSetup(String);

#[cfg(feature = "sqlite")]
diesel::define_sql_function! {
    /// Microseconds since the Unix epoch, strictly increasing within the process.
    fn db_locks_now_us() -> BigInt;
}

/// SQLite's own clock ticks in milliseconds, too coarse for the fencing-token floor (a mutex
/// deleted and re-created within one millisecond would repeat a token). SQLite is embedded, so
/// its clock is this machine's clock: this function reads it in microseconds, and never
/// returns the same value twice in one process; writers are serialised by SQLite's lock, and
/// each write takes longer than a microsecond, so values also differ across processes.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
struct SqliteSetup(SessionSetup);

#[cfg(feature = "sqlite")]
impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(
        &self,
        conn: &mut SqliteConnection,
    ) -> std::result::Result<(), diesel::r2d2::Error> {
        use std::sync::atomic::{AtomicI64, Ordering};
        static LAST: AtomicI64 = AtomicI64::new(0);
        db_locks_now_us_utils::register_nondeterministic_impl(conn, || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let previous = LAST.fetch_max(now, Ordering::SeqCst);
            if previous >= now {
                LAST.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                now
            }
        })
        .map_err(diesel::r2d2::Error::QueryError)?;
        self.0.on_acquire(conn)
    }
}

impl<C: Connection> CustomizeConnection<C, diesel::r2d2::Error> for SessionSetup {
    fn on_acquire(&self, conn: &mut C) -> std::result::Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&self.0)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

impl SqlStore {
    /// Connects to the database named by `config.database_url` (see [`LocksConfig`]), and
    /// runs the migrations if `config.run_migrations` is set.
    pub fn connect(config: &LocksConfig) -> Result<SqlStore> {
        let url = config
            .database_url
            .clone()
            .unwrap_or_else(|| LocksConfig::default_sqlite_path().display().to_string());
        let redactor = Redactor::for_url(&url);
        let io_timeout = config.io_timeout;
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let store = match scheme.as_deref() {
            Some("postgres") | Some("postgresql") => Self::connect_postgres(config, &url, redactor, io_timeout)?,
            Some("mysql") | Some("mariadb") => Self::connect_mysql(config, &url, redactor, io_timeout)?,
            Some("sqlite") | None => Self::connect_sqlite(config, &url, redactor, io_timeout)?,
            Some(other) => {
                return Err(LockError::Config(format!(
                    "unsupported database URL scheme `{other}://` (expected a SQLite path or a sqlite://, postgres:// or mysql:// URL)"
                )))
            }
        };
        if config.run_migrations {
            store.migrate()?;
        }
        Ok(store)
    }

    fn build_pool<C>(
        config: &LocksConfig,
        manager: ConnectionManager<C>,
        setup: Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>,
        redactor: &Redactor,
        max_size: u32,
    ) -> Result<Pool<Manager<C>>>
    where
        C: diesel::r2d2::R2D2Connection + 'static,
    {
        // No connections kept warm in the background (min_idle 0): r2d2 would open them on
        // its own threads, which can still be inside the client library when a short-lived
        // program exits (seen as crashes in libpq/OpenSSL's exit handlers). One checkout here
        // instead, so an unreachable database fails now, clearly.
        // Checkouts probe a connection only when an error made it suspect (see `pool`).
        let pool = Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(config.connect_timeout)
            .connection_customizer(Box::new(OnConnection(setup)))
            .error_handler(Box::new(diesel::r2d2::NopErrorHandler))
            .build_unchecked(Manager::new(manager));
        pool.get().map_err(|e| {
            LockError::Unavailable(redactor.clean(format!("cannot connect to the database: {e}")))
        })?;
        Ok(pool)
    }

    #[cfg(feature = "sqlite")]
    fn connect_sqlite(
        config: &LocksConfig,
        url: &str,
        redactor: Redactor,
        io_timeout: Duration,
    ) -> Result<SqlStore> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url)
            .to_owned();
        if path.is_empty() {
            return Err(LockError::Config("empty SQLite path".into()));
        }
        let in_memory = path == ":memory:";
        if !in_memory {
            if let Some(dir) = std::path::Path::new(&path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    LockError::Config(format!(
                        "cannot create directory {} for the SQLite database: {e}",
                        dir.display()
                    ))
                })?;
            }
        }
        // Writers queue for up to the I/O timeout instead of failing with SQLITE_BUSY.
        let setup = format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
            io_timeout.as_millis()
        );
        // Every connection to ":memory:" is a database of its own: keep exactly one.
        let max_size = if in_memory { 1 } else { config.pool_size };
        let pool = Self::build_pool(
            config,
            ConnectionManager::<SqliteConnection>::new(path),
            Box::new(SqliteSetup(SessionSetup(setup))),
            &redactor,
            max_size,
        )?;
        Ok(SqlStore {
            pool: SqlPool::Sqlite(pool),
            sql: Statements::new(Dialect::Sqlite),
            redactor,
            name: "sqlite",
            #[cfg(feature = "postgres")]
            listener: None,
        })
    }

    #[cfg(not(feature = "sqlite"))]
    fn connect_sqlite(_: &LocksConfig, _: &str, _: Redactor, _: Duration) -> Result<SqlStore> {
        Err(LockError::Config(
            "SQLite support is not compiled in (enable the `sqlite` feature)".into(),
        ))
    }

    #[cfg(feature = "postgres")]
    fn connect_postgres(
        config: &LocksConfig,
        url: &str,
        redactor: Redactor,
        io_timeout: Duration,
    ) -> Result<SqlStore> {
        let listener = listener::Listener::new(url, config.connect_timeout);
        // libpq's own timeouts: connecting, and a dead peer during a request.
        let mut url = url.to_owned();
        let sep = |u: &str| if u.contains('?') { '&' } else { '?' };
        if !url.contains("connect_timeout=") {
            let secs = config.connect_timeout.as_secs().max(1);
            url.push_str(&format!("{}connect_timeout={secs}", sep(&url)));
        }
        if !url.contains("tcp_user_timeout=") {
            url.push_str(&format!(
                "{}tcp_user_timeout={}",
                sep(&url),
                io_timeout.as_millis()
            ));
        }
        // A peer that vanished while we wait for a reply (the request was acknowledged, so
        // tcp_user_timeout does not fire) is noticed by keepalive probes within about the I/O
        // timeout.
        if !url.contains("keepalives") {
            let idle = (io_timeout.as_secs() / 2).max(1);
            url.push_str(&format!(
                "{}keepalives=1&keepalives_idle={idle}&keepalives_interval=1&keepalives_count={}",
                sep(&url),
                (io_timeout.as_secs() / 2).clamp(1, 10)
            ));
        }
        // One simple-protocol message: PostgreSQL runs both.
        let setup = format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {ms};",
            ms = io_timeout.as_millis()
        );
        let pool = Self::build_pool(
            config,
            ConnectionManager::<PgConnection>::new(url),
            Box::new(SessionSetup(setup)),
            &redactor,
            config.pool_size,
        )?;
        Ok(SqlStore {
            pool: SqlPool::Postgres(pool),
            sql: Statements::new(Dialect::Postgres),
            redactor,
            name: "postgres",
            listener: Some(listener),
        })
    }

    #[cfg(not(feature = "postgres"))]
    fn connect_postgres(_: &LocksConfig, _: &str, _: Redactor, _: Duration) -> Result<SqlStore> {
        Err(LockError::Config(
            "PostgreSQL support is not compiled in (enable the `postgres` feature)".into(),
        ))
    }

    #[cfg(feature = "mysql")]
    fn connect_mysql(
        config: &LocksConfig,
        url: &str,
        redactor: Redactor,
        io_timeout: Duration,
    ) -> Result<SqlStore> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        // Expiry arithmetic uses UNIX_TIMESTAMP(NOW()), exact only in UTC. One SET for both:
        // diesel sends a batch of several statements with multi-statement mode switched on
        // and off around it, two more round trips.
        let setup = format!(
            "SET time_zone = '+00:00', innodb_lock_wait_timeout = {}",
            io_timeout.as_secs().max(1)
        );
        let pool = Self::build_pool(
            config,
            ConnectionManager::<MysqlConnection>::new(url),
            Box::new(SessionSetup(setup)),
            &redactor,
            config.pool_size,
        )?;
        Ok(SqlStore {
            pool: SqlPool::Mysql(pool),
            sql: Statements::new(Dialect::Mysql),
            redactor,
            name: "mysql",
            #[cfg(feature = "postgres")]
            listener: None,
        })
    }

    #[cfg(not(feature = "mysql"))]
    fn connect_mysql(_: &LocksConfig, _: &str, _: Redactor, _: Duration) -> Result<SqlStore> {
        Err(LockError::Config(
            "MySQL support is not compiled in (enable the `mysql` feature)".into(),
        ))
    }

    fn checkout<M: diesel::r2d2::ManageConnection>(
        &self,
        pool: &Pool<M>,
    ) -> Result<PooledConnection<M>> {
        let pooled = pool.get().map_err(|e| {
            LockError::Unavailable(self.redactor.clean(format!("no database connection: {e}")))
        })?;
        pool::checked_out();
        Ok(pooled)
    }

    /// Classifies an error of a statement just run on `conn`.
    fn error<C: LastError>(&self, conn: &mut C, e: diesel::result::Error) -> LockError {
        suspect_if_retryable(classify(&e, conn.last_error(), &self.redactor))
    }

    /// This store's name in its release notices (PostgreSQL).
    fn origin(&self) -> &str {
        #[cfg(feature = "postgres")]
        if let Some(listener) = &self.listener {
            return listener.origin();
        }
        ""
    }

    fn is_mysql(&self) -> bool {
        self.sql.dialect == Dialect::Mysql
    }
}

impl LeaseStore for SqlStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn acquire_mutex(&self, req: &MutexRequest<'_>) -> Result<Option<MutexLock>> {
        let params = [
            Param::Text(req.tenant_id),
            Param::Text(""),
            Param::Text(req.key),
            Param::Text(req.version),
            Param::Int(millis(req.lease)),
            Param::OptText(req.data),
            Param::Bool(req.delete_on_release),
        ];
        with_connection!(self, conn => {
            let rows: Vec<MutexRow> = if self.is_mysql() {
                execute!(conn, &self.sql.acquire_mutex, &params)
                    .and_then(|_| load!(conn, &self.sql.select_by_key_version, &params[..4]))
            } else {
                load!(conn, &self.sql.acquire_mutex, &params)
            }
            .map_err(|e| self.error(conn, e))?;
            Ok(rows.into_iter().next().map(MutexLock::from))
        })
    }

    /// A permit: the slot already held with this version (a retry), else the fast path (one
    /// statement), else, if the semaphore has retired slots, the slow path: under the lock of
    /// the semaphore row, drop the retired slots that are no longer live, pair each live one
    /// with a free active slot (the free one goes, the live one becomes active), then try the
    /// fast path again. A busy answer costs the fast path plus one primary-key read.
    fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<Option<MutexLock>> {
        let params = [
            Param::Text(req.tenant_id),
            Param::Text(req.semaphore),
            Param::Text(req.version),
            Param::OptInt(req.lease.map(millis)),
            Param::OptText(req.data),
        ];
        let missing =
            || LockError::NotFound(format!("semaphore `{}` does not exist", req.semaphore));
        with_connection!(self, conn => {
            let grant = |conn: &mut _, stmt| -> QueryResult<Option<MutexLock>> {
                let rows: Vec<MutexRow> = if self.is_mysql() {
                    // Same connection: the read-back finds the slot through LAST_INSERT_ID().
                    execute!(conn, stmt, &params)
                        .and_then(|_| load!(conn, &self.sql.select_permit_by_version, &params[..3]))?
                } else {
                    load!(conn, stmt, &params)?
                };
                Ok(rows.into_iter().next().map(MutexLock::from))
            };
            if req.retry {
                if let Some(own) = grant(&mut *conn, &self.sql.regrant_permit).map_err(|e| self.error(conn, e))? {
                    return Ok(Some(own));
                }
            }
            if let Some(granted) = grant(&mut *conn, &self.sql.acquire_permit).map_err(|e| self.error(conn, e))? {
                return Ok(Some(granted));
            }
            let state: Vec<StateRow> = load!(conn, &self.sql.semaphore_state, &params[..2])
                .map_err(|e| self.error(conn, e))?;
            match state.first() {
                None => return Err(missing()),
                Some(state) if state.has_retired == 0 => return Ok(None),
                Some(_) => {}
            }
            in_transaction!(self, conn => {
                let size: Vec<LockedRow> = load!(conn, &self.sql.lock_semaphore, &params[..2])?;
                if size.is_empty() {
                    return Ok(Err(missing()));
                }
                execute!(conn, &self.sql.reap_retired, &params[..2])?;
                let live: Vec<SlotRow> = load!(conn, &self.sql.live_retired_slots, &params[..2])?;
                if !live.is_empty() {
                    let limit = [params[0], params[1], Param::Int(live.len() as i64)];
                    let free: Vec<SlotRow> = load!(conn, &self.sql.free_active_slots, &limit)?;
                    for (held, free) in live.iter().zip(&free) {
                        let slot = |key| [params[0], params[1], Param::Text(key)];
                        let dropped = execute!(conn, &self.sql.drop_free_slot, &slot(&free.mutex_key))?;
                        let unretired = execute!(conn, &self.sql.unretire_slot, &slot(&held.mutex_key))?;
                        if (dropped, unretired) != (1, 1) {
                            // Both were locked and checked: cannot happen; undo, report busy.
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                    }
                }
                grant(&mut *conn, &self.sql.acquire_permit).map(Ok)
            })?
        })
    }

    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        let key = req.target.key();
        let params = [
            Param::Text(req.tenant_id),
            Param::Text(req.target.semaphore().unwrap_or("")),
            Param::Text(&key),
            Param::Text(req.version),
            Param::Text(req.new_version),
            Param::OptInt(req.lease.map(millis)),
            Param::OptText(req.data),
        ];
        let read_back = [params[0], params[1], params[2], params[4]];
        let renew = match req.target {
            Target::Slot { .. } => &self.sql.renew_permit,
            Target::Mutex(_) => &self.sql.renew_mutex,
        };
        with_connection!(self, conn => {
            let rows: Vec<MutexRow> = if self.is_mysql() {
                execute!(conn, renew, &params)
                    .and_then(|_| load!(conn, &self.sql.select_by_key_version, &read_back))
            } else {
                load!(conn, renew, &params)
            }
            .map_err(|e| self.error(conn, e))?;
            Ok(rows.into_iter().next().map(MutexLock::from))
        })
    }

    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        let key = req.target.key();
        let params = [
            Param::Text(req.tenant_id),
            Param::Text(req.target.semaphore().unwrap_or("")),
            Param::Text(&key),
            Param::Text(req.version),
            Param::Text(req.in_doubt_version.unwrap_or(req.version)),
            Param::OptText(req.data),
            Param::Text(self.origin()),
        ];
        // Permit slots stay: they carry the slot's fencing token and are part of the semaphore.
        let release = match (req.target, req.delete) {
            (Target::Slot { .. }, _) => &self.sql.release_permit,
            (Target::Mutex(_), true) => &self.sql.release_delete,
            (Target::Mutex(_), false) => &self.sql.release_mutex,
        };
        with_connection!(self, conn => {
            let changed = execute!(conn, release, &params).map_err(|e| self.error(conn, e))?;
            Ok(changed > 0)
        })
    }

    /// One channel for every tenant (the notice names its tenant).
    fn watch_releases(&self, _tenant_id: &str, sink: crate::store::ReleaseSink) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(listener) = &self.listener {
            return listener.watch(sink);
        }
        let _ = sink;
        false
    }
}

impl AdminStore for SqlStore {
    fn migrate(&self) -> Result<()> {
        fn run<C>(
            conn: &mut C,
            migrations: fn() -> EmbeddedMigrations,
        ) -> std::result::Result<(), String>
        where
            C: MigrationHarness<C::Backend> + Connection,
        {
            // Several processes may start at once: if a race fails one of them, the
            // migrations are done if nothing is pending any more.
            match conn.run_pending_migrations(migrations()) {
                Ok(_) => Ok(()),
                Err(first) => match conn.has_pending_migration(migrations()) {
                    Ok(false) => Ok(()),
                    _ => conn
                        .run_pending_migrations(migrations())
                        .map(|_| ())
                        .map_err(|_| first.to_string()),
                },
            }
        }
        let result = match &self.pool {
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(pool) => run(&mut self.checkout(pool)?.conn, || SQLITE_MIGRATIONS),
            #[cfg(feature = "postgres")]
            SqlPool::Postgres(pool) => run(&mut self.checkout(pool)?.conn, || POSTGRES_MIGRATIONS),
            #[cfg(feature = "mysql")]
            SqlPool::Mysql(pool) => run(&mut self.checkout(pool)?.conn, || MYSQL_MIGRATIONS),
        };
        result.map_err(|e| LockError::Store(self.redactor.clean(format!("migration failed: {e}"))))
    }

    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>> {
        let params = [Param::Text(tenant_id), Param::Text(key)];
        with_connection!(self, conn => {
            let rows: Vec<MutexRow> = load!(conn, &self.sql.get_mutex, &params).map_err(|e| self.error(conn, e))?;
            Ok(rows.into_iter().next().map(MutexLock::from))
        })
    }

    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool> {
        let deleted = with_connection!(self, conn => {
            match version {
                Some(v) => execute!(conn, &self.sql.delete_mutex_with_version, &[Param::Text(tenant_id), Param::Text(key), Param::Text(v)]),
                None => execute!(conn, &self.sql.delete_mutex_if_free, &[Param::Text(tenant_id), Param::Text(key)]),
            }
            .map_err(|e| self.error(conn, e))?
        });
        if deleted == 0 && version.is_none() && self.get_mutex(tenant_id, key)?.is_some() {
            return Err(LockError::Conflict(format!(
                "mutex `{key}` is held by a live lease; release it or wait for the lease to expire"
            )));
        }
        Ok(deleted > 0)
    }

    /// One transaction: the semaphore row is written (and locked), every slot is locked and
    /// read, and the plan of `slots::resize` is applied. Grants in flight finish first (their
    /// slots are locked); later ones see the new state.
    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        let tenant = semaphore.tenant_id.as_str();
        let key = semaphore.semaphore_key.as_str();
        let upsert = [
            Param::Text(tenant),
            Param::Text(key),
            Param::Text(&semaphore.version),
            Param::Int(semaphore.max_size),
            Param::Int(millis(semaphore.lease_duration)),
        ];
        with_connection!(self, conn => {
            in_transaction!(self, conn => {
                execute!(conn, &self.sql.upsert_semaphore, &upsert)?;
                let rows: Vec<SlotRow> = load!(conn, &self.sql.lock_slots, &upsert[..2])?;
                let snapshot: Vec<slots::Slot> = rows
                    .iter()
                    .map(|r| slots::Slot {
                        live: r.live(),
                        key: r.mutex_key.clone(),
                        index: r.slot_index,
                        retired: r.retired,
                    })
                    .collect();
                let plan = slots::resize(&snapshot, semaphore.max_size);
                // Slot indexes are below `max_size`, which validation bounds far below `u32::MAX`.
                let new_keys: Vec<String> =
                    plan.create.iter().map(|&i| slot_key(key, i as u32)).collect();
                let changes = [
                    (None, &plan.drop),
                    (Some("retired = TRUE"), &plan.retire),
                    (Some("retired = FALSE"), &plan.unretire),
                ];
                for (set, keys) in changes {
                    for chunk in keys.chunks(SLOT_BATCH) {
                        let mut params = vec![upsert[0], upsert[1]];
                        params.extend(chunk.iter().map(|k| Param::Text(k)));
                        execute!(conn, &self.sql.slots_by_key(set, chunk.len()), &params)?;
                    }
                }
                for (indexes, keys) in plan.create.chunks(SLOT_BATCH).zip(new_keys.chunks(SLOT_BATCH)) {
                    let mut params = vec![upsert[0], upsert[1]];
                    params.extend(keys.iter().map(|k| Param::Text(k)));
                    execute!(conn, &self.sql.insert_slots(indexes), &params)?;
                }
                Ok(())
            })
        })?;
        self.get_semaphore(tenant, key)?.ok_or_else(|| {
            LockError::Store(format!(
                "semaphore `{key}` vanished right after it was written"
            ))
        })
    }

    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        let params = [Param::Text(tenant_id), Param::Text(key)];
        with_connection!(self, conn => {
            let rows: Vec<SemaphoreRow> = load!(conn, &self.sql.get_semaphore, &params).map_err(|e| self.error(conn, e))?;
            Ok(rows.into_iter().next().map(Semaphore::from))
        })
    }

    /// One transaction: the semaphore row and every slot are locked before the live permits
    /// are counted, so no grant can slip in between the count and the delete (a grant in
    /// flight holds its slot's lock, and the count waits for it and sees it).
    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool> {
        let params = [Param::Text(tenant_id), Param::Text(key)];
        let outcome: std::result::Result<bool, usize> = with_connection!(self, conn => {
            in_transaction!(self, conn => {
                let exists: Vec<LockedRow> = load!(conn, &self.sql.lock_semaphore, &params)?;
                if exists.is_empty() {
                    return Ok(Ok(false));
                }
                let slots: Vec<SlotRow> = load!(conn, &self.sql.lock_slots, &params)?;
                let live = slots.iter().filter(|s| s.live()).count();
                if live > 0 {
                    return Ok(Err(live));
                }
                execute!(conn, &self.sql.delete_slots, &params)?;
                Ok(Ok(execute!(conn, &self.sql.delete_semaphore, &params)? > 0))
            })?
        });
        outcome.map_err(|live| {
            LockError::Conflict(format!(
                "semaphore `{key}` has {live} live permit(s); release them or wait for their leases to expire"
            ))
        })
    }

    /// A semaphore always has at least one active slot: no slot, no semaphore.
    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Option<Vec<MutexLock>>> {
        let params = [Param::Text(tenant_id), Param::Text(key)];
        with_connection!(self, conn => {
            let rows: Vec<MutexRow> = load!(conn, &self.sql.semaphore_mutexes, &params).map_err(|e| self.error(conn, e))?;
            Ok(Some(rows.into_iter().map(MutexLock::from).collect()).filter(|slots: &Vec<_>| !slots.is_empty()))
        })
    }

    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>> {
        let params = [Param::Text(tenant_id)];
        with_connection!(self, conn => {
            let rows: Vec<MutexRow> = load!(conn, &self.sql.list_mutexes, &params).map_err(|e| self.error(conn, e))?;
            Ok(rows.into_iter().map(MutexLock::from).collect())
        })
    }

    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>> {
        let params = [Param::Text(tenant_id)];
        with_connection!(self, conn => {
            let rows: Vec<SemaphoreRow> = load!(conn, &self.sql.list_semaphores, &params).map_err(|e| self.error(conn, e))?;
            Ok(rows.into_iter().map(Semaphore::from).collect())
        })
    }
}
