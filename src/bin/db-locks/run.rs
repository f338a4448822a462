//! `run`: hold a guard while a child process runs.
//!
//! * Batch mode (stdin is not a terminal): the child leads a process group of its own, and
//!   every signal db-locks passes on, and the SIGTERM/SIGKILL of a lost lease, goes to that
//!   whole group, so a shell script's own children stop too.
//! * Interactive mode (stdin is a terminal): the child stays in db-locks' process group, so
//!   it keeps the terminal (reads it, gets Ctrl-C from it directly). Signals sent by other
//!   processes are passed on to the child; the terminal's own are not passed on twice.

use std::io::IsTerminal;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use db_locks::{LeaseGuard, LockError};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithRawSiginfo;
use signal_hook::iterator::SignalsInfo;

use crate::args::RunArgs;
use crate::Exit;

/// Signals passed on to the child.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Where signals for the child go.
#[derive(Clone, Copy)]
struct Target {
    pid: i32,
    /// Signal the child's whole process group (batch mode).
    group: bool,
}

impl Target {
    fn signal(self, signal: i32) {
        let pid = if self.group { -self.pid } else { self.pid };
        // SAFETY: kill(2) has no memory-safety preconditions. The child is not reaped before
        // the last call (only `try_wait` in the same loop reaps it), so its pid, which is
        // also its process group id in batch mode, cannot have been reused.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal).min(255) as u8,
        _ => 1,
    }
}

/// Runs the child under `held` (a mutex guard or a permit) and returns db-locks' exit code.
pub fn run(held: LeaseGuard, args: &RunArgs) -> Result<u8, Exit> {
    let interactive = std::io::stdin().is_terminal();

    // Registered before the child starts, so no signal meant for it is lost in between.
    let mut signals = SignalsInfo::<WithRawSiginfo>::new(FORWARDED.iter().chain(&[SIGCHLD]))
        .map_err(|e| Exit::other(format!("cannot install signal handlers: {e}")))?;
    let signal_handle = signals.handle();
    let (signal_tx, signal_rx) = crossbeam_channel::unbounded::<(i32, i32)>();
    std::thread::Builder::new()
        .name("db-locks-signals".into())
        .spawn(move || {
            for info in signals.forever() {
                if signal_tx.send((info.si_signo, info.si_code)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Exit::other(format!("cannot start the signal thread: {e}")))?;

    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("DB_LOCKS_KEY", held.key())
        .env("DB_LOCKS_TENANT", held.tenant_id())
        .env("DB_LOCKS_FENCING_TOKEN", held.fencing_token().to_string())
        .env("DB_LOCKS_VERSION", held.record().version);
    match held.semaphore_key() {
        Some(sem) => command.env("DB_LOCKS_SEMAPHORE_KEY", sem),
        None => command.env_remove("DB_LOCKS_SEMAPHORE_KEY"),
    };
    if !interactive {
        command.process_group(0);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            signal_handle.close();
            let _ = held.release();
            let program = args.command[0].to_string_lossy();
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            };
            return Err(Exit::new(code, format!("cannot run `{program}`: {e}")));
        }
    };
    let target = Target {
        pid: child.id() as i32,
        group: !interactive,
    };

    let outcome = supervise(
        &mut child,
        target,
        &held,
        &signal_rx,
        interactive,
        args.kill_after,
    );
    signal_handle.close();
    let (status, lost) =
        outcome.map_err(|e| Exit::other(format!("cannot wait for the child: {e}")))?;

    if lost.is_some() {
        let _ = held.release();
        // `supervise` has said why on stderr already.
        return Err(Exit::new(3, ""));
    }
    match held.release() {
        Ok(()) => Ok(exit_code(status)),
        Err(e @ LockError::NotHeld { .. }) | Err(e @ LockError::LeaseLost { .. }) => {
            Err(Exit::new(
                3,
                format!(
                    "the lease was lost before the child ended ({}): {e}",
                    describe(status)
                ),
            ))
        }
        Err(e) => {
            // The child's work is done; the lease just stays until it expires.
            eprintln!("db-locks: warning: release failed, the lease will expire on its own: {e}");
            Ok(exit_code(status))
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("it exited with code {code}"),
        (None, Some(signal)) => format!("it was ended by signal {signal}"),
        _ => "it ended".into(),
    }
}

/// Waits for the child, passing signals on and stopping it if the lease is lost.
/// Returns its status and, if the lease was lost, why.
fn supervise(
    child: &mut Child,
    target: Target,
    held: &LeaseGuard,
    signal_rx: &Receiver<(i32, i32)>,
    interactive: bool,
    kill_after: Duration,
) -> std::io::Result<(ExitStatus, Option<String>)> {
    let never = crossbeam_channel::never();
    let mut lost_rx = Some(held.lost_signal());
    let mut lost: Option<String> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, lost));
        }
        if lost.is_none() {
            if let Err(e) = held.ensure_held() {
                eprintln!(
                    "db-locks: {e}; sending SIGTERM to the child, SIGKILL in {}s",
                    kill_after.as_secs_f64()
                );
                lost = Some(e.to_string());
                target.signal(SIGTERM);
                kill_at = Some(Instant::now() + kill_after);
            }
        }
        let mut tick = Duration::from_millis(200);
        if let Some(at) = kill_at {
            let now = Instant::now();
            if now >= at {
                target.signal(SIGKILL);
                kill_at = None;
            } else {
                tick = tick.min(at - now);
            }
        }
        select! {
            recv(signal_rx) -> info => {
                if let Ok((signal, code)) = info {
                    // In interactive mode the terminal's signals (sent by the kernel) reach
                    // the child by themselves.
                    let from_terminal = interactive && code == libc::SI_KERNEL;
                    if signal != SIGCHLD && !from_terminal {
                        target.signal(signal);
                    }
                }
            }
            recv(lost_rx.as_ref().unwrap_or(&never)) -> _ => {
                // The heartbeat ended: the next round sees the loss in `ensure_held`.
                lost_rx = None;
            }
            default(tick) => {}
        }
    }
}
