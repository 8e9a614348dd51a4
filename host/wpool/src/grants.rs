//! What a kernel may reach through WASI beyond the deny-by-default policy:
//! directories, environment variables, real clocks and real randomness.
//!
//! Owns the grant values and their WASI implementation (deterministic clocks
//! and a resettable seeded generator). The OS-level confinement of worker
//! processes is the worker's (`worker/confine.rs`). A leaf both sides use: the
//! grants travel in the handshake inside the engine settings.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Capabilities granted to kernels. The default grants nothing: no
/// directories, no environment, and deterministic clocks and randomness.
///
/// ```
/// let grants = wpool::Grants {
///     env: vec![("LANG".into(), "C".into())],
///     seed: 7,
///     ..wpool::Grants::default()
/// };
/// assert!(!grants.real_clock);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Host directories visible to the kernel.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the kernel sees, exactly these.
    pub env: Vec<(String, String)>,
    /// The real wall and monotonic clocks instead of deterministic ones.
    pub real_clock: bool,
    /// Real entropy instead of the seeded generator.
    pub real_random: bool,
    /// Seed of the deterministic generator (every item starts from it).
    pub seed: u64,
}

/// A host directory made visible to kernels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirGrant {
    /// The directory on the host (absolute).
    pub host: PathBuf,
    /// Where the kernel sees it.
    pub guest: String,
    /// Whether the kernel may create, write and delete in it.
    pub writable: bool,
}

/// The fixed wall-clock time of deterministic mode: 2000-01-01T00:00:00Z.
pub(crate) const FIXED_WALL_CLOCK: Duration = Duration::from_secs(946_684_800);

/// Each reading of the deterministic monotonic clock advances it this much.
pub(crate) const MONOTONIC_STEP_NS: u64 = 1_000_000;

/// Per-item state of the deterministic clock and generator: reset before
/// every item, so an item's output depends on the item and the seed only,
/// not on which worker ran it or what ran before.
#[derive(Clone, Default)]
pub(crate) struct Determinism {
    ticks: Arc<AtomicU64>,
    rng: Arc<AtomicU64>,
    seed: u64,
}

impl Determinism {
    pub(crate) fn new(seed: u64) -> Determinism {
        let d = Determinism { seed, ..Determinism::default() };
        d.reset();
        d
    }

    pub(crate) fn reset(&self) {
        self.ticks.store(0, Ordering::Relaxed);
        self.rng.store(self.seed, Ordering::Relaxed);
    }

    /// Whether the monotonic clock or the generator was read since the last
    /// [`reset`](Determinism::reset).
    pub(crate) fn touched(&self) -> bool {
        self.ticks.load(Ordering::Relaxed) != 0 || self.rng.load(Ordering::Relaxed) != self.seed
    }

    pub(crate) fn wall_clock(&self) -> FixedWallClock {
        FixedWallClock
    }

    pub(crate) fn monotonic_clock(&self) -> SteppingClock {
        SteppingClock { ticks: Arc::clone(&self.ticks) }
    }

    pub(crate) fn rng(&self) -> SeededRng {
        SeededRng { state: Arc::clone(&self.rng) }
    }
}

pub(crate) struct FixedWallClock;

impl wasmtime_wasi::HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        FIXED_WALL_CLOCK
    }
}

pub(crate) struct SteppingClock {
    ticks: Arc<AtomicU64>,
}

impl wasmtime_wasi::HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        MONOTONIC_STEP_NS
    }
    fn now(&self) -> u64 {
        self.ticks.fetch_add(MONOTONIC_STEP_NS, Ordering::Relaxed)
    }
}

/// SplitMix64 over a shared state, so that the worker can rewind it.
/// Not cryptographic: in deterministic mode nothing is secret.
pub(crate) struct SeededRng {
    state: Arc<AtomicU64>,
}

impl rand_core::TryRng for SeededRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|v| (v >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut z = self.state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
