//! Reads a service-account token's claims without verifying its signature.
//!
//! The helper never trusts these claims for authorization: STS verifies the signature against
//! the cluster's OIDC issuer. The checks here only catch, before a build does, the mistakes that
//! would make STS refuse the token: not a JWT, expired, not yet valid, wrong audience.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Clock skew tolerated for `nbf` and `iat`, as most JWT validators allow.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The last second RFC 3339 can write, 9999-12-31T23:59:59Z. A time claim past it is no time
/// any clock reaches, and adding to it or formatting it would overflow: such a token is refused
/// as malformed, so every later step can trust its times.
pub const MAX_TIME: u64 = 253_402_300_799;

/// The claims the helper looks at; the rest of the payload is kept for display.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Issuer: the cluster's OIDC provider URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject: `system:serviceaccount:NAMESPACE:NAME` for Kubernetes tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience: a string or a list of strings.
    #[serde(default, skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not-before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued-at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Everything else (e.g. the `kubernetes.io` claims), kept as it came.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The `aud` claim, which JWT allows as one string or a list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    /// No audience claim.
    #[default]
    None,
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// True when the claim is absent or an empty list.
    pub fn is_empty(&self) -> bool {
        match self {
            Audience::None => true,
            Audience::One(_) => false,
            Audience::Many(v) => v.is_empty(),
        }
    }

    /// True when `aud` names `expected`.
    pub fn contains(&self, expected: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == expected,
            Audience::Many(v) => v.iter().any(|a| a == expected),
        }
    }

    /// The audiences as a list, for messages.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::None => Vec::new(),
            Audience::One(a) => vec![a.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

/// Why a token cannot be used. Messages never include the token itself.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    /// The bytes are not a compact JWS (`header.payload.signature`).
    #[error("is not a JWT: {0}")]
    Malformed(String),
    /// `exp` is in the past.
    #[error("expired at {} ({} ago)", rfc3339(*.exp), human(*.ago))]
    Expired {
        /// Expiry time, seconds since the epoch.
        exp: u64,
        /// How long ago it expired.
        ago: Duration,
    },
    /// `nbf` is in the future.
    #[error("is not valid before {} (in {})", rfc3339(*.nbf), human(*.wait))]
    NotYetValid {
        /// Not-before time, seconds since the epoch.
        nbf: u64,
        /// How long until it becomes valid.
        wait: Duration,
    },
    /// `aud` does not name the audience STS expects.
    #[error("has audience {found:?}, expected {expected:?}")]
    WrongAudience {
        /// The audiences in the token.
        found: Vec<String>,
        /// The audience the helper was told to expect.
        expected: String,
    },
}

/// What the validator requires of a token.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// The audience `aud` must contain (IRSA: `sts.amazonaws.com`).
    pub audience: String,
    /// A token with less lifetime than this left is still served, with a warning.
    pub expiry_margin: Duration,
}

/// A token that passed validation, with what the caller needs to report on it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The decoded claims.
    pub claims: Claims,
    /// Lifetime left at the time of the check.
    pub remaining: Duration,
    /// True when `remaining` is under the configured margin.
    pub expiring_soon: bool,
}

/// Decodes the payload of a compact JWT without checking anything but its shape.
pub fn decode(token: &[u8]) -> Result<Claims, TokenError> {
    let text = std::str::from_utf8(token)
        .map_err(|_| TokenError::Malformed("it is not UTF-8 text".into()))?
        .trim();
    if text.is_empty() {
        return Err(TokenError::Malformed("it is empty".into()));
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 3 {
        let n = parts.len();
        let noun = if n == 1 { "part" } else { "parts" };
        return Err(TokenError::Malformed(format!(
            "it has {n} dot-separated {noun}, a JWT has 3"
        )));
    }
    for (name, part) in ["header", "payload", "signature"].iter().zip(&parts) {
        if part.is_empty() {
            return Err(TokenError::Malformed(format!("its {name} is empty")));
        }
    }
    let decode_part = |name: &str, part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed(format!("its {name} is not base64url")))
    };
    let header = decode_part("header", parts[0])?;
    serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| TokenError::Malformed("its header is not a JSON object".into()))?;
    decode_part("signature", parts[2])?;
    let payload = decode_part("payload", parts[1])?;
    let payload: serde_json::Value = serde_json::from_slice(&payload)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| TokenError::Malformed("its claims are not a JSON object".into()))?;
    for name in ["exp", "nbf", "iat"] {
        match payload.get(name) {
            None | Some(serde_json::Value::Null) if name != "exp" => {}
            Some(time) => time_claim(name, time).map_err(TokenError::Malformed)?,
            None => return Err(TokenError::Malformed("it has no exp claim".into())),
        }
    }
    serde_json::from_value(payload).map_err(|_| {
        TokenError::Malformed(
            "its claims do not have the types JWT gives them (iss and sub strings, aud a string \
             or a list of strings)"
                .into(),
        )
    })
}

