//! Writing results: plain bytes or JSON Lines on stdout, one line per failed
//! item on stderr, and the progress bar.

use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use wpool::splice::SplicePipe;
use wpool::{SharedBytes, SharedResult, TaskError, TaskErrorKind};

use crate::input::Origins;
use crate::say;

#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// Each result followed by `sep` (`\n` or NUL); with `tag`, after its
    /// origin and a TAB; with `empty_on_error`, a failed item prints an
    /// empty record.
    Plain { sep: u8, tag: bool, empty_on_error: bool },
    /// One JSON object per item.
    Json,
}

/// Records of this many bytes or more go to a pipe by reference (see
/// [`SplicePipe`]), not copied.
const SPLICED: usize = 64 << 10;

pub struct Printer {
    /// Standard output (what a pipe's reader has not read of the spliced
    /// records is leaked, not freed, when the printer goes).
    out: BufWriter<SplicePipe<SharedBytes>>,
    format: Format,
    origins: Arc<Mutex<Origins>>,
    progress: Option<ProgressBar>,
    /// `--max-item-size`, for the hint of an item over it.
    max_item: u64,
    /// Records handed to `out` so far (results, JSON lines, keys).
    records: u64,
    /// Items whose outcome was handled (written, or reported on stderr).
    items: u64,
}

impl Printer {
    pub fn new(format: Format, origins: Arc<Mutex<Origins>>, progress: bool, max_item: u64) -> Printer {
        // Until the inputs are counted (regular files only), or for good: no
        // total, items done and their rate.
        let progress = progress.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_style(style("{spinner} {pos} items  {rate}"));
            // Redrawn while a slow item holds everything up, so the screen
            // shows the run is alive.
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Printer {
            out: BufWriter::with_capacity(64 << 10, SplicePipe::stdout()),
            format,
            origins,
            progress,
            max_item,
            records: 0,
            items: 0,
        }
    }

    /// The progress bar, if one is shown.
    pub fn progress(&self) -> Option<ProgressBar> {
        self.progress.clone()
    }

    /// Counts an item on the progress bar; [`Printer::item`] does it for the
    /// items it prints, a MapReduce counts its map items with it.
    pub fn tick(&self) {
        if let Some(bar) = &self.progress {
            bar.inc(1);
        }
    }

    /// Writes one item's outcome; flushes when `idle` (no further result is
    /// ready) so that a downstream pipe sees results as they come.
    pub fn item(&mut self, index: u64, result: SharedResult, idle: bool) -> io::Result<()> {
        self.write_item(index, result, idle).map_err(on_stdout)
    }

