//! Encoded stretches: runs of base64 (standard or URL-safe alphabet, padded or not) and of hex
//! digits, on one line or wrapped (LF or CRLF, at any width of 16 or more), decoded so that the
//! generic detectors can search what they hide: a credentials file as `base64` prints it, a
//! Kubernetes Secret's `data`, a hex dump. The matcher hands each window it searches to
//! [`decode`] and searches every decoding it gets back.
//!
//! Finding runs costs little where there are none (binaries, compressed data): only every
//! [`STRIDE`]th byte is looked at, and a run is walked only where two samples in a row and the
//! bytes between them may belong to one; a run worth decoding is at least two strides long, so
//! it always holds two. The samples are classed 64 at a time without a branch ([`Pairs`]): in
//! random data a quarter of the bytes are run characters, and a branch on each sample, taken
//! at random, would cost more than the look itself (scripts/bench-scan). Each byte is then
//! walked once (twice where a run's start is found from its middle), and each run is decoded
//! once per window: no rescans.
//!
//! Bounds: a run is decoded one window at a time (the matcher's read of about 1 MiB plus
//! [`LOOKAHEAD`]), so the decoded bytes held never exceed about 800 KiB, however long the run (a
//! base64 tarball is as long as it likes). The next window decodes it again from
//! just before its own start, at every alignment (the cut need not fall between groups of four
//! characters), and each window reports only values whose encoded form starts in it: a value
//! crossing the boundary is found, once. Decoding is one level deep: base64 inside decoded
//! bytes is left to the detectors that know its shape (an ECR docker `auth`).

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// A byte class: `table[b]` says whether `b` is among `members`.
pub(super) const fn class(members: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < members.len() {
        table[members[i] as usize] = true;
        i += 1;
    }
    table
}

/// Characters of base64 in either alphabet, padding aside (hex digits are among them).
const BASE64: [bool; 256] =
    class(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_");
const HEX: [bool; 256] = class(b"0123456789abcdefABCDEF");
/// What a sample may hit inside a run: its characters and the line breaks that wrap it.
const SAMPLE: [bool; 256] =
    class(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_\r\n");
/// Bytes between samples.
const STRIDE: usize = 12;
/// Shortest base64 run decoded (18 bytes): base64 of a 20-character access key id, the
/// shortest credential a detector confirms, is 27 characters. Two strides, so sampling finds it.
const MIN_BASE64: usize = 2 * STRIDE;
/// Shortest hex run decoded: 40 digits, the hex of an access key id.
const MIN_HEX: usize = 40;
/// A line break continues a run when the line before it ends in this many run characters:
/// encoders wrap at 76 (`base64`), 64 (PEM) or 60 (`xxd -p`) columns, while prose and code
/// rarely end a line in 16 letters and digits.
const MIN_LINE: usize = 16;
/// Bytes decoded before the first place a window reports from, so the detectors see what
/// precedes a value there: the byte before it (a key id must not continue a longer word) or
/// its name (`secret_access_key = `, 25 bytes: 34 base64 characters, 50 hex digits).
const BACK: usize = 64;
/// Most bytes of a run's own line kept before its decoding: a value's name often stays plain
/// while the value is encoded (`aws_secret_access_key: BASE64` in a Kubernetes Secret), and
/// the detectors that confirm a value by its name need it (its longest name and separators fit).
const CONTEXT: usize = 32;
/// Bytes a window must hold before the first place it reports from: the context of a run
/// starting there (which covers the line a wrapped run may continue).
pub const LOOKBEHIND: usize = BACK + CONTEXT;
/// Bytes a window must hold past the last place it reports from: a value starting there,
/// encoded, and what the detectors read after it (16 KiB decoded at most, 32 KiB as hex,
/// plus line breaks).
pub const LOOKAHEAD: usize = 40 << 10;

/// Base64 in the standard alphabet (the URL-safe one is folded into it), without padding (runs
/// stop before it) and with trailing bits allowed: a run cut anywhere still decodes.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Base64,
    Hex,
}

impl Encoding {
    fn class(self) -> &'static [bool; 256] {
        match self {
            Encoding::Base64 => &BASE64,
            Encoding::Hex => &HEX,
        }
    }

    fn min_run(self) -> usize {
        match self {
            Encoding::Base64 => MIN_BASE64,
            Encoding::Hex => MIN_HEX,
        }
    }

    /// Characters per group: the alignments a run may be decoded at.
    fn alignments(self) -> usize {
        match self {
            Encoding::Base64 => 4,
            Encoding::Hex => 2,
        }
    }

    /// The characters that encode decoded bytes `at..at + len` of a decoding at `shift`: the
    /// first, and one past the last.
    fn chars(self, shift: usize, at: usize, len: usize) -> (usize, usize) {
        match self {
            Encoding::Base64 => (shift + 4 * at / 3, shift + (4 * (at + len)).div_ceil(3)),
            Encoding::Hex => (shift + 2 * at, shift + 2 * (at + len)),
        }
    }

    /// Appends the decoding of `chars` (all of this encoding's alphabet) to `out`; a last
    /// character that makes no byte is left out.
    fn decode(self, chars: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let ok = match self {
            Encoding::Base64 => {
                let n = chars.len() - usize::from(chars.len() % 4 == 1);
                LENIENT.decode_vec(&chars[..n], out).is_ok()
            }
            Encoding::Hex => {
                let n = chars.len() / 2;
                out.resize(start + n, 0);
                hex::decode_to_slice(&chars[..2 * n], &mut out[start..]).is_ok()
            }
        };
        if !ok {
            out.truncate(start); // cannot happen for alphabet characters; decode nothing then
        }
    }
}

