//! A loopback TCP proxy that injects network faults between a client and a server: delays,
//! stalls (it accepts and takes the bytes, so the kernel acknowledges them, but forwards
//! nothing, as a frozen server would), cuts (FIN) and resets (RST).
//!
//! Each connection is two pump threads, one per direction. A pump forwards what it reads
//! unless the proxy is stalled, in which case it holds the bytes until the stall ends.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// What the proxy does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk waits this long before it is forwarded.
    Delay(Duration),
    /// Nothing is forwarded (in either direction) until the mode changes.
    Stall,
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    /// Both sockets of every connection, to cut or reset them.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    closed: AtomicBool,
    accepted: AtomicU64,
    /// Chunks read from clients: on loopback, one per request a client sends.
    client_writes: AtomicU64,
}

/// A running proxy; it stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy on a free loopback port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            conns: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            client_writes: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if accept_shared.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                        accept_shared.conns.lock().push((c3, s3));
                    }
                    pump(client, s2, accept_shared.clone(), true);
                    pump(server, c2, accept_shared.clone(), false);
                }
            })
            .unwrap();
        FaultProxy { addr, shared }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock() = mode;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Chunks the clients have sent so far. On loopback a client's request (a statement with
    /// its parameters, a Redis command) arrives in one chunk, so this counts round trips.
    pub fn client_writes(&self) -> u64 {
        self.shared.client_writes.load(Ordering::SeqCst)
    }

    /// Closes every open connection in both directions (the client reads end-of-file).
    pub fn cut(&self) {
        for (client, server) in self.shared.conns.lock().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Resets every open connection (the client gets ECONNRESET).
    pub fn reset(&self) {
        for (client, server) in self.shared.conns.lock().drain(..) {
            for socket in [&client, &server] {
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.set(Mode::Pass);
        self.cut();
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Forwards `from` to `to` on a thread of its own, as the proxy's mode says; `from_client`:
/// counts what it reads in `client_writes`.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>, from_client: bool) {
    let _ = std::thread::Builder::new()
        .name("fault-proxy-pump".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if from_client {
                    shared.client_writes.fetch_add(1, Ordering::SeqCst);
                }
                loop {
                    let mode = *shared.mode.lock();
                    match mode {
                        Mode::Stall if !shared.closed.load(Ordering::SeqCst) => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Mode::Delay(d) => {
                            std::thread::sleep(d);
                            break;
                        }
                        _ => break,
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}
