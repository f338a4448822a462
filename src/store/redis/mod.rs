//! The Redis store: one Lua script per operation, leases in milliseconds on the server's
//! clock, fencing tokens from counters that outlive the locks.
//!
//! # Key layout
//!
//! Every key starts with the configured prefix ([`LocksConfig::redis_key_prefix`], default
//! `db-locks`) and the tenant in a hash tag, so all of one tenant's keys, and therefore every
//! key one script touches, live in one cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{T}:m:K` | hash | mutex `K`: `version`, `fencing_token`, `lease_ms`, `expires_at_ms`, `locked`, `delete_on_release`, `data` |
//! | `P:{T}:m:K:lock` | string, `PX` TTL | the holder's version while the lease runs |
//! | `P:{T}:m:K:fence` | string | the mutex's fencing counter (`INCR`); never deleted |
//! | `P:{T}:mutexes` | sorted set | index of the tenant's mutexes (score 0, ordered by key) |
//! | `P:{T}:s:S` | hash | semaphore `S`: `version`, `max_size`, `lease_ms`, `created_at_ms`, `updated_at_ms` |
//! | `P:{T}:s:S:holders` | sorted set | slot index → expiry (ms since the epoch) of each granted permit |
//! | `P:{T}:s:S:free` | sorted set | slot index → index, of the slots below `max_size` nobody holds |
//! | `P:{T}:s:S:slots` | hash | per slot `<i>:version`, `<i>:fencing_token`, `<i>:lease_ms`, `<i>:expires_at_ms`, `<i>:locked`, `<i>:data` |
//! | `P:{T}:s:S:fence` | hash | slot index → the slot's fencing counter (`HINCRBY`); never deleted |
//! | `P:{T}:semaphores` | sorted set | index of the tenant's semaphores |
//! | `P:{T}:released` | pub/sub channel | release notices of the tenant's locks (`listener.rs`) |
//!
//! `T`, `K` and `S` are written with `%`, `:`, `{` and `}` percent-encoded, so no tenant or key
//! can break out of its place or of the hash tag; the prefix has its braces encoded.
//! A permit slot `i` of semaphore `S` is reported as the mutex `S_i`.
//!
//! # How the operations work
//!
//! Each acquire, renew and release is one `EVALSHA` of a script loaded once (after a
//! `NOSCRIPT`, e.g. after a server restart, the script is loaded again and the `EVALSHA`
//! repeated). A mutex is granted when its lock key is absent; the script writes the lock key
//! with its `PX` in the same `SET`, so no lock key ever exists without a TTL, and takes the
//! fencing token from the counter. Renew and release compare-and-set on the version kept in
//! the record; a renewal without a lease takes the one the record has, inside the same
//! script. As on the SQL stores, a lease that ran out but that nobody took over can still be
//! released, never renewed. Expiry times come from `TIME` inside the scripts: the client's
//! clock is never used. A permit is the lowest index popped from `free` once fewer than
//! `max_size` holders are live (expired holders are reclaimed in the same script), so its
//! cost does not grow with `max_size`. Each script states the invariant it keeps
//! (`lua/*.lua`).
//!
//! # Limits
//!
//! * **One primary.** Locks are as durable as the primary's memory. Redis replicates
//!   asynchronously: if the primary fails after granting a lock but before a replica got the
//!   write, the promoted replica does not know the lock and grants it again. `WAIT` narrows
//!   that window but cannot close it. Persistence (AOF `appendfsync always`) covers restarts
//!   of a single server, not failover.
//! * **No Redlock.** Redlock (a majority of independent primaries) still trusts every
//!   process to pause for less than a lease and every clock to run at the same rate; it
//!   gives no token a resource could check, and it multiplies the round trips. It is not
//!   offered.
//! * **The fencing token is the remedy** for paused holders: a resource that remembers the
//!   highest token it has seen and rejects lower ones stays safe when a holder whose lease
//!   ran out comes back. The counters live on the same primary, so a failover that loses a
//!   grant can lose its increment too, and the next grant may repeat that token: a resource
//!   that must survive failover should also reject a token equal to the last one from a
//!   different holder, or the deployment should not fail over without the replica being in
//!   sync (`WAIT`, `min-replicas-to-write`).
//! * **Memory.** Use `maxmemory-policy noeviction`: `volatile-*` policies evict exactly the
//!   keys with a TTL, i.e. lock keys. (Acquire also checks the record's expiry, so an evicted
//!   lock key alone does not grant a live lease twice.) Fencing counters stay after a mutex
//!   or semaphore is deleted: one small key per name ever used.
//! * **Topology.** One server, the primary a Sentinel group names, or a Redis Cluster, over
//!   TCP or TLS (Redis 6 or later; see `topology.rs`). The hash tag keeps the keys of each
//!   script in one slot, so on a cluster all of one tenant's keys share one shard.

