//! The image formats: finds every index, manifest, config, layer and attestation blob of an OCI
//! layout (every platform of a multi-platform index) or a classic `docker save` archive, reads
//! the JSON documents with `oci-spec` after checking their size and sha256, and lists the blobs
//! to stream (their digests are checked while they are streamed).

use std::collections::HashSet;

use oci_spec::image::{Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::store::{Section, Store};
use super::{Limits, ScanError};

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
pub struct Plan {
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
pub fn plan(store: &Store, name: &str, limits: &Limits) -> Result<Plan, ScanError> {
    let mut walk = Walk {
        store,
        limits,
        plan: Plan::default(),
        seen: HashSet::new(),
    };
    if store.exists("index.json") {
        let bytes = store.read("index.json", limits.max_json_bytes)?;
        let index: ImageIndex = parse(&bytes, "index.json")?;
        walk.doc("index.json".into(), "index", bytes);
        for desc in index.manifests() {
            walk.visit(desc, 1, true)?;
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
    Ok(walk.plan)
}

struct Walk<'a> {
    store: &'a Store,
    limits: &'a Limits,
    plan: Plan,
    seen: HashSet<String>,
}

impl Walk<'_> {
    fn doc(&mut self, name: String, kind: &'static str, bytes: Vec<u8>) {
        self.plan.docs.push(Doc { name, kind, bytes });
    }

    /// Follows a descriptor; `optional` ones (an index's children) may be absent from the
    /// archive, as `docker save` leaves out platforms it does not have.
    fn visit(&mut self, desc: &Descriptor, depth: usize, optional: bool) -> Result<(), ScanError> {
        let digest = desc.digest().to_string();
        if !self.seen.insert(digest.clone()) {
            return Ok(());
        }
        let path = blob_path(desc)?;
        let media_type = desc.media_type().to_string();
        // Foreign (Windows base) layers are never stored in archives: they are fetched from URLs.
        let foreign = media_type.contains("foreign") || media_type.contains("nondistributable");
        if (optional || foreign) && !self.store.exists(&path) {
            let platform = desc
                .platform()
                .as_ref()
                .map(|p| format!(" ({}/{})", p.os(), p.architecture()))
                .unwrap_or_default();
            self.plan
                .notes
                .push(format!("{digest}{platform} is not in the archive: skipped"));
            return Ok(());
        }
        let section = self.store.section(&path)?;
        check_size(&section, desc.size(), &digest)?;
        let kind = if media_type.contains("index") || media_type.contains("manifest.list") {
            "index"
        } else if media_type.contains("manifest") {
            "manifest"
        } else {
            self.plan.blobs.push(Blob {
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
            self.doc(digest, kind, bytes);
            for child in index.manifests() {
                self.visit(child, depth + 1, true)?;
            }
        } else {
            let manifest: ImageManifest = parse(&bytes, &digest)?;
            self.doc(digest, kind, bytes);
            self.config(manifest.config())?;
            for layer in manifest.layers() {
                self.visit(layer, depth + 1, false)?;
            }
        }
        Ok(())
    }

    fn config(&mut self, desc: &Descriptor) -> Result<(), ScanError> {
        let digest = desc.digest().to_string();
        if !self.seen.insert(digest.clone()) {
            return Ok(());
        }
        let section = self.store.section(&blob_path(desc)?)?;
        check_size(&section, desc.size(), &digest)?;
        let bytes = self.verified(&section, desc.digest().digest(), &digest)?;
        self.doc(digest, "config", bytes);
        Ok(())
    }

    /// The classic `docker save` layout: manifest.json names a config file (named after its
    /// digest) and uncompressed layer tars (whose digests are the config's diff ids).
    fn docker_save(&mut self) -> Result<(), ScanError> {
        let bytes = self
            .store
            .read("manifest.json", self.limits.max_json_bytes)?;
        let entries: Vec<DockerManifest> = parse(&bytes, "manifest.json")?;
        self.doc("manifest.json".into(), "manifest", bytes);
        for entry in entries {
            let section = self.store.section(&entry.config)?;
            let hex = digest_in_name(&entry.config);
            let bytes = match &hex {
                Some(hex) => self.verified(&section, hex, &entry.config)?,
                None => {
                    self.plan.notes.push(format!(
                        "config {} is not named after its digest: not verified",
                        entry.config
                    ));
                    section.read_all(self.limits.max_json_bytes, &entry.config)?
                }
            };
            let config: ImageConfiguration = parse(&bytes, &entry.config)?;
            let name = hex.map_or(entry.config.clone(), |h| format!("sha256:{h}"));
            if self.seen.insert(name.clone()) {
                self.doc(name, "config", bytes);
            }
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != entry.layers.len() {
                return Err(ScanError::Format {
                    what: entry.config,
                    message: format!(
                        "lists {} layers but manifest.json has {}",
                        diff_ids.len(),
                        entry.layers.len()
                    ),
                });
            }
            for (layer, diff_id) in entry.layers.iter().zip(diff_ids) {
                let digest = match digest_in_name(layer) {
                    Some(hex) => format!("sha256:{hex}"),
                    None => diff_id.clone(),
                };
                if !digest.starts_with("sha256:") {
                    return Err(unsupported(&digest));
                }
                if !self.seen.insert(digest.clone()) {
                    continue;
                }
                let section = self.store.section(layer)?;
                self.plan.blobs.push(Blob {
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

/// Where an OCI layout keeps a descriptor's blob; only sha256 is supported.
fn blob_path(desc: &Descriptor) -> Result<String, ScanError> {
    let digest = desc.digest();
    if *digest.algorithm() != DigestAlgorithm::Sha256 {
        return Err(unsupported(digest.as_ref()));
    }
    Ok(format!("blobs/sha256/{}", digest.digest()))
}

fn unsupported(digest: &str) -> ScanError {
    ScanError::Format {
        what: digest.to_string(),
        message: "only sha256 digests are supported".into(),
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
    let hex = name.strip_suffix(".json").unwrap_or(name);
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| hex.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ScanError> {
    serde_json::from_slice(bytes).map_err(|e| ScanError::Format {
        what: what.to_string(),
        message: format!("invalid JSON document: {e}"),
    })
}
