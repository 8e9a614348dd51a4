//! The artifact cache as its user sees it: where it is, how much it holds,
//! cleaning it, and the size cap kept by least-recently-used eviction.
//!
//! Compiling, naming and verifying artifacts belong to `kernel`; this module
//! only counts, ages and removes them. An artifact is `KEY.cwasm` plus its
//! recorded digest `KEY.blake3` (BLAKE3: SHA-256 made checking a 35 MB
//! artifact the largest part of a warm start) and what checking its kernel
//! found, `KEY.checked`; a kernel file loaded before is found by its inode
//! and times through `SRC.source`, which holds the key. An artifact's
//! modification time is its last use: a
//! cache hit touches it, so eviction removes the least recently used first.
//!
//! An artifact a running wpool process has used is held with a shared
//! `flock` until that process exits (its workers may be respawned and read
//! it again at any time). Cleaning and eviction take an exclusive lock
//! without waiting before they unlink, and skip what is held: `wpool cache
//! clean` is safe while other runs go on.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::Error;
use crate::kernel::ArtifactCache;

/// The cap when `WPOOL_CACHE_MAX` is not set: 2 GiB, some hundred
/// artifacts of typical kernels.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// The environment variable that sets the cap, e.g. `WPOOL_CACHE_MAX=500MiB`.
pub const MAX_ENV: &str = "WPOOL_CACHE_MAX";

const ARTIFACT_EXT: &str = "cwasm";
pub(crate) const DIGEST_EXT: &str = "blake3";
/// What checking the kernel found (see `kernel::Checked`).
pub(crate) const CHECKED_EXT: &str = "checked";

/// The files that belong to an artifact, removed before it.
const SIDECARS: [&str; 2] = [DIGEST_EXT, CHECKED_EXT];
/// An index from a kernel file (its inode and times) to its artifact's
/// key, `SRC.source` (see `kernel::ArtifactCache::by_source`): a shortcut,
/// removed by cleaning; one naming an evicted artifact is a miss.
pub(crate) const SOURCE_EXT: &str = "source";

/// The directory of precompiled artifacts that kernels are loaded from.
///
/// ```no_run
/// let cache = wpool::cache::Cache::open_default()?;
/// let usage = cache.usage()?;
/// println!("{}: {} artifacts, {} bytes", cache.dir().display(), usage.artifacts, usage.bytes);
/// let cleaned = cache.clean()?;
/// println!("removed {}, kept {} in use", cleaned.removed, cleaned.in_use);
/// # Ok::<(), wpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

/// How much a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheUsage {
    /// Compiled artifacts.
    pub artifacts: usize,
    /// Their bytes on disk, digests included.
    pub bytes: u64,
}

/// What [`Cache::clean`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cleaned {
    /// Artifacts removed.
    pub removed: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Artifacts kept because a running wpool process uses them.
    pub in_use: usize,
}

impl Cache {
    /// The cache that [`crate::Kernel::from_file`] uses: `$WPOOL_CACHE_DIR`,
    /// else `$XDG_CACHE_HOME/wpool`, else `$HOME/.cache/wpool`, else a
    /// per-user directory under the temp dir; created private (0700) if
    /// missing. The cap is `$WPOOL_CACHE_MAX` or [`DEFAULT_MAX_BYTES`].
    pub fn open_default() -> Result<Cache, Error> {
        let inner = ArtifactCache::default_location()?;
        Ok(Cache { dir: inner.dir().to_path_buf(), max_bytes: inner.max_bytes() })
    }

    /// A cache in `dir`, with the same checks (owned by this user, not
    /// writable by others) as the default one.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Cache, Error> {
        let inner = ArtifactCache::open(dir.into())?;
        Ok(Cache { dir: inner.dir().to_path_buf(), max_bytes: inner.max_bytes() })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cap above which the least recently used artifacts are evicted
    /// after a new one is written.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Counts the artifacts and their bytes.
    pub fn usage(&self) -> Result<CacheUsage, Error> {
        let entries = entries(&self.dir)?;
        let indexes: u64 = source_indexes(&self.dir).iter().map(|(_, bytes)| bytes).sum();
        Ok(CacheUsage { artifacts: entries.len(), bytes: entries.iter().map(|e| e.bytes).sum::<u64>() + indexes })
    }

    /// Removes every artifact not in use by a running wpool process. A run
    /// that starts afterwards compiles its kernel again.
    pub fn clean(&self) -> Result<Cleaned, Error> {
        let mut cleaned = Cleaned { removed: 0, bytes: 0, in_use: 0 };
        for entry in entries(&self.dir)? {
            match remove_unless_in_use(&entry) {
                Ok(true) => {
                    cleaned.removed += 1;
                    cleaned.bytes += entry.bytes;
                }
                Ok(false) => cleaned.in_use += 1,
                Err(e) => return Err(io_err(&entry.artifact, "cannot remove", e)),
            }
        }
        remove_orphan_digests(&self.dir);
        // The indexes of kernel files go too (a shortcut, rebuilt on the
        // next load of each).
        for (index, bytes) in source_indexes(&self.dir) {
            if fs::remove_file(&index).is_ok() {
                cleaned.bytes += bytes;
            }
        }
        Ok(cleaned)
    }
}

