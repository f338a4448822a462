//! Integration tests of the `db-locks` binary: every command, every exit code, `run`, and bad
//! input, run as separate processes.
//!
//! The store-dependent cases run once per store whose cargo feature is on: SQLite (a file in a
//! temp dir), PostgreSQL (`postgres://postgres@127.0.0.1:5432/test`, or
//! `DB_LOCKS_TEST_POSTGRES_URL`) and MySQL/MariaDB (`mysql://root@127.0.0.1:3306/test`, or
//! `DB_LOCKS_TEST_MYSQL_URL`), Redis (`redis://127.0.0.1:6379`, or `DB_LOCKS_TEST_REDIS_URL`)
//! and DynamoDB (endpoint `http://127.0.0.1:8000`, or `DB_LOCKS_TEST_DYNAMODB_ENDPOINT`; region
//! and credentials default to `us-east-1` and `test`/`test` unless set in the environment). A
//! covered server that cannot be reached fails the run. Every test works in a tenant of its
//! own, so tests run in parallel and against shared servers.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_db-locks");

/// Longest any single db-locks process may take in these tests.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    #[allow(dead_code)]
    Postgres,
    #[allow(dead_code)]
    Mysql,
    #[allow(dead_code)]
    Redis,
    /// Redis over TLS with a client certificate, a Sentinel group's primary, a Redis Cluster
    /// (`scripts/redis_topologies.sh` starts them).
    #[allow(dead_code)]
    RedisTls,
    #[allow(dead_code)]
    RedisSentinel,
    #[allow(dead_code)]
    RedisCluster,
    #[allow(dead_code)]
    DynamoDb,
}

/// Where `scripts/redis_topologies.sh` keeps its servers' files (TLS certificates).
fn redis_dir() -> PathBuf {
    std::env::var_os("DB_LOCKS_REDIS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/db-locks-redis"))
}

/// The config-file lines a backend needs besides its URL.
fn tls_settings(backend: Backend) -> String {
    if backend != Backend::RedisTls {
        return String::new();
    }
    let tls = redis_dir().join("tls");
    format!(
        "redis_tls_ca_file = {:?}\nredis_tls_client_cert_file = {:?}\nredis_tls_client_key_file = {:?}\n",
        tls.join("ca.crt"),
        tls.join("client.crt"),
        tls.join("client.key")
    )
}

impl Backend {
    /// The PROVIDER word that selects this store.
    fn provider(self) -> &'static str {
        match self {
            Backend::Sqlite | Backend::Postgres | Backend::Mysql => "rdb",
            Backend::Redis | Backend::RedisTls | Backend::RedisSentinel | Backend::RedisCluster => {
                "redis"
            }
            Backend::DynamoDb => "ddb",
        }
    }
}

