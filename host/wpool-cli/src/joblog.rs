//! `--joblog FILE`: a SQLite record of a run and of every item's outcome,
//! and `wpool joblog FILE`, which summarises it.
//!
//! One database holds any number of runs (table `runs`) and one row per
//! finished item of each (table `items`). Rows are written by a thread of
//! their own, in transactions of up to [`BATCH_ROWS`] rows or
//! [`BATCH_TIME`], in WAL mode: the run's hot path only hashes and sends. A
//! host killed at any moment (SIGKILL, a node that dies) leaves a database
//! that opens and holds every item of the transactions committed before:
//! `ended_at` is then NULL.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use wpool::{ItemResult, SharedResult};

/// Most rows in one transaction.
const BATCH_ROWS: usize = 4096;

/// Results up to this size are kept in their item's row (addressing them
/// by a 32-byte hash would cost more than they weigh, and a random-keyed
/// index insert per tiny item made a joblog of 1 M items write gigabytes);
/// longer ones go to the content-addressed `results` table, once each.
const INLINE_RESULT: usize = 64;

/// Longest a finished item waits before its row is committed.
const BATCH_TIME: Duration = Duration::from_millis(200);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    wpool_version TEXT NOT NULL,
    command TEXT NOT NULL,
    kernel TEXT NOT NULL,
    kernel_sha256 TEXT NOT NULL,
    options TEXT NOT NULL,
    node TEXT NOT NULL,
    cwd TEXT NOT NULL,
    -- A run with --resume: the run its chain of resumes began with.
    resumed_from INTEGER,
    exit_status INTEGER
);
CREATE TABLE IF NOT EXISTS items (
    run INTEGER NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    origin TEXT NOT NULL,
    input_sha256 BLOB,
    status TEXT NOT NULL,
    message TEXT,
    attempts INTEGER,
    worker INTEGER,
    node TEXT,
    -- Seconds since the run started: when the item's kernel call began
    -- (its end less its kernel time) and when its outcome reached the host.
    started REAL,
    finished REAL NOT NULL,
    duration REAL,
    result_size INTEGER,
    result_sha256 BLOB,
    -- A result of at most INLINE_RESULT bytes, kept in its row; longer
    -- ones are in `results`, by SHA-256.
    result BLOB,
    exit_code INTEGER,
    stderr BLOB,
    PRIMARY KEY (run, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    sha256 BLOB PRIMARY KEY,
    bytes BLOB NOT NULL
);
";

/// What the run records about itself.
pub struct RunInfo {
    pub command: String,
    /// The kernel (for a pipeline, the stages' kernels; for MapReduce, map
    /// and reduce), as given.
    pub kernel: String,
    /// The kernel file's SHA-256, in hex ([`file_sha256`]); of several,
    /// the SHA-256 of their hashes one after the other.
    pub kernel_sha256: String,
    /// The options that change results, as JSON.
    pub options: serde_json::Value,
    /// With --resume: the first run of the chain it continues.
    pub resumed_from: Option<i64>,
}

impl RunInfo {
    /// A run of `kernels` (one for `map`): this process's command line.
    pub fn new(kernels: &[&Path], options: serde_json::Value) -> Result<RunInfo> {
        let shas = kernels.iter().map(|k| file_sha256(k)).collect::<Result<Vec<_>>>()?;
        let kernel_sha256 = match &shas[..] {
            [one] => one.clone(),
            many => sha256_hex(many.concat().as_bytes()),
        };
        Ok(RunInfo {
            // Lossy: a file name that is not UTF-8 must not panic here.
            command: shell_words::join(std::env::args_os().map(|a| a.to_string_lossy().into_owned())),
            kernel: kernels.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(" | "),
            kernel_sha256,
            options,
            resumed_from: None,
        })
    }
}

/// The SHA-256 of a file (a kernel, an --init or --data file), in hex, as
/// the joblog records it.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// An item's input hash, as the joblog records it.
pub fn input_sha256(item: &[u8]) -> [u8; 32] {
    Sha256::digest(item).into()
}

enum Record {
    /// The SHA-256 of item `index`'s input, from the input thread.
    Input(u64, [u8; 32]),
    Outcome(Outcome),
    /// The run ended, with this exit status if it has one: the writer
    /// commits what it has and stops (the input thread, still holding a
    /// sender, may be blocked on a silent input).
    End(Option<i32>),
}

struct Outcome {
    index: u64,
    origin: String,
    status: &'static str,
    message: Option<String>,
    attempts: Option<u32>,
    worker: Option<u32>,
    node: Option<String>,
    finished: f64,
    /// Kernel time, in seconds.
    duration: Option<f64>,
    /// A result: its SHA-256 and bytes (kept for `--resume`).
    result: Option<([u8; 32], Vec<u8>)>,
    exit_code: Option<i32>,
    stderr: Option<Vec<u8>>,
}

/// How an item ran, from the library, and the node of its worker.
pub struct Ran {
    pub info: wpool::ItemInfo,
    pub node: Option<String>,
}

/// The writing side, held by the run.
pub struct Joblog {
    path: std::path::PathBuf,
    tx: Sender<Record>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    start: Instant,
}

/// Sends the input hashes, from the thread that reads the input.
pub struct InputHashes {
    tx: Sender<Record>,
}

impl InputHashes {
    pub fn item(&self, index: u64, sha256: [u8; 32]) {
        let _ = self.tx.send(Record::Input(index, sha256));
    }
}

/// `items`, each one's input hash sent to the joblog (if any) as it is
/// read: for runs whose items the library reads itself.
pub fn hashed(
    items: impl Iterator<Item = Vec<u8>> + Send + 'static,
    joblog: Option<&Joblog>,
) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let hashes = joblog.map(Joblog::input_hashes);
    let mut index = 0;
    items.inspect(move |item| {
        if let Some(h) = &hashes {
            h.item(index, input_sha256(item));
        }
        index += 1;
    })
}

