//! Worker processes from the host's side: spawning, the threads that move
//! frames to and from each process, killing and reaping.
//!
//! Owns OS processes, their pipes and, for workers started through a
//! launcher, the connection each dials back on (see [`crate::host::listener`]). It
//! turns everything a worker does into [`Event`]s on one channel and does
//! not interpret them: retries, deadlines and restart policy belong to the
//! scheduler.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Crash;
use crate::host::listener::Listener;
use crate::wire::{self, frame_cap, FrameError, Hello, HostMsg, WorkerMsg, DIAL_ARG, HANDSHAKE_FRAME_CAP, WORKER_ARG};

/// Bytes of a worker's own stderr kept for error messages.
const WORKER_STDERR_TAIL: usize = 4096;

/// How to start a worker process.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCommand {
    /// Launcher prefixes such as `srun -N1 -n1` or `ssh host`: worker slot
    /// `i` is started through `launchers[i % len]`. Empty for local workers.
    pub launchers: Vec<Vec<String>>,
    /// A binary that links the `wpool` library; default: this executable.
    pub program: Option<PathBuf>,
    /// The local workers' working directory (empty and private).
    pub cwd: PathBuf,
    /// Where workers started through a launcher connect back to; default:
    /// this machine's address (see [`crate::host::listener::default_ip`]), a free port.
    pub listen: Option<SocketAddr>,
}

impl WorkerCommand {
    pub(crate) fn is_remote(&self) -> bool {
        !self.launchers.is_empty()
    }

    fn launcher(&self, slot: usize) -> &[String] {
        match self.launchers.len() {
            0 => &[],
            n => &self.launchers[slot % n],
        }
    }

    /// The command line of worker `slot`, for messages.
    pub(crate) fn describe(&self, slot: usize) -> String {
        let mut parts = self.launcher(slot).to_vec();
        parts.push(self.program_path().display().to_string());
        parts.push(WORKER_ARG.into());
        if self.is_remote() {
            parts.push(DIAL_ARG.into());
        }
        parts.join(" ")
    }

    fn program_path(&self) -> PathBuf {
        match &self.program {
            Some(p) => p.clone(),
            // A launcher runs the program elsewhere: name the real file.
            // Locally, `/proc/self/exe` still works when the binary was
            // replaced on disk after start (as `cargo build` does).
            None if self.is_remote() => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            None => PathBuf::from("/proc/self/exe"),
        }
    }

    fn command(&self, slot: usize) -> Command {
        let program = self.program_path();
        match self.launcher(slot).split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&program).arg(WORKER_ARG).arg(DIAL_ARG);
                c
            }
            None => {
                let mut c = Command::new(&program);
                c.arg0("wpool-worker").arg(WORKER_ARG);
                c
            }
        }
    }
}

/// Something that happened to a worker process.
#[derive(Debug)]
pub(crate) enum Event {
    /// The process runs; its handshake was queued.
    Spawned(WorkerProc),
    /// The process could not be started.
    SpawnFailed { slot: usize, gen: u64, error: std::io::Error },
    /// A well-formed frame arrived.
    Msg { slot: usize, gen: u64, msg: WorkerMsg },
    /// The process is gone and reaped.
    Exited { slot: usize, gen: u64, end: WorkerEnd },
    /// Someone asked the current run to stop.
    Wake,
}

/// How a worker process ended, as seen from the host.
#[derive(Debug)]
pub(crate) struct WorkerEnd {
    /// `None` for a clean exit with status 0. For a worker started through
    /// a launcher, how the launcher ended (srun and ssh pass on the remote
    /// worker's exit status).
    pub crash: Option<Crash>,
    /// A malformed or oversized frame the host refused, if that is why it ended.
    pub violation: Option<String>,
    /// The tail of the worker process's own stderr (or its launcher's,
    /// which carries the remote worker's).
    pub stderr: String,
    /// For a launched worker that never connected back: the address it
    /// was told to dial.
    pub unconnected: Option<SocketAddr>,
}

/// A live worker process and the handles to talk to it.
#[derive(Debug)]
pub(crate) struct WorkerProc {
    pub slot: usize,
    pub gen: u64,
    /// The worker's pid, or its launcher's.
    pub pid: u32,
    frames: Option<Sender<Vec<u8>>>,
    child: Arc<Mutex<Child>>,
    link: Option<Arc<Link>>,
}

/// The connection of a worker started through a launcher, once it dialed
/// back.
#[derive(Debug, Default)]
struct Link {
    conn: Mutex<Option<Arc<TcpStream>>>,
    killed: AtomicBool,
}

impl Link {
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

impl WorkerProc {
    /// Queues an encoded frame. A dead worker shows up as an `Exited` event,
    /// so a failed send needs no handling here.
    pub(crate) fn send(&self, frame: Vec<u8>) {
        if let Some(frames) = &self.frames {
            let _ = frames.send(frame);
        }
    }

    /// Closes the worker's input once queued frames are written: a worker
    /// exits on EOF.
    pub(crate) fn close_input(&mut self) {
        self.frames = None;
    }

