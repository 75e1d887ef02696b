//! The layers point one way: `cli → plan → front → session → provider → {source, observe} → secret`,
//! with `wire` below `front` and `session` only, `scan` apart, and `bound` (bounds on what
//! others choose) below everything. This reads every file under
//! `src/` and fails on an import that points up or sideways (which is also what an import cycle
//! between top-level modules needs), naming the file and the line. Inside a layer, modules that
//! share a parent may use one another, but never in a cycle, at any depth (tests aside).

use std::collections::{BTreeMap, BTreeSet};
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
        "plan",
        &["front", "provider", "source", "observe", "secret", "bound"],
    ),
    (
        "cli",
        &[
            "plan", "front", "session", "provider", "source", "observe", "wire", "scan", "secret",
            "bound",
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

/// A file's module path: `src/front/daemon.rs` is `front::daemon`, `src/source/ecr/mod.rs` is
/// `source::ecr`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The absolute paths a line of code in `module` names through `crate::` or `super::` (one level
/// of `{...}` groups expanded), e.g. `use super::{docker, Io};` in `front::daemon` names
/// `front::docker` and `front::Io`.
fn references(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let code = line.split("//").next().unwrap_or_default();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let starts = rest.starts_with("crate::") || rest.starts_with("super::");
        let joined = code[..at].ends_with(|c: char| ident(c) || c == ':');
        if !starts || joined {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut tail = rest;
        if let Some(after) = tail.strip_prefix("crate::") {
            tail = after;
        } else {
            base = module.to_vec();
            while let Some(after) = tail.strip_prefix("super::") {
                base.pop();
                tail = after;
            }
        }
        let path_len = tail
            .find(|c: char| !(ident(c) || c == ':'))
            .unwrap_or(tail.len());
        let (path, after) = tail.split_at(path_len);
        let mut full = base;
        full.extend(
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let mut one = full.clone();
                one.extend(
                    item.trim()
                        .split("::")
                        .filter(|s| !s.is_empty() && s.chars().all(ident))
                        .map(str::to_string),
                );
                found.push(one);
            }
        } else {
            found.push(full);
        }
        at += rest.len() - tail.len() + path_len;
    }
    found
}

/// The edge a reference makes between two modules that share a parent: from the ancestor of
/// `from` to the ancestor of `to` just below their common prefix. None when one contains the
/// other (a module using its parent's items or its own children).
fn sibling_edge(from: &[String], to: &[String]) -> Option<(Vec<String>, Vec<String>)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    (common < from.len() && common < to.len())
        .then(|| (from[..=common].to_vec(), to[..=common].to_vec()))
}

/// A cycle in `edges`, as the modules along it, if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        done: &mut BTreeSet<Vec<String>>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|n| n == node) {
            let mut cycle: Vec<String> = stack[start..].iter().map(|n| n.join("::")).collect();
            cycle.push(node.join("::"));
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut done, &mut Vec::new()))
}

/// Every file under `src/` with its module path and text.
fn modules() -> Vec<(PathBuf, Vec<String>, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&root).unwrap().to_path_buf();
            let module = module_of(&relative);
            let text = std::fs::read_to_string(&file).unwrap();
            (relative, module, text)
        })
        .collect()
}

#[test]
fn no_module_cycle_at_any_depth() {
    let files = modules();
    let known: BTreeSet<Vec<String>> = files.iter().map(|(_, m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (_, module, text) in &files {
        // A module's own tests may use a sibling that uses the module (a fixture); the cycle
        // that matters is in the code that ships.
        for line in text.lines().take_while(|l| l.trim() != "#[cfg(test)]") {
            for mut target in references(line, module) {
                // An item's path ends in the module that defines it.
                while !target.is_empty() && !known.contains(&target) {
                    target.pop();
                }
                if let Some((from, to)) = sibling_edge(module, &target) {
                    edges.entry(from).or_default().insert(to);
                }
            }
        }
    }
    assert!(
        edges.keys().any(|m| m.len() > 1),
        "found no edge between modules inside a layer: the reader is broken"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("modules use one another in a cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn a_cycle_between_siblings_is_found() {
    let daemon = module_of(Path::new("front/daemon.rs"));
    let docker = module_of(Path::new("front/docker.rs"));
    assert_eq!(daemon, ["front", "daemon"]);
    assert_eq!(module_of(Path::new("source/ecr/mod.rs")), ["source", "ecr"]);
    assert_eq!(
        references("use super::{docker, Io};", &daemon),
        [vec!["front", "docker"], vec!["front", "Io"]]
    );
    assert_eq!(
        references("use crate::front::daemon::{DaemonError, Failure};", &docker),
        [
            vec!["front", "daemon", "DaemonError"],
            vec!["front", "daemon", "Failure"]
        ]
    );
    assert_eq!(
        references(
            "let x = super::super::wire::h2::server();",
            &["source", "sts", "x"].map(String::from)
        ),
        [vec!["source", "wire", "h2", "server"]]
    );
    assert!(references("/// see [`super::docker`]", &daemon).is_empty());
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, to) in [(&daemon, &docker), (&docker, &daemon)] {
        let (a, b) = sibling_edge(from, to).unwrap();
        edges.entry(a).or_default().insert(b);
    }
    assert_eq!(
        find_cycle(&edges).unwrap(),
        ["front::daemon", "front::docker", "front::daemon"]
    );
    assert_eq!(sibling_edge(&daemon, &["front".to_string()]), None);
}

#[test]
fn imports_point_one_way() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for (relative, module, text) in modules() {
        let layer = module[0].as_str();
        if layer == "lib" || layer == "main" {
            continue;
        }
        let Some(may_use) = allowed.get(layer) else {
            wrong.push(format!(
                "{}: top-level module {layer} is not in tests/it/layers.rs's ALLOWED table",
                relative.display()
            ));
            continue;
        };
        seen += 1;
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
    assert!(seen > 20, "read only {seen} files under src/");
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
