//! `db-locks`: the command-line tool. See the README for the
//! contract: synopsis, commands, JSON fields and exit codes.

mod args;
mod baseline;
mod bench;
mod output;
mod run;
mod waiting;

use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use db_locks::{
    validate_key, validate_semaphore_size, AcquireLockOptions, AcquireLockOptionsBuilder,
    ErrorKind, LeaseGuard, LockError, LockManager, LockOptions, LocksConfig, PermitOptions,
    Provider, Redactor, ReleaseLockOptions, ReleaseLockOptionsBuilder, SemaphoreBuilder,
    SendHeartbeatOptions, SendHeartbeatOptionsBuilder,
};

use args::{
    AcquireArgs, Cli, Command, CreateSemaphoreArgs, DeleteMutexArgs, GlobalOpts, HeartbeatArgs,
    KeyArgs, ReleaseArgs, RunArgs,
};
use output::Output;

/// Exit codes of the contract.
const EXIT_OTHER: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_HELD: u8 = 3;
const EXIT_NOT_GRANTED: u8 = 75;

/// How db-locks ends when it does not succeed: an exit code and a message for stderr.
#[derive(Debug)]
pub struct Exit {
    code: u8,
    message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        Exit::new(EXIT_OTHER, message)
    }
}

impl From<LockError> for Exit {
    fn from(e: LockError) -> Self {
        let code = match e.kind() {
            ErrorKind::InvalidInput => EXIT_USAGE,
            ErrorKind::NotHeld => EXIT_NOT_HELD,
            // Not granted, and deleting a mutex or semaphore that a live lease holds:
            // both mean "busy, try again later".
            ErrorKind::Busy => EXIT_NOT_GRANTED,
            _ => EXIT_OTHER,
        };
        Exit::new(code, e.to_string())
    }
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        eprintln!("db-locks: internal error: {}", one_line(&msg));
    }));

    // Passwords that must never be printed: those of every URL on the command line, in the
    // URL environment variables and in the config file.
    let mut secrets = Redactor::default();
    for arg in std::env::args_os() {
        secrets.add_urls_in(&arg.to_string_lossy());
    }
    for var in ["DATABASE_URL", "REDIS_URL", "AWS_ENDPOINT_URL_DYNAMODB"] {
        if let Some(v) = std::env::var_os(var) {
            secrets.add_urls_in(&v.to_string_lossy());
        }
    }

    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let code = e.exit_code();
            let plain = e.render().to_string();
            let clean = secrets.clean(&plain);
            if clean == plain {
                let _ = e.print();
            } else if e.use_stderr() {
                eprint!("{clean}");
            } else {
                print!("{clean}");
            }
            exit_now(code.clamp(0, 255) as u8);
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            exit_now(EXIT_USAGE);
        }
    };

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute(cli, &matches, &mut secrets)
    }));
    let code = match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(exit)) => {
            if !exit.message.is_empty() {
                eprintln!("db-locks: {}", secrets.clean(one_line(&exit.message)));
            }
            exit.code
        }
        Err(_) => EXIT_OTHER,
    };
    exit_now(code)
}

