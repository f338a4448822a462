//! The command line: global options, the optional PROVIDER word and the subcommands.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use db_locks::Provider;

/// Lease-based distributed mutexes and semaphores for shell scripts and batch jobs.
///
/// Locks live in SQLite (the default, in a per-user file), PostgreSQL, MySQL/MariaDB (`rdb`),
/// Redis (`redis`) or DynamoDB (`ddb`). Exit codes: 0 success (`run`: the child's code),
/// 2 bad usage or input, 3 lease not held, 75 not granted (busy), 1 other errors.
#[derive(Debug, Parser)]
#[command(
    name = "db-locks",
    version,
    subcommand_value_name = "COMMAND",
    subcommand_help_heading = "Commands",
    after_help = "Options may come before or after PROVIDER. Lease and wait values are seconds and may have decimals.\nRun `db-locks help <COMMAND>` for the options of a command."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// Where locks are stored: rdb (SQLite, PostgreSQL, MySQL/MariaDB), ddb (DynamoDB) or
    /// redis [default: the config file's provider, else rdb]
    #[arg(value_name = "PROVIDER", value_parser = provider_parser())]
    pub provider: Option<Provider>,

    #[command(subcommand)]
    pub command: Command,
}

/// The PROVIDER word: the library's providers, parsed by the library.
fn provider_parser() -> impl TypedValueParser<Value = Provider> {
    let names = Provider::ALL.map(|p| {
        PossibleValue::new(p.name())
            .help(p.description())
            .aliases(p.aliases().iter().copied())
    });
    PossibleValuesParser::new(names).try_map(|name| name.parse::<Provider>())
}

/// Options accepted anywhere on the line.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Tenant whose locks to work on; tenants never see each other's locks [default: default]
    #[arg(
        short,
        long,
        global = true,
        env = "DB_LOCKS_TENANT",
        value_name = "TENANT"
    )]
    pub tenant: Option<String>,

    /// TOML config file whose keys are LocksConfig's fields; flags and environment override it
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// rdb: a SQLite path or a sqlite://, postgres:// or mysql:// URL
    /// [default: $XDG_DATA_HOME/db-locks/locks.sqlite, i.e. ~/.local/share/db-locks/locks.sqlite]
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// redis: where Redis is: redis:// or rediss:// (TLS) for one server,
    /// redis+sentinel://HOST:PORT,.../SERVICE for the primary Sentinel names,
    /// redis+cluster://HOST:PORT,... for a Redis Cluster; USER:PASSWORD@ before the hosts for
    /// an ACL user [default: redis://127.0.0.1:6379]
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,

    /// redis: PEM file of the certificate authority of the servers' TLS certificates
    /// [default: the system's roots]
    #[arg(long, global = true, value_name = "FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// redis: PEM client certificate, for servers that require one (with
    /// --redis-tls-client-key-file)
    #[arg(long, global = true, value_name = "FILE")]
    pub redis_tls_client_cert_file: Option<PathBuf>,

    /// redis: PEM key of --redis-tls-client-cert-file
    #[arg(long, global = true, value_name = "FILE")]
    pub redis_tls_client_key_file: Option<PathBuf>,

    /// ddb: endpoint override (DynamoDB Local, ...); region and credentials come from the AWS
    /// default chain
    #[arg(
        long,
        global = true,
        env = "AWS_ENDPOINT_URL_DYNAMODB",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub dynamodb_endpoint: Option<String>,

    /// Print each result as one JSON object on one line (lists as one JSON array)
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire a mutex (or a permit of a semaphore with -s) and print it; the lease is not
    /// renewed after db-locks exits: renew it with `heartbeat`, end it with `release`
    Acquire(AcquireArgs),
    /// Renew a lease held with VERSION and print the lock with its new version
    Heartbeat(HeartbeatArgs),
    /// Release a lease held with VERSION
    Release(ReleaseArgs),
    /// Print a mutex
    GetMutex(KeyArgs),
    /// Delete a mutex (only when no live lease holds it, or when -v is its current version)
    DeleteMutex(DeleteMutexArgs),
    /// Create a semaphore with MAX permits, or resize an existing one
    CreateSemaphore(CreateSemaphoreArgs),
    /// Print a semaphore with its number of busy permits
    GetSemaphore(KeyArgs),
    /// Delete a semaphore and its permit slots (only when no permit is live)
    DeleteSemaphore(KeyArgs),
    /// Print the permit slots of a semaphore, with their holders and expiry
    GetSemaphoreMutexes(KeyArgs),
    /// Hold a mutex (or a semaphore permit with -s) while COMMAND runs, renewing the lease;
    /// exits with COMMAND's exit code
    #[command(
        after_help = "The child gets DB_LOCKS_KEY, DB_LOCKS_SEMAPHORE_KEY (with -s), DB_LOCKS_TENANT, \
DB_LOCKS_FENCING_TOKEN and DB_LOCKS_VERSION (the version at grant time) in its environment. \
SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to db-locks are passed on to it. \
If the lease is lost, the child gets SIGTERM, then SIGKILL after --kill-after seconds, and \
db-locks exits with 3."
    )]
    Run(RunArgs),
    /// List the tenant's mutexes and semaphores, with holders and expiry
    List,
    /// Create or upgrade the schema (tables) now
    Migrate,
    /// Measure the latency of each operation on this store, hand-off and contention, as
    /// ratios to a plain read (and to the store's own locks where it has them)
    #[command(
        after_help = "Measures, in one run: round_trip (get_mutex, one primary-key read: the \
baseline), acquire_release (acquire + release of a private mutex), heartbeat (renewing a held \
lease), guard_cycle (a guard taken and released, heartbeat thread included), permit_cycle \
(acquire + release of a permit of a semaphore of --semaphore-size); each also as a ratio to \
round_trip (of the means) from the same run.\n\n\
handoff: the time from a holder's release_lock returning (and, as from_release_call, from its \
start) to a waiter's acquire_lock returning, p50/p99 of -n samples, for each count of --handoff-waiters (default 1 and 8) waiters already \
waiting (each found the mutex busy, then the holder kept it --handoff-hold more): `threads` \
share one manager; `processes` each have their own (one connect each, as separate processes \
would). The threads take turns: the releaser waits again only after someone else got the \
mutex.\n\n\
contended: --threads threads (default 8) loop acquire + release on one mutex for \
--contended-secs (default 2); reported: grants/s and its ratio to 1 thread for the same time, \
each thread's share of the grants (min, mean, max) and acquire requests per grant (from the \
manager's metrics). --threads-sweep 1,2,4,8 adds a run per count.\n\n\
baseline (same run): on PostgreSQL, pg_advisory_lock + unlock on one session, and its hand-off \
to a second session blocked in pg_advisory_lock (ratio_to_advisory); on Redis, SET NX PX + a \
compare-and-delete script, and its hand-off to a waiter polling SET NX every 10 ms \
(ratio_to_set_nx; hand-off ratios compare the from_release_call figures); other stores: n/a.\n\n\
The keys are KEY_PREFIX plus a random suffix, deleted at the end."
    )]
    Bench(BenchArgs),
}

