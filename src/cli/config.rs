//! The `--config` file: TOML whose keys are the command line's flags, so every setting has one
//! definition (the clap flag) and the file cannot drift from it. Top-level keys are global
//! flags; each `[[listener]]` table is one listener's flags.
//!
//! ```toml
//! audit_log = "/var/log/irsa-secrets/audit.jsonl"
//! metrics_listen = "127.0.0.1:9464"
//!
//! [[listener]]
//! name = "trusted"
//! listen = "unix:///run/irsa/trusted.sock"
//! identity = "process"
//! allow_uid = [1000]
//!
//! [[listener]]
//! name = "untrusted"
//! listen = "unix:///run/irsa/untrusted.sock"
//! secret = ["id=cache-url,src=/etc/irsa/cache-url"]
//! ```
//!
//! A `[[listener]]` serves only an identity it names: `identity = "process"` for the helper's own
//! (the one the environment gives: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, or
//! `IRSA_SECRETS_MOCK`), its own `token_file` and `role_arn` (or `mock = true`), or none when it
//! declares only `secret`s. The environment's identity never reaches a listener that did not ask
//! for it, and a table that names none of these is refused.
//!
//! Errors speak of the file's keys and tables, never of flags or of clap's usage lines.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, FromArgMatches, ValueEnum};
use toml::Value;

use crate::plan::{self, TableIdentity};
use crate::source::identity::Identity;

/// The `[[listener]]` key that opts a listener into the process's identity (on the command
/// line the one listener is the process's): `"process"` for whichever `--identity` settles on,
/// or the name of one (`identity = "pod-identity"`), which then becomes the `--identity` flag.
const IDENTITY_KEY: &str = "identity";
/// The value of [`IDENTITY_KEY`] that takes the process's identity as `--identity` finds it.
const PROCESS: &str = "process";
/// The `--identity` flag, which a listener that did not opt in gets as `own`: only its own keys.
const IDENTITY_CHOICE_FLAG: &str = "identity";
/// How `identity = "process"` travels among a table's flags, to be taken out before clap sees
/// them.
const PROCESS_IDENTITY_FLAG: &str = "--identity=process";
/// The listener flags that make up an identity, and that clap would otherwise fill from the
/// process's environment.
const IDENTITY_FLAGS: [&str; 3] = ["mock", "token-file", "role-arn"];
/// The listener flag that declares secrets: a table with only these serves no identity.
const SECRET_FLAG: &str = "secret";

/// The file, turned into argument lists.
#[derive(Debug, Default)]
pub struct ConfigArgs {
    /// Global flags, e.g. `--audit-log FILE`.
    pub global: Vec<String>,
    /// One flag list per `[[listener]]` table.
    pub listeners: Vec<Vec<String>>,
}

/// Where in the file a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Outside any table.
    Top,
    /// The N-th `[[listener]]` table, counted from 1.
    Listener(usize),
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Top => f.write_str("top level"),
            Section::Listener(n) => write!(f, "[[listener]] {n}"),
        }
    }
}

/// A problem in the file, located as precisely as it can be.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {problem}", path.display(), place.map(|p| format!(": {p}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The table, when the problem is in one.
    pub place: Option<Section>,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong in the file, and what is allowed instead.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    /// The text is not TOML.
    #[error("line {line}: not valid TOML: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// `listener` is not an array of tables.
    #[error("`listener` must be an array of tables: write [[listener]]")]
    ListenerShape,
    /// A key no table accepts.
    #[error("unknown key `{key}`; {hint}")]
    Unknown {
        /// The key.
        key: String,
        /// The nearest match, or the keys allowed here.
        hint: String,
    },
    /// A key of the other kind of table.
    #[error("`{key}` is not valid here: {where_}")]
    Misplaced {
        /// The key.
        key: String,
        /// Where it belongs.
        where_: &'static str,
    },
    /// A value of the wrong TOML type.
    #[error("`{key}` takes {expected}, not {} {found}", if found.starts_with(['a', 'i']) { "an" } else { "a" })]
    Type {
        /// The key.
        key: String,
        /// What it takes.
        expected: &'static str,
        /// The TOML type given.
        found: &'static str,
    },
    /// The value parsed but the setting refused it (the flag's own check).
    #[error("{0}")]
    Invalid(String),
    /// The table's identity keys do not settle which identity it serves.
    #[error(transparent)]
    Identity(#[from] TableIdentity),
}

/// What a key takes, from its flag's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Switch,
    One,
    Many,
}

/// The keys of the two kinds of table, derived from the clap commands that parse them.
#[derive(Debug)]
pub struct Schema {
    top: Command,
    listener: Command,
}

impl Schema {
    /// `top` parses the top-level keys, `listener` each `[[listener]]` table.
    pub fn new(top: Command, listener: Command) -> Self {
        Self { top, listener }
    }