/// Ends the process without running `atexit` handlers.
///
/// The connection pool keeps background threads that may be opening a connection (TLS
/// included) at any moment; `exit(3)` would run OpenSSL's cleanup under their feet and crash
/// now and then (SIGSEGV or SIGABRT after the work is done, seen with libpq). Everything
/// db-locks writes is flushed here, and every store write is committed before it returns.
fn exit_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` has no preconditions; it ends the process at once.
    unsafe { libc::_exit(i32::from(code)) }
}

/// `msg` on one line: line breaks (some database clients write several lines) become `; `.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A string option's value, except an empty one taken from the environment (unset, then).
fn opt(value: &Option<String>, matches: &ArgMatches, id: &str) -> Option<String> {
    let value = value.clone()?;
    if value.is_empty() && matches.value_source(id) == Some(ValueSource::EnvVariable) {
        return None;
    }
    Some(value)
}

/// The config: the file's (or the defaults), then the provider, flags and environment.
fn build_config(
    global: &GlobalOpts,
    provider: Option<Provider>,
    matches: &ArgMatches,
    secrets: &mut Redactor,
) -> Result<LocksConfig, Exit> {
    let mut config = match &global.config {
        Some(path) => {
            if let Ok(text) = std::fs::read_to_string(path) {
                secrets.add_urls_in(&text);
            }
            LocksConfig::from_toml_file(path)?
        }
        None => LocksConfig::default(),
    };
    if let Some(p) = provider {
        config.provider = p;
    }
    if let Some(tenant) = opt(&global.tenant, matches, "tenant") {
        config.tenant_id = tenant;
    }
    if let Some(url) = opt(&global.database_url, matches, "database_url") {
        config.database_url = Some(url);
    }
    if let Some(url) = opt(&global.redis_url, matches, "redis_url") {
        config.redis_url = url;
    }
    if let Some(url) = opt(&global.dynamodb_endpoint, matches, "dynamodb_endpoint") {
        config.dynamodb_endpoint = Some(url);
    }
    for (flag, field) in [
        (&global.redis_tls_ca_file, &mut config.redis_tls_ca_file),
        (
            &global.redis_tls_client_cert_file,
            &mut config.redis_tls_client_cert_file,
        ),
        (
            &global.redis_tls_client_key_file,
            &mut config.redis_tls_client_key_file,
        ),
    ] {
        if flag.is_some() {
            field.clone_from(flag);
        }
    }
    Ok(config)
}

/// Checks the input with the library's own rules before connecting, so bad input is exit 2
/// even when the store is down.
fn preflight(command: &Command) -> Result<(), LockError> {
    match command {
        Command::Acquire(a) => acquire_options(a).validate(),
        Command::Run(a) => run_options(a).validate(),
        Command::Heartbeat(a) => heartbeat_options(a).validate().map(drop),
        Command::Release(a) => release_options(a).validate().map(drop),
        Command::CreateSemaphore(a) => {
            validate_key(&a.key)?;
            validate_semaphore_size(a.max)
        }
        Command::DeleteMutex(a) => validate_key(&a.key),
        Command::GetMutex(a)
        | Command::GetSemaphore(a)
        | Command::DeleteSemaphore(a)
        | Command::GetSemaphoreMutexes(a) => validate_key(&a.key),
        Command::Bench(a) => bench::check(a),
        Command::List | Command::Migrate => Ok(()),
    }
}

/// What every command works with: the manager, its config, and the output format.
struct Session {
    manager: LockManager,
    config: LocksConfig,
    out: Output,
}

fn execute(cli: Cli, matches: &ArgMatches, secrets: &mut Redactor) -> Result<u8, Exit> {
    preflight(&cli.command)?;
    let config = build_config(&cli.global, cli.provider, matches, secrets)?;
    let session = Session {
        manager: LockManager::connect(&config)?,
        config,
        out: Output::new(cli.global.json),
    };
    let s = &session;
    match &cli.command {
        Command::Acquire(a) => acquire(s, a),
        Command::Heartbeat(a) => heartbeat(s, a),
        Command::Release(a) => release(s, a),
        Command::GetMutex(a) => get_mutex(s, a),
        Command::DeleteMutex(a) => delete_mutex(s, a),
        Command::CreateSemaphore(a) => create_semaphore(s, a),
        Command::GetSemaphore(a) => get_semaphore(s, a),
        Command::DeleteSemaphore(a) => delete_semaphore(s, a),
        Command::GetSemaphoreMutexes(a) => get_semaphore_mutexes(s, a),
        Command::List => list(s),
        Command::Migrate => migrate(s),
        Command::Bench(a) => s.out.print(
            &s.out
                .bench(&bench::run(&s.manager, &s.config, a)?, &s.config),
        ),
        Command::Run(a) => run(s, a),
    }
}

fn not_found(what: &str, key: &str) -> Exit {
    Exit::other(format!("not found: {what} `{key}` does not exist"))
}

fn acquire_options(a: &AcquireArgs) -> AcquireLockOptions {
    let mut opts = AcquireLockOptionsBuilder::new(&a.key)
        .with_requires_semaphore(a.semaphore)
        .with_delete_on_release(a.delete_on_release);
    if let Some(lease) = a.lease {
        opts = opts.with_lease_duration(lease);
    }
    if let Some(data) = &a.data {
        opts = opts.with_data(data);
    }
    opts.build()
}

fn acquire(s: &Session, a: &AcquireArgs) -> Result<u8, Exit> {
    let mut opts = acquire_options(a);
    let wait = default_wait(&s.manager, &opts, a.wait);
    opts.wait = wait;
    let lock = waiting::acquire(wait, awaited(&s.manager, &opts), || {
        s.manager.acquire_lock(&opts)
    })?;
    let printed = s.out.print(&s.out.lock(&lock));
    if printed.is_err() {
        // Nobody learnt the version: give the lease back rather than strand it.
        let _ = s.manager.release_lock(&lock.to_release_options());
    }
    printed
}

fn heartbeat_options(a: &HeartbeatArgs) -> SendHeartbeatOptions {
    // Without -l the library keeps the lock's current lease.
    let mut opts = SendHeartbeatOptionsBuilder::new(&a.key, &a.version);
    if let Some(lease) = a.lease {
        opts = opts.with_lease_duration(lease);
    }
    if let Some(sem) = &a.semaphore_key {
        opts = opts.with_semaphore_key(sem);
    }
    if let Some(data) = &a.data {
        opts = opts.with_data(data);
    }
    if let Some(new_version) = &a.new_version {
        opts = opts.with_new_version(new_version);
    }
    opts.build()
}

fn heartbeat(s: &Session, a: &HeartbeatArgs) -> Result<u8, Exit> {
    let lock = s.manager.send_heartbeat(&heartbeat_options(a))?;
    s.out.print(&s.out.lock(&lock))
}

fn release_options(a: &ReleaseArgs) -> ReleaseLockOptions {
    let mut opts = ReleaseLockOptionsBuilder::new(&a.key, &a.version);
    if let Some(sem) = &a.semaphore_key {
        opts = opts.with_semaphore_key(sem);
    }
    if let Some(data) = &a.data {
        opts = opts.with_data(data);
    }
    if a.delete {
        opts = opts.with_delete_lock(true);
    }
    opts.build()
}

fn release(s: &Session, a: &ReleaseArgs) -> Result<u8, Exit> {
    s.manager.release_lock(&release_options(a))?;
    s.out.print(&s.out.released(a, s.manager.tenant_id()))
}

fn get_mutex(s: &Session, a: &KeyArgs) -> Result<u8, Exit> {
    match s.manager.get_mutex(&a.key)? {
        Some(lock) => s.out.print(&s.out.lock(&lock)),
        None => Err(not_found("mutex", &a.key)),
    }
}

fn delete_mutex(s: &Session, a: &DeleteMutexArgs) -> Result<u8, Exit> {
    // A stale version is `NotHeld` (exit 3), a live lease without one `Conflict` (75).
    if !s.manager.delete_mutex(&a.key, a.version.as_deref())? {
        return Err(not_found("mutex", &a.key));
    }
    s.out
        .print(&s.out.deleted("mutex", &a.key, s.manager.tenant_id()))
}

fn create_semaphore(s: &Session, a: &CreateSemaphoreArgs) -> Result<u8, Exit> {
    let mut builder = SemaphoreBuilder::new(&a.key, a.max);
    if let Some(lease) = a.lease {
        builder = builder.with_lease_duration(lease);
    }
    let semaphore = s.manager.create_semaphore(&builder.build())?;
    s.out.print(&s.out.semaphore(&semaphore))
}

fn get_semaphore(s: &Session, a: &KeyArgs) -> Result<u8, Exit> {
    match s.manager.get_semaphore(&a.key)? {
        Some(semaphore) => s.out.print(&s.out.semaphore(&semaphore)),
        None => Err(not_found("semaphore", &a.key)),
    }
}

fn delete_semaphore(s: &Session, a: &KeyArgs) -> Result<u8, Exit> {
    if !s.manager.delete_semaphore(&a.key)? {
        return Err(not_found("semaphore", &a.key));
    }
    s.out
        .print(&s.out.deleted("semaphore", &a.key, s.manager.tenant_id()))
}

fn get_semaphore_mutexes(s: &Session, a: &KeyArgs) -> Result<u8, Exit> {
    let slots = s.manager.get_semaphore_mutexes(&a.key)?;
    s.out.print(&s.out.locks(&slots))
}

fn list(s: &Session) -> Result<u8, Exit> {
    let mutexes = s.manager.list_mutexes()?;
    let mut semaphores = Vec::new();
    for semaphore in s.manager.list_semaphores()? {
        match s.manager.get_semaphore_mutexes(&semaphore.semaphore_key) {
            Ok(slots) => semaphores.push((semaphore, slots)),
            // Deleted since it was listed.
            Err(LockError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    s.out.print(&s.out.list(&mutexes, &semaphores))
}

fn migrate(s: &Session) -> Result<u8, Exit> {
    s.manager.migrate()?;
    s.out.print(&s.out.migrated(&s.config))
}

/// `run`'s options, checked like `acquire`'s.
fn run_options(a: &RunArgs) -> AcquireLockOptions {
    let mut opts = AcquireLockOptionsBuilder::new(&a.key).with_requires_semaphore(a.semaphore);
    if let Some(lease) = a.lease {
        opts = opts.with_lease_duration(lease);
    }
    if let Some(data) = &a.data {
        opts = opts.with_data(data);
    }
    opts.build()
}

fn run(s: &Session, a: &RunArgs) -> Result<u8, Exit> {
    let opts = run_options(a);
    let wait = default_wait(&s.manager, &opts, a.wait);
    let m = &s.manager;
    let started = std::time::Instant::now();
    let guard: Option<LeaseGuard> = waiting::acquire(wait, awaited(m, &opts), || {
        if a.semaphore {
            let mut permit = PermitOptions::new();
            permit.lease = a.lease;
            permit.data = a.data.clone();
            match wait {
                Some(wait) => Ok(m
                    .try_acquire_permit_for(&a.key, wait, &permit)?
                    .map(Into::into)),
                // The semaphore's lease, read by the library only if every permit is busy.
                None => Ok(Some(m.acquire_permit(&a.key, &permit)?.into())),
            }
        } else {
            let mut lock = LockOptions::new();
            lock.lease = a.lease;
            lock.data = a.data.clone();
            let wait = wait.unwrap_or_else(|| m.default_wait(a.lease));
            Ok(m.try_lock_for(&a.key, wait, &lock)?.map(Into::into))
        }
    })?;
    let guard = guard.ok_or_else(|| LockError::NotGranted {
        key: a.key.clone(),
        waited_ms: started.elapsed().as_millis() as u64,
    })?;
    run::run(guard, a)
}

/// The wait when `-w` is not given: the manager's default for this lease. `None` for a permit
/// without a lease: the semaphore's lease, which the library reads only if it has to wait.
fn default_wait(
    manager: &LockManager,
    opts: &AcquireLockOptions,
    wait: Option<Duration>,
) -> Option<Duration> {
    match (wait, opts.requires_semaphore, opts.lease_duration) {
        (Some(wait), _, _) => Some(wait),
        (None, true, None) => None,
        (None, _, lease) => Some(manager.default_wait(lease)),
    }
}

/// What `acquire` or `run` waits for, for the progress line (read when it is shown).
fn awaited(
    manager: &LockManager,
    opts: &AcquireLockOptions,
) -> impl FnOnce() -> String + Send + 'static {
    let (manager, opts) = (manager.clone(), opts.clone());
    move || describe_awaited(&manager, &opts)
}

fn describe_awaited(manager: &LockManager, opts: &AcquireLockOptions) -> String {
    let tenant = manager.tenant_id();
    if opts.requires_semaphore {
        let size = manager
            .get_semaphore(&opts.key)
            .ok()
            .flatten()
            .map_or(String::new(), |s| {
                format!(", all {} permits busy", s.max_size)
            });
        return format!(
            "a permit of semaphore `{}` (tenant `{tenant}`{size})",
            opts.key
        );
    }
    let holder = match manager.get_mutex(&opts.key) {
        Ok(Some(lock)) => match &lock.data {
            Some(data) => format!(", held by `{data}`"),
            None => format!(", held with fencing token {}", lock.fencing_token),
        },
        _ => String::new(),
    };
    format!("mutex `{}` (tenant `{tenant}`{holder})", opts.key)
}
