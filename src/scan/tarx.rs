//! Tar entries with GNU long names, long links and PAX records applied here rather than by the
//! `tar` crate, which reads such headers whole: a hostile multi-gigabyte header must cost at most
//! a fixed number of bytes. Also rejects paths that climb out of the archive's root.
//!
//! Errors name a member by its index and its header's byte offset, never by its path or any
//! other bytes of the archive: the `tar` crate's own messages quote the header (the start of a
//! file that is no archive at all), and a hostile path can be a credential.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

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

/// Bytes in a tar block: headers start on block boundaries and are one block long.
const BLOCK: usize = 512;

/// The reader under an archive, watched so that a failure of the `tar` crate is named from what
/// was read (the stream ended, the reader itself failed, the header's own checksum) and never
/// from the crate's message text, which may change and quotes header bytes.
pub struct Watched<R> {
    inner: R,
    /// Bytes of the stream read or sought past.
    at: u64,
    seen: Rc<Seen>,
}

/// What a [`Watched`] reader saw, shared with [`for_each`], which reads the archive on top.
pub struct Seen {
    /// A read returned no bytes: the stream ended.
    ended: Cell<bool>,
    /// The reader under the archive failed (a decompression or disk error): not the archive's
    /// fault, and reported as such.
    failed: Cell<bool>,
    /// Where the header being read starts, and its bytes as they went by.
    header_at: Cell<u64>,
    header: RefCell<[u8; BLOCK]>,
    header_len: Cell<usize>,
}

/// Wraps the reader an archive is read from; give the [`Seen`] to [`for_each`].
pub fn watch<R>(inner: R) -> (Watched<R>, Rc<Seen>) {
    let seen = Rc::new(Seen {
        ended: Cell::new(false),
        failed: Cell::new(false),
        header_at: Cell::new(0),
        header: RefCell::new([0; BLOCK]),
        header_len: Cell::new(0),
    });
    let watched = Watched {
        inner,
        at: 0,
        seen: Rc::clone(&seen),
    };
    (watched, seen)
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.seen.failed.set(true);
            }
        })?;
        if n == 0 && !buf.is_empty() {
            self.seen.ended.set(true);
        }
        self.seen.keep_header(self.at, &buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Watched<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.at = self
            .inner
            .seek(pos)
            .inspect_err(|_| self.seen.failed.set(true))?;
        Ok(self.at)
    }
}

impl Seen {
    /// Expects the next header at `offset`.
    fn expect_header(&self, offset: u64) {
        self.header_at.set(offset);
        self.header_len.set(0);
    }

    /// Keeps the bytes of `data` (read at `at`) that fall in the expected header's block.
    fn keep_header(&self, at: u64, data: &[u8]) {
        let start = self.header_at.get();
        let end = at.saturating_add(data.len() as u64);
        if end <= start || at >= start + BLOCK as u64 {
            return;
        }
        let from = start.saturating_sub(at) as usize;
        let to = (start + BLOCK as u64).min(end) - at;
        let into = at.saturating_sub(start) as usize;
        let part = &data[from..to as usize];
        self.header.borrow_mut()[into..into + part.len()].copy_from_slice(part);
        self.header_len
            .set(self.header_len.get().max(into + part.len()));
    }

    /// Whether the expected header was read whole and its checksum field holds its checksum.
    /// The sum is POSIX's: every byte, the checksum field counted as eight spaces.
    fn header_checksum_holds(&self) -> Option<bool> {
        if self.header_len.get() < BLOCK {
            return None;
        }
        let header = self.header.borrow();
        let sum: u64 = header[..148]
            .iter()
            .chain(&header[156..])
            .map(|&b| u64::from(b))
            .sum::<u64>()
            + 8 * u64::from(b' ');
        let stored = tar::Header::from_byte_slice(&header[..]).cksum().ok();
        Some(stored.is_some_and(|stored| u64::from(stored) == sum))
    }

    /// The error for a failure of the `tar` crate at `place`, in words of our own.
    fn error(&self, what: &str, place: Place, e: io::Error) -> ScanError {
        let problem = if self.failed.get() {
            return ScanError::Io {
                what: what.to_string(),
                source: e,
            };
        } else if self.ended.get() || e.kind() == io::ErrorKind::UnexpectedEof {
            "the archive ends inside a header or its data"
        } else if self.header_checksum_holds() == Some(false) {
            "a header checksum does not match"
        } else {
            "a header field is malformed"
        };
        ScanError::Tar {
            what: what.to_string(),
            place,
            problem,
        }
    }
}

