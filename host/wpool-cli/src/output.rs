//! Writing results: plain bytes or JSON Lines on stdout, one line per failed
//! item on stderr, and the progress bar.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wpool::{ItemResult, TaskError, TaskErrorKind};

use crate::input::Origins;

#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// Each result followed by `sep` (`\n` or NUL).
    Plain { sep: u8 },
    /// One JSON object per item.
    Json,
}

pub struct Printer {
    out: BufWriter<Stdout>,
    format: Format,
    origins: Arc<Mutex<Origins>>,
    progress: Option<ProgressBar>,
}

impl Printer {
    pub fn new(format: Format, origins: Arc<Mutex<Origins>>, progress: bool, total: Option<u64>) -> Printer {
        let progress = progress.then(|| match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} items  {per_sec}  ETA {eta}")
                    .expect("valid template"),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_style(ProgressStyle::with_template("{spinner} {pos} items  {per_sec}").expect("valid template")),
        });
        Printer { out: BufWriter::with_capacity(64 << 10, io::stdout()), format, origins, progress }
    }

    /// Writes one item's outcome; flushes when `idle` (no further result is
    /// ready) so that a downstream pipe sees results as they come.
    pub fn item(&mut self, index: u64, result: ItemResult, idle: bool) -> io::Result<()> {
        match (&self.format, result) {
            (Format::Plain { sep }, Ok(bytes)) => {
                self.out.write_all(&bytes)?;
                self.out.write_all(&[*sep])?;
            }
            (Format::Plain { .. }, Err(e)) => self.report(&e),
            (Format::Json, Ok(bytes)) => {
                let ok = json_bytes(&bytes);
                serde_json::to_writer(&mut self.out, &serde_json::json!({ "index": index, "ok": ok }))?;
                self.out.write_all(b"\n")?;
            }
            (Format::Json, Err(e)) => {
                let mut err = serde_json::json!({
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
                self.report(&e);
            }
        }
        if let Some(bar) = &self.progress {
            bar.inc(1);
        }
        if idle {
            self.out.flush()?;
        }
        Ok(())
    }

    /// One key of a MapReduce: `key<TAB>value` (or a JSON object with the
    /// key); a failed key gets one line on stderr.
    pub fn key(&mut self, key: &[u8], result: Result<Vec<u8>, TaskError>) -> io::Result<()> {
        match (&self.format, result) {
            (Format::Plain { sep }, Ok(value)) => {
                self.out.write_all(key)?;
                self.out.write_all(b"\t")?;
                self.out.write_all(&value)?;
                self.out.write_all(&[*sep])?;
            }
            (Format::Plain { .. }, Err(e)) => {
                eprintln!("wpool: key {:?}: {}: {}", String::from_utf8_lossy(key), e.kind, first_line(&e.message))
            }
            (Format::Json, result) => {
                let mut obj = serde_json::json!({ "key": String::from_utf8_lossy(key) });
                match result {
                    Ok(value) => obj["ok"] = json_bytes(&value),
                    Err(e) => {
                        obj["error"] = serde_json::json!({ "kind": e.kind.name(), "message": e.message });
                        eprintln!(
                            "wpool: key {:?}: {}: {}",
                            String::from_utf8_lossy(key),
                            e.kind,
                            first_line(&e.message)
                        );
                    }
                }
                serde_json::to_writer(&mut self.out, &obj)?;
                self.out.write_all(b"\n")?;
            }
        }
        Ok(())
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
        let print = || eprintln!("{line}");
        match &self.progress {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        self.out.flush()
    }
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
