//! The host side: the pool a caller builds, the scheduler that hands items
//! to workers, and the supervisor that starts, watches and reaps worker
//! processes, over a transport (pipes or dial-back).
//!
//! Talks to workers only through [`crate::wire`] (and shares only the leaf
//! modules with them): nothing here uses the worker side's code, and the
//! worker side uses nothing from here.

pub(crate) mod listener;
pub(crate) mod mapreduce;
pub(crate) mod pipeline;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod rundir;
pub(crate) mod scheduler;
pub(crate) mod slurm;
pub(crate) mod stop;
pub(crate) mod supervisor;
pub(crate) mod transport;
pub(crate) mod zygote;
