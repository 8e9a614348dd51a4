//! Process-level isolation of workers: what is set up around `exec` on the
//! host side, and what a worker locks down about itself at start-up.
//!
//! Owns fds, signals, process groups and rlimits. It does not know about
//! wasm; the wasm-level policy (WASI grants) lives in [`crate::runtime`].

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Runs in the forked child between `fork` and `exec` (async-signal-safe
/// calls only).
///
/// - its own process group, so the terminal's Ctrl-C reaches the host only and
///   the host decides how workers end;
/// - `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills the worker when the thread
///   that forked it dies. The host forks from a thread that lives exactly as
///   long as the pool, so this fires on host death (even SIGKILL) and never
///   while the pool is alive;
/// - the parent may have died before the prctl: then exit at once.
pub(crate) fn in_child_before_exec(host_pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: plain syscalls without memory arguments.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != host_pid {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// Moves the protocol streams (stdin/stdout as the host set them up) to
/// fresh fds, and points fd 0 at `/dev/null` and fd 1 at stderr, so that a
/// stray `print!` anywhere in the worker cannot corrupt the protocol.
///
/// # Safety
/// Call once, at start-up, before other threads use fds 0 and 1.
pub(crate) unsafe fn take_protocol_fds() -> io::Result<(File, File)> {
    // SAFETY: dup/dup2/open on fds this process owns; the new fds are owned
    // by the returned Files.
    unsafe {
        let input = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        let output = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if input < 0 || output < 0 {
            return Err(io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(null);
        Ok((File::from_raw_fd(input), File::from_raw_fd(output)))
    }
}

/// Start-up hardening every worker applies to itself: no core dumps (a
/// crashing worker must not write kernel memory to disk), a bounded number
/// of open files, and `SIGPIPE` ignored so a vanished host is an `EPIPE`
/// error, handled, rather than a signal.
pub(crate) fn harden_worker() {
    // SAFETY: plain syscalls with valid pointers to stack values.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &core);
        let files = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
        libc::setrlimit(libc::RLIMIT_NOFILE, &files);
    }
}
