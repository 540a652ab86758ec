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

// ---------------------------------------------------------------------------
// max_connections, and the descriptors kept for the admin listener
// ---------------------------------------------------------------------------

const OPEN: &str = "sessiongate_open_connections";
const REFUSED: &str = "sessiongate_connections_refused_total";

/// Like [`start_with_listen`], with `ulimit ARGS` applied to the proxy's process.
async fn start_under_ulimit(args: &str, listen_extra: &str) -> (Upstream, Sidecar) {
    let up = spawn_upstream().await;
    let sc = Sidecar::start_under_shell(
        &format!("ulimit {args}; exec \"$0\" \"$@\""),
        &listen_config(listen_extra, &site(HOST, up.addr, "")),
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    (up, sc)
}

/// Whether the proxy closes `stream` (EOF or reset, nothing sent) within `bound`; gives the
/// stream back for later use.
async fn closed_within(mut stream: TcpStream, bound: Duration) -> (TcpStream, bool) {
    let (got, closed) = read_until_closed(&mut stream, bound).await;
    assert!(
        got.is_empty(),
        "an idle connection got {:?}",
        String::from_utf8_lossy(&got)
    );
    (stream, closed)
}

/// Sends one `Connection: close` request on an already open connection; returns the status
/// line and the body.
async fn request_on(mut stream: TcpStream, authority: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(closed, "no end of the answer on an open connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_under_a_low_descriptor_limit_leave_the_admin_listener_answering() {
    let (up, sc) = start_under_ulimit("-n 128", "header_timeout = \"60s\"").await;

    // More idle connections than the process has descriptors. The kernel completes each
    // handshake (the backlog), whether or not the proxy accepts it.
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(TcpStream::connect(sc.addr).await.expect("connect"));
    }
    let mut checks = tokio::task::JoinSet::new();
    for s in conns {
        checks.spawn(closed_within(s, Duration::from_secs(5)));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    while let Some(r) = checks.join_next().await {
        match r.expect("check task") {
            (_, true) => refused += 1,
            (s, false) => held.push(s),
        }
    }
    eprintln!("{} held open, {refused} refused", held.len());
    assert!(
        refused > 0,
        "the public listener never refused a connection ({} held open)",
        held.len()
    );
    assert!(!held.is_empty(), "every connection was refused");

    // The admin listener still accepts and answers.
    let health = tokio::time::timeout(
        Duration::from_secs(20),
        plain_client().get(sc.admin_url("/healthz")).send(),
    )
    .await
    .expect("/healthz got no answer while the public listener was full")
    .expect("/healthz");
    assert_eq!(health.status(), 200);
    assert!(sc.metric(REFUSED, &[]).await >= 1.0);

    // A connection that was let in is served (and its request reaches the upstream).
    let authority = format!("{HOST}:{}", sc.addr.port());
    let answer = request_on(held.remove(0), &authority, "/held").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(up.received("/held"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_at_once() {
    let (up, sc) = start_with_listen("header_timeout = \"60s\"\nmax_connections = 50").await;

    let mut first = Vec::new();
    for _ in 0..50 {
        first.push(TcpStream::connect(sc.addr).await.expect("connect"));
    }
    // Every one of them accepted and counted before the next one arrives.
    sc.wait_for_metric(OPEN, &[], |v| v == 50.0).await;

    let extra = TcpStream::connect(sc.addr).await.expect("connect");
    let (_extra, closed) = closed_within(extra, Duration::from_secs(10)).await;
    assert!(closed, "the 51st connection was kept open");
    assert_eq!(sc.metric(REFUSED, &[]).await, 1.0);
    assert_eq!(sc.metric(OPEN, &[]).await, 50.0);

    // The first 50 still get answers.
    let authority = format!("{HOST}:{}", sc.addr.port());
    let mut answers = tokio::task::JoinSet::new();
    for (i, s) in first.into_iter().enumerate() {
        let authority = authority.clone();
        answers.spawn(async move { request_on(s, &authority, &format!("/c{i}")).await });
    }
    while let Some(a) = answers.join_next().await {
        let a = a.expect("request task");
        assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
    }
    up.wait_for_count(50).await;

    // Closed connections are no longer counted, and new ones get in again.
    sc.wait_for_metric(OPEN, &[], |v| v == 0.0).await;
    let r = send(sc.client().get(sc.url(HOST, "/again"))).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let (_up, sc) = start_under_ulimit("-Sn 256", "").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", sc.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "soft limit not raised: {line}");
}
