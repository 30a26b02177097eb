//! Bounded quoting of config and client text in log lines and error
//! messages. Control characters are escaped, so a value cannot forge a
//! log line. Long values are cut, so one value cannot fill a log.

use std::fmt;

/// The number of characters of a value shown before it is cut.
pub const MAX_SHOWN_CHARS: usize = 64;

/// Displays a string quoted and escaped like `{:?}`; past
/// [`MAX_SHOWN_CHARS`] characters it is cut with `...` and the full length
/// in bytes, e.g. `"pppp"... (52428800 bytes)`.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

/// Wraps `text` for bounded display.
pub fn quoted(text: &str) -> Quoted<'_> {
    Quoted(text)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(MAX_SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Cuts `text` after `max_bytes` bytes (at a character boundary) and
/// appends how much was left out; shorter text is returned unchanged.
/// For messages built by this program that may quote many values.
pub fn truncated(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..cut], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quoted("blue").to_string(), "\"blue\"");
        assert_eq!(quoted("a\nb").to_string(), "\"a\\nb\"");
    }

    #[test]
    fn long_values_are_cut_with_their_length() {
        let long = "p".repeat(1000);
        let shown = quoted(&long).to_string();
        assert_eq!(
            shown,
            format!("\"{}\"... (1000 bytes)", "p".repeat(MAX_SHOWN_CHARS))
        );
    }

    #[test]
    fn cuts_respect_character_boundaries() {
        let text = "é".repeat(100);
        assert!(quoted(&text).to_string().ends_with("... (200 bytes)"));
        assert_eq!(truncated(&text, 3), "é... (200 bytes in all)");
        assert_eq!(truncated("short", 10), "short");
    }
}
