//! `scan`: proves that no credential ended up in a built image. Reads a `docker save` archive or
//! an OCI layout (directory or tar) in place, checks every blob's size and sha256, and searches
//! file contents, file names, link targets, configs, manifests, annotations and attestations for
//! the values the helper serves (in their usual encodings) and for AWS credentials of any origin.
//!
//! Layout: [`store`] reads the archive, [`image`] walks the formats, [`layer`] streams a blob,
//! [`matcher`] searches bytes, [`decode`] finds and decodes the base64 and hex runs the matcher
//! searches again, [`json`] searches documents, [`report`] prints, [`docker`] fetches an image
//! from the Docker Engine.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::secret::SecretValue;

mod decode;
pub mod docker;
pub mod ignore;
mod image;
mod json;
mod layer;
mod matcher;
pub mod report;
mod store;
pub mod tarx;

/// A scan failure: the image could not be read, or it is malformed or hostile. Never holds a
/// secret value, nor any byte of the image: an error says what is wrong and where (a member's
/// index and offset, a document's line and column, a field's position), because whatever an
/// image holds (a file's start, a path, a JSON value) may be a credential, and errors go to CI
/// logs. Only names this crate makes (validated sha256 digests, the path given to `scan`) appear.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading failed.
    #[error("cannot read {what}")]
    Io {
        /// What was being read.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A blob's content does not hash to its digest: corrupted or tampered with.
    #[error("{what}: digest mismatch: expected {expected}, the content hashes to {actual}")]
    DigestMismatch {
        /// The blob.
        what: String,
        /// The digest its descriptor or name gives.
        expected: String,
        /// The digest of its bytes.
        actual: String,
    },
    /// A blob's size differs from its descriptor's.
    #[error("{what}: size mismatch: the descriptor says {expected} bytes, the blob has {actual}")]
    SizeMismatch {
        /// The blob.
        what: String,
        /// The declared size.
        expected: u64,
        /// The actual size.
        actual: u64,
    },
    /// A path climbs out of the archive (`../`).
    #[error(
        "{what}: {member}: its path climbs out of the archive root (a `..` component); refusing \
         a hostile archive (the path is not shown: it may hold a credential)"
    )]
    UnsafePath {
        /// The archive or layer.
        what: String,
        /// Which path: a member's index and offset, or the document field that names it.
        member: String,
    },
    /// A tar header is malformed or truncated.
    #[error(
        "{what}: {problem} at {place}; the archive is corrupt or hostile (its bytes are not \
         shown: they may hold a credential)"
    )]
    Tar {
        /// The archive or layer.
        what: String,
        /// The entry the header belongs to.
        place: tarx::Place,
        /// What is wrong, in words of our own.
        problem: &'static str,
    },
    /// The file given to `scan` is no image at all.
    #[error(
        "{what}: not a tar archive, an OCI layout or a docker-save archive ({problem}); scan the \
         output of `docker save`, an OCI layout (directory or tar), or docker://NAME"
    )]
    NotAnArchive {
        /// The file.
        what: String,
        /// What its first bytes are not.
        problem: &'static str,
    },
    /// The extension headers before one entry add up to more than allowed (each within the
    /// limit, but a hostile archive may chain any number of them).
    #[error(
        "{what}: tar extension headers of {size} bytes in all before {place} exceed the limit of \
         {limit} bytes; refusing a hostile archive"
    )]
    HugeHeaders {
        /// The archive or layer.
        what: String,
        /// The entry they describe.
        place: tarx::Place,
        /// Their total size so far.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A tar extension header (long name, PAX) is larger than allowed.
    #[error("{what}: a tar extension header of {size} bytes exceeds the limit of {limit} bytes; refusing a hostile archive")]
    HugeHeader {
        /// The archive or layer.
        what: String,
        /// The header's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Links chain too long or in a loop.
    #[error("{what}: link loop (or more than {limit} links in a chain)")]
    LinkLoop {
        /// The path that was being resolved.
        what: String,
        /// Links followed before giving up.
        limit: usize,
    },
    /// A compressed layer expands beyond the limits.
    #[error(
        "{what}: decompression bomb: more than {limit} bytes from {compressed} compressed bytes; \
             if the image is genuine, raise --max-layer-size or --max-ratio"
    )]
    Bomb {
        /// The layer.
        what: String,
        /// The decompressed size allowed for it.
        limit: u64,
        /// Its compressed size.
        compressed: u64,
    },
    /// The archive is not a valid image.
    #[error("{what}: {message}")]
    Format {
        /// The file or blob.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The Docker Engine could not provide the image.
    #[error("docker: {0}")]
    Docker(String),
}

