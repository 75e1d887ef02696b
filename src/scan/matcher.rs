//! Multi-pattern streaming search: one Aho-Corasick automaton holds every exact needle (raw,
//! base64 at its three alignments, URL-encoded, hex) and the anchors of the generic detectors,
//! whose candidates are then confirmed by a few bytes of look-around. Streams are searched in
//! large windows that overlap by the longest pattern plus the look-ahead, so a secret split
//! across two reads is still found, exactly once.
//!
//! Encoders wrap their output (`base64` at 76 columns, PEM and `openssl base64` at 64, `xxd -p`
//! at 60, `od -An -tx1` at 16 bytes with spaces between them), with LF or CRLF, at any phase
//! relative to the value. Wrapped needles are not added to the automaton (one per line width,
//! phase, line ending and alignment: thousands of long patterns, and no prefilter left for the
//! common case); instead, the stretches that can hold a wrapped encoding are normalised and
//! searched again. Such a stretch is a run of base64 characters with a line break in it, or of
//! hex digits and spaces with a line break in it. Line breaks are found with a `memchr`
//! prefilter and judged by the bytes next to them, so binary data pays for little more than
//! that search (scripts/bench-scan: the same speed as without the pass), text with short lines
//! for a look at each line end, and only base64 or hex text for a second search of it.
//!
//! The generic detectors also search what base64 and hex runs decode to ([`decode`]): a
//! credentials file someone encoded, a Kubernetes Secret's `data`. Their findings are placed
//! at the encoded form and name the encoding (`aws-access-key-id (base64)`).

use std::io::{self, Read};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest as _, Sha256};

use super::decode::{self, class};
use super::Needles;

/// Shortest needle worth searching for: shorter values would match everywhere.
pub const MIN_NEEDLE_LEN: usize = 8;
/// Longest JWT the detector decodes; bounds the look-ahead.
const JWT_MAX: usize = 16 * 1024;
/// Longest session token value read after an anchor.
const SESSION_TOKEN_MAX: usize = 4096;
/// Longest ECR registry password (or `AWS:` form of one) the detector decodes; real ones are
/// about 1,800 and 2,400 characters. Bounds the look-ahead.
const ECR_MAX: usize = 16 * 1024;
/// Bytes kept before a window's resume point: word-boundary checks, and the line an encoded
/// run starts on.
const LOOKBEHIND: usize = decode::LOOKBEHIND;
/// Bytes read per window, beyond the overlap.
const CHUNK: usize = 1 << 20;
/// Longest line of a spaced hex dump that is sure to be searched in full (`od` writes 48 bytes).
const HEX_LINE_MAX: usize = 256;

