//! Redis as it runs in production: ACL users, TLS (a private CA, client certificates),
//! Sentinel failover and Redis Cluster (resharding, a primary lost). The conformance suite
//! runs against the TLS server, the Sentinel group and the cluster that
//! `scripts/redis_topologies.sh` starts (`cargo test --test conformance redis_`); these are
//! the tests that only make sense for one deployment. The failover and resharding tests
//! start private groups on free ports (`support::redis_topology`) and are `#[ignore]`d: the
//! slow run (`scripts/test-slow.sh`) runs them.
#![cfg(feature = "redis")]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use db_locks::{LockError, LockManager, LockOptions, LocksConfig, PermitOptions, SemaphoreBuilder};

use support::redis_topology::default_dir;
use support::{unique, Backend};

/// A raw connection to the plain test server (to manage ACL users).
fn admin() -> redis::Connection {
    let url = Backend::Redis.config("admin").redis_url;
    redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("the Redis test server is not reachable (start it with scripts/services.sh)")
}

/// An ACL user that is deleted when dropped.
struct AclUser {
    name: String,
    password: String,
}

impl AclUser {
    fn new(rules: &str) -> AclUser {
        let user = AclUser {
            name: unique("dbl-user"),
            password: unique("pw"),
        };
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(&user.name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{}", user.password));
        for rule in rules.split_whitespace() {
            cmd.arg(rule);
        }
        cmd.query::<()>(&mut admin()).expect("ACL SETUSER");
        user
    }

    /// A config for `tenant` that logs in as this user.
    fn config(&self, tenant: &str) -> LocksConfig {
        let mut config = Backend::Redis.config(tenant);
        let plain = config.redis_url.trim_start_matches("redis://").to_owned();
        config.redis_url = format!("redis://{}:{}@{plain}", self.name, self.password);
        config
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        let _: redis::RedisResult<()> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.name)
            .query(&mut admin());
    }
}

/// The README's rule for one tenant (`db-locks` prefix), word for word.
fn readme_rule(tenant: &str) -> String {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("ACL SETUSER") && l.contains("~db-locks:{TENANT}:*"))
        .expect("the README gives the ACL rule");
    let rule = line
        .split_once("<password>")
        .map(|(_, rest)| rest)
        .expect("the rule follows the password")
        .trim()
        .trim_end_matches('`');
    rule.replace("TENANT", tenant)
}

/// Everything the library does for a tenant, through a manager of that tenant.
fn exercise(m: &LockManager) -> db_locks::Result<()> {
    let key = unique("acl-key");
    let guard = m.lock(&key, &LockOptions::new().lease(Duration::from_secs(5)))?;
    let record = m.get_mutex(&key)?.expect("the mutex exists");
    assert_eq!(record.version, guard.record().version);
    drop(guard);
    let sem = unique("acl-sem");
    m.create_semaphore(&SemaphoreBuilder::new(&sem, 2).build())?;
    let permit = m.acquire_permit(&sem, &PermitOptions::new())?;
    assert_eq!(m.get_semaphore(&sem)?.expect("exists").busy_count, 1);
    assert_eq!(m.get_semaphore_mutexes(&sem)?.len(), 2);
    assert!(!m.list_mutexes()?.is_empty());
    assert!(!m.list_semaphores()?.is_empty());
    permit.release()?;
    m.delete_semaphore(&sem)?;
    m.delete_mutex(&key, None)?;
    Ok(())
}

