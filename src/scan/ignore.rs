//! `--ignore FILE`: findings accepted as known false positives, one fingerprint a line (as every
//! report prints them), `#` comments and blank lines allowed. A file that does not parse is an
//! error naming its line, never echoing it: a hurried edit may have pasted a credential there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Why an ignore file was refused.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// The file could not be read.
    #[error("cannot read the ignore file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is neither a fingerprint, a comment nor blank.
    #[error(
        "{}, line {line}: not a finding fingerprint (16 hex digits, as scan prints them; `#` \
         starts a comment); the line is not shown",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// The fingerprints of an ignore file.
#[derive(Debug, Default)]
pub struct Ignore {
    fingerprints: HashSet<String>,
    source: String,
}

impl Ignore {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Ignore, IgnoreError> {
        let text = std::fs::read(path).map_err(|source| IgnoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &[u8], path: &Path) -> Result<Ignore, IgnoreError> {
        let mut fingerprints = HashSet::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let content = line.split(|&b| b == b'#').next().unwrap_or_default();
            let fingerprint = content.trim_ascii();
            if fingerprint.is_empty() {
                continue;
            }
            let valid = fingerprint.len() == 16 && fingerprint.iter().all(u8::is_ascii_hexdigit);
            if !valid {
                return Err(IgnoreError::Malformed {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            }
            fingerprints.insert(String::from_utf8_lossy(fingerprint).to_ascii_lowercase());
        }
        Ok(Ignore {
            fingerprints,
            source: path.display().to_string(),
        })
    }

    /// True when this file accepts the finding with `fingerprint`.
    pub fn accepts(&self, fingerprint: &str) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// The note about fingerprints that matched no finding (stale lines to remove), given the
    /// fingerprints that did.
    pub fn stale_note(&self, used: &HashSet<String>) -> Option<String> {
        let stale = self.fingerprints.len() - used.len();
        (stale > 0).then(|| {
            format!(
                "{stale} fingerprint(s) in {} matched no finding: remove them if the findings are gone",
                self.source
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_allowed_and_a_bad_line_is_named_not_shown() {
        let path = Path::new("scan-ignore");
        let ok = Ignore::parse(
            b"# accepted\n\n0123456789abcdef  # docs example\r\n  FEDCBA9876543210\n",
            path,
        )
        .unwrap();
        assert!(ok.fingerprints.contains("0123456789abcdef"));
        assert!(ok.fingerprints.contains("fedcba9876543210"));
        let err = Ignore::parse(b"0123456789abcdef\nAKIAZQ3HOSTILE7INPUT\n", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scan-ignore, line 2: not a finding fingerprint"),
            "{err}"
        );
        assert!(!err.contains("AKIA"), "{err}");
    }
}
