//! Loading a kernel: recognising the bytes, validating the component against
//! the contract (`wpool:kernel/kernel`), compiling once, and the host-private
//! cache of precompiled artifacts that workers deserialize.
//!
//! Owns everything about a kernel *before* it runs. It never spawns
//! processes and never runs an item. Shared by both sides: the host
//! validates and compiles, a launched worker compiles into its node-private
//! [`ArtifactCache`]. Imports are checked against the WASI linker the
//! worker instantiates with ([`crate::wasi::linker`]), so that what loads
//! here is exactly what a worker links.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::cache;
use crate::error::Error;
use crate::limits::EngineSettings;
use crate::wasi::{self, INIT_EXPORT, MAP_BATCH_EXPORT, MAP_EXPORT, REDUCE_EXPORT};

/// The contract's type of `map`, for messages.
const MAP_SIGNATURE: &str = "func(input: list<u8>) -> result<list<u8>, string>";
const INIT_SIGNATURE: &str = "func(config: list<u8>) -> result<_, string>";
const REDUCE_SIGNATURE: &str = "func(key: list<u8>, values: list<list<u8>>) -> result<list<u8>, string>";

/// WASI 0.2 packages the host links (deny-by-default policy inside).
const PROVIDED_PACKAGES: [&str; 6] =
    ["wasi:cli", "wasi:io", "wasi:clocks", "wasi:random", "wasi:filesystem", "wasi:sockets"];

/// A validated kernel: a WebAssembly component of world
/// `wpool:kernel/kernel`, compiled once and cached.
///
/// ```no_run
/// let kernel = wpool::Kernel::from_file("upper.wasm")?;
/// println!("{} imports", kernel.info().imports.len());
/// # Ok::<(), wpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Kernel {
    name: String,
    wasm: Wasm,
    info: KernelInfo,
    cache: ArtifactCache,
    /// The artifact compiled (or found) while validating, for the default
    /// codegen settings.
    default_artifact: Artifact,
    has_init: bool,
    reducer: bool,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").field("name", &self.name).field("size", &self.info.size).finish()
    }
}

/// A kernel's wasm bytes: read, or known by its file's [`Fingerprint`]
/// (its artifact found through the cache's index) and read only if they are
/// needed (a launched worker is sent them; other codegen settings compile
/// them).
#[derive(Clone)]
enum Wasm {
    Read(Arc<[u8]>),
    Unread { path: PathBuf, fingerprint: Fingerprint, read: Arc<std::sync::OnceLock<Arc<[u8]>>> },
}

impl Wasm {
    fn get(&self) -> Result<Arc<[u8]>, Error> {
        match self {
            Wasm::Read(bytes) => Ok(Arc::clone(bytes)),
            Wasm::Unread { path, fingerprint, read } => {
                if let Some(bytes) = read.get() {
                    return Ok(Arc::clone(bytes));
                }
                let (bytes, now) = read_kernel(path)?;
                // Not the file whose artifact was loaded.
                if now != Some(*fingerprint) {
                    return Err(Error::KernelRead {
                        path: path.clone(),
                        source: io::Error::other("the file changed since the kernel was loaded"),
                    });
                }
                Ok(Arc::clone(read.get_or_init(|| bytes)))
            }
        }
    }
}

/// What identifies a kernel file's contents without reading them: its
/// device and inode, its size, and its modification and change times to the
/// nanosecond. Any write changes the change time, which no process can set
/// back; a new file on a reused inode has its own. `None` for what is not
/// a regular file (a pipe, a device): that is read every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    /// How long ago a file must have last changed for its fingerprint to
    /// be indexed: a file still being written, or on a file system whose
    /// times are coarse (FAT's are 2 s), could change again within the
    /// same timestamp. Once a file is this old, any change gives it newer
    /// times.
    const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

    /// Whether the file last changed at least [`Fingerprint::SETTLED`] ago.
    fn settled(&self) -> bool {
        let newest = self.mtime.max(self.ctime);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let newest = std::time::Duration::new(newest.0.max(0) as u64, newest.1.clamp(0, 999_999_999) as u32);
        now.checked_sub(newest).is_some_and(|age| age >= Fingerprint::SETTLED)
    }

    fn of(meta: &fs::Metadata) -> Option<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        meta.is_file().then(|| Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// What a kernel is made of, as reported by `wpool inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelInfo {
    /// Size of the wasm file in bytes.
    pub size: usize,
    /// What the bytes are: `component`, `core module` or `not wasm`.
    pub format: &'static str,
    /// Every import, by name, with its kind.
    pub imports: Vec<String>,
    /// Every export with its type.
    pub exports: Vec<String>,
}

/// The outcome of inspecting a kernel: what it is, and whether it is accepted.
#[derive(Debug)]
#[non_exhaustive]
pub struct Inspection {
    /// What was found.
    pub info: KernelInfo,
    /// The worlds of the contract the component satisfies, the one wpool
    /// runs it as first; empty when it is rejected.
    pub worlds: Vec<World>,
    /// `None` when the kernel is accepted, else why not.
    pub rejection: Option<Error>,
}

/// A world of the contract (`wit/wpool.wit`).
///
/// A component satisfies every world whose exports it has with their exact
/// types: one exporting `map` and `init` is a `kernel-with-init` and also a
/// `kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum World {
    /// `map`.
    Kernel,
    /// `map` and `init`.
    KernelWithInit,
    /// `reduce`.
    Reducer,
    /// `map` and `map-batch`.
    BatchKernel,
    /// `map`, `init` and `map-batch`.
    BatchKernelWithInit,
}

