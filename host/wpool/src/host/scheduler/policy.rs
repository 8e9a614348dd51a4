//! The restart policy: when the pool stops replacing dead workers and gives
//! up, and how it says why (start-up failures, restart intensity).
//!
//! It counts deaths and words the errors; it must not spawn or kill workers
//! (the scheduler does) nor touch items (the ledger does).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::slots::{Death, KillReason, SlotState};
use super::SchedConfig;
use crate::error::Error;

#[derive(Debug)]
pub(super) struct RestartPolicy {
    /// At most `max_restarts` deaths within `window`...
    window: Duration,
    max_restarts: u32,
    /// ...and fewer than `startup_limit` workers in a row that never start.
    startup_limit: u32,
    handshake_timeout: Duration,
    /// Recent deaths, oldest first, within `window`.
    deaths: VecDeque<Instant>,
    startup_failures: u32,
    /// What the last worker that failed to start said about it.
    last_failure: String,
}

impl RestartPolicy {
    pub(super) fn new(cfg: &SchedConfig) -> RestartPolicy {
        RestartPolicy {
            window: cfg.restart_window,
            max_restarts: cfg.max_restarts,
            startup_limit: (cfg.workers as u32).max(3),
            handshake_timeout: cfg.handshake_timeout,
            deaths: VecDeque::new(),
            startup_failures: 0,
            last_failure: String::new(),
        }
    }

    /// A run begins: earlier deaths do not count against it.
    pub(super) fn begin_run(&mut self) {
        self.deaths.clear();
        self.startup_failures = 0;
    }

    /// A worker completed its handshake.
    pub(super) fn started(&mut self) {
        self.startup_failures = 0;
    }

    /// A starting worker reported why it cannot run (before exiting).
    pub(super) fn failed_to_start(&mut self, message: String) {
        self.last_failure = message;
    }

    /// Counts the death of the worker in `slot` at `now`; the error to stop
    /// the pool with, if this death is one too many.
    pub(super) fn on_death(&mut self, slot: usize, death: &Death, now: Instant) -> Option<Error> {
        let startup = match death.was {
            SlotState::Starting(_) => self.on_startup_failure(slot, death),
            _ => None,
        };
        self.deaths.push_back(now);
        while self.deaths.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.deaths.pop_front();
        }
        let deaths = self.deaths.len() as u32;
        let intensity = (deaths > self.max_restarts).then_some(Error::RestartIntensity { deaths, window: self.window });
        startup.or(intensity)
    }

    fn on_startup_failure(&mut self, slot: usize, death: &Death) -> Option<Error> {
        self.startup_failures += 1;
        let mut last = self.startup_message(slot + 1, death);
        if !self.last_failure.is_empty() {
            last = format!("{last}: {}", std::mem::take(&mut self.last_failure));
        } else if !death.end.stderr.is_empty() {
            last = format!("{last}; its stderr: {}", death.end.stderr);
        }
        let failures = self.startup_failures;
        (failures >= self.startup_limit).then_some(Error::WorkerStartup { failures, last })
    }

    fn startup_message(&self, worker: usize, death: &Death) -> String {
        let timeout = self.handshake_timeout;
        let crash = &death.crash;
        match (death.killed, death.end.unconnected) {
            (Some(KillReason::Handshake), Some(addr)) => format!(
                "worker {worker} did not connect back to {addr} within {timeout:?} (can workers reach that \
                 address from where the launcher starts them?)"
            ),
            (Some(KillReason::Handshake), None) => {
                format!("worker {worker} did not complete the handshake within {timeout:?}")
            }
            (_, Some(addr)) => {
                format!("worker {worker}: its launcher {crash} before the worker connected back to {addr}")
            }
            _ => format!("worker {worker} {crash}"),
        }
    }
}
