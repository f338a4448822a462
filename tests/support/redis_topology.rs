//! Private Redis deployments (TLS, Sentinel, Cluster) on free loopback ports, for tests that
//! kill servers or force failovers: the shared ones of `scripts/services.sh` (TLS 6380-6381,
//! Sentinel 6391-6392 and 26391-26393, Cluster 7001-7006) are never touched.
//!
//! Each is started by `scripts/redis_topologies.sh <kind> --dir <temp dir> --base-port <B>`
//! (Debian's redis-server and redis-cli, openssl for the certificates), and stopped (every
//! server SIGKILLed) and removed on drop.
//!
//! Ports, as offsets from the base port B (the script's `--base-port` map):
//!
//! | offset        | server                                                              |
//! |---------------|---------------------------------------------------------------------|
//! | +0            | TLS only, no client certificate asked (`--tls-auth-clients no`)      |
//! | +1            | TLS only, client certificate required (`--tls-auth-clients yes`)     |
//! | +10, +11      | Sentinel group: primary (at first) and its replica                   |
//! | +20, +21, +22 | sentinels, master name [`SENTINEL_MASTER_NAME`], quorum 2             |
//! | +30 .. +35    | Redis Cluster nodes (3 primaries, 3 replicas)                        |
//! | +40 .. +45    | their cluster bus ports (`--cluster-port`)                           |
//!
//! Certificates, in [`PrivateTopology::tls_dir`]: `ca.crt ca.key server.crt server.key
//! client.crt client.key` (server: SAN IP:127.0.0.1 and DNS:localhost).
//!
//! Every server binds 127.0.0.1, keeps nothing on disk and allows `DEBUG` (e.g.
//! `DEBUG SLEEP 5` to make a primary unresponsive). Sentinels: down-after 1 s, failover
//! timeout 5 s. Cluster: node timeout 2 s.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// TLS, no client certificate asked.
pub const TLS_NO_CLIENT_AUTH: u16 = 0;
/// TLS, client certificate required.
pub const TLS_CLIENT_AUTH: u16 = 1;
/// The Sentinel group's first primary (after a failover, ask [`PrivateTopology::sentinel_primary`]).
pub const SENTINEL_PRIMARY: u16 = 10;
/// The Sentinel group's first replica.
pub const SENTINEL_REPLICA: u16 = 11;
/// The three sentinels.
pub const SENTINELS: [u16; 3] = [20, 21, 22];
/// The six cluster nodes (which are primaries is up to `redis-cli --cluster create`, and to
/// failovers since: ask `CLUSTER NODES`).
pub const CLUSTER_NODES: [u16; 6] = [30, 31, 32, 33, 34, 35];
/// A cluster node's bus port is its port plus this.
pub const CLUSTER_BUS: u16 = 10;
/// The name the sentinels monitor the group under.
pub const SENTINEL_MASTER_NAME: &str = "db-locks-primary";

/// Base ports are taken in steps of `BLOCK`, from `FIRST_BASE` to `LAST_BASE`: a block
/// B..B+45 stays below 32768, out of Linux's ephemeral port range, where the outgoing
/// connections of other tests could take a port between the check and the server's bind.
const BLOCK: u16 = 50;
const FIRST_BASE: u16 = 20_000;
const LAST_BASE: u16 = 32_700;

/// The state directory of the shared deployments `scripts/services.sh` starts (through
/// `scripts/redis_topologies.sh all`): `$DB_LOCKS_REDIS_DIR`, else `/tmp/db-locks-redis`. Their
/// certificates are in its `tls` subdirectory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("DB_LOCKS_REDIS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/db-locks-redis"))
}

/// A Redis deployment of its own: `kind` is `tls`, `sentinel`, `cluster` or `all`.
pub struct PrivateTopology {
    dir: PathBuf,
    base_port: u16,
    kind: &'static str,
}

