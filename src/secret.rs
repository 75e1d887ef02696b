//! The one type a secret value lives in, from the moment it is read until it is sent.

use std::fmt;

use zeroize::Zeroizing;

/// BuildKit's own ceiling for one secret (`MaxSecretSize` in its secrets provider): 500 KiB.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// A secret value: zeroed when dropped, printed as `[redacted]` by `Debug` and `Display`, so a
/// stray `{:?}` in a log line or an error cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes ownership of the bytes; they are wiped when the value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw bytes, for the one place that sends them (the gRPC response) and for hashing.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes; safe to log.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the value holds no bytes (BuildKit would mount an empty file: refused upstream).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let v = SecretValue::from("hunter2-very-secret".to_string());
        assert_eq!(format!("{v:?}"), "[redacted]");
        assert_eq!(format!("{v}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&v)), "Some([redacted])");
        assert_eq!(v.expose(), b"hunter2-very-secret");
        assert_eq!(v.len(), 19);
    }
}