impl World {
    /// The world's full name, e.g. `wpool:kernel/kernel-with-init`.
    pub fn name(self) -> &'static str {
        match self {
            World::Kernel => "wpool:kernel/kernel",
            World::KernelWithInit => "wpool:kernel/kernel-with-init",
            World::Reducer => "wpool:kernel/reducer",
            World::BatchKernel => "wpool:kernel/batch-kernel",
            World::BatchKernelWithInit => "wpool:kernel/batch-kernel-with-init",
        }
    }

    /// Whether a kernel of this world has an `init` export.
    pub fn has_init(self) -> bool {
        matches!(self, World::KernelWithInit | World::BatchKernelWithInit)
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Kernel {
    /// Loads and validates a kernel file, using the default artifact cache.
    ///
    /// A file loaded before (the same device, inode, size, modification
    /// and change times, under the same wasmtime and settings) is not read
    /// again: the cache's index names its artifact.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Kernel, Error> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let cache = ArtifactCache::for_kernel(None)?;
        let settings = EngineSettings::default();
        let engine = engine_for(&name, &settings)?;
        let before = fs::metadata(path).ok().as_ref().and_then(Fingerprint::of);
        if let Some(fingerprint) = before {
            if let Some((artifact, loaded)) = cache.by_source(&engine, &fingerprint, &settings) {
                let read = Arc::default();
                let wasm = Wasm::Unread { path: path.to_path_buf(), fingerprint, read };
                return Kernel::loaded(name, wasm, fingerprint.size as usize, cache, artifact, loaded, &engine);
            }
        }
        let (bytes, after) = read_kernel(path)?;
        check_header(&name, &bytes)?;
        let (artifact, loaded) = cache.lookup_or_compile(&engine, &name, &bytes, &settings, Want::Checked)?;
        // Unchanged while it was read: these bytes are that file's.
        if let Some(fingerprint) = after.filter(|fp| after == before && fp.settled()) {
            cache.record_source(&engine, &fingerprint, &settings, &artifact);
        }
        let size = bytes.len();
        Kernel::loaded(name, Wasm::Read(bytes), size, cache, artifact, loaded, &engine)
    }

    /// Validates kernel bytes; `name` is used in messages.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Result<Kernel, Error> {
        Kernel::new(name.into(), bytes.into(), ArtifactCache::for_kernel(None)?)
    }

    /// Like [`Kernel::from_bytes`] with an explicit cache directory (created
    /// 0700 if missing; refused if others can write to it).
    pub fn from_bytes_with_cache(
        name: impl Into<String>,
        bytes: impl Into<Arc<[u8]>>,
        cache_dir: impl Into<PathBuf>,
    ) -> Result<Kernel, Error> {
        Kernel::new(name.into(), bytes.into(), ArtifactCache::for_kernel(Some(cache_dir.into()))?)
    }

    fn new(name: String, bytes: Arc<[u8]>, cache: ArtifactCache) -> Result<Kernel, Error> {
        // Validating needs a compiled component, unless this artifact was
        // checked before (what the check found is kept beside it,
        // `KEY.checked`);
        // keep the artifact so that a pool with default codegen settings
        // need not load it again.
        let settings = EngineSettings::default();
        let (default_artifact, loaded, engine) = cache.get_or_compile(&name, &bytes, &settings, Want::Checked)?;
        let size = bytes.len();
        Kernel::loaded(name, Wasm::Read(bytes), size, cache, default_artifact, loaded, &engine)
    }

    /// The kernel whose artifact for the default settings was found or
    /// compiled: checked now, unless what checking it found is on record.
    fn loaded(
        name: String,
        wasm: Wasm,
        size: usize,
        cache: ArtifactCache,
        default_artifact: Artifact,
        loaded: Loaded,
        engine: &Engine,
    ) -> Result<Kernel, Error> {
        let checked = match loaded {
            Loaded::Checked(checked) => checked,
            Loaded::Component(component) => {
                let KernelInfo { imports, exports, .. } = describe(engine, &component, size);
                let checked = Checked { shape: check_contract(&name, engine, &component)?, imports, exports };
                cache.record_checked(&default_artifact, &checked);
                checked
            }
        };
        let Checked { shape, imports, exports } = checked;
        let info = KernelInfo { size, format: "component", imports, exports };
        Ok(Kernel { name, wasm, info, cache, default_artifact, has_init: shape.init, reducer: shape.reducer })
    }

    /// Whether the kernel's wasm bytes were read (test hook: a kernel file
    /// known to the cache's index is not read).
    #[cfg(feature = "test-hooks")]
    pub fn wasm_was_read(&self) -> bool {
        match &self.wasm {
            Wasm::Read(_) => true,
            Wasm::Unread { read, .. } => read.get().is_some(),
        }
    }

    /// Whether the kernel is a reducer (world `reducer`, export `reduce`):
    /// its pool's items are then `(key, values)` pairs made with
    /// `reduce_item`, and each result is the reduced value. See
    /// [`crate::mapreduce::MapReduce`].
    pub fn is_reducer(&self) -> bool {
        self.reducer
    }

    /// Whether the kernel exports `init` (world `kernel-with-init`): the
    /// host then calls it once per instance, before any `map`, with the
    /// configuration of [`crate::PoolBuilder::init`] (empty by default).
    pub fn has_init(&self) -> bool {
        self.has_init
    }

    /// The name used in messages (the path for files).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Imports, exports and size.
    pub fn info(&self) -> &KernelInfo {
        &self.info
    }

    /// Why this kernel's compiled code is not in the artifact cache, if it
    /// is not: the cache directory cannot be created or written, or is
    /// full. The kernel still runs (compiled in memory, handed to
    /// local workers sealed), but every run compiles it again; the CLI
    /// prints this once as a warning.
    pub fn cache_warning(&self) -> Option<String> {
        self.cache
            .unusable()
            .map(|why| format!("artifact cache {}: {why}; compiling in memory", self.cache.dir.display()))
    }

    /// The component's bytes, as a launched worker is sent them (read now
    /// if the kernel was loaded through the cache's index).
    pub(crate) fn wasm(&self) -> Result<Arc<[u8]>, Error> {
        self.wasm.get()
    }

    /// The precompiled artifact for these settings (compiling on a cache
    /// miss). Workers check its digest again before deserializing.
    pub(crate) fn artifact(&self, settings: &EngineSettings) -> Result<Artifact, Error> {
        // Removed by hand since the kernel was loaded (`wpool cache clean`
        // keeps artifacts in use): compile it again.
        let kept = self.default_artifact.path.exists() || self.cache.unusable().is_some();
        if settings.codegen_key() == EngineSettings::default().codegen_key() && kept {
            return Ok(self.default_artifact.clone());
        }
        self.cache.get_or_compile(&self.name, &self.wasm.get()?, settings, Want::Component).map(|(a, _, _)| a)
    }

    /// Describes a kernel file and says whether it would be accepted. Errors
    /// only when the file cannot be read.
    pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, Error> {
        let path = path.as_ref();
        let (bytes, _) = read_kernel(path)?;
        let name = path.display().to_string();
        let mut info = KernelInfo { size: bytes.len(), format: format_of(&bytes), imports: vec![], exports: vec![] };
        let cache = ArtifactCache::for_kernel(None)?;
        let (worlds, rejection) = match cache.get_or_compile(&name, &bytes, &EngineSettings::default(), Want::Component)
        {
            Ok((_, loaded, engine)) => {
                let component = loaded.into_component();
                info = describe(&engine, &component, bytes.len());
                match check_contract(&name, &engine, &component) {
                    Ok(shape) => (shape.worlds(has_map_batch(&engine, &component)), None),
                    Err(e) => (vec![], Some(e)),
                }
            }
            Err(e) => (vec![], Some(e)),
        };
        Ok(Inspection { info, worlds, rejection })
    }
}

