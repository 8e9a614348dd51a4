//! Error values: per-item [`TaskError`]s and pool-level [`Error`]s.
//!
//! Owns the taxonomy of docs/architecture.md §5 and its stable snake_case names. It
//! never decides *when* something failed, only how that is described.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Position of an item in the caller's input, counted from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemIndex(pub u64);

impl ItemIndex {
    /// The index as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ItemIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker slot of a pool, numbered from 1. A respawned worker keeps the
/// slot number of the one it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.0)
    }
}

/// How a worker process ended when it was not asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Crash {
    /// Killed by a signal (by the OS, by someone else, or by the host after a
    /// protocol violation or a missed deadline).
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// Exited on its own with this status.
    Exited {
        /// The exit status.
        code: i32,
    },
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crash::Signaled { signal } => write!(f, "killed by signal {signal} ({})", signal_name(*signal)),
            Crash::Exited { code } => write!(f, "exited with status {code}"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSYS => "SIGSYS",
        libc::SIGILL => "SIGILL",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// What went wrong with one item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// The kernel's `map` returned `Err(message)`.
    Kernel,
    /// The kernel trapped (panic, `unreachable`, out-of-bounds access, …).
    Trap,
    /// The item ran past the configured timeout.
    Timeout,
    /// The item used up its fuel.
    OutOfFuel,
    /// The kernel tried to grow memory past the configured cap.
    MemoryLimit,
    /// The kernel recursed past the wasm stack limit.
    StackOverflow,
    /// The kernel called `exit`; WASI 0.2 carries only success (0) or failure (1).
    KernelExit(i32),
    /// The worker process died while running this item, on every attempt.
    WorkerCrashed(Crash),
    /// The item or its result is larger than the configured cap.
    ItemTooLarge,
    /// A worker broke the protocol while holding this item.
    Protocol,
}

impl TaskErrorKind {
    /// The stable snake_case name used by `--json` and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            TaskErrorKind::Kernel => "kernel",
            TaskErrorKind::Trap => "trap",
            TaskErrorKind::Timeout => "timeout",
            TaskErrorKind::OutOfFuel => "out_of_fuel",
            TaskErrorKind::MemoryLimit => "memory_limit",
            TaskErrorKind::StackOverflow => "stack_overflow",
            TaskErrorKind::KernelExit(_) => "kernel_exit",
            TaskErrorKind::WorkerCrashed(_) => "worker_crashed",
            TaskErrorKind::ItemTooLarge => "item_too_large",
            TaskErrorKind::Protocol => "protocol",
        }
    }
}

