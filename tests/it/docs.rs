//! The pages people follow hold only what works: README.md, CONTRIBUTING.md, docs/*.md and the
//! examples' own READMEs. Each relative link leads to a file (and a heading of it) that exists;
//! each `irsa-secrets` command, in a `sh` block or an inline code span, names a real command and
//! only flags its `--help` lists (a flag's meaning lives there, so the pages may only point at
//! it); each `scripts/` command exists and is executable; each `json` block parses; each `toml`
//! block is the body of an example file a test starts; each `yaml` block is part of an example
//! file (which tests/it/examples.rs validates).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every page: README.md, CONTRIBUTING.md, docs/*.md and examples/**/*.md.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("CONTRIBUTING.md")];
    pages.extend(files_under(&root().join("docs"), "md"));
    pages.extend(files_under(&root().join("examples"), "md"));
    assert!(pages.len() > 10, "the docs are where they should be");
    pages
}

/// The files under `dir` (recursively) whose names end in `.ext`, sorted.
fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced blocks of a page: (language, body).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.push(open.take().unwrap()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    out
}

/// The page's text outside fenced blocks.
fn prose(text: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside = !inside;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The targets of the page's Markdown links, outside code.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// What is wrong with the links of the page at `page` holding `text`, one line each.
fn broken_links(page: &Path, text: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    for link in links(text) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
        let target = page.parent().unwrap().join(file);
        let headings = if file.is_empty() {
            anchors(text)
        } else if target.exists() {
            if target.is_dir() || anchor.is_empty() {
                continue;
            }
            anchors(&read(&target))
        } else {
            wrong.push(format!("{}: {link}: no such file", page.display()));
            continue;
        };
        if !headings.contains(anchor) {
            wrong.push(format!("{}: {link}: no such heading", page.display()));
        }
    }
    wrong
}

