//! Sums the values of a key (world `reducer`). Values are ASCII decimal
//! integers with an optional leading `-`, surrounding whitespace ignored, that
//! fit an `i64`; the result is their decimal sum, so it can be fed back in.

struct Sum;

impl wpool_guest::Reducer for Sum {
    fn reduce(key: Vec<u8>, values: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        let key = String::from_utf8_lossy(&key);
        let mut total: i64 = 0;
        for (i, value) in values.iter().enumerate() {
            let n = parse_integer(value)
                .map_err(|why| format!("sum: value {i} of key {key} {why}: {}", wpool_guest::quote(value, 40)))?;
            total = total.checked_add(n).ok_or_else(|| format!("sum: overflow adding value {i} of key {key}"))?;
        }
        Ok(total.to_string().into_bytes())
    }
}

wpool_guest::export_reducer!(Sum);

/// Parses `[-]digits` between ASCII whitespace; the error completes
/// "value N of key K ...".
pub fn parse_integer(value: &[u8]) -> Result<i64, &'static str> {
    let text = value.trim_ascii();
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err("is not an integer");
    }
    // Only ASCII digits and '-' here, so this is valid UTF-8.
    std::str::from_utf8(text).unwrap_or_default().parse().map_err(|_| "does not fit in an i64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::Reducer;

    fn reduce(values: &[&str]) -> Result<String, String> {
        let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        Sum::reduce(b"k".to_vec(), values).map(|out| String::from_utf8(out).unwrap())
    }

    #[test]
    fn parses_integers() {
        assert_eq!(parse_integer(b" 42\n"), Ok(42));
        assert_eq!(parse_integer(b"-7"), Ok(-7));
        assert_eq!(parse_integer(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_integer(b"+1"), Err("is not an integer"));
        assert_eq!(parse_integer(b"1.5"), Err("is not an integer"));
        assert_eq!(parse_integer(b"-"), Err("is not an integer"));
        assert_eq!(parse_integer(b""), Err("is not an integer"));
        assert_eq!(parse_integer(b"9223372036854775808"), Err("does not fit in an i64"));
    }

    #[test]
    fn sums_and_feeds_back() {
        assert_eq!(reduce(&[]).unwrap(), "0");
        assert_eq!(reduce(&["1", " 2 ", "-10"]).unwrap(), "-7");
        assert_eq!(reduce(&[&reduce(&["1", "2"]).unwrap(), "3"]).unwrap(), "6");
    }

    #[test]
    fn reports_bad_values_and_overflow() {
        assert_eq!(reduce(&["1", "x1"]).unwrap_err(), "sum: value 1 of key k is not an integer: \"x1\"");
        assert_eq!(reduce(&["9223372036854775807", "1"]).unwrap_err(), "sum: overflow adding value 1 of key k");
        let err = Sum::reduce(b"\xffk".to_vec(), vec![b"".to_vec()]).unwrap_err();
        assert_eq!(err, "sum: value 0 of key \u{fffd}k is not an integer: \"\"");
    }
}