mod listener;
mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, Script, Value};

use super::{
    AdminStore, LeaseStore, MutexRequest, PermitRequest, ReleaseRequest, ReleaseSink, RenewRequest,
    Target,
};
use crate::config::LocksConfig;
use crate::error::{LockError, Redactor, Result};
use crate::model::{from_millis, millis, millis_to_datetime, slot_key, MutexLock, Semaphore};

const COMMON: &str = include_str!("lua/common.lua");

/// Oldest server the scripts run on (`ZPOPMIN`, variadic `HSET`, effects replication).
const MIN_REDIS_MAJOR: u32 = 6;

/// The scripts, each with the shared helpers prepended.
struct Scripts {
    acquire_mutex: Script,
    renew_mutex: Script,
    release_mutex: Script,
    delete_mutex: Script,
    put_semaphore: Script,
    get_semaphore: Script,
    delete_semaphore: Script,
    acquire_permit: Script,
    renew_permit: Script,
    release_permit: Script,
    read_batch: Script,
    /// Each script's text by its SHA1, to name what a refused line calls.
    texts: HashMap<String, String>,
}

impl Scripts {
    fn new() -> Scripts {
        let mut texts = HashMap::new();
        let mut s = |body: &str| {
            let text = format!("{COMMON}\n{body}");
            let script = Script::new(&text);
            texts.insert(script.get_hash().to_owned(), text);
            script
        };
        Scripts {
            acquire_mutex: s(include_str!("lua/acquire_mutex.lua")),
            renew_mutex: s(include_str!("lua/renew_mutex.lua")),
            release_mutex: s(include_str!("lua/release_mutex.lua")),
            delete_mutex: s(include_str!("lua/delete_mutex.lua")),
            put_semaphore: s(include_str!("lua/put_semaphore.lua")),
            get_semaphore: s(include_str!("lua/get_semaphore.lua")),
            delete_semaphore: s(include_str!("lua/delete_semaphore.lua")),
            acquire_permit: s(include_str!("lua/acquire_permit.lua")),
            renew_permit: s(include_str!("lua/renew_permit.lua")),
            release_permit: s(include_str!("lua/release_permit.lua")),
            read_batch: s(include_str!("lua/read_batch.lua")),
            texts,
        }
    }

    fn all(&self) -> [&Script; 11] {
        [
            &self.acquire_mutex,
            &self.renew_mutex,
            &self.release_mutex,
            &self.delete_mutex,
            &self.put_semaphore,
            &self.get_semaphore,
            &self.delete_semaphore,
            &self.acquire_permit,
            &self.renew_permit,
            &self.release_permit,
            &self.read_batch,
        ]
    }
}

/// Reads sent together as one `read_batch` script: one request and one snapshot, like a
/// `MULTI` pipeline, but also on a Redis Cluster (which takes neither pipelines nor `MULTI`).
/// Every key must be of one tenant (one slot).
#[derive(Default)]
struct Batch {
    keys: Vec<String>,
    argv: Vec<String>,
}

impl Batch {
    /// Adds `command key args…` (`key` `None`: a command without one, such as `TIME`).
    fn read(mut self, command: &str, key: Option<&str>, args: &[&str]) -> Batch {
        let count = 1 + usize::from(key.is_some()) + args.len();
        self.argv.push(count.to_string());
        self.argv.push(command.to_owned());
        if let Some(key) = key {
            self.keys.push(key.to_owned());
            self.argv.push(key.to_owned());
        }
        self.argv.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Runs the reads; their replies convert as a pipeline's would.
    fn query<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        c: &mut dyn ConnectionLike,
    ) -> redis::RedisResult<T> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in &self.argv {
            invocation.arg(arg);
        }
        invocation.invoke(c)
    }
}

/// `semaphore_mutexes` reads: `[max_size, created_at_ms]`, the `slots` hash, the `fence` hash.
type SlotsSnapshot = (
    Vec<Option<i64>>,
    HashMap<String, String>,
    HashMap<String, i64>,
);

/// A pooled connection, with a mark for one that failed mid-request: its stream may hold
/// a late reply, so the pool drops it instead of handing it out again.
struct Conn {
    inner: topology::AnyConnection,
    broken: bool,
    /// When it last went back to the pool.
    returned_at: Instant,
}

