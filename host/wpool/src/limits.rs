//! Per-item limits and the engine settings derived from them.
//!
//! Owns the numbers, not their enforcement: the worker enforces them inside
//! wasmtime, the scheduler enforces the host-side deadline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits applied to every item a kernel processes.
///
/// The default is what the CLI uses without flags: no timeout, no memory cap
/// beyond wasm's own 4 GiB, no fuel, 64 MiB items and results.
///
/// ```
/// use std::time::Duration;
/// let limits = wpool::Limits {
///     timeout: Some(Duration::from_millis(500)),
///     memory: Some(64 << 20),
///     ..wpool::Limits::default()
/// };
/// assert_eq!(limits.max_item_size, 64 << 20);
/// ```
/// Construct it with struct-update syntax over `Limits::default()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time one `map` call may take (epoch interruption).
    pub timeout: Option<Duration>,
    /// Bytes of linear memory one kernel instance may hold.
    pub memory: Option<u64>,
    /// Fuel (roughly: wasm instructions) one `map` call may consume.
    pub fuel: Option<u64>,
    /// Largest item, and largest result, in bytes.
    pub max_item_size: usize,
    /// Bytes of wasm stack; deeper recursion is a `stack_overflow`.
    pub max_wasm_stack: usize,
    /// Replace the kernel instance after this many items (`maxtasksperchild`).
    pub max_items_per_instance: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: None,
            memory: None,
            fuel: None,
            max_item_size: 64 << 20,
            max_wasm_stack: 2 << 20,
            max_items_per_instance: None,
        }
    }
}

/// What a worker needs to rebuild the engine that compiled the artifact, plus
/// the limits it enforces. Crosses the wire in the handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    /// The per-item limits.
    pub limits: Limits,
    /// What kernels may reach.
    pub grants: crate::grants::Grants,
}

impl EngineSettings {
    /// The part of the settings that changes generated code: artifacts are
    /// cached under it.
    pub(crate) fn codegen_key(&self) -> String {
        format!("fuel={}", self.limits.fuel.is_some())
    }

    /// The wasmtime configuration shared by the host (compiling) and workers
    /// (deserializing): both must agree or deserialization is refused.
    pub(crate) fn wasmtime_config(&self) -> wasmtime::Config {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        // Always on: a timeout is then a runtime setting, not a recompile.
        c.epoch_interruption(true);
        c.consume_fuel(self.limits.fuel.is_some());
        c.max_wasm_stack(self.limits.max_wasm_stack);
        c
    }
}

/// The native stack of the thread that runs wasm: comfortably above the
/// wasm stack limit so that wasmtime's own guard trips first.
pub(crate) fn native_stack_for(limits: &Limits) -> usize {
    limits.max_wasm_stack.saturating_mul(4).max(32 << 20)
}
