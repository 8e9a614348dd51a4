//! # wpool — a sandboxed WebAssembly worker pool
//!
//! `multiprocessing.Pool` for untrusted code: map a WebAssembly kernel (a
//! component of world `wpool:kernel/kernel`, see `wit/wpool.wit`) over many
//! items on every core. Each worker is a separate OS process hosting
//! wasmtime; a kernel that traps, loops or crashes its worker fails *that
//! item* with a typed [`TaskError`], and the pool keeps going.
//!
//! ```no_run
//! use wpool::{Kernel, Pool};
//!
//! let kernel = Kernel::from_file("target/kernels/wasip2/upper.wasm")?;
//! let mut pool = Pool::builder(kernel).workers(2).build()?;
//! for result in pool.imap(["hello", "world"]) {
//!     match result? {
//!         Ok(bytes) => println!("{}", String::from_utf8_lossy(&bytes)),
//!         Err(task_error) => eprintln!("{task_error}"),
//!     }
//! }
//! # Ok::<(), wpool::Error>(())
//! ```
//!
//! ## Where things are
//!
//! The root holds what every caller needs: [`Kernel`], [`Pool`] and its
//! [`PoolBuilder`], the iterators [`Imap`] / [`ImapUnordered`] and their
//! [`ItemResult`], [`Limits`], [`Grants`] / [`DirGrant`], [`Chunksize`],
//! [`Canceller`], [`Error`] and [`TaskError`] (with [`TaskErrorKind`],
//! [`Crash`], [`ItemIndex`], [`WorkerId`]). The rest is in modules:
//! [`pipeline`], [`mapreduce`], [`slurm`], [`inspect`], [`cache`],
//! [`sandbox`], [`stats`].
//!
//! The `test-hooks` cargo feature is for wpool's own tests and benches, not a
//! stable API: fault-injection hooks on [`PoolBuilder`] and the wire protocol.
//!
//! ## Workers without a main guard
//!
//! Workers are this same executable, re-executed with a hidden argument. The
//! library registers a process constructor that recognises that argument and
//! turns the process into a worker *before* `main` runs, so a program using
//! `wpool` needs no special code in `main` (unlike Python's
//! `if __name__ == "__main__"`). [`PoolBuilder::worker_program`] points at
//! another binary instead (any binary linking `wpool`, such as the CLI).
//!
//! Linux only: workers rely on `prctl(PR_SET_PDEATHSIG)` and process groups.

#![deny(missing_docs)]
#![cfg(target_os = "linux")]

pub mod cache;
mod error;
mod grants;
mod host;
pub mod items;
mod kernel;
mod limits;
mod shared;
pub mod splice;
mod wasi;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod wire;
#[cfg(not(feature = "test-hooks"))]
mod wire;
mod worker;

/// The wire protocol under its old name (the compromised-worker tests and
/// the benches speak it); `test-hooks` only, not a stable API.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use wire as protocol;

/// The dial-back transport under its old name, for the compromised-worker
/// tests; `test-hooks` only, not a stable API.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod remote {
    pub use crate::host::listener::LOOPBACK_ONLY_VAR;
    pub use crate::worker::dial::{dial_back, DialError};
}

pub use error::{Crash, Error, ItemIndex, TaskError, TaskErrorKind, WorkerId};
pub use grants::{DirGrant, Grants};
pub use host::pool::{Canceller, Imap, ImapUnordered, Pool, PoolBuilder};
pub use host::scheduler::{Chunksize, ItemInfo, ItemResult, SharedResult};
pub use items::Items;
pub use kernel::Kernel;
pub use limits::Limits;
pub use shared::SharedBytes;