/// Opens connections through the topology (with its connect and I/O timeouts).
///
/// No PING per checkout: every operation stays one round trip. A connection that failed
/// mid-request is dropped when it comes back; its failure also makes every connection that was
/// idle at that moment suspect, and each of those is PINGed once at its next checkout, so a
/// server restart costs one failed request, not one per pooled connection.
struct ConnectionManager {
    topology: Arc<topology::Topology>,
    /// When a connection last failed mid-request.
    lost_at: parking_lot::Mutex<Option<Instant>>,
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = Conn;
    type Error = redis::RedisError;

    fn connect(&self) -> std::result::Result<Conn, redis::RedisError> {
        Ok(Conn {
            inner: self.topology.connect()?,
            broken: false,
            returned_at: Instant::now(),
        })
    }

    /// Runs on every checkout: a PING only for a connection made suspect by a failure since
    /// it was returned.
    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), redis::RedisError> {
        let suspect = self
            .lost_at
            .lock()
            .is_some_and(|lost| lost >= conn.returned_at);
        if suspect {
            redis::cmd("PING").query::<()>(conn.inner.as_mut())?;
            conn.returned_at = Instant::now();
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        let now = Instant::now();
        conn.returned_at = now;
        let broken = conn.broken || !conn.inner.is_open();
        if broken {
            *self.lost_at.lock() = Some(now);
        }
        broken
    }
}

/// Builds the key names (see the module docs).
#[derive(Debug, Clone)]
struct KeySpace {
    prefix: String,
}

/// `s` with `%`, `:`, `{` and `}` percent-encoded.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

struct MutexKeys {
    record: String,
    lock: String,
    fence: String,
    index: String,
}

struct SemaphoreKeys {
    record: String,
    holders: String,
    free: String,
    slots: String,
    fence: String,
    index: String,
}

impl KeySpace {
    fn new(prefix: &str) -> KeySpace {
        let prefix = prefix.replace('{', "%7B").replace('}', "%7D");
        KeySpace { prefix }
    }

    fn tenant(&self, tenant: &str) -> String {
        format!("{}:{{{}}}", self.prefix, escape(tenant))
    }

    /// The channel the tenant's releases are announced on: `P:{T}:released`, in the
    /// tenant's slot, so that an ACL user of one tenant needs no other tenant's channel.
    fn released(&self, tenant: &str) -> String {
        format!("{}:released", self.tenant(tenant))
    }

    fn mutex_index(&self, tenant: &str) -> String {
        format!("{}:mutexes", self.tenant(tenant))
    }

    fn semaphore_index(&self, tenant: &str) -> String {
        format!("{}:semaphores", self.tenant(tenant))
    }

    fn mutex(&self, tenant: &str, key: &str) -> MutexKeys {
        let record = format!("{}:m:{}", self.tenant(tenant), escape(key));
        MutexKeys {
            lock: format!("{record}:lock"),
            fence: format!("{record}:fence"),
            index: self.mutex_index(tenant),
            record,
        }
    }

    fn semaphore(&self, tenant: &str, key: &str) -> SemaphoreKeys {
        let record = format!("{}:s:{}", self.tenant(tenant), escape(key));
        SemaphoreKeys {
            holders: format!("{record}:holders"),
            free: format!("{record}:free"),
            slots: format!("{record}:slots"),
            fence: format!("{record}:fence"),
            index: self.semaphore_index(tenant),
            record,
        }
    }
}

/// A lease in milliseconds as a script argument; `""` (none) tells the script to use the
/// stored one.
fn lease_arg(lease: Option<Duration>) -> String {
    lease.map(|d| millis(d).to_string()).unwrap_or_default()
}

/// `"1"` or `"0"`, as the scripts store flags.
fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Whether a retry may get past `e`: the connection failed, the server is busy, loading or
/// was demoted, or a cluster is moving a slot or failing over.
fn is_retryable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    // A cluster redirection the client's retries did not finish
                    // (a slot moving, or a failover the client learns of late).
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::ClusterConnectionNotFound
        )
        // A long-running script holds the server.
        || e.code() == Some("BUSY")
}

/// Whether the server refused a command or key to the connection's ACL user (also from
/// inside a script).
fn is_denied(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.code() == Some("NOPERM")
        || text.contains("NOPERM")
        || text.contains("no permissions")
        || text.contains("can't run this command")
}

/// The command a script was refused, named from the script's own text: Redis says only
/// "… can't run this command or subcommand script: <sha>, on @user_script:<line>".
fn refused_script_command(scripts: &Scripts, message: &str) -> Option<String> {
    let (_, after) = message.split_once("script: ")?;
    let sha = after.get(..40)?;
    let line: usize = after
        .split_once("@user_script:")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let text = scripts.texts.get(sha)?.lines().nth(line.checked_sub(1)?)?;
    let (_, call) = text.split_once("redis.call('")?;
    Some(call.split('\'').next()?.to_ascii_uppercase())
}