    /// SIGKILLs the process (a launcher: also cuts its worker's connection).
    pub(crate) fn kill(&self) {
        if let Some(link) = &self.link {
            link.killed.store(true, Ordering::SeqCst);
            link.cut();
        }
        kill(&self.child);
    }
}

struct SpawnRequest {
    slot: usize,
    gen: u64,
    hello: Hello,
}

/// The thread that forks every worker of a pool. Workers get
/// `PR_SET_PDEATHSIG`, which fires when the *forking thread* dies, so that
/// thread must live exactly as long as the pool: this one does.
pub(crate) struct Spawner {
    requests: Option<Sender<SpawnRequest>>,
    thread: Option<thread::JoinHandle<()>>,
    listener: Option<Arc<Listener>>,
}

impl Spawner {
    /// Starts the spawning thread and, for launched workers, the listening
    /// socket they dial back to.
    pub(crate) fn start(command: WorkerCommand, events: Sender<Event>) -> std::io::Result<Spawner> {
        let listener = match command.is_remote() {
            true => Some(Arc::new(Listener::bind(command.listen)?)),
            false => None,
        };
        let (tx, rx) = crossbeam_channel::unbounded::<SpawnRequest>();
        let thread = {
            let listener = listener.clone();
            thread::Builder::new().name("wpool-spawner".into()).spawn(move || {
                for req in rx {
                    let event = match spawn_one(&command, listener.as_ref(), &req, &events) {
                        Ok(proc) => Event::Spawned(proc),
                        Err(error) => Event::SpawnFailed { slot: req.slot, gen: req.gen, error },
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                }
            })?
        };
        Ok(Spawner { requests: Some(tx), thread: Some(thread), listener })
    }

    pub(crate) fn spawn(&self, slot: usize, gen: u64, hello: Hello) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(SpawnRequest { slot, gen, hello });
        }
    }