/// The kernel file's bytes, read straight into their shared buffer (a
/// `Vec` turned into an `Arc<[u8]>` would be copied once more: 18 MB for a
/// Python kernel), and the file's fingerprint once they are read.
fn read_kernel(path: &Path) -> Result<(Arc<[u8]>, Option<Fingerprint>), Error> {
    let err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => Error::KernelNotFound { path: path.to_path_buf() },
        _ => Error::KernelRead { path: path.to_path_buf(), source },
    };
    let mut file = fs::File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    let Ok(len) = usize::try_from(len) else { return Err(err(io::Error::from(io::ErrorKind::OutOfMemory))) };
    // Allocated in place (`repeat_n` has a trusted length).
    let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
    io::Read::read_exact(&mut file, Arc::get_mut(&mut bytes).expect("just made")).map_err(err)?;
    // A file that grew since `metadata` (or a pipe, a device): read it all.
    let mut rest = Vec::new();
    io::Read::read_to_end(&mut file, &mut rest).map_err(err)?;
    let fingerprint = file.metadata().ok().as_ref().and_then(Fingerprint::of);
    if rest.is_empty() {
        return Ok((bytes, fingerprint));
    }
    Ok(([&bytes[..], &rest[..]].concat().into(), fingerprint))
}

fn format_of(bytes: &[u8]) -> &'static str {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 0x01, 0x00]) => "component",
        Some([0, b'a', b's', b'm', _, _, 0x00, 0x00]) => "core module",
        _ => "not wasm",
    }
}

/// Cheap checks that give better messages than the validator would.
fn check_header(name: &str, bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Err(Error::NotWasm { kernel: name.into(), detail: "the file is empty".into() });
    }
    if !bytes.starts_with(b"\0asm") {
        let shown: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        return Err(Error::NotWasm { kernel: name.into(), detail: format!("no `\\0asm` magic; starts with {shown}") });
    }
    match format_of(bytes) {
        "component" => Ok(()),
        "core module" => Err(Error::CoreModule { kernel: name.into() }),
        _ => Err(Error::InvalidKernel { kernel: name.into(), message: "truncated or unknown wasm header".into() }),
    }
}

fn describe(engine: &Engine, component: &Component, size: usize) -> KernelInfo {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(name, item)| format!("{name}: {}", item_kind(&item.ty))).collect();
    let exports = ty
        .exports(engine)
        .map(|(name, item)| match &item.ty {
            ComponentItem::ComponentFunc(f) => format!("{name}: {}", func_sig(f)),
            other => format!("{name}: {}", item_kind(other)),
        })
        .collect();
    KernelInfo { size, format: "component", imports, exports }
}

fn item_kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// Checks the world: `map` with exactly the contract's type and `init` with
/// its type if there is one, or else `reduce` with its type; and imports the
/// host can satisfy. Extra exports are allowed (other toolchains add them).
/// Says which kind of kernel it is.
fn check_contract(name: &str, engine: &Engine, component: &Component) -> Result<Shape, Error> {
    let ty = component.component_type();
    let reduce = ty.get_export(engine, REDUCE_EXPORT).map(|e| e.ty);
    match (ty.get_export(engine, MAP_EXPORT).map(|e| e.ty), reduce) {
        (None, Some(reduce)) => {
            check_export(name, REDUCE_EXPORT, &reduce, is_reduce_signature, REDUCE_SIGNATURE)?;
            check_imports(name, engine, component)?;
            return Ok(Shape { init: false, reducer: true });
        }
        (None, None) => {
            let exports: Vec<String> = ty.exports(engine).map(|(n, _)| format!("`{n}`")).collect();
            let found =
                if exports.is_empty() { "no exports".to_string() } else { format!("exports {}", exports.join(", ")) };
            return Err(Error::WorldMismatch {
                kernel: name.into(),
                detail: format!("no export `map` (expected `map: {MAP_SIGNATURE}`; found {found})"),
            });
        }
        (Some(item), _) => check_export(name, MAP_EXPORT, &item, is_map_signature, MAP_SIGNATURE)?,
    }
    let has_init = match ty.get_export(engine, INIT_EXPORT).map(|e| e.ty) {
        None => false,
        Some(item) => {
            check_export(name, INIT_EXPORT, &item, is_init_signature, INIT_SIGNATURE)?;
            true
        }
    };
    check_imports(name, engine, component)?;
    Ok(Shape { init: has_init, reducer: false })
}

