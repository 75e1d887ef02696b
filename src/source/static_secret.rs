//! A team's other build secrets, declared with buildx's `--secret` syntax and served with
//! buildx's semantics: a file is re-read on every request, a variable is read when asked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use futures_util::future::BoxFuture;

use super::aws_secret::{AwsSecret, AwsValue, DEFAULT_TTL};
use super::{off_runtime, read_bounded, ErrorKind, Source, SourceError};
use crate::secret::{SecretValue, MAX_SECRET_SIZE};

/// A `--secret` declaration buildx (or, for the `aws-sm` and `aws-ssm` types, the helper) would
/// refuse. The declaration is configuration, never a value, so the messages quote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field without `=`.
    #[error("invalid field {0:?} in --secret: must be a key=value pair")]
    NotKeyValue(String),
    /// A `type` other than `file`, `env`, `aws-sm` or `aws-ssm`.
    #[error("unsupported secret type {0:?}: use file, env, aws-sm or aws-ssm")]
    Type(String),
    /// A key the declaration's type does not take.
    #[error("unexpected key {key:?} in --secret {field:?}: {typ} takes {allowed}")]
    Key {
        /// The key.
        key: String,
        /// The whole field.
        field: String,
        /// The declaration's type (`type=file`, `type=aws-ssm`, ...).
        typ: &'static str,
        /// The keys that type takes.
        allowed: &'static str,
    },
    /// No `id`, or an empty one.
    #[error("--secret {0:?} has no id: add id=NAME")]
    NoId(String),
    /// An AWS declaration without `name`, or with an empty one.
    #[error("--secret {spec:?} has no name: add name={hint}")]
    NoName {
        /// The whole declaration.
        spec: String,
        /// What the name is (`SECRET_NAME_OR_ARN`, `/PARAMETER/PATH`).
        hint: &'static str,
    },
    /// An empty `key=` or `version-stage=`.
    #[error("--secret {spec:?} has an empty {key}=: give a value or leave the key out")]
    Empty {
        /// The whole declaration.
        spec: String,
        /// The key.
        key: &'static str,
    },
    /// A `ttl` that is not a positive duration within [`crate::bound::MAX_DURATION`].
    #[error("--secret {spec:?} has ttl={ttl:?}, which is not a positive duration: {why}")]
    Ttl {
        /// The whole declaration.
        spec: String,
        /// The value as given.
        ttl: String,
        /// What is wrong with it.
        why: String,
    },
    /// A `name` that is an ARN of another service.
    #[error("--secret {spec:?} has name={name:?}, which is not {expected} ARN: give a name or {expected} ARN")]
    Arn {
        /// The whole declaration.
        spec: String,
        /// The name as given.
        name: String,
        /// The kind of ARN the type takes (`a Secrets Manager`, `an SSM parameter`).
        expected: &'static str,
    },
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

/// Where one declared secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, read at request time.
    File(PathBuf),
    /// An environment variable of the helper's process, read at request time.
    Env(String),
    /// A Secrets Manager secret or a Parameter Store parameter, fetched with the helper's own
    /// credentials and cached.
    Aws(AwsSecret),
}

/// One `--secret` declaration: buildx's `id=ID,src=FILE|env=VAR`, or the helper's own
/// `id=ID,type=aws-sm|aws-ssm,name=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id a `RUN --mount=type=secret,id=...` asks for.
    pub id: String,
    /// Where the value comes from.
    pub origin: Origin,
}

/// The `type=` of a declaration, which decides the keys it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No type, `type=file` or `type=env`: buildx's own forms.
    Buildx { env: bool },
    /// `type=aws-sm`.
    SecretsManager,
    /// `type=aws-ssm`.
    Parameter,
}

impl Kind {
    fn parse(value: &str) -> Result<Self, SpecError> {
        match value {
            "file" => Ok(Kind::Buildx { env: false }),
            "env" => Ok(Kind::Buildx { env: true }),
            "aws-sm" => Ok(Kind::SecretsManager),
            "aws-ssm" => Ok(Kind::Parameter),
            _ => Err(SpecError::Type(value.to_string())),
        }
    }

