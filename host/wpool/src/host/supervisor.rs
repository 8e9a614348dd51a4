//! Worker processes from the host's side: spawning, reading and writing
//! frames, and how each process ended.
//!
//! Owns OS processes and the thread that forks them. How frames travel
//! (pipes, or the connection a launched worker dials back on) is
//! [`crate::host::transport`]'s; probing, killing and reaping a process is
//! [`crate::host::process`]'s. It turns everything a worker does into
//! [`Event`]s on one channel and does not interpret them: retries,
//! deadlines and restart policy belong to the scheduler.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::Crash;
use crate::host::process::{kill, reap, Proc};
use crate::host::transport::{hello_frame, Link, Started, Transport};
use crate::host::zygote::{Pipes, Zygote};
use crate::shared::SharedBytes;
use crate::splice::SplicePipe;
use crate::wire::{
    self, frame_cap, FrameError, Hello, Incoming, OutFrame, ResultsAt, WireError, WorkerMsg, DIAL_ARG,
    HANDSHAKE_FRAME_CAP, WORKER_ARG,
};

/// A frame for a worker, its large items shared with the ledger.
pub(crate) type Frame = OutFrame<Shared>;

/// A large item's bytes, shared by the ledger (for a retry) and the frame
/// writer (which writes them from this buffer).
#[derive(Debug, Clone)]
pub(crate) struct Shared(pub(crate) Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A `Hello` frame up to this size is written into a new worker's pipe
/// before it runs: an empty pipe takes 64 KiB without blocking.
const HELLO_IN_PIPE: usize = 32 << 10;

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
    Msg { slot: usize, gen: u64, msg: FromWorker },
    /// The process is gone and reaped.
    Exited { slot: usize, gen: u64, end: WorkerEnd },
    /// Someone asked the current run to stop.
    Wake,
}

/// A worker's message as the host reads it.
#[derive(Debug)]
pub(crate) enum FromWorker {
    /// [`WorkerMsg::Results`] (or a [`WorkerMsg::LargeResult`] and its
    /// bytes), each result's bytes left in the buffer they were read into.
    Results(Results),
    /// Any other message.
    Msg(WorkerMsg),
}

/// Outcomes of items `offset..offset + outcomes.len()` of `chunk`; see
/// [`WorkerMsg::Results`].
#[derive(Debug)]
pub(crate) struct Results {
    pub chunk: u64,
    pub offset: u32,
    pub outcomes: Vec<Result<SharedBytes, WireError>>,
    pub busy_ns: u64,
    pub batched: u32,
    pub fallbacks: u32,
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
    frames: Option<Sender<Frame>>,
    child: Arc<Mutex<Proc>>,
    link: Option<Arc<Link>>,
}

impl WorkerProc {
    /// Queues an encoded frame. A dead worker shows up as an `Exited` event,
    /// so a failed send needs no handling here.
    pub(crate) fn send(&self, frame: Frame) {
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
            link.kill();
        }
        kill(&self.child);
    }
}

struct SpawnRequest {
    slot: usize,
    gen: u64,
    hello: Hello,
}

/// What the spawning thread is asked to do.
enum ToSpawner {
    Spawn(Box<SpawnRequest>),
    /// The pool is ending: end its zygote now, beside the workers' exits
    /// (a later worker, if any, is `exec`'d).
    RetireZygote,
}

/// The thread that forks every worker of a pool. Workers get
/// `PR_SET_PDEATHSIG`, which fires when the *forking thread* dies, so that
/// thread must live exactly as long as the pool: this one does.
pub(crate) struct Spawner {
    requests: Option<Sender<ToSpawner>>,
    thread: Option<thread::JoinHandle<()>>,
    transport: Arc<Transport>,
}