    fn command(&self, place: Section) -> &Command {
        match place {
            Section::Top => &self.top,
            Section::Listener(_) => &self.listener,
        }
    }

    /// Reads `path` and turns its keys into flags.
    pub fn load(&self, path: &Path) -> Result<ConfigArgs, ConfigError> {
        let fail = |place, problem| ConfigError {
            path: path.to_path_buf(),
            place,
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(None, Problem::Unreadable(e)))?;
        self.parse(&text)
            .map_err(|(place, problem)| fail(place, problem))
    }

    /// Turns TOML text into flags: `key = value` becomes `--key=value` (underscores become
    /// dashes; one word, so a value that begins with `-` is the key's value, never a flag of
    /// its own), `key = true` becomes `--key`, `false` nothing, and arrays repeat the flag.
    fn parse(&self, text: &str) -> Result<ConfigArgs, (Option<Section>, Problem)> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            });
            let message = e.message().to_string();
            (None, Problem::Syntax { line, message })
        })?;
        let mut out = ConfigArgs::default();
        for (key, value) in &table {
            if key == "listener" {
                let Value::Array(listeners) = value else {
                    return Err((Some(Section::Top), Problem::ListenerShape));
                };
                for (i, l) in listeners.iter().enumerate() {
                    let place = Section::Listener(i + 1);
                    let Value::Table(l) = l else {
                        return Err((Some(place), Problem::ListenerShape));
                    };
                    let mut args = Vec::new();
                    for (k, v) in l {
                        if k == IDENTITY_KEY {
                            identity(v, &mut args).map_err(|p| (Some(place), p))?;
                            continue;
                        }
                        self.flags(place, k, v, &mut args)
                            .map_err(|p| (Some(place), p))?;
                    }
                    out.listeners.push(args);
                }
            } else {
                self.flags(Section::Top, key, value, &mut out.global)
                    .map_err(|p| (Some(Section::Top), p))?;
            }
        }
        Ok(out)
    }

    /// Parses one table's flags into `T`, wording clap's refusals in the file's terms. A
    /// listener's identity settings come from the environment only with `identity = "process"`;
    /// a listener that names no identity is refused.
    pub fn matches<T: FromArgMatches>(
        &self,
        path: &Path,
        place: Section,
        flags: &[String],
    ) -> Result<T, ConfigError> {
        let fail = |problem| ConfigError {
            path: path.to_path_buf(),
            place: Some(place),
            problem,
        };
        let mut command = self.command(place).clone().no_binary_name(true);
        let process = flags.iter().any(|f| f == PROCESS_IDENTITY_FLAG);
        let identity_ids = match place {
            Section::Top => Vec::new(),
            Section::Listener(_) => ids_of(&command, &IDENTITY_FLAGS),
        };
        if !process {
            for (id, _) in &identity_ids {
                command = command.mut_arg(id, |a| a.env(None));
            }
            for (id, _) in ids_of(&command, &[IDENTITY_CHOICE_FLAG]) {
                command = command.mut_arg(id, |a| a.env(None).default_value("own"));
            }
        }
        let flags = flags.iter().filter(|f| *f != PROCESS_IDENTITY_FLAG);
        let matches = command
            .try_get_matches_from_mut(flags)
            .map_err(|e| fail(Problem::Invalid(in_file_terms(&e))))?;
        if !identity_ids.is_empty() {
            let named: Vec<&str> = identity_ids
                .iter()
                .filter(|(id, _)| given(&matches, id))
                .map(|(_, key)| key.as_str())
                .collect();
            let secrets = ids_of(&command, &[SECRET_FLAG])
                .iter()
                .any(|(id, _)| given(&matches, id));
            plan::table_identity(process, &named, secrets).map_err(|e| fail(e.into()))?;
        }
        T::from_arg_matches(&matches).map_err(|e| fail(Problem::Invalid(in_file_terms(&e))))
    }

    fn kind(&self, place: Section, key: &str) -> Option<Kind> {
        self.command(place)
            .get_arguments()
            .find(|a| a.get_long().is_some_and(|l| key_of(l) == key) && !is_builtin(a))
            .map(|a| match a.get_action() {
                ArgAction::SetTrue => Kind::Switch,
                ArgAction::Append => Kind::Many,
                _ => Kind::One,
            })
    }

    fn flags(
        &self,
        place: Section,
        key: &str,
        value: &Value,
        out: &mut Vec<String>,
    ) -> Result<(), Problem> {
        let Some(kind) = self.kind(place, key) else {
            return Err(self.not_here(place, key));
        };
        let flag = format!("--{}", key.replace('_', "-"));
        let wrong = |expected| Problem::Type {
            key: key.to_string(),
            expected,
            found: value.type_str(),
        };
        let scalar = |v: &Value, out: &mut Vec<String>| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Integer(n) => n.to_string(),
                _ => return Err(()),
            };
            out.push(format!("{flag}={text}"));
            Ok(())
        };
        match (kind, value) {
            (Kind::Switch, Value::Boolean(true)) => out.push(flag),
            (Kind::Switch, Value::Boolean(false)) => {}
            (Kind::Switch, _) => return Err(wrong("true or false")),
            (Kind::One, v) => scalar(v, out).map_err(|()| wrong("a string or a number"))?,
            (Kind::Many, Value::Array(items)) => {
                for item in items {
                    scalar(item, out)
                        .map_err(|()| wrong("a string, a number or an array of them"))?;
                }
            }
            (Kind::Many, v) => {
                scalar(v, out).map_err(|()| wrong("a string, a number or an array of them"))?
            }
        }
        Ok(())
    }

    /// Why `key` is refused at `place`: it belongs to the other kind of table, or it is unknown
    /// (with the nearest key, or the list of keys allowed here).
    fn not_here(&self, place: Section, key: &str) -> Problem {
        let other = match place {
            Section::Top => Section::Listener(1),
            Section::Listener(_) => Section::Top,
        };
        if self.kind(other, key).is_some() {
            let where_ = match place {
                Section::Top => "it is a listener's setting: move it into a [[listener]] table",
                Section::Listener(_) => {
                    "it applies to every listener: move it to the top level, before the first \
                     [[listener]]"
                }
            };
            return Problem::Misplaced {
                key: key.to_string(),
                where_,
            };
        }
        let hint = match self.nearest(place, key) {
            Some(near) => format!("did you mean `{near}`?"),
            None => {
                let keys: Vec<String> = self
                    .command(place)
                    .get_arguments()
                    .filter(|a| !is_builtin(a))
                    .filter_map(|a| a.get_long().map(key_of))
                    .collect();
                match place {
                    Section::Top => format!(
                        "the top level takes {} and [[listener]] tables",
                        keys.join(", ")
                    ),
                    Section::Listener(_) => {
                        format!("a [[listener]] takes {IDENTITY_KEY}, {}", keys.join(", "))
                    }
                }
            }
        };
        Problem::Unknown {
            key: key.to_string(),
            hint,
        }
    }

    /// The key clap would suggest for `key` as a flag at `place`.
    fn nearest(&self, place: Section, key: &str) -> Option<String> {
        let flag = format!("--{}", key.replace('_', "-"));
        let err = self
            .command(place)
            .clone()
            .no_binary_name(true)
            .try_get_matches_from([flag])
            .err()?;
        match err.get(ContextKind::SuggestedArg) {
            Some(ContextValue::String(s)) => Some(key_of(s.trim_start_matches('-'))),
            _ => None,
        }
    }
}

