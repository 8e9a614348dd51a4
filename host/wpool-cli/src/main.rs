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
    exit::status(cmd::run(flags::Cli::parse().command))
}

/// One line on stderr. Never panics (unlike `eprintln!`): after SIGHUP the
/// terminal is gone and writing to it fails, which must not change how the
/// run ends.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
