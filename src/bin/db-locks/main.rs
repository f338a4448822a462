//! `db-locks`: the command-line tool. See the README for the
//! contract: synopsis, commands, JSON fields and exit codes.

mod args;
mod bench;
mod output;
mod run;
mod waiting;

use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use db_locks::{
    validate_key, validate_lock_key, AcquireLockOptions, AcquireLockOptionsBuilder, ErrorKind,
    LockError, LockManager, LocksConfig, MutexLock, Provider, Redactor, ReleaseLockOptionsBuilder,
    SemaphoreBuilder, SendHeartbeatOptionsBuilder, MAX_SEMAPHORE_SIZE,
};
use serde_json::json;

use args::{Cli, Command, GlobalOpts};
use output::{emit, json_line, lock_human, lock_json, semaphore_human, semaphore_json};

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
    Ok(config)
}

/// Checks keys and sizes before connecting, so bad input is exit 2 even when the store is down.
fn preflight(command: &Command) -> Result<(), LockError> {
    let keys: Vec<&str> = match command {
        Command::Acquire(a) => {
            if a.semaphore && a.delete_on_release {
                return Err(LockError::Validation(
                    "--delete-on-release applies to mutexes, not semaphore permits".into(),
                ));
            }
            vec![&a.key]
        }
        Command::Heartbeat(a) => {
            return validate_lock_key(&a.key, a.semaphore_key.as_deref());
        }
        Command::Release(a) => {
            return validate_lock_key(&a.key, a.semaphore_key.as_deref());
        }
        Command::GetMutex(a)
        | Command::GetSemaphore(a)
        | Command::DeleteSemaphore(a)
        | Command::GetSemaphoreMutexes(a) => vec![&a.key],
        Command::DeleteMutex(a) => vec![&a.key],
        Command::CreateSemaphore(a) => {
            if !(1..=MAX_SEMAPHORE_SIZE).contains(&a.max) {
                return Err(LockError::Validation(format!(
                    "semaphore size must be between 1 and {MAX_SEMAPHORE_SIZE}, not {}",
                    a.max
                )));
            }
            vec![&a.key]
        }
        Command::Run(a) => vec![&a.key],
        Command::Bench(a) => return bench::check(a),
        Command::List | Command::Migrate => vec![],
    };
    keys.into_iter().try_for_each(validate_key)
}