/// An export of the contract: a function of exactly the type `signature`.
fn check_export(
    kernel: &str,
    export: &str,
    item: &ComponentItem,
    has_type: fn(&ComponentFunc) -> bool,
    signature: &str,
) -> Result<(), Error> {
    let detail = match item {
        ComponentItem::ComponentFunc(f) if has_type(f) => return Ok(()),
        ComponentItem::ComponentFunc(f) => format!("export `{export}` has type {}, expected {signature}", func_sig(f)),
        other => format!("export `{export}` is a {}, expected `{export}: {signature}`", item_kind(other)),
    };
    Err(Error::WorldMismatch { kernel: kernel.into(), detail })
}

/// What kind of kernel a component is.
#[derive(Debug, Clone, Copy)]
struct Shape {
    init: bool,
    reducer: bool,
}

impl Shape {
    /// The worlds satisfied, the one the host runs the kernel as first. A
    /// component with `map` is run as a map kernel whatever else it exports,
    /// so it is never reported as a reducer.
    fn worlds(self, map_batch: bool) -> Vec<World> {
        if self.reducer {
            return vec![World::Reducer];
        }
        let mut worlds = Vec::new();
        if map_batch && self.init {
            worlds.push(World::BatchKernelWithInit);
        }
        if self.init {
            worlds.push(World::KernelWithInit);
        }
        if map_batch {
            worlds.push(World::BatchKernel);
        }
        worlds.push(World::Kernel);
        worlds
    }
}

/// What a cache lookup is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The component itself.
    Component,
    /// What checking it finds: a [`Checked`] record kept beside the
    /// artifact (`KEY.checked`) saves deserializing it.
    Checked,
}

/// A cache hit or a compile: the component, or the record of its check.
enum Loaded {
    Component(Component),
    Checked(Checked),
}

impl Loaded {
    /// The component of a lookup with [`Want::Component`], which always
    /// deserializes or compiles it.
    fn into_component(self) -> Component {
        match self {
            Loaded::Component(component) => component,
            Loaded::Checked(_) => unreachable!("a component was asked for"),
        }
    }
}

/// What checking a kernel found: its shape and what `describe` lists. Kept
/// beside its artifact as `KEY.checked` (in the private cache, as trusted
/// as the artifact; its first line is the digest of the artifact it was
/// found for), so that loading a cached kernel again needs neither
/// deserializing nor checking it in the host (about 0.5 ms). Versions of
/// wpool without it ignore the file.
#[derive(Debug)]
struct Checked {
    shape: Shape,
    imports: Vec<String>,
    exports: Vec<String>,
}

impl Checked {
    /// Names the code that made a record: a record of another version of
    /// wpool (whose checks may differ) is checked again. Bump it when
    /// `check_contract` or `describe` change what they report.
    const TAG: &'static str = concat!("checked wpool ", env!("CARGO_PKG_VERSION"), " 1");

    /// The record of the check of the artifact with `digest`; `None` if a
    /// name cannot be kept on a line.
    fn encode(&self, digest: &[u8; 32]) -> Option<String> {
        let (init, reducer) = (u8::from(self.shape.init), u8::from(self.shape.reducer));
        let mut out = format!("{}\n{}\ninit {init}\nreducer {reducer}\n", hex::encode(digest), Self::TAG);
        for (kind, items) in [("import", &self.imports), ("export", &self.exports)] {
            for item in items {
                if item.contains(['\n', '\r']) {
                    return None;
                }
                let _ = writeln!(out, "{kind} {item}");
            }
        }
        Some(out)
    }

    /// The record, if it is whole, of this version and of the artifact
    /// with `digest`.
    fn decode(record: &str, digest: &[u8; 32]) -> Option<Checked> {
        let mut lines = record.lines();
        if lines.next()? != hex::encode(digest) || lines.next()? != Self::TAG {
            return None;
        }
        let flag = |line: Option<&str>, name: &str| match line?.strip_prefix(name)? {
            " 0" => Some(false),
            " 1" => Some(true),
            _ => None,
        };
        let shape = Shape { init: flag(lines.next(), "init")?, reducer: flag(lines.next(), "reducer")? };
        let (mut imports, mut exports) = (Vec::new(), Vec::new());
        for line in lines {
            match line.split_once(' ') {
                Some(("import", item)) if exports.is_empty() => imports.push(item.to_string()),
                Some(("export", item)) => exports.push(item.to_string()),
                _ => return None,
            }
        }
        // Every kernel exports `map` or `reduce`: no exports is a cut record.
        (!exports.is_empty()).then_some(Checked { shape, imports, exports })
    }
}

/// Whether the component exports `map-batch` with the contract's type (a
/// `map-batch` of another type is an extra export, like any other).
fn has_map_batch(engine: &Engine, component: &Component) -> bool {
    let ty = component.component_type();
    matches!(ty.get_export(engine, MAP_BATCH_EXPORT).map(|e| e.ty), Some(ComponentItem::ComponentFunc(f)) if is_map_batch_signature(&f))
}

/// `map-batch: func(inputs: list<list<u8>>) -> list<result<list<u8>, string>>`.
fn is_map_batch_signature(f: &ComponentFunc) -> bool {
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    let is_bytes = |t: &Type| matches!(t, Type::List(l) if l.ty() == Type::U8);
    matches!(&params[..], [Type::List(l)] if is_bytes(&l.ty()))
        && matches!(&results[..], [Type::List(l)] if matches!(l.ty(), Type::Result(r)
            if r.ok().as_ref().is_some_and(is_bytes) && r.err() == Some(Type::String)))
}

