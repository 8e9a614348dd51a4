//! How a worker reaches its host, the worker's half of the two transports:
//! local pipes (spawned by the host, the protocol on stdin/stdout) and
//! dial-back (started through a launcher, the protocol on a connection to
//! the host, see [`super::dial`]).
//!
//! Owns opening the protocol stream and what ends the worker with its host;
//! the serve loop in [`super`] is the same over either.

use std::fs::File;

use super::{confine, dial, WorkerError};
use crate::kernel::ArtifactCache;

/// How the host started this worker process, and so how it reaches it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transport {
    /// Spawned directly by the host (whose pid this is), with the protocol
    /// on stdin/stdout.
    Pipes(libc::pid_t),
    /// Started through a launcher (srun, ssh), perhaps on another machine:
    /// it dials back to the host (see [`dial`]).
    DialBack,
    /// The worker flag without a valid mode (run by hand, or an old host).
    Unknown,
}

/// The protocol stream to the host, and for a launched worker its
/// node-private artifact cache.
pub(super) struct Connection {
    /// Frames from the host.
    pub input: File,
    /// Frames to the host.
    pub output: File,
    /// Where a launched worker keeps the kernels it compiled.
    pub node_cache: Option<ArtifactCache>,
}

impl Transport {
    /// Opens the protocol stream the way the host set it up. At start-up,
    /// before any other thread exists.
    pub(super) fn open(self) -> Result<Connection, WorkerError> {
        match self {
            Transport::Pipes(host) => {
                confine::die_with_parent(host);
                // On the fds the host set up.
                let (input, output) = confine::take_protocol_fds().map_err(WorkerError::ProtocolFds)?;
                Ok(Connection { input, output, node_cache: None })
            }
            Transport::DialBack => dial::dial(),
            Transport::Unknown => Err(WorkerError::NotFromHost),
        }
    }

    /// Once confined: what else ends the worker with its host. A spawned
    /// worker has its parent-death signal already; a launched one watches its
    /// launcher.
    pub(super) fn watch(self) -> Result<(), WorkerError> {
        match self {
            Transport::DialBack => dial::watch_launcher_stdin(),
            Transport::Pipes(_) | Transport::Unknown => Ok(()),
        }
    }
}