/// The cap from `WPOOL_CACHE_MAX` (`2GiB`, `500MiB`, `100MB`, bytes), else
/// the default. `dir` only names the cache in the error.
pub(crate) fn max_from_env(dir: &Path) -> Result<u64, Error> {
    match std::env::var(MAX_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_MAX_BYTES),
        Ok(v) if v.is_empty() => Ok(DEFAULT_MAX_BYTES),
        Ok(v) => crate::Limits::parse_size(&v).ok_or_else(|| Error::Cache {
            path: dir.to_path_buf(),
            message: format!(
                "{MAX_ENV}=`{v}` is not a size: use bytes or a number with a unit, e.g. `2GiB`, `500MiB`, `100MB`"
            ),
        }),
        Err(std::env::VarError::NotUnicode(v)) => Err(Error::Cache {
            path: dir.to_path_buf(),
            message: format!("{MAX_ENV}={} is not a size", v.to_string_lossy()),
        }),
    }
}

/// The artifacts this process has handed out, each held with a shared lock
/// until exit: its workers read them whenever one is (re)started, and the
/// library cannot tell when the last pool using them is gone.
static IN_USE: Mutex<Option<HashMap<PathBuf, File>>> = Mutex::new(None);

/// Opens the artifact at `path` held for this process's lifetime, or `None`
/// if it is missing or was replaced or removed before the lock was taken.
/// The file returned reads the very artifact that is now locked.
pub(crate) fn hold(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    // SAFETY: flock on a descriptor we own; blocks only while a cleaner
    // holds the exclusive lock, which it does just long enough to unlink.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return None;
    }
    // A cleaner may have unlinked (or a writer replaced) the file between
    // our open and our lock: then the path names another file or none.
    let ours = file.metadata().ok()?;
    let now = fs::metadata(path).ok()?;
    if (ours.dev(), ours.ino()) != (now.dev(), now.ino()) {
        return None;
    }
    let held = file.try_clone().ok()?;
    IN_USE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).insert(path.to_path_buf(), held);
    Some(file)
}

/// Marks the artifact as just used: eviction goes by modification time.
pub(crate) fn touch(file: &File) {
    // Best effort: an artifact whose time cannot be set is merely evicted
    // earlier than it should be.
    let _ = file.set_modified(SystemTime::now());
}

/// After `written` was added: evicts the least recently used artifacts
/// until the cache fits under `max_bytes`, never `written` itself nor one
/// in use. Errors are ignored: the cap is a goal, not a guarantee, and a
/// run must not fail because an old artifact could not be removed.
pub(crate) fn evict(dir: &Path, max_bytes: u64, written: &Path) {
    let Ok(mut entries) = entries(dir) else { return };
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    if total <= max_bytes {
        return;
    }
    entries.sort_by_key(|e| e.used);
    for entry in entries {
        if total <= max_bytes {
            break;
        }
        if entry.artifact == written {
            continue;
        }
        if let Ok(true) = remove_unless_in_use(&entry) {
            total = total.saturating_sub(entry.bytes);
        }
    }
}

struct Entry {
    artifact: PathBuf,
    bytes: u64,
    used: SystemTime,
}

fn entries(dir: &Path) -> Result<Vec<Entry>, Error> {
    let list = fs::read_dir(dir).map_err(|e| io_err(dir, "cannot list", e))?;
    let mut entries = Vec::new();
    for item in list {
        let item = item.map_err(|e| io_err(dir, "cannot list", e))?;
        let artifact = item.path();
        if artifact.extension().is_none_or(|e| e != ARTIFACT_EXT) {
            continue;
        }
        // Gone since the listing (another process cleaned): not ours to count.
        let Ok(meta) = fs::symlink_metadata(&artifact) else { continue };
        if !meta.is_file() {
            continue;
        }
        let sidecar_bytes: u64 =
            SIDECARS.iter().map(|ext| fs::symlink_metadata(artifact.with_extension(ext)).map_or(0, |m| m.len())).sum();
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        entries.push(Entry { artifact, bytes: meta.len() + sidecar_bytes, used });
    }
    Ok(entries)
}

/// Removes the artifact and its digest unless some process holds it.
/// `Ok(false)`: in use, kept.
fn remove_unless_in_use(entry: &Entry) -> io::Result<bool> {
    let file = match File::open(&entry.artifact) {
        Ok(f) => f,
        // Removed meanwhile by someone else: nothing left to do.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(false) } else { Err(e) };
    }
    // The digest first: an artifact without one is a miss, never trusted.
    let sidecars = SIDECARS.map(|ext| entry.artifact.with_extension(ext));
    for path in sidecars.iter().chain([&entry.artifact]) {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Digests and records whose artifact is gone (a writer interrupted
/// between the files, or an artifact removed by hand).
fn remove_orphan_digests(dir: &Path) {
    let Ok(list) = fs::read_dir(dir) else { return };
    for item in list.flatten() {
        let path = item.path();
        let sidecar = path.extension().is_some_and(|e| SIDECARS.iter().any(|s| e == *s));
        if sidecar && !path.with_extension(ARTIFACT_EXT).exists() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The indexes of kernel files (`SRC.source`) and their sizes.
fn source_indexes(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(list) = fs::read_dir(dir) else { return Vec::new() };
    list.flatten()
        .map(|item| item.path())
        .filter(|path| path.extension().is_some_and(|e| e == SOURCE_EXT))
        .filter_map(|path| Some((path.clone(), fs::symlink_metadata(&path).ok().filter(|m| m.is_file())?.len())))
        .collect()
}

fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::Cache { path: path.to_path_buf(), message: format!("{what}: {e}") }
}

#[cfg(test)]
mod tests {
    use crate::Limits;

    fn parse_size(s: &str) -> Option<u64> {
        Limits::parse_size(s)
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("100MB"), Some(100_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
    }
}
