//! Client connections on the public listener, black-box: how long a new connection may take
//! to say what it speaks (`listen.header_timeout`), and how many may be open at once
//! (`listen.max_connections`, and the descriptors kept for the admin listener).

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "cafe.nixtech.app";

/// The test template with `extra` lines added to its `[listen]` table.
fn listen_config(extra: &str, sites: &str) -> String {
    let with = format!("addr = \"@LISTEN@\"\n{extra}");
    config(sites).replacen("addr = \"@LISTEN@\"", &with, 1)
}

async fn start_with_listen(extra: &str) -> (Upstream, Sidecar) {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &listen_config(extra, &site(HOST, up.addr, "")),
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    (up, sc)
}

/// Reads until the proxy closes the connection or `bound` passes. Returns what arrived and
/// whether the connection was closed (EOF or reset) within the bound.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

// ---------------------------------------------------------------------------
// header_timeout: the h2c preface is read incrementally, under a deadline
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shorter_than_the_h2_preface_is_answered() {
    // A long header_timeout: the answer must come from the request, not from the deadline.
    let (up, sc) = start_with_listen("header_timeout = \"60s\"").await;

    // 18 bytes, less than the 24 of the h2 preface, and the client then waits for the answer.
    let mut s = TcpStream::connect(sc.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1."),
        "no answer to an 18-byte HTTP/1.0 request (closed: {closed}): {text:?}"
    );
    assert!(
        !text.starts_with("HTTP/1.1 408"),
        "answered by the deadline, not the request: {text:?}"
    );

    // The same with a Host: proxied as usual.
    let authority = format!("{HOST}:{}", sc.addr.port());
    let mut s = TcpStream::connect(sc.addr).await.expect("connect");
    s.write_all(format!("GET /short HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("ok"), "{text:?}");
    assert!(up.received("/short"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_gets_408_and_is_closed_after_header_timeout() {
    let (_up, sc) = start_with_listen("header_timeout = \"1s\"").await;

    let started = Instant::now();
    let mut s = TcpStream::connect(sc.addr).await.expect("connect");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(15)).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed,
        "a silent connection was still open after {waited:?}: {text:?}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before header_timeout (1s)"
    );
    let head = text.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 408 request timeout\r\n"),
        "{text:?}"
    );
    assert!(head.contains("\r\nconnection: close\r\n"), "{text:?}");
    assert!(head.contains("\r\ncontent-length: 0\r\n"), "{text:?}");
    assert!(head.ends_with("\r\n\r\n"), "a body after the 408: {text:?}");

    // Half an h2 preface: closed at the deadline, without an HTTP/1 answer.
    let mut s = TcpStream::connect(sc.addr).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(closed, "a connection stuck mid-preface was never closed");
    assert!(
        got.is_empty(),
        "answered a partial h2 preface with {:?}",
        String::from_utf8_lossy(&got)
    );

    // The listener still serves, over HTTP/1.1 and h2c with prior knowledge.
    let r = send(sc.client().get(sc.url(HOST, "/after"))).await;
    assert_eq!(r.status, 200);
    let r = send(sc.h2_client().get(sc.url(HOST, "/after-h2"))).await;
    assert_eq!(r.version, reqwest::Version::HTTP_2);
    assert_eq!(r.status, 200);
}