#[test]
fn every_link_leads_to_a_page_and_heading_that_exist() {
    let wrong: Vec<String> = pages()
        .iter()
        .flat_map(|p| broken_links(p, &read(p)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_link_check_finds_a_broken_link() {
    let page = root().join("docs/page.md");
    let text = "# Top\n[a](../README.md#clients) [b](nope.md) [c](#top) [d](#bottom)\n";
    assert_eq!(
        broken_links(&page, text),
        [
            format!("{}: nope.md: no such file", page.display()),
            format!("{}: #bottom: no such heading", page.display()),
        ]
    );
}

/// The shell commands of a page: each `sh` block's lines (continuations joined, comments
/// dropped) and each inline code span that starts with `irsa-secrets `.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (lang, body) in blocks(text) {
        if lang != "sh" {
            continue;
        }
        let mut line = String::new();
        for raw in body.lines() {
            let raw = raw.split(" #").next().unwrap();
            if raw.trim_start().starts_with('#') {
                continue;
            }
            match raw.strip_suffix('\\') {
                Some(part) => line.push_str(part),
                None => {
                    line.push_str(raw);
                    out.push(std::mem::take(&mut line));
                }
            }
        }
    }
    for (i, span) in prose(text).split('`').enumerate() {
        if i % 2 == 1 && span.starts_with("irsa-secrets ") {
            out.push(span.to_string());
        }
    }
    out
}

/// Each command a shell line runs: split at `|`, `;`, `&&`, `||` and `$(`.
fn segments(line: &str) -> Vec<Vec<String>> {
    line.replace("$(", ";")
        .replace("&&", ";")
        .replace("||", ";")
        .replace('|', ";")
        .split(';')
        .map(|s| {
            s.split_whitespace()
                .map(|w| w.trim_matches(|c| c == '"' || c == ')').to_string())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

/// What is wrong with the commands of `text`, one line each; `help` gives the `--help` text of
/// a command path (e.g. `["mock", "write"]`), or None when there is no such command.
fn wrong_commands(text: &str, help: &mut dyn FnMut(&[String]) -> Option<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    for line in commands(text) {
        for words in segments(&line) {
            // `env VAR=... irsa-secrets`, `sudo irsa-secrets`, `exec ...`.
            let start = words
                .iter()
                .position(|w| !w.contains('=') && !["sudo", "exec", "env"].contains(&w.as_str()));
            let Some(start) = start else { continue };
            let program = words[start].as_str();
            if program.starts_with("scripts/") {
                let path = root().join(program);
                let runnable = std::fs::metadata(&path)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false);
                if !runnable {
                    wrong.push(format!("{line}: {program} is not an executable script"));
                }
                continue;
            }
            if program != "irsa-secrets" {
                continue;
            }
            let args = &words[start + 1..];
            // The command path: the leading words that are neither flags nor placeholders.
            let mut path: Vec<String> = Vec::new();
            let mut text = help(&path).expect("the top-level --help");
            for word in args {
                if word.starts_with('-') || word.chars().any(|c| c.is_ascii_uppercase()) {
                    break;
                }
                let mut next = path.clone();
                next.push(word.clone());
                match help(&next) {
                    Some(t) => {
                        path = next;
                        text = t;
                    }
                    None if path.is_empty() => {
                        wrong.push(format!("{line}: no command `{word}`"));
                        break;
                    }
                    None => break,
                }
            }
            // `run FLAGS -- CMD`: the flags are the helper's (proxy's), CMD is not ours.
            let args = if path == ["run"] {
                text = help(&["proxy".to_string()]).expect("proxy --help");
                let end = args.iter().position(|w| w == "--").unwrap_or(args.len());
                &args[..end]
            } else {
                args
            };
            for flag in args.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                if flag != "--help"
                    && !text.contains(&format!("{flag} "))
                    && !text.contains(&format!("{flag}\n"))
                    && !text.contains(&format!("{flag},"))
                    && !text.contains(&format!("{flag}="))
                    && !text.contains(&format!("{flag} <"))
                {
                    wrong.push(format!(
                        "{line}: `irsa-secrets {}` has no {flag}",
                        path.join(" ")
                    ));
                }
            }
        }
    }
    wrong
}

/// `irsa-secrets PATH... --help`, cached; None when the command does not exist.
fn binary_help() -> impl FnMut(&[String]) -> Option<String> {
    let mut cache: BTreeMap<Vec<String>, Option<String>> = BTreeMap::new();
    move |path: &[String]| {
        cache
            .entry(path.to_vec())
            .or_insert_with(|| {
                let out = Command::new(env!("CARGO_BIN_EXE_irsa-secrets"))
                    .args(path)
                    .arg("--help")
                    .output()
                    .unwrap();
                out.status
                    .success()
                    .then(|| String::from_utf8(out.stdout).unwrap())
            })
            .clone()
    }
}

#[test]
fn every_command_names_a_real_command_and_its_flags() {
    let mut help = binary_help();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        checked += commands(&text).len();
        for w in wrong_commands(&text, &mut help) {
            wrong.push(format!("{}: {w}", page.display()));
        }
    }
    assert!(checked > 30, "only {checked} commands found");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_command_check_finds_a_wrong_command_flag_and_script() {
    let mut help = binary_help();
    let text = "```sh\nirsa-secrets proxy --listen unix:///x \\\n  --no-such-flag\n\
                irsa-secrets frobnicate\nscripts/nope\nirsa-secrets mock write --force DIR\n\
                irsa-secrets run --mock --no-such -- docker build --pull .\n```\n\
                and `irsa-secrets probe --socket unix:///x --verbose-ish ID`\n";
    let wrong = wrong_commands(text, &mut help);
    assert_eq!(wrong.len(), 5, "{wrong:#?}");
    assert!(wrong[0].contains("`irsa-secrets proxy` has no --no-such-flag"));
    assert!(wrong[1].contains("no command `frobnicate`"));
    assert!(wrong[2].contains("scripts/nope is not an executable script"));
    assert!(wrong[3].contains("`irsa-secrets run` has no --no-such"));
    assert!(wrong[4].contains("`irsa-secrets probe` has no --verbose-ish"));
}

#[test]
fn every_json_block_parses() {
    let mut seen = 0;
    for page in pages() {
        for (lang, body) in blocks(&read(&page)) {
            if lang == "json" {
                seen += 1;
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&body) {
                    panic!("{}: a JSON block does not parse: {e}", page.display());
                }
            }
        }
    }
    assert!(seen >= 2);
}

/// An example file's body as a page shows it: less its opening comment lines.
fn body_of(file: &Path) -> String {
    read(file)
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The TOML blocks are example files (less their opening comments), which tests start
/// (examples/fleet/irsa-secrets.toml: tests/it/config_identity.rs): a page cannot show a file
/// that does not run.
#[test]
fn every_toml_block_is_an_example_file() {
    let examples: Vec<String> = files_under(&root().join("examples"), "toml")
        .iter()
        .map(|f| body_of(f))
        .collect();
    let mut seen = 0;
    for page in pages() {
        for (lang, body) in blocks(&read(&page)) {
            if lang == "toml" {
                seen += 1;
                assert!(
                    examples.contains(&body),
                    "{}: a TOML block that is no example file:\n{body}",
                    page.display()
                );
            }
        }
    }
    assert!(seen >= 1);
}

/// A YAML block is a part of an example file, whose validation is tests/it/examples.rs's.
#[test]
fn every_yaml_block_is_part_of_an_example_file() {
    let mut examples = files_under(&root().join("examples"), "yaml");
    examples.extend(files_under(&root().join("examples"), "yml"));
    let texts: Vec<String> = examples.iter().map(|f| read(f)).collect();
    for page in pages() {
        for (lang, body) in blocks(&read(&page)) {
            if lang == "yaml" || lang == "yml" {
                assert!(
                    texts.iter().any(|t| t.contains(&body)),
                    "{}: a YAML block that is in no example file:\n{body}",
                    page.display()
                );
            }
        }
    }
}

#[test]
fn the_readme_fits_on_a_few_screens() {
    let size = read(&root().join("README.md")).len();
    assert!(size <= 12 * 1024, "README.md is {size} bytes");
}

/// The `#[error("...")]` messages of the sources under `dir`: (file, message as written, with
/// `\`-newline continuations joined and `\"` unescaped).
fn error_messages(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for file in files_under(dir, "rs") {
        let text = read(&file);
        for (at, _) in text.match_indices("#[error(") {
            let rest = text[at + "#[error(".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else {
                continue;
            };
            let mut message = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\n') => {
                            chars = chars.as_str().trim_start().chars();
                        }
                        Some(escaped) => message.push(escaped),
                        None => break,
                    },
                    c => message.push(c),
                }
            }
            out.push((file.clone(), message));
        }
    }
    out
}

