//! A pool's zygote, from the host's side: started early by [`prestart`]
//! (from a thread that lives as long as the process), adopted by the next
//! local pool, asked for each of its workers (see `worker::zygote` for the
//! process itself and why); after a failure the pool's spawning thread
//! starts another. Forking a worker from it instead of `exec`-ing the
//! binary once per worker is what makes a local pool's start-up cheap;
//! any failure of the zygote only costs that: the spawner falls back to
//! `exec`.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::wire::ZYGOTE_ARG;

/// How long a zygote may take to answer a request before it is given up
/// on (it answers at once; this only guards against one that hangs).
const ANSWER_TIMEOUT_S: i64 = 5;

/// A zygote and the socket to ask it for workers.
pub(crate) struct Zygote {
    sock: OwnedFd,
    process: Process,
}

/// The zygote process, or the thread spawning it (see [`prestart`]).
enum Process {
    Spawned(Child),
    Spawning(crossbeam_channel::Receiver<std::io::Result<Child>>),
}

impl Zygote {
    /// Starts `program` as a zygote. The zygote and the workers it forks die
    /// with the calling thread.
    pub(crate) fn start(program: &Path) -> std::io::Result<Zygote> {
        let (sock, theirs) = socket_pair()?;
        let process = command(program, theirs).spawn()?;
        Ok(Zygote { sock, process: Process::Spawned(process) })
    }

    /// Forks a worker in directory `cwd` (absolute) whose stdin, stdout and
    /// stderr are these; returns its pid. The worker is this process's child.
    pub(crate) fn fork(&self, cwd: &Path, stdio: [BorrowedFd<'_>; 3]) -> std::io::Result<u32> {
        use std::os::unix::ffi::OsStrExt;
        let path = cwd.as_os_str().as_bytes();
        if !cwd.is_absolute() || path.len() >= libc::PATH_MAX as usize || path.contains(&0) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "workers' directory"));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&stdio));
        rustix::net::sendmsg(&self.sock, &[IoSlice::new(path)], &mut control, SendFlags::NOSIGNAL)?;
        let mut pfd = [rustix::event::PollFd::new(&self.sock, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec { tv_sec: ANSWER_TIMEOUT_S, tv_nsec: 0 };
        let ready = loop {
            match rustix::event::poll(&mut pfd, Some(&timeout)) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r?,
            }
        };
        if ready == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the zygote did not answer"));
        }
        let mut answer = [0u8; 4];
        let (n, _) = rustix::net::recv(&self.sock, &mut answer, rustix::net::RecvFlags::empty())?;
        match (n, i32::from_ne_bytes(answer)) {
            (4, pid) if pid > 0 => Ok(pid as u32),
            (4, err) if err < 0 => Err(std::io::Error::from_raw_os_error(-err)),
            _ => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the zygote is gone")),
        }
    }
}

/// The zygote command: `program` with no environment, `/` as its
/// directory (each worker moves to the one it is given), its own process
/// group, `sock` as its stdin.
fn command(program: &Path, sock: OwnedFd) -> Command {
    let mut c = Command::new(program);
    c.arg0("wpool-zygote")
        .arg(ZYGOTE_ARG)
        .arg(std::process::id().to_string())
        .env_clear()
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::from(sock))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    Ok(socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// The zygote [`prestart`] started, until a pool adopts it.
static EARLY: std::sync::Mutex<Option<Zygote>> = std::sync::Mutex::new(None);

/// Starts this program's zygote now (see [`crate::prestart`]), from a
/// thread of its own: the caller goes on at once instead of waiting for a
/// core behind the `exec` it started (the parent of a `vfork` resumes on the
/// core where its child runs), and requests can be queued on the socket
/// before the zygote runs. The zygote and the workers it forks die when
/// the thread that started it ends, so that thread lives as long as the
/// process, parked.
pub(crate) fn prestart() -> std::io::Result<()> {
    let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
    if early.is_none() {
        let (sock, theirs) = socket_pair()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new().name("wpool-zygote".into()).spawn(move || {
            let _ = tx.send(command(Path::new("/proc/self/exe"), theirs).spawn());
            drop(tx);
            loop {
                std::thread::park();
            }
        })?;
        *early = Some(Zygote { sock, process: Process::Spawning(rx) });
    }
    Ok(())
}

/// The zygote [`prestart`] started, for the first pool that asks.
pub(crate) fn take_early() -> Option<Zygote> {
    EARLY.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl Drop for Zygote {
    /// The workers it forked are not its children: killing it touches none.
    fn drop(&mut self) {
        if let Process::Spawning(rx) = &self.process {
            match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                Ok(Ok(child)) => self.process = Process::Spawned(child),
                // Never spawned; or so late that it finds its socket closed
                // and exits.
                _ => return,
            }
        }
        if let Process::Spawned(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three pipes for a worker: the host's ends (its stdin to write, its
/// stdout and stderr to read) and the worker's, all close-on-exec.
pub(crate) struct Pipes {
    /// The host writes frames here.
    pub to_worker: OwnedFd,
    /// The host reads frames here.
    pub from_worker: OwnedFd,
    /// The host reads the worker's stderr here.
    pub stderr: OwnedFd,
    /// The worker's stdin, stdout and stderr.
    pub theirs: [OwnedFd; 3],
}

impl Pipes {
    /// Three new pipes.
    pub(crate) fn new() -> std::io::Result<Pipes> {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (in_r, in_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
        Ok(Pipes { to_worker: in_w, from_worker: out_r, stderr: err_r, theirs: [in_r, out_w, err_w] })
    }

    /// The worker's ends, to hand to the zygote.
    pub(crate) fn theirs(&self) -> [BorrowedFd<'_>; 3] {
        [self.theirs[0].as_fd(), self.theirs[1].as_fd(), self.theirs[2].as_fd()]
    }
}
