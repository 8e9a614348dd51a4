//! MapReduce: a map kernel emits `key\tvalue` lines, a reducer kernel
//! (world `reducer`) combines the values of each key.
//!
//! Owns grouping and the reduce schedule only; both phases run on ordinary
//! [`Pool`]s. Values are combined in bounded batches as they arrive, earlier
//! results fed back in as values (combiner semantics: `reduce` must be
//! associative and commutative, as the WIT says), so memory per key stays
//! bounded however many values it has.

use std::collections::HashMap;

use crate::error::{Error, ItemIndex, TaskError, TaskErrorKind};
use crate::host::pool::Pool;
use crate::wire::{self, ReduceCall};

/// A key's values are reduced (after the map result that brought them) once
/// this many are waiting...
const VALUES_PER_CALL: usize = 64;
/// ...or once all keys together hold this many bytes of values.
const PENDING_BYTES: usize = 64 << 20;

/// The item for a reducer's pool that stands for `reduce(key, values)`.
pub fn reduce_item<V: AsRef<[u8]>>(key: &[u8], values: &[V]) -> Vec<u8> {
    let call = ReduceCall {
        key: serde_bytes::Bytes::new(key),
        values: values.iter().map(|v| serde_bytes::Bytes::new(v.as_ref())).collect(),
    };
    let mut out = Vec::new();
    wire::encode(&call, &mut out);
    // `encode` frames it; an item is the bare payload.
    out.drain(..4);
    out
}

/// One key of the output, in key order: its reduced value, or why its
/// reduction failed.
pub type KeyResult = (Vec<u8>, Result<Vec<u8>, TaskError>);

/// A map pool and a reduce pool.
///
/// ```no_run
/// use wpool::mapreduce::MapReduce;
/// use wpool::{Kernel, Pool};
/// let map = Pool::builder(Kernel::from_file("wordcount.wasm")?).build()?;
/// let reduce = Pool::builder(Kernel::from_file("sum.wasm")?).build()?;
/// let mut mr = MapReduce::new(map, reduce)?;
/// let out = mr.run(["a b a", "b c"].map(|s| s.as_bytes().to_vec()), |_index, done| {
///     if let Err(failed) = done {
///         eprintln!("{failed}");
///     }
///     true // go on; `false` stops the run
/// })?;
/// for (key, value) in out {
///     println!("{}\t{:?}", String::from_utf8_lossy(&key), value);
/// }
/// # Ok::<(), wpool::Error>(())
/// ```
#[derive(Debug)]
pub struct MapReduce {
    map: Pool,
    reduce: Pool,
}

#[derive(Default)]
struct Group {
    values: Vec<Vec<u8>>,
    failed: Option<TaskError>,
}

impl MapReduce {
    /// `map` must run a map kernel, `reduce` a reducer (world `reducer`).
    pub fn new(map: Pool, reduce: Pool) -> Result<MapReduce, Error> {
        if map.is_reducer() {
            return Err(Error::WrongKernelForStage { stage: "map", expected: "a map kernel, not a reducer" });
        }
        if !reduce.is_reducer() {
            return Err(Error::WrongKernelForStage { stage: "reduce", expected: "a kernel of world `reducer`" });
        }
        Ok(MapReduce { map, reduce })
    }

