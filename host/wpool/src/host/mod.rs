//! The host side: the pool a caller builds, the scheduler that hands items
//! to workers, and the supervisor that starts, watches and reaps worker
//! processes.
//!
//! Talks to workers only through [`crate::wire`]: nothing here uses the
//! worker side's code, and the worker side uses nothing from here.

pub(crate) mod listener;
pub(crate) mod mapreduce;
pub(crate) mod pipeline;
pub(crate) mod pool;
pub(crate) mod rundir;
pub(crate) mod scheduler;
pub(crate) mod slurm;
pub(crate) mod supervisor;
