//! How a worker's frames travel, from the host's side: over the worker's
//! own stdin and stdout ([`Transport::Pipes`], local workers), or over the
//! connection a worker started through a launcher dials back on
//! ([`Transport::DialBack`], see [`crate::host::listener`]).
//!
//! Owns what differs between the two: how the command is set up before it
//! is spawned (environment, directory, pre-exec), the dial-back token of
//! each spawn, the threads that carry a started worker's frames, and the
//! [`Link`] that cuts a launched worker off. Spawning, reaping and turning
//! frames into events are the supervisor's.

use std::fs::File;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::host::listener::Listener;
use crate::host::process::has_exited;
use crate::host::supervisor::{drain_into_tail, read_frames, write_frames, Copying, Frame, Session, WorkerCommand};
use crate::splice::SplicePipe;
use crate::wire::dial::Token;
use crate::wire::{self, Hello, HostMsg};

/// How the workers of a pool talk to the host.
pub(crate) enum Transport {
    /// The worker's stdin and stdout carry the frames.
    Pipes,
    /// The launcher's stdin carries one line saying where to dial back,
    /// and the connection the worker dials back on carries the frames.
    DialBack(Arc<Listener>),
}

/// One worker's transport between [`Transport::prepare`] and its start.
pub(crate) enum Opening {
    /// Frames go over the pipes to be set up at spawn.
    Pipes,
    /// Frames go over the pipes of a worker the zygote forked, its `Hello`
    /// already in the pipe.
    HelloWritten,
    /// The listener waits for the connection of this worker.
    DialBack(Expected),
}

/// The host's ends of a started worker's transport.
pub(crate) struct Started {
    /// Where frames for the worker go.
    pub frames: Sender<Frame>,
    /// A launched worker's link, to cut it off.
    pub link: Option<Arc<Link>>,
}

/// The connection a launched worker is expected to dial back on.
pub(crate) struct Expected {
    listener: Arc<Listener>,
    token: Token,
    arrived: Receiver<TcpStream>,
}

impl Transport {
    /// The transport of `command`'s workers: for launched ones, with the
    /// listening socket they dial back to.
    pub(crate) fn new(command: &WorkerCommand) -> std::io::Result<Transport> {
        Ok(match command.is_remote() {
            true => Transport::DialBack(Arc::new(Listener::bind(command.listen)?)),
            false => Transport::Pipes,
        })
    }

    /// Where launched workers dial back, if they do.
    pub(crate) fn listener(&self) -> Option<&Listener> {
        match self {
            Transport::Pipes => None,
            Transport::DialBack(listener) => Some(listener),
        }
    }

    /// Sets `cmd` up for this transport (`cwd`: the local workers'
    /// directory) and, for a launched worker, expects its connection.
    pub(crate) fn prepare(&self, cmd: &mut Command, cwd: &Path) -> std::io::Result<Opening> {
        let host_pid = std::process::id() as libc::pid_t;
        match self {
            Transport::Pipes => {
                // Workers see none of the host's environment (secrets included)
                // and start in an empty private directory, not the caller's. The
                // worker sets its parent-death signal itself (see
                // the worker's `die_with_parent`): no `pre_exec`, so `posix_spawn`.
                cmd.env_clear().current_dir(cwd).arg(host_pid.to_string()).process_group(0);
                Ok(Opening::Pipes)
            }
            Transport::DialBack(listener) => {
                // A launcher needs the caller's environment (SLURM_*, PATH,
                // HOME, SSH_AUTH_SOCK); the worker clears whatever reaches it.
                // `/` exists on every node.
                cmd.current_dir("/");
                // SAFETY: the closure only makes async-signal-safe syscalls.
                unsafe {
                    cmd.pre_exec(move || in_child_before_exec(host_pid));
                }
                let (token, arrived) = listener.expect()?;
                Ok(Opening::DialBack(Expected { listener: Arc::clone(listener), token, arrived }))
            }
        }
    }
}

impl Transport {
    /// The opening of a local worker forked by the pool's zygote (which
    /// set up its environment, directory and process group as
    /// [`Transport::prepare`] does for an `exec`), whose `Hello` the
    /// spawner may have written into its pipe already.
    pub(crate) fn forked(&self, hello_written: bool) -> Opening {
        match hello_written {
            true => Opening::HelloWritten,
            false => Opening::Pipes,
        }
    }
}

