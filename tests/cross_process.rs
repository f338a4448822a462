//! Exclusion across processes: this test binary starts copies of itself as workers
//! (`worker_process_entry`), which contend through the real store of each covered backend.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use db_locks::LockOptions;
use support::{covered_backends, unique, Backend};

const WORKER_ENV: &str = "DB_LOCKS_CROSS_PROCESS_WORKER";

/// Starts a worker process running `spec` (see `worker_process_entry`).
fn spawn_worker(spec: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_process_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, spec)
        .env("DB_LOCKS_TEST_SQLITE_PATH", support::sqlite_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start worker process")
}

/// Not a test of its own: the body of the worker processes that the tests below start.
#[test]
#[ignore = "entry point of the worker processes started by the cross-process tests"]
fn worker_process_entry() {
    let spec = std::env::var(WORKER_ENV).expect("started by a cross-process test");
    let parts: Vec<&str> = spec.split('|').collect();
    let backend = Backend::from_name(parts[1]);
    let manager = backend.manager("cross-process");
    match parts[0] {
        // count|backend|key|counter file|iterations: read-sleep-write a shared file counter
        // under the lock; any overlap between processes loses an update.
        "count" => {
            let (key, path, n): (&str, &Path, u32) =
                (parts[2], Path::new(parts[3]), parts[4].parse().unwrap());
            let opts = LockOptions::new().lease(Duration::from_secs(10));
            for _ in 0..n {
                let guard = manager
                    .try_lock_for(key, Duration::from_secs(120), &opts)
                    .unwrap()
                    .expect("granted within two minutes");
                let seen: u64 = std::fs::read_to_string(path)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
                guard.ensure_held().unwrap();
                std::fs::write(path, (seen + 1).to_string()).unwrap();
                guard.release().unwrap();
            }
        }
        // hold|backend|key|lease ms: take the lock, say so, and hang until killed.
        "hold" => {
            let opts = LockOptions::new().lease(Duration::from_millis(parts[3].parse().unwrap()));
            let guard = manager.try_lock(parts[2], &opts).unwrap().expect("free");
            println!("HELD {}", guard.fencing_token());
            // Killed long before this, unless the test that started it failed.
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown worker mode {other}"),
    }
}

#[test]
fn processes_exclude_each_other() {
    for backend in covered_backends() {
        let key = unique("cross-process-count");
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("counter");
        std::fs::write(&counter, "0").unwrap();
        let (workers, iterations) = (4, 12);
        let spec = format!(
            "count|{}|{key}|{}|{iterations}",
            backend.name(),
            counter.display()
        );
        let children: Vec<Child> = (0..workers).map(|_| spawn_worker(&spec)).collect();
        for mut child in children {
            assert!(
                child.wait().unwrap().success(),
                "{}: a worker failed",
                backend.name()
            );
        }
        let total: u32 = std::fs::read_to_string(&counter)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            total,
            workers * iterations,
            "{}: lost updates across processes",
            backend.name()
        );
    }
}

#[test]
fn killed_holder_is_taken_over_after_its_lease() {
    for backend in covered_backends() {
        let key = unique("cross-process-kill");
        let lease = Duration::from_millis(1_500);
        let mut child = spawn_worker(&format!(
            "hold|{}|{key}|{}",
            backend.name(),
            lease.as_millis()
        ));
        // Kept open until the worker is killed, so its output never meets a closed pipe.
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let child_token: i64 = loop {
            let mut line = String::new();
            assert!(
                output.read_line(&mut line).unwrap() > 0,
                "worker ended without the lock"
            );
            // libtest may print "test worker_process_entry ... " on the same line first.
            if let Some((_, token)) = line.trim().split_once("HELD ") {
                break token.parse().unwrap();
            }
        };

        let manager = backend.manager("cross-process");
        let opts = LockOptions::new().lease(Duration::from_secs(5));
        // While the holder lives, its heartbeat keeps the lock past its lease.
        std::thread::sleep(lease * 2);
        assert!(
            manager.try_lock(&key, &opts).unwrap().is_none(),
            "{}: live holder lost its lock",
            backend.name()
        );

        child.kill().unwrap(); // SIGKILL: no release, no more heartbeats
        child.wait().unwrap();
        let killed_at = Instant::now();
        let guard = manager
            .try_lock_for(&key, Duration::from_secs(30), &opts)
            .unwrap()
            .expect("granted after the holder died");
        assert!(
            guard.fencing_token() > child_token,
            "{}: fencing token did not grow",
            backend.name()
        );
        assert!(
            killed_at.elapsed() < Duration::from_secs(25),
            "{}: takeover took {:?}",
            backend.name(),
            killed_at.elapsed()
        );
    }
}
