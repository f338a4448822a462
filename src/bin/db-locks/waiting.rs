//! Waiting for a busy lock: the library's wait loop (which also retries store errors within
//! the wait), with a progress line on stderr while it waits, when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use db_locks::Result;

/// How long a wait goes on before the progress line appears (an uncontended acquire never
/// shows it).
const SHOW_AFTER: Duration = Duration::from_millis(300);

/// A live "waiting for ..." line on stderr, cleared when dropped.
struct Indicator {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Indicator {
    /// Shows the line after [`SHOW_AFTER`]; `describe` names what is awaited (it may read
    /// the store, so it runs on the indicator's thread, and only if the line is shown).
    fn start(
        describe: impl FnOnce() -> String + Send + 'static,
        started: Instant,
        wait: Option<Duration>,
    ) -> Option<Indicator> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("db-locks-waiting".into())
            .spawn(move || {
                if !matches!(
                    stopped.recv_timeout(SHOW_AFTER),
                    Err(RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                let what = describe();
                loop {
                    let mut err = std::io::stderr().lock();
                    let elapsed = started.elapsed().as_secs();
                    let _ = match wait {
                        Some(wait) => write!(
                            err,
                            "\r\x1b[2Kdb-locks: waiting for {what} ({elapsed}s of {}s)",
                            wait.as_secs_f64().ceil() as u64
                        ),
                        None => write!(err, "\r\x1b[2Kdb-locks: waiting for {what} ({elapsed}s)"),
                    };
                    let _ = err.flush();
                    drop(err);
                    if !matches!(
                        stopped.recv_timeout(Duration::from_millis(500)),
                        Err(RecvTimeoutError::Timeout)
                    ) {
                        let _ = write!(std::io::stderr(), "\r\x1b[2K");
                        return;
                    }
                }
            })
            .ok()?;
        Some(Indicator {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Indicator {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `wait_for` (the library's wait loop, waiting up to `wait`; `None`: as long as the
/// library's default), showing what it waits for while it does, if stderr is a terminal.
pub fn acquire<T>(
    wait: Option<Duration>,
    describe: impl FnOnce() -> String + Send + 'static,
    wait_for: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let _indicator = if std::io::stderr().is_terminal() && wait != Some(Duration::ZERO) {
        Indicator::start(describe, Instant::now(), wait)
    } else {
        None
    };
    wait_for()
}
