//! Bounds on what others choose. Text a peer picked (a secret id, a registry host, a session id,
//! a path, a server's error) is shown through [`quote`] wherever it is printed: in a log line,
//! an audit record, a metric label or a status message, so no peer can grow them at will or
//! break a line. Every duration an operator gives (flags, config keys, `ttl`) is read by
//! [`duration`], which refuses one past [`MAX_DURATION`]; [`clamp`] holds any other wait to it
//! where it is added to a clock.

use std::fmt::{self, Write};
use std::time::Duration;

/// Longest duration any flag, config key or `ttl` takes: a week. Longer than any build, and than
/// any lifetime the helper deals in (STS credentials and ECR passwords last at most 12 hours),
/// and far from where adding it to a clock could overflow (`Instant + Duration` panics there).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Reads a duration such as `30s`, `5m` or `1h30m`, at most [`MAX_DURATION`]: the one reader of
/// every duration the helper is given, so each refusal is worded alike. The caller names the
/// flag or key.
pub fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d > MAX_DURATION => Err(format!(
            "longer than the longest accepted, {}",
            humantime::format_duration(MAX_DURATION)
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write e.g. 30s, 2m or 1m30s)")),
    }
}

/// `wait`, held to [`MAX_DURATION`]: what a duration from anywhere becomes before code that adds
/// it to a clock without checking (hyper's timers) sees it.
pub fn clamp(wait: Duration) -> Duration {
    wait.min(MAX_DURATION)
}

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

impl Quoted<'_> {
    /// Writes the text cut at [`SHOWN`] characters, escaping control characters and those
    /// `also` names.
    fn write(&self, f: &mut fmt::Formatter<'_>, also: &[char]) -> fmt::Result {
        for (n, c) in self.0.chars().enumerate() {
            if n == SHOWN {
                return write!(f, "…[{} bytes]", self.0.len());
            }
            if c.is_control() || also.contains(&c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, &[])
    }
}

/// In double quotes, as a string's own `Debug` shows it (and as log lines have always shown ids,
/// hosts and sessions), with quotes and backslashes escaped too.
impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        self.write(f, &['"', '\\'])?;
        f.write_char('"')
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
    fn durations_are_read_up_to_the_bound_and_clamped_to_it() {
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("7days"), Ok(MAX_DURATION));
        for long in ["8days", "18446744073709551615s"] {
            let e = duration(long).unwrap_err();
            assert!(e.contains("longer than the longest accepted, 7days"), "{e}");
        }
        assert!(duration("soon").unwrap_err().contains("write e.g. 30s"));
        let far = Duration::from_secs(u64::MAX);
        assert_eq!(clamp(far), MAX_DURATION);
        assert_eq!(clamp(Duration::from_secs(5)), Duration::from_secs(5));
        // What hyper does with it: no overflow.
        let _ = std::time::Instant::now() + clamp(far);
    }

    #[test]
    fn short_text_is_shown_whole_and_on_one_line() {
        assert_eq!(quote("aws-role-arn").to_string(), "aws-role-arn");
        assert_eq!(quote("a\nb\0c").to_string(), "a\\nb\\u{0}c");
        assert_eq!(quote("é").to_string(), "é");
        let longest = "i".repeat(SHOWN);
        assert_eq!(quote(&longest).to_string(), longest);
    }

    #[test]
    fn in_log_fields_text_is_quoted_as_a_string_is() {
        assert_eq!(format!("{:?}", quote("aws-role-arn")), "\"aws-role-arn\"");
        assert_eq!(
            format!("{:?}", quote("a\"b\\c\n")),
            format!("{:?}", "a\"b\\c\n")
        );
        let huge = "y".repeat(SHOWN + 1);
        assert!(format!("{:?}", quote(&huge)).ends_with(&format!("…[{} bytes]\"", SHOWN + 1)));
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