fn check_imports(name: &str, engine: &Engine, component: &Component) -> Result<(), Error> {
    let ty = component.component_type();
    let unsatisfied: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).filter(|n| !is_provided(n)).collect();
    if !unsatisfied.is_empty() {
        return Err(Error::UnsatisfiedImports { kernel: name.into(), imports: unsatisfied });
    }
    // Names match; let the real linker check the types too.
    let linker =
        wasi::linker(engine).map_err(|e| Error::InvalidKernel { kernel: name.into(), message: format!("{e:#}") })?;
    if let Err(e) = linker.instantiate_pre(component) {
        return Err(Error::UnsatisfiedImports { kernel: name.into(), imports: vec![format!("{e:#}")] });
    }
    Ok(())
}

/// `reduce: func(key: list<u8>, values: list<list<u8>>) -> result<list<u8>, string>`.
fn is_reduce_signature(f: &ComponentFunc) -> bool {
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    let is_bytes = |t: &Type| matches!(t, Type::List(l) if l.ty() == Type::U8);
    matches!(&params[..], [k, Type::List(vs)] if is_bytes(k) && is_bytes(&vs.ty()))
        && matches!(&results[..], [Type::Result(r)]
            if r.ok().as_ref().is_some_and(is_bytes) && r.err() == Some(Type::String))
}

/// `init: func(config: list<u8>) -> result<_, string>`.
fn is_init_signature(f: &ComponentFunc) -> bool {
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    matches!(&params[..], [Type::List(l)] if l.ty() == Type::U8)
        && matches!(&results[..], [Type::Result(r)] if r.ok().is_none() && r.err() == Some(Type::String))
}

fn is_provided(import: &str) -> bool {
    let Some((package, rest)) = import.split_once('/') else { return false };
    let version = rest.split_once('@').map(|(_, v)| v);
    PROVIDED_PACKAGES.contains(&package) && version.is_some_and(|v| v.starts_with("0.2."))
}

fn is_map_signature(f: &ComponentFunc) -> bool {
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    let is_bytes = |t: &Type| matches!(t, Type::List(l) if l.ty() == Type::U8);
    matches!(&params[..], [p] if is_bytes(p))
        && matches!(&results[..], [Type::Result(r)]
            if r.ok().as_ref().is_some_and(is_bytes) && r.err() == Some(Type::String))
}

fn func_sig(f: &ComponentFunc) -> String {
    let params: Vec<String> = f.params().map(|(n, t)| format!("{n}: {}", type_name(&t))).collect();
    let results: Vec<String> = f.results().map(|t| type_name(&t)).collect();
    let mut s = format!("func({})", params.join(", "));
    if !results.is_empty() {
        let _ = write!(s, " -> {}", results.join(", "));
    }
    s
}

fn type_name(t: &Type) -> String {
    match t {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", type_name(&l.ty())),
        Type::Option(o) => format!("option<{}>", type_name(&o.ty())),
        Type::Result(r) => {
            let part = |t: Option<Type>| t.map(|t| type_name(&t)).unwrap_or_else(|| "_".into());
            format!("result<{}, {}>", part(r.ok()), part(r.err()))
        }
        Type::Tuple(t) => format!("tuple<{}>", t.types().map(|t| type_name(&t)).collect::<Vec<_>>().join(", ")),
        Type::Record(_) => "record".into(),
        Type::Variant(_) => "variant".into(),
        Type::Enum(_) => "enum".into(),
        Type::Flags(_) => "flags".into(),
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        _ => "…".into(),
    }
}

/// A precompiled artifact in the cache, with the digest that was recorded
/// when the host wrote it, and its bytes as the host checked them in a
/// sealed memfd (when the system has them) that local workers map instead
/// of reading and hashing the file again.
#[derive(Debug, Clone)]
pub(crate) struct Artifact {
    pub path: PathBuf,
    pub digest: [u8; 32],
    pub sealed: Option<Arc<std::os::fd::OwnedFd>>,
}

/// The seals that make a memfd's contents final: no write, no resize, and
/// no removing of these seals.
pub(crate) const FINAL_SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// `bytes` in a new memfd sealed with [`FINAL_SEALS`]: nobody, this process
/// included, can change them any more, so whoever maps it later maps these
/// bytes.
fn seal(bytes: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    let mut memfd = fs::File::from(new_memfd()?);
    memfd.write_all(bytes)?;
    add_final_seals(&memfd)?;
    Ok(memfd.into())
}

