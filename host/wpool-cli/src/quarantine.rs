//! `--quarantine FILE`: each failed item written back as it was read, so
//! that `wpool map KERNEL FILE` runs exactly the failed items again.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use wpool::SharedResult;

use crate::say;

/// The bytes of items on their way through the pool, by index, kept by the
/// input thread until their outcome is known.
pub type Kept = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

pub struct Quarantine {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<std::fs::File>,
    /// What ends a record: `\n`, or NUL with -0.
    sep: u8,
    /// With --files the record is the file's name, not its bytes.
    kept: Option<Kept>,
    /// `--max-item-size`: an item longer was cut while it was read.
    max_item: usize,
    written: u64,
    /// Failed items that cannot be written back: over the size cap (their
    /// bytes were not kept whole), or with --files a name the framing cannot
    /// carry (not UTF-8, or a newline without -0).
    unwritten: Vec<u64>,
}

impl Quarantine {
    /// Writes into `FILE.tmp`, renamed to FILE when the run ends: FILE is
    /// never half-written.
    pub fn create(path: &Path, sep: u8, files: bool, max_item: usize) -> Result<Quarantine> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = std::fs::File::create(&tmp).with_context(|| format!("--quarantine {}", tmp.display()))?;
        Ok(Quarantine {
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::new(file),
            sep,
            kept: (!files).then(Kept::default),
            max_item,
            written: 0,
            unwritten: Vec::new(),
        })
    }

    /// For the input thread: where to keep each item's bytes (none with
    /// --files).
    pub fn kept(&self) -> Option<Kept> {
        self.kept.clone()
    }

    /// Takes in item `index`'s outcome; `origin` names it (with --files,
    /// that is the record).
    pub fn outcome(&mut self, index: u64, origin: impl FnOnce() -> String, result: &SharedResult) -> Result<()> {
        let bytes = self.kept.as_ref().and_then(|k| k.lock().unwrap().remove(&index));
        if result.is_ok() {
            return Ok(());
        }
        let record = match bytes {
            // --files: the file's name. One the record cannot carry is
            // named on stderr instead (a name shown with U+FFFD was not
            // UTF-8).
            None => {
                let name = origin();
                if name.contains('\u{FFFD}') || name.as_bytes().contains(&self.sep) {
                    self.unwritten.push(index);
                    return Ok(());
                }
                name.into_bytes()
            }
            Some(bytes) if bytes.len() > self.max_item => {
                self.unwritten.push(index);
                return Ok(());
            }
            Some(bytes) => bytes,
        };
        self.out.write_all(&record).and_then(|()| self.out.write_all(&[self.sep])).with_context(|| self.context())?;
        self.written += 1;
        Ok(())
    }

    fn context(&self) -> String {
        format!("--quarantine {}", self.tmp.display())
    }

    /// Flushes the file and, when the run went to its end (`complete`),
    /// renames it into place; after a stop FILE stays as it was (it may be
    /// this run's input) and the failures so far are left in FILE.tmp.
    /// Says which failed items could not be written.
    pub fn finish(mut self, complete: bool) -> Result<()> {
        self.out.flush().with_context(|| self.context())?;
        self.out.get_ref().sync_all().with_context(|| self.context())?;
        let at = if complete {
            std::fs::rename(&self.tmp, &self.path)
                .with_context(|| format!("--quarantine: renaming {} to {}", self.tmp.display(), self.path.display()))?;
            &self.path
        } else {
            say(format_args!(
                "wpool: --quarantine {}: the run stopped before its end; the {} failed items so far are in {}, \
                 and {} is unchanged",
                self.path.display(),
                self.written,
                self.tmp.display(),
                self.path.display()
            ));
            &self.tmp
        };
        if !self.unwritten.is_empty() {
            let list: Vec<String> = self.unwritten.iter().take(10).map(u64::to_string).collect();
            say(format_args!(
                "wpool: --quarantine {}: {} failed items are not in it (over --max-item-size, so only their first \
                 bytes were read; or a file name its records cannot carry): items {}{}",
                at.display(),
                self.unwritten.len(),
                list.join(", "),
                if self.unwritten.len() > 10 { ", ..." } else { "" }
            ));
        }
        Ok(())
    }
}