/// Buffers reused across the runs of a window.
#[derive(Default)]
struct Scratch {
    /// The run's characters without its line breaks (URL-safe base64 folded to standard).
    flat: Vec<u8>,
    /// Where each line of the run starts: index in `flat`, position in the window.
    lines: Vec<(usize, usize)>,
    /// Context and decoded bytes.
    out: Vec<u8>,
}

/// One decoding of (part of) a run, at one alignment.
pub struct Decoded<'a> {
    /// The plain text of the run's line before it (when the run starts in this window), then
    /// the decoded bytes.
    pub bytes: &'a [u8],
    /// How many leading bytes of `bytes` are that plain context.
    pub context: usize,
    /// `base64`, `base64url` or `hex`: the encoding, for the finding.
    pub encoding: &'static str,
    kind: Encoding,
    shift: usize,
    lines: &'a [(usize, usize)],
}

impl Decoded<'_> {
    /// Where the decoded bytes at `at..at + len` of `bytes` (past the context) are encoded in
    /// the window: the first position, the length of the encoded span (line breaks included),
    /// and whether it crosses a line break.
    pub fn span(&self, at: usize, len: usize) -> (usize, usize, bool) {
        let (first, end) = self.kind.chars(self.shift, at - self.context, len.max(1));
        let (first_line, start) = self.locate(first);
        let (last_line, last) = self.locate(end - 1);
        (start, last + 1 - start, first_line != last_line)
    }

    /// The line and window position of the character at `index` of the flattened run.
    fn locate(&self, index: usize) -> (usize, usize) {
        let line = self.lines.partition_point(|&(flat, _)| flat <= index) - 1;
        let (flat, pos) = self.lines[line];
        (line, pos + index - flat)
    }
}

/// Calls `on_decoded` with each decoding of the base64 and hex runs that have characters in
/// `from..end` of `hay`, from a little before `from` (or the run's start) to the run's end or
/// [`LOOKAHEAD`] bytes past `end`. `hay` holds [`LOOKBEHIND`] bytes before `from` unless
/// `stream_start` (then `hay` starts the stream). Runs starting at or after `end` are left
/// to the next window.
pub fn decode(
    hay: &[u8],
    from: usize,
    end: usize,
    stream_start: bool,
    on_decoded: &mut dyn FnMut(&Decoded<'_>),
) {
    let limit = hay.len().min(end.saturating_add(LOOKAHEAD));
    // A run starting before `end` and long enough holds two samples before `end + 2 * STRIDE`.
    let mut pairs = Pairs::new(hay, from, hay.len().min(end + 2 * STRIDE));
    let mut scratch = Scratch::default();
    while let Some(at) = pairs.next() {
        // Blank lines pass the test too: the run starts at a base64 character, if any.
        let Some(seed) = (at..=at + STRIDE).find(|&i| BASE64[usize::from(hay[i])]) else {
            continue;
        };
        let (start, stop) = extent(hay, seed, limit, &BASE64);
        let bounds = (from, end, stream_start);
        stretch(
            hay,
            Encoding::Base64,
            (start, stop),
            bounds,
            &mut scratch,
            on_decoded,
        );
        // Hex digits are base64 characters: every hex run lies inside a base64 run.
        let mut i = start;
        while i < stop {
            if HEX[usize::from(hay[i])] {
                let (hex_start, hex_stop) = extent(hay, i, stop, &HEX);
                let run = (hex_start, hex_stop);
                stretch(hay, Encoding::Hex, run, bounds, &mut scratch, on_decoded);
                i = hex_stop.max(i + 1);
            } else {
                i += 1;
            }
        }
        pairs.skip_to(stop + 1);
    }
}

/// Samples per block: one bit each in a `u64`.
const BLOCK: usize = 64;
/// Bytes from a block's first sample to its last.
const SPAN: usize = (BLOCK - 1) * STRIDE + 1;

/// The places a run may be, in order: samples `at` (every [`STRIDE`]th byte from a start)
/// where `hay[at..=at + STRIDE]` are all [`SAMPLE`] bytes, as they are when both samples lie
/// in one run. The samples of a block are classed without a branch, and only the pairs of
/// sample hits have the bytes between them looked at: random data, where a quarter of the
/// bytes are run characters, would otherwise mispredict a branch at every other sample.
struct Pairs<'a> {
    hay: &'a [u8],
    /// Samples lie before this.
    to: usize,
    /// The block's first sample.
    block: usize,
    /// Bit `k`: samples `k` and `k + 1` of the block hit, and are still to be judged.
    hits: u64,
}