/// The exact values to look for: what the helper serves, fetched at scan time.
#[derive(Default)]
pub struct Needles {
    values: Vec<(String, SecretValue)>,
}

impl Needles {
    /// Adds the value served under `id`.
    pub fn add(&mut self, id: impl Into<String>, value: SecretValue) {
        self.values.push((id.into(), value));
    }

    /// True when only the generic detectors will run.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &SecretValue)> {
        self.values.iter().map(|(id, v)| (id.as_str(), v))
    }
}

/// Bounds on what a hostile image may cost.
#[derive(Debug, Clone)]
pub struct ImageLimits {
    /// Most decompressed bytes of one layer.
    pub max_layer_bytes: u64,
    /// Most decompressed bytes per compressed byte of one layer (beyond a 16 MiB floor).
    pub max_ratio: u64,
    /// Largest tar extension header (long name, long link, PAX records).
    pub max_header_bytes: u64,
    /// Largest JSON document (index, manifest, config) read whole.
    pub max_json_bytes: u64,
    /// Most findings a report lists; the rest are counted (`omitted`), not kept.
    pub max_findings: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 64 << 30,
            max_ratio: 200,
            max_header_bytes: 1 << 20,
            max_json_bytes: 16 << 20,
            max_findings: 1000,
        }
    }
}

/// Bytes read so far and in total, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Blob bytes read so far.
    pub done: AtomicU64,
    /// Blob bytes to read in all; zero until the image has been walked.
    pub total: AtomicU64,
}

/// One place where a secret was found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Digest (or file name) of the blob or document it is in.
    pub blob: String,
    /// `layer`, `config`, `manifest`, `index` or `blob` (attestations and other artifacts).
    pub blob_kind: String,
    /// The file path in the layer, or the field path in a document; secrets in it are redacted.
    pub path: String,
    /// `content`, `file name`, `link target`, `PAX header`, or `field` for documents.
    pub place: String,
    /// Byte offset of the value in the file content, name or field.
    pub offset: u64,
    /// The detector or needle (`secret ID`, `secret ID (base64)`, `aws-access-key-id`...).
    pub detector: String,
    /// A few leading characters and the redacted length: never the value.
    pub snippet: String,
    /// What `--ignore` files list to accept this finding: see [`Finding::new`].
    pub fingerprint: String,
}

impl Finding {
    /// A finding of `hit` in `blob` at `path`, with its fingerprint: 16 hex digits of the
    /// sha256 of the detector, the blob's kind, the path, the place and the sha256 of the
    /// matched bytes. Those are what stays the same when an image is rebuilt from the same
    /// sources (the blob digest and the offset change with any other edit), so an ignore file
    /// keeps working in CI; and the same value at another path, or another value at this one,
    /// is a new finding. The value enters only through its sha256, and the result is cut to 64
    /// bits: nothing of the value can be read from it, and testing a guess against it means
    /// guessing the whole credential. No key is mixed in: one shared by every CI run (as
    /// stability needs) would be no secret.
    pub fn new(blob: &str, blob_kind: &str, path: &str, place: &str, hit: matcher::Hit) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for part in [
            &b"irsa-secrets scan fingerprint v1"[..],
            hit.detector.as_bytes(),
            blob_kind.as_bytes(),
            path.as_bytes(),
            place.as_bytes(),
            &hit.value_digest,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Finding {
            blob: blob.to_string(),
            blob_kind: blob_kind.to_string(),
            path: path.to_string(),
            place: place.to_string(),
            offset: hit.offset,
            detector: hit.detector,
            snippet: hit.snippet,
            fingerprint: hex::encode(&h.finalize()[..8]),
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// What was scanned, as given.
    pub image: String,
    /// Findings, in image order (those an ignore file accepts left out).
    pub findings: Vec<Finding>,
    /// Findings an ignore file accepted.
    pub ignored: usize,
    /// Findings past [`ImageLimits::max_findings`]: counted, not listed.
    pub omitted: u64,
    /// Things the user should know (skipped platforms, unsearched needles).
    pub notes: Vec<String>,
    /// Documents and blobs searched.
    pub blobs: usize,
    /// Blob bytes read.
    pub bytes: u64,
}

/// How a scan runs: its bounds, where it reports progress, which findings it accepts.
#[derive(Default)]
pub struct Options<'a> {
    /// Bounds on what a hostile image may cost.
    pub limits: ImageLimits,
    /// Where to count bytes read, for a progress display.
    pub progress: Option<&'a Progress>,
    /// Known false positives: counted as ignored, not listed.
    pub ignore: Option<&'a ignore::Ignore>,
}

/// Scans an image archive or layout at `path` with default limits; the entry point for tests
/// and other programs.
pub fn scan_path(path: &Path, needles: &Needles) -> Result<Report, ScanError> {
    scan_path_with(path, needles, &Options::default())
}

/// Scans an image archive or layout at `path`.
pub fn scan_path_with(
    path: &Path,
    needles: &Needles,
    options: &Options<'_>,
) -> Result<Report, ScanError> {
    let store = store::Store::open(path, &options.limits)?;
    scan_store(&store, path.display().to_string(), needles, options)
}

/// Scans an image tar already open as `file` (e.g. spooled from the Docker Engine).
pub fn scan_file(
    file: File,
    name: &str,
    needles: &Needles,
    options: &Options<'_>,
) -> Result<Report, ScanError> {
    let store = store::Store::index(file, name, &options.limits)?;
    scan_store(&store, name.to_string(), needles, options)
}

/// Where findings go as they are found: those the ignore file accepts are counted, the first
/// [`ImageLimits::max_findings`] others kept, the rest counted. A hostile image full of matches
/// costs a counter, not memory.
struct Findings<'a> {
    report: Report,
    ignore: Option<&'a ignore::Ignore>,
    /// Fingerprints the ignore file accepted (at most its own size).
    used: std::collections::HashSet<String>,
    max: usize,
}