/// `-k KEY` alone.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The mutex or semaphore key
    #[arg(short, long, value_name = "KEY")]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The mutex key, or with -s the semaphore key
    #[arg(short, long, value_name = "KEY")]
    pub key: String,

    /// Lease in seconds [default: the config's default lease (15 s); with -s the semaphore's]
    #[arg(short, long, value_name = "SECS", value_parser = parse_lease)]
    pub lease: Option<Duration>,

    /// KEY names a semaphore (which must exist): take one of its permits
    #[arg(short, long)]
    pub semaphore: bool,

    /// Seconds to wait while it is busy; 0 tries once [default: the lease]
    #[arg(short, long, value_name = "SECS", value_parser = parse_wait)]
    pub wait: Option<Duration>,

    /// Data to store with the lock
    #[arg(short, long, value_name = "DATA")]
    pub data: Option<String>,

    /// Delete the mutex record when it is released (plain mutexes only)
    #[arg(long)]
    pub delete_on_release: bool,
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// The mutex key (for a permit: the slot's mutex_key)
    #[arg(short, long, value_name = "KEY")]
    pub key: String,

    /// The version printed by the last acquire or heartbeat
    #[arg(short = 'v', long, value_name = "VERSION")]
    pub version: String,

    /// New lease in seconds [default: the lock's current lease]
    #[arg(short, long, value_name = "SECS", value_parser = parse_lease)]
    pub lease: Option<Duration>,

    /// The semaphore the slot KEY belongs to
    #[arg(long, value_name = "SEM")]
    pub semaphore_key: Option<String>,

    /// Replace the stored data
    #[arg(short, long, value_name = "DATA")]
    pub data: Option<String>,

    /// The version the renewal writes [default: a new random one]. Naming it makes a retry
    /// safe: if the heartbeat timed out, run the same command again; it succeeds whether or
    /// not the first one reached the store
    #[arg(long, value_name = "VERSION")]
    pub new_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The mutex key (for a permit: the slot's mutex_key)
    #[arg(short, long, value_name = "KEY")]
    pub key: String,

    /// The version printed by the last acquire or heartbeat
    #[arg(short = 'v', long, value_name = "VERSION")]
    pub version: String,

    /// The semaphore the slot KEY belongs to
    #[arg(long, value_name = "SEM")]
    pub semaphore_key: Option<String>,

    /// Delete the mutex record instead of marking it free
    #[arg(long)]
    pub delete: bool,

    /// Replace the stored data (a note for the next holder)
    #[arg(short, long, value_name = "DATA")]
    pub data: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteMutexArgs {
    /// The mutex key
    #[arg(short, long, value_name = "KEY")]
    pub key: String,

    /// Delete only if this is the current version (even while its lease is live)
    #[arg(short = 'v', long, value_name = "VERSION")]
    pub version: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateSemaphoreArgs {
    /// The semaphore key
    #[arg(short, long, value_name = "KEY")]
    pub key: String,

    /// Number of permits
    #[arg(short, long, value_name = "MAX", allow_negative_numbers = true)]
    pub max: i64,

    /// Default lease of a permit in seconds [default: the config's default lease (15 s)]
    #[arg(short, long, value_name = "SECS", value_parser = parse_lease)]
    pub lease: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The mutex key, or with -s the semaphore key
    #[arg(short, long, value_name = "KEY")]
    pub key: String,

    /// Lease in seconds, renewed while COMMAND runs [default: the config's default lease
    /// (15 s); with -s the semaphore's]
    #[arg(short, long, value_name = "SECS", value_parser = parse_lease)]
    pub lease: Option<Duration>,

    /// KEY names a semaphore (which must exist): hold one of its permits
    #[arg(short, long)]
    pub semaphore: bool,

    /// Seconds to wait while it is busy; 0 tries once [default: the lease]
    #[arg(short, long, value_name = "SECS", value_parser = parse_wait)]
    pub wait: Option<Duration>,

    /// Data to store with the lock
    #[arg(short, long, value_name = "DATA")]
    pub data: Option<String>,

    /// Seconds between the SIGTERM and the SIGKILL sent to COMMAND when the lease is lost
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_wait)]
    pub kill_after: Duration,

    /// The command to run, and its arguments
    #[arg(
        value_name = "COMMAND",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured operations of each kind (also the number of hand-offs measured per setting)
    #[arg(short = 'n', long, value_name = "ITERATIONS", default_value_t = 200)]
    pub iterations: u64,

    /// Threads contending for one mutex in the contended run
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub threads: u64,

    /// Seconds each contended run lasts (the 1-thread run, the --threads run and each run of
    /// the sweep)
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_lease)]
    pub contended_secs: Duration,

    /// Also run the contended measurement with each of these thread counts, e.g. 1,2,4,8
    /// (the 1-thread and --threads runs are always made)
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', num_args = 1)]
    pub threads_sweep: Vec<u64>,

    /// Numbers of waiters the hand-off is measured with
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        num_args = 1,
        default_values_t = [1u64, 8]
    )]
    pub handoff_waiters: Vec<u64>,

    /// Seconds the holder keeps the lock after the last waiter has found it busy, before it
    /// releases it; should exceed one acquire round trip of the store
    #[arg(long, value_name = "SECS", default_value = "0.005", value_parser = parse_lease)]
    pub handoff_hold: Duration,

    /// Number of permits of the semaphore used by permit_cycle
    #[arg(
        long,
        value_name = "M",
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    pub semaphore_size: i64,

    /// Prefix of the keys the benchmark creates (and deletes at the end)
    #[arg(
        short,
        long,
        value_name = "KEY_PREFIX",
        default_value = "db-locks-bench"
    )]
    pub key_prefix: String,
}

fn parse_secs(s: &str, allow_zero: bool) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, such as 30 or 0.5".to_owned())?;
    if !secs.is_finite() {
        return Err("expected a finite number of seconds".into());
    }
    if secs < 0.0 || (secs == 0.0 && !allow_zero) {
        return Err(if allow_zero {
            "must not be negative".into()
        } else {
            "must be greater than zero".into()
        });
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|_| "too large".to_owned())?;
    if secs > 0.0 && d < Duration::from_millis(1) {
        return Err("must be at least 0.001 seconds".into());
    }
    Ok(d)
}

/// A lease: seconds, greater than zero.
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    parse_secs(s, false)
}

/// A wait or grace period: seconds, zero or more.
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    parse_secs(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_lease("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        for bad in ["0", "-1", "abc", "NaN", "inf", "", "1e300"] {
            assert!(parse_lease(bad).is_err(), "{bad}");
        }
        assert!(parse_wait("-0.5").is_err());
    }
}