    fn write_item(&mut self, index: u64, result: SharedResult, idle: bool) -> io::Result<()> {
        self.items += 1;
        match (&self.format, result) {
            (&Format::Plain { sep, tag, empty_on_error }, result) => {
                // A failed item's record is empty, or absent.
                let record = match result {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        self.report(&self.explain(*e));
                        empty_on_error.then(|| SharedBytes::from(Vec::new()))
                    }
                };
                if let Some(record) = record {
                    if tag {
                        let origin = self.origins.lock().unwrap().describe(index);
                        self.out.write_all(origin.as_bytes())?;
                        self.out.write_all(b"\t")?;
                    }
                    if record.len() >= SPLICED {
                        self.out.flush()?;
                        self.out.get_mut().splice(record)?;
                    } else {
                        self.out.write_all(&record)?;
                    }
                    self.out.write_all(&[sep])?;
                    self.records += 1;
                }
            }
            (Format::Json, Ok(bytes)) => {
                let ok = json_bytes(&bytes);
                serde_json::to_writer(&mut self.out, &serde_json::json!({ "index": index, "ok": ok }))?;
                self.out.write_all(b"\n")?;
                self.records += 1;
            }
            (Format::Json, Err(e)) => {
                let e = self.explain(*e);
                let origin = self.origins.lock().unwrap().describe(index);
                let mut err = serde_json::json!({
                    "origin": origin,
                    "kind": e.kind.name(),
                    "message": e.message,
                    "attempts": e.attempts,
                    "worker": e.worker.map(|w| w.0),
                });
                if let TaskErrorKind::KernelExit(code) = e.kind {
                    err["status"] = code.into();
                }
                if !e.stderr.is_empty() {
                    err["stderr"] = String::from_utf8_lossy(&e.stderr).into();
                }
                serde_json::to_writer(&mut self.out, &serde_json::json!({ "index": index, "error": err }))?;
                self.out.write_all(b"\n")?;
                self.records += 1;
                self.report(&e);
            }
        }
        self.tick();
        if idle {
            self.out.flush()?;
        }
        Ok(())
    }

    /// One key of a MapReduce: `key<TAB>value` (or a JSON object with the
    /// key); a failed key gets one line on stderr.
    pub fn key(&mut self, key: &[u8], result: Result<Vec<u8>, TaskError>) -> io::Result<()> {
        self.write_key(key, result).map_err(on_stdout)
    }

    fn write_key(&mut self, key: &[u8], result: Result<Vec<u8>, TaskError>) -> io::Result<()> {
        match (&self.format, result) {
            (Format::Plain { sep, .. }, Ok(value)) => {
                self.out.write_all(key)?;
                self.out.write_all(b"\t")?;
                self.out.write_all(&value)?;
                self.out.write_all(&[*sep])?;
                self.records += 1;
            }
            (Format::Plain { .. }, Err(e)) => say(format_args!(
                "wpool: key {:?}: {}: {}",
                String::from_utf8_lossy(key),
                e.kind,
                first_line(&e.message)
            )),
            (Format::Json, result) => {
                let mut obj = serde_json::json!({ "key": String::from_utf8_lossy(key) });
                match result {
                    Ok(value) => obj["ok"] = json_bytes(&value),
                    Err(e) => {
                        obj["error"] = serde_json::json!({ "kind": e.kind.name(), "message": e.message });
                        say(format_args!(
                            "wpool: key {:?}: {}: {}",
                            String::from_utf8_lossy(key),
                            e.kind,
                            first_line(&e.message)
                        ));
                    }
                }
                serde_json::to_writer(&mut self.out, &obj)?;
                self.out.write_all(b"\n")?;
                self.records += 1;
            }
        }
        Ok(())
    }

    /// The flag behind a limit the item ran into (the library names none);
    /// for an item over the size cap, also its real size (the input reader
    /// skipped the rest of it, counting).
    fn explain(&self, mut e: TaskError) -> TaskError {
        match e.kind {
            TaskErrorKind::ItemTooLarge => {
                if let Some(size) = self.origins.lock().unwrap().oversized(e.index.get()) {
                    e.message = format!("item of {size} bytes is over the {}-byte cap", self.max_item);
                }
                e.message.push_str(" (raise it with --max-item-size)");
            }
            TaskErrorKind::MemoryLimit => e.message.push_str(" (raise it with --memory)"),
            TaskErrorKind::OutOfFuel => e.message.push_str(" (raise it with --fuel)"),
            _ => {}
        }
        e
    }

    /// One line on stderr: item, origin, kind, message, worker.
    fn report(&self, e: &TaskError) {
        let origin = self.origins.lock().unwrap().describe(e.index.get());
        let mut line = format!("wpool: item {} ({origin}): {}: {}", e.index, e.kind, first_line(&e.message));
        if let Some(panic) = panic_message(&e.stderr) {
            line.push_str(&format!(" [{panic}]"));
        }
        if let Some(w) = e.worker {
            line.push_str(&format!(" ({w}"));
            if e.attempts > 1 {
                line.push_str(&format!(", {} attempts", e.attempts));
            }
            line.push(')');
        }
        let print = || say(format_args!("{line}"));
        match &self.progress {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// How many records (results, JSON lines, keys) were written: after
    /// [`Printer::finish`], all of them are on standard output.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// How many items' outcomes were handled by [`Printer::item`]: in an
    /// ordered run, the first that many items.
    pub fn items(&self) -> u64 {
        self.items
    }

    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        self.out.flush().map_err(on_stdout)
    }
}

/// Says where a write failed (a full disk, a closed pipe), keeping its
/// kind: a closed pipe still ends the run quietly.
fn on_stdout(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("writing results to standard output: {e}"))
}

fn style(template: &str) -> ProgressStyle {
    // Whole items per second: indicatif's own `{per_sec}` shows four decimals.
    ProgressStyle::with_template(template).expect("valid template").with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        },
    )
}

/// Gives the bar its total once the inputs are counted.
pub fn set_total(bar: &ProgressBar, total: u64) {
    bar.set_length(total);
    bar.set_style(style("{bar:40} {pos}/{len} items  {rate}  ETA {eta}"));
}

/// `{"text": …}` for UTF-8, `{"bytes": "<base64>"}` otherwise.
fn json_bytes(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::json!({ "text": text }),
        Err(_) => serde_json::json!({ "bytes": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// `panicked at src/lib.rs:5:9: boom` from a Rust guest's stderr.
fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut lines = text.lines();
    let at = lines.find(|l| l.contains("panicked at"))?;
    let location = at.split("panicked at").nth(1).unwrap_or("").trim().trim_end_matches(':');
    let message = lines.next().unwrap_or("").trim();
    Some(format!("panicked at {location}: {message}"))
}