fn unexpected(what: &str, value: &Value) -> LockError {
    LockError::Store(format!("unexpected reply from Redis to {what}: {value:?}"))
}

/// A text value of a reply (`None` for nil or false).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An integer value of a reply (integers, or text holding one).
/// Every text in `v`, however nested (a cluster's INFO is a map of node to text).
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().flat_map(texts).collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(_, v)| texts(v)).collect(),
        other => text(other).into_iter().collect(),
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The reply of the scripts that return a lock: `{version, fencing_token, lease_ms,
/// expires_at_ms, locked, delete_on_release, data[, slot index]}`, or nil.
struct LockReply {
    version: String,
    fencing_token: i64,
    lease_ms: i64,
    expires_at_ms: i64,
    locked: bool,
    delete_on_release: bool,
    data: Option<String>,
    index: Option<u32>,
}

impl LockReply {
    fn parse(what: &str, value: &Value) -> Result<Option<LockReply>> {
        let items = match value {
            Value::Nil | Value::Boolean(false) => return Ok(None),
            Value::Array(items) if items.len() >= 7 => items,
            other => return Err(unexpected(what, other)),
        };
        let int = |i: usize| integer(&items[i]).ok_or_else(|| unexpected(what, value));
        Ok(Some(LockReply {
            version: text(&items[0]).ok_or_else(|| unexpected(what, value))?,
            fencing_token: int(1)?,
            lease_ms: int(2)?,
            expires_at_ms: int(3)?,
            locked: int(4)? == 1,
            delete_on_release: int(5)? == 1,
            data: text(&items[6]),
            index: items
                .get(7)
                .and_then(integer)
                .and_then(|i| u32::try_from(i).ok()),
        }))
    }

    fn into_lock(self, tenant_id: &str, key: String, semaphore_key: Option<&str>) -> MutexLock {
        MutexLock {
            mutex_key: key,
            tenant_id: tenant_id.to_owned(),
            version: self.version,
            fencing_token: self.fencing_token,
            lease_duration: from_millis(self.lease_ms),
            semaphore_key: semaphore_key.map(str::to_owned),
            data: self.data,
            delete_on_release: self.delete_on_release,
            locked: self.locked,
            expires_at: millis_to_datetime(self.expires_at_ms),
        }
    }
}

/// A mutex record read with `HGETALL` (`None` when empty: no such mutex).
fn mutex_from_hash(
    tenant_id: &str,
    key: &str,
    mut h: HashMap<String, String>,
) -> Option<MutexLock> {
    let version = h.remove("version")?;
    let int = |h: &HashMap<String, String>, f: &str| {
        h.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
    };
    Some(MutexLock {
        mutex_key: key.to_owned(),
        tenant_id: tenant_id.to_owned(),
        version,
        fencing_token: int(&h, "fencing_token"),
        lease_duration: from_millis(int(&h, "lease_ms")),
        semaphore_key: None,
        delete_on_release: int(&h, "delete_on_release") == 1,
        locked: int(&h, "locked") == 1,
        expires_at: millis_to_datetime(int(&h, "expires_at_ms")),
        data: h.remove("data"),
    })
}

/// A semaphore from `{version, max_size, lease_ms, busy_count}`.
fn semaphore_from_items(
    what: &str,
    tenant_id: &str,
    key: &str,
    items: &[Value],
) -> Result<Option<Semaphore>> {
    if items.len() < 4 {
        return Err(LockError::Store(format!(
            "unexpected reply from Redis to {what}: {items:?}"
        )));
    }
    let Some(version) = text(&items[0]) else {
        return Ok(None);
    };
    let int = |i: usize| {
        integer(&items[i]).ok_or_else(|| {
            LockError::Store(format!("unexpected reply from Redis to {what}: {items:?}"))
        })
    };
    Ok(Some(Semaphore {
        semaphore_key: key.to_owned(),
        tenant_id: tenant_id.to_owned(),
        version,
        max_size: int(1)?,
        lease_duration: from_millis(int(2)?),
        busy_count: int(3)?,
    }))
}

