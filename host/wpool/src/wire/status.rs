//! What a worker reports about its own confinement: plain data that
//! crosses the wire in the handshake ([`super::WorkerMsg::Ready`]) and that
//! the library hands to callers.

use serde::{Deserialize, Serialize};

/// How far a protection is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforcement {
    /// Fully enforced.
    Full,
    /// Enforced as far as this kernel supports (an older Landlock ABI).
    Partial,
    /// Not available on this machine.
    Unavailable,
}

/// What a worker process locked down about itself, reported in the
/// handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxStatus {
    /// `PR_SET_NO_NEW_PRIVS`: no privilege gain through `exec`.
    pub no_new_privs: bool,
    /// The seccomp filter denying sockets, `exec`, `ptrace`, mounts, … is
    /// installed on every thread.
    pub seccomp: bool,
    /// Landlock: no filesystem access beyond the granted directories.
    pub landlock: Enforcement,
    /// Errors met while confining, if any.
    pub detail: String,
    /// Results of the self-test hook (empty unless asked for).
    pub probes: Vec<String>,
}

impl SandboxStatus {
    /// Nothing in force (what a worker that did not confine itself reports).
    pub fn unconfined(detail: impl Into<String>) -> SandboxStatus {
        SandboxStatus {
            no_new_privs: false,
            seccomp: false,
            landlock: Enforcement::Unavailable,
            detail: detail.into(),
            probes: Vec::new(),
        }
    }

    /// Whether every protection is fully in force.
    pub fn is_complete(&self) -> bool {
        self.no_new_privs && self.seccomp && self.landlock == Enforcement::Full
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no_new_privs={} seccomp={} landlock={:?}", self.no_new_privs, self.seccomp, self.landlock)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}