impl Opening {
    /// The worker did not start: its connection is no longer expected.
    pub(crate) fn abandon(self) {
        if let Opening::DialBack(expected) = self {
            expected.listener.forget(&expected.token);
        }
    }

    /// Starts the threads that carry the frames of a started worker, the
    /// `Hello` first. Returns where frames for the worker go and, for a
    /// launched worker, its link.
    pub(crate) fn start(self, session: Session, stdin: File, stdout: File, hello: &Hello) -> std::io::Result<Started> {
        let (frames_tx, frames_rx) = crossbeam_channel::unbounded::<Frame>();
        let link = match self {
            Opening::Pipes | Opening::HelloWritten => {
                let wide_in = WidePipe::try_widen(&stdin);
                let wide_out = WidePipe::try_widen(&stdout);
                if matches!(self, Opening::Pipes) {
                    let _ = frames_tx.send(hello_frame(hello).into());
                }
                thread::Builder::new().name(session.thread_name("write")).spawn(move || {
                    write_frames(SplicePipe::new(stdin), frames_rx);
                    drop(wide_in);
                })?;
                thread::Builder::new().name(session.thread_name("read")).spawn(move || {
                    let violation = read_frames(&session, stdout);
                    drop(wide_out);
                    session.finish(violation, None);
                })?;
                None
            }
            Opening::DialBack(expected) => Some(start_dial_back(session, stdin, stdout, hello, frames_rx, expected)?),
        };
        Ok(Started { frames: frames_tx, link })
    }
}

/// A `Hello`, encoded as a frame.
pub(crate) fn hello_frame(hello: &Hello) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode(&HostMsg::Hello(Box::new(hello.clone())), &mut frame);
    frame
}

/// Pipes widened by this process that are still open.
static WIDE_PIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// At most this many widened pipes at once: 32 × 1 MiB is half of a user's
/// default pipe budget (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB). Past
/// that budget the kernel makes every new pipe of the user, in any process,
/// 8 KiB, so a pool of many workers leaves the rest of its pipes as they are.
const MAX_WIDE_PIPES: usize = 32;

/// A pipe to a local worker made to hold 1 MiB (the unprivileged maximum,
/// `/proc/sys/fs/pipe-max-size`) instead of 64 KiB: a 1 MiB item or batch of
/// results then crosses in one round of write, wake-up and read instead of
/// sixteen. Counted against [`MAX_WIDE_PIPES`] until dropped (with the pipe).
struct WidePipe(bool);

impl WidePipe {
    fn try_widen(pipe: &impl std::os::fd::AsRawFd) -> WidePipe {
        use std::sync::atomic::Ordering;
        if WIDE_PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_WIDE_PIPES {
            WIDE_PIPES.fetch_sub(1, Ordering::Relaxed);
            return WidePipe(false);
        }
        // SAFETY: a plain syscall on a descriptor the caller owns.
        let widened = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) } >= 0;
        if !widened {
            WIDE_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
        WidePipe(widened)
    }
}