/// A lock store in Redis (one server, Sentinel or Cluster), reached through an r2d2 pool.
/// See the module docs.
pub struct RedisStore {
    pool: r2d2::Pool<ConnectionManager>,
    topology: Arc<topology::Topology>,
    keys: KeySpace,
    scripts: Scripts,
    redactor: Redactor,
    url: String,
    /// The subscriber that hands release notices to waiters.
    listener: listener::Listener,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `config.redis_url` with the configured pool size and timeouts, and checks
    /// the server (and loads the scripts) if `config.run_migrations` is set. An unreachable
    /// server fails here with [`LockError::Unavailable`].
    pub fn connect(config: &LocksConfig) -> Result<RedisStore> {
        let redactor = Redactor::for_url(&config.redis_url);
        let url = crate::error::redact_url(&config.redis_url);
        let topology = topology::Topology::from_config(config)
            .map_err(|e| LockError::Config(redactor.clean(format!("Redis at `{url}`: {e}"))))?;
        let topology = Arc::new(topology);
        let keys = KeySpace::new(&config.redis_key_prefix);
        let listener = listener::Listener::new(topology.clone());
        let manager = ConnectionManager {
            topology: topology.clone(),
            lost_at: parking_lot::Mutex::new(None),
        };
        // As the SQL pools: no connections opened on r2d2's background threads (min_idle 0),
        // where a short-lived program could exit in the middle of one; one checkout here
        // instead, so an unreachable server fails now, clearly.
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size)
            .min_idle(Some(0))
            .connection_timeout(config.connect_timeout)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        pool.get().map_err(|e| {
            // A TLS client facing a plain server waits for a handshake that never comes.
            let hint = if config.redis_url.starts_with("rediss") {
                " (does the server speak TLS on that port?)"
            } else {
                ""
            };
            LockError::Unavailable(
                redactor.clean(format!("cannot connect to Redis at {url}: {e}{hint}")),
            )
        })?;
        let store = RedisStore {
            pool,
            topology,
            keys,
            scripts: Scripts::new(),
            redactor,
            url,
            listener,
        };
        if config.run_migrations {
            store.migrate()?;
        }
        Ok(store)
    }

    fn error(&self, e: redis::RedisError) -> LockError {
        use redis::ErrorKind;
        let mut msg = self.redactor.clean(format!("Redis at {}: {e}", self.url));
        if e.kind() == ErrorKind::ClusterConnectionNotFound {
            msg.push_str(" (no cluster node answered: is the server a Redis Cluster?)");
        }
        if is_denied(&e) {
            let command = refused_script_command(&self.scripts, &e.to_string())
                .map(|c| format!("the script calls {c}; "))
                .unwrap_or_default();
            return LockError::Store(format!(
                "{msg} (the Redis user lacks a right db-locks needs: {command}the README's \
                 \"Redis deployments\" gives the ACL rule for a tenant)"
            ));
        }
        let retryable = is_retryable(&e);
        if retryable {
            LockError::Unavailable(msg)
        } else {
            LockError::Store(msg)
        }
    }

    /// Runs `f` on a pooled connection; a connection that failed with an I/O error is
    /// dropped from the pool rather than reused.
    ///
    /// A script invocation already reloads its script after `NOSCRIPT`; if the script cache is
    /// flushed again between that load and the retry, `NOSCRIPT` reaches us. The script did
    /// not run, so running `f` again is safe: up to three tries.
    ///
    /// A connection whose server answers `READONLY` or `MASTERDOWN` was demoted by a failover:
    /// it is dropped too, so the next one is opened to the new primary.
    fn run<T>(&self, f: impl Fn(&mut dyn ConnectionLike) -> redis::RedisResult<T>) -> Result<T> {
        let mut conn = self.pool.get().map_err(|e| {
            LockError::Unavailable(
                self.redactor
                    .clean(format!("no connection to Redis at {}: {e}", self.url)),
            )
        })?;
        let mut tries = 0;
        loop {
            tries += 1;
            match f(conn.inner.as_mut()) {
                Ok(value) => return Ok(value),
                Err(e) if e.code() == Some("NOSCRIPT") && tries < 3 => continue,
                Err(e) => {
                    let demoted = matches!(
                        e.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown
                        )
                    );
                    if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() || demoted {
                        conn.broken = true;
                    }
                    return Err(self.error(e));
                }
            }
        }
    }

    fn semaphore_record(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        let k = self.keys.semaphore(tenant_id, key);
        let reply: Value = self.run(|c| {
            self.scripts
                .get_semaphore
                .key(&k.record)
                .key(&k.holders)
                .invoke(c)
        })?;
        match &reply {
            Value::Nil | Value::Boolean(false) => Ok(None),
            Value::Array(items) => semaphore_from_items("get_semaphore", tenant_id, key, items),
            other => Err(unexpected("get_semaphore", other)),
        }
    }
}

