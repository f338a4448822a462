//! The connection pool: r2d2 over diesel's connection manager, without a probe per checkout.
//!
//! r2d2's default tests every connection with `SELECT 1` when it is checked out: a second
//! round trip for every operation. Here a connection is trusted on checkout and judged by
//! what happens on it instead:
//! * a statement whose error says the store may be unreachable (everything
//!   `errors::classify` calls retryable, a lost connection among them) marks the connection
//!   in use on this thread, and the pool drops it when it comes back, so the retry that
//!   follows gets another one;
//! * such an error also makes every connection that was idle at that moment suspect: each is
//!   probed (`SELECT 1`) once at its next checkout. After a server restart, the first request
//!   fails (and is retried by the wait loop or the heartbeat); the dead idle connections are
//!   then found by their probes instead of failing one request each.
//!
//! Invariant: a connection is checked out, used and returned on one thread (the
//! `with_connection!` scope), so a mark made on that thread between checkout and return
//! belongs to it. A mark that lands on the wrong connection (two checkouts nested on one
//! thread) only costs a reconnect, or one more failed statement on the lost one.

use std::cell::Cell;
use std::time::Instant;

use diesel::r2d2::{ConnectionManager, CustomizeConnection, ManageConnection, R2D2Connection};
use parking_lot::Mutex;

thread_local! {
    /// The connection in use on this thread hit an error that may have broken it.
    static SUSPECT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the connection in use on this thread: the pool drops it when it is returned.
pub(crate) fn discard_current() {
    SUSPECT.with(|s| s.set(true));
}

/// Clears a mark left by an earlier checkout on this thread.
pub(crate) fn checked_out() {
    SUSPECT.with(|s| s.set(false));
}

/// A pooled connection and when it last went back to the pool.
pub(crate) struct Tracked<C> {
    pub(crate) conn: C,
    returned_at: Instant,
}

/// diesel's manager, with the checks above instead of a probe per checkout.
pub(crate) struct Manager<C: R2D2Connection + 'static> {
    inner: ConnectionManager<C>,
    /// When a connection last failed in a way that may mean the server went away.
    lost_at: Mutex<Option<Instant>>,
}

impl<C: R2D2Connection + 'static> Manager<C> {
    pub(crate) fn new(inner: ConnectionManager<C>) -> Self {
        Manager {
            inner,
            lost_at: Mutex::new(None),
        }
    }
}

impl<C: R2D2Connection + Send + 'static> ManageConnection for Manager<C> {
    type Connection = Tracked<C>;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Tracked<C>, Self::Error> {
        Ok(Tracked {
            conn: self.inner.connect()?,
            returned_at: Instant::now(),
        })
    }

    /// Runs on every checkout: free unless a failure since the connection was returned makes
    /// it suspect.
    fn is_valid(&self, conn: &mut Tracked<C>) -> Result<(), Self::Error> {
        let suspect = self
            .lost_at
            .lock()
            .is_some_and(|lost| lost >= conn.returned_at);
        if suspect {
            self.inner.is_valid(&mut conn.conn)?;
            conn.returned_at = Instant::now();
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut Tracked<C>) -> bool {
        let now = Instant::now();
        conn.returned_at = now;
        if SUSPECT.with(|s| s.replace(false)) {
            *self.lost_at.lock() = Some(now);
            return true;
        }
        self.inner.has_broken(&mut conn.conn)
    }
}

/// Runs a connection customizer of diesel's connections on the tracked ones.
pub(crate) struct OnConnection<C: 'static>(
    pub(crate) Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>,
);

impl<C: 'static> std::fmt::Debug for OnConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<C: Send + 'static> CustomizeConnection<Tracked<C>, diesel::r2d2::Error> for OnConnection<C> {
    fn on_acquire(&self, conn: &mut Tracked<C>) -> Result<(), diesel::r2d2::Error> {
        self.0.on_acquire(&mut conn.conn)
    }
}