#[test]
fn the_readme_acl_rule_is_all_a_tenant_needs() {
    let tenant = unique("acl-t");
    let user = AclUser::new(&readme_rule(&tenant));
    let m = LockManager::connect(&user.config(&tenant)).expect("connects as the ACL user");
    exercise(&m).expect("the README's rule grants every right the library uses");

    // The tenant's release notices reach a waiter of another process (whose polls are a
    // minute apart) as that user: the rule grants the tenant's channel.
    let mut sleepy = user.config(&tenant);
    sleepy.retry_base = Duration::from_secs(60);
    sleepy.retry_max = Duration::from_secs(60);
    let waiter = LockManager::connect(&sleepy).unwrap();
    let key = unique("acl-wake");
    let held = m
        .lock(&key, &LockOptions::new().lease(Duration::from_secs(30)))
        .unwrap();
    let waiting = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let granted = waiter
            .try_lock_for(&key, Duration::from_secs(40), &LockOptions::new())
            .unwrap();
        (granted.is_some(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(700));
    held.release().unwrap();
    let (granted, waited) = waiting.join().unwrap();
    assert!(
        granted && waited < Duration::from_secs(20),
        "waited {waited:?}"
    );
}

#[test]
fn a_user_without_a_right_gets_an_error_that_names_it() {
    let tenant = unique("acl-t");
    let user = AclUser::new(&readme_rule(&tenant));
    // Another tenant's keys are not in the user's key pattern.
    let other = LockManager::connect(&user.config("someone-else")).expect("connects");
    let err = other
        .lock("k", &LockOptions::new().lease(Duration::from_secs(5)))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LockError::Store(_)), "{err:?}");
    assert!(
        text.contains("NOPERM") || text.contains("permission"),
        "{text}"
    );
    assert!(text.contains("ACL rule"), "{text}");
    assert!(!text.contains(&user.password), "{text}");

    // A rule without EVALSHA: the error names the command.
    let rule = readme_rule(&tenant).replace("+evalsha", "");
    let user = AclUser::new(&rule);
    let err = match LockManager::connect(&user.config(&tenant)) {
        Err(e) => e,
        Ok(m) => m
            .lock("k", &LockOptions::new().lease(Duration::from_secs(5)))
            .unwrap_err(),
    };
    let text = err.to_string().to_lowercase();
    assert!(text.contains("evalsha"), "{text}");
    assert!(text.contains("acl rule"), "{text}");

    // A rule without a command that only the scripts call: Redis names the script and its
    // line; the error names the command on that line.
    let rule = readme_rule(&tenant).replace(" +set ", " ");
    let user = AclUser::new(&rule);
    let m = LockManager::connect(&user.config(&tenant)).expect("connects");
    let err = m
        .lock("k", &LockOptions::new().lease(Duration::from_secs(5)))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the script calls SET;"), "{text}");
}

fn tls_config(url: &str) -> LocksConfig {
    let mut config = Backend::Redis.config("tls");
    config.redis_url = url.to_owned();
    config.connect_timeout = Duration::from_secs(3);
    config
}

fn tls_file(name: &str) -> std::path::PathBuf {
    default_dir().join("tls").join(name)
}

/// `rediss://` verifies the server: against the system's roots it fails (the test CA is
/// private), against the CA file it works, and skipping verification works too.
#[test]
fn tls_verifies_the_server_against_the_ca_it_is_given() {
    let url = "rediss://127.0.0.1:6380";
    let err = LockManager::connect(&tls_config(url)).unwrap_err();
    assert!(matches!(err, LockError::Unavailable(_)), "{err:?}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{text}"
    );

    let mut config = tls_config(url);
    config.redis_tls_ca_file = Some(tls_file("ca.crt"));
    exercise(&LockManager::connect(&config).expect("trusted through the CA file")).unwrap();

    let mut config = tls_config(url);
    config.redis_tls_danger_accept_invalid_certs = true;
    exercise(&LockManager::connect(&config).expect("unverified")).unwrap();
}

/// A server that requires a client certificate refuses a client without one.
#[test]
fn tls_client_certificates_are_sent_when_configured() {
    let url = "rediss://127.0.0.1:6381";
    let mut config = tls_config(url);
    config.redis_tls_ca_file = Some(tls_file("ca.crt"));
    assert!(
        LockManager::connect(&config).is_err(),
        "no client certificate"
    );
    config.redis_tls_client_cert_file = Some(tls_file("client.crt"));
    config.redis_tls_client_key_file = Some(tls_file("client.key"));
    exercise(&LockManager::connect(&config).expect("with the client certificate")).unwrap();

    config.redis_tls_client_key_file = None;
    let err = LockManager::connect(&config).unwrap_err();
    assert!(matches!(err, LockError::Config(_)), "{err:?}");
}

/// A URL with a password that cannot connect never shows it, in any deployment form.
#[test]
fn passwords_stay_hidden_in_every_url_form() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for url in [
        format!("rediss://u:hunter2secret@127.0.0.1:{port}"),
        format!("redis+sentinel://u:hunter2secret@127.0.0.1:{port}/svc"),
        format!("redis+cluster://u:hunter2secret@127.0.0.1:{port},127.0.0.1:{port}"),
    ] {
        let mut config = tls_config(&url);
        config.connect_timeout = Duration::from_millis(500);
        let err = LockManager::connect(&config).unwrap_err();
        assert!(!err.to_string().contains("hunter2secret"), "{url}: {err}");
        assert!(
            !format!("{err:?}").contains("hunter2secret"),
            "{url}: {err:?}"
        );
    }
}

// ----- failover and resharding ------------------------------------------------------------

mod failover {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use db_locks::{LockManager, LockOptions, LocksConfig, Provider};
    use parking_lot::Mutex;

