//! Per-item limits and the engine settings derived from them.
//!
//! Owns the numbers, not their enforcement: the worker enforces them inside
//! wasmtime, the scheduler enforces the host-side deadline. A leaf both sides
//! use: the settings travel in the handshake ([`crate::wire::Hello`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits applied to every item a kernel processes.
///
/// The default is what the CLI uses without flags: no timeout, the default
/// memory cap ([`Limits::default_memory`]), no fuel, 64 MiB items and
/// results.
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
    /// Bytes of linear memory one kernel instance may hold; `None`: the
    /// pool's share of this machine's RAM, [`Limits::default_memory`].
    pub memory: Option<u64>,
    /// Fuel (roughly: wasm instructions) one `map` call may consume.
    pub fuel: Option<u64>,
    /// Largest item, and largest result, in bytes; at most
    /// [`Limits::MAX_ITEM_SIZE`].
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

/// wasm32's linear memory ends at 4 GiB, whatever the cap.
const WASM32_MEMORY: u64 = 4 << 30;

impl Limits {
    /// A size as messages show it: `64 MiB`, `4 GiB`, `65.1 MiB`,
    /// `4095.9 MiB`, `1000 bytes`: exact when it is a whole number of the
    /// unit, else to a tenth of a KiB or MiB (memory grows by 64 KiB pages;
    /// a tenth of a GiB would hide such steps).
    ///
    /// ```
    /// use wpool::Limits;
    /// assert_eq!(Limits::format_size(64 << 20), "64 MiB");
    /// assert_eq!(Limits::format_size(1000), "1000 bytes");
    /// assert_eq!(Limits::format_size((64 << 20) + (64 << 10)), "64.1 MiB");
    /// assert_eq!(Limits::format_size(4 << 30), "4 GiB");
    /// assert_eq!(Limits::format_size((4 << 30) - (64 << 10)), "4095.9 MiB");
    /// assert_eq!(Limits::format_size(1536), "1.5 KiB");
    /// ```
    pub fn format_size(n: u64) -> String {
        let (shift, unit) = match n {
            0..1024 => return format!("{n} bytes"),
            n if n >= 1 << 30 && n % (1 << 30) == 0 => return format!("{} GiB", n >> 30),
            n if n >= 1 << 20 => (20, "MiB"),
            _ => (10, "KiB"),
        };
        if n % (1 << shift) == 0 {
            format!("{} {unit}", n >> shift)
        } else {
            format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64)
        }
    }

    /// A size as people write it: bytes (`4096`, `4096B`), binary units
    /// (`64K`/`64KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`) or decimal ones
    /// (`KB`, `MB`, `GB`, `TB`). `None` if it is not one, or overflows.
    ///
    /// ```
    /// assert_eq!(wpool::Limits::parse_size("64MiB"), Some(64 << 20));
    /// assert_eq!(wpool::Limits::parse_size("100MB"), Some(100_000_000));
    /// assert_eq!(wpool::Limits::parse_size("12XB"), None);
    /// ```
    pub fn parse_size(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "TB" => 1000 * 1000 * 1000 * 1000,
            _ => return None,
        };
        value.checked_mul(mult)
    }

    /// The largest `max_item_size` that can work: an item is copied into the
    /// kernel's linear memory, which wasm32 ends at 4 GiB, and its result is
    /// made there too.
    pub const MAX_ITEM_SIZE: usize = 2 << 30;

    /// The memory cap of an instance when [`Limits::memory`] is `None`, for a
    /// pool of `workers`: half of this machine's RAM (or of the cgroup's
    /// memory limit, if lower) shared out between the workers, at least
    /// 256 MiB and at most wasm32's 4 GiB. So a memory-hungry kernel fails
    /// as `memory_limit` before the machine starts swapping or the OOM
    /// killer picks a process, while one worker per core still leaves half
    /// of the RAM to everything else.
    ///
    /// ```
    /// let cap = wpool::Limits::default_memory(2);
    /// assert!((256 << 20..=4 << 30).contains(&cap));
    /// ```
    pub fn default_memory(workers: usize) -> u64 {
        let share = usable_ram().unwrap_or(0) / 2 / workers.max(1) as u64;
        share.clamp(256 << 20, WASM32_MEMORY)
    }
}

/// Bytes of RAM this process may use: physical RAM, or a cgroup v2 limit
/// below it (containers, Slurm steps).
fn usable_ram() -> Option<u64> {
    // SAFETY: sysconf only reads configuration values.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let physical = u64::try_from(pages).ok()?.checked_mul(u64::try_from(page).ok()?)?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(physical, |c| c.min(physical)))
}

/// What a worker needs to rebuild the engine that compiled the artifact, plus
/// the limits it enforces. Crosses the wire in the handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    /// The per-item limits, with the memory cap always set.
    pub limits: Limits,
    /// What kernels may reach.
    pub grants: crate::grants::Grants,
    /// Whether the memory cap is the default share rather than the caller's
    /// (said in `memory_limit` messages: the fix is then to set one).
    pub default_memory: bool,
    /// Whether workers may give a kernel's `map-batch` several small items
    /// in one call (results are the same either way).
    pub batch: bool,
}

impl EngineSettings {
    /// The settings of a pool of `workers`: the default memory cap filled
    /// in, and limits that cannot work refused.
    pub(crate) fn new(
        mut limits: Limits,
        grants: crate::grants::Grants,
        workers: usize,
        batch: bool,
    ) -> Result<EngineSettings, crate::Error> {
        if limits.max_item_size > Limits::MAX_ITEM_SIZE {
            return Err(crate::Error::ItemSizeTooLarge { len: limits.max_item_size, max: Limits::MAX_ITEM_SIZE });
        }
        let default_memory = limits.memory.is_none();
        limits.memory = Some(limits.memory.unwrap_or_else(|| Limits::default_memory(workers)));
        Ok(EngineSettings { limits, grants, default_memory, batch })
    }

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