/// Turns `identity = "process"` into its marker among the table's flags, and a named identity
/// into the marker and `--identity NAME`.
fn identity(value: &Value, out: &mut Vec<String>) -> Result<(), Problem> {
    match value {
        Value::String(s) if s == PROCESS => {
            out.push(PROCESS_IDENTITY_FLAG.into());
            Ok(())
        }
        Value::String(s) if Identity::from_str(s, false).is_ok() => {
            out.extend([
                PROCESS_IDENTITY_FLAG.into(),
                format!("--{IDENTITY_CHOICE_FLAG}"),
                s.clone(),
            ]);
            Ok(())
        }
        _ => Err(Problem::Invalid(format!(
            "`{IDENTITY_KEY}` takes \"{PROCESS}\" (serve the helper's own identity) or one of \
             {}; for one of this listener's own, set token_file and role_arn (or mock = true) \
             instead",
            Identity::value_variants()
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The ids and file keys of `command`'s arguments with these long names.
fn ids_of(command: &Command, longs: &[&str]) -> Vec<(String, String)> {
    command
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long().filter(|l| longs.contains(l))?;
            Some((a.get_id().to_string(), key_of(long)))
        })
        .collect()
}

/// True when the table itself set `id` (not a default, not the environment).
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

fn is_builtin(arg: &clap::Arg) -> bool {
    matches!(arg.get_long(), Some("help" | "version"))
}

fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// Clap's first line, with `--flag <VALUE>` written as the file's `flag` key and no usage.
fn in_file_terms(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    // The message ends at the first blank line, before clap's usage and tip lines.
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = message.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let name_end = rest[at + 2..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .map_or(rest.len(), |n| at + 2 + n);
        out.push('`');
        out.push_str(&key_of(&rest[at + 2..name_end]));
        out.push('`');
        rest = &rest[name_end..];
        // Drop the value placeholder (` <N>`).
        if let Some(after) = rest.strip_prefix(" <") {
            if let Some(close) = after.find('>') {
                rest = &after[close + 1..];
            }
        }
    }
    out.push_str(rest);
    // Clap quotes flags ('--x'); the key is already in backquotes.
    out.replace("'`", "`").replace("`'", "`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn schema() -> Schema {
        Schema::new(
            Command::new("top").arg(Arg::new("audit_log").long("audit-log")),
            Command::new("listener")
                .arg(Arg::new("name").long("name"))
                .arg(Arg::new("listen").long("listen"))
                .arg(Arg::new("mock").long("mock").action(ArgAction::SetTrue))
                .arg(Arg::new("socket_mode").long("socket-mode"))
                .arg(
                    Arg::new("max_sessions")
                        .long("max-sessions")
                        .value_parser(clap::value_parser!(u32)),
                )
                .arg(
                    Arg::new("allow_uid")
                        .long("allow-uid")
                        .action(ArgAction::Append),
                ),
        )
    }

    #[test]
    fn keys_become_flags() {
        let c = schema()
            .parse(
                r#"
            audit_log = "-"
            [[listener]]
            name = "a"
            mock = true
            socket_mode = "660"
            allow_uid = [1000, 1001]
            max_sessions = 4
            [[listener]]
            listen = "unix:///b.sock"
            mock = false
            "#,
            )
            .unwrap();
        assert_eq!(c.global, ["--audit-log=-"]);
        assert_eq!(
            c.listeners[0],
            [
                "--allow-uid=1000",
                "--allow-uid=1001",
                "--max-sessions=4",
                "--mock",
                "--name=a",
                "--socket-mode=660"
            ]
        );
        assert_eq!(c.listeners[1], ["--listen=unix:///b.sock"]);
    }

    fn problem(text: &str) -> String {
        let (place, problem) = schema().parse(text).unwrap_err();
        format!("{place:?}: {problem}")
    }

    #[test]
    fn bad_files_say_where_and_what_is_allowed() {
        assert!(problem("listener = 3").contains("[[listener]]"));
        let p = problem("[[listener]]\nallow_uid = { a = 1 }");
        assert!(
            p.contains("Listener(1)") && p.contains("`allow_uid` takes"),
            "{p}"
        );
        let p = problem("[[listener]]\nname = \"a\"\n[[listener]]\nmock = \"yes\"");
        assert!(
            p.contains("Listener(2)") && p.contains("`mock` takes true or false, not a string"),
            "{p}"
        );
        let p = problem("listen = \"unix:///a\"");
        assert!(p.contains("Top") && p.contains("[[listener]] table"), "{p}");
        let p = problem("[[listener]]\naudit_log = \"-\"");
        assert!(p.contains("top level"), "{p}");
        let p = problem("[[listener]]\nlistn = \"unix:///a\"");
        assert!(p.contains("did you mean `listen`?"), "{p}");
        let p = problem("bogus = 1");
        assert!(p.contains("the top level takes audit_log"), "{p}");
        assert!(problem("a = ").contains("line 1"));
    }

    /// Accepts whatever clap matched: the test is about clap's refusals.
    #[derive(Debug)]
    struct Matched;

    impl FromArgMatches for Matched {
        fn from_arg_matches(_: &clap::ArgMatches) -> Result<Self, clap::Error> {
            Ok(Matched)
        }

        fn update_from_arg_matches(&mut self, _: &clap::ArgMatches) -> Result<(), clap::Error> {
            Ok(())
        }
    }

    #[test]
    fn clap_refusals_name_the_key() {
        let c = schema()
            .parse("[[listener]]\nmax_sessions = \"lots\"")
            .unwrap();
        let err = schema()
            .matches::<Matched>(Path::new("/f.toml"), Section::Listener(1), &c.listeners[0])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/f.toml: [[listener]] 1: invalid value 'lots' for `max_sessions`"),
            "{err}"
        );
        assert!(!err.contains("--") && !err.contains("Usage"), "{err}");
    }

    #[test]
    fn a_value_that_begins_with_a_dash_is_the_keys_value() {
        for (text, want) in [
            (
                "[[listener]]\nmax_sessions = -4",
                "[[listener]] 1: invalid value '-4' for `max_sessions`",
            ),
            (
                "audit_log = \"-v\"\n[[listener]]\nmax_sessions = \"-x\"",
                "[[listener]] 1: invalid value '-x' for `max_sessions`",
            ),
        ] {
            let c = schema().parse(text).unwrap();
            let err = schema()
                .matches::<Matched>(Path::new("/f.toml"), Section::Listener(1), &c.listeners[0])
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("unexpected argument"), "{err}");
            schema()
                .matches::<Matched>(Path::new("/f.toml"), Section::Top, &c.global)
                .unwrap();
        }
    }
}