fn execute(cli: Cli, matches: &ArgMatches, secrets: &mut Redactor) -> Result<u8, Exit> {
    preflight(&cli.command)?;
    let config = build_config(
        &cli.global,
        cli.provider.map(Provider::from),
        matches,
        secrets,
    )?;
    let manager = LockManager::connect(&config)?;
    let json = cli.global.json;
    let print = |text: String| -> Result<u8, Exit> {
        emit(&text).map_err(|e| Exit::other(format!("cannot write the result to stdout: {e}")))?;
        Ok(0)
    };
    let print_lock = |lock: &MutexLock| {
        print(if json {
            json_line(&lock_json(lock))
        } else {
            lock_human(lock)
        })
    };
    let not_found =
        |what: &str, key: &str| Exit::other(format!("not found: {what} `{key}` does not exist"));

    match &cli.command {
        Command::Acquire(a) => {
            let mut opts = AcquireLockOptionsBuilder::new(&a.key)
                .with_requires_semaphore(a.semaphore)
                .with_delete_on_release(a.delete_on_release);
            if let Some(lease) = a.lease {
                opts = opts.with_lease_duration(lease);
            }
            if let Some(data) = &a.data {
                opts = opts.with_data(data);
            }
            let opts = opts.build();
            let wait = default_wait(&manager, &opts, a.wait)?;
            let lock = waiting::acquire(&opts, wait, awaited(&manager, &opts), |o| {
                manager.acquire_lock(o)
            })?;
            let printed = print_lock(&lock);
            if printed.is_err() {
                // Nobody learnt the version: give the lease back rather than strand it.
                let _ = manager.release_lock(&lock.to_release_options());
            }
            printed
        }
        Command::Heartbeat(a) => {
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
            let lock = manager.send_heartbeat(&opts.build())?;
            print_lock(&lock)
        }
        Command::Release(a) => {
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
            if !manager.release_lock(&opts.build())? {
                return Err(LockError::NotHeld {
                    key: a.key.clone(),
                    version: a.version.clone(),
                }
                .into());
            }
            print(if json {
                json_line(&json!({
                    "mutex_key": a.key,
                    "semaphore_key": a.semaphore_key,
                    "tenant_id": manager.tenant_id(),
                    "version": a.version,
                    "released": true,
                }))
            } else {
                format!("released `{}`\n", a.key)
            })
        }
        Command::GetMutex(a) => match manager.get_mutex(&a.key)? {
            Some(lock) => print_lock(&lock),
            None => Err(not_found("mutex", &a.key)),
        },
        Command::DeleteMutex(a) => {
            if !manager.delete_mutex(&a.key, a.version.as_deref())? {
                return Err(match (&a.version, manager.get_mutex(&a.key)?) {
                    (Some(version), Some(_)) => LockError::NotHeld {
                        key: a.key.clone(),
                        version: version.clone(),
                    }
                    .into(),
                    _ => not_found("mutex", &a.key),
                });
            }
            print(if json {
                json_line(&json!({
                    "mutex_key": a.key,
                    "tenant_id": manager.tenant_id(),
                    "deleted": true,
                }))
            } else {
                format!("deleted mutex `{}`\n", a.key)
            })
        }
        Command::CreateSemaphore(a) => {
            let mut builder = SemaphoreBuilder::new(&a.key, a.max);
            if let Some(lease) = a.lease {
                builder = builder.with_lease_duration_millis(lease.as_millis().max(1) as i64);
            }
            let semaphore = manager.create_semaphore(&builder.build())?;
            print(if json {
                json_line(&semaphore_json(&semaphore))
            } else {
                semaphore_human(&semaphore)
            })
        }
        Command::GetSemaphore(a) => match manager.get_semaphore(&a.key)? {
            Some(s) => print(if json {
                json_line(&semaphore_json(&s))
            } else {
                semaphore_human(&s)
            }),
            None => Err(not_found("semaphore", &a.key)),
        },
        Command::DeleteSemaphore(a) => {
            if !manager.delete_semaphore(&a.key)? {
                return Err(not_found("semaphore", &a.key));
            }
            print(if json {
                json_line(&json!({
                    "semaphore_key": a.key,
                    "tenant_id": manager.tenant_id(),
                    "deleted": true,
                }))
            } else {
                format!("deleted semaphore `{}`\n", a.key)
            })
        }
        Command::GetSemaphoreMutexes(a) => {
            if manager.get_semaphore(&a.key)?.is_none() {
                return Err(not_found("semaphore", &a.key));
            }
            let slots = manager.get_semaphore_mutexes(&a.key)?;
            print(if json {
                json_line(&serde_json::Value::Array(
                    slots.iter().map(lock_json).collect(),
                ))
            } else {
                output::locks_table(&slots, "")
            })
        }
        Command::List => {
            let mutexes = manager.list_mutexes()?;
            let semaphores = manager
                .list_semaphores()?
                .into_iter()
                .map(|s| {
                    let slots = manager.get_semaphore_mutexes(&s.semaphore_key)?;
                    Ok((s, slots))
                })
                .collect::<Result<Vec<_>, LockError>>()?;
            print(output::list(&mutexes, &semaphores, json))
        }
        Command::Migrate => {
            manager.migrate()?;
            let store = store_name(&config);
            print(if json {
                json_line(&json!({
                    "provider": config.provider.to_string(),
                    "store": store,
                    "migrated": true,
                }))
            } else {
                format!("the schema of {store} is up to date\n")
            })
        }
        Command::Bench(a) => print(bench::run(
            &manager,
            &config.provider.to_string(),
            &store_name(&config),
            a,
            json,
        )?),
        Command::Run(a) => {
            let mut opts =
                AcquireLockOptionsBuilder::new(&a.key).with_requires_semaphore(a.semaphore);
            if let Some(lease) = a.lease {
                opts = opts.with_lease_duration(lease);
            }
            if let Some(data) = &a.data {
                opts = opts.with_data(data);
            }
            let opts = opts.build();
            let wait = default_wait(&manager, &opts, a.wait)?;
            let held = if a.semaphore {
                waiting::acquire(&opts, wait, awaited(&manager, &opts), |o| {
                    manager.acquire_permit(o).map(run::Held::Permit)
                })?
            } else {
                waiting::acquire(&opts, wait, awaited(&manager, &opts), |o| {
                    manager.lock(o).map(run::Held::Mutex)
                })?
            };
            run::run(held, a, manager.tenant_id())
        }
    }
}

/// The store `config` names, without passwords, for `migrate` and `bench`.
fn store_name(config: &LocksConfig) -> String {
    match config.provider {
        Provider::Rdb => config.redacted_database_url(),
        Provider::Redis => db_locks::redact_url(&config.redis_url),
        Provider::Ddb => format!(
            "{} (tables {} and {})",
            config
                .dynamodb_endpoint
                .as_deref()
                .map_or_else(|| "DynamoDB".to_owned(), db_locks::redact_url),
            config.dynamodb_mutex_table,
            config.dynamodb_semaphore_table
        ),
    }
}

/// The wait when `-w` is not given: the lease (`-l`), else the semaphore's lease for a
/// permit, else the config's default lease. With `-s`, also fails early if the semaphore
/// does not exist.
fn default_wait(
    manager: &LockManager,
    opts: &AcquireLockOptions,
    wait: Option<Duration>,
) -> Result<Duration, Exit> {
    let semaphore_lease = if opts.requires_semaphore {
        match manager.get_semaphore(&opts.key)? {
            Some(s) => Some(Duration::from_millis(s.lease_duration_ms.max(1) as u64)),
            None => {
                return Err(Exit::other(format!(
                    "not found: semaphore `{}` does not exist (create it with create-semaphore)",
                    opts.key
                )))
            }
        }
    } else {
        None
    };
    Ok(wait
        .or(opts.lease_duration)
        .or(semaphore_lease)
        .unwrap_or(Duration::from_millis(manager.config().default_lease_ms)))
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