/// Calls `f` with every real entry of `entries` (which must be in raw mode, on a reader that
/// [`watch`] gave with `seen`) and its place, applying extension headers of at most
/// `max_header` bytes in all per entry (an archive may chain any number of them, and PAX
/// values are kept until their entry). `what` names the archive in errors.
pub fn for_each<R: Read>(
    mut entries: tar::Entries<'_, R>,
    seen: &Seen,
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
    // Where the next header starts.
    let mut next_header = 0u64;
    let tar_error = |place: Place, e: io::Error| seen.error(what, place, e);
    loop {
        seen.expect_header(next_header);
        let Some(entry) = entries.next() else { break };
        let mut entry = entry.map_err(|e| tar_error(place, e))?;
        let kind = entry.header().entry_type();
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| tar_error(place, e))?;
        next_header = entry
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
                .map_err(|e| tar_error(place, e))?;
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
            offset: next_header,
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// An archive of two files, `a` and `b`, each one block of data.
    fn archive() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["a", "b"] {
            let mut header = tar::Header::new_ustar();
            header.set_size(5);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &b"hello"[..])
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// The second header's offset: one header and one data block in.
    const SECOND: usize = 2 * BLOCK;

    /// Reads `bytes` as `for_each` does, streaming or with seeks, and returns the error.
    fn failure(bytes: &[u8], seek: bool) -> ScanError {
        let result = if seek {
            let (watched, seen) = watch(Cursor::new(bytes));
            let mut archive = tar::Archive::new(watched);
            let entries = archive.entries_with_seek().unwrap().raw(true);
            for_each(entries, &seen, "layer", 1 << 20, |_, _, _| Ok(()))
        } else {
            let (watched, seen) = watch(bytes);
            let mut archive = tar::Archive::new(watched);
            let entries = archive.entries().unwrap().raw(true);
            for_each(entries, &seen, "layer", 1 << 20, |_, _, _| Ok(()))
        };
        result.expect_err("a corrupt archive is refused")
    }

    fn problem(bytes: &[u8]) -> &'static str {
        let (streamed, sought) = (failure(bytes, false), failure(bytes, true));
        match (streamed, sought) {
            (
                ScanError::Tar { problem, place, .. },
                ScanError::Tar {
                    problem: other,
                    place: other_place,
                    ..
                },
            ) => {
                assert_eq!(problem, other, "streamed and sought agree");
                assert_eq!(place, other_place);
                assert_eq!(
                    place,
                    Place {
                        member: 1,
                        offset: SECOND as u64
                    }
                );
                problem
            }
            other => panic!("not a tar error: {other:?}"),
        }
    }

    #[test]
    fn a_changed_header_byte_is_a_checksum_mismatch() {
        let mut bytes = archive();
        bytes[SECOND] = b'c';
        assert_eq!(problem(&bytes), "a header checksum does not match");
    }

    #[test]
    fn an_unparsable_checksum_field_is_a_checksum_mismatch() {
        let mut bytes = archive();
        bytes[SECOND + 148..SECOND + 156].copy_from_slice(b"zzzzzzz\0");
        assert_eq!(problem(&bytes), "a header checksum does not match");
    }

    #[test]
    fn a_size_that_is_no_number_under_a_good_checksum_is_a_malformed_field() {
        let mut bytes = archive();
        let header = tar::Header::from_byte_slice(&bytes[SECOND..SECOND + BLOCK]);
        let mut header = header.clone();
        header.as_old_mut().size = *b"not a num\0\0\0";
        header.set_cksum();
        bytes[SECOND..SECOND + BLOCK].copy_from_slice(header.as_bytes());
        assert_eq!(problem(&bytes), "a header field is malformed");
    }

    #[test]
    fn an_archive_cut_inside_a_header_ends_too_soon() {
        let bytes = archive();
        assert_eq!(
            problem(&bytes[..SECOND + 100]),
            "the archive ends inside a header or its data"
        );
    }

    /// A reader that fails after its first bytes, as a corrupt gzip stream does.
    struct Failing<'a>(&'a [u8]);

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("corrupt deflate stream"));
            }
            let n = self.0.read(buf)?;
            Ok(n)
        }
    }

    #[test]
    fn a_failing_reader_is_reported_as_unreadable_not_as_a_bad_archive() {
        let bytes = archive();
        let (watched, seen) = watch(Failing(&bytes[..SECOND + 100]));
        let mut archive = tar::Archive::new(watched);
        let entries = archive.entries().unwrap().raw(true);
        let err = for_each(entries, &seen, "layer", 1 << 20, |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(err, ScanError::Io { .. }),
            "a reader's failure is its own: {err:?}"
        );
    }

    #[test]
    fn a_whole_archive_reads_through() {
        let bytes = archive();
        let (watched, seen) = watch(&bytes[..]);
        let mut archive = tar::Archive::new(watched);
        let entries = archive.entries().unwrap().raw(true);
        let mut names = Vec::new();
        for_each(entries, &seen, "layer", 1 << 20, |meta, _, _| {
            names.push(meta.path.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec()]);
    }
}
