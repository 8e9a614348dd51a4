//! The process's private run directory and the private directories inside
//! it (the workers' working directory, the home of a shared data file).
//!
//! Owns creating, sweeping and removing those directories on the host; it
//! knows nothing about workers.

use std::io;

/// The per-process run directory, `$TMPDIR/wpool-PID-N-nsNS` (NS: the pid
/// namespace), mode 0700: every
/// private file of this process (the workers' working directories, shared
/// data files) lives below it, never beside the caller's files. It exists
/// while some [`PrivateDir`] does and is removed with the last one. A host
/// killed outright (SIGKILL) cannot remove it: the next wpool process of the
/// same user sweeps run directories whose process is gone.
#[derive(Debug)]
struct RunDir {
    path: std::path::PathBuf,
    /// The sweep of stale run directories, which runs beside the pool's
    /// start (a `$TMPDIR` may hold thousands of entries); joined before
    /// this directory goes, so that a run leaves no stale one behind.
    sweep: Option<std::thread::JoinHandle<()>>,
}

impl RunDir {
    /// The live run directory, or a new one (sweeping stale ones first).
    fn get() -> io::Result<std::sync::Arc<RunDir>> {
        use std::os::unix::fs::DirBuilderExt;
        static CURRENT: std::sync::Mutex<std::sync::Weak<RunDir>> = std::sync::Mutex::new(std::sync::Weak::new());
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = current.upgrade() {
            return Ok(dir);
        }
        let tmp = std::env::temp_dir();
        let sweep = {
            let dir = tmp.clone();
            let spawned =
                std::thread::Builder::new().name("wpool-sweep".into()).spawn(move || sweep_stale_run_dirs(&dir));
            // No thread to spare: sweep here.
            spawned.map_err(|_| sweep_stale_run_dirs(&tmp)).ok()
        };
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = tmp.join(format!("wpool-{}-{n}-ns{}", std::process::id(), pid_namespace()));
        // A leftover of an earlier process with our pid (pid reuse) is ours
        // to replace: it belongs to this user and that process is gone.
        if std::fs::symlink_metadata(&path).is_ok() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = std::sync::Arc::new(RunDir { path, sweep });
        *current = std::sync::Arc::downgrade(&dir);
        Ok(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            let _ = sweep.join();
        }
        remove(&self.path);
    }
}

/// Removes a directory of ours and what it holds: one `rmdir` when it is
/// empty, as it nearly always is (`remove_dir_all` opens and lists it
/// first).
fn remove(path: &std::path::Path) {
    if std::fs::remove_dir(path).is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid`), 0 if
/// unknown. A run directory's name carries it: a pid means something only
/// in its own namespace, and containers may share one `/tmp`.
fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| l.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok())
        .unwrap_or(0)
}

/// Removes `wpool-PID-N-nsNS` directories of this user in `tmp` whose
/// process no longer exists. Only those of this pid namespace: another
/// namespace's pid says nothing here, so its directories are left alone.
fn sweep_stale_run_dirs(tmp: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    let uid = rustix::process::getuid().as_raw();
    let me = std::process::id();
    let ns = format!("ns{}", pid_namespace());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("wpool-")) else { continue };
        // Names without a namespace are of versions before it was recorded.
        if rest.rsplit('-').next().is_some_and(|last| last.starts_with("ns") && last != ns) {
            continue;
        }
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        if pid == me || !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        // Signal 0 only checks that the process exists.
        let gone = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH));
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An empty directory only this user can enter, inside the run directory:
/// a pool's workers' working directory, or the home of a shared data file.
/// Removed when dropped.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: std::path::PathBuf,
    /// Already removed by [`PrivateDir::remove_if_empty`].
    removed: bool,
    /// Keeps the run directory alive; declared last, dropped after `path`
    /// is removed.
    run: std::sync::Arc<RunDir>,
}

impl PrivateDir {
    pub(crate) fn create(what: &str) -> io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RunDir::get()?;
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = run.path.join(format!("{what}-{n}"));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir { path, removed: false, run })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Removes the directory now if it is empty, while processes that have
    /// it as their working directory may still be exiting (they go on in a
    /// deleted directory); returns whether it did. One that holds something
    /// is left for the drop, which removes it with what it holds.
    pub(crate) fn remove_if_empty(&mut self) -> bool {
        if !self.removed {
            self.removed = std::fs::remove_dir(&self.path).is_ok();
        }
        self.removed
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if !self.removed {
            remove(&self.path);
        }
        let _ = &self.run;
    }
}
