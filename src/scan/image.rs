//! The image formats: finds every index, manifest, config, layer and attestation blob of an OCI
//! layout (every platform of a multi-platform index) or a classic `docker save` archive, reads
//! the JSON documents with `oci-spec` after checking their size and sha256, and lists the blobs
//! to stream (their digests are checked while they are streamed).

use std::collections::HashSet;

use oci_spec::image::{Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::store::{Section, Store};
use super::{ImageLimits, ScanError};

/// How deep indexes may nest (an index of indexes of manifests is already unusual).
const MAX_DEPTH: usize = 4;

/// A verified JSON document, searched field by field.
pub struct Doc {
    /// Its digest, or its file name when it has none (`index.json`, `manifest.json`).
    pub name: String,
    /// What it is: `index`, `manifest`, `config`.
    pub kind: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A blob to stream: a layer (tar) or anything else (attestations), hashed as it is read.
pub struct Blob {
    /// The digest its bytes must hash to, `sha256:HEX`.
    pub digest: String,
    /// The size the descriptor declares.
    pub size: u64,
    /// The media type, for reports.
    pub media_type: String,
    /// Where its bytes are.
    pub section: Section,
    /// True for layer tars; other blobs are searched as plain bytes.
    pub tar: bool,
}

/// Everything an image holds, in the order it is searched.
#[derive(Default)]
pub struct Contents {
    /// Indexes, manifests and configs.
    pub docs: Vec<Doc>,
    /// Layers and other blobs.
    pub blobs: Vec<Blob>,
    /// Things the user should know (skipped platforms, unverifiable names).
    pub notes: Vec<String>,
}

/// The classic `docker save` manifest.json entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

/// Lists an image's documents and blobs, verifying the documents.
pub fn contents(store: &Store, name: &str, limits: &ImageLimits) -> Result<Contents, ScanError> {
    let mut walk = Walk {
        store,
        limits,
        contents: Contents::default(),
        seen: HashSet::new(),
    };
    if store.exists("index.json") {
        let bytes = store.read("index.json", limits.max_json_bytes, "index.json")?;
        let index: ImageIndex = parse(&bytes, "index.json")?;
        walk.doc("index.json".into(), "index", bytes);
        for (i, desc) in index.manifests().iter().enumerate() {
            walk.visit(desc, 1, true, &format!("index.json manifests[{i}]"))?;
        }
    } else if store.exists("manifest.json") {
        walk.docker_save()?;
    } else {
        return Err(ScanError::Format {
            what: name.to_string(),
            message: "neither index.json (OCI layout) nor manifest.json (docker save) found: \
                      not an image archive"
                .into(),
        });
    }
    Ok(walk.contents)
}

struct Walk<'a> {
    store: &'a Store,
    limits: &'a ImageLimits,
    contents: Contents,
    seen: HashSet<String>,
}

impl Walk<'_> {
    fn doc(&mut self, name: String, kind: &'static str, bytes: Vec<u8>) {
        self.contents.docs.push(Doc { name, kind, bytes });
    }

    /// Follows a descriptor (`field` names it in errors); `optional` ones (an index's children)
    /// may be absent from the archive, as `docker save` leaves out platforms it does not have.
    fn visit(
        &mut self,
        desc: &Descriptor,
        depth: usize,
        optional: bool,
        field: &str,
    ) -> Result<(), ScanError> {
        let path = blob_path(desc, field)?;
        let digest = desc.digest().to_string();
        if !self.seen.insert(digest.clone()) {
            return Ok(());
        }
        let media_type = desc.media_type().to_string();
        // Foreign (Windows base) layers are never stored in archives: they are fetched from URLs.
        let foreign = media_type.contains("foreign") || media_type.contains("nondistributable");
        if (optional || foreign) && !self.store.exists(&path) {
            let platform = desc
                .platform()
                .as_ref()
                .map(|p| {
                    let (os, arch) = (p.os().to_string(), p.architecture().to_string());
                    format!(" ({}/{})", word(&os), word(&arch))
                })
                .unwrap_or_default();
            self.contents
                .notes
                .push(format!("{digest}{platform} is not in the archive: skipped"));
            return Ok(());
        }
        let section = self.store.section(&path, &digest)?;
        check_size(&section, desc.size(), &digest)?;
        let kind = if media_type.contains("index") || media_type.contains("manifest.list") {
            "index"
        } else if media_type.contains("manifest") {
            "manifest"
        } else {
            self.contents.blobs.push(Blob {
                digest,
                size: desc.size(),
                tar: media_type.contains(".tar"),
                media_type,
                section,
            });
            return Ok(());
        };
        if depth > MAX_DEPTH {
            return Err(ScanError::Format {
                what: digest,
                message: format!("indexes nest deeper than {MAX_DEPTH} levels"),
            });
        }
        let bytes = self.verified(&section, desc.digest().digest(), &digest)?;
        if kind == "index" {
            let index: ImageIndex = parse(&bytes, &digest)?;
            self.doc(digest.clone(), kind, bytes);
            for (i, child) in index.manifests().iter().enumerate() {
                self.visit(child, depth + 1, true, &format!("{digest} manifests[{i}]"))?;
            }
        } else {
            let manifest: ImageManifest = parse(&bytes, &digest)?;
            self.doc(digest.clone(), kind, bytes);
            self.config(manifest.config(), &format!("{digest} config"))?;
            for (i, layer) in manifest.layers().iter().enumerate() {
                self.visit(layer, depth + 1, false, &format!("{digest} layers[{i}]"))?;
            }
        }
        Ok(())
    }

    fn config(&mut self, desc: &Descriptor, field: &str) -> Result<(), ScanError> {
        let path = blob_path(desc, field)?;
        let digest = desc.digest().to_string();
        if !self.seen.insert(digest.clone()) {
            return Ok(());
        }
        let section = self.store.section(&path, &digest)?;
        check_size(&section, desc.size(), &digest)?;
        let bytes = self.verified(&section, desc.digest().digest(), &digest)?;
        self.doc(digest, "config", bytes);
        Ok(())
    }

    /// The classic `docker save` layout: manifest.json names a config file (named after its
    /// digest) and uncompressed layer tars (whose digests are the config's diff ids). Its file
    /// names are hostile input: errors and notes name them by their place in manifest.json.
    fn docker_save(&mut self) -> Result<(), ScanError> {
        let bytes =
            self.store
                .read("manifest.json", self.limits.max_json_bytes, "manifest.json")?;
        let entries: Vec<DockerManifest> = parse(&bytes, "manifest.json")?;
        self.doc("manifest.json".into(), "manifest", bytes);
        for (i, entry) in entries.into_iter().enumerate() {
            let label = format!("manifest.json [{i}].Config");
            let section = self.store.section(&entry.config, &label)?;
            let hex = digest_in_name(&entry.config);
            let bytes = match &hex {
                Some(hex) => self.verified(&section, hex, &label)?,
                None => {
                    self.contents.notes.push(format!(
                        "the config {label} names is not named after its digest: not verified"
                    ));
                    section.read_all(self.limits.max_json_bytes, &label)?
                }
            };
            let config: ImageConfiguration = parse(&bytes, &label)?;
            let name = hex.map_or(label.clone(), |h| format!("sha256:{h}"));
            if self.seen.insert(name.clone()) {
                self.doc(name.clone(), "config", bytes);
            }
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != entry.layers.len() {
                return Err(ScanError::Format {
                    what: label,
                    message: format!(
                        "lists {} layers but manifest.json has {}",
                        diff_ids.len(),
                        entry.layers.len()
                    ),
                });
            }
            for (j, (layer, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
                let label = format!("manifest.json [{i}].Layers[{j}]");
                let digest = match digest_in_name(layer).or_else(|| sha256_hex(diff_id)) {
                    Some(hex) => format!("sha256:{hex}"),
                    None => {
                        return Err(ScanError::Format {
                            what: format!("{name} rootfs.diff_ids[{j}]"),
                            message: "the diff_id is not a sha256 digest (sha256: and 64 \
                                      lower-case hex digits)"
                                .into(),
                        })
                    }
                };
                if !self.seen.insert(digest.clone()) {
                    continue;
                }
                let section = self.store.section(layer, &label)?;
                self.contents.blobs.push(Blob {
                    digest,
                    size: section.len(),
                    media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
                    section,
                    tar: true,
                });
            }
        }
        Ok(())
    }

    /// Reads a JSON document and checks it hashes to `hex`.
    fn verified(&self, section: &Section, hex: &str, what: &str) -> Result<Vec<u8>, ScanError> {
        let bytes = section.read_all(self.limits.max_json_bytes, what)?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != hex {
            return Err(ScanError::DigestMismatch {
                what: what.to_string(),
                expected: format!("sha256:{hex}"),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(bytes)
    }
}

/// Where an OCI layout keeps a descriptor's blob; only sha256 is supported. `field` names the
/// descriptor in errors (its digest is not shown: it is not known to be one).
fn blob_path(desc: &Descriptor, field: &str) -> Result<String, ScanError> {
    let digest = desc.digest();
    match sha256_hex(digest.as_ref()) {
        Some(hex) if *digest.algorithm() == DigestAlgorithm::Sha256 => {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(ScanError::Format {
            what: field.to_string(),
            message: "the digest is not a sha256 digest; only sha256 is supported".into(),
        }),
    }
}

/// The hex of `sha256:HEX` when HEX is 64 lower-case hex digits.
fn sha256_hex(digest: &str) -> Option<String> {
    digest.strip_prefix("sha256:").and_then(hex64)
}

/// `s` when it is 64 lower-case hex digits.
fn hex64(s: &str) -> Option<String> {
    (s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| s.to_string())
}

/// A platform word from a descriptor, shown only when it looks like one (`linux`, `arm64`,
/// `v8`): the field is hostile input.
fn word(s: &str) -> &str {
    let plain = s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if plain {
        s
    } else {
        "?"
    }
}

fn check_size(section: &Section, declared: u64, what: &str) -> Result<(), ScanError> {
    if section.len() != declared {
        return Err(ScanError::SizeMismatch {
            what: what.to_string(),
            expected: declared,
            actual: section.len(),
        });
    }
    Ok(())
}

/// The sha256 a `docker save` file name carries: `HEX.json`, `blobs/sha256/HEX`.
fn digest_in_name(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    hex64(name.strip_suffix(".json").unwrap_or(name))
}

/// Parses a document. serde_json's messages quote the offending value (`invalid type: string
/// "..."`), so only its category and position are shown.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ScanError> {
    use serde_json::error::Category;
    serde_json::from_slice(bytes).map_err(|e| {
        let problem = match e.classify() {
            Category::Syntax => "it is not valid JSON",
            Category::Eof => "it ends before the JSON document does",
            Category::Data => "a field is missing or has a type or value the format does not allow",
            Category::Io => "it cannot be read",
        };
        ScanError::Format {
            what: what.to_string(),
            message: format!(
                "invalid document: {problem} (line {}, column {}; the value is not shown)",
                e.line(),
                e.column()
            ),
        }
    })
}