impl<'a> Pairs<'a> {
    fn new(hay: &'a [u8], from: usize, to: usize) -> Self {
        let mut pairs = Pairs {
            hay,
            to,
            block: from,
            hits: 0,
        };
        pairs.sample();
        pairs
    }

    /// Classes the samples of the block at `self.block`.
    fn sample(&mut self) {
        let bit = |k: usize, b: &u8| u64::from(SAMPLE[usize::from(*b)]) << k;
        let samples = self.hay.get(self.block..self.to).unwrap_or_default();
        let mask = match samples.first_chunk::<SPAN>() {
            // A whole block: an array, so the loop unrolls without bounds checks.
            Some(span) => (0..BLOCK).fold(0, |mask, k| mask | bit(k, &span[k * STRIDE])),
            None => (samples.iter().step_by(STRIDE).enumerate())
                .fold(0, |mask, (k, b)| mask | bit(k, b)),
        };
        self.hits = mask & (mask >> 1);
    }

    /// Passes over the samples before `at`: a run walked up to there; the next starts after.
    fn skip_to(&mut self, at: usize) {
        let skipped = at.saturating_sub(self.block).div_ceil(STRIDE);
        if skipped < BLOCK - 1 {
            self.hits &= !0u64 << skipped;
        } else {
            self.block = at;
            self.sample();
        }
    }
}

impl Iterator for Pairs<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            while self.hits != 0 {
                let at = self.block + STRIDE * self.hits.trailing_zeros() as usize;
                self.hits &= self.hits - 1;
                let between = &self.hay[at + 1..at + STRIDE];
                if between
                    .iter()
                    .fold(true, |all, b| all & SAMPLE[usize::from(*b)])
                {
                    return Some(at);
                }
            }
            // The next block starts at this one's last sample, the first of its last pair.
            let next = self.block + (BLOCK - 1) * STRIDE;
            if next >= self.to {
                return None;
            }
            self.block = next;
            self.sample();
        }
    }
}

