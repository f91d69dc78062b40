//! Shared text helpers for the cgroup and PSI file formats: one integer per file, or one
//! `key value` pair per line. Nothing here panics or allocates more than an error excerpt.

use crate::error::{ParseError, excerpt};

/// A single-integer file (`memory.current`, `memory.usage_in_bytes`, …): the integer, with
/// surrounding whitespace (the trailing newline) ignored.
pub(crate) fn parse_u64_file(text: &str) -> Result<u64, ParseError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    trimmed.parse::<u64>().map_err(|_| ParseError::NotAnInteger { found: excerpt(trimmed) })
}

/// The value of the first `key value` line whose key is exactly `key`, or `None` when no
/// line has that key. Lines with other keys are skipped whatever they hold, because the
/// kernel adds keys (even in the middle of `memory.stat`) between releases.
pub(crate) fn keyed_u64(text: &str, key: &'static str) -> Result<Option<u64>, ParseError> {
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        if fields.next() != Some(key) {
            continue;
        }
        let value = fields.next().unwrap_or("");
        return match (value.parse::<u64>(), fields.next()) {
            (Ok(value), None) => Ok(Some(value)),
            _ => Err(ParseError::BadValue { key, found: excerpt(line.trim()) }),
        };
    }
    Ok(None)
}

/// Like [`keyed_u64`], but the key must be present.
pub(crate) fn required_u64(text: &str, key: &'static str) -> Result<u64, ParseError> {
    keyed_u64(text, key)?.ok_or(ParseError::MissingKey { key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_integer_files() {
        assert_eq!(parse_u64_file("4349952\n"), Ok(4_349_952));
        assert_eq!(parse_u64_file("  7 \n"), Ok(7));
        assert_eq!(parse_u64_file("\n"), Err(ParseError::Empty));
        assert!(matches!(parse_u64_file("-1\n"), Err(ParseError::NotAnInteger { .. })));
        assert!(matches!(parse_u64_file("1 2\n"), Err(ParseError::NotAnInteger { .. })));
        assert!(matches!(parse_u64_file("18446744073709551616"), Err(ParseError::NotAnInteger { .. })));
    }

    #[test]
    fn keyed_values() {
        let text = "anon 10\nfile 20\nweird line here\nfile_mapped 5\n";
        assert_eq!(keyed_u64(text, "file"), Ok(Some(20)));
        assert_eq!(keyed_u64(text, "file_mapped"), Ok(Some(5)));
        assert_eq!(keyed_u64(text, "sock"), Ok(None));
        assert_eq!(required_u64(text, "sock"), Err(ParseError::MissingKey { key: "sock" }));
        assert!(matches!(keyed_u64("anon x\n", "anon"), Err(ParseError::BadValue { key: "anon", .. })));
        assert!(matches!(keyed_u64("anon 1 2\n", "anon"), Err(ParseError::BadValue { .. })));
        assert!(matches!(keyed_u64("anon\n", "anon"), Err(ParseError::BadValue { .. })));
    }

    #[test]
    fn long_bad_input_is_quoted_short() {
        let long = "9".repeat(10_000);
        let Err(ParseError::NotAnInteger { found }) = parse_u64_file(&long) else {
            panic!("a 10 000-digit number is not a u64");
        };
        assert!(found.chars().count() <= crate::error::EXCERPT_CHARS_MAX + 1);
    }
}