/// An empty memfd that can be sealed.
fn new_memfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain syscall; the descriptor it returns is ours.
    let fd = unsafe { libc::memfd_create(c"wpool-artifact".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn add_final_seals(memfd: &fs::File) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(memfd), libc::F_ADD_SEALS, FINAL_SEALS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `file`'s contents in a new memfd sealed with [`FINAL_SEALS`], copied by
/// the kernel.
fn seal_copy(file: &mut fs::File) -> io::Result<std::os::fd::OwnedFd> {
    let mut memfd = fs::File::from(new_memfd()?);
    io::copy(file, &mut memfd)?;
    add_final_seals(&memfd)?;
    Ok(memfd.into())
}

/// BLAKE3 of a sealed memfd's contents, hashed where they are (mapped, not
/// copied out).
fn digest_of(sealed: &std::os::fd::OwnedFd) -> io::Result<[u8; 32]> {
    use std::os::fd::AsRawFd;
    let len = fs::File::from(sealed.try_clone()?).metadata()?.len() as usize;
    if len == 0 {
        return Ok(*blake3::hash(&[]).as_bytes());
    }
    // SAFETY: a read-only shared mapping of a memfd sealed against writes,
    // shrinking and growing: its `len` bytes stay mapped and unchanged until
    // `munmap` below, and nothing else refers to the mapping.
    unsafe {
        let at = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, sealed.as_raw_fd(), 0);
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let digest = digest_bytes(std::slice::from_raw_parts(at.cast::<u8>(), len));
        libc::munmap(at, len);
        Ok(digest)
    }
}

/// Why [`read_checked`] refused an artifact.
#[derive(Debug)]
pub(crate) enum Unchecked {
    /// It could not be read.
    Read(io::Error),
    /// Its bytes do not match the digest recorded when it was written.
    Digest,
    /// wasmtime refused it (another engine's, or not an artifact).
    Deserialize(wasmtime::Error),
}

/// The artifact at `path`, read into memory and deserialized only if its
/// bytes match `digest`, the one recorded when wpool wrote it: the one way
/// an artifact file reaches `unsafe` deserialization (the host's fallback
/// when it cannot use a memfd, and a worker's when it cannot map the
/// host's).
pub(crate) fn read_checked(engine: &Engine, path: &Path, digest: &[u8; 32]) -> Result<Component, Unchecked> {
    let bytes = fs::read(path).map_err(Unchecked::Read)?;
    if digest_bytes(&bytes) != *digest {
        return Err(Unchecked::Digest);
    }
    // SAFETY: `deserialize` trusts its input to be a wasmtime artifact.
    // These bytes come from this user's private (0700, owner-checked) cache,
    // written by wpool itself, and match the digest recorded when they were
    // written; wasmtime further checks that the artifact fits this engine.
    // Nothing here came over the network.
    unsafe { Component::deserialize(engine, &bytes) }.map_err(Unchecked::Deserialize)
}

/// BLAKE3 of `bytes`, on every core for big ones in the host (a Python
/// kernel is 18 MB of wasm and 35 MB of artifact, both hashed on every
/// start); on one thread in a worker (see `worker::in_worker`).
pub(crate) fn digest_bytes(bytes: &[u8]) -> [u8; 32] {
    if bytes.len() < 1 << 20 || crate::worker::in_worker() {
        return *blake3::hash(bytes).as_bytes();
    }
    *blake3::Hasher::new().update_rayon(bytes).finalize().as_bytes()
}

/// Deserializes the artifact in `sealed` by mapping it (no copy: the page
/// cache holds one copy for every process that maps it).
///
/// # Safety
/// As [`Component::deserialize`]: `sealed` must hold an artifact that
/// wpool itself wrote, sealed so that it cannot change.
pub(crate) unsafe fn deserialize_sealed(
    engine: &Engine,
    sealed: &impl std::os::fd::AsRawFd,
) -> wasmtime::Result<Component> {
    // SAFETY: the caller's.
    unsafe { Component::deserialize_file(engine, format!("/proc/self/fd/{}", sealed.as_raw_fd())) }
}

/// The host-private directory of precompiled artifacts.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// Above this, writing an artifact evicts the least recently used.
    max_bytes: u64,
    /// Why artifacts are kept in memory only (the directory cannot be
    /// opened, written, or is full); shared by the clones of one kernel.
    unusable: Arc<std::sync::Mutex<Option<String>>>,
}

impl ArtifactCache {
    /// The cache for a kernel: `dir` (the default location when `None`),
    /// or, when it cannot be created, none at all: artifacts are then
    /// compiled in memory and handed to local workers sealed
    /// ([`Kernel::cache_warning`] says why; a write that fails later, on a
    /// full disk or a read-only directory, does the same).
    fn for_kernel(dir: Option<PathBuf>) -> Result<ArtifactCache, Error> {
        let dir = dir.unwrap_or_else(ArtifactCache::default_dir);
        match ArtifactCache::create(&dir) {
            // One that exists but is not private is refused, not bypassed:
            // it is a configuration to fix (someone else may write there).
            Ok(()) => ArtifactCache::checked(dir),
            Err(e) => Ok(ArtifactCache {
                max_bytes: 0,
                unusable: Arc::new(std::sync::Mutex::new(Some(without_path(&e, &dir)))),
                dir,
            }),
        }
    }

    /// Why artifacts are compiled in memory, if they are.
    fn unusable(&self) -> Option<String> {
        self.unusable.lock().ok()?.clone()
    }

    fn mark_unusable(&self, why: String) {
        if let Ok(mut u) = self.unusable.lock() {
            u.get_or_insert(why);
        }
    }

    /// `$WPOOL_CACHE_DIR`, else `$XDG_CACHE_HOME/wpool`, else
    /// `$HOME/.cache/wpool`, else a per-user directory under the temp dir.
    pub(crate) fn default_location() -> Result<ArtifactCache, Error> {
        ArtifactCache::open(ArtifactCache::default_dir())
    }

    fn default_dir() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("WPOOL_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("wpool")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("wpool")))
            // SAFETY: getuid cannot fail.
            .unwrap_or_else(|| std::env::temp_dir().join(format!("wpool-cache-{}", unsafe { libc::getuid() })))
    }

    pub(crate) fn open(dir: PathBuf) -> Result<ArtifactCache, Error> {
        ArtifactCache::create(&dir)?;
        ArtifactCache::checked(dir)
    }

