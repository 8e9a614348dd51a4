//! Worker processes from the host's side: spawning, the threads that move
//! frames to and from each process, killing and reaping.
//!
//! Owns OS processes and their pipes. It turns everything a worker does into
//! [`Event`]s on one channel and does not interpret them: retries, deadlines
//! and restart policy belong to the scheduler.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Crash;
use crate::protocol::{self, frame_cap, FrameError, Hello, HostMsg, WorkerMsg, HANDSHAKE_FRAME_CAP};
use crate::worker::WORKER_ARG;

/// Bytes of a worker's own stderr kept for error messages.
const WORKER_STDERR_TAIL: usize = 4096;

/// How to start a worker process.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCommand {
    /// Prefix such as `srun -N1 -n1` or `ssh host`; empty for local workers.
    pub launcher: Vec<String>,
    /// A binary that links the `wpool` library; default: this executable.
    pub program: Option<PathBuf>,
    /// The workers' working directory (empty and private).
    pub cwd: PathBuf,
}

impl WorkerCommand {
    pub(crate) fn describe(&self) -> String {
        let mut parts = self.launcher.clone();
        parts.push(self.program_path().display().to_string());
        parts.push(WORKER_ARG.into());
        parts.join(" ")
    }

    fn program_path(&self) -> PathBuf {
        // `/proc/self/exe` still works when the binary was replaced on disk
        // after start (as `cargo build` does).
        self.program.clone().unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
    }

    fn command(&self) -> Command {
        let program = self.program_path();
        let mut cmd = match self.launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&program);
                c
            }
            None => {
                let mut c = Command::new(&program);
                c.arg0("wpool-worker");
                c
            }
        };
        cmd.arg(WORKER_ARG);
        cmd
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
    /// `None` for a clean exit with status 0.
    pub crash: Option<Crash>,
    /// A malformed or oversized frame the host refused, if that is why it ended.
    pub violation: Option<String>,
    /// The tail of the worker process's own stderr.
    pub stderr: String,
}

/// A live worker process and the handles to talk to it.
#[derive(Debug)]
pub(crate) struct WorkerProc {
    pub slot: usize,
    pub gen: u64,
    pub pid: u32,
    frames: Option<Sender<Vec<u8>>>,
    child: Arc<Mutex<Child>>,
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

    /// SIGKILLs the process unless it was already reaped (so the pid cannot
    /// have been reused).
    pub(crate) fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
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
}

