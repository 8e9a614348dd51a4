//! `--quarantine FILE`: each failed item written back as it was read, so
//! that `wpool map KERNEL FILE` runs exactly the failed items again.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use wpool::ItemResult;

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
    /// Failed items over the size cap, whose bytes were not kept.
    too_large: Vec<u64>,
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
            too_large: Vec::new(),
        })
    }

    /// For the input thread: where to keep each item's bytes (none with
    /// --files).
    pub fn kept(&self) -> Option<Kept> {
        self.kept.clone()
    }

    /// Takes in item `index`'s outcome; `origin` names it (with --files,
    /// that is the record).
    pub fn outcome(&mut self, index: u64, origin: impl FnOnce() -> String, result: &ItemResult) -> Result<()> {
        let bytes = self.kept.as_ref().and_then(|k| k.lock().unwrap().remove(&index));
        if result.is_ok() {
            return Ok(());
        }
        let record = match bytes {
            None => origin().into_bytes(),
            Some(bytes) if bytes.len() > self.max_item => {
                self.too_large.push(index);
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

    /// Flushes and renames the file into place; says which failed items
    /// could not be written.
    pub fn finish(mut self) -> Result<()> {
        self.out.flush().with_context(|| self.context())?;
        self.out.get_ref().sync_all().with_context(|| self.context())?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("--quarantine: renaming {} to {}", self.tmp.display(), self.path.display()))?;
        if !self.too_large.is_empty() {
            let list: Vec<String> = self.too_large.iter().take(10).map(u64::to_string).collect();
            say(format_args!(
                "wpool: --quarantine {}: {} items over --max-item-size are not in it (only their first bytes were \
                 read): items {}{}",
                self.path.display(),
                self.too_large.len(),
                list.join(", "),
                if self.too_large.len() > 10 { ", ..." } else { "" }
            ));
        }
        Ok(())
    }
}
