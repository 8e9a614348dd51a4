//! Exit statuses, named once, and how an error becomes one.
//!
//! 0 every item succeeded; 1 at least one item failed (for `inspect`: the
//! kernel is rejected); 2 usage, kernel-load or input errors (nothing run)
//! and pool failures; 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM,
//! 129 SIGHUP). A closed stdout (`| head -1`) is a quiet 0, as in ripgrep.

use std::io;
use std::process::ExitCode;

/// How a command that did its work ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Success,
    /// The command ran, and some item failed (or `inspect` rejected the
    /// kernel).
    Failed,
    /// A stop signal ended the run, after the finished results were printed.
    Signal(i32),
}

/// Exit status of [`Exit::Success`].
pub const SUCCESS: u8 = 0;
/// Exit status of [`Exit::Failed`].
pub const FAILED: u8 = 1;
/// Exit status of an error: bad usage, a kernel or input that cannot be
/// used, a pool that cannot run.
pub const ERROR: u8 = 2;

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => SUCCESS,
            Exit::Failed => FAILED,
            Exit::Signal(sig) => 128 + sig as u8,
        }
    }
}

/// The status of a command's outcome; an error is said on stderr first.
pub fn status(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(SUCCESS),
        Err(e) => {
            let hint = e.chain().find_map(|c| c.downcast_ref::<wpool::Error>()).map_or("", flag_hint);
            crate::say(format_args!("wpool: error: {e:#}{hint}"));
            ExitCode::from(ERROR)
        }
    }
}

/// The flag behind a library error, said after its message: the library
/// knows builder methods, not flags.
fn flag_hint(e: &wpool::Error) -> &'static str {
    use wpool::Error;
    match e {
        Error::NoInit { .. } => " (--init)",
        Error::InitTooLarge { .. } => " (--init FILE)",
        Error::SandboxUnavailable { .. } => "; run without --require-sandbox to accept that",
        Error::NonLoopbackListen { .. } => {
            ": pass a loopback address (--listen 127.0.0.1), or unset WPOOL_LOOPBACK_ONLY on a real cluster"
        }
        Error::ItemSizeTooLarge { .. } => " (--max-item-size)",
        Error::NoWorkers => " (-j)",
        Error::ZeroChunksize => " (--chunksize)",
        Error::EmptyLauncher => " (--launcher)",
        Error::GrantNotADirectory { .. } => " (--allow-dir)",
        Error::KernelTooLargeToSend { .. } => " (workers started through --launcher or --slurm)",
        Error::Slurm(wpool::slurm::SlurmError::NoAllocation) => {
            ", e.g. `salloc -N2 -n4 wpool map --slurm KERNEL INPUT`"
        }
        _ => "",
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}
