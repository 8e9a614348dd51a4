//! Reading items from INPUT files (or stdin): lines, NUL-separated records,
//! or whole files, lazily and with a size cap per item.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

/// How INPUT bytes are split into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One item per line, without its `\n` (a `\r` stays).
    Lines,
    /// One item per NUL-terminated record.
    Nul,
    /// Each INPUT is one item.
    Files,
}

#[derive(Debug, Clone)]
pub enum Source {
    Stdin,
    /// With --files, an explicit `-`: stdin names the files, one per item.
    Names,
    File(PathBuf),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::Stdin | Source::Names => "<stdin>".into(),
            Source::File(p) => p.display().to_string(),
        }
    }

    /// A regular file (not stdin, a FIFO or a device): reading never waits
    /// on another process.
    pub fn is_regular_file(&self) -> bool {
        matches!(self, Source::File(p) if std::fs::metadata(p).is_ok_and(|m| m.is_file()))
    }

    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Source::Stdin | Source::Names => Box::new(io::stdin()),
            Source::File(p) => Box::new(File::open(p)?),
        })
    }
}

/// Parses INPUT arguments; checks that every file can be opened before any
/// work starts (nothing runs if one cannot).
pub fn sources(inputs: &[PathBuf]) -> Result<Vec<Source>> {
    if inputs.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.as_os_str() == "-" {
            out.push(Source::Stdin);
            continue;
        }
        let meta = match std::fs::metadata(p) {
            Ok(meta) => meta,
            Err(e) => bail!("cannot read input {}: {e}", p.display()),
        };
        if meta.is_dir() {
            bail!("input {} is a directory", p.display());
        }
        if meta.is_file() {
            if let Err(e) = File::open(p) {
                bail!("cannot read input {}: {e}", p.display());
            }
        } else {
            // A FIFO, a pipe (`<(cmd)`) or a device: opening it here would
            // wait for a writer, and closing it again could make that writer
            // fail. Only ask whether it may be read.
            let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| anyhow::anyhow!("input {}: a NUL byte in the name", p.display()))?;
            // SAFETY: access(2) on a valid NUL-terminated path.
            if unsafe { libc::access(path.as_ptr(), libc::R_OK) } != 0 {
                bail!("cannot read input {}: {}", p.display(), io::Error::last_os_error());
            }
        }
        out.push(Source::File(p.clone()));
    }
    Ok(out)
}

/// Where each source's items start, to name an item's origin in messages
/// without remembering every item.
#[derive(Debug, Default)]
pub struct Origins {
    starts: Vec<(u64, String)>,
    split: Option<Split>,
    /// Real sizes of items over the cap (the pool sees them cut at cap + 1),
    /// until their error is printed.
    oversized: std::collections::HashMap<u64, u64>,
}

impl Origins {
    /// The real size of item `index` if it was over the cap; forgets it.
    pub fn oversized(&mut self, index: u64) -> Option<u64> {
        self.oversized.remove(&index)
    }

    /// `file:line` (lines), `file:record N` (NUL) or `file` (whole files).
    pub fn describe(&self, index: u64) -> String {
        let pos = self.starts.partition_point(|(first, _)| *first <= index);
        let Some((first, name)) = pos.checked_sub(1).map(|p| &self.starts[p]) else {
            return format!("item {index}");
        };
        match self.split {
            Some(Split::Lines) => format!("{name}:{}", index - first + 1),
            Some(Split::Nul) => format!("{name}:record {}", index - first + 1),
            _ => name.clone(),
        }
    }
}

/// The lazy item iterator. Items over `max_item` bytes are cut at
/// `max_item + 1` bytes (the pool then fails them as `item_too_large`)
/// while the rest of the item is skipped, so memory stays bounded.
pub struct Items {
    sources: std::vec::IntoIter<Source>,
    current: Option<BufReader<Box<dyn Read + Send>>>,
    /// The current source's size when it is a regular file (with --files,
    /// the item is read straight into a buffer of that size).
    current_size: Option<u64>,
    split: Split,
    max_item: usize,
    next_index: u64,
    origins: Arc<Mutex<Origins>>,
    error: Arc<Mutex<Option<String>>>,
    current_name: String,
    current_is_file: bool,
    /// With --files: the current source is stdin, a list of file names...
    current_is_list: bool,
    /// ...NUL-terminated (-0) rather than one per line.
    list_nul: bool,
}

