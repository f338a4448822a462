//! Which database errors a retry may get past ([`LockError::Unavailable`]) and which it will
//! not ([`LockError::Store`]).
//!
//! MySQL/MariaDB errors are classified by their error number, which diesel does not expose
//! (it keeps only the message, and a kind for a few numbers): after an error the store asks
//! the session for it with `GET DIAGNOSTICS`, and a session that cannot answer has lost its
//! connection. PostgreSQL errors come with diesel's kind, derived from the SQLSTATE, which
//! covers lost connections (class 08, and any error after which libpq reports the connection
//! bad) and serialization failures; the SQLSTATEs diesel folds into "unknown" (deadlock,
//! lock and statement timeouts) are recognised by their message, as are SQLite's busy errors,
//! whose messages are SQLite's own and fixed.

use diesel::result::{DatabaseErrorKind, Error};

use crate::error::{LockError, Redactor};

/// What the store learnt about an error beyond diesel's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Only MySQL learns error numbers; SQLite alone never learns more than `Unknown`.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) enum Detail {
    /// The server's error number (MySQL).
    Code(u32),
    /// The session could not even say: the connection is gone.
    ConnectionLost,
    /// Nothing more (PostgreSQL, SQLite, or no error recorded).
    Unknown,
}

/// MySQL/MariaDB error numbers after which the same request may succeed.
const MYSQL_RETRYABLE: &[u32] = &[
    1040, // ER_CON_COUNT_ERROR: too many connections
    1053, // ER_SERVER_SHUTDOWN
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK
    1317, // ER_QUERY_INTERRUPTED
    1927, // ER_CONNECTION_KILLED (MariaDB)
    1969, // ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
    2002, // CR_CONNECTION_ERROR
    2003, // CR_CONN_HOST_ERROR
    2006, // CR_SERVER_GONE_ERROR
    2013, // CR_SERVER_LOST
    2055, // CR_SERVER_LOST_EXTENDED
    3024, // ER_QUERY_TIMEOUT (MySQL max_execution_time)
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
];

/// Messages of PostgreSQL and SQLite errors that diesel reports as "unknown" and that a retry
/// may get past: admin_shutdown and crash_shutdown, deadlock_detected, lock_not_available
/// (lock_timeout) and query_canceled (statement_timeout); SQLITE_BUSY and SQLITE_LOCKED.
const RETRYABLE_MESSAGES: &[&str] = &[
    "terminating connection due to",
    "deadlock detected",
    "canceling statement due to",
    "could not obtain lock",
    "database is locked",
    "database table is locked",
];

/// Classifies `e`, with what the session said about it, and hides the password.
pub(crate) fn classify(e: &Error, detail: Detail, redactor: &Redactor) -> LockError {
    let msg = redactor.clean(e);
    let retryable = match (e, detail) {
        (_, Detail::ConnectionLost) => true,
        (
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::SerializationFailure,
                _,
            ),
            _,
        ) => true,
        (_, Detail::Code(code)) => MYSQL_RETRYABLE.contains(&code),
        (Error::DatabaseError(_, info), Detail::Unknown) => RETRYABLE_MESSAGES
            .iter()
            .any(|m| info.message().contains(m)),
        _ => false,
    };
    if retryable {
        LockError::Unavailable(msg)
    } else {
        LockError::Store(msg)
    }
}

/// Asks a connection about the error its last statement raised.
pub(crate) trait LastError {
    /// After a statement outside a transaction.
    fn last_error(&mut self) -> Detail;

    /// Inside a transaction, before it is rolled back.
    fn last_error_in_transaction(&mut self) -> Detail {
        self.last_error()
    }
}

#[cfg(feature = "sqlite")]
impl LastError for diesel::sqlite::SqliteConnection {
    fn last_error(&mut self) -> Detail {
        Detail::Unknown
    }
}