impl PrivateTopology {
    /// Starts the deployment on a free block of loopback ports and waits until it is healthy.
    /// Panics, with the script's output, if it cannot.
    pub fn start(kind: &'static str) -> PrivateTopology {
        let offsets = offsets(kind);
        let mut last = String::new();
        for _attempt in 0..3 {
            let base_port = reserve_base(&offsets);
            let dir = std::env::temp_dir().join(format!(
                "db-locks-redis-{kind}-{}-{base_port}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let topology = PrivateTopology {
                dir,
                base_port,
                kind,
            };
            let out = topology.script(&[kind, "--base-port", &base_port.to_string()]);
            if out.status.success() {
                return topology;
            }
            last = report(&out);
            // Stops what did start, removes the directory, frees the ports.
            drop(topology);
            // Another process took one of the ports after the check: try another block.
            if !last.contains("in use") {
                break;
            }
        }
        panic!("scripts/redis_topologies.sh {kind} failed:\n{last}");
    }

    /// The port at `offset` from the base (see the module's table).
    pub fn port(&self, offset: u16) -> u16 {
        self.base_port + offset
    }

    pub fn base_port(&self) -> u16 {
        self.base_port
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// `redis://127.0.0.1:<port>` of the three sentinels.
    pub fn sentinel_urls(&self) -> Vec<String> {
        SENTINELS.iter().map(|&o| url(self.port(o))).collect()
    }

    /// `redis://127.0.0.1:<port>` of the six cluster nodes.
    pub fn cluster_urls(&self) -> Vec<String> {
        CLUSTER_NODES.iter().map(|&o| url(self.port(o))).collect()
    }

    /// `rediss://127.0.0.1:<port>` of the TLS server that requires a client certificate, or
    /// of the one that does not. The certificates are in [`Self::tls_dir`].
    pub fn tls_url(&self, client_cert: bool) -> String {
        let offset = if client_cert {
            TLS_CLIENT_AUTH
        } else {
            TLS_NO_CLIENT_AUTH
        };
        format!("rediss://127.0.0.1:{}", self.port(offset))
    }

    /// Where `ca.crt ca.key server.crt server.key client.crt client.key` are.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The state directory (pidfiles, `<port>.log` server logs, data directories).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port of the Sentinel group's current primary, as the first sentinel that
    /// answers says.
    pub fn sentinel_primary(&self) -> u16 {
        for offset in SENTINELS {
            let out = self.redis_cli(
                self.port(offset),
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER_NAME],
            );
            if let Some(port) = out.lines().nth(1).and_then(|l| l.trim().parse().ok()) {
                return port;
            }
        }
        panic!("no sentinel of {} names a primary", self.dir.display());
    }

    /// Kills (SIGKILL) the server on `port`, by its pidfile, and waits until it is gone.
    pub fn kill_port(&self, port: u16) {
        let pidfile = self.dir.join(format!("{port}.pid"));
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("no server on {port} ({}: {e})", pidfile.display()));
        let pid = pid.trim();
        let out = Command::new("kill")
            .args(["-KILL", pid])
            .output()
            .expect("kill");
        assert!(
            out.status.success(),
            "kill -KILL {pid} (port {port}): {}",
            report(&out)
        );
        let until = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) {
            assert!(
                Instant::now() < until,
                "the server on {port} (pid {pid}) is still alive"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs the script again: it restarts every dead server of the deployment (a Sentinel
    /// group's old primary comes back as the replica of the current one; dead cluster nodes
    /// rejoin) and waits until the deployment is healthy again.
    pub fn restart(&self) {
        let out = self.script(&[self.kind, "--base-port", &self.base_port.to_string()]);
        assert!(
            out.status.success(),
            "scripts/redis_topologies.sh {} (restart) failed:\n{}",
            self.kind,
            report(&out)
        );
    }

    /// Runs `redis-cli -p <port> <args>` (over TLS, with the client certificate, for the TLS
    /// ports) and returns its standard output. Does not check the outcome: a server that is
    /// down yields an empty string (redis-cli's complaint goes to its standard error), an
    /// error reply its text.
    pub fn redis_cli(&self, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-p").arg(port.to_string());
        let tls = matches!(self.kind, "tls" | "all")
            && [TLS_NO_CLIENT_AUTH, TLS_CLIENT_AUTH]
                .iter()
                .any(|&o| self.port(o) == port);
        if tls {
            let certs = self.tls_dir();
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(certs.join("ca.crt"))
                .arg("--cert")
                .arg(certs.join("client.crt"))
                .arg("--key")
                .arg(certs.join("client.key"));
        }
        let out = cmd.args(args).output().unwrap_or_else(|e| {
            panic!("cannot run redis-cli (scripts/services.sh installs it): {e}")
        });
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    }

    fn script(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis_topologies.sh");
        Command::new("bash")
            .arg(&script)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
    }
}

impl Drop for PrivateTopology {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(claims_dir().join(self.base_port.to_string()));
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

fn report(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The offsets `kind` listens on, cluster bus ports included.
fn offsets(kind: &str) -> Vec<u16> {
    let tls = [TLS_NO_CLIENT_AUTH, TLS_CLIENT_AUTH].to_vec();
    let mut sentinel = vec![SENTINEL_PRIMARY, SENTINEL_REPLICA];
    sentinel.extend(SENTINELS);
    let mut cluster = CLUSTER_NODES.to_vec();
    cluster.extend(CLUSTER_NODES.iter().map(|o| o + CLUSTER_BUS));
    match kind {
        "tls" => tls,
        "sentinel" => sentinel,
        "cluster" => cluster,
        "all" => [tls, sentinel, cluster].concat(),
        other => panic!("unknown Redis topology {other} (expected tls, sentinel, cluster, all)"),
    }
}

/// Where blocks of ports are claimed, one directory per base port holding the claimer's pid,
/// so that tests running at once (threads or processes) never pick the same block.
fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("db-locks-redis-ports")
}

/// Claims a base port whose `offsets` are all free on 127.0.0.1 (free when this returns).
fn reserve_base(offsets: &[u16]) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let claims = claims_dir();
    std::fs::create_dir_all(&claims)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", claims.display()));
    let me = std::process::id();
    let blocks = u32::from((LAST_BASE - FIRST_BASE) / BLOCK + 1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let start = me
        .wrapping_mul(7919)
        .wrapping_add(nanos / 1000)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(13));
    for i in 0..blocks {
        let base = FIRST_BASE + ((start.wrapping_add(i) % blocks) as u16) * BLOCK;
        let claim = claims.join(base.to_string());
        if std::fs::create_dir(&claim).is_err() {
            // Claimed: take it over only if its claimer is gone.
            let owner = std::fs::read_to_string(claim.join("pid")).unwrap_or_default();
            let owner = owner.trim();
            if owner.is_empty() || owner == me.to_string() || process_alive(owner) {
                continue;
            }
            let _ = std::fs::remove_dir_all(&claim);
            if std::fs::create_dir(&claim).is_err() {
                continue;
            }
        }
        if std::fs::write(claim.join("pid"), me.to_string()).is_err() {
            let _ = std::fs::remove_dir_all(&claim);
            continue;
        }
        if offsets
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
        let _ = std::fs::remove_dir_all(&claim);
    }
    panic!(
        "no block of {BLOCK} free loopback ports from {FIRST_BASE} to {} (claims in {})",
        LAST_BASE + BLOCK - 1,
        claims.display()
    );
}

/// Whether the process `pid` exists and is not a zombie (Linux /proc).
fn process_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