/// Starts, now, the process that will fork this program's local workers
/// (the pool's *zygote*), so that its start-up overlaps whatever the
/// program does before it builds a pool: reading the kernel, opening
/// inputs. The next pool built in this process with local workers and the
/// default worker program adopts it, and forks its workers (and their
/// replacements) from it instead of `exec`-ing each; without this call,
/// pools `exec` their workers. `wpool map` calls it first thing.
///
/// The zygote is started from a thread of its own that lives as long as
/// the process: a zygote never adopted ends with the process, and every
/// worker it forked gets `SIGKILL` when the process dies, as exec'd
/// workers do.
///
/// # Errors
/// The zygote could not be spawned; pools then `exec` their workers.
pub fn prestart() -> std::io::Result<()> {
    host::zygote::prestart()
}

/// Multi-stage pipelines: items stream through several pools at once.
pub mod pipeline {
    pub use crate::host::pipeline::{Pipeline, PipelineResult, StageFailure};
}

/// MapReduce: a map pool, grouping by key, a reducer pool.
pub mod mapreduce {
    pub use crate::host::mapreduce::{KeyResult, MapReduce};
}

/// Workers started with `srun` inside a Slurm allocation.
pub mod slurm {
    pub use crate::host::slurm::{Slurm, SlurmError};
}

/// What a kernel is without running it: its world, exports and imports.
pub mod inspect {
    pub use crate::kernel::{Inspection, KernelInfo, World};
}

/// How workers confined themselves, as each reports in its handshake.
pub mod sandbox {
    pub use crate::wire::{Enforcement, SandboxStatus};
}

/// What a pool's workers did: counters and where each worker runs.
pub mod stats {
    pub use crate::host::scheduler::{PoolStats, WorkerInfo};
}

/// The hidden worker entry point, run by the C runtime before `main`.
///
/// glibc calls `.init_array` functions with `(argc, argv, envp)`. Only when
/// the first argument is exactly the worker flag does this do anything; it
/// then never returns. It reads `argv` directly because `std::env::args` may
/// not be initialised yet at this point.
extern "C" fn worker_entry(argc: libc::c_int, argv: *const *const libc::c_char, _envp: *const *const libc::c_char) {
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the process's argv, valid for argc entries.
    let first = unsafe { *argv.add(1) };
    if first.is_null() {
        return;
    }
    // SAFETY: argv entries are NUL-terminated C strings.
    let first = unsafe { std::ffi::CStr::from_ptr(first) };
    if first.to_bytes() == wire::ZYGOTE_ARG.as_bytes() {
        // `--wpool-zygote HOST_PID`: a pool's zygote (see `worker::zygote`).
        // SAFETY: argc >= 2, so argv[2] is a valid C string or NULL.
        let pid = (argc >= 3).then(|| unsafe { *argv.add(2) }).filter(|p| !p.is_null());
        // SAFETY: a non-null argv entry is a NUL-terminated C string.
        let pid = pid.and_then(|p| unsafe { std::ffi::CStr::from_ptr(p) }.to_str().ok()?.parse().ok());
        match pid {
            // SAFETY: no other thread exists yet (this runs before `main`),
            // and argv[0] and argv[1] are this process's own strings.
            Some(host) => unsafe { worker::zygote::main(host, (*argv).cast_mut(), first.as_ptr().cast_mut()) },
            None => {
                eprintln!("{} is for the zygote a wpool host starts, followed by the host's pid", wire::ZYGOTE_ARG);
                std::process::exit(2)
            }
        }
    }
    if first.to_bytes() == wire::WORKER_ARG.as_bytes() {
        // `--wpool-worker HOST_PID` for a worker the host spawned itself,
        // `--wpool-worker dial` for one started through a launcher.
        let mode = (argc >= 3)
            .then(|| {
                // SAFETY: argc >= 3, so argv[2] is a valid C string (or NULL).
                let p = unsafe { *argv.add(2) };
                (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) })
            })
            .flatten()
            .and_then(|p| p.to_str().ok());
        let start = match mode {
            Some(wire::DIAL_ARG) => worker::Transport::DialBack,
            Some(pid) => pid.parse().map_or(worker::Transport::Unknown, worker::Transport::Pipes),
            None => worker::Transport::Unknown,
        };
        worker::main(start);
    }
}

#[used]
#[link_section = ".init_array"]
static WORKER_ENTRY: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) = worker_entry;