    /// Creates the directory (private) if it is missing.
    fn create(dir: &Path) -> Result<(), Error> {
        let cache_err = |message: String| Error::Cache { path: dir.to_path_buf(), message };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| cache_err(format!("cannot create: {e}")))?;
        fs::metadata(dir).map(|_| ()).map_err(|e| cache_err(format!("cannot stat: {e}")))
    }

    /// The cache in an existing `dir`, refused unless it is this user's and
    /// private: artifacts are loaded with `unsafe` deserialize.
    fn checked(dir: PathBuf) -> Result<ArtifactCache, Error> {
        let cache_err = |message: String| Error::Cache { path: dir.clone(), message };
        let meta = fs::metadata(&dir).map_err(|e| cache_err(format!("cannot stat: {e}")))?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(cache_err(format!("owned by uid {}, not by this user ({me})", meta.uid())));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(cache_err(format!(
                "mode {:o} lets other users write; artifacts are loaded with `unsafe` deserialize, so the \
                 directory must be private (chmod 700)",
                meta.permissions().mode() & 0o777
            )));
        }
        let max_bytes = cache::max_from_env(&dir)?;
        Ok(ArtifactCache { dir, max_bytes, unusable: Arc::default() })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Returns the artifact for `bytes` under `settings`, compiling and
    /// storing it on a miss or when the stored one fails its digest.
    fn get_or_compile(
        &self,
        name: &str,
        bytes: &[u8],
        settings: &EngineSettings,
        want: Want,
    ) -> Result<(Artifact, Loaded, Engine), Error> {
        check_header(name, bytes)?;
        let engine = engine_for(name, settings)?;
        let (artifact, loaded) = self.lookup_or_compile(&engine, name, bytes, settings, want)?;
        Ok((artifact, loaded, engine))
    }

    /// Keeps what checking the kernel of `artifact` found beside it
    /// (`KEY.checked`), for the next load to skip deserializing and
    /// checking it.
    /// Best effort: without it, the next load checks again.
    fn record_checked(&self, artifact: &Artifact, checked: &Checked) {
        if self.unusable().is_some() {
            return;
        }
        if let Some(record) = checked.encode(&artifact.digest) {
            if self.write_atomic(&artifact.path.with_extension(cache::CHECKED_EXT), record.as_bytes()).is_ok() {
                // It counts against the cap too.
                cache::evict(&self.dir, self.max_bytes, &artifact.path);
            }
        }
    }

    /// The artifact of the kernel file with this fingerprint, through the
    /// index written when that file was last read and compiled or found
    /// here (`SRC.source`, holding the artifact's key; see
    /// [`ArtifactCache::record_source`]). The artifact is loaded and checked
    /// as on any hit; `None` when there is no index, or it names an
    /// artifact that is gone or fails its digest.
    fn by_source(
        &self,
        engine: &Engine,
        fingerprint: &Fingerprint,
        settings: &EngineSettings,
    ) -> Option<(Artifact, Loaded)> {
        if self.unusable().is_some() {
            return None;
        }
        let key = fs::read_to_string(self.source_index(engine, fingerprint, settings)).ok()?;
        let key = key.trim_end();
        if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let (path, sum_path) = self.artifact_paths(key);
        self.load(engine, &path, &sum_path, Want::Checked)
    }

    /// Records that the kernel file with this fingerprint compiles to
    /// `artifact`, so that the next load finds it without reading and
    /// hashing the file. Best effort, and not synced: a lost or cut index
    /// is a miss.
    fn record_source(
        &self,
        engine: &Engine,
        fingerprint: &Fingerprint,
        settings: &EngineSettings,
        artifact: &Artifact,
    ) {
        if self.unusable().is_some() {
            return;
        }
        let Some(key) = artifact.path.file_stem().and_then(|k| k.to_str()) else { return };
        let index = self.source_index(engine, fingerprint, settings);
        let _ = replace_file(&index, format!("{key}\n").as_bytes(), false);
    }

    /// `KEY.cwasm` and its digest, `KEY.blake3`.
    fn artifact_paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("{key}.cwasm")), self.dir.join(format!("{key}.{}", cache::DIGEST_EXT)))
    }

    /// The index of the kernel file with this fingerprint, `SRC.source`.
    fn source_index(&self, engine: &Engine, fingerprint: &Fingerprint, settings: &EngineSettings) -> PathBuf {
        self.dir.join(format!("{}.{}", source_name(engine, fingerprint, settings), cache::SOURCE_EXT))
    }

    /// The kernel compiled for `engine`, from this cache or compiled and
    /// stored: how a launched worker, sent wasm bytes, uses its own
    /// node-private cache.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        name: &str,
        bytes: &[u8],
        settings: &EngineSettings,
    ) -> Result<Component, Error> {
        Ok(self.lookup_or_compile(engine, name, bytes, settings, Want::Component)?.1.into_component())
    }

    fn lookup_or_compile(
        &self,
        engine: &Engine,
        name: &str,
        bytes: &[u8],
        settings: &EngineSettings,
        want: Want,
    ) -> Result<(Artifact, Loaded), Error> {
        let key = cache_key(engine, bytes, settings);
        let (path, sum_path) = self.artifact_paths(&key);
        let in_memory = self.unusable().is_some();
        if let Some(hit) = (!in_memory).then(|| self.load(engine, &path, &sum_path, want)).flatten() {
            return Ok(hit);
        }
        let component = Component::new(engine, bytes)
            .map_err(|e| Error::InvalidKernel { kernel: name.into(), message: format!("{e:#}") })?;
        let serialized = component
            .serialize()
            .map_err(|e| Error::InvalidKernel { kernel: name.into(), message: format!("serializing: {e:#}") })?;
        let digest = digest_bytes(&serialized);
        let sealed = seal(&serialized).ok().map(Arc::new);
        if !in_memory {
            match self.store(&path, &sum_path, &serialized, &digest) {
                Ok(()) => return Ok((Artifact { path, digest, sealed }, Loaded::Component(component))),
                // A full disk, a read-only directory: local workers can map
                // the sealed copy, so the run goes on without the cache.
                Err(e) if sealed.is_some() => self.mark_unusable(without_path(&e, &self.dir)),
                Err(e) => return Err(e),
            }
        }
        if sealed.is_none() {
            let why = self.unusable().unwrap_or_default();
            return Err(Error::Cache {
                path: self.dir.clone(),
                message: format!("{why}, and the artifact cannot be kept in sealed memory either"),
            });
        }
        Ok((Artifact { path, digest, sealed }, Loaded::Component(component)))
    }

    /// Writes an artifact and its digest, and evicts over the cap.
    fn store(&self, path: &Path, sum_path: &Path, serialized: &[u8], digest: &[u8; 32]) -> Result<(), Error> {
        // Held before eviction runs, so that no other process evicts it
        // before this one's workers have read it; a cleaner racing the
        // write gets one more write.
        for _ in 0..2 {
            self.write_atomic(path, serialized)?;
            self.write_atomic(sum_path, hex::encode(digest).as_bytes())?;
            if cache::hold(path).is_some() {
                break;
            }
        }
        cache::evict(&self.dir, self.max_bytes, path);
        Ok(())
    }

    /// A cache hit is used only if its recorded digest matches; anything
    /// else (missing, truncated, tampered) is a miss and gets recompiled.
    /// The file is copied into a sealed memfd (in the kernel, no copy
    /// through this process) and the digest is checked on the sealed copy:
    /// exactly the bytes that this process and the workers map. With
    /// [`Want::Checked`] and a record of the check of this very artifact
    /// (`KEY.checked`), the artifact is not deserialized here: the workers
    /// do.
    fn load(&self, engine: &Engine, path: &Path, sum_path: &Path, want: Want) -> Option<(Artifact, Loaded)> {
        let mut file = cache::hold(path)?;
        let recorded = fs::read_to_string(sum_path).ok()?;
        let recorded = recorded.trim();
        let checked = match want {
            Want::Checked => fs::read_to_string(path.with_extension(cache::CHECKED_EXT)).ok(),
            Want::Component => None,
        };
        let (digest, loaded, sealed) = match seal_copy(&mut file) {
            Ok(sealed) => {
                let digest = digest_of(&sealed).ok()?;
                if hex::encode(digest) != recorded {
                    return None;
                }
                match checked.and_then(|record| Checked::decode(&record, &digest)) {
                    // Workers map it, or read the file where a memfd cannot
                    // be mapped executable.
                    Some(checked) => (digest, Loaded::Checked(checked), Some(Arc::new(sealed))),
                    // SAFETY: these bytes were written by wpool into this
                    // user's private (0700, owner-checked) cache on this
                    // machine and match the digest recorded then; the memfd
                    // is sealed, so they cannot change; wasmtime also checks
                    // the artifact's engine compatibility header. Nothing
                    // here came over the network.
                    None => match unsafe { deserialize_sealed(engine, &sealed) } {
                        Ok(component) => (digest, Loaded::Component(component), Some(Arc::new(sealed))),
                        // A memfd that cannot be mapped executable here.
                        Err(_) => {
                            let (digest, component) = self.deserialize_checked(engine, path, recorded)?;
                            (digest, Loaded::Component(component), None)
                        }
                    },
                }
            }
            // No memfds here.
            Err(_) => {
                let (digest, component) = self.deserialize_checked(engine, path, recorded)?;
                (digest, Loaded::Component(component), None)
            }
        };
        cache::touch(&file);
        Some((Artifact { path: path.to_path_buf(), digest, sealed }, loaded))
    }

    /// The artifact at `path` read into memory, checked against `recorded`
    /// (hex) and deserialized from there.
    fn deserialize_checked(&self, engine: &Engine, path: &Path, recorded: &str) -> Option<([u8; 32], Component)> {
        let digest: [u8; 32] = hex::decode(recorded).ok()?.try_into().ok()?;
        Some((digest, read_checked(engine, path, &digest).ok()?))
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), Error> {
        replace_file(path, data, true)
            .map_err(|e| Error::Cache { path: path.to_path_buf(), message: format!("cannot write: {e}") })
    }
}

