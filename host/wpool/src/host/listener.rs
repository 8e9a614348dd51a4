//! The dial-back transport of workers started through a launcher (`srun`,
//! `ssh`): the host listens on a TCP port, hands each worker the address and
//! a one-time random token on the launcher's stdin, and the worker connects
//! back and presents the token. Frames then travel over that connection; the
//! launcher's stdio carries only the one handshake line (srun's stdio is
//! line-buffered and slow: tens of milliseconds per message).
//!
//! Owns sockets, tokens and the handshake line, nothing else: what travels
//! over the connection is the ordinary protocol, and processes belong to the
//! supervisor. The token authenticates a worker; it does not encrypt
//! anything (items and results cross the network in clear).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use socket2::{SockRef, TcpKeepalive};
use subtle::ConstantTimeEq;

use crate::wire::PROTOCOL_VERSION;

/// The argument after the worker flag that makes a worker dial back.
pub(crate) const DIAL_ARG: &str = "dial";

/// First word of the handshake line on the launcher's stdin.
const LINE_TAG: &str = "wpool-dial";

/// What a worker writes first on its connection, before the token.
const MAGIC: &[u8; 8] = b"wpool-dl";

/// A one-time secret for one worker process.
pub(crate) type Token = [u8; 16];

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

/// How long a worker tries to reach the host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

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
        format!("{LINE_TAG} {PROTOCOL_VERSION} {} {}\n", self.addr, hex::encode(token))
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
    let mut hello = [0u8; 24];
    let read = conn.set_read_timeout(Some(AUTH_TIMEOUT)).and_then(|()| conn.read_exact(&mut hello));
    let sender = if read.is_ok() && &hello[..8] == MAGIC {
        let presented: Token = hello[8..].try_into().expect("16 bytes");
        let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Compare in constant time; each token is used once.
        let found = waiting.keys().find(|t| bool::from(t.ct_eq(&presented))).copied();
        found.and_then(|t| waiting.remove(&t))
    } else {
        None
    };
    match sender {
        Some(sender) if conn.set_read_timeout(None).is_ok() && tune(&conn).is_ok() => {
            // The worker may have been given up on meanwhile: then this drops.
            let _ = sender.send(conn);
        }
        _ => {
            rejected.fetch_add(1, Ordering::Relaxed);
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// No Nagle delay (frames are already batched); keepalive probes so that a
/// node that vanished without closing the connection (power loss, network
/// partition) shows up as an error within about 25 s instead of never, and
/// a user timeout for the same when data is in flight (keepalive is off
/// then, and retransmissions alone take about 15 minutes to give up).
fn tune(conn: &TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let socket = SockRef::from(conn);
    let keepalive =
        TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5)).with_retries(3);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(Duration::from_secs(60)))
}

fn random_token() -> io::Result<Token> {
    let mut token = [0u8; 16];
    getrandom::fill(&mut token)?;
    Ok(token)
}

fn unhex(s: &str) -> Option<Token> {
    let mut token = [0u8; 16];
    hex::decode_to_slice(s, &mut token).ok()?;
    Some(token)
}

/// The address workers dial when none was given: the first non-loopback
/// IPv4 address this host's name resolves to, else the first non-loopback
/// IPv4 address of an interface that is up (Debian maps the host name to
/// 127.0.1.1), else loopback (a single machine).
pub(crate) fn default_ip() -> IpAddr {
    let by_name = hostname()
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

/// This machine's name: the Slurm node name inside a Slurm step (several
/// nodes may share one host name, as in the test cluster), else the host
/// name.
pub(crate) fn node_name() -> String {
    std::env::var("SLURMD_NODENAME").ok().filter(|n| !n.is_empty()).or_else(hostname).unwrap_or_default()
}

fn hostname() -> Option<String> {
    gethostname::gethostname().into_string().ok()
}

/// Why a launched worker could not reach its host. Each cause is chained
/// as the error's source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Stdin failed or ended before a whole handshake line arrived.
    #[error("reading the handshake line from stdin")]
    Stdin(#[source] io::Error),
    /// Stdin carries something else than the handshake line (the worker was
    /// not started by a wpool host).
    #[error(
        "stdin does not start with a wpool handshake line (got {got:?}); a worker started through a launcher \
         reads one from the host"
    )]
    NotHandshake {
        /// The start of what was read.
        got: String,
    },
    /// The handshake line has no protocol version.
    #[error("handshake line without a version")]
    NoVersion,
    /// The host speaks another protocol version.
    #[error("protocol version {host} from host, worker speaks {PROTOCOL_VERSION}")]
    Version {
        /// The host's version.
        host: u32,
    },
    /// The handshake line has no address to dial.
    #[error("handshake line without an address")]
    NoAddress,
    /// The handshake line has no well-formed token.
    #[error("handshake line without a valid token")]
    NoToken,
    /// The host's address did not answer.
    #[error("cannot connect back to the host at {addr}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The connection failed while presenting the token.
    #[error("sending the token to {addr}")]
    SendToken {
        /// The address dialled.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Keepalive or the other socket options could not be set.
    #[error("socket options")]
    SocketOptions(#[source] io::Error),
}

/// The worker's side: reads the handshake line from stdin (byte by byte, so
/// that nothing after it is consumed), connects to the host and presents
/// the token. Public (hidden) for the compromised-worker test binary.
#[doc(hidden)]
pub fn dial_back() -> Result<TcpStream, DialError> {
    let line = read_line_fd0().map_err(DialError::Stdin)?;
    let mut words = line.split_ascii_whitespace();
    let (tag, version, addr, token) = (words.next(), words.next(), words.next(), words.next());
    if tag != Some(LINE_TAG) {
        return Err(DialError::NotHandshake { got: line.chars().take(80).collect() });
    }
    let version: u32 = version.and_then(|v| v.parse().ok()).ok_or(DialError::NoVersion)?;
    if version != PROTOCOL_VERSION {
        return Err(DialError::Version { host: version });
    }
    let addr: SocketAddr = addr.and_then(|a| a.parse().ok()).ok_or(DialError::NoAddress)?;
    let token = token.and_then(unhex).ok_or(DialError::NoToken)?;
    let mut conn =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|source| DialError::Connect { addr, source })?;
    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&token);
    conn.write_all(&hello).map_err(|source| DialError::SendToken { addr, source })?;
    tune(&conn).map_err(DialError::SocketOptions)?;
    Ok(conn)
}

fn read_line_fd0() -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        match rustix::io::read(rustix::stdio::stdin(), &mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Ok(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if line.len() > 512 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "handshake line over 512 bytes"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_round_trip_through_hex() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(unhex(&hex::encode(a)), Some(a));
        assert_eq!(unhex("zz"), None);
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
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&[0u8; 16]);
        wrong.write_all(&bad).unwrap();
        assert_eq!(wrong.read(&mut buf).unwrap_or(0), 0);
        assert!(arrived.try_recv().is_err());
        assert_eq!(listener.rejected(), 2);
        let mut good = TcpStream::connect(listener.addr()).unwrap();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&token);
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
