//! SIGINT, SIGTERM and SIGHUP: how a run is stopped from outside.
//!
//! Ctrl-C, `kill`, `timeout`, systemd and Slurm's time limits all mean the
//! same: stop starting work, print every result that is finished (in order),
//! end the workers, remove private files, and exit with 128 + the signal.
//! A second signal ends the process at once (the workers die with it: their
//! parent-death signal fires).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The first stop signal received, if any, and the pools it stops.
#[derive(Clone)]
pub struct Interrupts {
    signal: Arc<AtomicI32>,
    cancellers: Arc<Mutex<Vec<wpool::Canceller>>>,
}

impl Interrupts {
    /// Installs the handlers. Done before any pool starts, so that a signal
    /// during start-up also ends the run cleanly (the default action would
    /// kill the process and leave its private files behind).
    pub fn install() -> Result<Interrupts> {
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing the signal handlers")?;
        let this = Interrupts { signal: Arc::new(AtomicI32::new(0)), cancellers: Arc::default() };
        let seen = this.clone();
        std::thread::Builder::new()
            .name("wpool-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if seen.signal.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        seen.cancellers.lock().unwrap().iter().for_each(wpool::Canceller::cancel);
                    } else {
                        crate::say(format_args!("wpool: {}: stopping at once", name(sig)));
                        std::process::exit(128 + sig);
                    }
                }
            })
            .context("starting the signal thread")?;
        Ok(this)
    }

    /// A stop signal cancels this pool's runs (at once if one came already).
    pub fn watch(&self, pool: &wpool::Pool) {
        let canceller = pool.canceller();
        let mut cancellers = self.cancellers.lock().unwrap();
        if self.received().is_some() {
            canceller.cancel();
        }
        cancellers.push(canceller);
    }

    /// The signal that stopped the run.
    pub fn received(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }
}

/// How the end of a run by `sig` is reported.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "interrupted (SIGINT)",
        SIGTERM => "terminated (SIGTERM)",
        SIGHUP => "hung up (SIGHUP)",
        _ => "stopped by a signal",
    }
}