impl fmt::Display for TaskErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The failure of one item. The run goes on for the other items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// Which input item failed.
    pub index: ItemIndex,
    /// How it failed.
    pub kind: TaskErrorKind,
    /// Human-readable detail: the kernel's message, the trap with its wasm
    /// backtrace, the limit that was hit.
    pub message: String,
    /// The worker that ran the final attempt, if any ran it.
    pub worker: Option<WorkerId>,
    /// How many times the item was started (retries after worker crashes
    /// included); 0 when it never reached a worker.
    pub attempts: u32,
    /// The last bytes the kernel wrote to stderr while running the item
    /// (bounded; empty when it wrote nothing).
    pub stderr: Vec<u8>,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item {}: {}: {}", self.index, self.kind, self.message)?;
        if let Some(w) = self.worker {
            write!(f, " ({w}")?;
            if self.attempts > 1 {
                write!(f, ", {} attempts", self.attempts)?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

/// A failure of the pool itself: loading the kernel, starting workers,
/// configuration. Distinct from [`TaskError`], which fails a single item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel file does not exist.
    #[error("kernel not found: {}", path.display())]
    KernelNotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// The kernel file exists but could not be read.
    #[error("cannot read kernel {}", path.display())]
    KernelRead {
        /// The path that was given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("{kernel}: not a WebAssembly component ({detail})")]
    NotWasm {
        /// Which kernel.
        kernel: String,
        /// What was found instead.
        detail: String,
    },
    /// A core module where a component was expected.
    #[error(
        "{kernel}: a core WebAssembly module, not a component; expected a component of world \
         `wpool:kernel/kernel` (build with `--target wasm32-wasip2`, or turn the module into a \
         component with wit-component / `wasm-tools component new`)"
    )]
    CoreModule {
        /// Which kernel.
        kernel: String,
    },
    /// The component is malformed (truncated, corrupt, fails validation).
    #[error("{kernel}: invalid WebAssembly component: {message}")]
    InvalidKernel {
        /// Which kernel.
        kernel: String,
        /// The validator's message.
        message: String,
    },
    /// The component does not export `map` with the contract's type.
    #[error("{kernel}: not a component of world `wpool:kernel/kernel`: {detail}")]
    WorldMismatch {
        /// Which kernel.
        kernel: String,
        /// What differs from the contract.
        detail: String,
    },
    /// The component imports interfaces the host does not provide.
    #[error(
        "{kernel}: imports that wpool does not provide: {}; a kernel may import only WASI 0.2 \
         (wasi:cli, wasi:io, wasi:clocks, wasi:random, wasi:filesystem, wasi:sockets)",
        imports.join(", ")
    )]
    UnsatisfiedImports {
        /// Which kernel.
        kernel: String,
        /// Every import that cannot be satisfied.
        imports: Vec<String>,
    },
    /// An `init` configuration was given for a kernel without an `init`
    /// export.
    #[error(
        "{kernel}: has no `init` export (world `wpool:kernel/kernel-with-init`), so it takes no \
         configuration"
    )]
    NoInit {
        /// Which kernel.
        kernel: String,
    },
    /// The kernel's `init` returned an error (or trapped) on a worker's first
    /// instance; nothing ran.
    #[error("{kernel}: `init` failed: {message}")]
    InitFailed {
        /// Which kernel.
        kernel: String,
        /// The kernel's message.
        message: String,
    },
    /// The artifact cache could not be used.
    #[error("artifact cache {}: {message}", path.display())]
    Cache {
        /// The cache directory or file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The shared data file ([`crate::PoolBuilder::data_file`]) could not be
    /// read or made available to the workers.
    #[error("data file {}", path.display())]
    DataFile {
        /// The file that was given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// [`crate::PoolBuilder::workers`] is 0.
    #[error("a pool needs at least 1 worker")]
    NoWorkers,
    /// [`crate::PoolBuilder::chunksize`] is a fixed size of 0.
    #[error("chunksize must be at least 1")]
    ZeroChunksize,
    /// A granted directory is not an absolute path to an existing
    /// directory.
    #[error("granted directory {} is not an absolute path to a directory", path.display())]
    GrantNotADirectory {
        /// The host path that was granted.
        path: PathBuf,
    },
    /// The `init` configuration is larger than a worker accepts.
    #[error("init configuration of {len} bytes is over the {max}-byte cap")]
    InitTooLarge {
        /// Its size in bytes.
        len: usize,
        /// The cap in bytes.
        max: usize,
    },
    /// A launcher with no command at all.
    #[error("a launcher must name a command")]
    EmptyLauncher,
    /// Launched workers are sent the kernel's wasm, and it is larger than a
    /// worker accepts.
    #[error("kernel {kernel} is {len} bytes; launched workers are sent at most {max}")]
    KernelTooLargeToSend {
        /// Which kernel.
        kernel: String,
        /// Its size in bytes.
        len: usize,
        /// The cap in bytes.
        max: usize,
    },
    /// [`crate::Limits::max_item_size`] is over [`crate::Limits::MAX_ITEM_SIZE`].
    #[error(
        "max_item_size of {len} bytes is over the {max} bytes an item can have (it must fit in wasm32's 4 GiB \
         linear memory together with its result)"
    )]
    ItemSizeTooLarge {
        /// The size asked for, in bytes.
        len: usize,
        /// The largest that works.
        max: usize,
    },
    /// A pipeline of no stages.
    #[error("a pipeline needs at least one stage")]
    EmptyPipeline,
    /// A MapReduce stage given the wrong kind of kernel: a reducer for the
    /// map stage, or a map kernel for the reduce stage.
    #[error("the {stage} stage of a MapReduce needs {expected}")]
    WrongKernelForStage {
        /// `"map"` or `"reduce"`.
        stage: &'static str,
        /// What it needs: `"a map kernel, not a reducer"` or `"a kernel of
        /// world `reducer`"`.
        expected: &'static str,
    },
    /// A worker process could not be started at all.
    #[error("cannot start worker process `{program}`")]
    Spawn {
        /// The program that was executed.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The port that workers started through a launcher dial back to could
    /// not be opened.
    #[error("cannot listen on {addr} for workers to connect back to")]
    Listen {
        /// The address asked for.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Workers started through a launcher would connect back to an address
    /// that is not loopback while `WPOOL_LOOPBACK_ONLY` is set (the test
    /// command sets it: test traffic stays on this machine's loopback).
    #[error(
        "refusing to listen for launched workers on {addr} (not a loopback address) while WPOOL_LOOPBACK_ONLY is \
         set"
    )]
    NonLoopbackListen {
        /// The address the pool would listen on (the default included).
        addr: std::net::IpAddr,
    },
    /// [`crate::slurm::Slurm`] outside a usable Slurm allocation.
    #[error("slurm")]
    Slurm(#[from] crate::slurm::SlurmError),
    /// Workers keep dying before completing the handshake.
    #[error("workers fail at start-up ({failures} in a row); last: {last}")]
    WorkerStartup {
        /// Consecutive start-up failures.
        failures: u32,
        /// What the last one said or how it ended.
        last: String,
    },
    /// Workers die faster than the restart-intensity bound.
    #[error("workers died {deaths} times within {window:?}; giving up (restart intensity)")]
    RestartIntensity {
        /// Deaths counted in the window.
        deaths: u32,
        /// The window.
        window: Duration,
    },
    /// `require_sandbox` is set and a worker could not confine itself fully.
    #[error("the worker sandbox is not fully available on this machine ({status})")]
    SandboxUnavailable {
        /// What the worker reported.
        status: String,
    },
    /// The run was cancelled through a [`crate::Canceller`].
    #[error("cancelled")]
    Cancelled,
    /// An I/O error of the host itself.
    #[error("i/o error")]
    Io(#[from] io::Error),
}

impl Error {
    /// The error and every cause below it on one line, `error: cause:
    /// cause`, as the CLI prints it.
    pub fn with_causes(&self) -> String {
        with_causes(self)
    }
}

/// `error: cause: cause…`, one line.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}