/// Records how the run ended (the exit status of `exit`) and waits for
/// every row; a joblog that could not be written fails the run.
pub fn end(joblog: Option<Joblog>, exit: Result<crate::exit::Exit>) -> Result<crate::exit::Exit> {
    let Some(j) = joblog else { return exit };
    let code = exit.as_ref().map_or(i32::from(crate::exit::ERROR), |e| i32::from(e.code()));
    j.finish(code)?;
    exit
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a joblog to read it: an error names the file when it is missing
/// or not a joblog.
pub fn open_existing(path: &Path) -> Result<Connection> {
    if !path.exists() {
        anyhow::bail!("{}: no such joblog", path.display());
    }
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    let has_runs: Option<String> = db
        .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'runs'", [], |r| r.get(0))
        .optional()
        .with_context(|| format!("{}: not a SQLite database", path.display()))?;
    if has_runs.is_none() {
        anyhow::bail!("{}: not a wpool joblog (no `runs` table)", path.display());
    }
    Ok(db)
}

fn open(path: &Path) -> Result<Connection> {
    let db = Connection::open(path).with_context(|| format!("--joblog {}: cannot open", path.display()))?;
    db.busy_timeout(Duration::from_secs(10))?;
    let mode: String = db.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        anyhow::bail!("--joblog {}: WAL mode refused (journal mode {mode})", path.display());
    }
    // Checkpoints (each with an fsync) every 16 MiB of WAL, not 4 MiB; a
    // 32 MiB page cache keeps the B-trees' hot pages between transactions.
    db.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 4096; PRAGMA cache_size = -32768;")?;
    db.execute_batch(SCHEMA).with_context(|| format!("--joblog {}: not a wpool joblog", path.display()))?;
    Ok(db)
}

