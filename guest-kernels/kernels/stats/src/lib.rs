//! Count, sum, min, max and mean of the values of a key (world `reducer`).
//!
//! A value is a plain number (an `f64` in decimal, surrounding whitespace
//! ignored) or an earlier result of this reducer, so results can be fed back
//! in (combiner semantics). The result is exactly
//! `count=C sum=S min=MIN max=MAX mean=MEAN`: `C` an integer, the others `f64`
//! printed with `{}` (shortest form that parses back to the same value).

use std::fmt;

/// The summary of some values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// The summary of one number.
    pub fn of(x: f64) -> Stats {
        Stats { count: 1, sum: x, min: x, max: x }
    }

    /// The summary of the values of both; `None` if the count overflows.
    pub fn merge(self, other: Stats) -> Option<Stats> {
        Some(Stats {
            count: self.count.checked_add(other.count)?,
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        })
    }

    /// Parses a plain number or a result of this reducer.
    pub fn parse(value: &[u8]) -> Option<Stats> {
        let text = std::str::from_utf8(value).ok()?.trim();
        if !text.starts_with("count=") {
            return text.parse().ok().filter(|x: &f64| x.is_finite()).map(Stats::of);
        }
        let mut fields = text.split_ascii_whitespace();
        let mut field = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=');
        let count = field("count")?.parse().ok()?;
        let sum = field("sum")?.parse().ok()?;
        let min = field("min")?.parse().ok()?;
        let max = field("max")?.parse().ok()?;
        let _mean: f64 = field("mean")?.parse().ok()?;
        if fields.next().is_some() || count == 0 {
            return None;
        }
        Some(Stats { count, sum, min, max })
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean = self.sum / self.count as f64;
        write!(f, "count={} sum={} min={} max={} mean={mean}", self.count, self.sum, self.min, self.max)
    }
}

struct StatsReducer;

impl wpool_guest::Reducer for StatsReducer {
    fn reduce(key: Vec<u8>, values: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        let key = String::from_utf8_lossy(&key);
        let mut total: Option<Stats> = None;
        for (i, value) in values.iter().enumerate() {
            let stats = Stats::parse(value).ok_or_else(|| {
                format!(
                    "stats: value {i} of key {key} is not a number or a stats result: {}",
                    wpool_guest::quote(value, 40)
                )
            })?;
            total = match total {
                None => Some(stats),
                Some(t) => {
                    Some(t.merge(stats).ok_or_else(|| format!("stats: count overflow at value {i} of key {key}"))?)
                }
            };
        }
        let total = total.ok_or_else(|| format!("stats: no values for key {key}"))?;
        Ok(total.to_string().into_bytes())
    }
}

wpool_guest::export_reducer!(StatsReducer);

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::Reducer;

    fn reduce(values: &[&str]) -> Result<String, String> {
        let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        StatsReducer::reduce(b"k".to_vec(), values).map(|out| String::from_utf8(out).unwrap())
    }

    #[test]
    fn summarizes_plain_numbers() {
        assert_eq!(reduce(&["1", " 2.5 ", "-3"]).unwrap(), "count=3 sum=0.5 min=-3 max=2.5 mean=0.16666666666666666");
        assert_eq!(
            reduce(&["0.1", "0.2"]).unwrap(),
            "count=2 sum=0.30000000000000004 min=0.1 max=0.2 mean=0.15000000000000002"
        );
    }

    #[test]
    fn results_feed_back() {
        let all = reduce(&["4", "1", "7", "2"]).unwrap();
        let left = reduce(&["4", "1"]).unwrap();
        let right = reduce(&["7"]).unwrap();
        assert_eq!(reduce(&[&right, "2", &left]).unwrap(), all);
        assert_eq!(reduce(&[&all]).unwrap(), all);
        assert_eq!(all, "count=4 sum=14 min=1 max=7 mean=3.5");
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!(Stats::parse(b"1e3"), Some(Stats::of(1000.0)));
        let s = Stats { count: 2, sum: 3.0, min: 1.0, max: 2.0 };
        assert_eq!(Stats::parse(b"count=2 sum=3 min=1 max=2 mean=1.5\n"), Some(s));
        assert_eq!(Stats::parse(s.to_string().as_bytes()), Some(s));
        for bad in ["", "x", "NaN", "inf", "1e999", "count=2 sum=3 min=1 max=2", "count=0 sum=0 min=0 max=0 mean=0"] {
            assert_eq!(Stats::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(Stats::parse(b"count=2 sum=3 min=1 max=2 mean=1.5 extra=1"), None);
        assert_eq!(Stats::parse(b"count=2 sum=3 max=2 min=1 mean=1.5"), None);
    }

    #[test]
    fn reports_bad_values() {
        assert_eq!(
            reduce(&["1", "one"]).unwrap_err(),
            "stats: value 1 of key k is not a number or a stats result: \"one\""
        );
        assert_eq!(reduce(&[]).unwrap_err(), "stats: no values for key k");
    }
}
