//! Streams one blob: its bytes are read once, in large chunks, and handed both to a hashing
//! thread (the sha256 check) and to the search on this thread (through gzip or zstd when the
//! blob is compressed, then through the tar entries), so hashing and matching run in parallel
//! and nothing is unpacked to disk. Decompressed size is capped against decompression bombs.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::image::Blob;
use super::matcher::{Hit, Matcher, Window};
use super::store::Section;
use super::{printable, tarx, Finding, ImageLimits, Progress, ScanError};

/// Bytes per read of the blob.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reader and the hashing thread.
const POOL: usize = 8;
/// Decompressed bytes always allowed, whatever the ratio (an empty tar compresses 250-fold).
const RATIO_FLOOR: u64 = 16 << 20;

/// A chunk of the blob, shared by the hasher and the search; its buffer goes back to the pool
/// when both are done with it.
struct Chunk {
    data: Vec<u8>,
    len: usize,
    pool: SyncSender<Vec<u8>>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let _ = self.pool.try_send(std::mem::take(&mut self.data));
    }
}

/// Reads a section chunk by chunk, forwarding each chunk to the hasher; a `BufRead`, so the
/// decompressors read from its chunks without another copy.
struct ChunkReader<'a> {
    section: &'a Section,
    pos: u64,
    current: Option<Arc<Chunk>>,
    consumed: usize,
    free: Receiver<Vec<u8>>,
    pool: SyncSender<Vec<u8>>,
    hasher: Option<SyncSender<Arc<Chunk>>>,
    progress: Option<&'a Progress>,
}

impl BufRead for ChunkReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let exhausted = self.current.as_ref().is_none_or(|c| self.consumed == c.len);
        if exhausted && self.pos < self.section.len() {
            self.current = None; // back to the pool before taking another buffer
            let mut data = self
                .free
                .recv()
                .map_err(|_| io::Error::other("chunk pool closed"))?;
            let want = (self.section.len() - self.pos).min(CHUNK as u64) as usize;
            let mut len = 0;
            while len < want {
                match self
                    .section
                    .read_at(self.pos + len as u64, &mut data[len..want])?
                {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => len += n,
                }
            }
            self.pos += len as u64;
            if let Some(progress) = self.progress {
                progress.done.fetch_add(len as u64, Ordering::Relaxed);
            }
            let chunk = Arc::new(Chunk {
                data,
                len,
                pool: self.pool.clone(),
            });
            if let Some(hasher) = &self.hasher {
                hasher
                    .send(chunk.clone())
                    .map_err(|_| io::Error::other("hashing thread stopped"))?;
            }
            self.current = Some(chunk);
            self.consumed = 0;
        }
        Ok(match &self.current {
            Some(c) => &c.data[self.consumed..c.len],
            None => &[],
        })
    }

    fn consume(&mut self, amt: usize) {
        self.consumed += amt;
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Counts decompressed bytes and fails past the limit, remembering that it did.
struct Capped<'a, R> {
    inner: R,
    read: u64,
    limit: u64,
    tripped: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.tripped.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}

/// Streams `blob`, reporting findings through `on_finding`; fails on a digest or size mismatch,
/// a malformed or hostile archive, or a decompression bomb.
pub fn scan(
    blob: &Blob,
    matcher: &Matcher,
    limits: &ImageLimits,
    progress: Option<&Progress>,
    on_finding: &mut dyn FnMut(Finding),
) -> Result<(), ScanError> {
    let (pool, free) = sync_channel(POOL);
    for _ in 0..POOL {
        pool.send(vec![0u8; CHUNK])
            .expect("the pool holds POOL buffers");
    }
    let (to_hasher, chunks) = sync_channel::<Arc<Chunk>>(POOL);
    std::thread::scope(|s| {
        let hashing = s.spawn(move || {
            let mut sha = Sha256::new();
            for chunk in chunks {
                sha.update(&chunk.data[..chunk.len]);
            }
            hex::encode(sha.finalize())
        });
        let mut reader = ChunkReader {
            section: &blob.section,
            pos: 0,
            current: None,
            consumed: 0,
            free,
            pool,
            hasher: Some(to_hasher),
            progress,
        };
        let searched = search(blob, &mut reader, matcher, limits, on_finding);
        // Hash the rest even after an error: a digest mismatch explains most errors best.
        let drained = io::copy(&mut reader, &mut io::sink());
        reader.hasher = None;
        drop(reader);
        let actual = hashing.join().map_err(|_| ScanError::Format {
            what: blob.digest.clone(),
            message: "the hashing thread failed".into(),
        })?;
        let expected = blob.digest.strip_prefix("sha256:").unwrap_or(&blob.digest);
        if drained.is_ok() && actual != expected {
            return Err(ScanError::DigestMismatch {
                what: format!("blob {}", blob.digest),
                expected: blob.digest.clone(),
                actual: format!("sha256:{actual}"),
            });
        }
        searched?;
        drained.map_err(|source| ScanError::Io {
            what: format!("blob {}", blob.digest),
            source,
        })?;
        Ok(())
    })
}