impl Joblog {
    /// Opens (or creates) the database and records the run's start.
    pub fn start(path: &Path, info: RunInfo) -> Result<Joblog> {
        let db = open(path)?;
        db.execute(
            "INSERT INTO runs (started_at, wpool_version, command, kernel, kernel_sha256, options, node, cwd,
             resumed_from) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                env!("CARGO_PKG_VERSION"),
                info.command,
                info.kernel,
                info.kernel_sha256,
                info.options.to_string(),
                gethostname::gethostname().to_string_lossy().into_owned(),
                std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                info.resumed_from,
            ],
        )
        .with_context(|| format!("--joblog {}: cannot record the run", path.display()))?;
        let run = db.last_insert_rowid();
        let (tx, rx) = crossbeam_channel::bounded(64 << 10);
        let writer = std::thread::Builder::new()
            .name("wpool-joblog".into())
            .spawn(move || write(db, run, &rx))
            .context("starting the joblog thread")?;
        Ok(Joblog { path: path.to_path_buf(), tx, writer: Some(writer), start: Instant::now() })
    }

    /// For the input thread.
    pub fn input_hashes(&self) -> InputHashes {
        InputHashes { tx: self.tx.clone() }
    }

    /// Records how item `index` ended; `origin` says where it came from,
    /// `ran` how it ran and where (when the library said).
    pub fn outcome(&self, index: u64, origin: String, result: &SharedResult, ran: Option<Ran>) {
        self.record(index, origin, result.as_ref().map(|bytes| Some(&bytes[..])).map_err(|e| &**e), ran);
    }

    /// As [`Joblog::outcome`], for an item whose result is not its own to
    /// keep (a MapReduce map item: its results went into the keys).
    pub fn record(
        &self,
        index: u64,
        origin: String,
        result: Result<Option<&[u8]>, &wpool::TaskError>,
        ran: Option<Ran>,
    ) {
        let (info, node) = match ran {
            Some(Ran { info, node }) => (Some(info), node),
            None => (None, None),
        };
        // When the outcome reached the host, not when its turn came in the
        // output (a fast item may wait behind a slow one).
        let arrived = info.map_or_else(Instant::now, |i| i.arrived);
        let finished = arrived.saturating_duration_since(self.start).as_secs_f64();
        let duration = info.and_then(|i| i.kernel_time).map(|t| t.as_secs_f64());
        let outcome = match result {
            Ok(bytes) => Outcome {
                index,
                origin,
                status: "ok",
                message: None,
                attempts: info.map(|i| i.attempts),
                worker: info.and_then(|i| i.worker).map(|w| w.0),
                node,
                finished,
                duration,
                result: bytes.map(|b| (Sha256::digest(b).into(), b.to_vec())),
                exit_code: None,
                stderr: None,
            },
            Err(e) => Outcome {
                index,
                origin,
                status: e.kind.name(),
                message: Some(e.message.clone()),
                attempts: Some(e.attempts),
                worker: e.worker.map(|w| w.0),
                node,
                finished,
                duration,
                result: None,
                exit_code: match e.kind {
                    wpool::TaskErrorKind::KernelExit(code) => Some(code),
                    _ => None,
                },
                stderr: Some(e.stderr.clone()).filter(|s| !s.is_empty()),
            },
        };
        let _ = self.tx.send(Record::Outcome(outcome));
    }

    /// Records the exit status and waits until every row is committed.
    pub fn finish(mut self, status: i32) -> Result<()> {
        self.end(Some(status))
    }

    fn end(&mut self, status: Option<i32>) -> Result<()> {
        let Some(writer) = self.writer.take() else { return Ok(()) };
        let _ = self.tx.send(Record::End(status));
        match writer.join() {
            Ok(result) => result.with_context(|| format!("--joblog {}: writing", self.path.display())),
            Err(_) => anyhow::bail!("--joblog {}: the joblog thread panicked", self.path.display()),
        }
    }
}

impl Drop for Joblog {
    fn drop(&mut self) {
        // An early return (an error): what was recorded is committed, and
        // the run keeps no exit status.
        let _ = self.end(None);
    }
}

