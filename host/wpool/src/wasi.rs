//! The WASI policy, what both sides agree a kernel may import and reach:
//! the linker (every WASI 0.2 interface), the deny-by-default context and
//! store of one instance, the names of the contract's exports, and the
//! bounded stderr a guest writes into.
//!
//! A leaf: the host's import check ([`crate::kernel`]) links against the
//! same [`linker`] the worker instantiates with, so that what loads on the
//! host is exactly what a worker links. It never runs an item and knows
//! nothing about processes or frames.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::grants::{Determinism, Grants};
use crate::limits::EngineSettings;

/// Bytes of guest stderr kept per item (the tail).
pub(crate) const STDERR_TAIL: usize = 4096;

/// Store data of one kernel instance.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl State {
    /// The `memory.grow` refused since the last call, if one was.
    pub(crate) fn take_refusal(&mut self) -> Option<Refusal> {
        self.limiter.refused.take()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory and *remembers* a refusal: a Rust guest whose
/// `memory.grow` is refused aborts through `unreachable`, so without this the
/// failure would look like a bare trap.
struct Limiter {
    memory: Option<u64>,
    refused: Option<Refusal>,
}

/// A `memory.grow` that did not happen.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// Refused by the cap.
    OverCap { current: usize, desired: usize },
    /// Failed otherwise: past wasm32's 4 GiB (wasmtime refuses before asking
    /// the limiter), or the host could not map the memory.
    Failed { reason: String },
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        match self.memory {
            Some(cap) if desired as u64 > cap => {
                self.refused = Some(Refusal::OverCap { current, desired });
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = Some(Refusal::Failed { reason: format!("{error:#}") });
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

/// Every WASI 0.2 interface, linked so that std-built kernels load; the
/// *policy* (in [`new_store`]) is what denies.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Ok(linker)
}

/// Deny-by-default WASI context: no preopens, env, args or stdin; network
/// refused; stdout discarded; stderr into a bounded tail; deterministic
/// clocks and randomness. Then exactly what the grants add.
fn wasi_ctx(stderr: &TailPipe, grants: &Grants, det: &Determinism) -> wasmtime::Result<WasiCtx> {
    let mut b = WasiCtx::builder();
    b.stderr(stderr.clone());
    b.allow_tcp(false);
    b.allow_udp(false);
    b.allow_ip_name_lookup(false);
    b.socket_addr_check(|_, _| Box::pin(async { false }));
    if !grants.real_clock {
        b.wall_clock(det.wall_clock());
        b.monotonic_clock(det.monotonic_clock());
    }
    if !grants.real_random {
        b.secure_random(det.rng());
        b.insecure_random(det.rng());
        b.insecure_random_seed(u128::from(grants.seed));
    }
    b.envs(&grants.env);
    for dir in &grants.dirs {
        let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        b.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| wasmtime::format_err!("granting {}: {e}", dir.host.display()))?;
    }
    Ok(b.build())
}

pub(crate) fn new_store(
    engine: &Engine,
    settings: &EngineSettings,
    stderr: &TailPipe,
    det: &Determinism,
) -> wasmtime::Result<Store<State>> {
    let state = State {
        wasi: wasi_ctx(stderr, &settings.grants, det)?,
        table: ResourceTable::new(),
        limiter: Limiter { memory: settings.limits.memory, refused: None },
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(hostcall_fuel(settings.limits.max_item_size));
    store.epoch_deadline_trap();
    Ok(store)
}

/// wasmtime's default bound on the bytes one call may copy out of the guest.
const DEFAULT_HOSTCALL_FUEL: usize = 128 << 20;

/// The bound on the bytes one call may copy out of the guest: wasmtime's
/// default (a DoS guard) would fail results over 128 MiB as a trap however
/// large the item cap, so it grows with the cap, plus room for the
/// `result`'s own bookkeeping. Never below the default: WASI calls rely on it.
pub(crate) fn hostcall_fuel(max_item_size: usize) -> usize {
    max_item_size.saturating_add(64 << 10).max(DEFAULT_HOSTCALL_FUEL)
}

/// The kernel export the host calls.
pub(crate) const MAP_EXPORT: &str = "map";
/// The optional initializer of world `kernel-with-init`.
pub(crate) const INIT_EXPORT: &str = "init";
/// The export of world `reducer`.
pub(crate) const REDUCE_EXPORT: &str = "reduce";
/// The optional export of worlds `batch-kernel` and `batch-kernel-with-init`.
pub(crate) const MAP_BATCH_EXPORT: &str = "map-batch";

/// A guest output stream that keeps only its last `cap` bytes and never
/// refuses a write: a full pipe would make the guest's next `eprintln!`
/// panic and turn a diagnostic into a trap.
#[derive(Clone)]
pub(crate) struct TailPipe {
    inner: Arc<Mutex<VecDeque<u8>>>,
    cap: usize,
}

impl TailPipe {
    pub(crate) fn new(cap: usize) -> TailPipe {
        TailPipe { inner: Arc::new(Mutex::new(VecDeque::with_capacity(cap))), cap }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(self.cap)..];
        let overflow = (buf.len() + bytes.len()).saturating_sub(self.cap);
        buf.drain(..overflow);
        buf.extend(bytes);
    }

    pub(crate) fn clear(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    pub(crate) fn take(&self) -> Vec<u8> {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let out = buf.iter().copied().collect();
        buf.clear();
        out
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_pipe_keeps_only_the_last_bytes() {
        let t = TailPipe::new(8);
        t.push(b"hello ");
        t.push(b"world, this is long");
        assert_eq!(t.take(), b" is long");
        assert!(t.take().is_empty());
    }
}