impl Drop for WidePipe {
    fn drop(&mut self) {
        if self.0 {
            WIDE_PIPES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The threads of a launched worker: one drains the launcher's stdout, one
/// waits for the worker's connection and then reads its frames.
fn start_dial_back(
    session: Session,
    mut stdin: File,
    stdout: File,
    hello: &Hello,
    frames: Receiver<Frame>,
    expected: Expected,
) -> std::io::Result<Arc<Link>> {
    let Expected { listener, token, arrived } = expected;
    // The launcher's stdio carries only this line (and whatever the
    // launcher prints, kept with the stderr tail). Its stdin stays
    // open while the worker lives: a worker also exits when it
    // closes.
    let _ = stdin.write_all(listener.line(&token).as_bytes());
    let link = Arc::new(Link::default());
    {
        // The launcher closes its stdout when it exits. A launcher
        // gone is a worker gone, even if the worker lives on (as a
        // remote task may when its srun is killed): cut it off.
        let (tail, child, link) = (Arc::clone(&session.tail), Arc::clone(&session.child), Arc::clone(&link));
        thread::Builder::new().name(session.thread_name("stdout")).spawn(move || {
            drain_into_tail(stdout, &tail);
            while !has_exited(&child) {
                thread::sleep(Duration::from_millis(100));
            }
            // EOF for the worker; what it already sent is still read.
            link.shutdown(Shutdown::Write);
        })?;
    }
    let session_link = Arc::clone(&link);
    // Encoded only once connected: a big kernel is not held once per
    // worker still queueing for its node.
    let hello = hello.clone();
    thread::Builder::new().name(session.thread_name("read")).spawn(move || {
        let (violation, unconnected) = match wait_for_connection(&session, &arrived) {
            Some(conn) => (remote_session(&session, conn, &session_link, &hello, frames), None),
            None => {
                listener.forget(&token);
                (None, Some(listener.addr()))
            }
        };
        drop(stdin);
        session.finish(violation, unconnected);
    })?;
    Ok(link)
}

/// The connection of a worker started through a launcher, once it dialed
/// back.
#[derive(Debug, Default)]
pub(crate) struct Link {
    conn: Mutex<Option<Arc<TcpStream>>>,
    killed: AtomicBool,
}

impl Link {
    /// Kills the remote worker, now or, if it has not connected yet, as
    /// soon as it does.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Closing the connection ends the remote worker wherever it runs: it
    /// exits when its connection closes, whatever its launcher does.
    fn cut(&self) {
        self.shutdown(Shutdown::Both);
    }

    fn shutdown(&self, how: Shutdown) {
        if let Some(conn) = &*self.conn.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = conn.shutdown(how);
        }
    }
}

/// Runs in the forked child between `fork` and `exec` of a *launcher* (such
/// as `srun` or `ssh`; async-signal-safe calls only).
///
/// - its own process group, so the terminal's Ctrl-C reaches the host only and
///   the host decides how workers end;
/// - `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills the worker when the thread
///   that forked it dies. The host forks from a thread that lives exactly as
///   long as the pool, so this fires on host death (even SIGKILL) and never
///   while the pool is alive;
/// - the parent may have died before the prctl: then exit at once.
fn in_child_before_exec(host_pid: libc::pid_t) -> std::io::Result<()> {
    // rustix makes the system calls directly: no allocation, no lock.
    rustix::process::setpgid(None, None)?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::Pid::as_raw(rustix::process::getppid()) != host_pid {
        // SAFETY: ends the forked child without running anything else.
        unsafe { libc::_exit(1) }
    }
    Ok(())
}

/// Waits until the worker dials back, or its launcher ends first.
fn wait_for_connection(session: &Session, arrived: &Receiver<TcpStream>) -> Option<TcpStream> {
    loop {
        match arrived.recv_timeout(Duration::from_millis(20)) {
            Ok(conn) => return Some(conn),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if !has_exited(&session.child) => {}
            Err(_) => return arrived.try_recv().ok(),
        }
    }
}

/// Frames over a launched worker's connection, the `Hello` first; returns
/// the violation that ended it, if one did. One fd serves both directions.
fn remote_session(
    session: &Session,
    conn: TcpStream,
    link: &Link,
    hello: &Hello,
    frames: Receiver<Frame>,
) -> Option<String> {
    let conn = Arc::new(conn);
    *link.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&conn));
    if link.killed.load(Ordering::SeqCst) {
        // Killed while connecting: `kill` found no connection to cut.
        link.cut();
    }
    let mut hello_frame = Vec::new();
    wire::encode(&HostMsg::Hello(Box::new(hello.clone())), &mut hello_frame);
    if (&*conn).write_all(&hello_frame).is_err() {
        link.cut();
        return None;
    }
    drop(hello_frame);
    let writer = Arc::clone(&conn);
    let writer_thread = thread::Builder::new().name(session.thread_name("write")).spawn(move || {
        write_frames(Copying(&*writer), frames);
        // EOF for the worker: it exits.
        let _ = writer.shutdown(Shutdown::Write);
    });
    if writer_thread.is_err() {
        link.cut();
        return Some("cannot start the writer thread".into());
    }
    let violation = read_frames(session, &*conn);
    link.cut();
    violation
}