    use crate::support::redis_topology::{self, PrivateTopology};
    use crate::support::unique;

    /// The Sentinel group's service name in `scripts/redis_topologies.sh`.
    const SERVICE: &str = "db-locks-primary";

    /// A fenced resource outside the store: it takes a write only with a token at least as
    /// high as every one it has taken for that key, and logs what it took.
    #[derive(Default)]
    pub struct Referee {
        state: Mutex<RefereeState>,
    }

    #[derive(Default)]
    struct RefereeState {
        highest: HashMap<String, i64>,
        /// Critical sections whose first and last write were both taken.
        sections: Vec<(String, i64, Instant, Instant)>,
        /// Every grant as its holder saw it: when, which key, which token.
        grants: Vec<(Instant, String, i64)>,
        refused: u64,
    }

    impl Referee {
        fn granted(&self, key: &str, token: i64) {
            self.state
                .lock()
                .grants
                .push((Instant::now(), key.to_owned(), token));
        }

        fn write(&self, key: &str, token: i64) -> bool {
            let mut s = self.state.lock();
            let highest = s.highest.entry(key.to_owned()).or_insert(i64::MIN);
            if token < *highest {
                s.refused += 1;
                return false;
            }
            *highest = token;
            true
        }

        fn section(&self, key: &str, token: i64, enter: Instant) {
            self.state
                .lock()
                .sections
                .push((key.to_owned(), token, enter, Instant::now()));
        }

        /// Pairs of taken critical sections of one key, by different grants, that overlap.
        fn overlaps(&self) -> usize {
            let s = self.state.lock();
            let mut n = 0;
            for (i, a) in s.sections.iter().enumerate() {
                for b in &s.sections[i + 1..] {
                    if a.0 == b.0 && a.1 == b.1 && a.2 < b.3 && b.2 < a.3 {
                        // The same token twice: two holders of one grant.
                        n += 1;
                    }
                }
            }
            n
        }

        /// Grants of one key whose token is not above the one granted before it.
        fn backwards(&self) -> Vec<String> {
            let s = self.state.lock();
            let mut last: HashMap<&str, i64> = HashMap::new();
            let mut grants: Vec<_> = s.grants.iter().collect();
            grants.sort_by_key(|g| g.0);
            grants
                .into_iter()
                .filter_map(|(_, key, token)| {
                    let previous = last.insert(key, *token);
                    previous
                        .filter(|p| token <= p)
                        .map(|p| format!("{key}: {token} after {p}"))
                })
                .collect()
        }
    }

    /// What one run saw.
    #[derive(Default, Debug)]
    pub struct Tally {
        sections: AtomicU64,
        /// When the fault was injected.
        fault_at: std::sync::OnceLock<Instant>,
        /// Long holds that spanned the fault and still held the lease at their end.
        kept: AtomicU64,
        /// Guards that reported their lease lost (any, short or long).
        lost: AtomicU64,
        /// Of those, reported later than their local deadline plus a tolerance.
        late: AtomicU64,
        errors: AtomicU64,
    }

