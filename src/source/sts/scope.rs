//! What an STS exchange asks for, checked locally against STS's documented limits, so a bad flag
//! fails at start-up with a precise message rather than a `ValidationError` in the middle of a
//! build.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::arn::{ArnError, ArnProblem};
use crate::source::jwt::Claims;

/// STS's bounds on `DurationSeconds`.
pub const DURATION_RANGE: std::ops::RangeInclusive<u64> = 900..=43_200;
/// STS's limit on `PolicyArns`.
pub const MAX_POLICY_ARNS: usize = 10;
/// STS's limit on the inline `Policy`, in characters.
pub const MAX_POLICY_CHARS: usize = 2048;
/// The session name used when none is given: always valid, distinct per exchange in CloudTrail.
pub const DEFAULT_SESSION_NAME: &str = "irsa-secrets-{unix_time}";

/// A scope parameter STS would refuse, or a session name a token cannot fill. All are fatal for
/// the flags as given: the text says which flag to change.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// `--duration` is neither seconds nor a humantime duration.
    #[error("{text:?}: {err}")]
    DurationSyntax {
        /// The flag's value.
        text: String,
        /// Why humantime refused it.
        err: humantime::DurationError,
    },
    /// `--duration` is outside STS's bounds.
    #[error(
        "{0:?} is outside STS's range of 900 to 43200 seconds (15m to 12h); it must also not \
         exceed the role's maximum session duration"
    )]
    DurationRange(String),
    /// The session policy is empty or longer than STS accepts (its length in characters).
    #[error(
        "is {0} characters; STS accepts 1 to {MAX_POLICY_CHARS} (remove whitespace, or move \
         statements into a managed policy passed with --policy-arn)"
    )]
    PolicySize(usize),
    /// The session policy has a character STS refuses, at a position (in characters).
    #[error(
        "has character {c:?} at position {at}; STS accepts only tab, newline, carriage return \
         and U+0020 to U+00FF"
    )]
    PolicyChar {
        /// The character.
        c: char,
        /// Its position.
        at: usize,
    },
    /// The session policy is not JSON.
    #[error("is not valid JSON: {0}")]
    PolicyJson(serde_json::Error),
    /// More `--policy-arn` flags than STS accepts (how many were given).
    #[error("{0} --policy-arn flags given; STS accepts at most {MAX_POLICY_ARNS}")]
    PolicyArns(usize),
    /// The session name template has a character STS refuses.
    #[error("session name {template:?} has {c:?}; STS accepts letters, digits and _+=,.@-")]
    NameChar {
        /// The template as given.
        template: String,
        /// The character.
        c: char,
    },
    /// The session name template opens a placeholder and never closes it.
    #[error("session name {0:?} has an unclosed {{")]
    NameUnclosed(String),
    /// The session name template names a placeholder there is no value for.
    #[error(
        "session name {template:?} has unknown placeholder {{{placeholder}}}; use {{pod}}, \
         {{namespace}}, {{service_account}} or {{unix_time}}"
    )]
    NamePlaceholder {
        /// The template as given.
        template: String,
        /// The placeholder's name.
        placeholder: String,
    },
    /// The token lacks a claim a placeholder needs (`pod.name`, `namespace`, ...).
    #[error("the token has no kubernetes.io.{claim} claim for the session name {template}")]
    NameClaim {
        /// The claim's path under `kubernetes.io`.
        claim: String,
        /// The template.
        template: SessionName,
    },
    /// The rendered session name is outside STS's 2..64 characters of `[\w+=,.@-]`.
    #[error(
        "the session name {name:?} (from {template}) must be 2 to 64 letters, digits or \
         _+=,.@- characters; shorten --role-session-name"
    )]
    NameInvalid {
        /// The name as rendered.
        name: String,
        /// The template.
        template: SessionName,
    },
}

/// The parameters of one kind of exchange; the credentials cache belongs to one scope.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The role to assume.
    pub role_arn: String,
    /// Inline session policy (already checked), intersected with the role's policies.
    pub policy: Option<String>,
    /// Managed session policies (already checked).
    pub policy_arns: Vec<String>,
    /// Requested credential lifetime.
    pub duration: Duration,
    /// The role session name, rendered per exchange.
    pub session_name: SessionName,
}

/// Parses `--duration`: plain seconds (`900`) or a humantime duration (`30m`), within STS's
/// 900..43200 s.
pub fn parse_duration(s: &str) -> Result<Duration, ScopeError> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|err| ScopeError::DurationSyntax {
            text: s.to_string(),
            err,
        })?,
    };
    if d.subsec_nanos() != 0 || !DURATION_RANGE.contains(&d.as_secs()) {
        return Err(ScopeError::DurationRange(s.to_string()));
    }
    Ok(d)
}