    /// How messages name the type, and the keys it takes.
    fn keys(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            Kind::Buildx { .. } => (
                "a file or env secret",
                &["id", "type", "src", "source", "env"],
                "id, src, env or type (name, key, version-stage and ttl need type=aws-sm or aws-ssm)",
            ),
            Kind::SecretsManager => (
                "type=aws-sm",
                &["id", "type", "name", "key", "version-stage", "ttl"],
                "id, type, name, key, version-stage or ttl",
            ),
            Kind::Parameter => (
                "type=aws-ssm",
                &["id", "type", "name", "ttl"],
                "id, type, name or ttl",
            ),
        }
    }
}

impl FromStr for SecretSpec {
    type Err = SpecError;

    /// Parses buildx's syntax: one CSV record of `key=value` fields with keys `type` (`file` or
    /// `env`), `id`, `src`/`source` and `env`; a field holding a comma is quoted whole
    /// (`"src=/a,b"`). With neither `src` nor `env`, the id names an environment variable if
    /// one is set, else a file; `type=env` makes `src` a variable name. `type=aws-sm` takes
    /// `name`, `key`, `version-stage` and `ttl` instead, `type=aws-ssm` `name` and `ttl`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut kind = Kind::Buildx { env: false };
        let mut fields = Vec::new();
        for field in csv_fields(s)? {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(field.clone()))?;
            let key = key.to_ascii_lowercase();
            if key == "type" {
                kind = Kind::parse(value)?;
            }
            let value = value.to_string();
            fields.push((key, value, field));
        }
        let (typ, keys, allowed) = kind.keys();
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for (key, value, field) in &fields {
            let Some(known) = keys.iter().find(|k| **k == key) else {
                return Err(SpecError::Key {
                    key: key.clone(),
                    field: field.clone(),
                    typ,
                    allowed,
                });
            };
            // `source` is buildx's other spelling of `src`.
            let known = if *known == "source" { "src" } else { *known };
            values.insert(known, value.clone());
        }
        let id = values
            .remove("id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| SpecError::NoId(s.to_string()))?;
        let origin = match kind {
            Kind::Buildx { env: typed_env } => {
                let (mut src, mut env) = (values.remove("src"), values.remove("env"));
                if typed_env && env.is_none() {
                    env = src.take();
                }
                match (env, src) {
                    (Some(var), _) => Origin::Env(var),
                    (None, Some(path)) => Origin::File(path.into()),
                    (None, None) if std::env::var_os(&id).is_some() => Origin::Env(id.clone()),
                    (None, None) => Origin::File(id.clone().into()),
                }
            }
            Kind::SecretsManager | Kind::Parameter => Origin::Aws(aws_secret(s, kind, values)?),
        };
        Ok(SecretSpec { id, origin })
    }
}

