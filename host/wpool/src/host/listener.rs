//! The dial-back transport of workers started through a launcher (`srun`,
//! `ssh`): the host listens on a TCP port, hands each worker the address and
//! a one-time random token on the launcher's stdin, and the worker connects
//! back and presents the token. Frames then travel over that connection; the
//! launcher's stdio carries only the one handshake line (srun's stdio is
//! line-buffered and slow: tens of milliseconds per message).
//!
//! The host's side only: owns the listening socket and the tokens it waits
//! for, nothing else. The line and greeting formats are
//! [`crate::wire::dial`]'s, the worker's dialling is `worker::dial`, what
//! travels over the connection is the ordinary protocol, and processes
//! belong to the supervisor. The token authenticates a worker; it does not encrypt
//! anything (items and results cross the network in clear).

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use socket2::SockRef;
use subtle::ConstantTimeEq;

use crate::wire::dial::{self, Greeting, Token};

/// The environment variable that confines launched workers to loopback:
/// set to anything but empty or `0`, a pool with a launcher whose listen
/// address (the default included) is not loopback fails to build. The test
/// command sets it, because the machines this is tested on allow test
/// traffic only to loopback; a real cluster leaves it unset.
pub const LOOPBACK_ONLY_VAR: &str = "WPOOL_LOOPBACK_ONLY";

