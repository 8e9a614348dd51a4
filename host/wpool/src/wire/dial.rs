//! The dial-back handshake of a worker started through a launcher, as both
//! ends must agree on it: the line the host writes on the launcher's stdin,
//! the greeting the worker sends first on its connection, the one-time
//! token inside both, and the options of that connection's socket.
//!
//! Formats only: the host's listening side is `host::listener`, the
//! worker's dialling side `worker::dial`.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use super::PROTOCOL_VERSION;

/// A one-time secret for one worker process.
pub(crate) type Token = [u8; 16];

/// First word of the handshake line on the launcher's stdin.
const LINE_TAG: &str = "wpool-dial";

/// What a worker writes first on its connection, before the token.
const MAGIC: &[u8; 8] = b"wpool-dl";

/// What a worker writes first on its connection: the magic, then its token.
pub(crate) type Greeting = [u8; 24];

/// The handshake line the host writes to a launcher's stdin.
pub(crate) fn line(addr: SocketAddr, token: &Token) -> String {
    format!("{LINE_TAG} {PROTOCOL_VERSION} {addr} {}\n", hex::encode(token))
}

/// Why a handshake line is not one a worker can dial with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
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
}

/// The address to dial and the token to present, from a handshake line
/// (without its `\n`).
pub(crate) fn parse_line(line: &str) -> Result<(SocketAddr, Token), LineError> {
    let mut words = line.split_ascii_whitespace();
    let (tag, version, addr, token) = (words.next(), words.next(), words.next(), words.next());
    if tag != Some(LINE_TAG) {
        return Err(LineError::NotHandshake { got: line.chars().take(80).collect() });
    }
    let version: u32 = version.and_then(|v| v.parse().ok()).ok_or(LineError::NoVersion)?;
    if version != PROTOCOL_VERSION {
        return Err(LineError::Version { host: version });
    }
    let addr: SocketAddr = addr.and_then(|a| a.parse().ok()).ok_or(LineError::NoAddress)?;
    let token = token.and_then(unhex).ok_or(LineError::NoToken)?;
    Ok((addr, token))
}

fn unhex(s: &str) -> Option<Token> {
    let mut token = [0u8; 16];
    hex::decode_to_slice(s, &mut token).ok()?;
    Some(token)
}

/// The greeting that presents `token`.
pub(crate) fn greeting(token: &Token) -> Greeting {
    let mut greeting = [0u8; 24];
    greeting[..8].copy_from_slice(MAGIC);
    greeting[8..].copy_from_slice(token);
    greeting
}

/// The token a greeting presents, if it is one.
pub(crate) fn presented_token(greeting: &Greeting) -> Option<Token> {
    (&greeting[..8] == MAGIC).then(|| greeting[8..].try_into().expect("16 bytes"))
}

/// No Nagle delay (frames are already batched); keepalive probes so that a
/// node that vanished without closing the connection (power loss, network
/// partition) shows up as an error within about 25 s instead of never, and
/// a user timeout for the same when data is in flight (keepalive is off
/// then, and retransmissions alone take about 15 minutes to give up). Both
/// ends set them.
pub(crate) fn tune(conn: &TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let socket = SockRef::from(conn);
    let keepalive =
        TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5)).with_retries(3);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_and_a_bad_token_is_refused() {
        let addr: SocketAddr = "10.0.0.7:4711".parse().unwrap();
        let token = [7u8; 16];
        let line = line(addr, &token);
        assert_eq!(parse_line(line.trim_end()).unwrap(), (addr, token));
        assert!(matches!(parse_line(&format!("wpool-dial {PROTOCOL_VERSION} {addr} zz")), Err(LineError::NoToken)));
        assert!(matches!(parse_line("hello"), Err(LineError::NotHandshake { .. })));
    }

    #[test]
    fn a_greeting_presents_its_token_and_nothing_else_does() {
        let token = [9u8; 16];
        assert_eq!(presented_token(&greeting(&token)), Some(token));
        assert_eq!(presented_token(&[0u8; 24]), None);
    }
}