impl LeaseStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn acquire_mutex(&self, req: &MutexRequest<'_>) -> Result<Option<MutexLock>> {
        let k = self.keys.mutex(req.tenant_id, req.key);
        let reply: Value = self.run(|c| {
            self.scripts
                .acquire_mutex
                .key(&k.record)
                .key(&k.lock)
                .key(&k.fence)
                .key(&k.index)
                .arg(req.key)
                .arg(req.version)
                .arg(millis(req.lease))
                .arg(flag(req.data.is_some()))
                .arg(req.data.unwrap_or(""))
                .arg(flag(req.delete_on_release))
                .invoke(c)
        })?;
        Ok(LockReply::parse("acquire_mutex", &reply)?
            .map(|r| r.into_lock(req.tenant_id, req.key.to_owned(), None)))
    }

    fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<Option<MutexLock>> {
        let k = self.keys.semaphore(req.tenant_id, req.semaphore);
        let reply: Value = self.run(|c| {
            self.scripts
                .acquire_permit
                .key(&k.record)
                .key(&k.holders)
                .key(&k.free)
                .key(&k.slots)
                .key(&k.fence)
                .arg(req.version)
                .arg(lease_arg(req.lease))
                .arg(flag(req.data.is_some()))
                .arg(req.data.unwrap_or(""))
                .arg(flag(req.retry))
                .invoke(c)
        })?;
        if reply == Value::Int(-1) {
            return Err(LockError::NotFound(format!(
                "semaphore `{}` does not exist",
                req.semaphore
            )));
        }
        match LockReply::parse("acquire_permit", &reply)? {
            None => Ok(None),
            Some(r) => {
                let index = r
                    .index
                    .ok_or_else(|| unexpected("acquire_permit", &reply))?;
                Ok(Some(r.into_lock(
                    req.tenant_id,
                    slot_key(req.semaphore, index),
                    Some(req.semaphore),
                )))
            }
        }
    }

    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        let has_data = flag(req.data.is_some());
        let data = req.data.unwrap_or("");
        let lease = lease_arg(req.lease);
        let reply: Value = match req.target {
            Target::Mutex(key) => {
                let k = self.keys.mutex(req.tenant_id, key);
                self.run(|c| {
                    self.scripts
                        .renew_mutex
                        .key(&k.record)
                        .key(&k.lock)
                        .arg(req.version)
                        .arg(req.new_version)
                        .arg(&lease)
                        .arg(has_data)
                        .arg(data)
                        .invoke(c)
                })?
            }
            Target::Slot { semaphore, index } => {
                let k = self.keys.semaphore(req.tenant_id, semaphore);
                self.run(|c| {
                    self.scripts
                        .renew_permit
                        .key(&k.holders)
                        .key(&k.slots)
                        .arg(index)
                        .arg(req.version)
                        .arg(req.new_version)
                        .arg(&lease)
                        .arg(has_data)
                        .arg(data)
                        .invoke(c)
                })?
            }
        };
        Ok(LockReply::parse("renew", &reply)?.map(|r| {
            r.into_lock(
                req.tenant_id,
                req.target.key().into_owned(),
                req.target.semaphore(),
            )
        }))
    }

    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        let has_data = flag(req.data.is_some());
        let data = req.data.unwrap_or("");
        let in_doubt = req.in_doubt_version.unwrap_or(req.version);
        let released: i64 = match req.target {
            Target::Mutex(key) => {
                let k = self.keys.mutex(req.tenant_id, key);
                self.run(|c| {
                    self.scripts
                        .release_mutex
                        .key(&k.record)
                        .key(&k.lock)
                        .key(&k.index)
                        .arg(key)
                        .arg(req.version)
                        .arg(flag(req.delete))
                        .arg(has_data)
                        .arg(data)
                        .arg(in_doubt)
                        .arg(self.keys.released(req.tenant_id))
                        .arg(self.listener.payload(req.tenant_id, key))
                        .invoke(c)
                })?
            }
            // Permit slots are never deleted on release.
            Target::Slot { semaphore, index } => {
                let k = self.keys.semaphore(req.tenant_id, semaphore);
                self.run(|c| {
                    self.scripts
                        .release_permit
                        .key(&k.record)
                        .key(&k.holders)
                        .key(&k.free)
                        .key(&k.slots)
                        .arg(index)
                        .arg(req.version)
                        .arg(has_data)
                        .arg(data)
                        .arg(in_doubt)
                        .arg(self.keys.released(req.tenant_id))
                        .arg(self.listener.payload(req.tenant_id, semaphore))
                        .invoke(c)
                })?
            }
        };
        Ok(released == 1)
    }

    fn watch_releases(&self, tenant_id: &str, sink: ReleaseSink) -> bool {
        self.listener.watch(&self.keys.released(tenant_id), sink)
    }
}

