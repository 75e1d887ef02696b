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
//! allow_uid = [1000]
//!
//! [[listener]]
//! name = "untrusted"
//! listen = "unix:///run/irsa/untrusted.sock"
//! allow_id = ["aws-region"]
//! ```

use std::path::Path;

use toml::Value;

/// The file, turned into argument lists.
#[derive(Debug, Default)]
pub struct ConfigArgs {
    /// Global flags, e.g. `--audit-log FILE`.
    pub global: Vec<String>,
    /// One flag list per `[[listener]]` table.
    pub listeners: Vec<Vec<String>>,
}

/// Reads `path` and turns its keys into flags.
pub fn load(path: &Path) -> Result<ConfigArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Turns TOML text into flags: `key = value` becomes `--key value` (underscores become
/// dashes), `key = true` becomes `--key`, `false` nothing, and arrays repeat the flag.
pub fn parse(text: &str) -> Result<ConfigArgs, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    let mut out = ConfigArgs::default();
    for (key, value) in &table {
        if key == "listener" {
            let Value::Array(listeners) = value else {
                return Err("`listener` must be an array of tables: write [[listener]]".into());
            };
            for (i, l) in listeners.iter().enumerate() {
                let Value::Table(l) = l else {
                    return Err(format!("listener {} is not a table", i + 1));
                };
                let mut args = Vec::new();
                for (k, v) in l {
                    flags(k, v, &mut args).map_err(|e| format!("listener {}: {e}", i + 1))?;
                }
                out.listeners.push(args);
            }
        } else {
            flags(key, value, &mut out.global)?;
        }
    }
    Ok(out)
}

fn flags(key: &str, value: &Value, out: &mut Vec<String>) -> Result<(), String> {
    let flag = format!("--{}", key.replace('_', "-"));
    match value {
        Value::Boolean(true) => out.push(flag),
        Value::Boolean(false) => {}
        Value::String(s) => out.extend([flag, s.clone()]),
        Value::Integer(n) => out.extend([flag, n.to_string()]),
        Value::Array(items) => {
            for item in items {
                if matches!(item, Value::Array(_) | Value::Table(_)) {
                    return Err(format!(
                        "{key}: arrays may hold only strings, numbers and booleans"
                    ));
                }
                flags(key, item, out)?;
            }
        }
        other => {
            return Err(format!(
                "{key}: unsupported value of type {}",
                other.type_str()
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags() {
        let c = parse(
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
        assert_eq!(c.global, ["--audit-log", "-"]);
        assert_eq!(
            c.listeners[0],
            [
                "--allow-uid",
                "1000",
                "--allow-uid",
                "1001",
                "--max-sessions",
                "4",
                "--mock",
                "--name",
                "a",
                "--socket-mode",
                "660"
            ]
        );
        assert_eq!(c.listeners[1], ["--listen", "unix:///b.sock"]);
    }

    #[test]
    fn bad_files_say_where() {
        assert!(parse("listener = 3").unwrap_err().contains("[[listener]]"));
        assert!(parse("[[listener]]\nx = { a = 1 }")
            .unwrap_err()
            .contains("listener 1: x"));
        assert!(parse("a = ").is_err());
    }
}