impl Spawner {
    /// Starts the spawning thread and, for launched workers, the listening
    /// socket they dial back to.
    pub(crate) fn start(command: WorkerCommand, events: Sender<Event>) -> std::io::Result<Spawner> {
        let transport = Arc::new(Transport::new(&command)?);
        let (tx, rx) = crossbeam_channel::unbounded::<ToSpawner>();
        let thread = {
            let transport = Arc::clone(&transport);
            thread::Builder::new().name("wpool-spawner".into()).spawn(move || {
                // Local workers are forked by the zygote the program
                // started early, if it did.
                let mut zygote = Zygotes::new(&command);
                for msg in rx {
                    let req = match msg {
                        ToSpawner::Spawn(req) => req,
                        ToSpawner::RetireZygote => {
                            zygote.retire();
                            continue;
                        }
                    };
                    // The worker's own threads report nothing before the
                    // scheduler has its process: a worker that is ready
                    // before `Spawned` is queued would otherwise be handed
                    // items with nowhere to send them.
                    let (reported, gate) = crossbeam_channel::bounded::<()>(0);
                    let event = match spawn_one(&command, &transport, &mut zygote, &req, &events, gate) {
                        Ok(proc) => Event::Spawned(proc),
                        Err(error) => Event::SpawnFailed { slot: req.slot, gen: req.gen, error },
                    };
                    if let Some(ms) = req.hello.hooks.as_ref().map(|h| h.report_spawn_after_ms).filter(|&ms| ms > 0) {
                        thread::sleep(Duration::from_millis(ms.into()));
                    }
                    let sent = events.send(event);
                    drop(reported);
                    if sent.is_err() {
                        return;
                    }
                }
            })?
        };
        Ok(Spawner { requests: Some(tx), thread: Some(thread), transport })
    }

    pub(crate) fn spawn(&self, slot: usize, gen: u64, hello: Hello) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(ToSpawner::Spawn(Box::new(SpawnRequest { slot, gen, hello })));
        }
    }

    /// Ends the pool's zygote, if it has one, on the spawning thread.
    pub(crate) fn retire_zygote(&self) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(ToSpawner::RetireZygote);
        }
    }

    /// Where launched workers dial back, if workers are launched.
    pub(crate) fn dial_addr(&self) -> Option<SocketAddr> {
        self.transport.listener().map(|l| l.addr())
    }

    /// Connections to the dial-back port refused for a missing or wrong token.
    pub(crate) fn rejected_connections(&self) -> u64 {
        self.transport.listener().map_or(0, |l| l.rejected())
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
pub(crate) struct Session {
    slot: usize,
    gen: u64,
    cap: usize,
    pub(super) child: Arc<Mutex<Proc>>,
    /// The tail of the process's stderr (and a launcher's stdout).
    pub(super) tail: Arc<Mutex<VecDeque<u8>>>,
    /// Disconnected once the thread draining the worker's stderr is done.
    stderr_done: Receiver<()>,
    events: Sender<Event>,
    /// Disconnected once the spawner has reported this worker (or its
    /// failure) to the scheduler: no event of the session goes before.
    reported: Receiver<()>,
}

fn spawn_one(
    command: &WorkerCommand,
    transport: &Transport,
    zygotes: &mut Zygotes,
    req: &SpawnRequest,
    events: &Sender<Event>,
    reported: Receiver<()>,
) -> std::io::Result<WorkerProc> {
    if let Some(zygote) = zygotes.get(command) {
        let pipes = Pipes::new()?;
        // The `Hello` goes into the empty pipe now, so that the worker
        // finds it there as it starts (unless it is big: then it would
        // block until the worker reads, and goes with the other frames).
        let hello = hello_frame(&req.hello);
        let hello_written = hello.len() <= HELLO_IN_PIPE && write_all(&pipes.to_worker, &hello).is_ok();
        match zygote.fork(&command.cwd, pipes.theirs()) {
            Ok(pid) => return forked(pid, pipes, hello_written, transport, req, events, reported),
            // Dead or stuck: this worker is exec'd, the next asks a new one.
            Err(_) => zygotes.failed(),
        }
    }
    let mut cmd = command.command(req.slot);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let opening = transport.prepare(&mut cmd, &command.cwd)?;
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            opening.abandon();
            return Err(e);
        }
    };
    let pid = child.id();
    let stdin = File::from(std::os::fd::OwnedFd::from(child.stdin.take().expect("piped stdin")));
    let stdout = File::from(std::os::fd::OwnedFd::from(child.stdout.take().expect("piped stdout")));
    let stderr = File::from(std::os::fd::OwnedFd::from(child.stderr.take().expect("piped stderr")));
    let child = Arc::new(Mutex::new(Proc::Spawned(child)));
    let session = Session::start(req, Arc::clone(&child), stderr, events, reported)?;
    let Started { frames, link } = opening.start(session, stdin, stdout, &req.hello)?;
    Ok(WorkerProc { slot: req.slot, gen: req.gen, pid, frames: Some(frames), child, link })
}

