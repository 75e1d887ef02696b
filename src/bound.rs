//! Bounds on what others choose. Text a peer picked (a secret id, a registry host, a session id,
//! a path, a server's error) is shown through [`quote`] wherever it is printed: in a log line,
//! an audit record, a metric label or a status message, so no peer can grow them at will or
//! break a line.

use std::fmt::{self, Write};

/// Characters of a peer's text shown before it is cut: at least the longest secret id the
/// provider accepts, so every id that can be served is shown whole.
pub const SHOWN: usize = 512;

/// A peer's text as it may be printed: at most [`SHOWN`] characters, control characters escaped
/// (`\n`, `\u{0}`), and, when cut, `…` and the whole length in bytes. Serialized (audit records)
/// as the same text.
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

/// `text` as it may be printed; see [`Quoted`].
pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, c) in self.0.chars().enumerate() {
            if n == SHOWN {
                return write!(f, "…[{} bytes]", self.0.len());
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl serde::Serialize for Quoted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Serializes a peer's text as [`quote`] shows it: for `#[serde(serialize_with)]` on fields
/// that hold one.
pub fn serialize_quoted<S: serde::Serializer>(
    text: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => serializer.serialize_some(&quote(text)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_shown_whole_and_on_one_line() {
        assert_eq!(quote("aws-role-arn").to_string(), "aws-role-arn");
        assert_eq!(quote("a\nb\0c").to_string(), "a\\nb\\u{0}c");
        assert_eq!(quote("é").to_string(), "é");
        let longest = "i".repeat(SHOWN);
        assert_eq!(quote(&longest).to_string(), longest);
    }

    #[test]
    fn long_text_is_cut_and_says_how_long_it_was() {
        let huge = "x".repeat(1 << 20);
        let shown = quote(&huge).to_string();
        assert_eq!(shown, format!("{}…[1048576 bytes]", "x".repeat(SHOWN)));
        let escaped = "\n".repeat(1 << 20);
        assert!(quote(&escaped).to_string().len() < 4 * SHOWN);
        assert_eq!(serde_json::to_string(&quote("a\"b")).unwrap(), r#""a\"b""#);
    }
}