/// Which bytes may make up a stretch of wrapped base64 (or `xxd -p` hex): the standard
/// alphabet, padding and line breaks.
const BASE64_RUN: [bool; 256] =
    class(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n");
/// The standard base64 alphabet, without padding: the characters of an AWS secret key and of
/// an ECR password.
const BASE64_CHAR: [bool; 256] =
    class(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
/// Which bytes may make up a stretch of spaced hex (`od -An -tx1`): hex digits, spaces, breaks.
const HEX_RUN: [bool; 256] = class(b"0123456789abcdefABCDEF \r\n");
/// The gaps removed from runs, and those a hit must span to be reported from them.
const LINE_BREAK: [bool; 256] = class(b"\r\n");
const HEX_GAP: [bool; 256] = class(b" \r\n");
const SPACE: [bool; 256] = class(b" ");

/// Whether `b` is a character of standard base64, padding aside.
fn b64(b: &u8) -> bool {
    BASE64_CHAR[usize::from(*b)]
}

/// What a pattern of the automaton stands for.
#[derive(Debug, Clone)]
enum Pattern {
    /// An exact needle in one of its encodings; the label names the secret id and encoding.
    Needle(String),
    /// `AKIA`/`ASIA` followed by 16 upper-case letters or digits.
    AccessKeyId,
    /// A secret-access-key name followed by `=`/`:` and 40 base64 characters.
    SecretKeyAssignment,
    /// A session-token name followed by `=`/`:` and a long base64 value.
    SessionTokenAssignment,
    /// The fixed prefix STS session tokens start with, followed by a long base64 value.
    SessionTokenPrefix,
    /// `eyJ`, the start of a JWT, confirmed by decoding its header and claims.
    Jwt,
    /// `eyJwYXlsb2FkIjoi`, base64 of `{"payload":"`: the start of an ECR registry password
    /// (from ecr:GetAuthorizationToken, new at every call), confirmed by decoding it.
    EcrPassword,
    /// `QVdTOmV5SndZWGxzYjJGa0lq`, base64 of `AWS:eyJwYXlsb2FkIj`: the start of ECR's
    /// `authorizationToken` and of a docker config's `auth` for ECR, base64 of `AWS:` and the
    /// password; confirmed by decoding both layers.
    EcrAuth,
}

/// One confirmed match: where, what, and a snippet that never shows the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Byte offset of the value in the searched stream.
    pub offset: u64,
    /// Length of the value in bytes.
    pub len: usize,
    /// Which detector or needle matched.
    pub detector: String,
    /// The first few characters and the redacted length.
    pub snippet: String,
    /// sha256 of the matched bytes: an input of the finding's fingerprint, never shown.
    pub value_digest: [u8; 32],
}

impl Hit {
    fn new(offset: u64, detector: String, value: &[u8]) -> Hit {
        Hit {
            offset,
            len: value.len(),
            detector,
            snippet: redact(value),
            value_digest: Sha256::digest(value).into(),
        }
    }
}

/// AWS's documentation examples (`AKIAIOSFODNN7EXAMPLE`, `AKIAI44QH8DHBEXAMPLE`,
/// `wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY`, `je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY`, ...)
/// end so: the generic detectors pass over them, as gitleaks does (its aws-access-token rule
/// allows `.+EXAMPLE$`). Served values are exact needles and are always reported.
const EXAMPLE_KEY_ID_SUFFIX: &[u8] = b"EXAMPLE";
const EXAMPLE_SECRET_KEY_SUFFIX: &[u8] = b"EXAMPLEKEY";

/// The compiled search: built once per scan, shared by every blob.
pub struct Matcher {
    /// The needles and the generic detectors' anchors: what the text holds as it stands.
    exact: Automaton,
    /// The generic detectors' anchors alone: what decoded base64 and hex runs hold.
    generic: Automaton,
    /// Bytes that must follow a match start in the window before it is judged.
    lookahead: usize,
    /// The needles' base64 and hex forms, searched in normalised wrapped stretches.
    wrapped: Option<Wrapped>,
}

/// Patterns and what they stand for.
struct Automaton {
    ac: AhoCorasick,
    patterns: Vec<Pattern>,
    /// Longest pattern in bytes.
    max_pattern: usize,
}

/// The generic detectors' anchors: fixed starts of AWS credentials, confirmed by [`confirm`].
const GENERIC: &[(&str, Pattern)] = &[
    ("AKIA", Pattern::AccessKeyId),
    ("ASIA", Pattern::AccessKeyId),
    ("secret_access_key", Pattern::SecretKeyAssignment),
    ("SECRET_ACCESS_KEY", Pattern::SecretKeyAssignment),
    ("SecretAccessKey", Pattern::SecretKeyAssignment),
    ("secretAccessKey", Pattern::SecretKeyAssignment),
    ("secret-access-key", Pattern::SecretKeyAssignment),
    ("session_token", Pattern::SessionTokenAssignment),
    ("SESSION_TOKEN", Pattern::SessionTokenAssignment),
    ("SessionToken", Pattern::SessionTokenAssignment),
    ("sessionToken", Pattern::SessionTokenAssignment),
    ("IQoJb3JpZ2luX2Vj", Pattern::SessionTokenPrefix),
    ("FwoGZXIvYXdzE", Pattern::SessionTokenPrefix),
    ("eyJ", Pattern::Jwt),
    ("eyJwYXlsb2FkIjoi", Pattern::EcrPassword),
    ("QVdTOmV5SndZWGxzYjJGa0lq", Pattern::EcrAuth),
];

/// The search for wrapped encodings: the forms, and the automaton that finds line breaks.
struct Wrapped {
    ac: AhoCorasick,
    labels: Vec<String>,
    /// Shortest form: shorter stretches cannot hold one.
    min_len: usize,
    /// Most bytes a wrapped form spans in the original (its length, gaps included).
    max_span: usize,
    breaks: AhoCorasick,
}

impl Matcher {
    /// Builds the automaton; returns it with notes about needles that were skipped.
    pub fn new(needles: &Needles) -> (Matcher, Vec<String>) {
        let mut notes = Vec::new();
        let mut bytes: Vec<Vec<u8>> = Vec::new();
        let mut patterns = Vec::new();
        let mut wrapped: Vec<Vec<u8>> = Vec::new();
        let mut wrapped_labels = Vec::new();
        for (id, value) in needles.iter() {
            let value = value.expose();
            if value.len() < MIN_NEEDLE_LEN {
                notes.push(format!(
                    "secret {id} is shorter than {MIN_NEEDLE_LEN} bytes: not searched (it would match everywhere)"
                ));
                continue;
            }
            for (form, encoded) in encodings(value) {
                let wraps = matches!(form, "base64" | "hex");
                if wraps && encoded.len() >= MIN_NEEDLE_LEN && !wrapped.contains(&encoded) {
                    wrapped.push(encoded.clone());
                    wrapped_labels.push(format!("secret {id} ({form}, wrapped)"));
                }
                if encoded.len() >= MIN_NEEDLE_LEN && !bytes.contains(&encoded) {
                    bytes.push(encoded);
                    patterns.push(Pattern::Needle(if form.is_empty() {
                        format!("secret {id}")
                    } else {
                        format!("secret {id} ({form})")
                    }));
                }
            }
        }
        for (anchor, pattern) in GENERIC {
            bytes.push(anchor.as_bytes().to_vec());
            patterns.push(pattern.clone());
        }
        let exact = Automaton::new(&bytes, patterns);
        let generic = Automaton::new(
            GENERIC.iter().map(|(anchor, _)| anchor.as_bytes()),
            GENERIC.iter().map(|(_, pattern)| pattern.clone()).collect(),
        );
        let wrapped = (!wrapped.is_empty()).then(|| {
            let longest = wrapped.iter().map(Vec::len).max().unwrap_or(0);
            Wrapped {
                ac: AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&wrapped)
                    .expect("patterns are plain byte strings within the automaton's limits"),
                labels: wrapped_labels,
                min_len: wrapped.iter().map(Vec::len).min().unwrap_or(0),
                // Spaced hex is the widest: 3 bytes per 2 digits, plus a CRLF per 16 bytes.
                max_span: 2 * longest + 16,
                breaks: AhoCorasick::new([b"\n"]).expect("one byte is a valid pattern"),
            }
        });
        let span = wrapped.as_ref().map_or(0, |w| w.max_span + HEX_LINE_MAX);
        let lookahead = (exact.max_pattern.max(span) + JWT_MAX.max(ECR_MAX)).max(decode::LOOKAHEAD);
        (
            Matcher {
                exact,
                generic,
                lookahead,
                wrapped,
            },
            notes,
        )
    }

    /// Searches a whole in-memory value (a file name, a config field).
    pub fn scan_bytes(&self, hay: &[u8], on_hit: &mut dyn FnMut(Hit)) {
        self.search(hay, 0, hay.len(), 0, 0, true, on_hit);
    }

    /// Searches a stream of any length in bounded memory; returns the number of bytes read.
    pub fn scan_stream(
        &self,
        reader: &mut dyn Read,
        window: &mut Window,
        on_hit: &mut dyn FnMut(Hit),
    ) -> io::Result<u64> {
        let capacity = self.capacity();
        if window.buf.len() < capacity {
            window.buf.resize(capacity, 0);
        }
        let buf = &mut window.buf;
        let (mut len, mut from, mut base, mut total) = (0usize, 0usize, 0u64, 0u64);
        // Where wrapped forms start being judged: the previous window judged those before.
        let mut wrapped_from = 0usize;
        loop {
            let mut eof = false;
            while len < buf.len() {
                match reader.read(&mut buf[len..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        len += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let end = if eof { len } else { len - self.lookahead };
            let resume = self.search(&buf[..len], from, end, wrapped_from, base, eof, on_hit);
            if eof {
                return Ok(total);
            }
            let keep = resume.min(end).saturating_sub(LOOKBEHIND);
            buf.copy_within(keep..len, 0);
            len -= keep;
            from = resume - keep;
            wrapped_from = end - keep;
            base += keep as u64;
        }
    }

    /// Window size: a large read plus the overlap carried from the previous window.
    fn capacity(&self) -> usize {
        let overlap = self.lookahead + LOOKBEHIND;
        CHUNK.max(2 * overlap) + overlap
    }

    /// Judges every match starting in `from..end` of `hay` (wrapped forms: in
    /// `wrapped_from..end`), reporting them in offset order; returns where the next search
    /// resumes. `base` is the stream offset of `hay[0]`; `eof` says nothing follows `hay`.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        hay: &[u8],
        from: usize,
        end: usize,
        wrapped_from: usize,
        base: u64,
        eof: bool,
        on_hit: &mut dyn FnMut(Hit),
    ) -> usize {
        let mut hits = Vec::new();
        let resume = self
            .exact
            .search(hay, from, end, base, eof, &mut |h| hits.push(h));
        let stop = if eof { hay.len() } else { end };
        if let Some(w) = &self.wrapped {
            hits.extend(w.hits(hay, wrapped_from, stop, base));
            hits.sort_by_key(|h| h.offset); // stable: at one offset, the exact hit first
        }
        let decoded = self.decoded(hay, wrapped_from, stop, base);
        add_decoded(&mut hits, decoded);
        hits.into_iter().for_each(on_hit);
        resume
    }

    /// The generic detectors' hits in the base64 and hex runs of `hay` whose encoded form
    /// starts in `from..end`, placed at that form (line breaks included) and named with the
    /// encoding. Needles are not searched there: their encoded forms are needles already.
    fn decoded(&self, hay: &[u8], from: usize, end: usize, base: u64) -> Vec<Hit> {
        let mut hits = Vec::new();
        decode::decode(hay, from, end, base == 0, &mut |d| {
            self.generic
                .search(d.bytes, 0, d.bytes.len(), 0, true, &mut |mut hit| {
                    let at = hit.offset as usize;
                    if at < d.context {
                        return; // in the plain text before the run: searched as such
                    }
                    let (start, len, wrapped) = d.span(at, hit.len);
                    if start < from || start >= end {
                        return; // another window's
                    }
                    let wrapped = if wrapped { ", wrapped" } else { "" };
                    hit.offset = base + start as u64;
                    hit.len = len;
                    hit.detector = format!("{} ({}{wrapped})", hit.detector, d.encoding);
                    hits.push(hit);
                });
        });
        hits.sort_by_key(|h| h.offset);
        hits
    }
}

/// Adds to `hits` (in offset order) the `decoded` hits that overlap none of them, keeping the
/// order: a stretch already reported as it stands is not reported again for what it decodes
/// to (an ECR docker `auth` is base64 of the password the decoded search would find; a served
/// value's base64 form is a needle).
fn add_decoded(hits: &mut Vec<Hit>, decoded: Vec<Hit>) {
    if decoded.is_empty() {
        return;
    }
    let end = |h: &Hit| h.offset + h.len as u64;
    // The furthest any of the first n hits reaches.
    let reach: Vec<u64> = hits
        .iter()
        .scan(0, |r, h| {
            *r = end(h).max(*r);
            Some(*r)
        })
        .collect();
    let fresh: Vec<Hit> = decoded
        .into_iter()
        .filter(|d| {
            let before = hits.partition_point(|h| h.offset < end(d));
            before == 0 || reach[before - 1] <= d.offset
        })
        .collect();
    hits.extend(fresh);
    hits.sort_by_key(|h| h.offset);
}

impl Automaton {
    fn new<P: AsRef<[u8]>>(patterns: impl IntoIterator<Item = P>, meaning: Vec<Pattern>) -> Self {
        let bytes: Vec<P> = patterns.into_iter().collect();
        Automaton {
            max_pattern: bytes.iter().map(|p| p.as_ref().len()).max().unwrap_or(1),
            ac: AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&bytes)
                .expect("patterns are plain byte strings within the automaton's limits"),
            patterns: meaning,
        }
    }

    /// Judges every match starting in `from..end` of `hay`, reporting them in offset order;
    /// returns where the next search resumes (see [`Matcher::search`]).
    fn search(
        &self,
        hay: &[u8],
        from: usize,
        end: usize,
        base: u64,
        eof: bool,
        on_hit: &mut dyn FnMut(Hit),
    ) -> usize {
        let mut pos = from;
        let limit = if eof {
            hay.len()
        } else {
            (end + self.max_pattern).min(hay.len())
        };
        while pos < end {
            let Some(m) = self.ac.find(Input::new(&hay[..limit]).span(pos..limit)) else {
                return end;
            };
            if m.start() >= end {
                return m.start();
            }
            let pattern = &self.patterns[m.pattern().as_usize()];
            match confirm(pattern, hay, m.start(), m.end()) {
                Some((start, stop, detector)) => {
                    on_hit(Hit::new(base + start as u64, detector, &hay[start..stop]));
                    pos = stop.max(m.start() + 1);
                }
                None => pos = m.start() + 1,
            }
        }
        pos
    }
}

impl Wrapped {
    /// Wrapped forms starting in `from..end` of `hay`, in offset order. Looks at the line
    /// breaks from `from` on, and at the runs of base64 and of spaced hex around each: a run
    /// long enough to hold a form is copied without its gaps (line breaks; spaces too in
    /// hex runs) and searched. Only forms with a gap inside are reported: the automaton finds
    /// the others.
    fn hits(&self, hay: &[u8], from: usize, end: usize, base: u64) -> Vec<Hit> {
        let mut hits = Vec::new();
        if from >= end {
            return hits;
        }
        // A hit starting before `end` has its gaps, and the end of its line, before `scan_to`.
        let scan_to = (end + self.max_span + HEX_LINE_MAX).min(hay.len());
        let mut flat = Vec::new();
        let mut done_base64 = from;
        let mut done_hex = from;
        for m in self
            .breaks
            .find_iter(Input::new(&hay[..scan_to]).span(from..scan_to))
        {
            let at = m.start();
            // A base64 hit spanning this break has alphabet characters on both sides of it; the
            // lines of a hex dump end in a digit. Most breaks (code, prose, binary data) fail
            // both at once and cost two lookups.
            let before = match at.checked_sub(1).map(|i| hay[i]) {
                Some(b'\r') => at.checked_sub(2).map(|i| hay[i]),
                b => b,
            };
            let after = hay.get(at + 1).copied();
            let alphabet = |b: Option<u8>| b.is_some_and(|b| BASE64_RUN[b as usize] && b > b'\r');
            let wanted = [
                alphabet(before) && alphabet(after),
                before.is_some_and(|b| b.is_ascii_hexdigit()),
            ];
            // Base64 (and `xxd -p`) runs: hits must span a line break. Spaced hex runs: hits
            // must span a space, so no hit is found in both.
            for (wanted, (table, gaps, required_gap, done)) in wanted.into_iter().zip([
                (&BASE64_RUN, &LINE_BREAK, &LINE_BREAK, &mut done_base64),
                (&HEX_RUN, &HEX_GAP, &SPACE, &mut done_hex),
            ]) {
                if !wanted {
                    continue;
                }
                if at < *done {
                    continue; // inside a run already searched
                }
                let start = at
                    - hay[..at]
                        .iter()
                        .rev()
                        .take_while(|b| table[**b as usize])
                        .count();
                let stop = at + hay[at..].iter().take_while(|b| table[**b as usize]).count();
                *done = stop;
                if stop - start >= self.min_len {
                    self.search_run(
                        &hay[start..stop],
                        start,
                        gaps,
                        required_gap,
                        from,
                        end,
                        base,
                        &mut flat,
                        &mut hits,
                    );
                }
            }
        }
        hits.sort_by_key(|h| h.offset);
        hits
    }

    /// Searches `run` (at `start` in the window) with its `gaps` removed; keeps the hits that
    /// start in `from..end` and span a `required_gap` (hits without one are found by the
    /// automaton, or in the other kind of run).
    #[allow(clippy::too_many_arguments)]
    fn search_run(
        &self,
        run: &[u8],
        start: usize,
        gaps: &[bool; 256],
        required_gap: &[bool; 256],
        from: usize,
        end: usize,
        base: u64,
        flat: &mut Vec<u8>,
        hits: &mut Vec<Hit>,
    ) {
        flat.clear();
        if gaps == &LINE_BREAK {
            // Line by line (memchr), so long base64 texts are copied, not filtered bytewise.
            let mut line = 0;
            for m in self.breaks.find_iter(run) {
                let piece = &run[line..m.start()];
                flat.extend_from_slice(piece.strip_suffix(b"\r").unwrap_or(piece));
                line = m.end();
            }
            flat.extend(run[line..].iter().filter(|b| !gaps[**b as usize]));
        } else {
            flat.extend(run.iter().filter(|b| !gaps[**b as usize]));
        }
        if flat.len() < self.min_len {
            return;
        }
        // Maps flat offsets back to the run, walking forwards only: matches come in order.
        let (mut i, mut kept) = (0, 0);
        let mut locate = |flat_at: usize| loop {
            if !gaps[run[i] as usize] {
                if kept == flat_at {
                    return i;
                }
                kept += 1;
            }
            i += 1;
        };
        for m in self.ac.find_iter(&flat[..]) {
            let first = locate(m.start());
            let last = locate(m.end() - 1);
            let (at, len) = (start + first, last + 1 - first);
            let spans_gap = run[first..=last].iter().any(|b| required_gap[*b as usize]);
            if !spans_gap || at < from || at >= end {
                continue;
            }
            let mut hit = Hit::new(
                base + at as u64,
                self.labels[m.pattern().as_usize()].clone(),
                &flat[m.start()..m.end()],
            );
            hit.len = len; // the span in the original, gaps included
            hits.push(hit);
        }
    }
}

/// A reusable search buffer, so scanning many small files allocates once.
#[derive(Default)]
pub struct Window {
    buf: Vec<u8>,
}

/// The forms a needle may take in an image: raw, URL-encoded, hex (lower and upper case), and
/// base64 (standard and URL-safe alphabets) at each of the three byte alignments, keeping only
/// the characters that depend on the value alone.
fn encodings(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut forms = vec![("", value.to_vec())];
    let url = url_encode(value).into_bytes();
    if url != value {
        forms.push(("URL-encoded", url));
    }
    let hex = hex::encode(value);
    forms.push(("hex", hex.to_ascii_uppercase().into_bytes()));
    forms.push(("hex", hex.into_bytes()));
    for (name, engine) in [
        ("base64", &STANDARD_NO_PAD),
        ("base64url", &URL_SAFE_NO_PAD),
    ] {
        for shift in 0..3 {
            let mut padded = vec![0u8; shift];
            padded.extend_from_slice(value);
            let encoded = engine.encode(&padded).into_bytes();
            let first = (8 * shift).div_ceil(6);
            let last = (8 * padded.len()) / 6;
            if first < last {
                forms.push((name, encoded[first..last].to_vec()));
            }
        }
    }
    forms
}

/// Percent-encodes everything but RFC 3986's unreserved characters: how a value looks in a URL
/// (a leak to find, or an image name in a query).
pub(super) fn url_encode(value: &[u8]) -> String {
    percent_encode(value, NOT_UNRESERVED).to_string()
}

/// The bytes [`url_encode`] encodes: all but ASCII letters, digits and `-._~`.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Confirms a candidate: the span of the secret value within `hay` and the detector name.
fn confirm(
    pattern: &Pattern,
    hay: &[u8],
    start: usize,
    end: usize,
) -> Option<(usize, usize, String)> {
    let upper_alnum = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    match pattern {
        Pattern::Needle(label) => Some((start, end, label.clone())),
        Pattern::AccessKeyId => {
            let stop = start + 20;
            let ok = (start == 0 || !hay[start - 1].is_ascii_alphanumeric())
                && hay.len() >= stop
                && hay[end..stop].iter().all(upper_alnum)
                && hay.get(stop).is_none_or(|b| !b.is_ascii_alphanumeric())
                && !hay[..stop].ends_with(EXAMPLE_KEY_ID_SUFFIX);
            ok.then(|| (start, stop, "aws-access-key-id".to_string()))
        }
        Pattern::SecretKeyAssignment => {
            let value = assigned_value(hay, end)?;
            let run = hay[value..].iter().take(41).take_while(|b| b64(b)).count();
            let boundary = hay.get(value + 40).is_none_or(|b| !b64(b) && *b != b'=');
            let example = run == 40 && hay[..value + 40].ends_with(EXAMPLE_SECRET_KEY_SUFFIX);
            (run == 40 && boundary && !example)
                .then(|| (value, value + 40, "aws-secret-access-key".into()))
        }
        Pattern::SessionTokenAssignment => {
            let value = assigned_value(hay, end)?;
            session_token(hay, value)
        }
        Pattern::SessionTokenPrefix => session_token(hay, start),
        Pattern::Jwt => jwt(hay, start),
        // The anchor starts with the JWT's: a JWT it hides is still judged as one.
        Pattern::EcrPassword => ecr_password(hay, start).or_else(|| jwt(hay, start)),
        Pattern::EcrAuth => ecr_auth(hay, start),
    }
}

/// After a key name: skips quotes and blanks around one `=`, `:` or `>`; the value's start.
fn assigned_value(hay: &[u8], mut at: usize) -> Option<usize> {
    let mut seen_separator = false;
    for _ in 0..8 {
        match hay.get(at)? {
            b'=' | b':' | b'>' if !seen_separator => seen_separator = true,
            b' ' | b'\t' | b'"' | b'\'' => {}
            _ => break,
        }
        at += 1;
    }
    seen_separator.then_some(at)
}

/// A session token value starting at `start`: at least 100 base64 characters.
fn session_token(hay: &[u8], start: usize) -> Option<(usize, usize, String)> {
    let len = hay[start..]
        .iter()
        .take(SESSION_TOKEN_MAX)
        .take_while(|b| b.is_ascii_alphanumeric() || b"/+=".contains(b))
        .count();
    (len >= 100).then(|| (start, start + len, "aws-session-token".to_string()))
}

/// A JWT starting at `start` whose claims say it is an AWS or Kubernetes identity token.
fn jwt(hay: &[u8], start: usize) -> Option<(usize, usize, String)> {
    let url_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    if start > 0 && url_char(&hay[start - 1]) {
        return None;
    }
    let rest = &hay[start..hay.len().min(start + JWT_MAX)];
    let segment = |from: usize| from + rest[from..].iter().take_while(|b| url_char(b)).count();
    let header_end = segment(0);
    if rest.get(header_end) != Some(&b'.') {
        return None;
    }
    let payload_end = segment(header_end + 1);
    if rest.get(payload_end) != Some(&b'.') {
        return None;
    }
    let stop = segment(payload_end + 1);
    let decode = |s: &[u8]| -> Option<serde_json::Value> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let header = decode(&rest[..header_end])?;
    header.get("alg")?;
    let claims = decode(&rest[header_end + 1..payload_end])?;
    let sts = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == "sts.amazonaws.com",
        Some(serde_json::Value::Array(a)) => a.iter().any(|a| a == "sts.amazonaws.com"),
        _ => false,
    };
    let kubernetes = claims.get("kubernetes.io").is_some()
        || claims
            .get("sub")
            .and_then(|s| s.as_str())
            .is_some_and(|s| s.starts_with("system:serviceaccount:"));
    let detector = match (sts, kubernetes) {
        (true, _) => "jwt (sts.amazonaws.com audience)",
        (false, true) => "jwt (kubernetes service account)",
        (false, false) => return None,
    };
    Some((start, start + stop, detector.to_string()))
}