/// Why the time claim `name` (`exp`, `nbf`, `iat`) is no time the helper can use: whole
/// seconds since 1970, up to [`MAX_TIME`].
fn time_claim(name: &str, time: &serde_json::Value) -> Result<(), String> {
    let shown = || crate::bound::quote(&time.to_string()).to_string();
    match time {
        serde_json::Value::Number(n) if n.as_u64().is_some_and(|t| t > MAX_TIME) => Err(format!(
            "its {name} claim is after {}, a time no clock reaches",
            rfc3339(MAX_TIME)
        )),
        serde_json::Value::Number(n) if n.as_u64().is_some() => Ok(()),
        serde_json::Value::Number(n) if n.as_i64().is_some() => Err(format!(
            "its {name} claim is {}, a negative time (before 1970)",
            shown()
        )),
        serde_json::Value::Number(_) => Err(format!(
            "its {name} claim is {}, not a whole number of seconds",
            shown()
        )),
        _ => Err(format!("its {name} claim is not a number of seconds")),
    }
}

/// Decodes and checks a token against `want` at time `now`.
pub fn check(token: &[u8], want: &Expectations, now: SystemTime) -> Result<Checked, TokenError> {
    let claims = decode(token)?;
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if claims.exp <= now_s {
        return Err(TokenError::Expired {
            exp: claims.exp,
            ago: Duration::from_secs(now_s - claims.exp),
        });
    }
    if let Some(nbf) = claims.nbf {
        if nbf > now_s + CLOCK_SKEW.as_secs() {
            return Err(TokenError::NotYetValid {
                nbf,
                wait: Duration::from_secs(nbf - now_s),
            });
        }
    }
    if !claims.aud.contains(&want.audience) {
        return Err(TokenError::WrongAudience {
            found: claims.aud.to_vec(),
            expected: want.audience.clone(),
        });
    }
    let remaining = Duration::from_secs(claims.exp - now_s);
    Ok(Checked {
        expiring_soon: remaining < want.expiry_margin,
        remaining,
        claims,
    })
}

/// Encodes claims as an unsigned-looking JWT with the given signature text (for the mock).
pub fn encode_unverifiable(claims: &Claims, kid: &str, signature: &str) -> String {
    let header = serde_json::json!({ "alg": "RS256", "kid": kid, "typ": "JWT" });
    let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    let payload = serde_json::to_vec(claims).expect("claims serialize");
    format!(
        "{}.{}.{}",
        enc(header.to_string().as_bytes()),
        enc(&payload),
        enc(signature.as_bytes())
    )
}