impl Items {
    pub fn new(sources: Vec<Source>, split: Split, max_item: usize) -> Items {
        Items {
            sources: sources.into_iter(),
            current: None,
            current_size: None,
            split,
            max_item,
            next_index: 0,
            origins: Arc::new(Mutex::new(Origins { starts: Vec::new(), split: Some(split), ..Origins::default() })),
            error: Arc::new(Mutex::new(None)),
            current_name: String::new(),
            current_is_file: false,
            current_is_list: false,
            list_nul: false,
        }
    }

    /// With --files: file names on stdin are NUL-terminated, not lines.
    pub fn names_nul(mut self, yes: bool) -> Items {
        self.list_nul = yes;
        self
    }

    pub fn origins(&self) -> Arc<Mutex<Origins>> {
        Arc::clone(&self.origins)
    }

    /// A read error that ended the input early, if any.
    pub fn error(&self) -> Arc<Mutex<Option<String>>> {
        Arc::clone(&self.error)
    }

    fn open_next(&mut self) -> bool {
        let Some(source) = self.sources.next() else { return false };
        self.current_name = source.name();
        self.current_is_file = source.is_regular_file();
        self.current_is_list = matches!(source, Source::Names);
        self.current_size = match &source {
            Source::File(p) if self.current_is_file => std::fs::metadata(p).ok().map(|m| m.len()),
            _ => None,
        };
        match source.open() {
            Ok(r) => {
                self.origins.lock().unwrap().starts.push((self.next_index, source.name()));
                self.current = Some(BufReader::with_capacity(256 << 10, r));
                true
            }
            Err(e) => {
                *self.error.lock().unwrap() = Some(format!("cannot read input {}: {e}", source.name()));
                false
            }
        }
    }

    /// Whether the next item can be read without waiting on a slow source:
    /// the current input is a regular file, or a whole record is buffered.
    pub fn ready(&self) -> bool {
        let next_is_file = self.sources.as_slice().first().is_none_or(Source::is_regular_file);
        let Some(reader) = &self.current else { return next_is_file };
        // A regular file never waits, but once it ends the next source may:
        // without a whole record buffered, count on the next one.
        let sep = match self.split {
            Split::Lines => b'\n',
            Split::Nul => 0,
            Split::Files => return self.current_is_file && next_is_file,
        };
        reader.buffer().contains(&sep) || (self.current_is_file && next_is_file)
    }

    /// Reads up to the separator (exclusive) into `out`; `false` at the end
    /// of the source. An item over the cap is kept cut at cap + 1 bytes and
    /// its real size noted for the error message.
    fn read_record(&mut self, sep: Option<u8>, out: &mut Vec<u8>) -> io::Result<bool> {
        let reader = self.current.as_mut().expect("a source is open");
        // The size is the whole source's: it sizes its first read only.
        let Some(size) = read_capped(reader, sep, self.max_item, self.current_size.take(), out)? else {
            return Ok(false);
        };
        if out.len() > self.max_item {
            self.origins.lock().unwrap().oversized.insert(self.next_index, size);
        }
        Ok(true)
    }

    /// With --files and stdin: the next file named on stdin (one name per
    /// line, or per NUL-terminated record with -0), read whole as one item.
    fn next_listed_file(&mut self, names_sep: u8, out: &mut Vec<u8>) -> bool {
        let reader = self.current.as_mut().expect("stdin is open");
        let mut name = Vec::new();
        match read_capped(reader, Some(names_sep), 64 << 10, None, &mut name) {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(e) => {
                *self.error.lock().unwrap() = Some(format!("reading file names from stdin: {e}"));
                return false;
            }
        }
        let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(name));
        let listed = self.next_index;
        let (mut file, size_hint) = match File::open(&path) {
            Ok(f) => {
                let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
                (BufReader::new(f), size)
            }
            Err(e) => {
                *self.error.lock().unwrap() =
                    Some(format!("cannot read input {} (file name {} on stdin): {e}", path.display(), listed + 1));
                return false;
            }
        };
        match read_capped(&mut file, None, self.max_item, size_hint, out) {
            Ok(size) => {
                let mut origins = self.origins.lock().unwrap();
                origins.starts.push((self.next_index, path.display().to_string()));
                if out.len() > self.max_item {
                    origins.oversized.insert(self.next_index, size.unwrap_or(0));
                }
                self.next_index += 1;
                true
            }
            Err(e) => {
                *self.error.lock().unwrap() = Some(format!("reading input {}: {e}", path.display()));
                false
            }
        }
    }
}