/// Standard base64 with its padding optional: ECR pads its passwords, a copy may have lost it.
const STANDARD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The standard base64 value starting at `start` (at most [`ECR_MAX`] characters, padding
/// included), decoded, and where it ends; none when it continues a longer run of base64 (its
/// bytes would be misaligned) or is no valid base64.
fn base64_value(hay: &[u8], start: usize) -> Option<(usize, Vec<u8>)> {
    if start > 0 && b64(&hay[start - 1]) {
        return None;
    }
    let rest = &hay[start..hay.len().min(start + ECR_MAX)];
    let chars = rest.iter().take_while(|b| b64(b)).count();
    let stop = chars
        + rest[chars..]
            .iter()
            .take(2)
            .take_while(|b| **b == b'=')
            .count();
    let decoded = STANDARD_ANY_PAD.decode(&rest[..stop]).ok()?;
    Some((start + stop, decoded))
}

/// True when `json` is the envelope an ECR registry password encodes: an object with the
/// encrypted `payload`, the `datakey` that opens it and its `expiration` (ECR adds `version`
/// and `type`). Any base64 starting `{"payload":"` would otherwise be reported.
fn is_ecr_envelope(json: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(fields)) => ["payload", "datakey", "expiration"]
            .iter()
            .all(|key| fields.contains_key(*key)),
        _ => false,
    }
}