/// The writer thread: rows in transactions of up to [`BATCH_ROWS`], each
/// committed at most [`BATCH_TIME`] after its first row.
fn write(mut db: Connection, run: i64, rx: &Receiver<Record>) -> Result<()> {
    let mut inputs = std::collections::HashMap::<u64, [u8; 32]>::new();
    let mut end = None;
    loop {
        let tx = db.transaction()?;
        let mut rows = 0;
        let deadline = Instant::now() + BATCH_TIME;
        let mut closed = false;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO items (run, idx, origin, input_sha256, status, message, attempts, worker,
                 node, started, finished, duration, result_size, result_sha256, result, exit_code, stderr)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            let mut store = tx.prepare_cached("INSERT OR IGNORE INTO results (sha256, bytes) VALUES (?1, ?2)")?;
            while rows < BATCH_ROWS {
                let record = match rx.recv_deadline(deadline) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                };
                match record {
                    Record::Input(index, hash) => {
                        inputs.insert(index, hash);
                    }
                    Record::Outcome(o) => {
                        let input = inputs.remove(&o.index);
                        insert.execute(params![
                            run,
                            o.index as i64,
                            o.origin,
                            input.as_ref().map(|h| &h[..]),
                            o.status,
                            o.message,
                            o.attempts,
                            o.worker,
                            o.node,
                            o.duration.map(|d| (o.finished - d).max(0.0)),
                            o.finished,
                            o.duration,
                            o.result.as_ref().map(|(_, bytes)| bytes.len() as i64),
                            o.result.as_ref().map(|(h, _)| &h[..]),
                            o.result.as_ref().map(|(_, b)| &b[..]).filter(|b| b.len() <= INLINE_RESULT),
                            o.exit_code,
                            o.stderr,
                        ])?;
                        if let Some((sha, bytes)) = o.result.as_ref().filter(|(_, b)| b.len() > INLINE_RESULT) {
                            store.execute(params![&sha[..], bytes])?;
                        }
                        rows += 1;
                    }
                    Record::End(status) => {
                        end = status;
                        closed = true;
                        break;
                    }
                }
            }
        }
        tx.commit()?;
        if closed {
            break;
        }
    }
    if let Some(status) = end {
        db.execute(
            "UPDATE runs SET ended_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), exit_status = ?1 WHERE id = ?2",
            params![status, run],
        )?;
    }
    Ok(())
}

/// Item index → its input's SHA-256 and the run whose row counts (the last
/// that finished it).
pub type Done = std::sync::Arc<std::collections::HashMap<u64, ([u8; 32], i64)>>;

/// An item's row, as `--resume` replays it.
struct Recorded {
    status: String,
    message: Option<String>,
    attempts: Option<u32>,
    worker: Option<u32>,
    exit_code: Option<i32>,
    stderr: Option<Vec<u8>>,
    sha: Option<Vec<u8>>,
    /// The result, when it was short enough to be kept in the row.
    inline: Option<Vec<u8>>,
}

/// What the earlier runs of a joblog did, for `--resume`: the items they
/// finished, found by index and checked by input hash, and their outcomes.
pub struct Resume {
    db: Connection,
    /// The first run of the chain this run continues.
    pub base: i64,
    done: Done,
}

