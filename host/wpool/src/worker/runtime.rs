//! Running one kernel item inside wasmtime: instance, limits, and the
//! classification of how a call ended.
//!
//! Owns everything between "here are the item's bytes" and "here is its
//! [`Outcome`]"; the WASI policy and store it runs under are
//! [`crate::wasi`]'s. It knows nothing about processes, frames or scheduling.

use wasmtime::component::{Component, ComponentExportIndex, InstancePre, TypedFunc};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::I32Exit;

use crate::grants::Determinism;
use crate::limits::EngineSettings;
use crate::wasi::{
    hostcall_fuel, linker, new_store, Refusal, State, TailPipe, INIT_EXPORT, MAP_BATCH_EXPORT, MAP_EXPORT,
    REDUCE_EXPORT, STDERR_TAIL,
};
use crate::wire::{Outcome, WireError, WireKind, MAX_MESSAGE};

type ReduceParams<'a> = (&'a [u8], &'a [&'a [u8]]);
type InitResults = (Result<(), String>,);

type MapParams<'a> = (&'a [u8],);
type MapResults = (Result<Vec<u8>, String>,);

type BatchParams<'a> = (&'a [&'a [u8]],);
type BatchResults = (Vec<Result<Vec<u8>, String>>,);

struct Live {
    store: Store<State>,
    /// The instance's `map`, its type checked once at instantiation.
    map: wasmtime::component::Func,
    /// Its `map-batch`, when it has one of the contract's type.
    batch: Option<wasmtime::component::Func>,
    items: u64,
}

/// How a call of `map-batch` ended.
pub(crate) enum Batch {
    /// One entry per input: its outcome, exactly what `map` alone gives;
    /// `None` for an item that must run alone to get it (a kernel error
    /// whose stderr cannot be told apart from the other items').
    Done(Vec<Option<Outcome>>),
    /// The call failed (trap, timeout, fuel, memory, exit), returned the
    /// wrong number of results, or read the deterministic clock or
    /// generator (whose readings are per item): its items must each run
    /// alone, with `map`, on a fresh instance.
    Failed,
    /// The instance has no usable `map-batch`: its items run alone, and no
    /// batch is tried again.
    Unavailable,
}

/// A kernel ready to run items, re-instantiating as the policy requires.
pub(crate) struct Runtime {
    engine: Engine,
    pre: InstancePre<State>,
    export: ComponentExportIndex,
    settings: EngineSettings,
    stderr: TailPipe,
    determinism: Determinism,
    live: Option<Live>,
    /// Epoch ticks that make up the timeout (see the worker's ticker).
    timeout_ticks: Option<u64>,
    /// `init`'s export and configuration, for `kernel-with-init` components.
    init: Option<(ComponentExportIndex, Vec<u8>)>,
    /// A `reducer` component: items are encoded `reduce` calls.
    reducer: bool,
    /// `map-batch`'s export, when the kernel has one and batches may be
    /// used: not for reducers, not when instances are replaced after a
    /// number of items (a batch would cross that boundary), not when the
    /// kernel may write to a granted directory, nor once a batch read the
    /// deterministic clock or generator.
    batch: Option<ComponentExportIndex>,
    /// Epoch ticks a batch may take (see [`Runtime::run_batch`]).
    batch_ticks: u64,
}

impl Runtime {
    pub(crate) fn new(
        engine: Engine,
        component: &Component,
        settings: EngineSettings,
        timeout_ticks: Option<u64>,
        batch_ticks: u64,
        init: Option<Vec<u8>>,
        reducer: bool,
    ) -> wasmtime::Result<Runtime> {
        let pre = linker(&engine)?.instantiate_pre(component)?;
        let name = if reducer { REDUCE_EXPORT } else { MAP_EXPORT };
        let export = component
            .get_export_index(None, name)
            .ok_or_else(|| wasmtime::format_err!("component has no `{name}` export"))?;
        let init = match init {
            Some(config) => Some((
                component
                    .get_export_index(None, INIT_EXPORT)
                    .ok_or_else(|| wasmtime::format_err!("component has no `init` export"))?,
                config,
            )),
            None => None,
        };
        let determinism = Determinism::new(settings.grants.seed);
        // Items of a failed batch run a second time: not for a kernel that
        // may write where it leaves traces (a writable granted directory).
        let writes = settings.grants.dirs.iter().any(|d| d.writable);
        let batch = match reducer || !settings.batch || settings.limits.max_items_per_instance.is_some() || writes {
            true => None,
            false => component.get_export_index(None, MAP_BATCH_EXPORT),
        };
        Ok(Runtime {
            engine,
            pre,
            export,
            settings,
            stderr: TailPipe::new(STDERR_TAIL),
            determinism,
            live: None,
            timeout_ticks,
            init,
            reducer,
            batch,
            batch_ticks,
        })
    }

    /// Makes the instance the next item will use now (running `init`), so
    /// that a failing `init` is known before any item: `Err(message)`.
    pub(crate) fn prepare(&mut self) -> Result<(), String> {
        match self.instantiate() {
            Ok(live) => {
                self.live = Some(live);
                Ok(())
            }
            Err(Outcome::Err(e)) => {
                Err(e.message.strip_prefix("init failed: ").map(str::to_string).unwrap_or(e.message))
            }
            Err(Outcome::Ok(_)) => unreachable!("instantiate fails with an error"),
        }
    }

    /// A fresh instance, with `init` run if the kernel has one; on failure,
    /// the outcome to report.
    fn instantiate(&self) -> Result<Live, Outcome> {
        let mut store = match new_store(&self.engine, &self.settings, &self.stderr, &self.determinism) {
            Ok(store) => store,
            Err(e) => return Err(err(WireKind::Trap, format!("cannot set up the instance: {e:#}"), vec![])),
        };
        // Instantiation and `init` run guest code too: they need fuel and a
        // deadline like the call itself.
        if let Some(fuel) = self.settings.limits.fuel {
            let _ = store.set_fuel(fuel);
        }
        store.set_epoch_deadline(self.timeout_ticks.unwrap_or(u64::MAX / 4));
        let made = self.pre.instantiate(&mut store).and_then(|instance| {
            let map = instance
                .get_func(&mut store, self.export)
                .ok_or_else(|| wasmtime::format_err!("component has no `map`/`reduce` export"))?;
            if self.reducer {
                map.typed::<ReduceParams<'_>, MapResults>(&store)?;
            } else {
                map.typed::<MapParams<'_>, MapResults>(&store)?;
            }
            // A `map-batch` of another type is an extra export like any
            // other: not used.
            let batch = self
                .batch
                .and_then(|index| instance.get_func(&mut store, index))
                .filter(|f| f.typed::<BatchParams<'_>, BatchResults>(&store).is_ok());
            let init = match &self.init {
                Some((index, config)) => {
                    let f = instance.get_typed_func::<MapParams<'_>, InitResults>(&mut store, index)?;
                    Some(f.call(&mut store, (config,))?.0)
                }
                None => None,
            };
            Ok((map, batch, init))
        });
        match made {
            Ok((map, batch, None | Some(Ok(())))) => Ok(Live { store, map, batch, items: 0 }),
            Ok((_, _, Some(Err(message)))) => {
                Err(err(WireKind::Kernel, format!("init failed: {message}"), self.stderr.take()))
            }
            Err(e) => Err(self.classify(&e, store.data_mut().take_refusal())),
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn max_item_size(&self) -> usize {
        self.settings.limits.max_item_size
    }

    pub(crate) fn timeout(&self) -> Option<std::time::Duration> {
        self.settings.limits.timeout
    }

    /// Runs one item to completion and says how it ended. Never panics on
    /// guest behaviour; after any trap the instance is discarded.
    pub(crate) fn run_item(&mut self, input: &[u8]) -> Outcome {
        let max = self.settings.limits.max_item_size;
        if input.len() > max {
            return err(
                WireKind::ItemTooLarge,
                format!("item of {} bytes is over the {max}-byte cap", input.len()),
                vec![],
            );
        }
        let mut live = match self.start_call(self.timeout_ticks.unwrap_or(u64::MAX / 4)) {
            Ok(live) => live,
            Err(outcome) => return outcome,
        };
        let result = if self.reducer {
            let call = match crate::wire::decode::<crate::wire::ReduceCall<'_>>(input) {
                Ok(call) => call,
                Err(e) => return err(WireKind::Kernel, format!("not a reduce call: {e}"), vec![]),
            };
            let values: Vec<&[u8]> = call.values.iter().map(|v| &v[..]).collect();
            // SAFETY: as below, for `reduce`.
            let reduce = unsafe { TypedFunc::<ReduceParams<'_>, MapResults>::new_unchecked(live.map) };
            reduce.call(&mut live.store, (&call.key[..], &values[..]))
        } else {
            // SAFETY: `map`'s type was checked against these types when the
            // instance was made (above); only the lifetime of `input` differs.
            let map = unsafe { TypedFunc::<MapParams<'_>, MapResults>::new_unchecked(live.map) };
            map.call(&mut live.store, (input,))
        };
        let outcome = match result {
            Ok((Ok(out),)) => self.result(out),
            Ok((Err(message),)) => err(WireKind::Kernel, message, self.stderr.take()),
            Err(e) => {
                // A trapped instance refuses further calls: drop it.
                return self.classify(&e, live.store.data_mut().take_refusal());
            }
        };
        live.items += 1;
        let recycle = self.settings.limits.max_items_per_instance.is_some_and(|n| live.items >= n);
        if !recycle {
            self.live = Some(live);
        }
        outcome
    }

    /// Whether [`Runtime::run_batch`] may be used.
    pub(crate) fn can_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Runs `inputs` (each at most the item size cap) in one call of the
    /// kernel's `map-batch`, under the limits of one item: the whole batch
    /// gets one item's fuel and one item's timeout, so an item that would
    /// run out alone makes its batch fail, and then runs alone.
    pub(crate) fn run_batch(&mut self, inputs: &[&[u8]]) -> Batch {
        debug_assert!(inputs.iter().all(|i| i.len() <= self.settings.limits.max_item_size));
        // A batch that runs far longer than batches are sized for holds
        // back the results of its fast items (and may never end, without a
        // timeout): cut it short, and run its items alone.
        let ticks = self.timeout_ticks.map_or(self.batch_ticks, |t| t.min(self.batch_ticks));
        let mut live = match self.start_call(ticks) {
            Ok(live) => live,
            // The items alone will each report it.
            Err(_) => return Batch::Failed,
        };
        let Some(func) = live.batch else {
            // A `map-batch` of another type than the contract's.
            self.batch = None;
            self.live = Some(live);
            return Batch::Unavailable;
        };
        // SAFETY: `map-batch`'s type was checked against these types when
        // the instance was made; only the lifetimes of the inputs differ.
        let batch = unsafe { TypedFunc::<BatchParams<'_>, BatchResults>::new_unchecked(func) };
        let results = match batch.call(&mut live.store, (inputs,)) {
            Ok((results,)) if results.len() == inputs.len() => results,
            // A trap, a timeout, fuel, memory, exit: the instance is done
            // for. A wrong count: the kernel is broken; start afresh too.
            _ => return Batch::Failed,
        };
        // Memory refused to the batch (which holds all its inputs and
        // results at once) that the kernel coped with, say by returning an
        // error: alone, an item might have had the memory.
        if live.store.data_mut().take_refusal().is_some() {
            return Batch::Failed;
        }
        if self.determinism.touched() {
            // Each item must read the clock and the generator from their
            // start; in a batch they shared them. This kernel reads them:
            // run its items alone from now on.
            self.batch = None;
            return Batch::Failed;
        }
        let stderr = !self.stderr.is_empty();
        let outcomes = results
            .into_iter()
            .map(|result| match result {
                Ok(out) => Some(self.result(out)),
                // Alone, the error carries what the item wrote to stderr.
                Err(_) if stderr => None,
                Err(message) => Some(err(WireKind::Kernel, message, vec![])),
            })
            .collect();
        live.items += inputs.len() as u64;
        self.live = Some(live);
        Batch::Done(outcomes)
    }

    /// The instance for the next call, made ready for it: stderr and the
    /// deterministic clock and generator back at their start, one item's
    /// fuel, the epoch deadline `ticks` from now.
    fn start_call(&mut self, ticks: u64) -> Result<Live, Outcome> {
        self.stderr.clear();
        self.determinism.reset();
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        let _ = live.store.data_mut().take_refusal();
        if let Some(fuel) = self.settings.limits.fuel {
            if let Err(e) = live.store.set_fuel(fuel) {
                return Err(err(WireKind::Trap, format!("cannot set fuel: {e}"), vec![]));
            }
        }
        live.store.set_epoch_deadline(ticks);
        Ok(live)
    }

    /// A result the kernel returned: itself, or `item_too_large` over the cap.
    fn result(&self, out: Vec<u8>) -> Outcome {
        let max = self.settings.limits.max_item_size;
        match out.len() > max {
            true => {
                err(WireKind::ItemTooLarge, format!("result of {} bytes is over the {max}-byte cap", out.len()), vec![])
            }
            false => Outcome::Ok(out),
        }
    }

    fn classify(&self, e: &wasmtime::Error, refused: Option<Refusal>) -> Outcome {
        let stderr = self.stderr.take();
        if let Some(refusal) = refused {
            return err(WireKind::MemoryLimit, self.memory_message(&refusal), stderr);
        }
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return err(WireKind::KernelExit(exit.0), format!("kernel called exit({})", exit.0), stderr);
        }
        // wasmtime's message; its error type is private.
        if e.chain().any(|c| c.to_string().contains("fuel allocated for hostcalls has been exhausted")) {
            let max = self.settings.limits.max_item_size;
            return err(
                WireKind::ItemTooLarge,
                format!(
                    "the kernel passed more than {} bytes to the host in one call: its result is over the \
                     {max}-byte cap",
                    hostcall_fuel(max)
                ),
                stderr,
            );
        }
        let trace = e.downcast_ref::<wasmtime::WasmBacktrace>();
        let backtrace = trace.map(|b| b.to_string()).unwrap_or_default();
        let trap = e.downcast_ref::<Trap>();
        let recursion = match trap {
            Some(Trap::MemoryOutOfBounds) => trace.and_then(runaway_recursion),
            _ => None,
        };
        let (kind, message) = match (trap, recursion) {
            (Some(Trap::StackOverflow), _) => (WireKind::StackOverflow, "wasm stack overflow".to_string()),
            (_, Some(function)) => (
                WireKind::StackOverflow,
                format!(
                    "shadow stack overflow: `{function}` recursed until its frames ran off the start of linear \
                     memory (the stack in linear memory, where locals whose address is taken live, such as \
                     arrays and borrowed locals, is separate from the wasm stack and usually 1 MiB); recurse \
                     less, or link the kernel with a larger stack (Rust: `-C link-arg=-zstack-size=8388608`)"
                ),
            ),
            (Some(Trap::OutOfFuel), _) => (WireKind::OutOfFuel, "the item used up its fuel".to_string()),
            (Some(Trap::Interrupt), _) => (WireKind::Timeout, "the item ran past its timeout".to_string()),
            (Some(trap), _) => (WireKind::Trap, trap.to_string()),
            (None, _) => (WireKind::Trap, format!("{:#}", e.root_cause())),
        };
        let message = match kind {
            WireKind::Trap if !backtrace.is_empty() => format!("{message}\n{}", backtrace.trim_end()),
            WireKind::Trap => message,
            _ => message,
        };
        err(kind, message, stderr)
    }

    /// What a `memory_limit` says: the cap, what the kernel asked for, and
    /// where the cap came from when the caller did not set it.
    fn memory_message(&self, refusal: &Refusal) -> String {
        let cap = self.settings.limits.memory.unwrap_or(4 << 30);
        let mut message = match refusal {
            Refusal::OverCap { current: 0, desired } => format!(
                "memory limit of {} exceeded: the kernel asked for {} of linear memory to start with",
                crate::Limits::format_size(cap),
                crate::Limits::format_size(*desired as u64)
            ),
            Refusal::OverCap { current, desired } => format!(
                "memory limit of {} exceeded: the kernel asked for {} more, to grow its linear memory from {} to {}",
                crate::Limits::format_size(cap),
                crate::Limits::format_size((desired - current) as u64),
                crate::Limits::format_size(*current as u64),
                crate::Limits::format_size(*desired as u64)
            ),
            Refusal::Failed { reason } => format!(
                "memory limit of {} exceeded: the kernel asked for more memory than it can have ({reason}; \
                 wasm32 memory ends at 4 GiB)",
                crate::Limits::format_size(cap)
            ),
        };
        if self.settings.default_memory {
            message.push_str(
                " (the default cap: half of this machine's RAM shared by the pool's workers, between 256 MiB and \
                 4 GiB)",
            );
        }
        message
    }
}

/// The function of a backtrace that calls itself over and over, if the
/// trap happened deep in such a recursion. A recursion whose frames hold
/// address-taken locals (arrays, borrowed locals) keeps them on the shadow
/// stack in linear memory, which grows down from its top towards address 0;
/// running past 0 wraps around to an address near 4 GiB, so the recursion
/// ends in an out-of-bounds trap long before the wasm stack overflows.
fn runaway_recursion(trace: &wasmtime::WasmBacktrace) -> Option<String> {
    let frames = trace.frames();
    // wasmtime keeps the innermost 20 frames by default: a recursion that
    // fills most of them is deep; a few repeats are ordinary code.
    if frames.len() < 16 {
        return None;
    }
    let key = |f: &wasmtime::FrameInfo| (f.module().name().map(str::to_string), f.func_index());
    let (top, count) = frames
        .iter()
        .map(key)
        .fold(Vec::<((Option<String>, u32), usize)>::new(), |mut counts, k| {
            match counts.iter_mut().find(|(seen, _)| *seen == k) {
                Some((_, n)) => *n += 1,
                None => counts.push((k, 1)),
            }
            counts
        })
        .into_iter()
        .max_by_key(|(_, n)| *n)?;
    if count * 2 < frames.len() {
        return None;
    }
    let position = frames.iter().position(|f| key(f) == top)?;
    // The backtrace's own rendering has the demangled name.
    let prefix = format!("  {position:>3}: ");
    let shown = trace.to_string();
    let line = shown.lines().find_map(|l| l.strip_prefix(prefix.as_str()))?;
    let name = line.split_once(" - ").map_or(line, |(_, name)| name).trim();
    // Rust's legacy mangling ends in a hash that only adds noise here.
    let name = match name.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => path,
        _ => name,
    };
    Some(name.to_string())
}

fn err(kind: WireKind, mut message: String, stderr: Vec<u8>) -> Outcome {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" […cut]");
    }
    Outcome::Err(WireError { kind, message, stderr })
}