/// `write_all` on a borrowed fd.
fn write_all(fd: &std::os::fd::OwnedFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The session of a local worker the pool's zygote just forked on these
/// pipes.
fn forked(
    pid: u32,
    pipes: Pipes,
    hello_written: bool,
    transport: &Transport,
    req: &SpawnRequest,
    events: &Sender<Event>,
    reported: Receiver<()>,
) -> std::io::Result<WorkerProc> {
    let Pipes { to_worker, from_worker, stderr, theirs } = pipes;
    drop(theirs);
    let child = Arc::new(Mutex::new(Proc::Forked { pid, status: None }));
    let session = Session::start(req, Arc::clone(&child), File::from(stderr), events, reported)?;
    let opening = transport.forked(hello_written);
    let Started { frames, link } =
        opening.start(session, File::from(to_worker), File::from(from_worker), &req.hello)?;
    Ok(WorkerProc { slot: req.slot, gen: req.gen, pid, frames: Some(frames), child, link })
}

/// The spawning thread's zygote, for local workers, if the program started
/// one early ([`crate::prestart`]) for this pool to adopt: a zygote the
/// pool started itself would cost more than it saves (its `exec` and the
/// first fork one after the other, where `exec`'d workers start side by
/// side: 2.9 -> 3.4 ms for a pool of one worker built, one item, dropped).
/// After a failure of the adopted zygote (it died, or never answered) the
/// worker is spawned with `exec` instead and a new zygote is started for
/// the next, up to [`Zygotes::MAX_FAILURES`] times in a pool's life.
struct Zygotes {
    zygote: Option<Zygote>,
    /// A zygote was adopted: the pool forks its local workers.
    forks: bool,
    failures: u32,
}

impl Zygotes {
    const MAX_FAILURES: u32 = 3;

    fn new(command: &WorkerCommand) -> Zygotes {
        // One the program started early, if it is this pool's program.
        let early = (!command.is_remote() && command.program.is_none()).then(crate::host::zygote::take_early).flatten();
        Zygotes { forks: early.is_some(), zygote: early, failures: 0 }
    }

    /// The zygote, started again if need be; `None` for a pool that adopted
    /// none, for launched workers and once zygotes failed too often.
    fn get(&mut self, command: &WorkerCommand) -> Option<&Zygote> {
        if !self.forks || command.is_remote() || self.failures >= Self::MAX_FAILURES {
            return None;
        }
        if self.zygote.is_none() {
            match Zygote::start(&command.program_path()) {
                Ok(z) => self.zygote = Some(z),
                Err(_) => self.failures += 1,
            }
        }
        self.zygote.as_ref()
    }

    fn failed(&mut self) {
        self.zygote = None;
        self.failures += 1;
    }

    /// Kills and reaps the zygote; workers spawned after this are `exec`'d.
    fn retire(&mut self) {
        self.zygote = None;
        self.forks = false;
    }
}

/// Where a worker's frames go: a local worker's pipe, which takes large
/// payloads by reference ([`SplicePipe`]), or a launched worker's
/// connection, written with vectored writes.
pub(super) trait FrameSink {
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// A frame with large payloads, each after the bytes before it.
    fn write_frame(&mut self, frame: Frame) -> std::io::Result<()>;
    /// Whether it holds payloads for the worker to read.
    fn holds(&self) -> bool {
        false
    }
    /// Lets go of the payloads the worker has read.
    fn release(&mut self) {}
}

/// A connection (or anything else that is not a pipe): every byte copied.
pub(super) struct Copying<W>(pub(super) W);

impl<W: Write> FrameSink for Copying<W> {
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)
    }

    fn write_frame(&mut self, frame: Frame) -> std::io::Result<()> {
        frame.write_to(&mut self.0)
    }
}

impl FrameSink for SplicePipe<Shared> {
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }

    fn write_frame(&mut self, frame: Frame) -> std::io::Result<()> {
        let mut at = 0;
        for (pos, payload) in frame.large {
            self.write_all(&frame.bytes[at..pos])?;
            self.splice(payload)?;
            at = pos;
        }
        self.write_all(&frame.bytes[at..])
    }

    fn holds(&self) -> bool {
        self.held() > 0
    }

    fn release(&mut self) {
        SplicePipe::release(self);
    }
}

