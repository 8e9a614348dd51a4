//! Probing, killing and reaping one worker process (or its launcher) from
//! the host, without ever touching a pid that may have been reused.
//!
//! Owns the rule that makes this safe: every probe, kill and reap of a
//! child happens under the one lock on its [`Proc`], and a process that
//! exited but is not reaped keeps its pid (and process group id). Knows
//! nothing about frames or transports.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// A child process of the host: one it spawned, or a worker its zygote
/// forked for it (with `CLONE_PARENT`: the host's child all the same, see
/// [`crate::host::zygote`]). Each leads its own process group.
#[derive(Debug)]
pub(crate) enum Proc {
    /// Spawned by the host.
    Spawned(Child),
    /// Forked by the pool's zygote; `status` once reaped.
    Forked {
        /// Its pid.
        pid: u32,
        /// How it ended, once reaped.
        status: Option<ExitStatus>,
    },
}

impl Proc {
    /// Its pid.
    pub(crate) fn id(&self) -> u32 {
        match self {
            Proc::Spawned(c) => c.id(),
            Proc::Forked { pid, .. } => *pid,
        }
    }

    /// SIGKILL, unless already reaped.
    fn kill(&mut self) {
        match self {
            Proc::Spawned(c) => {
                let _ = c.kill();
            }
            // SAFETY: not reaped yet, so the pid is still this process's.
            Proc::Forked { pid, status: None } => unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            },
            Proc::Forked { .. } => {}
        }
    }

    /// Reaps it, waiting for its exit.
    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.wait(),
            Proc::Forked { status: Some(s), .. } => Ok(*s),
            Proc::Forked { pid, status } => loop {
                let mut raw = 0;
                // SAFETY: waitpid on our own child with a valid status pointer.
                match unsafe { libc::waitpid(*pid as libc::pid_t, &mut raw, 0) } {
                    -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                    -1 => return Err(std::io::Error::last_os_error()),
                    _ => return Ok(*status.insert(ExitStatus::from_raw(raw))),
                }
            },
        }
    }

    /// How it ended, if it is known to have been reaped.
    fn reaped(&mut self) -> Option<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.try_wait().ok().flatten(),
            Proc::Forked { status, .. } => *status,
        }
    }
}

/// Whether the process has exited (reaped or not).
pub(super) fn has_exited(child: &Mutex<Proc>) -> bool {
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
pub(super) fn kill(child: &Mutex<Proc>) {
    let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
    if probe(c.id()) == Probe::Running {
        c.kill();
    }
}

/// Waits for the process to exit; one that closed its output but lingers is
/// killed after a grace period. Then whatever is left of its process group
/// (a launcher's helpers) is killed, before the reap frees the pid.
pub(super) fn reap(child: &Mutex<Proc>) -> ExitStatus {
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
                Probe::Gone => return c.reaped().unwrap_or_else(|| ExitStatus::from_raw(-1)),
                Probe::Running => {}
            }
            if Instant::now() >= grace {
                c.kill();
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
    fn open(child: &Mutex<Proc>) -> Option<ExitFd> {
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