/// The words of `message` that hold whatever the placeholders are: its longest run between
/// placeholders (`{...}`, not `{{`), trimmed of spaces and `:;,()=`; None when that is under three
/// words (a message such as `{0}` or `cannot read {what}` has nothing to look for).
fn fixed_words(message: &str) -> Option<String> {
    let mut runs = vec![String::new()];
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some('{')) | ('}', Some('}')) => {
                chars.next();
                runs.last_mut().unwrap().push(c);
            }
            ('{', _) => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                runs.push(String::new());
            }
            (c, _) => runs.last_mut().unwrap().push(c),
        }
    }
    runs.into_iter()
        .map(|r| {
            r.trim_matches(|c: char| c.is_whitespace() || ":;,()=".contains(c))
                .to_string()
        })
        .max_by_key(|r| r.split_whitespace().count())
        .filter(|r| r.split_whitespace().count() >= 3)
}

/// Text as compared: backticks dropped, each run of white space one space.
fn flat(text: &str) -> String {
    text.replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error messages (file, words) whose fixed words `page` does not hold.
fn errors_not_in(page: &str, messages: &[(PathBuf, String)]) -> Vec<String> {
    let page = flat(page);
    messages
        .iter()
        .filter_map(|(file, message)| {
            let words = flat(&fixed_words(message)?);
            (!page.contains(&words)).then(|| format!("{}: {words:?}", file.display()))
        })
        .collect()
}

/// Every error the library can print has its entry in docs/troubleshooting.md: a new
/// `#[error(...)]` with no entry fails here, naming the file and the words to document.
#[test]
fn every_error_message_has_a_troubleshooting_entry() {
    let messages = error_messages(&root().join("src"));
    let checked = messages
        .iter()
        .filter(|(_, m)| fixed_words(m).is_some())
        .count();
    assert!(checked > 80, "only {checked} messages to look for");
    let missing = errors_not_in(&read(&root().join("docs/troubleshooting.md")), &messages);
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no entry for:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_troubleshooting_check_finds_a_missing_entry() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("e.rs");
    std::fs::write(
        &src,
        "#[error(\"the daemon at {upstream} did not \\\n     answer in time\")]\n\
         #[error(\"{0}\")]\n#[error(\"cannot read {what}\")]\n\
         #[error(\"{{x}} has no {{y}} at \\\"{at}\\\" here\")]\n",
    )
    .unwrap();
    let messages = error_messages(dir.path());
    let fixed: Vec<Option<String>> = messages.iter().map(|(_, m)| fixed_words(m)).collect();
    assert_eq!(
        fixed,
        [
            Some("did not answer in time".to_string()),
            None,
            None,
            Some("{x} has no {y} at \"".to_string()),
        ]
    );
    let page = "**`the daemon at X did not\nanswer in time`** means ...";
    let missing = errors_not_in(page, &messages);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].contains("{x} has no {y}"), "{missing:?}");
}
