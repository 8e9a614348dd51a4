//! Replaces words by a lookup table loaded once per instance (world
//! `kernel-with-init`).
//!
//! `init(config)`: the table as UTF-8 lines `from\tto` (split at the first
//! tab; blank lines ignored; a trailing `\r` dropped). An empty config reads
//! the same format from the file `/data` instead (`wasm32-unknown-unknown`
//! has no filesystem, so there the table must come as the config).
//!
//! `map(input)`: every word (a maximal run of non-whitespace bytes, split at
//! ASCII whitespace) that is a `from` of the table becomes its `to`; other
//! words and all separators are kept byte for byte.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// Word to replacement.
pub type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// Where the table is read from when `init` gets no config.
const DATA_FILE: &str = "/data";

thread_local! {
    /// The table of this instance, set by `init` (a wasm instance is single threaded).
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

struct Dict;

impl wpool_guest::KernelWithInit for Dict {
    fn init(config: Vec<u8>) -> Result<(), String> {
        let table = if config.is_empty() { parse_table(&read_data_file()?)? } else { parse_table(&config)? };
        TABLE.with_borrow_mut(|t| *t = Some(table));
        Ok(())
    }

    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        TABLE.with_borrow(|t| match t {
            Some(table) => Ok(replace_words(table, &input)),
            None => Err("dict: map called before init".to_string()),
        })
    }
}

wpool_guest::export_with_init!(Dict);

/// Parses `from\tto` lines; blank lines are skipped.
pub fn parse_table(text: &[u8]) -> Result<Table, String> {
    let mut table = Table::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        let n = i + 1;
        let line = std::str::from_utf8(line).map_err(|_| format!("dict: line {n} is not UTF-8"))?;
        let (from, to) = line
            .split_once('\t')
            .ok_or_else(|| format!("dict: line {n} has no tab: {}", wpool_guest::quote(line.as_bytes(), 60)))?;
        table.insert(from.as_bytes().to_vec(), to.as_bytes().to_vec());
    }
    Ok(table)
}

/// Replaces the words of `input` found in `table`, in one pass.
pub fn replace_words(table: &Table, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..space]);
        rest = &rest[space..];
        let len = rest.iter().position(u8::is_ascii_whitespace).unwrap_or(rest.len());
        let word = &rest[..len];
        if !word.is_empty() {
            out.extend_from_slice(table.get(word).map_or(word, Vec::as_slice));
        }
        rest = &rest[len..];
    }
    out
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn read_data_file() -> Result<Vec<u8>, String> {
    match std::fs::read(DATA_FILE) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("dict: no table: pass one with --init FILE or --data FILE".to_string())
        }
        Err(e) => Err(format!("dict: cannot read {DATA_FILE}: {e}")),
    }
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn read_data_file() -> Result<Vec<u8>, String> {
    Err(format!("dict: no table: pass one with --init FILE (this build has no filesystem to read {DATA_FILE} from)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        parse_table(text.as_bytes()).unwrap()
    }

    #[test]
    fn parses_lines_and_skips_blank_ones() {
        let t = table("a\tb\r\n\n  \nhello\thi there\n");
        assert_eq!(t.len(), 2);
        assert_eq!(t[b"a".as_slice()], b"b");
        assert_eq!(t[b"hello".as_slice()], b"hi there");
    }

    #[test]
    fn names_the_line_without_a_tab() {
        assert_eq!(parse_table(b"a\tb\n\nno tab here").unwrap_err(), "dict: line 3 has no tab: \"no tab here\"");
        assert_eq!(parse_table(b"a\tb\n\xff\n").unwrap_err(), "dict: line 2 is not UTF-8");
    }

    #[test]
    fn replaces_words_and_keeps_separators() {
        let t = table("cat\tdog\nred\tblue\n\tempty");
        assert_eq!(replace_words(&t, b"  the red cat\tsat\n\ncat, cat"), b"  the blue dog\tsat\n\ncat, dog");
        assert_eq!(replace_words(&t, b""), b"");
        assert_eq!(replace_words(&t, b" \n "), b" \n ");
        assert_eq!(replace_words(&t, b"\xffcat cat\xff"), b"\xffcat cat\xff");
    }

    #[test]
    fn replacements_are_not_replaced_again() {
        let t = table("a\tb\nb\tc");
        assert_eq!(replace_words(&t, b"a b"), b"b c");
    }
}
