//! The zygote: a process started once for a pool (an `exec` of the worker
//! binary with no environment, `/` as its directory and its own process
//! group), that forks every local worker of that pool on request. Forking
//! a small single-threaded process costs a fraction of an
//! `exec` of this binary, which maps, relocates and faults in a hundred
//! megabytes of code before `main`; each forked worker then runs exactly
//! the code of an exec'd one, from [`super::main`] on: it dies with its
//! host, moves its protocol fds aside and confines itself the same way.
//!
//! Workers are forked with `CLONE_PARENT`, so that they are the host's
//! children, not the zygote's: the host reaps them and sees how they ended
//! as for a worker it spawned itself, and their parent-death signal fires
//! with the host thread that started the zygote (the zygote's own parent:
//! the thread of `wpool::prestart`, which lives as long as the process, or
//! the pool's spawning thread for a zygote started again after a failure).
//! The zygote holds nothing of theirs and may die without them.
//!
//! All workers forked by one zygote share its address-space layout (as
//! Chromium's and Android's zygotes' children do); it is not the host's,
//! which was randomised by its own `exec`.
//!
//! The protocol, over a `SOCK_SEQPACKET` socket on fd 0: the host sends the
//! new worker's working directory (an absolute path, the pool's empty
//! private directory) with its stdin, stdout and stderr attached
//! (`SCM_RIGHTS`); the zygote answers with the worker's pid as a native
//! `i32`, or a negated errno. EOF ends the zygote.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags};

use super::confine;

/// The zygote's life: fork a worker per request until the host hangs up.
/// `argv0` and `argv1` are the zygote's first two arguments, rewritten in
/// each worker to read as an exec'd worker's command line.
///
/// # Safety
/// Call from the `.init_array` entry, before any other thread exists, with
/// `argv0`/`argv1` the process's own NUL-terminated argument strings.
pub(crate) unsafe fn main(host: libc::pid_t, argv0: *mut libc::c_char, argv1: *mut libc::c_char) -> ! {
    confine::die_with_parent(host);
    confine::harden_worker();
    // SAFETY: fd 0 is the socket the host gave the zygote as its stdin; it
    // stays open for the zygote's whole life.
    let sock = unsafe { BorrowedFd::borrow_raw(0) };
    loop {
        let (cwd, fds) = match receive(sock) {
            Ok(Some(request)) => request,
            // EOF: the pool is done with its zygote.
            Ok(None) => std::process::exit(0),
            Err(_) => std::process::exit(2),
        };
        let answer = match fds {
            Some(stdio) => match fork_as_sibling() {
                // SAFETY: the child of a single-threaded process, with the
                // caller's argv.
                Ok(0) => unsafe { become_worker(host, &cwd, stdio, argv0, argv1) },
                Ok(pid) => pid,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EAGAIN),
            },
            None => -libc::EINVAL,
        };
        if rustix::net::send(sock, &answer.to_ne_bytes(), SendFlags::NOSIGNAL).is_err() {
            std::process::exit(2);
        }
    }
}

/// One request: the directory, and `Some(fds)` with exactly three fds or
/// `None` for a malformed request; `None` at EOF.
fn receive(sock: BorrowedFd<'_>) -> std::io::Result<Option<(std::ffi::CString, Option<[OwnedFd; 3]>)>> {
    let mut path = [0u8; libc::PATH_MAX as usize];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut path)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let cwd = std::ffi::CString::new(&path[..msg.bytes]).ok().filter(|p| p.as_bytes().starts_with(b"/"));
    Ok(Some(match cwd {
        Some(cwd) => (cwd, fds.try_into().ok()),
        None => (std::ffi::CString::default(), None),
    }))
}

/// `fork`, but the child's parent is this process's parent (the host). If
/// the host gives up on an answer (after a few seconds) or the zygote dies
/// before it answers, a child it forked finds its pipes closed by the host
/// and exits.
fn fork_as_sibling() -> std::io::Result<libc::pid_t> {
    // SAFETY: a fork-like clone (no shared memory, the child continues on a
    // copy of this stack) of a single-threaded process. glibc's `fork`
    // cannot pass CLONE_PARENT; what it does besides (atfork handlers,
    // resetting locks other threads held) has nothing to do here, where no
    // other thread exists. The child's glibc thread descriptor keeps the
    // zygote's tid, which glibc 2.34+ reads only for other threads
    // (`raise`/`abort` ask the kernel).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// In the forked child: its own process group, its directory, the three
/// fds as stdin, stdout and stderr and nothing else open, the command line
/// of an exec'd worker; then the worker's life.
///
/// # Safety
/// See [`main`].
unsafe fn become_worker(
    host: libc::pid_t,
    cwd: &std::ffi::CStr,
    stdio: [OwnedFd; 3],
    argv0: *mut libc::c_char,
    argv1: *mut libc::c_char,
) -> ! {
    let _ = rustix::process::setpgid(None, None);
    let [stdin, stdout, stderr] = stdio;
    if rustix::process::chdir(cwd).is_err()
        || rustix::stdio::dup2_stdin(stdin.as_fd()).is_err()
        || rustix::stdio::dup2_stdout(stdout.as_fd()).is_err()
        || rustix::stdio::dup2_stderr(stderr.as_fd()).is_err()
    {
        // SAFETY: ends the child without running anything else.
        unsafe { libc::_exit(2) }
    }
    drop((stdin, stdout, stderr));
    // The zygote's socket was fd 0, replaced above; nothing else of the
    // zygote's is open past stderr, but make sure.
    // SAFETY: close_range takes plain integers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: the caller's argv strings, overwritten within their lengths.
    unsafe {
        rename(argv0, "wpool-worker");
        rename(argv1, crate::wire::WORKER_ARG);
    }
    let name = c"wpool-worker";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    super::main(super::Transport::Pipes(host))
}

/// Overwrites the argument string at `arg` with `to` if both are as long,
/// so that `/proc/PID/cmdline` and `ps` show a worker, not a zygote.
///
/// # Safety
/// `arg` is null or a NUL-terminated string this process may write.
unsafe fn rename(arg: *mut libc::c_char, to: &str) {
    // SAFETY: see the contract.
    unsafe {
        if !arg.is_null() && libc::strlen(arg) == to.len() {
            std::ptr::copy_nonoverlapping(to.as_ptr(), arg.cast::<u8>(), to.len());
        }
    }
}
