//! The worker's side of dial-back, for a worker started through a launcher
//! (`srun`, `ssh`): read the handshake line from stdin, connect to the host,
//! present the token (formats in [`crate::wire::dial`]); and end the worker
//! when its launcher goes.
//!
//! Owns the worker's connection until it is the protocol stream; what travels
//! over it is the ordinary protocol.

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::transport::Connection;
use super::WorkerError;
use crate::kernel::ArtifactCache;
use crate::wire::dial::{self, LineError};

/// How long a worker tries to reach the host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a launched worker could not reach its host. Each cause is chained
/// as the error's source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Stdin failed or ended before a whole handshake line arrived.
    #[error("reading the handshake line from stdin")]
    Stdin(#[source] io::Error),
    /// The handshake line is not one to dial with.
    #[error(transparent)]
    Line(#[from] LineError),
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
    let (addr, token) = dial::parse_line(&line)?;
    let mut conn =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|source| DialError::Connect { addr, source })?;
    conn.write_all(&dial::greeting(&token)).map_err(|source| DialError::SendToken { addr, source })?;
    dial::tune(&conn).map_err(DialError::SocketOptions)?;
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

/// A worker started through a launcher: find its node-private artifact
/// cache (from the environment, which is then cleared: the launcher passed
/// on the caller's, secrets included), dial back to the host, and make the
/// connection the protocol stream.
pub(super) fn dial() -> Result<Connection, WorkerError> {
    let cache = ArtifactCache::default_location().ok();
    // SAFETY: no other thread exists yet (this runs before `main`), so
    // nothing reads the environment concurrently.
    unsafe { super::confine::scrub_environment() };
    // The launcher's working directory may not exist on this node and means
    // nothing to the worker.
    let _ = std::env::set_current_dir("/");
    let conn = dial_back()?;
    // Stray prints go to stderr, which the launcher forwards.
    let _ = rustix::stdio::dup2_stdout(rustix::stdio::stderr());
    let fd = std::os::fd::OwnedFd::from(conn);
    let input = fd.try_clone().map_err(WorkerError::Connection)?;
    Ok(Connection { input: File::from(input), output: File::from(fd), node_cache: cache })
}

/// A launched worker's stdin is its launcher's, open while the host lives:
/// its end (srun or ssh killed, the host gone) ends the worker even if the
/// connection lingers. Started after `confine`, like every thread: Landlock
/// binds only the thread that applies it and the threads it starts later.
pub(super) fn watch_launcher_stdin() -> Result<(), WorkerError> {
    std::thread::Builder::new()
        .name("wpool-stdin".into())
        .spawn(|| {
            let mut buf = [0u8; 64];
            // fd 0 directly: std's stdin would lock and buffer.
            while rustix::io::read(rustix::stdio::stdin(), &mut buf).is_ok_and(|n| n > 0) {}
            // SAFETY: ends the process at once, mid-item included: nobody is
            // left to read its results.
            unsafe { libc::_exit(0) }
        })
        .map(drop)
        .map_err(|source| WorkerError::Spawn { what: "stdin watcher", source })
}
