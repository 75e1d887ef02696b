//! Tar entries with GNU long names, long links and PAX records applied here rather than by the
//! `tar` crate, which reads such headers whole: a hostile multi-gigabyte header must cost at most
//! a fixed number of bytes. Also rejects paths that climb out of the archive's root.
//!
//! Errors name a member by its index and its header's byte offset, never by its path or any
//! other bytes of the archive: the `tar` crate's own messages quote the header (the start of a
//! file that is no archive at all), and a hostile path can be a credential.

use std::io::Read;

use tar::EntryType;

use super::ScanError;

/// What an entry is, after its extension headers are applied.
pub struct Meta {
    /// The entry's path as stored (long name or PAX path applied).
    pub path: Vec<u8>,
    /// A symlink's or hard link's target.
    pub link: Option<Vec<u8>>,
    /// The entry type.
    pub kind: EntryType,
    /// Data size in bytes.
    pub size: u64,
    /// Values of PAX records other than path, linkpath and size (xattrs, comments), which
    /// can hold anything and so are searched too.
    pub pax_values: Vec<Vec<u8>>,
}

/// Extension headers seen before the entry they describe.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    pax_values: Vec<Vec<u8>>,
}

/// Where an entry is: its index among the real entries and its first header's byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// 0 for the first real entry; extension headers belong to the entry they describe.
    pub member: u64,
    /// Offset of the entry's first header (extension headers included) in the tar stream.
    pub offset: u64,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "member {} (the header at byte {})",
            self.member, self.offset
        )
    }
}

/// What a `tar` crate error says, in words of our own: its message quotes header bytes, so it is
/// only ever compared with, never shown.
fn tar_problem(e: &std::io::Error) -> &'static str {
    let message = e.to_string();
    if message.contains("checksum") {
        "a header checksum does not match"
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof
        || message.contains("entire block")
        || message.contains("unexpected EOF")
    {
        "the archive ends inside a header or its data"
    } else if message.contains("pax") {
        "a PAX extension record is malformed"
    } else {
        "a header field is malformed"
    }
}

/// Calls `f` with every real entry of `entries` (which must be in raw mode) and its place,
/// applying extension headers of at most `max_header` bytes in all per entry (an archive may
/// chain any number of them, and PAX values are kept until their entry). `what` names the
/// archive in errors.
pub fn for_each<R: Read>(
    entries: tar::Entries<'_, R>,
    what: &str,
    max_header: u64,
    mut f: impl FnMut(&Meta, Place, &mut tar::Entry<'_, R>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    // The place of the entry being assembled.
    let mut place = Place {
        member: 0,
        offset: 0,
    };
    let mut pending = Pending::default();
    // Bytes of the extension headers read for the entry being assembled.
    let mut pending_bytes = 0u64;
    let tar_error = |place: Place, e: &std::io::Error| ScanError::Tar {
        what: what.to_string(),
        place,
        problem: tar_problem(e),
    };
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(place, &e))?;
        let kind = entry.header().entry_type();
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| tar_error(place, &e))?;
        // Where the next header starts.
        let next = entry
            .raw_file_position()
            .saturating_add(size.div_ceil(512).saturating_mul(512));
        let extension = matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        );
        if extension {
            if size > max_header {
                return Err(ScanError::HugeHeader {
                    what: what.to_string(),
                    size,
                    limit: max_header,
                });
            }
            pending_bytes = pending_bytes.saturating_add(size);
            if pending_bytes > max_header {
                return Err(ScanError::HugeHeaders {
                    what: what.to_string(),
                    place,
                    size: pending_bytes,
                    limit: max_header,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| tar_error(place, &e))?;
            match kind {
                EntryType::GNULongName => pending.path = Some(trim_nul(data)),
                EntryType::GNULongLink => pending.link = Some(trim_nul(data)),
                _ => apply_pax(&data, kind == EntryType::XHeader, &mut pending).map_err(
                    |problem| ScanError::Tar {
                        what: what.to_string(),
                        place,
                        problem,
                    },
                )?,
            }
            continue;
        }
        let path = pending
            .path
            .take()
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link = pending
            .link
            .take()
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
        if let Some(pax_size) = pending.size.take() {
            if pax_size != size {
                return Err(ScanError::Format {
                    what: format!("{what}: {place}"),
                    message: format!(
                        "a PAX size record ({pax_size}) disagrees with the header ({size}); \
                         such archives parse differently in different tools"
                    ),
                });
            }
        }
        if climbs_out(&path) {
            return Err(ScanError::UnsafePath {
                what: what.to_string(),
                member: place.to_string(),
            });
        }
        let meta = Meta {
            path,
            link,
            kind,
            size,
            pax_values: std::mem::take(&mut pending.pax_values),
        };
        f(&meta, place, &mut entry)?;
        pending_bytes = 0;
        place = Place {
            member: place.member + 1,
            offset: next,
        };
    }
    if pending.path.is_some() || pending.link.is_some() {
        return Err(ScanError::Format {
            what: format!("{what}: {place}"),
            message: "the archive ends with an extension header describing no entry".into(),
        });
    }
    Ok(())
}

/// Applies a PAX header's records; global headers' records are only kept for searching.
fn apply_pax(data: &[u8], local: bool, pending: &mut Pending) -> Result<(), &'static str> {
    for record in tar::PaxExtensions::new(data) {
        let record = record.map_err(|_| "a PAX extension record is malformed")?;
        match (local, record.key_bytes()) {
            (true, b"path") => pending.path = Some(record.value_bytes().to_vec()),
            (true, b"linkpath") => pending.link = Some(record.value_bytes().to_vec()),
            (true, b"size") => {
                let size = record
                    .value()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or("a PAX size record is not a number")?;
                pending.size = Some(size);
            }
            _ => pending.pax_values.push(record.value_bytes().to_vec()),
        }
    }
    Ok(())
}

fn trim_nul(mut data: Vec<u8>) -> Vec<u8> {
    while data.last() == Some(&0) {
        data.pop();
    }
    data
}

/// True for a path with a `..` component: no tool should extract it, and one that does writes
/// outside its target directory.
fn climbs_out(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|c| c == b"..")
}
