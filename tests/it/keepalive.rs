//! HTTP/2 keepalive of the helper's servers: a peer that goes silent and leaves the server's
//! PING unanswered is disconnected after the interval and the timeout; a quiet peer that answers
//! stays.

use crate::common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use common::h2_peer::{frame, read_frame, Frame, ACK, HELLO, PING, SETTINGS};
use http::{Request, Response};
use hyper::body::Incoming;
use irsa_secrets::wire::h2::{self, KeepAlive};
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const KEEP_ALIVE: KeepAlive = KeepAlive {
    interval: Duration::from_millis(800),
    timeout: Duration::from_millis(800),
};

/// Serves one connection with the helper's HTTP/2 server and short keepalive; returns the
/// peer's end, and a handle that resolves when the server has closed the connection.
fn serve() -> (UnixStream, tokio::task::JoinHandle<Instant>) {
    let (server, peer) = UnixStream::pair().unwrap();
    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    });
    let done = tokio::spawn(async move {
        let _ = h2::server_with(KEEP_ALIVE)
            .serve_connection(h2::buffered(server), svc)
            .await;
        Instant::now()
    });
    (peer, done)
}

/// Reads every frame the server sends into `frames`, until the stream ends.
fn reader(mut rx: ReadHalf<UnixStream>) -> mpsc::UnboundedReceiver<(Instant, Frame)> {
    let (tx, frames) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(f) = read_frame(&mut rx).await {
            if tx.send((Instant::now(), f)).is_err() {
                break;
            }
        }
    });
    frames
}

#[tokio::test]
async fn a_peer_that_never_answers_ping_is_disconnected() {
    let (peer, done) = serve();
    let (rx, mut tx) = tokio::io::split(peer);
    let mut frames = reader(rx);
    tx.write_all(HELLO).await.unwrap();
    let hello = Instant::now();
    // The peer reads (so nothing backs up) but never writes again: not even the SETTINGS ack.
    let closed = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("the server closes a silent peer's connection")
        .unwrap();
    let waited = closed - hello;
    // Everything the server sent, up to the end of the stream.
    let mut kinds = Vec::new();
    let mut pinged = None;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), frames.recv())
            .await
            .expect("the peer sees its connection end");
        let Some((at, f)) = next else { break };
        if f.kind == PING && f.flags & ACK == 0 {
            pinged.get_or_insert(at);
        }
        kinds.push(f.kind);
    }
    assert_eq!(kinds.first(), Some(&SETTINGS), "frames {kinds:?}");
    let pinged = pinged.unwrap_or_else(|| panic!("a PING before the close; frames {kinds:?}"));
    assert!(
        pinged - hello >= KEEP_ALIVE.interval,
        "no PING before the interval: {:?}",
        pinged - hello
    );
    assert!(
        waited >= KEEP_ALIVE.interval + KEEP_ALIVE.timeout,
        "the connection lasts the interval and the timeout: closed after {waited:?}"
    );
}

#[tokio::test]
async fn a_quiet_peer_that_answers_ping_stays_connected() {
    let (peer, mut done) = serve();
    let (rx, mut tx) = tokio::io::split(peer);
    let mut frames = reader(rx);
    tx.write_all(HELLO).await.unwrap();
    let until = Instant::now() + 3 * (KEEP_ALIVE.interval + KEEP_ALIVE.timeout);
    let mut pings = 0;
    while Instant::now() < until {
        tokio::select! {
            _ = &mut done => panic!("the server closed a peer that answers its PINGs"),
            Some((_, f)) = frames.recv() => match (f.kind, f.flags & ACK) {
                (SETTINGS, 0) => tx.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap(),
                (PING, 0) => {
                    pings += 1;
                    tx.write_all(&frame(PING, ACK, &f.payload)).await.unwrap();
                }
                _ => {}
            },
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
    assert!(
        pings >= 2,
        "an idle peer is pinged each interval: {pings} PINGs"
    );
}