/// An ECR registry password starting at `start`: base64 of its JSON envelope.
fn ecr_password(hay: &[u8], start: usize) -> Option<(usize, usize, String)> {
    let (stop, json) = base64_value(hay, start)?;
    is_ecr_envelope(&json).then(|| (start, stop, "ecr-registry-password".to_string()))
}

/// An ECR `authorizationToken` or docker `auth` starting at `start`: base64 of `AWS:` and an
/// ECR registry password.
fn ecr_auth(hay: &[u8], start: usize) -> Option<(usize, usize, String)> {
    let (stop, decoded) = base64_value(hay, start)?;
    let json = STANDARD_ANY_PAD
        .decode(decoded.strip_prefix(b"AWS:")?)
        .ok()?;
    let detector = "ecr-registry-password (docker auth: base64 of AWS:password)";
    is_ecr_envelope(&json).then(|| (start, stop, detector.to_string()))
}

/// The first few characters of a value (a quarter at most, four at most) and how many bytes are
/// hidden: enough to recognise a finding, never enough to use it.
pub fn redact(value: &[u8]) -> String {
    let shown = (value.len() / 4).min(4);
    let prefix: String = value[..shown]
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect();
    format!("{prefix}…[redacted {} bytes]", value.len() - shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;
    use base64::engine::general_purpose::STANDARD;

    fn matcher(values: &[&str]) -> Matcher {
        let mut needles = Needles::default();
        for (i, v) in values.iter().enumerate() {
            needles.add(format!("s{i}"), SecretValue::from(v.to_string()));
        }
        Matcher::new(&needles).0
    }

    fn hits_bytes(m: &Matcher, hay: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        m.scan_bytes(hay, &mut |h| hits.push(h));
        hits
    }

    fn hits_stream(m: &Matcher, hay: &[u8], read_size: usize) -> Vec<Hit> {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(out.len()).min(self.1);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut hits = Vec::new();
        let n = m
            .scan_stream(
                &mut Dribble(hay, read_size),
                &mut Window::default(),
                &mut |h| hits.push(h),
            )
            .unwrap();
        assert_eq!(n, hay.len() as u64);
        hits
    }

    #[test]
    fn needles_are_found_in_every_encoding_and_alignment() {
        let secret = "s3cr3t-value/with+odd&chars";
        let m = matcher(&[secret]);
        for (form, encoded) in encodings(secret.as_bytes()) {
            for prefix in ["", "x", "xy", "xyz"] {
                // Encode with a prefix so every alignment occurs inside a longer base64 text.
                let hay = if form.starts_with("base64") {
                    let engine = if form == "base64" {
                        &STANDARD_NO_PAD
                    } else {
                        &URL_SAFE_NO_PAD
                    };
                    engine.encode(format!("{prefix}{secret}!!"))
                } else {
                    format!("{prefix} {} ", String::from_utf8(encoded.clone()).unwrap())
                };
                let hits = hits_bytes(&m, hay.as_bytes());
                assert!(
                    !hits.is_empty() && hits[0].detector.starts_with("secret s0"),
                    "{form:?} with prefix {prefix:?} not found: {hay}"
                );
            }
        }
    }

    /// `text` with a line break after every `width` bytes, as encoders write it.
    fn wrap(text: &[u8], width: usize, eol: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for line in text.chunks(width) {
            out.extend_from_slice(line);
            out.extend_from_slice(eol.as_bytes());
        }
        out
    }

    /// `od -An -tx1`: 16 bytes a line, each as a space and two digits.
    fn od(value: &[u8], eol: &str) -> Vec<u8> {
        let mut out = String::new();
        for line in value.chunks(16) {
            for b in line {
                out.push_str(&format!(" {b:02x}"));
            }
            out.push_str(eol);
        }
        out.into_bytes()
    }

    #[test]
    fn wrapped_base64_and_hex_are_found_at_every_phase_once() {
        let secret = "arn:aws:iam::123456789012:role/wrapped-secret-ci";
        let m = matcher(&[secret]);
        for width in [76, 64, 60] {
            for eol in ["\n", "\r\n"] {
                for lead in 0..width {
                    let data = format!("{}{secret}!tail", "p".repeat(lead));
                    let b64 = wrap(STANDARD.encode(&data).as_bytes(), width, eol);
                    let hex = wrap(hex::encode(&data).as_bytes(), width, eol);
                    let upper = hex.to_ascii_uppercase();
                    for (form, text) in [("base64", b64), ("hex", hex), ("hex", upper)] {
                        let hits = hits_bytes(&m, &text);
                        assert_eq!(hits.len(), 1, "{form} {width} {eol:?} {lead}: {hits:?}");
                        assert!(hits[0].detector.contains(form), "{hits:?}");
                        // The span covers the value's characters and the breaks between them.
                        let start = hits[0].offset as usize;
                        let flat: Vec<u8> = text[start..start + hits[0].len]
                            .iter()
                            .copied()
                            .filter(|b| !b"\r\n".contains(b))
                            .collect();
                        assert!(flat.len() >= secret.len() * 8 / 6 - 2, "{hits:?}");
                    }
                }
            }
        }
        for lead in 0..16 {
            let data = format!("{}{secret}", "p".repeat(lead));
            for eol in ["\n", "\r\n"] {
                let hits = hits_bytes(&m, &od(data.as_bytes(), eol));
                assert_eq!(hits.len(), 1, "od {lead} {eol:?}: {hits:?}");
                assert_eq!(hits[0].detector, "secret s0 (hex, wrapped)");
                assert_eq!(hits[0].offset, 3 * lead as u64 + 1 + (lead as u64 / 16));
            }
        }
    }

    #[test]
    fn wrapped_forms_spanning_window_boundaries_are_found_once() {
        let secret = "wrapped-boundary-secret-0123456789";
        let m = matcher(&[secret]);
        // A long base64 text (as `base64 FILE` writes it) with the secret every 1000 bytes of
        // input: some copy straddles each window boundary, at some phase.
        let mut data = Vec::new();
        let mut expected = 0;
        while data.len() < 3 * CHUNK {
            data.extend_from_slice(&noise_block(1000));
            data.extend_from_slice(secret.as_bytes());
            expected += 1;
        }
        let text = wrap(STANDARD.encode(&data).as_bytes(), 76, "\r\n");
        let all = hits_bytes(&m, &text);
        assert_eq!(all.len(), expected, "in memory");
        for read in [1 << 20, 4096] {
            let hits = hits_stream(&m, &text, read);
            assert_eq!(hits, all, "reads of {read}");
        }
    }

    fn noise_block(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn matches_spanning_window_boundaries_are_found_once() {
        let secret = "boundary-spanning-secret-0123456789";
        let m = matcher(&[secret]);
        // Where the first two windows stop judging matches, and where the first read ends.
        let first = m.capacity() - m.lookahead;
        let second = first + (first - LOOKBEHIND);
        let mut positions = vec![0, 1];
        for boundary in [first, second, m.capacity()] {
            positions.extend(boundary - secret.len() - 1..=boundary + 1);
        }
        for at in positions {
            let mut hay = vec![b'.'; second + 1000];
            hay[at..at + secret.len()].copy_from_slice(secret.as_bytes());
            let reads: &[usize] = if at < 2 { &[7, 4096] } else { &[1 << 20] };
            for &read in reads {
                let hits = hits_stream(&m, &hay, read);
                assert_eq!(hits.len(), 1, "at {at}, reads of {read}: {hits:?}");
                assert_eq!(hits[0].offset, at as u64);
                assert_eq!(hits[0].len, secret.len());
            }
        }
    }

    #[test]
    fn generic_detectors_confirm_their_candidates() {
        let m = matcher(&[]);
        let key = "AKIAZQ3HOSTILE7INPUT";
        let secret = "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";
        let token = format!("IQoJb3JpZ2luX2VjE{}", "A".repeat(120));
        let cases: Vec<(String, Option<&str>)> = vec![
            (format!("id={key}\n"), Some("aws-access-key-id")),
            (format!("x{key}"), None),
            (format!("{key}X"), None),
            ("AKIA-not-a-key".into(), None),
            (
                format!("aws_secret_access_key = {secret}\n"),
                Some("aws-secret-access-key"),
            ),
            (
                format!("\"SecretAccessKey\": \"{secret}\""),
                Some("aws-secret-access-key"),
            ),
            (
                "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}".into(),
                None,
            ),
            (format!("aws_secret_access_key={secret}X"), None),
            (format!("token: {token}"), Some("aws-session-token")),
            (
                format!("AWS_SESSION_TOKEN={}", "b".repeat(150)),
                Some("aws-session-token"),
            ),
            ("AWS_SESSION_TOKEN=short".into(), None),
            // AWS's documentation examples are no leak.
            ("id=AKIAIOSFODNN7EXAMPLE\n".into(), None),
            ("id=AKIAI44QH8DHBEXAMPLE\n".into(), None),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n".into(),
                None,
            ),
            (
                "SecretAccessKey: je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY\n".into(),
                None,
            ),
        ];
        for (hay, want) in cases {
            let hits = hits_bytes(&m, hay.as_bytes());
            assert_eq!(
                hits.first().map(|h| h.detector.as_str()),
                want,
                "{hay}: {hits:?}"
            );
        }
    }

    #[test]
    fn a_served_value_is_found_even_when_it_is_a_documentation_example() {
        let m = matcher(&["AKIAIOSFODNN7EXAMPLE"]);
        let hits = hits_bytes(&m, b"id=AKIAIOSFODNN7EXAMPLE\n");
        let detectors: Vec<_> = hits.iter().map(|h| h.detector.as_str()).collect();
        assert_eq!(detectors, ["secret s0"]);
    }

    #[test]
    fn jwts_are_reported_only_with_identity_claims() {
        let m = matcher(&[]);
        let jwt = |claims: serde_json::Value| {
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
        };
        let sts = jwt(serde_json::json!({"aud": ["sts.amazonaws.com"]}));
        let k8s = jwt(serde_json::json!({"sub": "system:serviceaccount:ci:runner"}));
        let other = jwt(serde_json::json!({"aud": "example.com", "sub": "alice"}));
        let found = |s: &str| hits_bytes(&m, format!("t={s} ").as_bytes());
        assert_eq!(found(&sts)[0].len, sts.len());
        assert!(found(&sts)[0].detector.contains("sts.amazonaws.com"));
        assert!(found(&k8s)[0].detector.contains("kubernetes"));
        assert!(found(&other).is_empty());
        assert!(found("eyJnotajwt").is_empty());
        // A header that starts like an ECR password is still judged as a JWT's.
        let odd = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"payload":"x","alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"aud":"sts.amazonaws.com"}"#)
        );
        assert!(odd.starts_with("eyJwYXlsb2FkIjoi"), "{odd}");
        assert!(found(&odd)[0].detector.contains("sts.amazonaws.com"));
    }

    /// A password shaped as ecr:GetAuthorizationToken's (its fields in ECR's order, a random
    /// payload and data key), without the field `omit`.
    fn synthetic_ecr_password(omit: Option<&str>) -> String {
        let random = |n: usize| {
            let mut bytes = vec![0u8; n];
            rand::fill(&mut bytes[..]);
            serde_json::Value::from(STANDARD.encode(bytes))
        };
        let fields = [
            ("payload", random(1500)),
            ("datakey", random(200)),
            ("version", "2".into()),
            ("type", "DATA_KEY".into()),
            ("expiration", 1700000000.into()),
        ];
        let kept: Vec<String> = fields
            .iter()
            .filter(|(key, _)| Some(*key) != omit)
            .map(|(key, value)| format!("\"{key}\":{value}"))
            .collect();
        STANDARD.encode(format!("{{{}}}", kept.join(",")))
    }

    #[test]
    fn ecr_registry_passwords_are_found_raw_and_as_docker_auths() {
        let m = matcher(&[]);
        let password = synthetic_ecr_password(None);
        assert!(password.starts_with("eyJwYXlsb2FkIjoi"), "{password}");
        let auth = STANDARD.encode(format!("AWS:{password}"));
        let unpadded = password.trim_end_matches('=');
        for (hay, value, detector) in [
            (
                format!("--password {password}\n"),
                &password[..],
                "ecr-registry-password",
            ),
            (
                format!("PASS='{unpadded}'"),
                unpadded,
                "ecr-registry-password",
            ),
            (
                format!(
                    r#"{{"auths":{{"1.dkr.ecr.us-east-1.amazonaws.com":{{"auth":"{auth}"}}}}}}"#
                ),
                &auth[..],
                "ecr-registry-password (docker auth: base64 of AWS:password)",
            ),
            (
                format!("AWS:{password}"),
                &password[..],
                "ecr-registry-password",
            ),
        ] {
            let hits = hits_bytes(&m, hay.as_bytes());
            assert_eq!(hits.len(), 1, "{hits:?}");
            assert_eq!(hits[0].detector, detector);
            assert_eq!(hits[0].offset as usize, hay.find(value).unwrap());
            assert_eq!(hits[0].len, value.len());
            assert!(!hits[0].snippet.contains(&value[4..8]), "{hits:?}");
            // Streamed in small reads, as a layer's file is, it is the same one hit.
            assert_eq!(hits_stream(&m, hay.as_bytes(), 1000), hits);
        }
    }

    #[test]
    fn base64_that_only_starts_like_an_ecr_password_is_no_finding() {
        let m = matcher(&[]);
        let password = synthetic_ecr_password(None);
        let no_datakey = synthetic_ecr_password(Some("datakey"));
        let no_expiration = synthetic_ecr_password(Some("expiration"));
        let not_json = STANDARD.encode(r#"{"payload":"abc" and then prose, no JSON"#);
        let envelope = STANDARD.decode(&password).unwrap();
        let trailing = STANDARD.encode([&envelope[..], b" and more"].concat());
        let truncated = &password[..password.len() / 2];
        let mut cases = vec![
            no_datakey,
            no_expiration,
            not_json,
            trailing,
            truncated.to_string(),
            // Inside a longer base64 text: another alignment, not this value.
            format!("QUFB{password}"),
            "eyJwYXlsb2FkIjoi".to_string(),
        ];
        let auths: Vec<_> = cases
            .iter()
            .filter(|c| c.starts_with("eyJ"))
            .map(|c| STANDARD.encode(format!("AWS:{c}")))
            .collect();
        cases.extend(auths);
        for hay in cases {
            let hits = hits_bytes(&m, format!("x {hay} y").as_bytes());
            assert!(hits.is_empty(), "{hay}: {hits:?}");
        }
    }

    #[test]
    fn snippets_never_show_more_than_four_characters() {
        assert_eq!(redact(b"AKIAIOSFODNN7EXAMPLE"), "AKIA…[redacted 16 bytes]");
        assert_eq!(redact(b"abcdefgh"), "ab…[redacted 6 bytes]");
        assert_eq!(redact(b"\x00\x01secret\n\t"), "..…[redacted 8 bytes]");
    }

    #[test]
    fn short_needles_are_skipped_with_a_note() {
        let mut needles = Needles::default();
        needles.add("tiny", SecretValue::from("abc".to_string()));
        let (m, notes) = Matcher::new(&needles);
        assert!(notes[0].contains("tiny"), "{notes:?}");
        assert!(hits_bytes(&m, b"abc abc").is_empty());
    }

    #[test]
    fn url_encode_keeps_only_the_unreserved_characters() {
        assert_eq!(
            url_encode(b"a b+c/d?e=f&g%h"),
            "a%20b%2Bc%2Fd%3Fe%3Df%26g%25h"
        );
        assert_eq!(url_encode(b"-._~!*'()AZaz09"), "-._~%21%2A%27%28%29AZaz09");
        assert_eq!(url_encode("\u{e9}".as_bytes()), "%C3%A9");
        assert_eq!(url_encode(b"\0\n\x7f\xff"), "%00%0A%7F%FF");
    }

    // The generic detectors in base64 and hex runs.

    const KEY: &str = "AKIAZQ3HOSTILE7INPUT";
    const SECRET_KEY: &str = "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";

    /// A `~/.aws/credentials` file after `lead` bytes of something else.
    fn credentials(lead: usize) -> String {
        format!(
            "{}[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET_KEY}\n\
             region = eu-west-1\n",
            "#".repeat(lead)
        )
    }

    fn detectors(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.detector.as_str()).collect()
    }

    /// Checks that `hits` are the key id and the secret key of [`credentials`], encoded in
    /// `text`: each spans the characters that encode its value (line breaks removed, decoded at
    /// the span's alignment in `flat`), shows no more than a snippet, and says `encoding`.
    fn assert_credentials(hits: &[Hit], text: &[u8], encoding: &str) {
        assert_eq!(hits.len(), 2, "{hits:?}");
        for (hit, (detector, value)) in hits.iter().zip([
            ("aws-access-key-id", KEY),
            ("aws-secret-access-key", SECRET_KEY),
        ]) {
            assert!(
                hit.detector.starts_with(&format!("{detector} ({encoding}")),
                "{hits:?}"
            );
            let span: Vec<u8> = text[hit.offset as usize..][..hit.len]
                .iter()
                .copied()
                .filter(|b| !b"\r\n".contains(b))
                .collect();
            let (lo, hi) = if encoding == "hex" {
                (2 * value.len(), 2 * value.len())
            } else {
                (value.len() * 4 / 3, value.len() * 4 / 3 + 2)
            };
            assert!(
                (lo..=hi).contains(&span.len()),
                "{detector}: a span of {}",
                span.len()
            );
            assert_eq!(hit.snippet, redact(value.as_bytes()));
            assert_eq!(hit.value_digest, <[u8; 32]>::from(Sha256::digest(value)));
            assert_eq!(
                hit.detector.contains("wrapped"),
                text[hit.offset as usize..][..hit.len].contains(&b'\n'),
                "{hits:?}"
            );
        }
    }

    #[test]
    fn base64_of_a_credentials_file_is_decoded_and_searched() {
        let m = matcher(&[]);
        let url_safe_pad = GeneralPurpose::new(&alphabet::URL_SAFE, Default::default());
        for lead in 0..3 {
            let plain = credentials(lead);
            for engine in [&STANDARD, &STANDARD_NO_PAD, &url_safe_pad, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&plain);
                // URL-safe base64 is told apart by its own two characters, when it has them.
                let encoding = if encoded.contains(['-', '_']) {
                    "base64url"
                } else {
                    "base64"
                };
                for hay in [
                    format!("CREDS={encoded}\n"),
                    format!("echo '{encoded}' | base64 -d > ~/.aws/credentials"),
                    encoded.clone(),
                ] {
                    let hits = hits_bytes(&m, hay.as_bytes());
                    assert_credentials(&hits, hay.as_bytes(), encoding);
                    // Placed where the value's characters are.
                    let key_at = plain.find(KEY).unwrap();
                    assert_eq!(
                        hits[0].offset as usize,
                        hay.find(&encoded).unwrap() + 4 * key_at / 3,
                        "{hay}"
                    );
                }
            }
        }
    }

    #[test]
    fn wrapped_base64_of_a_credentials_file_is_decoded_at_every_phase() {
        let m = matcher(&[]);
        for width in [76, 64] {
            for eol in ["\n", "\r\n"] {
                for lead in 0..width {
                    let text = wrap(STANDARD.encode(credentials(lead)).as_bytes(), width, eol);
                    let hits = hits_bytes(&m, &text);
                    assert_credentials(&hits, &text, "base64");
                }
            }
        }
        // `base64` wraps at 76: the finding says so when the value crosses a line.
        let text = wrap(STANDARD.encode(credentials(0)).as_bytes(), 76, "\r\n");
        let hits = hits_bytes(&m, &text);
        assert!(
            detectors(&hits).contains(&"aws-secret-access-key (base64, wrapped)"),
            "{hits:?}"
        );
    }

    /// A Kubernetes Secret as `kubectl create secret generic --dry-run -o yaml` writes it.
    fn kubernetes_secret(data: &[(&str, &[u8])]) -> String {
        let mut yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ci\ntype: Opaque\ndata:\n"
            .to_string();
        for (key, value) in data {
            yaml.push_str(&format!("  {key}: {}\n", STANDARD.encode(value)));
        }
        yaml
    }

    #[test]
    fn a_kubernetes_secret_s_data_is_decoded_and_searched() {
        let m = matcher(&[]);
        // Each value alone: the secret key is confirmed by its name, left plain.
        let yaml = kubernetes_secret(&[
            ("aws_access_key_id", KEY.as_bytes()),
            ("aws_secret_access_key", SECRET_KEY.as_bytes()),
        ]);
        assert_credentials(&hits_bytes(&m, yaml.as_bytes()), yaml.as_bytes(), "base64");
        // A whole file as one value.
        let yaml = kubernetes_secret(&[("credentials", credentials(0).as_bytes())]);
        assert_credentials(&hits_bytes(&m, yaml.as_bytes()), yaml.as_bytes(), "base64");
        // A docker config with an ECR login: base64 of JSON holding base64 of `AWS:password`.
        let auth = STANDARD.encode(format!("AWS:{}", synthetic_ecr_password(None)));
        let config =
            format!(r#"{{"auths":{{"1.dkr.ecr.eu-west-1.amazonaws.com":{{"auth":"{auth}"}}}}}}"#);
        let yaml = kubernetes_secret(&[(".dockerconfigjson", config.as_bytes())]);
        let hits = hits_bytes(&m, yaml.as_bytes());
        assert_eq!(
            detectors(&hits),
            ["ecr-registry-password (docker auth: base64 of AWS:password) (base64)"]
        );
    }

    #[test]
    fn hex_of_a_key_pair_is_decoded_and_searched() {
        let m = matcher(&[]);
        let pair = format!("{KEY}:{SECRET_KEY}\n");
        let env = format!("AWS_ACCESS_KEY_ID={KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n");
        // The pair as `KEY_ID:SECRET` (the secret key has no name to confirm it: the key id
        // alone is found), then as the two variables, in either case and wrapped as `xxd -p`.
        let hay = format!("blob = {}\n", hex::encode(&pair));
        assert_eq!(
            detectors(&hits_bytes(&m, hay.as_bytes())),
            ["aws-access-key-id (hex)"]
        );
        for lead in 0..2 {
            let plain = format!("{}{env}", "#".repeat(lead));
            let lower = format!("x={}\n", hex::encode(&plain));
            let upper = lower.to_ascii_uppercase();
            let xxd = wrap(hex::encode(&plain).as_bytes(), 60, "\n");
            for text in [lower.into_bytes(), upper.into_bytes(), xxd] {
                assert_credentials(&hits_bytes(&m, &text), &text, "hex");
            }
        }
    }

    #[test]
    fn encoded_credentials_crossing_a_read_boundary_are_found_once() {
        let m = matcher(&[]);
        // One long base64 text (as `base64 FILE` writes it, and unwrapped) of noise with a
        // credentials file every 1000 bytes: some copy straddles each window boundary, at
        // some phase, and the run itself is longer than a window.
        let mut data = Vec::new();
        let mut copies = 0;
        while data.len() < 3 * CHUNK {
            data.extend_from_slice(&noise_block(1000));
            data.extend_from_slice(credentials(0).as_bytes());
            copies += 1;
        }
        let encoded = STANDARD.encode(&data);
        for text in [wrap(encoded.as_bytes(), 76, "\r\n"), encoded.into_bytes()] {
            let all = hits_bytes(&m, &text);
            assert_eq!(all.len(), 2 * copies, "in memory");
            for read in [1 << 20, 4096] {
                assert_eq!(hits_stream(&m, &text, read), all, "reads of {read}");
            }
        }
        // Short runs at each place around the first window boundary, and around where the
        // next window's look-behind starts: an encoded key id, and an encoded secret key after
        // its encoded name (the boundary may fall between them).
        let first = m.capacity() - m.lookahead;
        for run in [
            STANDARD.encode(KEY),
            STANDARD.encode(format!("aws_secret_access_key = {SECRET_KEY}\n")),
        ] {
            let alone = hits_bytes(&m, run.as_bytes());
            assert_eq!(alone.len(), 1, "{alone:?}");
            for boundary in [first, first - LOOKBEHIND] {
                for at in boundary - run.len() - 2..=boundary + 2 {
                    let mut hay = vec![b' '; first + m.lookahead + 1000];
                    hay[at..at + run.len()].copy_from_slice(run.as_bytes());
                    let hits = hits_stream(&m, &hay, 1 << 20);
                    assert_eq!(detectors(&hits), detectors(&alone), "at {at}");
                    assert_eq!(hits[0].offset, at as u64 + alone[0].offset);
                }
            }
        }
    }

    #[test]
    fn random_base64_and_hex_of_a_credentials_file_s_length_are_clean() {
        let m = matcher(&[]);
        let len = credentials(0).len();
        for _ in 0..200 {
            let mut blob = vec![0u8; len];
            rand::fill(&mut blob[..]);
            for text in [
                STANDARD.encode(&blob).into_bytes(),
                URL_SAFE_NO_PAD.encode(&blob).into_bytes(),
                wrap(STANDARD.encode(&blob).as_bytes(), 76, "\r\n"),
                hex::encode(&blob).into_bytes(),
                kubernetes_secret(&[("aws_secret_access_key", &blob[..])]).into_bytes(),
            ] {
                assert!(hits_bytes(&m, &text).is_empty(), "{text:?}");
            }
            // The same blob with a credentials file inside is found.
            let hay = STANDARD.encode([&blob[..], credentials(0).as_bytes()].concat());
            assert_eq!(hits_bytes(&m, hay.as_bytes()).len(), 2, "{hay}");
        }
    }
}