/// The AWS value an `aws-sm` or `aws-ssm` declaration `spec` names, from its `values`.
fn aws_secret(
    spec: &str,
    kind: Kind,
    mut values: BTreeMap<&str, String>,
) -> Result<AwsSecret, SpecError> {
    let (hint, service, expected) = match kind {
        Kind::SecretsManager => ("SECRET_NAME_OR_ARN", "secretsmanager", "a Secrets Manager"),
        _ => ("/PARAMETER/PATH", "ssm", "an SSM parameter"),
    };
    let name = values
        .remove("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| SpecError::NoName {
            spec: spec.to_string(),
            hint,
        })?;
    if name.starts_with("arn:")
        && crate::source::arn::service_region(&name).is_none_or(|(s, _)| s != service)
    {
        return Err(SpecError::Arn {
            spec: spec.to_string(),
            name,
            expected,
        });
    }
    let mut optional = |key: &'static str| match values.remove(key) {
        Some(v) if v.is_empty() => Err(SpecError::Empty {
            spec: spec.to_string(),
            key,
        }),
        v => Ok(v),
    };
    let (key, version_stage) = (optional("key")?, optional("version-stage")?);
    let ttl = match optional("ttl")? {
        None => DEFAULT_TTL,
        Some(ttl) => match crate::bound::duration(&ttl) {
            Ok(d) if !d.is_zero() => d,
            read => {
                let why = read.err().unwrap_or_else(|| "it is zero".into());
                let spec = spec.to_string();
                return Err(SpecError::Ttl { spec, ttl, why });
            }
        },
    };
    let value = match kind {
        Kind::SecretsManager => AwsValue::SecretsManager {
            name,
            key,
            version_stage,
        },
        _ => AwsValue::Parameter { name },
    };
    Ok(AwsSecret { value, ttl })
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
    /// Declarations of AWS values are left to [`super::aws_secret::AwsSecrets`].
    pub fn new(specs: Vec<SecretSpec>) -> Result<Self, StaticError> {
        let specs: Vec<SecretSpec> = specs
            .into_iter()
            .filter(|s| !matches!(s.origin, Origin::Aws(_)))
            .collect();
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
                None | Some(Origin::Aws(_)) => return Ok(None),
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

    #[test]
    fn aws_declarations_are_parsed_with_their_own_keys() {
        let sm = |name: &str, key: Option<&str>, stage: Option<&str>, ttl: u64| {
            Origin::Aws(AwsSecret {
                value: AwsValue::SecretsManager {
                    name: name.into(),
                    key: key.map(String::from),
                    version_stage: stage.map(String::from),
                },
                ttl: std::time::Duration::from_secs(ttl),
            })
        };
        assert_eq!(
            parse("id=npm,type=aws-sm,name=ci/npm").unwrap(),
            SecretSpec {
                id: "npm".into(),
                origin: sm("ci/npm", None, None, 300)
            }
        );
        assert_eq!(
            parse("type=aws-sm,id=db,name=ci/db,key=password,version-stage=AWSPREVIOUS,ttl=2m")
                .unwrap()
                .origin,
            sm("ci/db", Some("password"), Some("AWSPREVIOUS"), 120)
        );
        let arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:ci/npm-AbCdEf";
        assert_eq!(
            parse(&format!("id=npm,type=aws-sm,NAME={arn}"))
                .unwrap()
                .origin,
            sm(arn, None, None, 300)
        );
        assert_eq!(
            parse("id=pypi,type=aws-ssm,name=/ci/pypi,ttl=30s")
                .unwrap()
                .origin,
            Origin::Aws(AwsSecret {
                value: AwsValue::Parameter {
                    name: "/ci/pypi".into()
                },
                ttl: std::time::Duration::from_secs(30),
            })
        );
        // A JSON key with a comma is quoted whole, as any field.
        assert_eq!(
            parse(r#"id=a,type=aws-sm,name=n,"key=a,b""#)
                .unwrap()
                .origin,
            sm("n", Some("a,b"), None, 300)
        );
    }

    #[test]
    fn bad_aws_declarations_say_what_to_fix() {
        for (bad, msg) in [
            (
                "id=a,type=aws-sm",
                "has no name: add name=SECRET_NAME_OR_ARN",
            ),
            (
                "id=a,type=aws-ssm,name=",
                "has no name: add name=/PARAMETER/PATH",
            ),
            ("type=aws-sm,name=n", "has no id"),
            (
                "id=a,type=aws-sm,name=n,ttl=soon",
                "ttl=\"soon\", which is not a positive duration",
            ),
            ("id=a,type=aws-sm,name=n,ttl=0s", "not a positive duration"),
            (
                "id=a,type=aws-ssm,name=/p,key=k",
                "type=aws-ssm takes id, type, name or ttl",
            ),
            (
                "id=a,type=aws-ssm,name=/p,version-stage=S",
                "unexpected key \"version-stage\"",
            ),
            (
                "id=a,type=aws-sm,name=n,src=/f",
                "type=aws-sm takes id, type, name, key, version-stage or ttl",
            ),
            ("id=a,type=aws-sm,name=n,key=", "has an empty key="),
            ("id=a,name=n", "need type=aws-sm or aws-ssm"),
            ("id=a,src=f,ttl=5m", "a file or env secret takes"),
            (
                "id=a,type=aws-kms,name=n",
                "use file, env, aws-sm or aws-ssm",
            ),
            (
                "id=a,type=aws-sm,name=arn:aws:ssm:eu-west-1:111122223333:parameter/p",
                "is not a Secrets Manager ARN",
            ),
            (
                "id=a,type=aws-ssm,name=arn:aws:ssm",
                "is not an SSM parameter ARN",
            ),
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