/// Whether [`LOOPBACK_ONLY_VAR`] is in force.
pub(crate) fn loopback_only() -> bool {
    std::env::var_os(LOOPBACK_ONLY_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The IP address a listener for launched workers binds: the one asked for,
/// else this machine's (see [`default_ip`]). The loopback guard checks this
/// same value, so that it sees what [`Listener::bind`] will do.
pub(crate) fn listen_ip(addr: Option<SocketAddr>) -> IpAddr {
    addr.map_or_else(default_ip, |a| a.ip())
}

/// How long a connection may take to present its token.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

type Waiting = Arc<Mutex<HashMap<Token, Sender<TcpStream>>>>;

/// The host's listening socket and the workers it is waiting for.
pub(crate) struct Listener {
    socket: Arc<TcpListener>,
    addr: SocketAddr,
    waiting: Waiting,
    rejected: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    /// Listens on `addr`, or on this machine's address (see
    /// [`default_ip`]) with a free port.
    pub(crate) fn bind(addr: Option<SocketAddr>) -> io::Result<Listener> {
        let addr = addr.unwrap_or_else(|| SocketAddr::new(listen_ip(None), 0));
        let socket = Arc::new(TcpListener::bind(addr)?);
        let mut addr = socket.local_addr()?;
        if addr.ip().is_unspecified() {
            // Listening everywhere: workers need one concrete address.
            addr.set_ip(default_ip());
        }
        let waiting: Waiting = Arc::default();
        let rejected = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, waiting, rejected, stop) =
                (Arc::clone(&socket), Arc::clone(&waiting), Arc::clone(&rejected), Arc::clone(&stop));
            thread::Builder::new()
                .name("wpool-listener".into())
                .spawn(move || accept_loop(&socket, &waiting, &rejected, &stop))?
        };
        Ok(Listener { socket, addr, waiting, rejected, stop, thread: Some(thread) })
    }

    /// The address workers dial.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections refused so far (no or wrong token).
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// A fresh token, and where its worker's connection will arrive.
    pub(crate) fn expect(&self) -> io::Result<(Token, Receiver<TcpStream>)> {
        let token = random_token()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(token, tx);
        Ok((token, rx))
    }

    /// Stops waiting for `token` (its worker ended without connecting): a
    /// late connection with it is refused.
    pub(crate) fn forget(&self, token: &Token) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// The handshake line written to a launcher's stdin.
    pub(crate) fn line(&self, token: &Token) -> String {
        dial::line(self.addr, token)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking `accept` (Linux makes it fail). The socket stays
        // open until both sides drop their `Arc`.
        let _ = SockRef::from(&*self.socket).shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections being authenticated at once, at most; more are refused
/// until some finish (each has `AUTH_TIMEOUT` to present its token).
const MAX_AUTHENTICATING: usize = 512;

fn accept_loop(socket: &TcpListener, waiting: &Waiting, rejected: &Arc<AtomicU64>, stop: &AtomicBool) {
    let busy = Arc::new(AtomicU64::new(0));
    for conn in socket.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok(conn) => conn,
            // Out of fds or similar: do not spin.
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if busy.load(Ordering::SeqCst) >= MAX_AUTHENTICATING as u64 {
            rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Each connection gets its own short-lived thread, so that one that
        // never sends its token cannot hold up the others.
        busy.fetch_add(1, Ordering::SeqCst);
        let (waiting, rejected, done) = (Arc::clone(waiting), Arc::clone(rejected), Arc::clone(&busy));
        let spawned = thread::Builder::new().name("wpool-auth".into()).spawn(move || {
            authenticate(conn, &waiting, &rejected);
            done.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads the magic and the token; hands the connection to the worker that
/// token was issued for. Anything else is counted and closed.
fn authenticate(mut conn: TcpStream, waiting: &Waiting, rejected: &AtomicU64) {
    let mut greeting: Greeting = [0u8; 24];
    let read = conn.set_read_timeout(Some(AUTH_TIMEOUT)).and_then(|()| conn.read_exact(&mut greeting));
    let sender = if let Some(presented) = read.ok().and_then(|()| dial::presented_token(&greeting)) {
        let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Compare in constant time; each token is used once.
        let found = waiting.keys().find(|t| bool::from(t.ct_eq(&presented))).copied();
        found.and_then(|t| waiting.remove(&t))
    } else {
        None
    };
    match sender {
        Some(sender) if conn.set_read_timeout(None).is_ok() && dial::tune(&conn).is_ok() => {
            // The worker may have been given up on meanwhile: then this drops.
            let _ = sender.send(conn);
        }
        _ => {
            rejected.fetch_add(1, Ordering::Relaxed);
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn random_token() -> io::Result<Token> {
    let mut token = [0u8; 16];
    getrandom::fill(&mut token)?;
    Ok(token)
}

/// The address workers dial when none was given: the first non-loopback
/// IPv4 address this host's name resolves to, else the first non-loopback
/// IPv4 address of an interface that is up (Debian maps the host name to
/// 127.0.1.1), else loopback (a single machine).
pub(crate) fn default_ip() -> IpAddr {
    let by_name = gethostname::gethostname()
        .into_string()
        .ok()
        .and_then(|h| (h.as_str(), 0).to_socket_addrs().ok())
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback());
    by_name.or_else(interface_ipv4).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn interface_ipv4() -> Option<IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find(|i| i.is_oper_up() && i.ip().is_ipv4() && !i.is_loopback())
        .map(|i| i.ip())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn tokens_are_random() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_connection_with_a_wrong_token_is_refused_and_the_right_one_accepted() {
        let listener = Listener::bind(Some("127.0.0.1:0".parse().unwrap())).unwrap();
        let (token, arrived) = listener.expect().unwrap();
        // No token at all: the host closes the connection.
        let mut stranger = TcpStream::connect(listener.addr()).unwrap();
        stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        stranger.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(stranger.read(&mut buf).unwrap_or(0), 0);
        // A wrong token: closed too, and the real one still works after it.
        let mut wrong = TcpStream::connect(listener.addr()).unwrap();
        wrong.write_all(&dial::greeting(&[0u8; 16])).unwrap();
        assert_eq!(wrong.read(&mut buf).unwrap_or(0), 0);
        assert!(arrived.try_recv().is_err());
        assert_eq!(listener.rejected(), 2);
        let mut good = TcpStream::connect(listener.addr()).unwrap();
        let hello = dial::greeting(&token);
        good.write_all(&hello).unwrap();
        let mut conn = arrived.recv_timeout(Duration::from_secs(30)).unwrap();
        conn.write_all(b"x").unwrap();
        good.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
        // A token is good once.
        let mut again = TcpStream::connect(listener.addr()).unwrap();
        again.write_all(&hello).unwrap();
        assert_eq!(again.read(&mut buf).unwrap_or(0), 0);
    }
}
