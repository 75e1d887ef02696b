//! A team's other build secrets, declared with buildx's `--secret` syntax and served with
//! buildx's semantics: a file is re-read on every request, a variable is read when asked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use futures_util::future::BoxFuture;

use super::{off_runtime, read_bounded, ErrorKind, Source, SourceError};
use crate::secret::{SecretValue, MAX_SECRET_SIZE};

/// A `--secret` declaration buildx would refuse. The declaration is configuration, never a
/// value, so the messages quote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field without `=`.
    #[error("invalid field {0:?} in --secret: must be a key=value pair")]
    NotKeyValue(String),
    /// A `type` other than `file` or `env`.
    #[error("unsupported secret type {0:?}: use file or env")]
    Type(String),
    /// A key buildx does not know.
    #[error("unexpected key {key:?} in --secret {field:?}: use id, src, env or type")]
    Key {
        /// The key.
        key: String,
        /// The whole field.
        field: String,
    },
    /// No `id`, or an empty one.
    #[error("--secret {0:?} has no id: add id=NAME")]
    NoId(String),
    /// The value is not one record of Go's strict CSV.
    #[error("--secret {spec:?} {problem}")]
    Csv {
        /// The whole declaration.
        spec: String,
        /// What is wrong with its quoting or lines.
        problem: CsvProblem,
    },
}

/// What is wrong with a `--secret` value as CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsvProblem {
    /// A quoted field runs to the end.
    #[error("has a quoted field with no closing quote")]
    Unclosed,
    /// A quoted field goes on after its closing quote.
    #[error("has text after a closing quote: quote whole fields")]
    AfterQuote,
    /// A quote in an unquoted field.
    #[error("has a quote inside a field: quote the whole field, as \"src=a\"\"b\"")]
    InnerQuote,
    /// A line break.
    #[error("spans several lines: give one per flag")]
    Lines,
}

/// A declared file that cannot be served; found at start-up, so fatal.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// The file cannot be looked at (missing, denied).
    #[error("--secret id={id}: cannot stat {}: {err}", path.display())]
    Stat {
        /// The secret's id.
        id: String,
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The file is over BuildKit's limit for one secret.
    #[error(
        "--secret id={id}: {} is larger than {} KiB, BuildKit's limit",
        path.display(),
        MAX_SECRET_SIZE / 1024
    )]
    TooLarge {
        /// The secret's id.
        id: String,
        /// The file.
        path: PathBuf,
    },
}

/// Where one static secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, read at request time.
    File(PathBuf),
    /// An environment variable of the helper's process, read at request time.
    Env(String),
}

/// One `--secret id=ID,src=FILE|env=VAR` declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id a `RUN --mount=type=secret,id=...` asks for.
    pub id: String,
    /// Where the value comes from.
    pub origin: Origin,
}

impl FromStr for SecretSpec {
    type Err = SpecError;

    /// Parses buildx's syntax: one CSV record of `key=value` fields with keys `type` (`file` or
    /// `env`), `id`, `src`/`source` and `env`; a field holding a comma is quoted whole
    /// (`"src=/a,b"`). With neither `src` nor `env`, the id names an environment variable if
    /// one is set, else a file; `type=env` makes `src` a variable name.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (mut typ, mut id, mut src, mut env) = (None, None, None, None);
        for field in &csv_fields(s)? {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(field.clone()))?;
            match key.to_ascii_lowercase().as_str() {
                "type" if value == "file" || value == "env" => typ = Some(value.to_string()),
                "type" => return Err(SpecError::Type(value.to_string())),
                "id" => id = Some(value.to_string()),
                "src" | "source" => src = Some(value.to_string()),
                "env" => env = Some(value.to_string()),
                _ => {
                    return Err(SpecError::Key {
                        key: key.to_string(),
                        field: field.clone(),
                    })
                }
            }
        }
        let id = id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| SpecError::NoId(s.to_string()))?;
        if typ.as_deref() == Some("env") && env.is_none() {
            env = src.take();
        }
        let origin = match (env, src) {
            (Some(var), _) => Origin::Env(var),
            (None, Some(path)) => Origin::File(path.into()),
            (None, None) if std::env::var_os(&id).is_some() => Origin::Env(id.clone()),
            (None, None) => Origin::File(id.clone().into()),
        };
        Ok(SecretSpec { id, origin })
    }
}

/// Splits a `--secret` value into its fields as buildx does: one record of Go's strict CSV. A
/// field that starts with `"` is quoted (`""` inside stands for `"`; commas are literal); a
/// quote anywhere else is an error. Written out rather than taken from the csv crate, which
/// accepts stray quotes that buildx refuses and would read them differently.
fn csv_fields(s: &str) -> Result<Vec<String>, SpecError> {
    let refuse = |problem| {
        Err(SpecError::Csv {
            spec: s.to_string(),
            problem,
        })
    };
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match (chars.next(), chars.peek()) {
                    (None, _) => return refuse(CsvProblem::Unclosed),
                    (Some('"'), Some('"')) => {
                        chars.next();
                        field.push('"');
                    }
                    (Some('"'), Some(',') | None) => break,
                    (Some('"'), Some(_)) => return refuse(CsvProblem::AfterQuote),
                    (Some(c), _) => field.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ',') {
                match c {
                    '"' => return refuse(CsvProblem::InnerQuote),
                    '\n' | '\r' => return refuse(CsvProblem::Lines),
                    c => field.push(c),
                }
            }
        }
        fields.push(field);
        // A field ends at a comma, and another follows, or at the end of the value.
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

