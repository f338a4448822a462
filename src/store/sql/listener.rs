//! PostgreSQL release notices: every release statement also runs
//! `pg_notify('db_locks_released', tenant || chr(31) || key || chr(31) || origin)` (see
//! `statements.rs`; `origin` names the store instance, whose own notices are skipped), and one
//! `LISTEN` connection per store, opened by the first waiter, hands the notices to the waiters.
//!
//! Notices are hints (`crate::wakeups`): a notice lost while the listener reconnects costs a
//! waiter at most its poll interval. The listener is one connection besides the pool, on a
//! thread of its own that ends when the store is dropped. Behind a connection pooler in
//! transaction mode (PgBouncer), `LISTEN` does not work: no notices arrive and waiters poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use pg_listener::fallible_iterator::FallibleIterator;

use super::statements::RELEASE_CHANNEL as CHANNEL;
use crate::store::{ReleaseSink, ReleaseSinks};

/// How often the listener thread looks at whether its store is gone.
const POLL: Duration = Duration::from_secs(1);

/// The listener of one store.
pub(crate) struct Listener {
    /// The URL as the user gave it (libpq-only parameters the pool adds are not understood
    /// by this client).
    url: String,
    connect_timeout: Duration,
    sinks: ReleaseSinks,
    started: Once,
    stop: Arc<AtomicBool>,
}

impl Listener {
    pub(crate) fn new(url: &str, connect_timeout: Duration) -> Listener {
        Listener {
            url: url.to_owned(),
            connect_timeout,
            sinks: ReleaseSinks::new(),
            started: Once::new(),
            stop: Arc::default(),
        }
    }

    /// This store's name in the notices its releases send.
    pub(crate) fn origin(&self) -> &str {
        self.sinks.origin()
    }

    /// Adds `sink`, and starts the listening thread if it is not running yet.
    pub(crate) fn watch(&self, sink: ReleaseSink) -> bool {
        self.sinks.add(sink);
        self.started.call_once(|| {
            let (url, timeout) = (self.url.clone(), self.connect_timeout);
            let (sinks, stop) = (self.sinks.clone(), self.stop.clone());
            let spawned = std::thread::Builder::new()
                .name("db-locks-pg-listen".into())
                .spawn(move || listen(&url, timeout, &sinks, &stop));
            if let Err(e) = spawned {
                log::warn!("db-locks: cannot start the PostgreSQL listener, waiters poll: {e}");
            }
        });
        true
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

/// Connects, listens and delivers until `stop`; reconnects after a failure.
fn listen(url: &str, connect_timeout: Duration, sinks: &ReleaseSinks, stop: &AtomicBool) {
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        let connected = url
            .parse::<pg_listener::Config>()
            .map(|mut config| {
                config.connect_timeout(connect_timeout);
                config
            })
            .and_then(|config| config.connect(pg_listener::NoTls))
            .and_then(|mut client| {
                client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(client)
            });
        let mut client = match connected {
            Ok(client) => client,
            Err(e) => {
                if !warned {
                    // No password in the message: it comes from the client, not from the URL.
                    log::warn!("db-locks: PostgreSQL listener not connected, waiters poll: {e}");
                    warned = true;
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        while !stop.load(Ordering::SeqCst) && !client.is_closed() {
            let mut notices = client.notifications();
            let mut batch = notices.timeout_iter(POLL);
            loop {
                match batch.next() {
                    Ok(Some(notice)) => sinks.deliver(notice.payload()),
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
        }
    }
}