/// Reads up to `sep` (exclusive; to the end with `None`) into `out` (its
/// contents replaced, its room reused), keeping at most `max + 1` bytes;
/// returns the record's whole size, `None` at the end. A whole source
/// (`sep` `None`) is read straight into `out`, sized by `size_hint` when
/// known: no copy through the reader's buffer, no regrowth.
fn read_capped(
    reader: &mut impl BufRead,
    sep: Option<u8>,
    max: usize,
    size_hint: Option<u64>,
    out: &mut Vec<u8>,
) -> io::Result<Option<u64>> {
    let cap = max + 1;
    out.clear();
    if sep.is_none() {
        let hint = size_hint.map_or(0, |h| usize::try_from(h).unwrap_or(usize::MAX).min(cap));
        // One byte more than the file: `read_to_end` then sees the end
        // without growing the buffer.
        out.reserve_exact(hint.saturating_add(1).min(cap));
        reader.by_ref().take(cap as u64).read_to_end(out)?;
        let rest = if out.len() == cap { io::copy(reader, &mut io::sink())? } else { 0 };
        if out.is_empty() {
            return Ok(None);
        }
        return Ok(Some(out.len() as u64 + rest));
    }
    let mut size = 0u64;
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some(size));
        }
        any = true;
        let (take, found) = match sep.and_then(|s| memchr::memchr(s, buf)) {
            Some(pos) => (pos, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        size += take as u64;
        reader.consume(if found { take + 1 } else { take });
        if found {
            return Ok(Some(size));
        }
    }
}

impl Items {
    /// The next item into `out` (its contents replaced; for lines and
    /// records its room is reused, so that a caller that copies each item
    /// elsewhere allocates nothing per item); `false` at the end.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            if self.current.is_none() && !self.open_next() {
                return false;
            }
            if self.split == Split::Files && self.current_is_list {
                if self.next_listed_file(if self.list_nul { 0 } else { b'\n' }, out) {
                    return true;
                }
                if self.error.lock().unwrap().is_some() {
                    return false;
                }
                self.current = None;
                continue;
            }
            let sep = match self.split {
                Split::Lines => Some(b'\n'),
                Split::Nul => Some(0),
                Split::Files => None,
            };
            match self.read_record(sep, out) {
                Ok(true) => {
                    self.next_index += 1;
                    if self.split == Split::Files {
                        self.current = None;
                    }
                    return true;
                }
                Ok(false) => {
                    if self.split == Split::Files {
                        // An empty file is still one (empty) item.
                        self.current = None;
                        self.next_index += 1;
                        out.clear();
                        return true;
                    }
                    self.current = None;
                }
                Err(e) => {
                    *self.error.lock().unwrap() = Some(format!("reading input {}: {e}", self.current_name));
                    return false;
                }
            }
        }
    }
}

impl Iterator for Items {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut item = Vec::new();
        self.next_into(&mut item).then_some(item)
    }
}

/// What [`feed_batches`] does with an item.
pub enum Keep {
    /// Into the batch for the pool.
    Send,
    /// Not for the pool (the items before it go out first).
    Skip,
    /// Neither it nor anything after it: reading stops.
    Stop,
}