impl Resume {
    /// The items finished by the runs in `path` of this kernel with these
    /// options (all but the failed ones with `failed_too`). Refuses when the
    /// kernel or the options changed since the last run, naming what changed.
    pub fn load(path: &Path, kernel_sha: &str, options: &serde_json::Value, failed_too: bool) -> Result<Resume> {
        if !path.exists() {
            anyhow::bail!("--resume: {}: no such joblog (the first run records it with --joblog)", path.display());
        }
        let db = open(path)?;
        let last: Option<(i64, Option<i64>, String, String)> = db
            .query_row("SELECT id, resumed_from, kernel_sha256, options FROM runs ORDER BY id DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((last_id, resumed_from, last_kernel, last_options)) = last else {
            anyhow::bail!("--resume: {} records no run", path.display());
        };
        // The chain this run continues: the last run started without
        // --resume and the resumes of it (earlier runs, of other inputs
        // perhaps, are not looked at).
        let base = resumed_from.unwrap_or(last_id);
        if last_kernel != kernel_sha {
            anyhow::bail!(
                "--resume: the kernel changed since the last run in {} (SHA-256 {} then, {} now): resume with \
                 the same kernel, or record a new joblog",
                path.display(),
                &last_kernel[..16.min(last_kernel.len())],
                &kernel_sha[..16]
            );
        }
        let then: serde_json::Value = serde_json::from_str(&last_options).unwrap_or_default();
        if &then != options {
            let empty = serde_json::Map::new();
            let (a, b) = (then.as_object().unwrap_or(&empty), options.as_object().unwrap_or(&empty));
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            let changed: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    let show = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
                    format!("{k} ({} then, {} now)", show(a.get(k)), show(b.get(k)))
                })
                .collect();
            anyhow::bail!(
                "--resume: options that change results differ from the last run in {}: {}",
                path.display(),
                changed.join(", ")
            );
        }
        let mut done = std::collections::HashMap::new();
        {
            let mut rows = db.prepare(
                "SELECT items.idx, items.input_sha256, items.run, items.status FROM items
                 JOIN runs ON runs.id = items.run
                 WHERE (runs.id = ?1 OR runs.resumed_from = ?1) ORDER BY items.run",
            )?;
            let mut rows = rows.query(params![base])?;
            while let Some(r) = rows.next()? {
                let index: i64 = r.get(0)?;
                let input: Option<Vec<u8>> = r.get(1)?;
                let status: String = r.get(3)?;
                let Some(input) = input.and_then(|i| <[u8; 32]>::try_from(i).ok()) else { continue };
                if failed_too && status != "ok" {
                    done.remove(&(index as u64));
                } else {
                    done.insert(index as u64, (input, r.get(2)?));
                }
            }
        }
        Ok(Resume { db, base, done: std::sync::Arc::new(done) })
    }

    /// Item index → input SHA-256 of every finished item, for the input
    /// thread.
    pub fn done(&self) -> Done {
        self.done.clone()
    }

    /// How finished item `index` ended, from its row and the result store.
    pub fn replay(&self, index: u64) -> Result<ItemResult> {
        let (_, run) = self.done.get(&index).context("not a finished item")?;
        let row = self.db.query_row(
            "SELECT status, message, attempts, worker, exit_code, stderr, result_sha256, result FROM items
             WHERE run = ?1 AND idx = ?2",
            params![run, index as i64],
            |r| {
                Ok(Recorded {
                    status: r.get(0)?,
                    message: r.get(1)?,
                    attempts: r.get(2)?,
                    worker: r.get(3)?,
                    exit_code: r.get(4)?,
                    stderr: r.get(5)?,
                    sha: r.get(6)?,
                    inline: r.get(7)?,
                })
            },
        )?;
        let Recorded { status, message, attempts, worker, exit_code, stderr, sha, inline } = row;
        if status == "ok" {
            let sha = sha.context("an ok row without a result hash")?;
            let bytes: Vec<u8> = match inline {
                Some(bytes) => bytes,
                None => self
                    .db
                    .query_row("SELECT bytes FROM results WHERE sha256 = ?1", [&sha], |r| r.get(0))
                    .optional()?
                    .with_context(|| format!("the result of item {index} is missing from the result store"))?,
            };
            if Sha256::digest(&bytes)[..] != sha[..] {
                anyhow::bail!("the stored result of item {index} does not match its SHA-256");
            }
            return Ok(Ok(bytes));
        }
        use wpool::TaskErrorKind as K;
        let kind = match status.as_str() {
            "kernel" => K::Kernel,
            "trap" => K::Trap,
            "timeout" => K::Timeout,
            "out_of_fuel" => K::OutOfFuel,
            "memory_limit" => K::MemoryLimit,
            "stack_overflow" => K::StackOverflow,
            "kernel_exit" => K::KernelExit(exit_code.unwrap_or(1)),
            // Shown by name only; what happened is in the message.
            "worker_crashed" => K::WorkerCrashed(wpool::Crash::Signaled { signal: libc::SIGKILL }),
            "item_too_large" => K::ItemTooLarge,
            "protocol" => K::Protocol,
            other => anyhow::bail!("item {index}: unknown status `{other}` in the joblog"),
        };
        Ok(Err(wpool::TaskError {
            index: wpool::ItemIndex(index),
            kind,
            message: message.unwrap_or_default(),
            worker: worker.map(wpool::WorkerId),
            attempts: attempts.unwrap_or(0),
            stderr: stderr.unwrap_or_default(),
        }))
    }
}

/// A run as `wpool joblog` shows it.
struct RunRow {
    id: i64,
    resumed_from: Option<i64>,
    started: String,
    ended: Option<String>,
    command: String,
    kernel: String,
    sha: String,
    status: Option<i32>,
}

