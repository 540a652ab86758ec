//! WebSockets through the proxy, black-box: every upgrade stays open after its 101, the
//! handshake carries the identity, and an impersonating socket is closed once the
//! impersonation ends (admin revoke, the backend, the token's expiry, or idling past
//! `cache_ttl`) while a normal user's socket lives on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::deny::guarded_site;
use serde_json::json;

/// HS256 with `leeway`, a revoke bearer, liveness on `backend` with `cache_ttl`, and the deny
/// rules of the issue in front of the WebSocket `upstream`.
fn ws_config(backend: &Backend, upstream: SocketAddr, leeway: &str, cache_ttl: &str) -> Config {
    Config::new()
        .token(Token::hs256().leeway(leeway))
        .admin_token()
        .liveness(Liveness::on(backend).cache_ttl(cache_ttl).timeout("5s"))
        .site(guarded_site(upstream))
}

fn assert_handshake(r: &RawResponse) {
    assert_eq!(
        r.status,
        101,
        "handshake: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("sec-websocket-accept").as_deref(),
        Some(WS_ACCEPT),
        "Sec-WebSocket-Accept through the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_upgrade_stays_open_after_the_101() {
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&ws_config(&backend, ws.addr, "30s", "30s")).await;
    for (who, cookie) in [
        ("normal", normal_cookie()),
        ("impersonating", imp_cookie("imp-ws-many")),
    ] {
        let mut torn_down = 0;
        for i in 0..30 {
            let (r, sock) = ws_connect(sc.addr, &format!("/ws/{i}"), &cookie).await;
            assert_handshake(&r);
            let mut sock = sock.expect("socket");
            let text = format!("{who}-{i}");
            sock.send_text(&text).await;
            match sock.recv(Duration::from_secs(15)).await {
                WsEvent::Frame(1, p) if p == text.as_bytes() => {}
                WsEvent::Closed => torn_down += 1,
                other => panic!("{who} socket {i}: {other:?}"),
            }
        }
        assert_eq!(
            torn_down, 0,
            "{who}: {torn_down} of 30 upgraded sockets were closed by the proxy right after \
             the 101, before the first frame (cf. cloudflare/pingora#946)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshake_carries_identity_and_closes_after_revoke() {
    assert_eq!(ws_accept(WS_KEY), WS_ACCEPT, "the test's own SHA-1/base64");
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&ws_config(&backend, ws.addr, "30s", "30s")).await;
    let sid = "imp-ws-revoke";
    let cookie = imp_cookie(sid);

    let (r, sock) = ws_connect(sc.addr, "/ws", &cookie).await;
    assert_handshake(&r);
    let mut sock = sock.expect("socket");
    let hs = ws.handshakes();
    assert_eq!(hs.len(), 1, "one handshake upstream");
    assert_eq!(hs[0].header("x-auth-user-id").as_deref(), Some("user-42"));
    assert_eq!(hs[0].header("x-auth-tenant-id").as_deref(), Some("cafe"));
    assert_eq!(
        hs[0].header("x-auth-impersonation-session").as_deref(),
        Some(sid)
    );
    assert_eq!(
        hs[0].header("x-auth-impersonator-id").as_deref(),
        Some("admin-7")
    );
    assert!(
        hs[0]
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "Upgrade forwarded: {:?}",
        hs[0].headers
    );

    sock.echo("hello").await;
    sock.echo("second").await;

    sc.revoke(sid).await;
    sock.send_text("after-revoke").await;
    sock.expect_closed_without("after-revoke", "client frame after the revoke")
        .await;
    assert!(
        !ws.received().iter().any(|p| p == "after-revoke"),
        "the frame sent after the revoke reached the upstream: {:?}",
        ws.received()
    );

    // A new handshake with the revoked session is refused before the upstream.
    let (r, sock) = ws_connect(sc.addr, "/ws", &cookie).await;
    assert!(sock.is_none(), "revoked session upgraded again");
    assert_eq!(r.status, 401, "handshake after the revoke");
    assert_eq!(
        ws.handshakes().len(),
        1,
        "a revoked handshake reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_server_frame_after_revoke_closes_the_socket() {
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&ws_config(&backend, ws.addr, "30s", "30s")).await;
    let sid = "imp-ws-push";
    let (r, sock) = ws_connect(sc.addr, "/ws", &imp_cookie(sid)).await;
    assert_handshake(&r);
    let mut sock = sock.expect("socket");
    sock.echo("hello").await;
    // The server can push while the session is live.
    ws.push("news-before");
    match sock.recv(Duration::from_secs(15)).await {
        WsEvent::Frame(1, p) if p == b"news-before" => {}
        other => panic!("server push before the revoke: {other:?}"),
    }

    sc.revoke(sid).await;
    ws.push("news-after-revoke");
    sock.expect_closed_without("news-after-revoke", "server frame after the revoke")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_when_the_backend_reports_the_end() {
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&ws_config(&backend, ws.addr, "30s", "1s")).await;
    let sid = "imp-ws-backend";
    let (r, sock) = ws_connect(sc.addr, "/ws", &imp_cookie(sid)).await;
    assert_handshake(&r);
    let mut sock = sock.expect("socket");
    sock.echo("hello").await;
    let calls_at_end = backend.calls_for(sid);

    // The tenant side ends the session: only the backend knows.
    backend.set_for(sid, 404, r#"{"error":"not_found"}"#);
    // Keep the socket busy (so no idle timeout can be the cause) until it closes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the socket still echoes 30 s after the backend ended the session"
        );
        i += 1;
        let text = format!("busy-{i}");
        sock.send_text(&text).await;
        match sock.recv(Duration::from_secs(10)).await {
            WsEvent::Frame(1, p) if p == text.as_bytes() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            WsEvent::Closed => break,
            WsEvent::Frame(8, _) => {
                sock.expect_closed_without(&text, "after a close frame")
                    .await;
                break;
            }
            other => panic!("busy frame {i}: {other:?}"),
        }
    }
    assert!(
        backend.calls_for(sid) > calls_at_end,
        "the socket closed without the backend being asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_when_the_token_expires() {
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&ws_config(&backend, ws.addr, "1s", "30s")).await;
    let sid = "imp-ws-exp";
    let exp = now() + 6;
    let c = imp_claims_with(sid, json!({ "exp": exp }));
    let (r, sock) = ws_connect(sc.addr, "/ws", &session_cookie(&token(&c))).await;
    assert_handshake(&r);
    let mut sock = sock.expect("socket");
    sock.echo("hello").await;

    let deadline = Instant::now() + Duration::from_secs(40);
    let mut i = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the socket still echoes long after the token expired"
        );
        i += 1;
        let text = format!("tick-{i}");
        let sent_at = now();
        sock.send_text(&text).await;
        match sock.recv(Duration::from_secs(10)).await {
            WsEvent::Frame(1, p) if p == text.as_bytes() => {
                assert!(
                    sent_at <= exp,
                    "frame sent at {sent_at}, after the token expired at {exp}, was echoed"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            WsEvent::Closed => break,
            WsEvent::Frame(8, _) => {
                sock.expect_closed_without(&text, "after a close frame")
                    .await;
                break;
            }
            other => panic!("tick {i}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_impersonating_websocket_is_closed_after_cache_ttl() {
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&ws_config(&backend, ws.addr, "30s", "2s")).await;

    // A normal user's socket: identity but no impersonation, and it survives
    // idling for longer than cache_ttl.
    let (r, normal) = ws_connect(sc.addr, "/ws-normal", &normal_cookie()).await;
    assert_handshake(&r);
    let mut normal = normal.expect("normal socket");
    let hs = ws.handshakes();
    assert_eq!(hs[0].header("x-auth-user-id").as_deref(), Some("user-42"));
    assert_eq!(hs[0].header("x-auth-impersonation-session"), None);
    normal.echo("hi").await;

    let (r, imp) = ws_connect(sc.addr, "/ws-imp", &imp_cookie("imp-ws-idle")).await;
    assert_handshake(&r);
    let mut imp = imp.expect("impersonating socket");
    imp.echo("hello").await;
    // Silence: the impersonating socket is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match imp.recv(left).await {
            WsEvent::Closed => break,
            WsEvent::Frame(8, _) => {}
            WsEvent::Frame(op, p) => panic!("idle socket got a frame {op}: {p:?}"),
            WsEvent::Silent => panic!("an idle impersonating socket is open after 30 s"),
        }
    }
    // The normal socket idled all that time and still works.
    normal.echo("still here").await;
}