impl Findings<'_> {
    fn add(&mut self, finding: Finding) {
        if self.ignore.is_some_and(|i| i.accepts(&finding.fingerprint)) {
            self.report.ignored += 1;
            self.used.insert(finding.fingerprint);
        } else if self.report.findings.len() < self.max {
            self.report.findings.push(finding);
        } else {
            self.report.omitted += 1;
        }
    }

    fn finish(mut self) -> Report {
        if let Some(note) = self.ignore.and_then(|i| i.stale_note(&self.used)) {
            self.report.notes.push(note);
        }
        self.report
    }
}

fn scan_store(
    store: &store::Store,
    name: String,
    needles: &Needles,
    options: &Options<'_>,
) -> Result<Report, ScanError> {
    let (limits, progress) = (&options.limits, options.progress);
    let (matcher, mut notes) = matcher::Matcher::new(needles);
    let contents = image::contents(store, &name, limits)?;
    notes.extend(contents.notes);
    let total = contents.blobs.iter().map(|b| b.size).sum();
    if let Some(p) = progress {
        p.total.store(total, Ordering::Relaxed);
    }
    let mut findings = Findings {
        report: Report {
            image: name,
            notes,
            blobs: contents.docs.len() + contents.blobs.len(),
            bytes: total,
            ..Report::default()
        },
        ignore: options.ignore,
        used: Default::default(),
        max: limits.max_findings,
    };
    for doc in &contents.docs {
        search_document(&doc.bytes, &doc.name, doc.kind, &matcher, &mut findings);
    }
    for blob in &contents.blobs {
        // Small JSON blobs (attestations) are searched field by field, after their digest check.
        let json =
            !blob.tar && blob.media_type.contains("json") && blob.size <= limits.max_json_bytes;
        if json {
            let bytes = blob.section.read_all(limits.max_json_bytes, &blob.digest)?;
            let actual = format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
            );
            if actual != blob.digest {
                return Err(ScanError::DigestMismatch {
                    what: format!("blob {}", blob.digest),
                    expected: blob.digest.clone(),
                    actual,
                });
            }
            if let Some(p) = progress {
                p.done.fetch_add(blob.size, Ordering::Relaxed);
            }
            search_document(&bytes, &blob.digest, "blob", &matcher, &mut findings);
        } else {
            layer::scan(blob, &matcher, limits, progress, &mut |f| findings.add(f))?;
        }
    }
    Ok(findings.finish())
}

/// Searches a JSON document field by field; a document that does not parse as JSON is searched
/// as plain bytes.
fn search_document(
    bytes: &[u8],
    name: &str,
    kind: &str,
    matcher: &matcher::Matcher,
    findings: &mut Findings<'_>,
) {
    let mut push =
        |path: &str, hit: matcher::Hit| findings.add(Finding::new(name, kind, path, "field", hit));
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(doc) => json::search(&doc, matcher, &mut push),
        Err(_) => matcher.scan_bytes(bytes, &mut |h| push("", h)),
    }
}

/// Bytes made safe to print: valid UTF-8 kept, the rest escaped, control characters escaped.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
