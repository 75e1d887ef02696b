//! Tar entries with GNU long names, long links and PAX records applied here rather than by the
//! `tar` crate, which reads such headers whole: a hostile multi-gigabyte header must cost at most
//! a fixed number of bytes. Also rejects paths that climb out of the archive's root.

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

/// Calls `f` with every real entry of `entries` (which must be in raw mode), applying extension
/// headers of at most `max_header` bytes each. `what` names the archive in errors.
pub fn for_each<R: Read>(
    entries: tar::Entries<'_, R>,
    what: &str,
    max_header: u64,
    mut f: impl FnMut(&Meta, &mut tar::Entry<'_, R>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let io = |source| ScanError::Io {
        what: what.to_string(),
        source,
    };
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(io)?;
        let kind = entry.header().entry_type();
        let size = entry.header().entry_size().map_err(io)?;
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
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(io)?;
            match kind {
                EntryType::GNULongName => pending.path = Some(trim_nul(data)),
                EntryType::GNULongLink => pending.link = Some(trim_nul(data)),
                _ => apply_pax(&data, kind == EntryType::XHeader, &mut pending, what)?,
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
                    what: what.to_string(),
                    message: format!(
                        "a PAX size record ({pax_size}) disagrees with the header ({size}); \
                         such archives parse differently in different tools"
                    ),
                });
            }
        }
        check_path(&path, what)?;
        let meta = Meta {
            path,
            link,
            kind,
            size,
            pax_values: std::mem::take(&mut pending.pax_values),
        };
        f(&meta, &mut entry)?;
    }
    if pending.path.is_some() || pending.link.is_some() {
        return Err(ScanError::Format {
            what: what.to_string(),
            message: "the archive ends with an extension header describing no entry".into(),
        });
    }
    Ok(())
}

/// Applies a PAX header's records; global headers' records are only kept for searching.
fn apply_pax(data: &[u8], local: bool, pending: &mut Pending, what: &str) -> Result<(), ScanError> {
    for record in tar::PaxExtensions::new(data) {
        let record = record.map_err(|e| ScanError::Io {
            what: what.to_string(),
            source: e,
        })?;
        match (local, record.key_bytes()) {
            (true, b"path") => pending.path = Some(record.value_bytes().to_vec()),
            (true, b"linkpath") => pending.link = Some(record.value_bytes().to_vec()),
            (true, b"size") => {
                let size = record
                    .value()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| ScanError::Format {
                        what: what.to_string(),
                        message: "a PAX size record is not a number".into(),
                    })?;
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

/// Refuses a path with a `..` component: no tool should extract it, and one that does writes
/// outside its target directory.
pub fn check_path(path: &[u8], what: &str) -> Result<(), ScanError> {
    if path.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(ScanError::UnsafePath {
            what: what.to_string(),
            path: super::printable(path),
        });
    }
    Ok(())
}