/// Writes queued frames, coalescing small ones that are already waiting into
/// one write: with small chunks, one syscall then carries many.
pub(super) fn write_frames(mut out: impl FrameSink, frames: Receiver<Frame>) {
    const COALESCE: usize = 256 << 10;
    let mut batch = Vec::new();
    loop {
        // Payloads the worker has read are let go of (their memory freed)
        // even while no frame comes.
        let next = match out.holds() {
            true => frames.recv_timeout(Duration::from_millis(10)),
            false => frames.recv().map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
        };
        let mut frame = match next {
            Ok(frame) => frame,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                out.release();
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        loop {
            if frame.len() >= COALESCE || !frame.large.is_empty() {
                // Large frames go out as they are (after what is batched),
                // without a copy.
                if out.write_bytes(&batch).is_err() || out.write_frame(frame).is_err() {
                    return;
                }
                batch.clear();
            } else {
                batch.extend_from_slice(&frame.bytes);
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
            if out.write_bytes(&batch).is_err() {
                return;
            }
            batch.clear();
        }
    }
    // Dropping the output closes the worker's input: it exits on EOF (a
    // pipe first waits until the worker has read what it references).
}

pub(super) fn drain_into_tail(mut from: impl Read, tail: &Mutex<VecDeque<u8>>) {
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
pub(super) fn read_frames(session: &Session, from: impl Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut first = true;
    let mut reported = false;
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
        let msg = match wire::decode_worker_msg(&buf) {
            Ok(Incoming::Results(r)) => {
                // The results keep the frame; the next one gets a buffer
                // of its own.
                let frame = Arc::new(std::mem::take(&mut buf));
                let outcomes = (r.outcomes.into_iter())
                    .map(|o| o.map(|(start, len)| SharedBytes::span(&frame, start, len)))
                    .collect();
                let ResultsAt { chunk, offset, busy_ns, batched, fallbacks, .. } = r;
                FromWorker::Results(Results { chunk, offset, outcomes, busy_ns, batched, fallbacks })
            }
            Ok(Incoming::Msg(WorkerMsg::LargeResult { chunk, offset, len, busy_ns, batched, fallbacks })) => {
                let data = match read_large_result(&mut from, session.cap, len) {
                    Ok(data) => data,
                    Err(violation) => return Some(violation),
                };
                let outcomes = vec![Ok(SharedBytes::from(data))];
                FromWorker::Results(Results { chunk, offset, outcomes, busy_ns, batched, fallbacks })
            }
            Ok(Incoming::Msg(msg)) => FromWorker::Msg(msg),
            Err(e) => return Some(e.to_string()),
        };
        if !reported {
            session.wait_reported();
            reported = true;
        }
        if session.events.send(Event::Msg { slot: session.slot, gen: session.gen, msg }).is_err() {
            return None;
        }
    }
}

/// The bytes of a [`WorkerMsg::LargeResult`] announcing `len`: the next
/// frame, read straight into a buffer of its own (the result handed on).
fn read_large_result(from: &mut impl Read, cap: usize, len: u32) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    match wire::read_frame(from, cap, &mut data) {
        Ok(()) if data.len() == len as usize => Ok(data),
        Ok(()) => Err(format!("a large result of {len} bytes announced, {} sent", data.len())),
        Err(FrameError::Eof) => Err(format!("the stream ended before a large result's {len} bytes")),
        Err(e) => Err(e.to_string()),
    }
}

impl Session {
    /// The session of a worker just spawned, with the thread that keeps the
    /// tail of its stderr.
    fn start(
        req: &SpawnRequest,
        child: Arc<Mutex<Proc>>,
        stderr: File,
        events: &Sender<Event>,
        reported: Receiver<()>,
    ) -> std::io::Result<Session> {
        let tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
        let (done, stderr_done) = crossbeam_channel::bounded::<()>(0);
        {
            let tail = Arc::clone(&tail);
            thread::Builder::new().name(format!("wpool-w{}-stderr", req.slot + 1)).spawn(move || {
                let _done = done;
                drain_into_tail(stderr, &tail)
            })?;
        }
        Ok(Session {
            slot: req.slot,
            gen: req.gen,
            cap: frame_cap(req.hello.settings.limits.max_item_size),
            child,
            tail,
            stderr_done,
            events: events.clone(),
            reported,
        })
    }

    /// Returns once the spawner has reported this worker to the scheduler.
    fn wait_reported(&self) {
        // Nothing is ever sent: this returns when the spawner drops its end.
        let _ = self.reported.recv();
    }

    /// The name of the worker's thread that does `what`.
    pub(super) fn thread_name(&self, what: &str) -> String {
        format!("wpool-w{}-{what}", self.slot + 1)
    }

    /// Whatever ended the stream: makes sure the process is gone, reaps it
    /// and reports how it ended.
    pub(super) fn finish(self, violation: Option<String>, unconnected: Option<SocketAddr>) {
        if violation.is_some() {
            kill(&self.child);
        }
        let status = reap(&self.child);
        // Give the stderr drain a moment to see EOF so the tail is complete
        // (a process it left behind may hold the pipe open).
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(200));
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
        self.wait_reported();
        let _ = self.events.send(Event::Exited { slot: self.slot, gen: self.gen, end });
    }
}