/// Writes `data` to a temporary file beside `path` (private, this
/// process's), synced if `sync`, and renames it over `path`: readers see
/// the old file or the whole new one. The temporary file is removed if
/// anything fails.
fn replace_file(path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A cache error's message without the directory (the warning names it).
fn without_path(e: &Error, dir: &Path) -> String {
    match e {
        Error::Cache { message, .. } => message.clone(),
        other => format!("{other}").replace(&format!("{} ", dir.display()), ""),
    }
}

/// The engine that compiles kernels under `settings` (and checks them).
fn engine_for(name: &str, settings: &EngineSettings) -> Result<Engine, Error> {
    Engine::new(&settings.wasmtime_config())
        .map_err(|e| Error::InvalidKernel { kernel: name.into(), message: format!("engine: {e:#}") })
}

/// The name of the index of a kernel file (see
/// [`ArtifactCache::by_source`]): a hash of the file's fingerprint and of
/// what the artifact's key covers besides the wasm, so that another
/// wasmtime, target or setting looks for another index.
fn source_name(engine: &Engine, fingerprint: &Fingerprint, settings: &EngineSettings) -> String {
    use std::hash::Hash;
    let mut h = KeyHasher(blake3::Hasher::new());
    h.0.update(b"wpool-source-v1\0");
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.update(settings.codegen_key().as_bytes());
    let Fingerprint { dev, ino, size, mtime, ctime } = *fingerprint;
    for n in [dev, ino, size] {
        h.0.update(&n.to_le_bytes());
    }
    for n in [mtime.0, mtime.1, ctime.0, ctime.1] {
        h.0.update(&n.to_le_bytes());
    }
    hex::encode(h.0.finalize().as_bytes())[..32].to_string()
}

/// Feeds what a `Hash` implementation writes into BLAKE3.
struct KeyHasher(blake3::Hasher);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Hash of the wasm, the engine's compatibility fingerprint (wasmtime
/// version, target, codegen flags) and our codegen-relevant settings.
fn cache_key(engine: &Engine, bytes: &[u8], settings: &EngineSettings) -> String {
    use std::hash::Hash;
    let mut h = KeyHasher(blake3::Hasher::new());
    std::hash::Hasher::write(&mut h, b"wpool-artifact-v2\0");
    engine.precompile_compatibility_hash().hash(&mut h);
    std::hash::Hasher::write(&mut h, settings.codegen_key().as_bytes());
    std::hash::Hasher::write(&mut h, &digest_bytes(bytes));
    hex::encode(h.0.finalize().as_bytes())[..32].to_string()
}