/// PostgreSQL: a connection that cannot run `SELECT 1` any more is lost, whatever the error
/// said (an administrator's `pg_terminate_backend` arrives as a FATAL error on the next
/// statement, before libpq has noticed that the connection closed). Not inside a transaction:
/// an aborted transaction refuses every statement.
#[cfg(feature = "postgres")]
impl LastError for diesel::pg::PgConnection {
    fn last_error(&mut self) -> Detail {
        use diesel::connection::SimpleConnection;
        match self.batch_execute("SELECT 1") {
            Ok(()) => Detail::Unknown,
            Err(_) => Detail::ConnectionLost,
        }
    }

    fn last_error_in_transaction(&mut self) -> Detail {
        Detail::Unknown
    }
}

/// MySQL/MariaDB: the error number from the session's diagnostics area. `GET DIAGNOSTICS`
/// goes over the text protocol (`batch_execute`) and copies it into a session variable: a
/// prepared statement (all that diesel's queries are) would not see the area of the statement
/// before it. A session that cannot answer at all has lost its connection.
#[cfg(feature = "mysql")]
impl LastError for diesel::mysql::MysqlConnection {
    fn last_error(&mut self) -> Detail {
        use diesel::connection::SimpleConnection;
        use diesel::sql_types::{BigInt, Nullable};
        use diesel::RunQueryDsl;

        #[derive(diesel::QueryableByName)]
        struct Errno {
            #[diesel(sql_type = Nullable<BigInt>)]
            errno: Option<i64>,
        }
        let read = self
            .batch_execute("GET DIAGNOSTICS CONDITION 1 @db_locks_errno = MYSQL_ERRNO")
            .and_then(|()| {
                diesel::sql_query("SELECT CAST(@db_locks_errno AS SIGNED) AS errno")
                    .load::<Errno>(self)
            });
        match read {
            Ok(rows) => match rows.first().and_then(|r| r.errno) {
                Some(code) => Detail::Code(code as u32),
                None => Detail::Unknown,
            },
            // No condition recorded (GET DIAGNOSTICS then fails itself), or no connection.
            Err(_) => match self.batch_execute("DO 1") {
                Ok(()) => Detail::Unknown,
                Err(_) => Detail::ConnectionLost,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Info(&'static str);

    impl diesel::result::DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn err(kind: DatabaseErrorKind, msg: &'static str) -> Error {
        Error::DatabaseError(kind, Box::new(Info(msg)))
    }

    #[test]
    fn mysql_errors_are_classified_by_number() {
        let r = Redactor::default();
        let lost = err(
            DatabaseErrorKind::Unknown,
            "Lost connection to server during query",
        );
        assert!(classify(&lost, Detail::ConnectionLost, &r).is_retryable());
        assert!(classify(&lost, Detail::Code(2013), &r).is_retryable());
        let deadlock = err(DatabaseErrorKind::SerializationFailure, "Deadlock found");
        assert!(classify(&deadlock, Detail::Unknown, &r).is_retryable());
        // The number decides, whatever the (translated) message says.
        let wait = err(
            DatabaseErrorKind::Unknown,
            "Tiempo de espera de bloqueo excedido",
        );
        assert!(classify(&wait, Detail::Code(1205), &r).is_retryable());
        let syntax = err(DatabaseErrorKind::Unknown, "timeout in your SQL syntax");
        assert!(!classify(&syntax, Detail::Code(1064), &r).is_retryable());
    }

    #[test]
    fn other_errors_by_kind_or_message() {
        let r = Redactor::default();
        let closed = err(
            DatabaseErrorKind::ClosedConnection,
            "terminating connection",
        );
        assert!(classify(&closed, Detail::Unknown, &r).is_retryable());
        let deadlock = err(DatabaseErrorKind::Unknown, "deadlock detected");
        assert!(classify(&deadlock, Detail::Unknown, &r).is_retryable());
        let busy = err(DatabaseErrorKind::Unknown, "database is locked");
        assert!(classify(&busy, Detail::Unknown, &r).is_retryable());
        let unique = err(DatabaseErrorKind::UniqueViolation, "duplicate key");
        assert!(!classify(&unique, Detail::Unknown, &r).is_retryable());
    }
}
