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
mod output;
mod signals;
mod units;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Big items pass through the host as buffers of megabytes, one after
    // another: serve them from the heap instead of mapping and unmapping
    // each (hundreds of page faults per 1 MiB item); memory goes back to the
    // system once 64 MiB of it is free. The workers do the same.
    // SAFETY: mallopt only changes allocator parameters; nothing is
    // allocated concurrently this early.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    exit::status(cmd::run(flags::Cli::parse().command))
}

/// One line on stderr. Never panics (unlike `eprintln!`): after SIGHUP the
/// terminal is gone and writing to it fails, which must not change how the
/// run ends.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
