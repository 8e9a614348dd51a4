//! Text in; `word\tcount` lines out, sorted by word. Words are maximal runs
//! of ASCII letters, digits and apostrophes, lower-cased.

use std::collections::BTreeMap;

struct WordCount;

impl wpool_guest::Kernel for WordCount {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for word in input.split(|b| !(b.is_ascii_alphanumeric() || *b == b'\'')).filter(|w| !w.is_empty()) {
            *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
        }
        let mut out = Vec::new();
        for (word, n) in counts {
            out.extend_from_slice(&word);
            out.push(b'\t');
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    }
}

wpool_guest::export!(WordCount);