/// Formats seconds since the epoch as RFC 3339 (UTC); a time past [`MAX_TIME`], which RFC 3339
/// cannot write, reads as such rather than panicking.
pub fn rfc3339(secs: u64) -> String {
    if secs > MAX_TIME {
        return format!("after {}", rfc3339(MAX_TIME));
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Formats a duration to the second, e.g. `4h 12m 3s`, `1 day`, `2 days 3h`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    match days {
        0 => {}
        1 => parts.push("1 day".to_string()),
        n => parts.push(format!("{n} days")),
    }
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            parts.push(format!("{n}{unit}"));
        }
    }
    if parts.is_empty() {
        return "0s".into();
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64, nbf: Option<u64>, aud: Audience) -> Claims {
        Claims {
            iss: Some("https://oidc.example".into()),
            sub: Some("system:serviceaccount:ci:builder".into()),
            aud,
            exp,
            nbf,
            iat: nbf,
            other: Default::default(),
        }
    }

    fn want() -> Expectations {
        Expectations {
            audience: "sts.amazonaws.com".into(),
            expiry_margin: Duration::from_secs(300),
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_valid_token_passes_with_its_remaining_lifetime() {
        let t = encode_unverifiable(
            &claims(
                NOW + 3600,
                Some(NOW - 10),
                Audience::One("sts.amazonaws.com".into()),
            ),
            "k",
            "sig",
        );
        let c = check(t.as_bytes(), &want(), at(NOW)).unwrap();
        assert_eq!(c.remaining, Duration::from_secs(3600));
        assert!(!c.expiring_soon);
        assert_eq!(
            c.claims.sub.as_deref(),
            Some("system:serviceaccount:ci:builder")
        );
    }

    #[test]
    fn audience_lists_and_near_expiry_are_reported() {
        let aud = Audience::Many(vec!["x".into(), "sts.amazonaws.com".into()]);
        let t = encode_unverifiable(&claims(NOW + 60, None, aud), "k", "sig");
        let c = check(t.as_bytes(), &want(), at(NOW)).unwrap();
        assert!(c.expiring_soon);
    }

    #[test]
    fn expired_not_yet_valid_and_wrong_audience_are_refused() {
        let sts = || Audience::One("sts.amazonaws.com".into());
        let expired = encode_unverifiable(&claims(NOW - 5, None, sts()), "k", "s");
        let err = check(expired.as_bytes(), &want(), at(NOW)).unwrap_err();
        assert!(matches!(err, TokenError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("2027-01-15T07:59:55Z"), "{err}");

        let early = encode_unverifiable(&claims(NOW + 9000, Some(NOW + 600), sts()), "k", "s");
        let err = check(early.as_bytes(), &want(), at(NOW)).unwrap_err();
        assert!(matches!(err, TokenError::NotYetValid { .. }), "{err}");

        let other = encode_unverifiable(
            &claims(NOW + 900, None, Audience::One("api".into())),
            "k",
            "s",
        );
        let err = check(other.as_bytes(), &want(), at(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "has audience [\"api\"], expected \"sts.amazonaws.com\""
        );
    }

    #[test]
    fn malformed_tokens_get_a_precise_reason_and_never_echo_the_input() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"  \n", "empty"),
            (b"\xff\xfe.a.b", "not UTF-8"),
            (b"only.two", "2 dot-separated parts"),
            (b"one", "1 dot-separated part,"),
            (b"a..c", "payload is empty"),
            (b"!!!.eyJ9.c2ln", "header is not base64url"),
            (
                b"eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
                "claims are not a JSON object",
            ),
            (b"eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "it has no exp claim"),
            (b"bnVsbA.e30.c2ln", "header is not a JSON object"),
        ];
        for (input, reason) in cases {
            let err = decode(input).unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
        let err = decode(b"eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2VjcmV0LXNpZw").unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0LXNpZw"));
    }

    #[test]
    fn times_past_what_rfc3339_can_write_are_malformed_and_never_panic() {
        let sts = || Audience::One("sts.amazonaws.com".into());
        let far = [MAX_TIME + 1, u64::MAX - 1, u64::MAX];
        for t in far {
            let mut c = claims(t, None, sts());
            let err = check(encode(&c).as_bytes(), &want(), at(NOW)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "is not a JWT: its exp claim is after 9999-12-31T23:59:59Z, a time no clock reaches"
            );
            c.exp = NOW + 3600;
            c.nbf = Some(t);
            let err = check(encode(&c).as_bytes(), &want(), at(NOW)).unwrap_err();
            assert!(err.to_string().contains("its nbf claim is after"), "{err}");
            c.nbf = None;
            c.iat = Some(t);
            let err = check(encode(&c).as_bytes(), &want(), at(NOW)).unwrap_err();
            assert!(err.to_string().contains("its iat claim is after"), "{err}");
            assert_eq!(rfc3339(t), "after 9999-12-31T23:59:59Z");
        }
        let last = encode(&claims(MAX_TIME, Some(MAX_TIME), sts()));
        let err = check(last.as_bytes(), &want(), at(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "is not valid before 9999-12-31T23:59:59Z (in {})",
                human(Duration::from_secs(MAX_TIME - NOW))
            )
        );
    }

    #[test]
    fn each_bad_time_claim_is_named_with_what_is_wrong() {
        let payload = |claims: &str| {
            let enc = |v: &str| URL_SAFE_NO_PAD.encode(v);
            format!("{}.{}.{}", enc("{}"), enc(claims), enc("sig"))
        };
        let exp = NOW + 3600;
        let cases = [
            (
                format!(r#"{{"exp":{exp},"nbf":1.5}}"#),
                "its nbf claim is 1.5, not a whole number of seconds",
            ),
            (
                format!(r#"{{"exp":{exp},"iat":-5}}"#),
                "its iat claim is -5, a negative time (before 1970)",
            ),
            (
                format!(r#"{{"exp":{exp},"nbf":"soon"}}"#),
                "its nbf claim is not a number of seconds",
            ),
            (
                r#"{"exp":1.25}"#.to_string(),
                "its exp claim is 1.25, not a whole number of seconds",
            ),
            (
                r#"{"exp":-1}"#.to_string(),
                "its exp claim is -1, a negative time",
            ),
            (
                r#"{"exp":null}"#.to_string(),
                "its exp claim is not a number of seconds",
            ),
            (r#"{"nbf":1}"#.to_string(), "it has no exp claim"),
            (
                format!(r#"{{"exp":{exp},"aud":7}}"#),
                "aud a string or a list of strings",
            ),
        ];
        for (claims, want) in cases {
            let err = decode(payload(&claims).as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{claims}: {err}");
        }
        let fine = payload(&format!(r#"{{"exp":{exp},"nbf":null,"iat":{NOW}}}"#));
        assert_eq!(decode(fine.as_bytes()).unwrap().iat, Some(NOW));
    }

    fn encode(c: &Claims) -> String {
        encode_unverifiable(c, "k", "s")
    }

    #[test]
    fn durations_read_as_words() {
        let d = |s| human(Duration::from_secs(s));
        assert_eq!(d(0), "0s");
        assert_eq!(d(59), "59s");
        assert_eq!(d(3600 + 12 * 60 + 3), "1h 12m 3s");
        assert_eq!(d(86400), "1 day");
        assert_eq!(d(2 * 86400 + 3 * 3600), "2 days 3h");
        assert_eq!(d(86400 + 61), "1 day 1m 1s");
    }
}