    /// Where launched workers dial back, if workers are launched.
    pub(crate) fn dial_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(|l| l.addr())
    }

    /// Connections to the dial-back port refused for a missing or wrong token.
    pub(crate) fn rejected_connections(&self) -> u64 {
        self.listener.as_ref().map_or(0, |l| l.rejected())
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raises this process's soft limit on open files (up to the hard limit)
/// when `workers` workers may not fit: each holds about five fds on the
/// host (pipes, its connection), and the usual soft limit of 1024 would
/// stop a pool of a few hundred launched workers.
pub(crate) fn ensure_fd_room(workers: usize) {
    let need = (workers as u64).saturating_mul(6).saturating_add(256);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a pointer to a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < need {
            lim.rlim_cur = need.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What the per-worker threads share.
struct Session {
    slot: usize,
    gen: u64,
    cap: usize,
    child: Arc<Mutex<Child>>,
    tail: Arc<Mutex<VecDeque<u8>>>,
    stderr_thread: thread::JoinHandle<()>,
    events: Sender<Event>,
}

fn spawn_one(
    command: &WorkerCommand,
    listener: Option<&Arc<Listener>>,
    req: &SpawnRequest,
    events: &Sender<Event>,
) -> std::io::Result<WorkerProc> {
    let mut cmd = command.command(req.slot);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let host_pid = std::process::id() as libc::pid_t;
    let dial = match listener {
        None => {
            // Workers see none of the host's environment (secrets included)
            // and start in an empty private directory, not the caller's. The
            // worker sets its parent-death signal itself (see
            // the worker's `die_with_parent`): no `pre_exec`, so `posix_spawn`.
            cmd.env_clear().current_dir(&command.cwd).arg(host_pid.to_string()).process_group(0);
            None
        }
        Some(listener) => {
            // A launcher needs the caller's environment (SLURM_*, PATH,
            // HOME, SSH_AUTH_SOCK); the worker clears whatever reaches it.
            // `/` exists on every node.
            cmd.current_dir("/");
            // SAFETY: the closure only makes async-signal-safe syscalls.
            unsafe {
                cmd.pre_exec(move || in_child_before_exec(host_pid));
            }
            Some((Arc::clone(listener), listener.expect()?))
        }
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            if let Some((listener, (token, _))) = &dial {
                listener.forget(token);
            }
            return Err(e);
        }
    };
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let child = Arc::new(Mutex::new(child));
    let (frames_tx, frames_rx) = crossbeam_channel::unbounded::<Vec<u8>>();

    let tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
    let name = |what: &str| format!("wpool-w{}-{what}", req.slot + 1);
    let stderr_thread = {
        let tail = Arc::clone(&tail);
        thread::Builder::new().name(name("stderr")).spawn(move || drain_into_tail(stderr, &tail))?
    };
    let session = Session {
        slot: req.slot,
        gen: req.gen,
        cap: frame_cap(req.hello.settings.limits.max_item_size),
        child: Arc::clone(&child),
        tail: Arc::clone(&tail),
        stderr_thread,
        events: events.clone(),
    };
    let link = match dial {
        None => {
            let mut hello_frame = Vec::new();
            wire::encode(&HostMsg::Hello(Box::new(req.hello.clone())), &mut hello_frame);
            let _ = frames_tx.send(hello_frame);
            thread::Builder::new().name(name("write")).spawn(move || write_frames(stdin, frames_rx))?;
            thread::Builder::new().name(name("read")).spawn(move || {
                let violation = read_frames(&session, stdout);
                session.finish(violation, None);
            })?;
            None
        }
        Some((listener, (token, arrived))) => {
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
                let (tail, child, link) = (Arc::clone(&tail), Arc::clone(&child), Arc::clone(&link));
                thread::Builder::new().name(name("stdout")).spawn(move || {
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
            let hello = req.hello.clone();
            thread::Builder::new().name(name("read")).spawn(move || {
                let (violation, unconnected) = match wait_for_connection(&session, &arrived) {
                    Some(conn) => (remote_session(&session, conn, &session_link, &hello, frames_rx), None),
                    None => {
                        listener.forget(&token);
                        (None, Some(listener.addr()))
                    }
                };
                drop(stdin);
                session.finish(violation, unconnected);
            })?;
            Some(link)
        }
    };
    Ok(WorkerProc { slot: req.slot, gen: req.gen, pid, frames: Some(frames_tx), child, link })
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
    frames: Receiver<Vec<u8>>,
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
    let writer_thread = thread::Builder::new().name(format!("wpool-w{}-write", session.slot + 1)).spawn(move || {
        write_frames(&*writer, frames);
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

/// Writes queued frames, coalescing small ones that are already waiting into
/// one write: with small chunks, one syscall then carries many.
fn write_frames(mut out: impl Write, frames: Receiver<Vec<u8>>) {
    const COALESCE: usize = 256 << 10;
    let mut batch = Vec::new();
    while let Ok(mut frame) = frames.recv() {
        loop {
            if batch.is_empty() && frame.len() >= COALESCE {
                // Large frames go out as they are, without a copy.
                if out.write_all(&frame).is_err() {
                    return;
                }
            } else {
                batch.extend_from_slice(&frame);
            }
            if batch.len() >= COALESCE {
                break;
            }
            match frames.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            if out.write_all(&batch).is_err() {
                return;
            }
            batch.clear();
        }
    }
    // Dropping the output closes the worker's input: it exits on EOF.
}

fn drain_into_tail(mut from: impl Read, tail: &Mutex<VecDeque<u8>>) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.extend(&buf[..n]);
                let excess = t.len().saturating_sub(WORKER_STDERR_TAIL);
                t.drain(..excess);
            }
        }
    }
}

/// Turns frames into events until the stream ends; returns the violation
/// that ended it, if one did.
fn read_frames(session: &Session, from: impl Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut first = true;
    // Small frames arrive many per read.
    let mut from = std::io::BufReader::with_capacity(64 << 10, from);
    loop {
        let frame_cap = if first { HANDSHAKE_FRAME_CAP } else { session.cap };
        match wire::read_frame(&mut from, frame_cap, &mut buf) {
            Ok(()) => {}
            Err(FrameError::Eof) => return None,
            Err(e) => return Some(e.to_string()),
        }
        first = false;
        match wire::decode::<WorkerMsg>(&buf) {
            Ok(msg) => {
                if session.events.send(Event::Msg { slot: session.slot, gen: session.gen, msg }).is_err() {
                    return None;
                }
            }
            Err(e) => return Some(e.to_string()),
        }
    }
}

impl Session {
    /// Whatever ended the stream: makes sure the process is gone, reaps it
    /// and reports how it ended.
    fn finish(self, violation: Option<String>, unconnected: Option<SocketAddr>) {
        if violation.is_some() {
            kill(&self.child);
        }
        let status = reap(&self.child);
        // Give the stderr drain a moment to see EOF so the tail is complete.
        let deadline = Instant::now() + Duration::from_millis(200);
        while !self.stderr_thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        let stderr = {
            let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&t.iter().copied().collect::<Vec<u8>>()).trim_end().to_string()
        };
        let crash = match (status.code(), status.signal()) {
            (Some(0), _) => None,
            (Some(code), _) => Some(Crash::Exited { code }),
            (None, Some(signal)) => Some(Crash::Signaled { signal }),
            (None, None) => Some(Crash::Exited { code: -1 }),
        };
        let end = WorkerEnd { crash, violation, stderr, unconnected };
        let _ = self.events.send(Event::Exited { slot: self.slot, gen: self.gen, end });
    }
}

/// Whether the process has exited (reaped or not).
fn has_exited(child: &Mutex<Child>) -> bool {
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
fn kill(child: &Mutex<Child>) {
    let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
    if probe(c.id()) == Probe::Running {
        let _ = c.kill();
    }
}

/// Waits for the process to exit; one that closed its output but lingers is
/// killed after a grace period. Then whatever is left of its process group
/// (a launcher's helpers) is killed, before the reap frees the pid.
fn reap(child: &Mutex<Child>) -> ExitStatus {
    let grace = Instant::now() + Duration::from_secs(2);
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
        thread::sleep(Duration::from_millis(1));
    }
}