impl AdminStore for RedisStore {
    /// Redis has no schema: checks that the server is recent enough and loads the scripts.
    fn migrate(&self) -> Result<()> {
        // A cluster answers with every node's INFO.
        let info: Value = self.run(|c| redis::cmd("INFO").arg("server").query(c))?;
        for version in texts(&info)
            .iter()
            .flat_map(|info| info.lines())
            .filter_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim)
        {
            let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
            if major.is_some_and(|m| m < MIN_REDIS_MAJOR) {
                return Err(LockError::Store(format!(
                    "Redis {MIN_REDIS_MAJOR}.0 or later is required; the server at {} runs {version}",
                    self.url
                )));
            }
        }
        if self.topology.is_cluster() {
            // Each load goes to every primary: one request per script and primary.
            for script in self.scripts.all() {
                self.run(|c| script.load(c).map(drop))?;
            }
            return Ok(());
        }
        // All the loads in one pipeline: one more request.
        self.run(|c| {
            let mut pipe = redis::pipe();
            for script in self.scripts.all() {
                pipe.load_script(script);
            }
            pipe.query::<()>(c)
        })
    }

    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>> {
        let k = self.keys.mutex(tenant_id, key);
        let h: HashMap<String, String> =
            self.run(|c| redis::cmd("HGETALL").arg(&k.record).query(c))?;
        Ok(mutex_from_hash(tenant_id, key, h))
    }

    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool> {
        let k = self.keys.mutex(tenant_id, key);
        let outcome: i64 = self.run(|c| {
            self.scripts
                .delete_mutex
                .key(&k.record)
                .key(&k.lock)
                .key(&k.index)
                .arg(key)
                .arg(flag(version.is_some()))
                .arg(version.unwrap_or(""))
                .invoke(c)
        })?;
        if outcome < 0 {
            return Err(LockError::Conflict(format!(
                "mutex `{key}` is held by a live lease; release it or wait for the lease to expire"
            )));
        }
        Ok(outcome == 1)
    }

    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        let (tenant, key) = (&semaphore.tenant_id, &semaphore.semaphore_key);
        let k = self.keys.semaphore(tenant, key);
        let reply: Value = self.run(|c| {
            self.scripts
                .put_semaphore
                .key(&k.record)
                .key(&k.holders)
                .key(&k.free)
                .key(&k.slots)
                .key(&k.index)
                .arg(key)
                .arg(&semaphore.version)
                .arg(semaphore.max_size)
                .arg(millis(semaphore.lease_duration))
                .invoke(c)
        })?;
        let stored = match &reply {
            Value::Array(items) => semaphore_from_items("put_semaphore", tenant, key, items)?,
            _ => None,
        };
        stored.ok_or_else(|| unexpected("put_semaphore", &reply))
    }

    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        self.semaphore_record(tenant_id, key)
    }

    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool> {
        let k = self.keys.semaphore(tenant_id, key);
        let outcome: i64 = self.run(|c| {
            self.scripts
                .delete_semaphore
                .key(&k.record)
                .key(&k.holders)
                .key(&k.free)
                .key(&k.slots)
                .key(&k.index)
                .arg(key)
                .invoke(c)
        })?;
        if outcome < 0 {
            return Err(LockError::Conflict(format!(
                "semaphore `{key}` has {} live permit(s); release them or wait for their leases to expire",
                -outcome
            )));
        }
        Ok(outcome == 1)
    }

    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Option<Vec<MutexLock>>> {
        let k = self.keys.semaphore(tenant_id, key);
        // One consistent snapshot, one round trip.
        let batch = Batch::default()
            .read("HMGET", Some(&k.record), &["max_size", "created_at_ms"])
            .read("HGETALL", Some(&k.slots), &[])
            .read("HGETALL", Some(&k.fence), &[]);
        let (record, slots, fence): SlotsSnapshot =
            self.run(|c| batch.query(&self.scripts.read_batch, c))?;
        let Some(max_size) = record.first().copied().flatten() else {
            return Ok(None);
        };
        // Validation bounds max_size far below u32::MAX.
        let max_size = u32::try_from(max_size).unwrap_or(0);
        let created_at_ms = record.get(1).copied().flatten().unwrap_or(0);
        // Slots below max_size, and retired ones (at or above it) that are still held.
        let mut indexes: Vec<u32> = (0..max_size).collect();
        indexes.extend(
            slots
                .keys()
                .filter_map(|f| f.strip_suffix(":version")?.parse::<u32>().ok())
                .filter(|&i| i >= max_size),
        );
        indexes.sort_unstable();
        let field = |i: u32, name: &str| slots.get(&format!("{i}:{name}"));
        let int = |i: u32, name: &str| field(i, name).and_then(|v| v.parse::<i64>().ok());
        Ok(Some(
            indexes
                .into_iter()
                .map(|i| {
                    let granted = field(i, "version").is_some();
                    MutexLock {
                        mutex_key: slot_key(key, i),
                        tenant_id: tenant_id.to_owned(),
                        version: field(i, "version").cloned().unwrap_or_default(),
                        // A slot never granted (or dropped by a shrink) shows its counter.
                        fencing_token: int(i, "fencing_token")
                            .or_else(|| fence.get(&i.to_string()).copied())
                            .unwrap_or(0),
                        lease_duration: from_millis(int(i, "lease_ms").unwrap_or(0)),
                        semaphore_key: Some(key.to_owned()),
                        data: field(i, "data").cloned(),
                        delete_on_release: false,
                        locked: granted && int(i, "locked") == Some(1),
                        expires_at: millis_to_datetime(
                            int(i, "expires_at_ms").unwrap_or(created_at_ms),
                        ),
                    }
                })
                .collect(),
        ))
    }

    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>> {
        let index = self.keys.mutex_index(tenant_id);
        let names: Vec<String> =
            self.run(|c| redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query(c))?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let batch = names.iter().fold(Batch::default(), |batch, name| {
            batch.read(
                "HGETALL",
                Some(&self.keys.mutex(tenant_id, name).record),
                &[],
            )
        });
        let records: Vec<HashMap<String, String>> =
            self.run(|c| batch.query(&self.scripts.read_batch, c))?;
        Ok(names
            .iter()
            .zip(records)
            // A mutex deleted between the two reads is left out.
            .filter_map(|(name, h)| mutex_from_hash(tenant_id, name, h))
            .collect())
    }

    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>> {
        let index = self.keys.semaphore_index(tenant_id);
        let batch = Batch::default()
            .read("ZRANGE", Some(&index), &["0", "-1"])
            .read("TIME", None, &[]);
        let (names, (secs, micros)): (Vec<String>, (i64, i64)) =
            self.run(|c| batch.query(&self.scripts.read_batch, c))?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = secs * 1000 + micros / 1000;
        let after_now = format!("({now_ms}");
        let batch = names.iter().fold(Batch::default(), |batch, name| {
            let k = self.keys.semaphore(tenant_id, name);
            batch
                .read(
                    "HMGET",
                    Some(&k.record),
                    &["version", "max_size", "lease_ms"],
                )
                .read("ZCOUNT", Some(&k.holders), &[&after_now, "+inf"])
        });
        let replies: Vec<Value> = self.run(|c| batch.query(&self.scripts.read_batch, c))?;
        let mut out = Vec::with_capacity(names.len());
        for (name, pair) in names.iter().zip(replies.chunks(2)) {
            let [Value::Array(fields), busy] = pair else {
                return Err(LockError::Store(format!(
                    "unexpected reply from Redis to list_semaphores: {pair:?}"
                )));
            };
            let mut items = fields.clone();
            items.push(busy.clone());
            // A semaphore deleted between the two reads is left out.
            if let Some(s) = semaphore_from_items("list_semaphores", tenant_id, name, &items)? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_redirections_and_lost_nodes_are_retryable() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let err = |kind| RedisError::from((kind, "test"));
        for kind in [
            ErrorKind::Server(ServerErrorKind::Moved),
            ErrorKind::Server(ServerErrorKind::Ask),
            ErrorKind::Server(ServerErrorKind::TryAgain),
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            ErrorKind::ClusterConnectionNotFound,
        ] {
            assert!(is_retryable(&err(kind)), "{kind:?}");
        }
        for kind in [
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::Server(ServerErrorKind::NoPerm),
            ErrorKind::Server(ServerErrorKind::CrossSlot),
        ] {
            assert!(!is_retryable(&err(kind)), "{kind:?}");
        }
    }

    #[test]
    fn keys_cannot_escape_their_place() {
        let keys = KeySpace::new("app{x}");
        let m = keys.mutex("ten:ant{1}", "a:lock");
        assert_eq!(m.record, "app%7Bx%7D:{ten%3Aant%7B1%7D}:m:a%3Alock");
        assert_eq!(m.lock, "app%7Bx%7D:{ten%3Aant%7B1%7D}:m:a%3Alock:lock");
        assert_ne!(keys.mutex("t", "a:lock").record, keys.mutex("t", "a").lock);
        assert_eq!(keys.mutex("t", "100%").record, "app%7Bx%7D:{t}:m:100%25");
        let s = keys.semaphore("t", "pool");
        assert_eq!(s.holders, "app%7Bx%7D:{t}:s:pool:holders");
        assert_eq!(s.index, "app%7Bx%7D:{t}:semaphores");
    }
}