/// Decodes the run at `start..stop` at each alignment, if it is long enough and has
/// characters in `from..end`.
fn stretch(
    hay: &[u8],
    kind: Encoding,
    (start, stop): (usize, usize),
    (from, end, stream_start): (usize, usize, bool),
    scratch: &mut Scratch,
    on_decoded: &mut dyn FnMut(&Decoded<'_>),
) {
    if stop - start < kind.min_run() || stop <= from || start >= end {
        return;
    }
    let first = start.max(from.saturating_sub(BACK));
    // The run starts here (not in the previous window): its line's plain text before it.
    let context = if first == start && (start > 0 || stream_start) {
        let line = &hay[start.saturating_sub(CONTEXT)..start];
        let line_start = line.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        &line[line_start..]
    } else {
        &[]
    };
    let url = flatten(hay, kind, first, stop, scratch);
    let encoding = match (kind, url) {
        (Encoding::Base64, false) => "base64",
        (Encoding::Base64, true) => "base64url",
        (Encoding::Hex, _) => "hex",
    };
    for shift in 0..kind.alignments().min(scratch.flat.len()) {
        // The context belongs before the run's first character: with the first alignment.
        let context = if shift == 0 { context } else { &[] };
        scratch.out.clear();
        scratch.out.extend_from_slice(context);
        kind.decode(&scratch.flat[shift..], &mut scratch.out);
        on_decoded(&Decoded {
            bytes: &scratch.out,
            context: context.len(),
            encoding,
            kind,
            shift,
            lines: &scratch.lines,
        });
    }
}

/// Copies the run's characters in `hay[start..stop]` to `scratch.flat`, without line breaks
/// and with base64's URL-safe alphabet folded into the standard one, noting where each line
/// starts; true when URL-safe characters were seen.
fn flatten(hay: &[u8], kind: Encoding, start: usize, stop: usize, scratch: &mut Scratch) -> bool {
    scratch.flat.clear();
    scratch.lines.clear();
    let class = kind.class();
    let mut url = false;
    let mut i = start;
    while i < stop {
        let n = hay[i..stop]
            .iter()
            .take_while(|b| class[usize::from(**b)])
            .count();
        scratch.lines.push((scratch.flat.len(), i));
        let line = &hay[i..i + n];
        match kind {
            Encoding::Base64 => scratch.flat.extend(line.iter().map(|&b| match b {
                b'-' => {
                    url = true;
                    b'+'
                }
                b'_' => {
                    url = true;
                    b'/'
                }
                b => b,
            })),
            Encoding::Hex => scratch.flat.extend_from_slice(line),
        }
        i += n;
        // The line break (the run holds nothing else), and at least one byte: progress.
        let gap = hay[i..stop]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        i += gap.max(usize::from(n == 0));
    }
    url
}

/// The run of `class` characters around `seed` (one of them), continued across line breaks
/// that end a line of [`MIN_LINE`] or more of them; it stops at `limit` at the latest.
fn extent(hay: &[u8], seed: usize, limit: usize, class: &[bool; 256]) -> (usize, usize) {
    let member = |b: u8| class[usize::from(b)];
    let mut start = seed;
    loop {
        while start > 0 && member(hay[start - 1]) {
            start -= 1;
        }
        match line_break_before(hay, start) {
            Some(at) if wraps(hay, at, class) => start = at,
            _ => break,
        }
    }
    let mut stop = seed;
    loop {
        while stop < limit && member(hay[stop]) {
            stop += 1;
        }
        let gap = match hay.get(stop..limit) {
            Some([b'\n', ..]) => 1,
            Some([b'\r', b'\n', ..]) => 2,
            _ => break,
        };
        if stop + gap < limit && member(hay[stop + gap]) && wraps(hay, stop, class) {
            stop += gap;
        } else {
            break;
        }
    }
    (start, stop)
}

/// Where the line break that ends just before `at` starts, if one does.
fn line_break_before(hay: &[u8], at: usize) -> Option<usize> {
    if at == 0 || hay[at - 1] != b'\n' {
        return None;
    }
    Some(if at >= 2 && hay[at - 2] == b'\r' {
        at - 2
    } else {
        at - 1
    })
}

/// Whether the line whose break starts at `at` ends in [`MIN_LINE`] `class` characters.
fn wraps(hay: &[u8], at: usize, class: &[bool; 256]) -> bool {
    at >= MIN_LINE
        && hay[at - MIN_LINE..at]
            .iter()
            .all(|b| class[usize::from(*b)])
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD_NO_PAD;

    use super::*;

    /// The shortest runs decoded are found wherever they lie against the samples: at every
    /// offset across two blocks, and one after another (the search resumes past a run).
    #[test]
    fn the_shortest_runs_are_found_at_every_offset() {
        let plain = b"0123456789abcdefgh";
        let run = STANDARD_NO_PAD.encode(plain);
        assert_eq!(run.len(), MIN_BASE64);
        for at in 0..2 * SPAN {
            let next = at + run.len() + 1 + at % STRIDE;
            let mut hay = vec![b' '; 3 * SPAN];
            for start in [at, next] {
                hay[start..start + run.len()].copy_from_slice(run.as_bytes());
            }
            let mut found = Vec::new();
            decode(&hay, 0, hay.len(), true, &mut |d| {
                if d.span(d.context, 1).0 == next || d.span(d.context, 1).0 == at {
                    found.push((d.span(d.context, 1).0, d.bytes[d.context..].to_vec()));
                }
            });
            found.retain(|(_, bytes)| bytes == plain);
            assert_eq!(found.len(), 2, "runs at {at} and {next}: {found:?}");
        }
    }
}
