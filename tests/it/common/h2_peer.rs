//! A raw HTTP/2 peer that speaks frames by hand: for peers no well-behaved client would be
//! (one that goes idle after its preface, one that never answers a PING).

use tokio::io::{AsyncRead, AsyncReadExt};

/// The client preface and an empty SETTINGS frame: an HTTP/2 client's first words.
pub const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Frame types by number.
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
/// The ACK flag of SETTINGS and PING.
pub const ACK: u8 = 1;

/// One frame as read from the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// Reads the next frame; `None` once the stream has ended.
pub async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        payload,
    })
}

/// A frame on stream 0 (SETTINGS, PING), ready to write.
pub fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}