/// Checks an inline session policy as STS would: 1..2048 characters from `\t \n \r` and
/// U+0020..U+00FF, and (our addition) valid JSON, so a typo is caught before any build.
pub fn check_policy(text: &str) -> Result<(), ScopeError> {
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_POLICY_CHARS {
        return Err(ScopeError::PolicySize(chars));
    }
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{ff}');
    if let Some((at, c)) = text.chars().enumerate().find(|(_, c)| !allowed(*c)) {
        return Err(ScopeError::PolicyChar { c, at });
    }
    serde_json::from_str::<serde_json::Value>(text)
        .map(drop)
        .map_err(ScopeError::PolicyJson)
}

/// Checks `arn:<partition>:iam::<12 digits or aws>:policy/<path/><name>`, for `--policy-arn`.
pub fn parse_policy_arn(arn: &str) -> Result<String, ArnError> {
    let fail = |problem| ArnError::Policy {
        arn: arn.to_string(),
        problem,
    };
    let (account, resource) = crate::source::arn::split_iam(arn).map_err(fail)?;
    if account != "aws" && !crate::source::arn::is_account_id(account) {
        return Err(fail(ArnProblem::AccountOrAws));
    }
    if arn.len() > 2048 {
        return Err(fail(ArnProblem::Name("policy")));
    }
    crate::source::arn::check_resource(resource, "policy", 2048).map_err(fail)?;
    Ok(arn.to_string())
}

/// Checks the number of `--policy-arn` flags.
pub fn check_policy_arns(arns: &[String]) -> Result<(), ScopeError> {
    if arns.len() > MAX_POLICY_ARNS {
        return Err(ScopeError::PolicyArns(arns.len()));
    }
    Ok(())
}

/// One piece of a session name template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `{pod}`: the pod name from the token's `kubernetes.io` claims.
    Pod,
    /// `{namespace}`: the service account's namespace.
    Namespace,
    /// `{service_account}`: the service account's name.
    ServiceAccount,
    /// `{unix_time}`: seconds since the epoch at the exchange.
    UnixTime,
}

/// A `--role-session-name` template. The name shows in CloudTrail as the session of every call
/// made with the credentials, so placeholders let it say which pod asked. Placeholders:
/// `{pod}`, `{namespace}`, `{service_account}` (from the token's `kubernetes.io` claims) and
/// `{unix_time}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName(Vec<Piece>);

fn session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

impl FromStr for SessionName {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, ScopeError> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (text, tail) = rest.split_at(rest.find('{').unwrap_or(rest.len()));
            if let Some(c) = text.chars().find(|c| !session_char(*c)) {
                return Err(ScopeError::NameChar {
                    template: s.to_string(),
                    c,
                });
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(text.to_string()));
            }
            if tail.is_empty() {
                break;
            }
            let close = tail
                .find('}')
                .ok_or_else(|| ScopeError::NameUnclosed(s.to_string()))?;
            pieces.push(match &tail[1..close] {
                "pod" => Piece::Pod,
                "namespace" => Piece::Namespace,
                "service_account" => Piece::ServiceAccount,
                "unix_time" => Piece::UnixTime,
                other => {
                    return Err(ScopeError::NamePlaceholder {
                        template: s.to_string(),
                        placeholder: other.to_string(),
                    })
                }
            });
            rest = &tail[close + 1..];
        }
        Ok(Self(pieces))
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => f.write_str(t)?,
                Piece::Pod => f.write_str("{pod}")?,
                Piece::Namespace => f.write_str("{namespace}")?,
                Piece::ServiceAccount => f.write_str("{service_account}")?,
                Piece::UnixTime => f.write_str("{unix_time}")?,
            }
        }
        Ok(())
    }
}

