//! The layers point one way: `cli → front → session → provider → {source, observe} → secret`,
//! with `wire` below `front` and `session` only, `scan` apart, and `bound` (bounds on what
//! others choose) below everything. This reads every file under
//! `src/` and fails on an import that points up or sideways (which is also what an import cycle
//! between top-level modules needs), naming the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("bound", &[]),
    ("secret", &[]),
    ("source", &["secret", "bound"]),
    ("observe", &["secret", "bound"]),
    ("provider", &["source", "observe", "secret", "bound"]),
    ("wire", &["secret", "bound"]),
    (
        "session",
        &["provider", "observe", "wire", "secret", "bound"],
    ),
    (
        "front",
        &["session", "provider", "observe", "wire", "secret", "bound"],
    ),
    ("scan", &["secret", "bound"]),
    (
        "cli",
        &[
            "front", "session", "provider", "source", "observe", "wire", "scan", "secret", "bound",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names with `crate::`.
fn uses(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or_default();
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 {
            found.push(&after[..name_len]);
        } else if after.starts_with('{') {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            found.extend(
                group
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or_default())
                    .filter(|name| !name.is_empty()),
            );
        }
        rest = after;
    }
    found
}

#[test]
fn imports_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let layer = Path::new(first)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if layer == "lib" || layer == "main" {
            continue;
        }
        let Some(may_use) = allowed.get(layer.as_str()) else {
            wrong.push(format!(
                "{}: top-level module {layer} is not in tests/layers.rs's ALLOWED table",
                relative.display()
            ));
            continue;
        };
        seen += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for used in uses(line) {
                if used != layer && !may_use.contains(&used) {
                    wrong.push(format!(
                        "{}:{}: {layer} uses {used}, which is not below it",
                        relative.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(seen > 20, "read only {seen} files under {}", root.display());
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_use_that_points_up_is_found() {
    assert_eq!(uses("use crate::provider::Provider;"), ["provider"]);
    assert_eq!(
        uses("use crate::{front, session::x};"),
        ["front", "session"]
    );
    assert_eq!(
        uses("let p = crate::wire::h2::server(); // crate::cli"),
        ["wire"]
    );
    assert!(uses("/// see [`crate::cli`]").is_empty());
}
