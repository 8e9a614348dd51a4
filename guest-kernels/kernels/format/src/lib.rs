//! The last stage of the validate → compute → format pipeline example: a
//! decimal unsigned integer (surrounding ASCII whitespace ignored) becomes
//! `count=<the number>`, without a newline.

struct Format;

impl wpool_guest::Kernel for Format {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        format_count(&input)
    }
}

wpool_guest::export!(Format);

/// `count=` and the trimmed number, or an error if `input` is not one.
pub fn format_count(input: &[u8]) -> Result<Vec<u8>, String> {
    let digits = input.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        let text = String::from_utf8_lossy(input);
        let shown = match text.char_indices().nth(40) {
            Some((end, _)) => format!("{:?}...", &text[..end]),
            None => format!("{text:?}"),
        };
        return Err(format!("format: not a decimal number: {shown}"));
    }
    Ok([b"count=", digits].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(format_count(b"664579").unwrap(), b"count=664579");
        assert_eq!(format_count(b" 0\n").unwrap(), b"count=0");
    }

    #[test]
    fn refuses_others() {
        assert_eq!(format_count(b"12a").unwrap_err(), "format: not a decimal number: \"12a\"");
        assert_eq!(format_count(b"").unwrap_err(), "format: not a decimal number: \"\"");
    }
}
