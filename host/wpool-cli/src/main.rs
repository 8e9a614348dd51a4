//! `wpool`: map a sandboxed WebAssembly kernel over lines, records or files
//! on every core.
//!
//! A thin layer over the `wpool` library: flags ([`flags`]), one file per
//! command ([`cmd`]), input splitting, output formats and progress, stop
//! signals, exit statuses ([`exit`]). It never talks to workers itself.

mod cmd;
mod exit;
mod flags;
mod input;
mod joblog;
mod output;
mod quarantine;
mod signals;
mod units;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Big items pass through the host as buffers of megabytes, one after
    // another: serve them from the heap instead of mapping and unmapping
    // each (hundreds of page faults per 1 MiB item); memory goes back to the
    // system once 16 MiB of it is free. The workers do the same.
    // SAFETY: mallopt only changes allocator parameters; nothing is
    // allocated concurrently this early.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
    if maps_locally(std::env::args_os()) {
        // The process that forks the local workers starts first thing, its
        // start-up overlapping everything else the host does before its
        // pool needs it (best effort: if it cannot start, the pool execs
        // its workers; one not needed after all, as for `map --help`, ends
        // with the process).
        let _ = wpool::prestart();
    }
    widen_stdout();
    exit::status(cmd::run(flags::Cli::parse().command))
}

/// Whether the command line is `wpool map …` without a launcher: a run
/// whose pool will have local workers.
fn maps_locally(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<std::ffi::OsString> = args.skip(1).collect();
    args.first().is_some_and(|a| a == "map")
        && !args.iter().any(|a| {
            let a = a.as_encoded_bytes();
            a.starts_with(b"--launcher") || a.starts_with(b"--slurm")
        })
}

/// When stdout is a pipe, makes it hold 1 MiB (the unprivileged maximum)
/// instead of 64 KiB: megabytes of results then reach the reader in a few
/// rounds instead of one per 64 KiB. Best effort (past the per-user pipe
/// budget the kernel refuses; the pipe works as it was).
///
/// Not stdin: a producer writing into a 1 MiB pipe keeps a core busy until
/// it is full (`seq` for about 25 ms), while the host and its workers start
/// on the cores left; with 64 KiB it waits after a millisecond or two. The
/// first result of `seq 10000000 | wpool map -j 2 echo.wasm` came 9.9 ms
/// after the start with a widened stdin and 7.2 ms without (two cores),
/// while whole runs fed through a pipe took as long either way (1 M small
/// lines 1.007x, 3 M lines from `seq` 1.011x, 32 half-megabyte lines 0.88x).
fn widen_stdout() {
    use std::os::fd::AsRawFd;
    let fd = std::io::stdout().as_raw_fd();
    // SAFETY: plain syscalls on the process's standard output.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
            let _ = libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
        }
    }
}

/// One line on stderr. Never panics (unlike `eprintln!`): after SIGHUP the
/// terminal is gone and writing to it fails, which must not change how the
/// run ends.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
