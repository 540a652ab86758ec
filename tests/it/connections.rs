//! Client connections on the public listener, black-box: how long a new connection may take
//! to say what it speaks (`listen.header_timeout`), and how many may be open at once
//! (`listen.max_connections`, and the descriptors kept for the admin listener).

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// `config` (its `[listen]` settings) with the site `cafe` on a fresh upstream.
async fn start(config: Config) -> (Upstream, Sidecar) {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&config.site(Site::new(HOST, up.addr))).await;
    (up, sc)
}

/// Writes `bytes` on `conn`, then reads until the proxy closes it or `bound` passes: what
/// arrived, and whether it was closed (EOF or reset) within the bound.
async fn write_then_read(mut conn: Conn, bytes: &[u8], bound: Duration) -> (Vec<u8>, bool) {
    conn.stream.write_all(bytes).await.expect("write");
    conn.read_until_closed(bound).await
}

// ---------------------------------------------------------------------------
// header_timeout: the h2c preface is read incrementally, under a deadline
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shorter_than_the_h2_preface_is_answered() {
    // A long header_timeout: the answer must come from the request, not from the deadline.
    let (up, sc) = start(Config::new().header_timeout("60s")).await;

    // 18 bytes, less than the 24 of the h2 preface, and the client then waits for the answer.
    let (got, closed) = write_then_read(
        Conn::open(sc.addr).await,
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(20),
    )
    .await;
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
    let req = format!(
        "GET /short HTTP/1.0\r\nHost: {}\r\n\r\n",
        sc.authority(HOST)
    );
    let (got, _) = write_then_read(
        Conn::open(sc.addr).await,
        req.as_bytes(),
        Duration::from_secs(20),
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("ok"), "{text:?}");
    assert!(up.received("/short"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_gets_408_and_is_closed_after_header_timeout() {
    let (_up, sc) = start(Config::new().header_timeout("1s")).await;

    let started = Instant::now();
    let mut c = Conn::open(sc.addr).await;
    let (got, closed) = c.read_until_closed(Duration::from_secs(15)).await;
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
    let (got, closed) = write_then_read(
        Conn::open(sc.addr).await,
        b"PRI * HTTP/2.0\r\n",
        Duration::from_secs(15),
    )
    .await;
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

/// Like [`start`], with `ulimit ARGS` applied to the proxy's process.
async fn start_under_ulimit(args: &str, config: Config) -> (Upstream, Sidecar) {
    let up = spawn_upstream().await;
    let sc = Sidecar::start_under_shell(
        &format!("ulimit {args}; exec \"$0\" \"$@\""),
        &config.site(Site::new(HOST, up.addr)),
    )
    .await;
    (up, sc)
}

/// Whether the proxy closes `conn` (EOF or reset, nothing sent) within `bound`; gives the
/// connection back for later use.
async fn closed_within(mut conn: Conn, bound: Duration) -> (Conn, bool) {
    let (got, closed) = conn.read_until_closed(bound).await;
    assert!(
        got.is_empty(),
        "an idle connection got {:?}",
        String::from_utf8_lossy(&got)
    );
    (conn, closed)
}

/// Sends one `Connection: close` request on an already open connection; returns the status
/// line and the body.
async fn request_on(conn: Conn, authority: &str, path: &str) -> String {
    let req = raw_request_bytes::<&str>("GET", path, authority, &[]);
    let (got, closed) = write_then_read(conn, &req, Duration::from_secs(20)).await;
    assert!(closed, "no end of the answer on an open connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_under_a_low_descriptor_limit_leave_the_admin_listener_answering() {
    let (up, sc) = start_under_ulimit("-n 128", Config::new().header_timeout("60s")).await;

    // More idle connections than the process has descriptors. The kernel completes each
    // handshake (the backlog), whether or not the proxy accepts it.
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(Conn::open(sc.addr).await);
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
    let answer = request_on(held.remove(0), &sc.authority(HOST), "/held").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(up.received("/held"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_at_once() {
    let (up, sc) = start(Config::new().header_timeout("60s").max_connections(50)).await;

    let mut first = Vec::new();
    for _ in 0..50 {
        first.push(Conn::open(sc.addr).await);
    }
    // Every one of them accepted and counted before the next one arrives.
    sc.wait_for_metric(OPEN, &[], |v| v == 50.0).await;

    let extra = Conn::open(sc.addr).await;
    let (_extra, closed) = closed_within(extra, Duration::from_secs(10)).await;
    assert!(closed, "the 51st connection was kept open");
    assert_eq!(sc.metric(REFUSED, &[]).await, 1.0);
    assert_eq!(sc.metric(OPEN, &[]).await, 50.0);

    // The first 50 still get answers.
    let authority = sc.authority(HOST);
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
    let (_up, sc) = start_under_ulimit("-Sn 256", Config::new()).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", sc.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "soft limit not raised: {line}");
}