/// Serves declared secrets by id.
#[derive(Debug)]
pub struct Static {
    specs: BTreeMap<String, Origin>,
}

impl Static {
    /// Checks, as buildx does at session start, that each file exists and is within the size
    /// limit, so a typo fails at start-up. Later ids win over earlier ones with the same name.
    pub fn new(specs: Vec<SecretSpec>) -> Result<Self, StaticError> {
        for spec in &specs {
            if let Origin::File(path) = &spec.origin {
                let meta = std::fs::metadata(path).map_err(|err| StaticError::Stat {
                    id: spec.id.clone(),
                    path: path.clone(),
                    err,
                })?;
                if meta.len() > MAX_SECRET_SIZE as u64 {
                    return Err(StaticError::TooLarge {
                        id: spec.id.clone(),
                        path: path.clone(),
                    });
                }
            }
        }
        Ok(Self {
            specs: specs.into_iter().map(|s| (s.id, s.origin)).collect(),
        })
    }
}

impl Source for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    fn ids(&self) -> Vec<String> {
        self.specs.keys().cloned().collect()
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>> {
        Box::pin(async move {
            let value = match self.specs.get(id) {
                None => return Ok(None),
                Some(Origin::File(path)) => {
                    let path = path.clone();
                    off_runtime(move || read_bounded(&path, MAX_SECRET_SIZE)).await?
                }
                // buildx serves an unset variable as an empty value; the provider refuses empty
                // values with a clear message, so say which variable it was here.
                Some(Origin::Env(var)) => match std::env::var_os(var) {
                    Some(v) => std::os::unix::ffi::OsStringExt::into_vec(v),
                    None => {
                        return Err(SourceError::new(
                            ErrorKind::Missing,
                            format!("secret {id}: environment variable {var} is not set in the helper's environment"),
                        ))
                    }
                },
            };
            Ok(Some(SecretValue::new(value)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SecretSpec, SpecError> {
        s.parse()
    }

    #[test]
    fn buildx_syntax_is_accepted() {
        assert_eq!(
            parse("id=npm,src=/run/npmrc").unwrap(),
            SecretSpec {
                id: "npm".into(),
                origin: Origin::File("/run/npmrc".into())
            }
        );
        assert_eq!(
            parse("id=a,source=f").unwrap().origin,
            Origin::File("f".into())
        );
        assert_eq!(
            parse("id=a,env=TOKEN").unwrap().origin,
            Origin::Env("TOKEN".into())
        );
        assert_eq!(
            parse("type=env,id=a,src=TOKEN").unwrap().origin,
            Origin::Env("TOKEN".into())
        );
        assert_eq!(
            parse("ID=a,SRC=f,Type=file").unwrap().origin,
            Origin::File("f".into())
        );
        assert_eq!(
            parse("id=a,src=f,env=V").unwrap().origin,
            Origin::Env("V".into()),
            "env wins, as in buildx"
        );
        // With neither src nor env: a variable named like the id if set (PATH always is), else a file.
        assert_eq!(parse("id=PATH").unwrap().origin, Origin::Env("PATH".into()));
        // A field holding a comma is quoted whole, as buildx's CSV reading expects.
        assert_eq!(
            parse(r#"id=a,"src=/run/a,b""#).unwrap().origin,
            Origin::File("/run/a,b".into())
        );
        assert_eq!(parse(r#""id=say ""hi""",env=V"#).unwrap().id, r#"say "hi""#);
        assert_eq!(
            parse("id=irsa-secrets-no-such-var").unwrap().origin,
            Origin::File("irsa-secrets-no-such-var".into())
        );
    }

    #[test]
    fn bad_declarations_say_what_to_fix() {
        for (bad, msg) in [
            ("src=f", "has no id"),
            ("id=,src=f", "has no id"),
            ("id=a,type=cmd", "unsupported secret type"),
            ("id=a,foo=b", "unexpected key"),
            ("id=a,src", "must be a key=value pair"),
            ("", "has no id"),
            ("id=a\nid=b", "spans several lines"),
            (r#"id=a,src=/x"y"#, "quote inside a field"),
            (r#"id=a,"src=/a,b"#, "no closing quote"),
            (r#""id=a"x,src=f"#, "text after a closing quote"),
            ("id=a,", "must be a key=value pair"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(msg), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn files_are_read_at_request_time_and_missing_ones_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "one").unwrap();
        let src = Static::new(vec![SecretSpec {
            id: "s".into(),
            origin: Origin::File(path.clone()),
        }])
        .unwrap();
        assert_eq!(src.fetch("s").await.unwrap().unwrap().expose(), b"one");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(src.fetch("s").await.unwrap().unwrap().expose(), b"two");
        assert!(src.fetch("other").await.unwrap().is_none());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(src.fetch("s").await.unwrap_err().kind, ErrorKind::Missing);

        let err = Static::new(vec![SecretSpec {
            id: "x".into(),
            origin: Origin::File(path),
        }])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot stat"), "{err}");
    }
}