/// Decompresses as the blob's magic bytes say, then searches the tar (or the plain bytes).
fn search(
    blob: &Blob,
    reader: &mut ChunkReader<'_>,
    matcher: &Matcher,
    limits: &ImageLimits,
    on_finding: &mut dyn FnMut(Finding),
) -> Result<(), ScanError> {
    let head = reader.fill_buf().map_err(|source| ScanError::Io {
        what: format!("layer {}", blob.digest),
        source,
    })?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let zstd = head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let what = match (gzip, zstd) {
        (true, _) => format!("layer {} (gzip)", blob.digest),
        (_, true) => format!("layer {} (zstd)", blob.digest),
        _ => format!("layer {}", blob.digest),
    };
    let io_err = |source| ScanError::Io {
        what: what.clone(),
        source,
    };
    let tripped = Cell::new(false);
    let limit = limits
        .max_layer_bytes
        .min(RATIO_FLOOR.max(blob.section.len().saturating_mul(limits.max_ratio)));
    let result = if gzip || zstd {
        let decoder: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(&mut *reader))
        } else {
            Box::new(zstd::stream::read::Decoder::with_buffer(&mut *reader).map_err(io_err)?)
        };
        let capped = Capped {
            inner: decoder,
            read: 0,
            limit,
            tripped: &tripped,
        };
        search_stream(blob, capped, &what, matcher, limits, on_finding)
    } else {
        search_stream(blob, &mut *reader, &what, matcher, limits, on_finding)
    };
    if tripped.get() {
        return Err(ScanError::Bomb {
            what,
            limit,
            compressed: blob.section.len(),
        });
    }
    result
}

/// Searches a tar stream entry by entry (or a non-tar blob as plain bytes), then whatever
/// follows the end of the archive, which extraction ignores but the image still carries.
fn search_stream<R: Read>(
    blob: &Blob,
    mut stream: R,
    what: &str,
    matcher: &Matcher,
    limits: &ImageLimits,
    on_finding: &mut dyn FnMut(Finding),
) -> Result<(), ScanError> {
    let io_err = |source| ScanError::Io {
        what: what.to_string(),
        source,
    };
    let mut window = Window::default();
    let kind = if blob.tar { "layer" } else { "blob" };
    let finding = |path: &str, place: &'static str, hit: Hit| {
        Finding::new(&blob.digest, kind, path, place, hit)
    };
    if blob.tar {
        {
            let (watched, seen) = tarx::watch(&mut stream);
            let mut archive = tar::Archive::new(watched);
            let entries = archive.entries().map_err(io_err)?.raw(true);
            tarx::for_each(
                entries,
                &seen,
                what,
                limits.max_header_bytes,
                |meta, _, entry| {
                    let mut name_hits = Vec::new();
                    matcher.scan_bytes(&meta.path, &mut |h| name_hits.push(h));
                    let path = redact_spans(&meta.path, &name_hits);
                    for hit in name_hits {
                        on_finding(finding(&path, "file name", hit));
                    }
                    if let Some(link) = &meta.link {
                        matcher.scan_bytes(link, &mut |h| {
                            on_finding(finding(&path, "link target", h))
                        });
                    }
                    for value in &meta.pax_values {
                        matcher.scan_bytes(value, &mut |h| {
                            on_finding(finding(&path, "PAX header", h))
                        });
                    }
                    if meta.kind.is_file() || meta.kind == tar::EntryType::Continuous {
                        matcher
                            .scan_stream(entry, &mut window, &mut |h| {
                                on_finding(finding(&path, "content", h))
                            })
                            .map_err(io_err)?;
                    }
                    Ok(())
                },
            )?;
        }
        matcher
            .scan_stream(&mut stream, &mut window, &mut |h| {
                on_finding(finding("", "after the end of the tar", h))
            })
            .map_err(io_err)?;
    } else {
        matcher
            .scan_stream(&mut stream, &mut window, &mut |h| {
                on_finding(finding("", "content", h))
            })
            .map_err(io_err)?;
    }
    Ok(())
}

/// A path fit for a report: the spans where secrets were found are replaced.
fn redact_spans(path: &[u8], hits: &[Hit]) -> String {
    if hits.is_empty() {
        return printable(path);
    }
    let mut out = Vec::new();
    let mut at = 0;
    for hit in hits {
        let start = hit.offset as usize;
        if start >= at {
            out.extend_from_slice(&path[at..start]);
            out.extend_from_slice(hit.snippet.as_bytes());
            at = start + hit.len;
        }
    }
    out.extend_from_slice(&path[at.min(path.len())..]);
    printable(&out)
}