/// A failed item as `wpool joblog` shows it.
struct FailedRow {
    index: i64,
    origin: String,
    status: String,
    message: Option<String>,
    attempts: Option<u32>,
}

/// `wpool joblog FILE`: the runs recorded in FILE, the last first; for
/// each, items by status and the failed ones with where they came from.
pub fn summary(path: &Path, json: bool, all: bool) -> Result<()> {
    let db = open_existing(path)?;
    let mut runs = db.prepare(
        "SELECT id, started_at, ended_at, command, kernel, kernel_sha256, exit_status, resumed_from FROM runs
         ORDER BY id DESC",
    )?;
    let runs: Vec<RunRow> = runs
        .query_map([], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                resumed_from: r.get(7)?,
                started: r.get(1)?,
                ended: r.get(2)?,
                command: r.get(3)?,
                kernel: r.get(4)?,
                sha: r.get(5)?,
                status: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let shown = if all { &runs[..] } else { &runs[..runs.len().min(1)] };
    let mut out = Vec::new();
    for run in shown {
        let mut by_status =
            db.prepare("SELECT status, count(*) FROM items WHERE run = ?1 GROUP BY status ORDER BY 2 DESC, 1")?;
        let counts: Vec<(String, i64)> =
            by_status.query_map([run.id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        let mut failed = db.prepare(
            "SELECT idx, origin, status, message, attempts FROM items WHERE run = ?1 AND status != 'ok' ORDER BY idx",
        )?;
        let failed: Vec<FailedRow> = failed
            .query_map([run.id], |r| {
                Ok(FailedRow {
                    index: r.get(0)?,
                    origin: r.get(1)?,
                    status: r.get(2)?,
                    message: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let recorded: i64 = counts.iter().map(|c| c.1).sum();
        let mut slowest = db.prepare(
            "SELECT idx, origin, duration FROM items WHERE run = ?1 AND duration IS NOT NULL
             ORDER BY duration DESC LIMIT 5",
        )?;
        let slowest: Vec<(i64, String, f64)> =
            slowest.query_map([run.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        if json {
            out.push(serde_json::json!({
                "run": run.id, "resumed_from": run.resumed_from, "started_at": run.started, "ended_at": run.ended, "command": run.command,
                "kernel": run.kernel, "kernel_sha256": run.sha, "exit_status": run.status, "items": recorded,
                "by_status": counts.iter().map(|(s, n)| (s.clone(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
                "slowest": slowest.iter().map(|(index, origin, seconds)| serde_json::json!({
                    "index": index, "origin": origin, "kernel_seconds": seconds,
                })).collect::<Vec<_>>(),
                "failed": failed.iter().map(|f| serde_json::json!({
                    "index": f.index, "origin": f.origin, "status": f.status, "message": f.message,
                    "attempts": f.attempts,
                })).collect::<Vec<_>>(),
            }));
            continue;
        }
        match run.resumed_from {
            Some(base) => println!("run {}: {} (resumes run {base})", run.id, run.command),
            None => println!("run {}: {}", run.id, run.command),
        }
        println!("  kernel {} (sha256 {})", run.kernel, &run.sha[..16.min(run.sha.len())]);
        match (&run.ended, run.status) {
            (Some(ended), Some(status)) => println!("  {} to {ended}, exit status {status}", run.started),
            _ => println!("  started {}; did not finish (the host was killed, or is still running)", run.started),
        }
        let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!("  {recorded} items recorded: {}", if counts.is_empty() { "none".into() } else { counts.join(", ") });
        if !slowest.is_empty() {
            let list: Vec<String> =
                slowest.iter().map(|(index, origin, secs)| format!("item {index} ({origin}) {secs:.3} s")).collect();
            println!("  slowest in the kernel: {}", list.join(", "));
        }
        for f in failed.iter().take(20) {
            let first = f.message.as_deref().unwrap_or("").lines().next().unwrap_or("");
            let tries = f.attempts.filter(|&a| a > 1).map(|a| format!(" ({a} attempts)")).unwrap_or_default();
            println!("  item {} ({}): {}: {first}{tries}", f.index, f.origin, f.status);
        }
        if failed.len() > 20 {
            println!("  ... and {} more failed items (--json lists them all)", failed.len() - 20);
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(())
}
