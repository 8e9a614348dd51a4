//! The first stage of the validate → compute → format pipeline example:
//! accepts a decimal unsigned integer (surrounding ASCII whitespace ignored)
//! not larger than 10000000 and passes it on, trimmed and otherwise unchanged.

/// The largest number accepted.
pub const LIMIT: u64 = 10_000_000;

struct Validate;

impl wpool_guest::Kernel for Validate {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        validate(&input).map(<[u8]>::to_vec)
    }
}

wpool_guest::export!(Validate);

/// The trimmed number, or why it is refused.
pub fn validate(input: &[u8]) -> Result<&[u8], String> {
    let digits = input.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("validate: not a number: {}", wpool_guest::quote(input, 40)));
    }
    // Only ASCII digits: valid UTF-8, and a parse error is an overflow.
    let text = std::str::from_utf8(digits).unwrap_or_default();
    if text.parse::<u64>().map_or(true, |n| n > LIMIT) {
        let shown = if text.len() > 40 { format!("{}...", &text[..40]) } else { text.to_string() };
        return Err(format!("validate: {shown} is larger than {LIMIT}"));
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_small_numbers_trimmed() {
        assert_eq!(validate(b" 42\n").unwrap(), b"42");
        assert_eq!(validate(b"007").unwrap(), b"007");
        assert_eq!(validate(b"0").unwrap(), b"0");
        assert_eq!(validate(b"10000000").unwrap(), b"10000000");
    }

    #[test]
    fn refuses_others() {
        assert_eq!(validate(b"10000001").unwrap_err(), "validate: 10000001 is larger than 10000000");
        assert_eq!(
            validate(b"99999999999999999999999").unwrap_err(),
            "validate: 99999999999999999999999 is larger than 10000000"
        );
        assert_eq!(validate(b"-1").unwrap_err(), "validate: not a number: \"-1\"");
        assert_eq!(validate(b"").unwrap_err(), "validate: not a number: \"\"");
        assert_eq!(validate(b"1 2").unwrap_err(), "validate: not a number: \"1 2\"");
        assert_eq!(validate(b"+5").unwrap_err(), "validate: not a number: \"+5\"");
    }
}