/// What the child needs to reach DynamoDB besides the endpoint: any region and credentials
/// (moto checks neither), unless the environment already has them.
const AWS_ENV_DEFAULTS: [(&str, &str); 3] = [
    ("AWS_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// One test's world: a store, a tenant of its own and a scratch directory.
struct Ctx {
    backend: Backend,
    /// The PROVIDER word: `rdb`, `redis` or `ddb`.
    provider: &'static str,
    /// The option that names the store: `--database-url`, `--redis-url` or
    /// `--dynamodb-endpoint`.
    store_flag: &'static str,
    /// Its value: the database URL, the Redis URL or the DynamoDB endpoint.
    url: String,
    tenant: String,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Ctx {
    fn new(backend: Backend) -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let (store_flag, url) = match backend {
            Backend::Sqlite => (
                "--database-url",
                dir.path().join("locks.sqlite").display().to_string(),
            ),
            Backend::Postgres => (
                "--database-url",
                env(
                    "DB_LOCKS_TEST_POSTGRES_URL",
                    "postgres://postgres@127.0.0.1:5432/test",
                ),
            ),
            Backend::Mysql => (
                "--database-url",
                env(
                    "DB_LOCKS_TEST_MYSQL_URL",
                    "mysql://root@127.0.0.1:3306/test",
                ),
            ),
            Backend::Redis => (
                "--redis-url",
                env("DB_LOCKS_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            ),
            // TLS files go into the config file below.
            Backend::RedisTls => (
                "--redis-url",
                env("DB_LOCKS_TEST_REDIS_TLS_URL", "rediss://127.0.0.1:6381"),
            ),
            Backend::RedisSentinel => (
                "--redis-url",
                env(
                    "DB_LOCKS_TEST_REDIS_SENTINEL_URL",
                    "redis+sentinel://127.0.0.1:26391,127.0.0.1:26392,127.0.0.1:26393/db-locks-primary",
                ),
            ),
            Backend::RedisCluster => (
                "--redis-url",
                env(
                    "DB_LOCKS_TEST_REDIS_CLUSTER_URL",
                    "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,\
                     127.0.0.1:7004,127.0.0.1:7005,127.0.0.1:7006",
                ),
            ),
            Backend::DynamoDb => (
                "--dynamodb-endpoint",
                env("DB_LOCKS_TEST_DYNAMODB_ENDPOINT", "http://127.0.0.1:8000"),
            ),
        };
        // Short backoff steps keep the contended tests fast.
        let config = dir.path().join("db-locks.toml");
        std::fs::write(
            &config,
            format!(
                "retry_base_ms = 5\nretry_max_ms = 50\nconnect_timeout_ms = 10000\n{}",
                tls_settings(backend)
            ),
        )
        .unwrap();
        let ctx = Ctx {
            backend,
            provider: backend.provider(),
            store_flag,
            url,
            tenant: unique("cli"),
            dir,
            config,
        };
        let out = ctx.run(&["migrate"]);
        assert!(
            out.status.success(),
            "the {backend:?} store is not reachable, and this run was asked to cover it (its cargo \
             feature is on): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ctx
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `PROVIDER STORE-FLAG URL`: what selects the store on a command line.
    fn store_args(&self) -> [&str; 3] {
        [self.provider, self.store_flag, &self.url]
    }

    /// `db-locks` with a clean environment (plus, for DynamoDB, region and credentials), with
    /// nothing on its command line yet.
    fn base_cmd(&self) -> Command {
        let mut cmd = bare_cmd(self.dir.path());
        if self.backend == Backend::DynamoDb {
            for (var, value) in AWS_ENV_DEFAULTS {
                if !std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                    cmd.env(var, value);
                }
            }
        }
        cmd
    }

    /// `db-locks -c CONFIG PROVIDER STORE-FLAG URL -t TENANT`.
    fn cmd(&self) -> Command {
        let mut cmd = self.base_cmd();
        cmd.arg("-c")
            .arg(&self.config)
            .args(self.store_args())
            .arg("-t")
            .arg(&self.tenant);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        exec(cmd)
    }

    /// Runs `args` with `--json`, expects exit 0 and one line of JSON.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.run(&args);
        expect_code(&out, 0, &args);
        parse_json_line(&out)
    }

    fn code(&self, args: &[&str]) -> i32 {
        code(&self.run(args))
    }

    fn expect(&self, args: &[&str], expected: i32) -> Output {
        let out = self.run(args);
        expect_code(&out, expected, args);
        out
    }

    /// A background `db-locks` process with stdio discarded.
    fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = self.cmd();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().unwrap()
    }
}

/// `db-locks` with none of the variables it reads inherited from the test's environment, and
/// the per-user data directory pointed into `home`.
fn bare_cmd(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "DATABASE_URL",
        "DB_LOCKS_TENANT",
        "REDIS_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "DB_LOCKS_KEY",
        "DB_LOCKS_SEMAPHORE_KEY",
        "DB_LOCKS_FENCING_TOKEN",
        "DB_LOCKS_VERSION",
        "RUST_BACKTRACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"));
    cmd
}

/// Runs `cmd` to completion (stdin closed, output captured), failing after `PROCESS_TIMEOUT`.
fn exec(mut cmd: Command) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let status = wait_timeout(&mut child, PROCESS_TIMEOUT)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {PROCESS_TIMEOUT:?}"));
    Output {
        status,
        stdout: std::fs::read(out_path).unwrap(),
        stderr: std::fs::read(err_path).unwrap(),
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn expect_code(out: &Output, expected: i32, args: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(expected),
        "db-locks {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if expected != 0 && expected != 2 {
        // Errors other than usage errors: exactly one line on stderr, no backtrace.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "db-locks {args:?}: {stderr}");
        assert!(stderr.starts_with("db-locks: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

fn parse_json_line(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line of JSON expected: {stdout}"
    );
    assert!(stdout.ends_with('\n'));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: impl std::fmt::Display, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn assert_lock_fields(lock: &Value) {
    for field in [
        "mutex_key",
        "tenant_id",
        "version",
        "fencing_token",
        "lease_duration_ms",
        "semaphore_key",
        "data",
        "delete_on_release",
        "locked",
        "expires_at",
    ] {
        assert!(lock.get(field).is_some(), "no `{field}` in {lock}");
    }
    assert!(lock["fencing_token"].is_i64(), "{lock}");
    chrono::DateTime::parse_from_rfc3339(s(&lock["expires_at"]))
        .unwrap_or_else(|e| panic!("expires_at is not RFC 3339: {e}: {lock}"));
}

fn assert_semaphore_fields(sem: &Value) {
    for field in [
        "semaphore_key",
        "tenant_id",
        "version",
        "max_size",
        "lease_duration_ms",
        "busy_count",
    ] {
        assert!(sem.get(field).is_some(), "no `{field}` in {sem}");
    }
}

// ----- cases run against every covered store ---------------------------------------------

/// acquire, heartbeat, release, get-mutex, and the exit codes 0, 3 and 75.
fn mutex_commands(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("m");
    let first = ctx.json(&["acquire", "-k", &key, "-l", "5", "-d", "host-a"]);
    assert_lock_fields(&first);
    assert_eq!(s(&first["mutex_key"]), key);
    assert_eq!(s(&first["tenant_id"]), ctx.tenant);
    assert_eq!(first["semaphore_key"], Value::Null);
    assert_eq!(first["locked"], true);
    assert_eq!(first["lease_duration_ms"], 5000);
    assert_eq!(s(&first["data"]), "host-a");
    assert_eq!(first["delete_on_release"], false);
    let v1 = s(&first["version"]).to_owned();

    // Busy: tried once, or waited for a while; 75 both ways.
    ctx.expect(&["acquire", "-k", &key, "-w", "0"], 75);
    let started = Instant::now();
    ctx.expect(&["acquire", "-k", &key, "-l", "5", "-w", "0.3"], 75);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Heartbeat keeps the lease unless -l says otherwise, and changes the version.
    let renewed = ctx.json(&["heartbeat", "-k", &key, "-v", &v1]);
    assert_lock_fields(&renewed);
    let v2 = s(&renewed["version"]).to_owned();
    assert_ne!(v1, v2);
    assert_eq!(renewed["lease_duration_ms"], 5000);
    assert_eq!(renewed["fencing_token"], first["fencing_token"]);
    let renewed = ctx.json(&[
        "heartbeat",
        "-k",
        &key,
        "-v",
        &v2,
        "-l",
        "7.5",
        "-d",
        "host-b",
    ]);
    assert_eq!(renewed["lease_duration_ms"], 7500);
    assert_eq!(s(&renewed["data"]), "host-b");
    let v3 = s(&renewed["version"]).to_owned();

    // Stale versions: 3.
    ctx.expect(&["heartbeat", "-k", &key, "-v", &v1], 3);
    ctx.expect(&["release", "-k", &key, "-v", &v2], 3);

    let got = ctx.json(&["get-mutex", "-k", &key]);
    assert_eq!(s(&got["version"]), v3);
    assert_eq!(got["locked"], true);

    let released = ctx.json(&["release", "-k", &key, "-v", &v3]);
    assert_eq!(released["released"], true);
    assert_eq!(s(&released["mutex_key"]), key);
    ctx.expect(&["release", "-k", &key, "-v", &v3], 3);
    ctx.expect(&["heartbeat", "-k", &key, "-v", &v3], 3);
    let got = ctx.json(&["get-mutex", "-k", &key]);
    assert_eq!(got["locked"], false);

    // A new grant has a higher fencing token; human-readable output by default.
    let out = ctx.expect(&["acquire", "-k", &key, "-l", "5"], 0);
    let text = stdout(&out);
    assert!(
        text.contains(&key) && text.contains("fencing_token:"),
        "{text}"
    );
    let second = ctx.json(&["get-mutex", "-k", &key]);
    assert!(second["fencing_token"].as_i64() > first["fencing_token"].as_i64());
    let human = stdout(&ctx.expect(&["get-mutex", "-k", &key], 0));
    assert!(human.contains("held"), "{human}");

    // release --delete removes the record: get-mutex then fails with 1.
    ctx.expect(
        &[
            "release",
            "-k",
            &key,
            "-v",
            s(&second["version"]),
            "--delete",
        ],
        0,
    );
    ctx.expect(&["get-mutex", "-k", &key], 1);
}

/// delete-mutex and --delete-on-release.
fn delete_mutex(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("d");
    let lock = ctx.json(&["acquire", "-k", &key, "-l", "10"]);
    let version = s(&lock["version"]).to_owned();
    // A live lease: busy without a version, not held with a stale one.
    ctx.expect(&["delete-mutex", "-k", &key], 75);
    ctx.expect(
        &[
            "delete-mutex",
            "-k",
            &key,
            "-v",
            "00000000-0000-0000-0000-000000000000",
        ],
        3,
    );
    let deleted = ctx.json(&["delete-mutex", "-k", &key, "-v", &version]);
    assert_eq!(deleted["deleted"], true);
    ctx.expect(&["get-mutex", "-k", &key], 1);
    ctx.expect(&["delete-mutex", "-k", &key], 1);

    // A free mutex can be deleted without a version.
    let lock = ctx.json(&["acquire", "-k", &key, "-l", "10"]);
    ctx.expect(&["release", "-k", &key, "-v", s(&lock["version"])], 0);
    ctx.expect(&["delete-mutex", "-k", &key], 0);

    // --delete-on-release: release deletes the record.
    let lock = ctx.json(&["acquire", "-k", &key, "-l", "10", "--delete-on-release"]);
    assert_eq!(lock["delete_on_release"], true);
    ctx.expect(&["release", "-k", &key, "-v", s(&lock["version"])], 0);
    ctx.expect(&["get-mutex", "-k", &key], 1);
}

/// create-semaphore, get-semaphore, acquire -s, heartbeat/release of a slot,
/// get-semaphore-mutexes, delete-semaphore.
fn semaphore_commands(backend: Backend) {
    let ctx = Ctx::new(backend);
    let sem = unique("s");
    let created = ctx.json(&["create-semaphore", "-k", &sem, "-m", "2", "-l", "5"]);
    assert_semaphore_fields(&created);
    assert_eq!(s(&created["semaphore_key"]), sem);
    assert_eq!(created["max_size"], 2);
    assert_eq!(created["lease_duration_ms"], 5000);
    assert_eq!(created["busy_count"], 0);
    let human = stdout(&ctx.expect(&["get-semaphore", "-k", &sem], 0));
    assert!(human.contains("0 busy of 2"), "{human}");

    let a = ctx.json(&["acquire", "-s", "-k", &sem]);
    let b = ctx.json(&["acquire", "--semaphore", "-k", &sem, "-w", "0"]);
    for permit in [&a, &b] {
        assert_lock_fields(permit);
        assert_eq!(s(&permit["semaphore_key"]), sem);
        assert_eq!(permit["lease_duration_ms"], 5000, "the semaphore's lease");
    }
    assert_ne!(a["mutex_key"], b["mutex_key"]);
    ctx.expect(&["acquire", "-s", "-k", &sem, "-w", "0"], 75);
    ctx.expect(&["acquire", "-s", "-k", &sem, "-w", "0.2"], 75);

    let got = ctx.json(&["get-semaphore", "-k", &sem]);
    assert_eq!(got["busy_count"], 2);
    let slots = ctx.json(&["get-semaphore-mutexes", "-k", &sem]);
    let slots = slots.as_array().unwrap();
    assert_eq!(slots.len(), 2);
    for slot in slots {
        assert_lock_fields(slot);
        assert_eq!(s(&slot["semaphore_key"]), sem);
        assert_eq!(slot["locked"], true);
    }

    // Slots are renewed and released with --semaphore-key.
    let a_key = s(&a["mutex_key"]).to_owned();
    let renewed = ctx.json(&[
        "heartbeat",
        "-k",
        &a_key,
        "-v",
        s(&a["version"]),
        "--semaphore-key",
        &sem,
    ]);
    assert_eq!(renewed["lease_duration_ms"], 5000);
    assert_eq!(s(&renewed["semaphore_key"]), sem);
    ctx.expect(
        &[
            "heartbeat",
            "-k",
            &a_key,
            "-v",
            s(&a["version"]),
            "--semaphore-key",
            &sem,
        ],
        3,
    );

    // Deleting a semaphore with live permits: busy.
    ctx.expect(&["delete-semaphore", "-k", &sem], 75);
    ctx.expect(
        &[
            "release",
            "-k",
            &a_key,
            "-v",
            s(&renewed["version"]),
            "--semaphore-key",
            &sem,
        ],
        0,
    );
    let b_key = s(&b["mutex_key"]).to_owned();
    ctx.expect(
        &[
            "release",
            "-k",
            &b_key,
            "-v",
            s(&b["version"]),
            "--semaphore-key",
            &sem,
        ],
        0,
    );
    assert_eq!(ctx.json(&["get-semaphore", "-k", &sem])["busy_count"], 0);

    // Resize.
    let resized = ctx.json(&["create-semaphore", "-k", &sem, "-m", "3"]);
    assert_eq!(resized["max_size"], 3);

    let deleted = ctx.json(&["delete-semaphore", "-k", &sem]);
    assert_eq!(deleted["deleted"], true);
    ctx.expect(&["get-semaphore", "-k", &sem], 1);
    ctx.expect(&["get-semaphore-mutexes", "-k", &sem], 1);
    ctx.expect(&["delete-semaphore", "-k", &sem], 1);
    // A missing semaphore is not found (1), not bad usage.
    ctx.expect(&["acquire", "-s", "-k", &sem], 1);
    ctx.expect(&["run", "-s", "-k", &sem, "--", "true"], 1);
}

/// list and migrate.
fn list_and_migrate(backend: Backend) {
    let ctx = Ctx::new(backend);
    let migrated = ctx.json(&["migrate"]);
    assert_eq!(migrated["migrated"], true);
    assert_eq!(s(&migrated["provider"]), ctx.provider);

    assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));
    let key = unique("m");
    let sem = unique("s");
    ctx.json(&["acquire", "-k", &key, "-l", "10", "-d", "nightly@host-a"]);
    ctx.json(&["create-semaphore", "-k", &sem, "-m", "2"]);
    ctx.json(&["acquire", "-s", "-k", &sem]);

    let list = ctx.json(&["list"]);
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let mutex = items.iter().find(|i| i["kind"] == "mutex").unwrap();
    assert_lock_fields(mutex);
    assert_eq!(s(&mutex["mutex_key"]), key);
    assert_eq!(s(&mutex["data"]), "nightly@host-a");
    let semaphore = items.iter().find(|i| i["kind"] == "semaphore").unwrap();
    assert_semaphore_fields(semaphore);
    assert_eq!(s(&semaphore["semaphore_key"]), sem);
    assert_eq!(semaphore["busy_count"], 1);
    assert_eq!(semaphore["mutexes"].as_array().unwrap().len(), 2);

    let human = stdout(&ctx.expect(&["list"], 0));
    for needle in [key.as_str(), sem.as_str(), "nightly@host-a", "1 busy of 2"] {
        assert!(human.contains(needle), "`{needle}` not in:\n{human}");
    }
}

/// `run` passes the environment and the child's exit code, and releases afterwards.
fn run_env_and_exit_code(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("r");
    let report = r#"printf '%s|%s|%s|%s|%s\n' "$DB_LOCKS_KEY" "${DB_LOCKS_SEMAPHORE_KEY-unset}" "$DB_LOCKS_TENANT" "$DB_LOCKS_FENCING_TOKEN" "$DB_LOCKS_VERSION"; exit 7"#;
    let mut cmd = ctx.cmd();
    // An outer `run -s` must not leak its semaphore key into a plain mutex's child.
    cmd.env("DB_LOCKS_SEMAPHORE_KEY", "outer")
        .args(["run", "-k", &key, "-l", "5", "--", "sh", "-c", report]);
    let out = exec(cmd);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let line = stdout(&out);
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(fields[0], key);
    assert_eq!(fields[1], "unset");
    assert_eq!(fields[2], ctx.tenant);
    let token: i64 = fields[3].parse().unwrap();
    assert!(!fields[4].is_empty());
    let after = ctx.json(&["get-mutex", "-k", &key]);
    assert_eq!(after["fencing_token"].as_i64(), Some(token));
    assert_eq!(after["locked"], false, "released when the child ended");

    // Options of db-locks after PROVIDER, the child's own flags after `--`.
    let mut cmd = ctx.base_cmd();
    cmd.arg(ctx.provider)
        .arg("-c")
        .arg(&ctx.config)
        .args([ctx.store_flag, &ctx.url, "-t", &ctx.tenant])
        .args([
            "run",
            "-k",
            &key,
            "--",
            "sh",
            "-c",
            "echo \"$@\"",
            "sh",
            "--json",
            "-k",
        ]);
    let out = exec(cmd);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "--json -k\n");

    // Ended by a signal: 128 + its number.
    assert_eq!(
        ctx.code(&["run", "-k", &key, "--", "sh", "-c", "kill -TERM $$"]),
        143
    );
    assert_eq!(
        ctx.code(&["run", "-k", &key, "--", "sh", "-c", "kill -KILL $$"]),
        137
    );
    // A program that does not exist: 127, and the lease is not kept.
    assert_eq!(
        ctx.code(&["run", "-k", &key, "--", "/nonexistent/program"]),
        127
    );
    assert_eq!(ctx.json(&["get-mutex", "-k", &key])["locked"], false);

    // Busy: 75 and the child never starts.
    let lock = ctx.json(&["acquire", "-k", &key, "-l", "10"]);
    let marker = ctx.path("ran");
    let out = ctx.expect(
        &[
            "run",
            "-k",
            &key,
            "-w",
            "0",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
        75,
    );
    assert!(!marker.exists(), "{out:?}");
    ctx.expect(&["release", "-k", &key, "-v", s(&lock["version"])], 0);

    // With -s: the slot's key, the semaphore's key.
    let sem = unique("s");
    ctx.json(&["create-semaphore", "-k", &sem, "-m", "1", "-l", "5"]);
    let out = ctx.run(&["run", "-s", "-k", &sem, "--", "sh", "-c", report]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let line = stdout(&out);
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert!(fields[0].starts_with(&sem) && fields[0] != sem, "{line}");
    assert_eq!(fields[1], sem);
    assert_eq!(ctx.json(&["get-semaphore", "-k", &sem])["busy_count"], 0);
}

/// A lost lease stops the child's whole process group with SIGTERM, and db-locks exits 3.
fn run_lease_lost(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("lost");
    let (marker, grandchild) = (ctx.path("term"), ctx.path("grandchild"));
    // The child gives its own lease away (as if taken over), then waits; the heartbeat finds
    // the lease gone and db-locks sends SIGTERM.
    let script = r#"
        "$0" -c "$1" "$2" "$3" "$4" release -k "$DB_LOCKS_KEY" -v "$DB_LOCKS_VERSION" >/dev/null || exit 99
        trap 'echo term > "$5"; exit 0' TERM
        sleep 30 >/dev/null 2>&1 &
        echo $! > "$6"
        wait
    "#;
    let started = Instant::now();
    // The child must release before the first renewal (a third of the lease) changes the
    // version: 6 s leaves it 2 s to start a db-locks and make one request, even on moto.
    let out = ctx.run(&[
        "run",
        "-k",
        &key,
        "-l",
        "6",
        "--",
        "sh",
        "-c",
        script,
        BIN,
        ctx.config.to_str().unwrap(),
        ctx.provider,
        ctx.store_flag,
        &ctx.url,
        marker.to_str().unwrap(),
        grandchild.to_str().unwrap(),
    ]);
    expect_code(&out, 3, &["run (lease lost)"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stderr(&out).contains("lost"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");
    // The child's own child got the SIGTERM too.
    let pid = wait_for_file(&grandchild);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(&pid) {
        assert!(
            Instant::now() < deadline,
            "grandchild {pid} survived the lease loss"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child that ignores SIGTERM gets SIGKILL after --kill-after.
fn run_kill_after(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("kill");
    let script = r#"
        "$0" -c "$1" "$2" "$3" "$4" release -k "$DB_LOCKS_KEY" -v "$DB_LOCKS_VERSION" >/dev/null || exit 99
        trap '' TERM
        exec sleep 30
    "#;
    let started = Instant::now();
    // The child must release before the first renewal (a third of the lease) changes the
    // version: 6 s leaves it 2 s to start a db-locks and make one request, even on moto.
    let out = ctx.run(&[
        "run",
        "-k",
        &key,
        "-l",
        "6",
        "--kill-after",
        "0.3",
        "--",
        "sh",
        "-c",
        script,
        BIN,
        ctx.config.to_str().unwrap(),
        ctx.provider,
        ctx.store_flag,
        &ctx.url,
    ]);
    expect_code(&out, 3, &["run (lease lost, SIGTERM ignored)"]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A holder killed with SIGKILL keeps its lease until it expires; then a waiter takes over
/// with a higher fencing token.
fn sigkilled_holder_taken_over(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("k");
    let pid_file = ctx.path("pid");
    let mut holder = ctx.spawn(&[
        "run",
        "-k",
        &key,
        "-l",
        "3",
        "--",
        "sh",
        "-c",
        "echo $$ > \"$0\"; exec sleep 30",
        pid_file.to_str().unwrap(),
    ]);
    let child_pid = wait_for_file(&pid_file);
    let held = ctx.json(&["get-mutex", "-k", &key]);
    assert_eq!(held["locked"], true);
    holder.kill().unwrap();
    holder.wait().unwrap();
    signal(&child_pid, "KILL");

    // The lease outlives its holder...
    ctx.expect(&["acquire", "-k", &key, "-w", "0"], 75);
    // ...until it expires.
    let started = Instant::now();
    let taken = ctx.json(&["acquire", "-k", &key, "-l", "5", "-w", "10"]);
    let waited = started.elapsed();
    if backend == Backend::DynamoDb {
        // By design DynamoDB has no server clock: the waiter takes over only after it has
        // watched the record (its `rvn`) stay unchanged for a whole lease (3 s) on its own
        // clock, counted from its first read, however long ago the lease really expired.
        // So the takeover takes at least a lease, and up to a lease plus polling: -w 10
        // leaves room for that.
        assert!(
            waited >= Duration::from_secs(3),
            "taken over after {waited:?}, before a whole lease of watching"
        );
    }
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert!(taken["fencing_token"].as_i64() > held["fencing_token"].as_i64());
}

/// Concurrent `run`s of a read-modify-write on a file never lose an update.
fn concurrent_runs_counter(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("counter");
    let counter = ctx.path("counter");
    std::fs::write(&counter, "0\n").unwrap();
    let (processes, rounds) = (4, 5);
    let script = r#"n=$(cat "$0"); sleep 0.01; echo $((n + 1)) > "$0""#;
    std::thread::scope(|scope| {
        for _ in 0..processes {
            scope.spawn(|| {
                for _ in 0..rounds {
                    let out = ctx.run(&[
                        "run",
                        "-k",
                        &key,
                        "-l",
                        "5",
                        "-w",
                        "60",
                        "--",
                        "sh",
                        "-c",
                        script,
                        counter.to_str().unwrap(),
                    ]);
                    assert_eq!(code(&out), 0, "{}", stderr(&out));
                }
            });
        }
    });
    let total: u32 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(total, processes * rounds, "lost updates");
}

/// A semaphore of N never admits more than N concurrent `run`s.
fn semaphore_limits_concurrent_runs(backend: Backend) {
    let ctx = Ctx::new(backend);
    let sem = unique("pool");
    let size = 2;
    ctx.json(&[
        "create-semaphore",
        "-k",
        &sem,
        "-m",
        &size.to_string(),
        "-l",
        "5",
    ]);
    let active = ctx.path("active");
    std::fs::create_dir(&active).unwrap();
    let log = ctx.path("log");
    let script = r#"touch "$0/$$"; ls "$0" | wc -l >> "$1"; sleep 0.2; rm "$0/$$""#;
    let workers = 6;
    let mut children: Vec<Child> = (0..workers)
        .map(|_| {
            ctx.spawn(&[
                "run",
                "-s",
                "-k",
                &sem,
                "-w",
                "60",
                "--",
                "sh",
                "-c",
                script,
                active.to_str().unwrap(),
                log.to_str().unwrap(),
            ])
        })
        .collect();
    for child in &mut children {
        let status = wait_timeout(child, PROCESS_TIMEOUT).expect("a worker hung");
        assert!(status.success(), "{status:?}");
    }
    let counts: Vec<usize> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), workers, "every worker ran once");
    assert!(
        counts.iter().all(|&n| (1..=size).contains(&n)),
        "more than {size} workers at once: {counts:?}"
    );
}

/// `heartbeat --new-version` makes a renewal safe to retry after a timeout: the same command
/// run twice succeeds both times, with the named version.
fn heartbeat_new_version_retries(backend: Backend) {
    let ctx = Ctx::new(backend);
    let key = unique("renew-retry");
    let lock = ctx.json(&["acquire", "-k", &key, "-l", "30"]);
    let renew = [
        "heartbeat",
        "-k",
        &key,
        "-v",
        s(&lock["version"]),
        "--new-version",
        "retry-2",
    ];
    for _ in 0..2 {
        let renewed = ctx.json(&renew);
        assert_eq!(s(&renewed["version"]), "retry-2");
        assert_eq!(renewed["fencing_token"], lock["fencing_token"]);
    }
    // Another new version with the old version is refused: the lease moved on.
    ctx.expect(
        &[
            "heartbeat",
            "-k",
            &key,
            "-v",
            s(&lock["version"]),
            "--new-version",
            "retry-3",
        ],
        3,
    );
    ctx.expect(
        &[
            "heartbeat",
            "-k",
            &key,
            "-v",
            "retry-2",
            "--new-version",
            "bad version",
        ],
        2,
    );
    ctx.expect(&["release", "-k", &key, "-v", "retry-2"], 0);
}

/// `bench` on a store with a baseline: its figures, and db-locks' as ratios to them.
#[allow(dead_code)]
fn bench_baseline(backend: Backend, kind: &str, ratio_field: &str) {
    let ctx = Ctx::new(backend);
    let report = ctx.json(&[
        "bench",
        "-n",
        "10",
        "--threads",
        "2",
        "--contended-secs",
        "0.2",
        "--handoff-waiters",
        "1",
        "--semaphore-size",
        "2",
    ]);
    let num = |v: &Value, what: &str| -> f64 {
        let x = v
            .as_f64()
            .unwrap_or_else(|| panic!("{what} is not a number: {report}"));
        assert!(x.is_finite() && x >= 0.0, "{what} = {x}: {report}");
        x
    };
    let b = &report["baseline"];
    assert_eq!(s(&b["kind"]), kind, "{report}");
    // From the unlock returning, a hand-off may be 0 (the waiter answered first): only the
    // figures from the unlock's start must be positive.
    for (part, stats, positive) in [
        ("cycle", &b["cycle"], true),
        ("raw_write", &b["raw_write"], true),
        ("handoff", &b["handoff"], false),
        (
            "handoff.from_release_call",
            &b["handoff"]["from_release_call"],
            true,
        ),
    ] {
        let p50 = num(&stats["p50_us"], &format!("baseline.{part}.p50_us"));
        let p99 = num(&stats["p99_us"], &format!("baseline.{part}.p99_us"));
        assert!(p50 <= p99 && (p99 > 0.0 || !positive), "{part}: {report}");
    }
    num(&b["cycle"]["ratio_to_round_trip"], "baseline ratio");
    assert!(b["handoff"]["early"].as_u64().is_some(), "{report}");
    assert!(num(&report["acquire_release"][ratio_field], ratio_field) > 0.0);
    assert!(
        num(
            &report["acquire_release"]["raw_efficiency"],
            "raw_efficiency"
        ) > 0.0
    );
    assert!(num(&report["guard_cycle"][ratio_field], ratio_field) > 0.0);
    for sharing in ["threads", "processes"] {
        let row = &report["handoff"][sharing][0];
        num(&row[ratio_field]["p50"], "hand-off p50 ratio");
        num(&row[ratio_field]["p99"], "hand-off p99 ratio");
    }
    assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));
}

macro_rules! store_cases {
    ($backend:expr) => {
        use super::*;
        #[test]
        fn mutex_commands() {
            super::mutex_commands($backend)
        }
        #[test]
        fn delete_mutex() {
            super::delete_mutex($backend)
        }
        #[test]
        fn semaphore_commands() {
            super::semaphore_commands($backend)
        }
        #[test]
        fn list_and_migrate() {
            super::list_and_migrate($backend)
        }
        #[test]
        fn run_env_and_exit_code() {
            super::run_env_and_exit_code($backend)
        }
        #[test]
        fn run_lease_lost() {
            super::run_lease_lost($backend)
        }
        #[test]
        fn run_kill_after() {
            super::run_kill_after($backend)
        }
        #[test]
        fn sigkilled_holder_taken_over() {
            super::sigkilled_holder_taken_over($backend)
        }
        #[test]
        fn concurrent_runs_counter() {
            super::concurrent_runs_counter($backend)
        }
        #[test]
        fn semaphore_limits_concurrent_runs() {
            super::semaphore_limits_concurrent_runs($backend)
        }
        #[test]
        fn heartbeat_new_version_retries() {
            super::heartbeat_new_version_retries($backend)
        }
    };
}

#[cfg(feature = "sqlite")]
mod sqlite {
    store_cases!(Backend::Sqlite);
}

#[cfg(feature = "postgres")]
mod postgres {
    store_cases!(Backend::Postgres);

    #[test]
    fn bench_baseline() {
        super::bench_baseline(Backend::Postgres, "pg_advisory_lock", "ratio_to_advisory")
    }

    /// A store error while waiting is retried within the wait: here the server terminates the
    /// waiting command's connection (as an administrator or a failover would), and the command
    /// still gets the lock once its holder's lease ends.
    #[test]
    fn terminated_connection_during_a_wait_is_retried() {
        let ctx = Ctx::new(Backend::Postgres);
        let key = unique("terminated");
        ctx.json(&["acquire", "-k", &key, "-l", "3"]);
        let app = unique("dbl-waiter").replace('-', "_");
        let url = format!("{}?application_name={app}", ctx.url);
        let mut cmd = ctx.base_cmd();
        cmd.arg("-c")
            .arg(&ctx.config)
            .args(["rdb", "--database-url", &url, "-t", &ctx.tenant])
            .args(["acquire", "-k", &key, "-l", "10", "-w", "20", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let waiter = cmd.spawn().unwrap();
        // Terminate the waiter's connections a few times while it waits.
        let mut terminated = 0;
        while started.elapsed() < Duration::from_millis(2_500) {
            std::thread::sleep(Duration::from_millis(400));
            let out = Command::new("psql")
                .args([&ctx.url, "-tAc"])
                .arg(format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = '{app}'"
                ))
                .output()
                .expect("psql");
            terminated += String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<i32>()
                .unwrap_or(0);
        }
        assert!(terminated > 0, "no connection of the waiter was terminated");
        let out = waiter.wait_with_output().unwrap();
        expect_code(&out, 0, &["acquire", "-w", "20"]);
        assert!(started.elapsed() >= Duration::from_millis(2_500));
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    store_cases!(Backend::Mysql);
}

#[cfg(feature = "redis")]
mod redis_tls {
    store_cases!(Backend::RedisTls);

    /// The TLS files given as flags; without the CA, the server is not trusted (exit 1, one
    /// line naming the certificate problem).
    #[test]
    fn tls_flags() {
        let tls = redis_dir().join("tls");
        let file = |name: &str| tls.join(name).display().to_string();
        let key = unique("tls-flags");
        let url = "rediss://127.0.0.1:6381";
        let (ca, cert, client_key) = (file("ca.crt"), file("client.crt"), file("client.key"));
        let args = [
            "redis",
            "--redis-url",
            url,
            "--redis-tls-ca-file",
            &ca,
            "--redis-tls-client-cert-file",
            &cert,
            "--redis-tls-client-key-file",
            &client_key,
            "-t",
            "cli-tls",
            "acquire",
            "-k",
            &key,
            "-l",
            "5",
        ];
        let out = Command::new(BIN).args(args).output().unwrap();
        expect_code(&out, 0, &args);
        let args = [
            "redis",
            "--redis-url",
            url,
            "acquire",
            "-k",
            &key,
            "-l",
            "5",
        ];
        let out = Command::new(BIN).args(args).output().unwrap();
        expect_code(&out, 1, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains("certificate"), "{stderr}");
    }
}

#[cfg(feature = "redis")]
mod redis_sentinel {
    store_cases!(Backend::RedisSentinel);
}

#[cfg(feature = "redis")]
mod redis_cluster {
    store_cases!(Backend::RedisCluster);
}

#[cfg(feature = "redis")]
mod redis {
    store_cases!(Backend::Redis);

    #[test]
    fn bench_baseline() {
        super::bench_baseline(Backend::Redis, "redis_set_nx", "ratio_to_set_nx")
    }
}

#[cfg(feature = "dynamodb")]
mod dynamodb {
    store_cases!(Backend::DynamoDb);
}

// ----- store-independent cases (on SQLite) -----------------------------------------------

#[cfg(feature = "sqlite")]
mod usage {
    use super::*;

    /// Nothing a user types may panic: the password scan walks arguments by character.
    #[test]
    fn unicode_arguments_never_panic() {
        let ctx = Ctx::new(Backend::Sqlite);
        let out = ctx.expect(&["acquire", "-k", "x", "-d", "詳細https://example.com"], 0);
        assert!(stdout(&out).contains("x"));
        let out = ctx.expect(&["run", "-k", "y", "--", "echo", "café://x"], 0);
        assert_eq!(stdout(&out), "café://x\n");
        let out = ctx.expect(&["run", "-k", "ü://ä:ö@ß", "--", "true"], 0);
        assert!(!stderr(&out).contains("panicked"));
    }

    /// A heartbeat period that cannot keep a lease (here 2.8 s for 3 s) is refused up front.
    #[test]
    fn unworkable_heartbeat_period_is_a_usage_error() {
        let ctx = Ctx::new(Backend::Sqlite);
        let config = ctx.path("slow-heartbeat.toml");
        std::fs::write(&config, "heartbeat_period_ms = 2800\n").unwrap();
        let mut cmd = ctx.base_cmd();
        cmd.arg("-c").arg(&config).args(ctx.store_args()).args([
            "-t",
            &ctx.tenant,
            "run",
            "-k",
            "slow",
            "-l",
            "3",
            "--",
            "sleep",
            "4",
        ]);
        let started = Instant::now();
        let out = exec(cmd);
        expect_code(&out, 2, &["run", "-l", "3"]);
        assert!(
            stderr(&out).contains("heartbeat period"),
            "{}",
            stderr(&out)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the command ran"
        );
        // Nothing stayed held.
        ctx.expect(&["acquire", "-k", "slow", "-w", "0"], 0);
    }

    #[test]
    fn help_and_version() {
        let dir = tempfile::tempdir().unwrap();
        for args in [
            &["--help"][..],
            &["-h"],
            &["help", "run"],
            &["acquire", "--help"],
        ] {
            let mut cmd = bare_cmd(dir.path());
            cmd.args(args);
            let out = exec(cmd);
            assert_eq!(code(&out), 0, "{args:?}");
            assert!(stdout(&out).contains("Usage: db-locks"), "{args:?}");
        }
        let mut cmd = bare_cmd(dir.path());
        cmd.arg("-V");
        let out = exec(cmd);
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).starts_with("db-locks "));
        // Every command has help text.
        let mut cmd = bare_cmd(dir.path());
        cmd.arg("--help");
        let help = stdout(&exec(cmd));
        for command in [
            "acquire",
            "heartbeat",
            "release",
            "get-mutex",
            "delete-mutex",
            "create-semaphore",
            "get-semaphore",
            "delete-semaphore",
            "get-semaphore-mutexes",
            "run",
            "list",
            "migrate",
            "bench",
        ] {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{command} ")))
                .unwrap_or_else(|| panic!("`{command}` is not in --help"));
            assert!(
                line.trim().len() > command.len() + 10,
                "no help text: {line}"
            );
        }
    }

    /// Options before or after PROVIDER and after the command; environment and config file.
    #[test]
    fn options_anywhere_env_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("locks.sqlite").display().to_string();
        let tenant = unique("t");
        let key = unique("k");
        let acquire = |args: &[&str]| {
            let mut cmd = bare_cmd(dir.path());
            cmd.args(args);
            let out = exec(cmd);
            expect_code(&out, 0, args);
            parse_json_line(&out)
        };
        let a = acquire(&[
            "-t",
            &tenant,
            "rdb",
            "--database-url",
            &url,
            "acquire",
            "-k",
            &format!("{key}1"),
            "--json",
        ]);
        let b = acquire(&[
            "rdb",
            "-t",
            &tenant,
            "acquire",
            "-k",
            &format!("{key}2"),
            "--json",
            "--database-url",
            &url,
        ]);
        let c = acquire(&[
            "--json",
            "acquire",
            "--database-url",
            &url,
            "-k",
            &format!("{key}3"),
            "-t",
            &tenant,
        ]);
        for lock in [&a, &b, &c] {
            assert_eq!(s(&lock["tenant_id"]), tenant);
        }

        // Environment.
        let mut cmd = bare_cmd(dir.path());
        cmd.env("DATABASE_URL", &url)
            .env("DB_LOCKS_TENANT", &tenant)
            .args(["list", "--json"]);
        let out = exec(cmd);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(parse_json_line(&out).as_array().unwrap().len(), 3);

        // The config file, overridden by the environment, overridden by flags.
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!("tenant_id = \"{tenant}\"\ndatabase_url = \"{url}\"\n"),
        )
        .unwrap();
        let list = |extra: &[&str], env_tenant: Option<&str>| {
            let mut cmd = bare_cmd(dir.path());
            cmd.arg("-c")
                .arg(&config)
                .args(extra)
                .args(["list", "--json"]);
            if let Some(t) = env_tenant {
                cmd.env("DB_LOCKS_TENANT", t);
            }
            let out = exec(cmd);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            parse_json_line(&out).as_array().unwrap().len()
        };
        assert_eq!(list(&[], None), 3);
        assert_eq!(list(&[], Some("other-tenant")), 0);
        assert_eq!(list(&["-t", &tenant], Some("other-tenant")), 3);
        // An empty environment variable counts as unset.
        assert_eq!(list(&[], Some("")), 3);
    }

    /// Without --database-url, rdb uses SQLite under the per-user data directory.
    #[test]
    fn default_sqlite_location() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = bare_cmd(dir.path());
        cmd.args(["migrate", "--json"]);
        let out = exec(cmd);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let expected = dir
            .path()
            .join("data")
            .join("db-locks")
            .join("locks.sqlite");
        assert!(expected.exists(), "{} was not created", expected.display());
        assert_eq!(
            s(&parse_json_line(&out)["store"]),
            expected.display().to_string()
        );
    }

    #[test]
    fn bad_input_is_usage_error() {
        let ctx = Ctx::new(Backend::Sqlite);
        let huge = "k".repeat(1000);
        let cases: &[&[&str]] = &[
            &["acquire", "-k", ""],
            &["acquire", "-k", &huge],
            &["get-mutex", "-k", &huge],
            &["acquire", "-k", "a\u{7}b"],
            &["acquire", "-k", "x", "-l", "0"],
            &["acquire", "-k", "x", "-l", "-1"],
            &["acquire", "-k", "x", "-l", "-0.5"],
            &["acquire", "-k", "x", "-l", "abc"],
            &["acquire", "-k", "x", "-l", "NaN"],
            &["acquire", "-k", "x", "-l", "inf"],
            &["acquire", "-k", "x", "-l", "1e300"],
            &["acquire", "-k", "x", "-l", "99999999"],
            &["acquire", "-k", "x", "-w", "-1"],
            &["acquire", "-k", "x", "-w", "soon"],
            &["acquire", "-k", "x", "-s", "--delete-on-release"],
            &["acquire"],
            &["heartbeat", "-k", "x"],
            &["release", "-v", "x"],
            &["create-semaphore", "-k", "s", "-m", "0"],
            &["create-semaphore", "-k", "s", "-m", "-3"],
            &["create-semaphore", "-k", "s", "-m", "many"],
            &["create-semaphore", "-k", "s", "-m", "1000000"],
            &["create-semaphore", "-k", "s", "-m", "2", "-l", "0"],
            &["run", "-k", "x"],
            &["run", "-k", "x", "--kill-after", "later", "--", "true"],
            &["run", "-k", "x", "-l", "0", "--", "true"],
            &["frobnicate"],
            &[],
            &["mongo", "list"],
        ];
        for args in cases {
            let out = ctx.run(args);
            assert_eq!(
                code(&out),
                2,
                "db-locks {args:?}\nstdout: {}\nstderr: {}",
                stdout(&out),
                stderr(&out)
            );
            assert!(stdout(&out).is_empty(), "{args:?}");
            assert!(!stderr(&out).contains("panicked"), "{args:?}");
        }
        // An empty tenant.
        let mut cmd = bare_cmd(ctx.dir.path());
        cmd.args(["--database-url", &ctx.url, "-t", "", "list"]);
        let out = exec(cmd);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
    }

    /// `bench`: every measurement present and positive, ratios finite, no keys left behind.
    #[test]
    fn bench_measures_and_cleans_up() {
        let ctx = Ctx::new(Backend::Sqlite);
        let report = ctx.json(&[
            "bench",
            "-n",
            "20",
            "--threads",
            "2",
            "--semaphore-size",
            "10",
            "--contended-secs",
            "0.3",
        ]);
        assert_eq!(s(&report["provider"]), "rdb", "{report}");
        assert_eq!(s(&report["store"]), ctx.url, "{report}");
        assert_eq!(report["iterations"], 20, "{report}");
        let positive = |v: &Value, what: &str| {
            let x = v
                .as_f64()
                .unwrap_or_else(|| panic!("{what} is not a number: {report}"));
            assert!(x.is_finite() && x > 0.0, "{what} = {x}: {report}");
        };
        for op in [
            "round_trip",
            "acquire_release",
            "heartbeat",
            "guard_cycle",
            "permit_cycle",
        ] {
            let row = &report[op];
            for field in ["mean_us", "p50_us", "p99_us"] {
                positive(&row[field], &format!("{op}.{field}"));
            }
            assert!(
                row["p50_us"].as_f64() <= row["p99_us"].as_f64(),
                "{op}: {report}"
            );
            if op != "round_trip" {
                positive(
                    &row["ratio_to_round_trip"],
                    &format!("{op}.ratio_to_round_trip"),
                );
            }
        }
        let contended = &report["contended"];
        assert_eq!(contended["threads"], 2, "{report}");
        positive(&contended["grants_per_sec"], "contended.grants_per_sec");
        positive(
            &contended["mean_us_per_grant"],
            "contended.mean_us_per_grant",
        );

        // Every key the run created is gone; the tenant is this test's own, so: nothing.
        assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));

        // The human form: one row per measurement.
        let out = ctx.expect(
            &[
                "bench",
                "-n",
                "3",
                "--threads",
                "1",
                "--semaphore-size",
                "1",
                "--contended-secs",
                "0.2",
                "--handoff-waiters",
                "1",
            ],
            0,
        );
        let text = stdout(&out);
        for op in [
            "round_trip",
            "acquire_release",
            "heartbeat",
            "guard_cycle",
            "permit_cycle",
            "contended",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(op)),
                "no `{op}` row:\n{text}"
            );
        }
        assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));
    }

    /// `bench --json`: the hand-off settings, the time-boxed contended runs with their sweep,
    /// and no baseline on SQLite (absent in JSON, `n/a` in the human form).
    #[test]
    fn bench_handoff_and_contention_fields() {
        let ctx = Ctx::new(Backend::Sqlite);
        let report = ctx.json(&[
            "bench",
            "-n",
            "10",
            "--threads",
            "3",
            "--threads-sweep",
            "2,1",
            "--contended-secs",
            "0.3",
            "--handoff-waiters",
            "1,2",
            "--handoff-hold",
            "0.002",
            "--semaphore-size",
            "2",
        ]);
        let num = |v: &Value, what: &str| -> f64 {
            let x = v
                .as_f64()
                .unwrap_or_else(|| panic!("{what} is not a number: {report}"));
            assert!(x.is_finite() && x >= 0.0, "{what} = {x}: {report}");
            x
        };

        let handoff = &report["handoff"];
        assert_eq!(s(&handoff["api"]), "record", "{report}");
        assert_eq!(num(&handoff["hold_ms"], "hold_ms"), 2.0, "{report}");
        // The test config's backoff (see Ctx::new).
        assert_eq!(num(&handoff["retry_base_ms"], "retry_base_ms"), 5.0);
        assert_eq!(num(&handoff["retry_max_ms"], "retry_max_ms"), 50.0);
        for sharing in ["threads", "processes"] {
            let rows = handoff[sharing]
                .as_array()
                .unwrap_or_else(|| panic!("handoff.{sharing} is not an array: {report}"));
            let waiters: Vec<u64> = rows
                .iter()
                .map(|r| r["waiters"].as_u64().unwrap())
                .collect();
            assert_eq!(waiters, [1, 2], "{report}");
            for row in rows {
                let what = format!("handoff.{sharing}[{}]", row["waiters"]);
                assert_eq!(row["samples"], 10, "{what}: {report}");
                let p50 = num(&row["p50_us"], &format!("{what}.p50_us"));
                let p99 = num(&row["p99_us"], &format!("{what}.p99_us"));
                assert!(p50 <= p99 && p99 > 0.0, "{what}: {report}");
                num(&row["mean_us"], &format!("{what}.mean_us"));
                num(&row["ratio_to_round_trip"], &format!("{what}.ratio"));
                assert!(row["early"].as_u64().is_some_and(|e| e <= 10), "{report}");
                // From the release call's start: never less than from its return.
                let call = &row["from_release_call"];
                let call50 = num(&call["p50_us"], &format!("{what}.from_release_call.p50_us"));
                let call99 = num(&call["p99_us"], &format!("{what}.from_release_call.p99_us"));
                assert!(call50 >= p50 && call99 >= p99 && call50 <= call99 && call50 > 0.0);
                assert!(row.get("ratio_to_advisory").is_none(), "{report}");
                assert!(row.get("ratio_to_set_nx").is_none(), "{report}");
            }
        }

        let c = &report["contended"];
        assert_eq!(c["threads"], 3, "{report}");
        assert_eq!(num(&c["secs"], "secs"), 0.3, "{report}");
        assert!(c["grants"].as_u64().is_some_and(|g| g > 0), "{report}");
        assert!(num(&c["grants_per_sec"], "grants_per_sec") > 0.0);
        assert!(num(&c["single_thread_grants_per_sec"], "single") > 0.0);
        assert!(num(&c["ratio_to_single_thread"], "ratio_to_single_thread") > 0.0);
        let rpg = num(&c["requests_per_grant"], "requests_per_grant");
        assert!(rpg >= 1.0, "{report}");
        let shares = &c["shares"];
        let (min, mean, max) = (
            num(&shares["min"], "shares.min"),
            num(&shares["mean"], "shares.mean"),
            num(&shares["max"], "shares.max"),
        );
        assert!(min <= mean && mean <= max && max <= 1.0, "{report}");
        assert!((mean - 1.0 / 3.0).abs() < 0.001, "{report}");
        let min_over_mean = num(&shares["min_over_mean"], "shares.min_over_mean");
        assert!(min_over_mean <= 1.0, "{report}");
        let sweep = c["sweep"].as_array().expect("contended.sweep");
        let counts: Vec<u64> = sweep
            .iter()
            .map(|r| r["threads"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [1, 2, 3], "{report}");
        for run in sweep {
            assert!(num(&run["grants_per_sec"], "sweep grants_per_sec") > 0.0);
            num(&run["ratio_to_single_thread"], "sweep ratio");
            num(&run["shares"]["min_over_mean"], "sweep min_over_mean");
            assert!(num(&run["requests_per_grant"], "sweep requests_per_grant") >= 1.0);
        }
        assert_eq!(sweep[0]["ratio_to_single_thread"], 1.0, "{report}");

        // No baseline on SQLite.
        assert!(report.get("baseline").is_none(), "{report}");
        assert!(report["acquire_release"].get("ratio_to_advisory").is_none());
        assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));

        let out = ctx.expect(
            &[
                "bench",
                "-n",
                "3",
                "--contended-secs",
                "0.1",
                "--threads",
                "2",
                "--handoff-waiters",
                "1",
            ],
            0,
        );
        let text = stdout(&out);
        assert!(text.contains("baseline: n/a"), "{text}");
        for sharing in ["threads", "processes"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(sharing) && l.contains("n/a")),
                "no `{sharing}` hand-off row:\n{text}"
            );
        }
        assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));
    }

    /// `bench` on an in-memory SQLite database: separate connects do not share it, so the
    /// `processes` hand-offs are skipped, with the reason, and the rest is measured.
    #[test]
    fn bench_in_memory_skips_processes() {
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "--database-url",
            ":memory:",
            "--json",
            "bench",
            "-n",
            "3",
            "--contended-secs",
            "0.1",
            "--threads",
            "2",
            "--handoff-waiters",
            "1",
            "--semaphore-size",
            "1",
        ];
        let mut cmd = bare_cmd(dir.path());
        cmd.args(args);
        let out = exec(cmd);
        expect_code(&out, 0, &args);
        let report = parse_json_line(&out);
        let handoff = &report["handoff"];
        assert_eq!(
            handoff["threads"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
        assert_eq!(handoff["processes"], Value::Array(vec![]), "{report}");
        assert!(
            s(&handoff["processes_skipped"]).contains("do not share"),
            "{report}"
        );
    }

    /// `bench` checks its arguments before connecting: exit 2, nothing printed or created.
    #[test]
    fn bench_bad_input_is_usage_error() {
        let ctx = Ctx::new(Backend::Sqlite);
        let huge = "k".repeat(200);
        let cases: &[&[&str]] = &[
            &["bench", "-n", "0"],
            &["bench", "-n", "-1"],
            &["bench", "-n", "many"],
            &["bench", "--threads", "0"],
            &["bench", "--semaphore-size", "0"],
            &["bench", "--semaphore-size", "-5"],
            &["bench", "--semaphore-size", "10001"],
            &["bench", "-k", ""],
            &["bench", "-k", &huge],
            &["bench", "--threads", "257"],
            &["bench", "--contended-secs", "0"],
            &["bench", "--contended-secs", "-1"],
            &["bench", "--contended-secs", "3000000"],
            &["bench", "--contended-secs", "soon"],
            &["bench", "--threads-sweep", "1,0"],
            &["bench", "--threads-sweep", "1,x"],
            &["bench", "--threads-sweep", "1000"],
            &["bench", "--handoff-waiters", "0"],
            &["bench", "--handoff-waiters", "256"],
            &["bench", "--handoff-hold", "0"],
            &["bench", "--handoff-hold", "3000000"],
        ];
        for args in cases {
            let out = ctx.run(args);
            assert_eq!(
                code(&out),
                2,
                "db-locks {args:?}\nstdout: {}\nstderr: {}",
                stdout(&out),
                stderr(&out)
            );
            assert!(stdout(&out).is_empty(), "{args:?}");
            assert!(!stderr(&out).is_empty(), "{args:?}");
        }
        assert_eq!(ctx.json(&["list"]), Value::Array(vec![]));
    }

    #[test]
    fn provider_not_compiled_in_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let providers = [
            (cfg!(feature = "redis"), "redis"),
            (cfg!(feature = "dynamodb"), "ddb"),
        ];
        for (_, provider) in providers.into_iter().filter(|(compiled, _)| !compiled) {
            let mut cmd = bare_cmd(dir.path());
            cmd.args([provider, "list"]);
            let out = exec(cmd);
            assert_eq!(code(&out), 2, "{provider}: {}", stderr(&out));
            assert!(stderr(&out).contains("not compiled in"), "{}", stderr(&out));
        }
    }

    #[test]
    fn config_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let run = |config: &Path| {
            let mut cmd = bare_cmd(dir.path());
            cmd.arg("-c").arg(config).arg("list");
            exec(cmd)
        };
        let out = run(&dir.path().join("missing.toml"));
        expect_code(&out, 2, &["-c missing.toml"]);
        assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));

        for (name, text) in [
            ("malformed.toml", "tenant_id = [\n"),
            ("unknown.toml", "no_such_setting = 1\n"),
            ("provider.toml", "provider = \"mongo\"\n"),
            ("zero.toml", "default_lease_ms = 0\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let out = run(&path);
            assert_eq!(code(&out), 2, "{name}: {}", stderr(&out));
            assert!(!stderr(&out).is_empty());
        }

        // A malformed file that holds a password: the password is not echoed.
        let path = dir.path().join("secret.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://u:hunter2secret@db.example/x\" oops\n",
        )
        .unwrap();
        let out = run(&path);
        assert_eq!(code(&out), 2);
        assert!(!stderr(&out).contains("hunter2secret"), "{}", stderr(&out));
    }

    /// Unreachable stores: exit 1, one line, and the password never shows.
    #[test]
    fn unreachable_store_and_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fast.toml");
        std::fs::write(&config, "connect_timeout_ms = 1000\n").unwrap();
        let urls = [
            (
                cfg!(feature = "postgres"),
                "postgres://u:secretpw@127.0.0.1:1/x",
            ),
            (cfg!(feature = "mysql"), "mysql://u:secretpw@127.0.0.1:1/x"),
        ];
        for (_, url) in urls.into_iter().filter(|(covered, _)| *covered) {
            for via_env in [false, true] {
                let mut cmd = bare_cmd(dir.path());
                cmd.arg("-c").arg(&config);
                if via_env {
                    cmd.env("DATABASE_URL", url);
                } else {
                    cmd.args(["--database-url", url]);
                }
                cmd.args(["acquire", "-k", "x"]);
                let out = exec(cmd);
                expect_code(&out, 1, &[url]);
                assert!(!stdout(&out).contains("secretpw"));
                assert!(!stderr(&out).contains("secretpw"), "{}", stderr(&out));
            }
        }

        // Nor in help (environment values are hidden) or in clap's own errors.
        let mut cmd = bare_cmd(dir.path());
        cmd.env("DATABASE_URL", "postgres://u:secretpw@h/x")
            .env("REDIS_URL", "redis://:secretpw@h")
            .arg("--help");
        let out = exec(cmd);
        assert_eq!(code(&out), 0);
        assert!(!stdout(&out).contains("secretpw"));
        let mut cmd = bare_cmd(dir.path());
        cmd.args(["get-mutex", "-k", "x", "postgres://u:secretpw@h/x"]);
        let out = exec(cmd);
        assert_eq!(code(&out), 2);
        assert!(!stderr(&out).contains("secretpw"), "{}", stderr(&out));
    }

    /// SIGTERM and SIGINT sent to db-locks reach the child; the lock is released afterwards.
    #[test]
    fn run_forwards_signals() {
        let ctx = Ctx::new(Backend::Sqlite);
        let key = unique("sig");
        let (pid_file, marker) = (ctx.path("pid"), ctx.path("term"));
        let script = r#"trap 'echo term > "$1"; exit 5' TERM; echo $$ > "$0"; sleep 30 >/dev/null 2>&1 & wait"#;
        let mut child = ctx.spawn(&[
            "run",
            "-k",
            &key,
            "-l",
            "5",
            "--",
            "sh",
            "-c",
            script,
            pid_file.to_str().unwrap(),
            marker.to_str().unwrap(),
        ]);
        wait_for_file(&pid_file);
        signal(child.id(), "TERM");
        let status = wait_timeout(&mut child, PROCESS_TIMEOUT).unwrap();
        assert_eq!(status.code(), Some(5));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");
        assert_eq!(ctx.json(&["get-mutex", "-k", &key])["locked"], false);

        std::fs::remove_file(&pid_file).unwrap();
        let mut child = ctx.spawn(&[
            "run",
            "-k",
            &key,
            "-l",
            "5",
            "--",
            "sh",
            "-c",
            "echo $$ > \"$0\"; exec sleep 30",
            pid_file.to_str().unwrap(),
        ]);
        wait_for_file(&pid_file);
        signal(child.id(), "INT");
        let status = wait_timeout(&mut child, PROCESS_TIMEOUT).unwrap();
        assert_eq!(status.code(), Some(130));
        assert_eq!(ctx.json(&["get-mutex", "-k", &key])["locked"], false);
    }

    /// `acquire` waits up to -w for a busy lock, silently when stderr is not a terminal.
    #[test]
    fn acquire_waits_for_expiry() {
        let ctx = Ctx::new(Backend::Sqlite);
        let key = unique("w");
        let first = ctx.json(&["acquire", "-k", &key, "-l", "1"]);
        let started = Instant::now();
        let out = ctx.expect(&["acquire", "-k", &key, "-l", "5", "-w", "10", "--json"], 0);
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
        let second = parse_json_line(&out);
        assert!(second["fencing_token"].as_i64() > first["fencing_token"].as_i64());
    }

    /// On a terminal, a waiting `acquire` says what it waits for; an interactive `run` (stdin
    /// a terminal) passes the exit code on. Uses util-linux `script` for the terminal.
    #[test]
    fn terminal_waiting_indicator_and_interactive_run() {
        if Command::new("script").arg("--version").output().is_err() {
            eprintln!("skipped: util-linux `script` is not installed");
            return;
        }
        let ctx = Ctx::new(Backend::Sqlite);
        let key = unique("tty");
        ctx.json(&["acquire", "-k", &key, "-l", "1.5"]);
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let base = format!(
            "{} -c {} --database-url {} -t {}",
            quote(BIN),
            quote(ctx.config.to_str().unwrap()),
            quote(&ctx.url),
            quote(&ctx.tenant)
        );
        let in_terminal = |command: String| {
            let mut cmd = Command::new("script");
            cmd.args(["-qefc", &command, "/dev/null"]);
            for var in ["DATABASE_URL", "DB_LOCKS_TENANT"] {
                cmd.env_remove(var);
            }
            exec(cmd)
        };
        let out = in_terminal(format!("{base} acquire -k {} -w 10 --json", quote(&key)));
        assert_eq!(code(&out), 0, "{}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!("waiting for mutex `{key}`")),
            "{text}"
        );

        let out = in_terminal(format!("{base} run -k {}-2 -- sh -c 'exit 4'", quote(&key)));
        assert_eq!(code(&out), 4, "{}", stdout(&out));
    }
}
