//! Waiting for a busy lock: one try, then (if allowed) the library's wait loop, with a
//! progress line on stderr while it waits and stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use db_locks::{AcquireLockOptions, LockError, Result};

/// A live "waiting for ..." line on stderr, cleared when dropped.
struct Indicator {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Indicator {
    fn start(what: String, started: Instant, wait: Duration) -> Option<Indicator> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("db-locks-waiting".into())
            .spawn(move || loop {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2Kdb-locks: waiting for {what} ({}s of {}s)",
                    started.elapsed().as_secs(),
                    wait.as_secs_f64().ceil() as u64
                );
                let _ = err.flush();
                drop(err);
                match stopped.recv_timeout(Duration::from_millis(500)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => {
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

/// Tries once; if busy and `wait` allows, shows what it waits for (when stderr is a
/// terminal) and waits for the rest of `wait` with `wait_for`.
///
/// `describe` names what is awaited (called only when the indicator is shown).
pub fn acquire<T>(
    opts: &AcquireLockOptions,
    wait: Duration,
    describe: impl FnOnce() -> String,
    try_once: impl FnOnce(&AcquireLockOptions) -> Result<Option<T>>,
    wait_for: impl FnOnce(&AcquireLockOptions) -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    let not_granted = || LockError::NotGranted {
        key: opts.key.clone(),
        waited_ms: started.elapsed().as_millis() as u64,
    };
    if let Some(granted) = try_once(opts)? {
        return Ok(granted);
    }
    let remaining = wait.saturating_sub(started.elapsed());
    if remaining.is_zero() {
        return Err(not_granted());
    }
    let _indicator = if std::io::stderr().is_terminal() {
        Indicator::start(describe(), started, wait)
    } else {
        None
    };
    let mut rest = opts.clone();
    rest.wait = Some(remaining);
    wait_for(&rest).map_err(|e| match e {
        LockError::NotGranted { .. } => not_granted(),
        other => other,
    })
}