impl Spawner {
    pub(crate) fn start(command: WorkerCommand, events: Sender<Event>) -> Spawner {
        let (tx, rx) = crossbeam_channel::unbounded::<SpawnRequest>();
        let thread = thread::Builder::new()
            .name("wpool-spawner".into())
            .spawn(move || {
                for req in rx {
                    let event = match spawn_one(&command, &req, &events) {
                        Ok(proc) => Event::Spawned(proc),
                        Err(error) => Event::SpawnFailed { slot: req.slot, gen: req.gen, error },
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the wpool spawner thread");
        Spawner { requests: Some(tx), thread: Some(thread) }
    }

    pub(crate) fn spawn(&self, slot: usize, gen: u64, hello: Hello) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(SpawnRequest { slot, gen, hello });
        }
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

fn spawn_one(command: &WorkerCommand, req: &SpawnRequest, events: &Sender<Event>) -> std::io::Result<WorkerProc> {
    let mut cmd = command.command();
    // Workers see none of the host's environment (secrets included) and
    // start in an empty private directory, not the caller's.
    cmd.env_clear().current_dir(&command.cwd).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let host_pid = std::process::id() as libc::pid_t;
    if command.launcher.is_empty() {
        // The worker sets its parent-death signal itself (see
        // `sandbox::die_with_parent`): no `pre_exec`, so `posix_spawn`.
        cmd.arg(host_pid.to_string()).process_group(0);
    } else {
        // SAFETY: the closure only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || crate::sandbox::in_child_before_exec(host_pid));
        }
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let child = Arc::new(Mutex::new(child));
    let (frames_tx, frames_rx) = crossbeam_channel::unbounded::<Vec<u8>>();

    let mut hello_frame = Vec::new();
    let cap = frame_cap(req.hello.settings.limits.max_item_size);
    protocol::encode(&HostMsg::Hello(Box::new(req.hello.clone())), &mut hello_frame);
    let _ = frames_tx.send(hello_frame);

    let tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
    let stderr_thread = {
        let tail = Arc::clone(&tail);
        thread::Builder::new()
            .name(format!("wpool-w{}-stderr", req.slot + 1))
            .spawn(move || drain_stderr(stderr, &tail))?
    };
    thread::Builder::new()
        .name(format!("wpool-w{}-write", req.slot + 1))
        .spawn(move || write_frames(stdin, frames_rx))?;
    {
        let (slot, gen, events, child) = (req.slot, req.gen, events.clone(), Arc::clone(&child));
        thread::Builder::new()
            .name(format!("wpool-w{}-read", req.slot + 1))
            .spawn(move || read_frames(slot, gen, stdout, cap, child, tail, stderr_thread, events))?;
    }
    Ok(WorkerProc { slot: req.slot, gen: req.gen, pid, frames: Some(frames_tx), child })
}

/// Writes queued frames, coalescing small ones that are already waiting into
/// one write: with small chunks, one syscall then carries many.
fn write_frames(mut stdin: ChildStdin, frames: Receiver<Vec<u8>>) {
    use std::io::Write;
    const COALESCE: usize = 256 << 10;
    let mut batch = Vec::new();
    while let Ok(mut frame) = frames.recv() {
        loop {
            if batch.is_empty() && frame.len() >= COALESCE {
                // Large frames go out as they are, without a copy.
                if stdin.write_all(&frame).is_err() {
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
            if stdin.write_all(&batch).is_err() {
                return;
            }
            batch.clear();
        }
    }
    // Dropping stdin closes the worker's input: it exits on EOF.
}

fn drain_stderr(mut stderr: impl Read, tail: &Mutex<VecDeque<u8>>) {
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf) {
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

#[allow(clippy::too_many_arguments)]
fn read_frames(
    slot: usize,
    gen: u64,
    stdout: impl Read,
    cap: usize,
    child: Arc<Mutex<Child>>,
    tail: Arc<Mutex<VecDeque<u8>>>,
    stderr_thread: thread::JoinHandle<()>,
    events: Sender<Event>,
) {
    let mut buf = Vec::new();
    let mut first = true;
    // Small frames arrive many per read.
    let mut stdout = std::io::BufReader::with_capacity(64 << 10, stdout);
    let violation = loop {
        let frame_cap = if first { HANDSHAKE_FRAME_CAP } else { cap };
        match protocol::read_frame(&mut stdout, frame_cap, &mut buf) {
            Ok(()) => {}
            Err(FrameError::Eof) => break None,
            Err(e) => break Some(e.to_string()),
        }
        first = false;
        match protocol::decode::<WorkerMsg>(&buf) {
            Ok(msg) => {
                if events.send(Event::Msg { slot, gen, msg }).is_err() {
                    break None;
                }
            }
            Err(e) => break Some(e.to_string()),
        }
    };
    // Whatever ended the stream, make sure the process is gone, then reap it.
    if violation.is_some() {
        kill(&child);
    }
    let status = reap(&child);
    // Give the stderr drain a moment to see EOF so the tail is complete.
    let deadline = Instant::now() + Duration::from_millis(200);
    while !stderr_thread.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    let stderr = {
        let t = tail.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&t.iter().copied().collect::<Vec<u8>>()).trim_end().to_string()
    };
    let crash = match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(Crash::Exited { code }),
        (None, Some(signal)) => Some(Crash::Signaled { signal }),
        (None, None) => Some(Crash::Exited { code: -1 }),
    };
    let _ = events.send(Event::Exited { slot, gen, end: WorkerEnd { crash, violation, stderr } });
}

fn kill(child: &Mutex<Child>) {
    let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(None) = c.try_wait() {
        let _ = c.kill();
    }
}

/// Waits for the process to exit; one that closed its output but lingers is
/// killed after a grace period.
fn reap(child: &Mutex<Child>) -> ExitStatus {
    let grace = Instant::now() + Duration::from_secs(2);
    loop {
        {
            let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
            match c.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() >= grace => {
                    let _ = c.kill();
                }
                Ok(None) => {}
                Err(_) => return ExitStatus::from_raw(-1),
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}
