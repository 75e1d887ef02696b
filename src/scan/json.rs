//! Searches a JSON document (index, manifest, config, attestation) string by string, keys
//! included, so values are found as a program would read them (JSON escapes undone) and each
//! finding names its field: `config.Env[2]`, `config.Labels.KEY`, `history[3].created_by`,
//! `annotations.KEY`.

use serde_json::Value;

use super::matcher::{Hit, Matcher};

/// Calls `on_hit` with the field path and the hit for every match in `doc`.
pub fn search(doc: &Value, matcher: &Matcher, on_hit: &mut dyn FnMut(&str, Hit)) {
    walk(doc, String::new(), matcher, on_hit);
}

fn walk(value: &Value, path: String, matcher: &Matcher, on_hit: &mut dyn FnMut(&str, Hit)) {
    match value {
        Value::String(s) => matcher.scan_bytes(s.as_bytes(), &mut |h| on_hit(&path, h)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), matcher, on_hit);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let mut key_hits = Vec::new();
                matcher.scan_bytes(key.as_bytes(), &mut |h| key_hits.push(h));
                // A key that holds a secret must not show up in the paths of its findings.
                let shown = if key_hits.is_empty() {
                    key.clone()
                } else {
                    "[redacted key]".to_string()
                };
                let child = if path.is_empty() {
                    shown
                } else {
                    format!("{path}.{shown}")
                };
                for hit in key_hits {
                    on_hit(&format!("{child} (key)"), hit);
                }
                walk(item, child, matcher, on_hit);
            }
        }
        _ => {}
    }
}
