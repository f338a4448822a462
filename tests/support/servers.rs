//! Private server instances on free loopback ports, for tests that restart or crash a
//! server: the shared servers the other tests use are never touched.

use std::path::PathBuf;
use std::process::Command;
#[cfg(feature = "redis")]
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
use parking_lot::Mutex;

/// A free loopback port (free when this returns; taken soon after by the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL cluster of its own (initdb, pg_ctl), in a temporary directory.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root: the cluster then belongs to `postgres`.
    as_postgres: bool,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/services.sh)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres"]).arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let pg = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program).display().to_string();
        let cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]).args(args);
            c
        } else {
            let mut c = Command::new(&program);
            c.args(args);
            c
        };
        run(cmd, &program);
    }

    /// Starts (or starts again) the server, and waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        wait_for_port(self.port, "PostgreSQL");
    }

    /// Stops the server the hard way (no checkpoint, every connection dropped), as a crash
    /// of the server process would.
    pub fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl").display().to_string();
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", &program])
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
    }
}

/// A Redis server of its own, with or without an append-only file (`appendfsync always`).
#[cfg(feature = "redis")]
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    aof: bool,
    child: Mutex<Option<Child>>,
}

#[cfg(feature = "redis")]
impl PrivateRedis {
    pub fn start(aof: bool) -> PrivateRedis {
        let redis = PrivateRedis {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            aof,
            child: Mutex::new(None),
        };
        redis.start_server();
        redis
    }

    /// Starts (or starts again) the server, and waits until it accepts connections.
    pub fn start_server(&self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        *self.child.lock() = Some(child);
        wait_for_port(self.port, "Redis");
        // Listening comes before the AOF is loaded: wait until it answers.
        let client = redis::Client::open(self.url()).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ready.is_ok() {
                return;
            }
            assert!(Instant::now() < until, "Redis did not answer: {ready:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL): what it did not write to its append-only file is gone.
    pub fn crash(&self) {
        if let Some(mut child) = self.child.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[cfg(feature = "redis")]
impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.crash();
    }
}