    /// Threads that take, hold and release keys until `stop`, writing through the referee:
    /// one thread per `long` key holds it for three leases at a time (so its renewals cross
    /// the fault), two threads per `short` key take turns with short critical sections.
    pub fn workload(
        config: &LocksConfig,
        (long, short): (&[String], &[String]),
        referee: &Arc<Referee>,
        tally: &Arc<Tally>,
        stop: &Arc<AtomicBool>,
    ) -> Vec<thread::JoinHandle<()>> {
        let lease = Duration::from_secs(3);
        let long = long.iter().map(|key| (key.clone(), true));
        let short = short
            .iter()
            .flat_map(|key| [(key.clone(), false), (key.clone(), false)]);
        long.chain(short)
            .map(|(key, long)| {
                let (referee, tally, stop) = (referee.clone(), tally.clone(), stop.clone());
                let config = config.clone();
                thread::spawn(move || {
                    let m = loop {
                        match LockManager::connect(&config) {
                            Ok(m) => break m,
                            Err(_) if !stop.load(Ordering::SeqCst) => {
                                thread::sleep(Duration::from_millis(200))
                            }
                            Err(e) => panic!("cannot connect: {e}"),
                        }
                    };
                    let opts = LockOptions::new().lease(lease);
                    while !stop.load(Ordering::SeqCst) {
                        let guard = match m.try_lock_for(&key, Duration::from_secs(2), &opts) {
                            Ok(Some(g)) => g,
                            Ok(None) => continue,
                            Err(_) => {
                                tally.errors.fetch_add(1, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        };
                        let token = guard.fencing_token();
                        referee.granted(&key, token);
                        let hold = if long {
                            lease * 3
                        } else {
                            Duration::from_millis(30)
                        };
                        let started = Instant::now();
                        let mut first = None;
                        let mut held = true;
                        while started.elapsed() < hold {
                            // Read in this order, a lease past its deadline that still
                            // reads as held was reported late (deadlines only move on).
                            let now = Instant::now();
                            let still = guard.is_held();
                            if still && now > guard.local_deadline() + Duration::from_millis(200) {
                                tally.late.fetch_add(1, Ordering::SeqCst);
                            }
                            if !still {
                                held = false;
                                break;
                            }
                            if referee.write(&key, token) {
                                first.get_or_insert_with(Instant::now);
                            } else {
                                // A later grant's token was taken: this holder is stale.
                                break;
                            }
                            thread::sleep(Duration::from_millis(10));
                        }
                        if held && guard.is_held() && referee.write(&key, token) {
                            if let Some(enter) = first {
                                referee.section(&key, token, enter);
                                tally.sections.fetch_add(1, Ordering::SeqCst);
                            }
                            let spanned = tally.fault_at.get().is_some_and(|&t| t > started);
                            if long && spanned {
                                tally.kept.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        if !guard.is_held() {
                            tally.lost.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = guard.release();
                    }
                })
            })
            .collect()
    }

    /// Runs the workload for `secs`, calling `fault` after 3 s, and checks the referee.
    fn run(config: LocksConfig, name: &str, secs: u64, fault: impl FnOnce()) {
        let long: Vec<String> = (0..2).map(|i| unique(&format!("held-{i}"))).collect();
        let short: Vec<String> = (0..2).map(|i| unique(&format!("turns-{i}"))).collect();
        let (referee, tally) = (Arc::new(Referee::default()), Arc::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = workload(&config, (&long, &short), &referee, &tally, &stop);
        thread::sleep(Duration::from_secs(3));
        let fault_started = Instant::now();
        tally.fault_at.set(fault_started).unwrap();
        fault();
        eprintln!("{name}: the fault took {:?}", fault_started.elapsed());
        thread::sleep(Duration::from_secs(secs.saturating_sub(3)));
        stop.store(true, Ordering::SeqCst);
        let stopped = Instant::now();
        for t in threads {
            t.join().expect("a worker panicked");
        }
        let refused = referee.state.lock().refused;
        eprintln!(
            "{name}: {} critical sections, long holds that kept their lease across the fault {}, leases reported lost {} \
             ({} late), stale writes refused by fencing {refused}, request errors {}, overlaps {}",
            tally.sections.load(Ordering::SeqCst),
            tally.kept.load(Ordering::SeqCst),
            tally.lost.load(Ordering::SeqCst),
            tally.late.load(Ordering::SeqCst),
            tally.errors.load(Ordering::SeqCst),
            referee.overlaps(),
        );
        assert_eq!(referee.overlaps(), 0, "two holders of one grant");
        assert_eq!(
            referee.backwards(),
            Vec::<String>::new(),
            "tokens went backwards"
        );
        assert_eq!(tally.late.load(Ordering::SeqCst), 0, "a loss reported late");
        assert!(
            tally.sections.load(Ordering::SeqCst) > 50,
            "the workload hardly ran: {tally:?}"
        );
        // Work resumed after the fault: grants in the last seconds.
        let last = referee.state.lock().grants.iter().map(|g| g.0).max();
        let since = last.map(|t| stopped.saturating_duration_since(t));
        assert!(
            since.is_some_and(|t| t < Duration::from_secs(4)),
            "no grants after the fault: the last was {since:?} before the end"
        );
    }

    fn config(url: String, tenant: &str) -> LocksConfig {
        let mut config = LocksConfig::new(tenant).with_redis_url(url);
        config.provider = Provider::Redis;
        config.io_timeout = Duration::from_secs(1);
        config.connect_timeout = Duration::from_secs(1);
        config.retry_base = Duration::from_millis(10);
        config.retry_max = Duration::from_millis(100);
        config
    }

    /// The port of the current primary, as the first sentinel that answers says.
    fn sentinel_primary(t: &PrivateTopology) -> u16 {
        for url in t.sentinel_urls() {
            let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
            let out = t.redis_cli(port, &["SENTINEL", "get-master-addr-by-name", SERVICE]);
            if let Some(p) = out.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                return p;
            }
        }
        panic!("no sentinel names a primary");
    }

    /// A primary killed (SIGKILL) under held, renewing guards; the sentinels promote the
    /// replica, the store follows it.
    #[test]
    #[ignore = "slow: starts a private Sentinel group (scripts/test-slow.sh runs it)"]
    fn sentinel_failover_under_renewing_guards() {
        let t = PrivateTopology::start("sentinel");
        let hosts: Vec<String> = t
            .sentinel_urls()
            .iter()
            .map(|u| u.trim_start_matches("redis://").to_owned())
            .collect();
        let url = format!("redis+sentinel://{}/{SERVICE}", hosts.join(","));
        let primary = sentinel_primary(&t);
        run(
            config(url, &unique("sentinel")),
            "sentinel failover",
            15,
            || {
                t.kill_port(primary);
            },
        );
        assert_ne!(
            sentinel_primary(&t),
            primary,
            "the sentinels promoted the replica"
        );
    }

    /// The node that owns `tenant`'s slot, and the cluster's node table.
    fn slot_owner(t: &PrivateTopology, tenant: &str) -> (u16, String, Vec<(String, u16, bool)>) {
        // A node that answers (a test may have killed some).
        let any = redis_topology::CLUSTER_NODES
            .iter()
            .map(|&offset| t.port(offset))
            .find(|&port| t.redis_cli(port, &["PING"]).contains("PONG"))
            .expect("a live cluster node");
        let slot = t
            .redis_cli(
                any,
                &["CLUSTER", "KEYSLOT", &format!("db-locks:{{{tenant}}}:m:k")],
            )
            .trim()
            .to_owned();
        let slot: u16 = slot.parse().expect("a slot number");
        let nodes = t.redis_cli(any, &["CLUSTER", "NODES"]);
        let mut table = Vec::new();
        let mut owner = None;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let master = f[2].contains("master");
            table.push((f[0].to_owned(), port, master));
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        owner = Some((port, f[0].to_owned()));
                    }
                }
            }
        }
        let (port, id) = owner.expect("the slot has an owner");
        (port, format!("{id} {slot}"), table)
    }

    fn cluster_url(t: &PrivateTopology) -> String {
        let hosts: Vec<String> = t
            .cluster_urls()
            .iter()
            .map(|u| u.trim_start_matches("redis://").to_owned())
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The primary owning the tenant's slot is killed; its replica takes over.
    #[test]
    #[ignore = "slow: starts a private Redis Cluster (scripts/test-slow.sh runs it)"]
    fn cluster_failover_under_renewing_guards() {
        let t = PrivateTopology::start("cluster");
        let tenant = unique("cluster");
        let (owner, _, _) = slot_owner(&t, &tenant);
        run(
            config(cluster_url(&t), &tenant),
            "cluster failover",
            15,
            || {
                t.kill_port(owner);
            },
        );
        let (new_owner, _, _) = slot_owner(&t, &tenant);
        assert_ne!(new_owner, owner, "the replica took the slot over");
    }

    /// The tenant's slot moves to another primary, key by key (`MIGRATING`/`IMPORTING`,
    /// `MIGRATE`), while guards renew: `ASK`, `TRYAGAIN` and `MOVED` on the way.
    #[test]
    #[ignore = "slow: starts a private Redis Cluster (scripts/test-slow.sh runs it)"]
    fn cluster_resharding_under_renewing_guards() {
        let t = PrivateTopology::start("cluster");
        let tenant = unique("reshard");
        let (owner, id_slot, table) = slot_owner(&t, &tenant);
        let (src_id, slot) = id_slot.split_once(' ').unwrap();
        let (dst_id, dst) = table
            .iter()
            .find(|(id, _, master)| *master && id != src_id)
            .map(|(id, port, _)| (id.clone(), *port))
            .expect("another primary");
        run(
            config(cluster_url(&t), &tenant),
            "cluster resharding",
            12,
            || {
                t.redis_cli(dst, &["CLUSTER", "SETSLOT", slot, "IMPORTING", src_id]);
                t.redis_cli(owner, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &dst_id]);
                loop {
                    let keys = t.redis_cli(owner, &["CLUSTER", "GETKEYSINSLOT", slot, "10"]);
                    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
                    if keys.is_empty() {
                        break;
                    }
                    for key in keys {
                        let port = dst.to_string();
                        t.redis_cli(
                            owner,
                            &["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", key],
                        );
                        // Slowly: guards renew while the slot is split over two nodes.
                        thread::sleep(Duration::from_millis(100));
                    }
                }
                for (_, port, master) in &table {
                    if *master {
                        t.redis_cli(*port, &["CLUSTER", "SETSLOT", slot, "NODE", &dst_id]);
                    }
                }
            },
        );
        let (new_owner, _, _) = slot_owner(&t, &tenant);
        assert_eq!(new_owner, dst, "the slot moved");
    }
}