/// Sends items in batches of up to `BATCH_ITEMS` items or `BATCH_BYTES`
/// bytes; a partial batch goes out before any read that could wait. `keep`
/// sees each item as it is read, in order, and says what becomes of it (the
/// joblog hashes it; `--resume` keeps back the finished ones).
pub fn feed_batches(
    mut items: Items,
    tx: &crossbeam_channel::Sender<wpool::Items>,
    mut keep: impl FnMut(&[u8]) -> Keep,
) {
    const BATCH_ITEMS: usize = 1024;
    const BATCH_BYTES: usize = 256 << 10;
    let mut batch = wpool::Items::new();
    // Each item is read into this one buffer: a small one is copied into
    // the batch's own buffer and this one filled again (no allocation per
    // line), a large one moves into the batch.
    let mut item = Vec::new();
    loop {
        let full = batch.len() >= BATCH_ITEMS || batch.bytes() >= BATCH_BYTES;
        if !batch.is_empty() && (full || !items.ready()) && tx.send(std::mem::take(&mut batch)).is_err() {
            return;
        }
        match items.next_into(&mut item) {
            true => match keep(&item) {
                Keep::Send => batch.push_from(&mut item),
                // The consumer may be waiting for an item of the batch
                // before it gets to this one: the batch goes now.
                Keep::Skip if !batch.is_empty() => {
                    if tx.send(std::mem::take(&mut batch)).is_err() {
                        return;
                    }
                }
                Keep::Skip => {}
                Keep::Stop => {
                    if !batch.is_empty() {
                        let _ = tx.send(batch);
                    }
                    return;
                }
            },
            false => {
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                return;
            }
        }
    }
}

/// Sets the progress bar's total once the items of the inputs are counted,
/// on a thread of its own so that work starts at once. Only regular files
/// are counted: reading a pipe, a FIFO or a terminal here would consume
/// (or wait for) the very items the run needs; the bar then shows items
/// done and their rate, without a total.
pub fn count_in_background(sources: Vec<Source>, split: Split, bar: indicatif::ProgressBar) {
    let _ = std::thread::Builder::new().name("wpool-count".into()).spawn(move || {
        if let Some(total) = count_items(&sources, split) {
            crate::output::set_total(&bar, total);
        }
    });
}

/// Total items of the inputs, when every one is a regular file.
fn count_items(sources: &[Source], split: Split) -> Option<u64> {
    if !sources.iter().all(Source::is_regular_file) {
        return None;
    }
    let mut total = 0u64;
    for s in sources {
        let Source::File(p) = s else { return None };
        if split == Split::Files {
            total += 1;
            continue;
        }
        let sep = if split == Split::Nul { 0 } else { b'\n' };
        let mut f = std::io::BufReader::new(std::fs::File::open(p).ok()?);
        let mut count = 0u64;
        let mut last = sep;
        loop {
            let buf = std::io::BufRead::fill_buf(&mut f).ok()?;
            if buf.is_empty() {
                break;
            }
            count += buf.iter().filter(|b| **b == sep).count() as u64;
            last = *buf.last().expect("non-empty");
            let n = buf.len();
            std::io::BufRead::consume(&mut f, n);
        }
        total += count + u64::from(last != sep);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items_of(bytes: &[u8], split: Split, max: usize) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        std::fs::write(&p, bytes).unwrap();
        Items::new(vec![Source::File(p)], split, max).collect()
    }

    #[test]
    fn lines_keep_cr_empty_lines_and_a_last_line_without_newline() {
        let got = items_of(b"a\r\n\nb\nc", Split::Lines, 100);
        assert_eq!(got, vec![b"a\r".to_vec(), b"".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(items_of(b"", Split::Lines, 100).is_empty());
    }

    #[test]
    fn nul_records_and_oversized_items_are_cut_at_cap_plus_one() {
        assert_eq!(items_of(b"x\0yy\0", Split::Nul, 100), vec![b"x".to_vec(), b"yy".to_vec()]);
        let got = items_of(b"short\nwaytoolong\nok\n", Split::Lines, 4);
        assert_eq!(got, vec![b"short".to_vec(), b"wayto".to_vec(), b"ok".to_vec()]);
    }

    #[test]
    fn origins_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "1\n2\n").unwrap();
        std::fs::write(&b, "3\n").unwrap();
        let items = Items::new(vec![Source::File(a.clone()), Source::File(b.clone())], Split::Lines, 10);
        let origins = items.origins();
        assert_eq!(items.count(), 3);
        assert_eq!(origins.lock().unwrap().describe(1), format!("{}:2", a.display()));
        assert_eq!(origins.lock().unwrap().describe(2), format!("{}:1", b.display()));
    }
}
