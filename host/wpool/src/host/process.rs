//! Probing, killing and reaping one worker process (or its launcher) from
//! the host, without ever touching a pid that may have been reused.
//!
//! Owns the rule that makes this safe: every probe, kill and reap of a
//! child happens under the one lock on its [`Child`], and a process that
//! exited but is not reaped keeps its pid (and process group id). Knows
//! nothing about frames or transports.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Whether the process has exited (reaped or not).
pub(super) fn has_exited(child: &Mutex<Child>) -> bool {
    let c = child.lock().unwrap_or_else(|p| p.into_inner());
    probe(c.id()) != Probe::Running
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Running,
    /// Exited, not reaped: its pid (and process group id) cannot be reused.
    Exited,
    /// Not our child any more (already reaped, maybe by someone else).
    Gone,
}

fn probe(pid: u32) -> Probe {
    // SAFETY: waitid with WNOWAIT only inspects; `info` is a valid buffer.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        match (r, info.si_pid()) {
            (0, 0) => Probe::Running,
            (0, p) if p as u32 == pid => Probe::Exited,
            _ => Probe::Gone,
        }
    }
}

/// SIGKILLs the process unless it already exited. Under the lock that
/// reaping also takes, so the pid cannot have been reused (std's `kill` is
/// a no-op once it reaped the child).
pub(super) fn kill(child: &Mutex<Child>) {
    let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
    if probe(c.id()) == Probe::Running {
        let _ = c.kill();
    }
}

/// Waits for the process to exit; one that closed its output but lingers is
/// killed after a grace period. Then whatever is left of its process group
/// (a launcher's helpers) is killed, before the reap frees the pid.
pub(super) fn reap(child: &Mutex<Child>) -> ExitStatus {
    let grace = Instant::now() + Duration::from_secs(2);
    let exit = ExitFd::open(child);
    loop {
        {
            let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
            let pid = c.id();
            match probe(pid) {
                Probe::Exited => {
                    // SAFETY: the group is the one this child leads (it was
                    // created with it) and the child is not reaped yet, so
                    // the id cannot name anyone else's group.
                    unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
                    return c.wait().unwrap_or_else(|_| ExitStatus::from_raw(-1));
                }
                // Reaped behind our back (a program that reaps every child):
                // the status is lost, and so is the group id.
                Probe::Gone => return c.try_wait().ok().flatten().unwrap_or_else(|| ExitStatus::from_raw(-1)),
                Probe::Running => {}
            }
            if Instant::now() >= grace {
                let _ = c.kill();
            }
        }
        match &exit {
            // Past the grace the process was just killed: it is gone soon.
            Some(fd) => fd.wait(grace.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))),
            None => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// A pidfd of a child: readable once it has exited, so that reaping waits
/// for the exit instead of polling for it (a millisecond's poll was most
/// of a short run's shutdown). `None` where the kernel has no pidfds
/// (before Linux 5.3): [`reap`] polls then.
struct ExitFd(std::os::fd::OwnedFd);

impl ExitFd {
    fn open(child: &Mutex<Child>) -> Option<ExitFd> {
        use std::os::fd::FromRawFd;
        // Under the lock, as every use of the pid: not reaped, not reused.
        let c = child.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, c.id() as libc::pid_t, 0) };
        // SAFETY: a non-negative result is a fresh descriptor, ours alone.
        (fd >= 0).then(|| ExitFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Returns once the process exited, or after `timeout` (or a signal).
    fn wait(&self, timeout: Duration) {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}
