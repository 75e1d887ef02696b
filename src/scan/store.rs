//! Random access to the files of an image archive without unpacking it: a directory (OCI
//! layout), or a tar file (`docker save`, OCI tar) indexed once by its headers, whose members are
//! then read in place with positioned reads. Paths are checked, links followed within the
//! archive only, and link loops refused. Paths come from hostile input (member names, link
//! targets, `docker save`'s manifest.json), so errors name a file by a label its caller gives
//! (a digest, `manifest.json entry 0 Config`), never by its path.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{tarx, ImageLimits, ScanError};

/// Most links followed to reach one member.
const MAX_LINKS: usize = 16;
/// Most members an image archive may have (`docker save` writes a few per layer); bounds the
/// index's memory.
const MAX_MEMBERS: usize = 100_000;

/// A member's bytes within a file: what every blob reader reads from.
#[derive(Debug, Clone)]
pub struct Section {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl Section {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Reads at `pos` (relative to the section) into `buf`, never past the section's end.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.read_at(&mut buf[..n], self.offset + pos)
    }

    /// Reads the whole section, refusing one larger than `max` bytes.
    pub fn read_all(&self, max: u64, what: &str) -> Result<Vec<u8>, ScanError> {
        if self.len > max {
            return Err(ScanError::Format {
                what: what.to_string(),
                message: format!(
                    "{} bytes is more than the {max} bytes allowed for a JSON document",
                    self.len
                ),
            });
        }
        let mut buf = vec![0; self.len as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .read_at(done as u64, &mut buf[done..])
                .map_err(|source| ScanError::Io {
                    what: what.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(ScanError::Io {
                    what: what.to_string(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            done += n;
        }
        Ok(buf)
    }
}

/// One member of an indexed tar: where its data is, or where it points.
pub enum Member {
    File {
        offset: u64,
        len: u64,
    },
    /// A symlink (target relative to the member's directory) or hard link (target from the root).
    Link(String),
    Other,
}

/// An image archive's files.
pub enum Store {
    /// A directory on disk.
    Dir(PathBuf),
    /// A tar file and its index.
    Tar {
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

impl Store {
    /// Opens a directory or indexes a tar file.
    pub fn open(path: &Path, limits: &ImageLimits) -> Result<Store, ScanError> {
        let what = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| ScanError::Io {
            what: what.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(Store::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(|source| ScanError::Io {
            what: what.clone(),
            source,
        })?;
        Store::index(file, &what, limits)
    }

    /// Indexes an open tar file (`what` names it in errors), seeking over member data.
    pub fn index(file: File, what: &str, limits: &ImageLimits) -> Result<Store, ScanError> {
        Self::index_tar(file, what, limits).map_err(|e| match e {
            // The first header is not one: this is no tar at all (and no layout directory).
            ScanError::Tar { place, .. } if place.member == 0 => ScanError::NotAnArchive {
                what: what.to_string(),
                problem: "its start is not a tar header",
            },
            e => e,
        })
    }

    fn index_tar(file: File, what: &str, limits: &ImageLimits) -> Result<Store, ScanError> {
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).unwrap_or(0);
        if n >= 2 && (magic[..2] == [0x1f, 0x8b] || magic == [0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(ScanError::Format {
                what: what.to_string(),
                message: "the archive is compressed: decompress it first (e.g. gunzip)".into(),
            });
        }
        let file = Arc::new(file);
        let mut members = HashMap::new();
        let (watched, seen) = tarx::watch(&*file);
        let mut archive = tar::Archive::new(watched);
        let entries = archive
            .entries_with_seek()
            .map_err(|source| ScanError::Io {
                what: what.to_string(),
                source,
            })?
            .raw(true);
        tarx::for_each(
            entries,
            &seen,
            what,
            limits.max_header_bytes,
            |meta, place, entry| {
                // tarx refuses `..` components, so only a path that is all `.` and `/` is left.
                let name = normalize(&String::from_utf8_lossy(&meta.path)).ok_or_else(|| {
                    ScanError::UnsafePath {
                        what: what.to_string(),
                        member: place.to_string(),
                    }
                })?;
                let member = match (meta.kind, &meta.link) {
                    (tar::EntryType::Symlink, Some(target)) => {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        Member::Link(format!("{dir}/{}", String::from_utf8_lossy(target)))
                    }
                    (tar::EntryType::Link, Some(target)) => {
                        Member::Link(String::from_utf8_lossy(target).into_owned())
                    }
                    (kind, _) if kind.is_file() || kind == tar::EntryType::Continuous => {
                        Member::File {
                            offset: entry.raw_file_position(),
                            len: meta.size,
                        }
                    }
                    _ => Member::Other,
                };
                members.insert(name, member);
                if members.len() > MAX_MEMBERS {
                    return Err(ScanError::Format {
                        what: what.to_string(),
                        message: format!("more than {MAX_MEMBERS} files: not an image archive"),
                    });
                }
                Ok(())
            },
        )?;
        Ok(Store::Tar { file, members })
    }

    /// True when the archive holds a file (or link) at `path`.
    pub fn exists(&self, path: &str) -> bool {
        match self {
            Store::Dir(root) => root.join(path).exists(),
            Store::Tar { members, .. } => normalize(path).is_some_and(|p| members.contains_key(&p)),
        }
    }

    /// The bytes of the file at `path`, following links within the archive; `label` names it in
    /// errors (`path` may be hostile).
    pub fn section(&self, path: &str, label: &str) -> Result<Section, ScanError> {
        let climbs = |member: &str| ScanError::UnsafePath {
            what: label.to_string(),
            member: member.to_string(),
        };
        let mut name = normalize(path).ok_or_else(|| climbs("the path naming it"))?;
        match self {
            Store::Dir(root) => {
                let full = root.join(&name);
                let io = |source| ScanError::Io {
                    what: format!("{label} in {}", root.display()),
                    source,
                };
                let canonical_root = root.canonicalize().map_err(io)?;
                let canonical = full.canonicalize().map_err(io)?;
                if !canonical.starts_with(&canonical_root) {
                    return Err(climbs("the path naming it, through a link,"));
                }
                let file = File::open(&canonical).map_err(io)?;
                let len = file.metadata().map_err(io)?.len();
                Ok(Section {
                    file: Arc::new(file),
                    offset: 0,
                    len,
                })
            }
            Store::Tar { file, members } => {
                for _ in 0..=MAX_LINKS {
                    match members.get(&name) {
                        None => {
                            return Err(ScanError::Format {
                                what: label.to_string(),
                                message: "not in the archive".into(),
                            })
                        }
                        Some(Member::File { offset, len }) => {
                            return Ok(Section {
                                file: file.clone(),
                                offset: *offset,
                                len: *len,
                            })
                        }
                        Some(Member::Link(target)) => {
                            name = normalize(target)
                                .ok_or_else(|| climbs("a link followed to reach it"))?
                        }
                        Some(Member::Other) => {
                            return Err(ScanError::Format {
                                what: label.to_string(),
                                message: "is not a regular file in the archive".into(),
                            })
                        }
                    }
                }
                Err(ScanError::LinkLoop {
                    what: label.to_string(),
                    limit: MAX_LINKS,
                })
            }
        }
    }

    /// Reads a small file whole (an index, a manifest list), named `label` in errors.
    pub fn read(&self, path: &str, max: u64, label: &str) -> Result<Vec<u8>, ScanError> {
        self.section(path, label)?.read_all(max, label)
    }
}

/// Resolves `.` and `..` in an archive path; `None` for a path that climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    Some(parts.join("/"))
}