impl SessionName {
    /// The name for an exchange at `now` with a token carrying `claims`, checked against STS's
    /// 2..64 characters of `[\w+=,.@-]`.
    pub fn render(&self, claims: &Claims, now: SystemTime) -> Result<String, ScopeError> {
        let k8s = |path: &[&str]| -> Result<String, ScopeError> {
            let mut v = claims.other.get("kubernetes.io");
            for key in path {
                v = v.and_then(|v| v.get(key));
            }
            v.and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| ScopeError::NameClaim {
                    claim: path.join("."),
                    template: self.clone(),
                })
        };
        let mut name = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => name.push_str(t),
                Piece::Pod => name.push_str(&k8s(&["pod", "name"])?),
                Piece::Namespace => name.push_str(&k8s(&["namespace"])?),
                Piece::ServiceAccount => name.push_str(&k8s(&["serviceaccount", "name"])?),
                Piece::UnixTime => {
                    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                    name.push_str(&secs.to_string());
                }
            }
        }
        let len = name.chars().count();
        if !(2..=64).contains(&len) || !name.chars().all(session_char) {
            return Err(ScopeError::NameInvalid {
                name,
                template: self.clone(),
            });
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::jwt::Audience;

    fn claims(other: serde_json::Value) -> Claims {
        Claims {
            iss: None,
            sub: None,
            aud: Audience::None,
            exp: 0,
            nbf: None,
            iat: None,
            other: other.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn durations_accept_seconds_and_humantime_within_sts_bounds() {
        assert_eq!(parse_duration("900").ok(), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("30m").ok(), Some(Duration::from_secs(1800)));
        assert_eq!(
            parse_duration("12h").ok(),
            Some(Duration::from_secs(43_200))
        );
        for bad in ["899", "14m", "12h 1s", "0", "forever", "900500ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let err = parse_duration("1d").unwrap_err().to_string();
        assert!(err.contains("900 to 43200"), "{err}");
    }

    #[test]
    fn policies_are_checked_for_size_characters_and_json() {
        assert!(check_policy(r#"{"Version":"2012-10-17","Statement":[]}"#).is_ok());
        // Latin-1 counts as one character each: 2048 of them pass, 2049 fail.
        let body = |n: usize| format!("\"{}\"", "é".repeat(n - 2));
        assert!(check_policy(&body(2048)).is_ok());
        assert!(check_policy(&body(2049))
            .unwrap_err()
            .to_string()
            .contains("2049 characters"));
        assert!(check_policy("")
            .unwrap_err()
            .to_string()
            .contains("0 characters"));
        assert!(check_policy("\"a\u{0}\"")
            .unwrap_err()
            .to_string()
            .contains("'\\0'"));
        assert!(check_policy("\"€\"")
            .unwrap_err()
            .to_string()
            .contains("U+0020"));
        assert!(check_policy("{\"Version\":")
            .unwrap_err()
            .to_string()
            .contains("JSON"));
        assert!(check_policy("{\n\t\"a\": 1\r\n}").is_ok());
    }

    #[test]
    fn policy_arns_are_checked_for_shape_and_count() {
        for ok in [
            "arn:aws:iam::aws:policy/ReadOnlyAccess",
            "arn:aws:iam::123456789012:policy/team/sccache-rw",
            "arn:aws-cn:iam::aws:policy/service-role/X",
        ] {
            assert_eq!(parse_policy_arn(ok).as_deref(), Ok(ok));
        }
        for (bad, why) in [
            ("ReadOnlyAccess", "not an ARN"),
            ("arn:aws:iam::123:policy/x", "12-digit"),
            ("arn:aws:iam::123456789012:role/x", "not a policy"),
            ("arn:aws:s3:::bucket", "not an IAM ARN"),
            ("arn:aws:iam::aws:policy/", "invalid policy name"),
            ("arn:aws:iam::aws:policy/a b", "invalid policy name"),
        ] {
            let err = parse_policy_arn(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let ten = vec!["arn:aws:iam::aws:policy/A".to_string(); 10];
        assert!(check_policy_arns(&ten).is_ok());
        let eleven = vec!["arn:aws:iam::aws:policy/A".to_string(); 11];
        assert!(check_policy_arns(&eleven)
            .unwrap_err()
            .to_string()
            .contains("at most 10"));
    }

    #[test]
    fn session_names_render_placeholders_and_are_checked() {
        let c = claims(serde_json::json!({"kubernetes.io": {
            "namespace": "ci", "pod": {"name": "runner-7f9c"},
            "serviceaccount": {"name": "builder"}}}));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t: SessionName = "irsa-{namespace}.{service_account}@{pod}-{unix_time}"
            .parse()
            .unwrap();
        assert_eq!(
            t.render(&c, now).unwrap(),
            "irsa-ci.builder@runner-7f9c-1700000000"
        );
        assert_eq!(
            t.to_string(),
            "irsa-{namespace}.{service_account}@{pod}-{unix_time}"
        );
        let default: SessionName = DEFAULT_SESSION_NAME.parse().unwrap();
        assert_eq!(
            default.render(&claims(serde_json::json!({})), now).unwrap(),
            "irsa-secrets-1700000000"
        );
        let err = "x-{pod}"
            .parse::<SessionName>()
            .unwrap()
            .render(&claims(serde_json::json!({})), now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes.io.pod.name"), "{err}");
        let long: SessionName = format!("{}-{{pod}}", "a".repeat(60)).parse().unwrap();
        assert!(long
            .render(&c, now)
            .unwrap_err()
            .to_string()
            .contains("2 to 64"));
        let short: SessionName = "a".parse().unwrap();
        assert!(short.render(&c, now).is_err());
        for (bad, why) in [
            ("has space", "' '"),
            ("x-{user}", "unknown placeholder {user}"),
            ("x-{pod", "unclosed"),
            ("a/b", "'/'"),
        ] {
            let err = bad.parse::<SessionName>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