    /// Maps every item, groups the `key\tvalue` lines of the results by
    /// key, reduces each key's values, and returns every key with its value
    /// sorted by key bytes. Each map item is reported to `on_map` when it is
    /// done: `Ok` or its error (a failed item, or one whose result has a line
    /// without a tab, contributes nothing). `on_map` returning `false` stops
    /// the run: nothing is reduced and the result is empty. The `Err` is a
    /// pool failure, or [`Error::Cancelled`] through a canceller of either
    /// pool.
    ///
    /// Items are pulled on a thread of their own, so that a blocking source
    /// (stdin, a FIFO) does not keep a cancelled run from ending.
    pub fn run<I>(
        &mut self,
        items: I,
        mut on_map: impl FnMut(ItemIndex, Result<(), TaskError>) -> bool,
    ) -> Result<Vec<KeyResult>, Error>
    where
        I: IntoIterator,
        I::Item: Into<Vec<u8>>,
        I::IntoIter: Send + 'static,
    {
        let mut groups: HashMap<Vec<u8>, Group> = HashMap::new();
        let mut pending_bytes = 0usize;
        let mut full: Vec<Vec<u8>> = Vec::new();
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1024);
        let items = items.into_iter();
        std::thread::Builder::new()
            .name("wpool-mapreduce-input".into())
            .spawn(move || {
                for item in items {
                    if tx.send(item.into()).is_err() {
                        return;
                    }
                }
            })
            .map_err(Error::Io)?;
        for (i, r) in self.map.imap_channel(rx).enumerate() {
            let result = r?;
            let i = i as u64;
            let bytes = match result {
                Ok(bytes) => bytes,
                Err(e) => {
                    if !on_map(ItemIndex(i), Err(e)) {
                        return Ok(Vec::new());
                    }
                    continue;
                }
            };
            let pairs = match parse_pairs(&bytes) {
                Ok(pairs) => pairs,
                Err(line) => {
                    let e = TaskError {
                        index: ItemIndex(i),
                        kind: TaskErrorKind::Kernel,
                        message: format!("map result line {line} is not `key<TAB>value`"),
                        worker: None,
                        attempts: 1,
                        stderr: Vec::new(),
                    };
                    if !on_map(ItemIndex(i), Err(e)) {
                        return Ok(Vec::new());
                    }
                    continue;
                }
            };
            if !on_map(ItemIndex(i), Ok(())) {
                return Ok(Vec::new());
            }
            for (key, value) in pairs {
                let group = groups.entry(key.to_vec()).or_default();
                if group.failed.is_some() {
                    continue;
                }
                pending_bytes += value.len();
                group.values.push(value.to_vec());
                if group.values.len() == VALUES_PER_CALL {
                    full.push(key.to_vec());
                }
            }
            if !full.is_empty() || pending_bytes >= PENDING_BYTES {
                // Combine while the map pool waits (its run is lazy): memory
                // stays bounded by what is pending.
                let keys: Vec<Vec<u8>> = if pending_bytes >= PENDING_BYTES {
                    groups.iter().filter(|(_, g)| g.values.len() > 1).map(|(k, _)| k.clone()).collect()
                } else {
                    std::mem::take(&mut full)
                };
                full.clear();
                reduce_keys(&mut self.reduce, &mut groups, keys)?;
                // Counts values that arrived since: reduced ones are settled.
                pending_bytes = 0;
            }
        }
        // Every key gets a final call, even with one value: a reducer may
        // turn a raw value into its result form (as `stats` does).
        let keys: Vec<Vec<u8>> = groups.keys().cloned().collect();
        reduce_keys(&mut self.reduce, &mut groups, keys)?;
        let mut out: Vec<KeyResult> = groups
            .into_iter()
            .map(|(key, mut g)| {
                let result = match g.failed {
                    Some(e) => Err(e),
                    None => Ok(g.values.pop().unwrap_or_default()),
                };
                (key, result)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Reduces each of `keys` (of those still going) to one value, put back as
/// the key's only value; a failed call fails the key. A key's values go into
/// as many calls as it takes for each call to fit under the reducer pool's
/// item size cap, and the results are reduced again until one is left.
fn reduce_keys(pool: &mut Pool, groups: &mut HashMap<Vec<u8>, Group>, keys: Vec<Vec<u8>>) -> Result<(), Error> {
    let cap = pool.max_item_size();
    let mut keys: Vec<Vec<u8>> = keys
        .into_iter()
        .filter(|k| groups.get(k).is_some_and(|g| g.failed.is_none() && !g.values.is_empty()))
        .collect();
    while !keys.is_empty() {
        let mut owners = Vec::new();
        let mut calls = Vec::new();
        for key in &keys {
            let group = groups.get_mut(key).expect("a key being reduced");
            for batch in split_to_fit(key, std::mem::take(&mut group.values), cap) {
                calls.push(reduce_item(key, &batch));
                owners.push(key.clone());
            }
        }
        let results = pool.map(calls)?;
        for (key, result) in owners.into_iter().zip(results) {
            let group = groups.get_mut(&key).expect("a key being reduced");
            if group.failed.is_some() {
                continue;
            }
            match result {
                Ok(value) => group.values.push(value),
                Err(mut e) => {
                    e.message = format!("reducing key {:?}: {}", String::from_utf8_lossy(&key), e.message);
                    group.values.clear();
                    group.failed = Some(e);
                }
            }
        }
        // Keys split over several calls have several results: again.
        keys.retain(|k| groups[k].failed.is_none() && groups[k].values.len() > 1);
    }
    Ok(())
}

/// `values` in batches whose `reduce` calls for `key` are at most `cap`
/// bytes; every batch but the last has at least two values, so that each
/// round leaves fewer values than it took.
fn split_to_fit(key: &[u8], values: Vec<Vec<u8>>, cap: usize) -> Vec<Vec<Vec<u8>>> {
    // A bound on the encoding: lengths and counts are varints of at most
    // 10 bytes.
    let base = 20 + key.len();
    let mut batches = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut size = base;
    for value in values {
        let add = 10 + value.len();
        if batch.len() >= 2 && size + add > cap {
            batches.push(std::mem::take(&mut batch));
            size = base;
        }
        size += add;
        batch.push(value);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// A key and a value, borrowed from a map result.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The `key\tvalue` lines of a map result (a last line without `\n` counts;
/// empty lines are skipped); `Err(line number)` for a line without a tab.
fn parse_pairs(bytes: &[u8]) -> Result<Vec<Pair<'_>>, usize> {
    let mut pairs = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let tab = line.iter().position(|b| *b == b'\t').ok_or(n + 1)?;
        pairs.push((&line[..tab], &line[tab + 1..]));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_split_into_calls_that_fit_and_combine() {
        let values: Vec<Vec<u8>> = (0..10).map(|_| vec![b'v'; 100]).collect();
        let batches = split_to_fit(b"key", values.clone(), 400);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10);
        for b in &batches {
            assert!(reduce_item(b"key", b).len() <= 400);
        }
        assert_eq!(split_to_fit(b"key", values.clone(), 1 << 20).len(), 1, "all in one when they fit");
        assert_eq!(split_to_fit(b"key", vec![b"1".to_vec()], 10).len(), 1, "a lone value still gets its call");
        // Two values that do not fit together still go together: that call
        // fails with item_too_large rather than the run going round forever.
        assert_eq!(split_to_fit(b"key", values[..2].to_vec(), 50), vec![values[..2].to_vec()]);
    }

    #[test]
    fn pairs_parse_and_reject_lines_without_a_tab() {
        assert_eq!(parse_pairs(b"a\t1\nb\t2").unwrap(), vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])]);
        assert_eq!(parse_pairs(b"a\t1\n\nno tab\n"), Err(3));
        assert!(parse_pairs(b"").unwrap().is_empty());
    }

    #[test]
    fn reduce_items_decode_as_reduce_calls() {
        let item = reduce_item(b"k", &[b"1".to_vec(), b"22".to_vec()]);
        let call: ReduceCall<'_> = wire::decode(&item).unwrap();
        assert_eq!(&call.key[..], b"k");
        assert_eq!(call.values.iter().map(|v| v.to_vec()).collect::<Vec<_>>(), vec![b"1".to_vec(), b"22".to_vec()]);
    }
}
