//! HTTP/1.1 framing and limits, black-box with raw bytes: CL+TE smuggling (also of a denied
//! route), duplicate `Content-Length`, obs-fold, duplicate `Host`, stacked
//! `Transfer-Encoding`, the 32 KiB header limit (SPEC.md "Limits"), and a flood of garbage and
//! forged tokens. Each refusal is a 400 (or 431) that closes the connection, and the proxy
//! keeps serving.

use std::time::Duration;

use crate::common::*;
use crate::deny::guarded_config;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// Sends `bytes` on a fresh connection; expects one 400 and then the
/// connection closed, without a second response to anything pipelined.
async fn expect_400_and_close(sc: &Sidecar, what: &str, bytes: &[u8]) -> RawResponse {
    let mut c = Conn::open(sc.addr).await;
    c.send(bytes).await;
    let r = c
        .response(false)
        .await
        .unwrap_or_else(|| panic!("{what}: closed without a response"));
    assert_eq!(
        r.status,
        400,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    c.assert_closed(what).await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_smuggling_of_a_denied_route_is_refused_and_closes() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let imp = imp_cookie("imp-smuggle");
    let normal = normal_cookie();
    let follow =
        format!("GET /pipelined-after HTTP/1.1\r\nHost: {HOST}\r\nCookie: {normal}\r\n\r\n");
    let smuggled = format!(
        "POST /settings/password HTTP/1.1\r\nHost: {HOST}\r\nCookie: {imp}\r\nContent-Length: 2\r\n\r\nxx"
    );

    // CL+TE on the denied route itself, impersonating: both orders.
    for (name, head) in [
        (
            "CL then TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "TE then CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "te lower-case",
            "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
        ),
    ] {
        let req = format!(
            "POST /settings/password HTTP/1.1\r\nHost: {HOST}\r\nCookie: {imp}\r\n{head}\r\n0\r\n\r\n{follow}"
        );
        expect_400_and_close(&sc, &format!("impersonating, {name}"), req.as_bytes()).await;
    }

    // An allowed request whose two framings disagree, smuggling the denied one
    // (and a plain follow-up) in what one reading calls the body.
    for (who, cookie) in [("impersonating", &imp), ("normal", &normal)] {
        let inner = format!("0\r\n\r\n{smuggled}");
        let cl_te = format!(
            "POST /comments HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{inner}{follow}",
            inner.len()
        );
        expect_400_and_close(&sc, &format!("{who}, CL.TE desync"), cl_te.as_bytes()).await;
        // TE.CL: the chunk holds the smuggled request; CL covers only the size line.
        let chunk = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
        let te_cl = format!(
            "POST /comments HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunk}{follow}"
        );
        expect_400_and_close(&sc, &format!("{who}, TE.CL desync"), te_cl.as_bytes()).await;
    }
    assert_eq!(
        up.count(),
        0,
        "a request with conflicting framing reached the upstream: {:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );

    // A refused POST whose body looks like a request: the body never becomes
    // a request of its own on a kept-alive connection.
    let mut c = Conn::open(sc.addr).await;
    let body = format!("GET /from-the-body HTTP/1.1\r\nHost: {HOST}\r\nCookie: {normal}\r\n\r\n");
    c.send(&http1(
        "POST",
        "/settings/password",
        &[("Cookie", &imp), ("Accept", "application/json")],
        body.as_bytes(),
    ))
    .await;
    let r = c.response(false).await.expect("answer to the denied POST");
    assert_eq!(r.status, 403, "denied POST with a request-shaped body");
    c.send(&http1("GET", "/after-denied", &[("Cookie", &normal)], b""))
        .await;
    if let Some(r) = c.response(false).await {
        assert_eq!(r.status, 200, "the next request on the connection");
        assert!(
            up.received("/after-denied"),
            "the 200 after the refusal did not come from /after-denied"
        );
        if let Some(extra) = tokio::time::timeout(Duration::from_secs(1), c.response(false))
            .await
            .ok()
            .flatten()
        {
            panic!("a third response arrived: {extra:?}");
        }
    }
    assert!(
        !up.received("/from-the-body"),
        "the body of a refused request was read as a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_refused_and_closes() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let normal = normal_cookie();
    let follow =
        format!("GET /pipelined-after HTTP/1.1\r\nHost: {HOST}\r\nCookie: {normal}\r\n\r\n");

    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Length",
            format!(
                "POST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
            ),
        ),
        (
            "a Content-Length list",
            format!("POST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3, 5\r\n\r\nabcde"),
        ),
        (
            "obs-fold",
            format!("GET /folded HTTP/1.1\r\nHost: {HOST}\r\nX-Note: first\r\n  continued\r\n\r\n"),
        ),
        (
            "obs-fold of Transfer-Encoding",
            format!(
                "POST /folded HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\nabc"
            ),
        ),
        (
            "two Host headers",
            format!("GET /two-hosts HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.example\r\n\r\n"),
        ),
        (
            "two Host headers, same value",
            format!("GET /two-hosts HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n"),
        ),
        (
            "Transfer-Encoding chunked then identity",
            format!(
                "POST /te HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
        ),
        (
            "whitespace before the colon",
            format!(
                "POST /te HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"
            ),
        ),
    ];
    for (what, req) in &cases {
        let mut bytes = req.clone().into_bytes();
        bytes.extend_from_slice(follow.as_bytes());
        expect_400_and_close(&sc, what, &bytes).await;
        assert_eq!(
            up.count(),
            0,
            "{what}: reached the upstream: {:?}",
            up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
        );
    }

    // The proxy still serves.
    let r = raw_request(
        sc.addr,
        &http1("GET", "/still-up", &[("Cookie", &normal)], b""),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
}

/// Two `Content-Length` fields with the same value: RFC 9110 lets a recipient
/// either reject or merge them; an auth front end refuses, like any other
/// duplicate framing header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_equal_content_length_is_refused_and_closes() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let normal = normal_cookie();
    let req = format!(
        "POST /form HTTP/1.1\r\nHost: {HOST}\r\nCookie: {normal}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde"
    );
    let mut c = Conn::open(sc.addr).await;
    c.send(req.as_bytes()).await;
    let r = c.response(false).await.expect("an answer");
    let forwarded = up
        .requests()
        .first()
        .map(|r| r.header_all("content-length"));
    assert_eq!(
        r.status, 400,
        "two equal Content-Length headers: answered {}, the upstream got Content-Length {forwarded:?}",
        r.status
    );
    c.assert_closed("after two equal Content-Length").await;
    assert_eq!(up.count(), 0, "forwarded with Content-Length {forwarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_is_431_and_the_proxy_keeps_serving() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let normal = normal_cookie();
    let imp = imp_cookie("imp-431");

    // A 200 KB Cookie header, with the session cookie inside (normal and impersonating).
    for (who, session) in [("normal", &normal), ("impersonating", &imp)] {
        let big = format!("{session}; junk={}", "j".repeat(200 * 1024));
        let mut c = Conn::open(sc.addr).await;
        c.send(&http1("GET", "/big-cookie", &[("Cookie", &big)], b""))
            .await;
        let r = c
            .response(false)
            .await
            .unwrap_or_else(|| panic!("{who}: closed without answering the 200 KB Cookie"));
        assert_eq!(r.status, 431, "{who}: 200 KB Cookie");
        c.assert_closed(&format!("{who}: after the 431")).await;

        let r = raw_request(
            sc.addr,
            &http1(
                "GET",
                &format!("/after-431-{who}"),
                &[("Cookie", session)],
                b"",
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{who}: a new connection after the 431");
    }
    // Many small headers over 32 KiB in all, on a POST to a denied route.
    let names: Vec<String> = (0..300).map(|i| format!("X-Pad-{i}")).collect();
    let value = "p".repeat(120);
    let mut headers: Vec<(&str, &str)> = vec![("Cookie", imp.as_str())];
    headers.extend(names.iter().map(|n| (n.as_str(), value.as_str())));
    let mut c = Conn::open(sc.addr).await;
    c.send(&http1("POST", "/settings/password", &headers, b"x=1"))
        .await;
    let r = c.response(false).await.expect("answer to many headers");
    assert!(
        matches!(r.status, 400 | 431),
        "300 headers over 32 KiB: {}",
        r.status
    );
    c.assert_closed("after many headers").await;

    assert_eq!(
        up.requests()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>(),
        vec![
            "/after-431-normal".to_string(),
            "/after-431-impersonating".to_string()
        ],
        "only the requests after the refusals reached the upstream"
    );
    sc.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_32_kib_are_431() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;

    // Under the limit: 20 KiB in a few headers passes.
    let chunk = "a".repeat(5 * 1024);
    let r = sc
        .raw_get(
            HOST,
            "/under",
            &[
                ("X-Pad-1", &chunk),
                ("X-Pad-2", &chunk),
                ("X-Pad-3", &chunk),
                ("X-Pad-4", &chunk),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/under").header("x-pad-4"), Some(chunk.clone()));

    // One huge header.
    let huge = "b".repeat(40 * 1024);
    let r = sc.raw_get(HOST, "/huge", &[("X-Huge", &huge)]).await;
    assert_eq!(r.status, 431);

    // Many small ones, over 32 KiB in all.
    let names: Vec<String> = (0..200).map(|i| format!("X-Many-{i}")).collect();
    let value = "c".repeat(200);
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let r = sc.raw_get(HOST, "/many", &many).await;
    assert_eq!(r.status, 431);

    assert_eq!(
        up.count(),
        1,
        "only the request under the limit is forwarded"
    );
}

// ---------------------------------------------------------------------------
// Garbage tokens
// ---------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 24) as u8).collect()
    }

    fn b64(&mut self, n: usize) -> String {
        b64url(&self.bytes(n))
    }
}

/// The session cookie value of garbage or forged token number `i`.
fn garbage_token(i: usize) -> Vec<u8> {
    let mut rng = Rng((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let hs512 = |c: &Value| {
        mint(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            c,
        )
    };
    let t = match i % 18 {
        0 => rng.b64(24),
        1 => format!("{}.{}.{}", rng.b64(20), rng.b64(60), rng.b64(32)),
        2 => alg_none_token(&claims()),
        3 => mint_hs256("not-the-secret-0123456789abcdef-xyz", &claims()),
        4 => hs512(&claims()),
        5 => token(&claims_with(
            json!({"exp": now() - 3600, "iat": now() - 7200}),
        )),
        6 => {
            let t = token(&claims());
            t[..t.len() - 6].to_string()
        }
        7 => {
            // A valid signature over another payload.
            let t = token(&claims());
            let parts: Vec<&str> = t.split('.').collect();
            let other = b64url(claims_with(json!({"sub": "user-1"})).to_string().as_bytes());
            format!("{}.{other}.{}", parts[0], parts[2])
        }
        8 => token(&claims_with(json!({"pad": "x".repeat(9000)}))),
        9 => format!(
            "{}.{}.{}",
            b64url(b"not json"),
            b64url(claims().to_string().as_bytes()),
            rng.b64(32)
        ),
        10 => mint_hs256(
            "forged-secret-0123456789abcdef",
            &imp_claims(&format!("forged-{i}")),
        ),
        11 => token(&claims_with(
            json!({"sub": "user-42\r\nX-Auth-User-Id: admin"}),
        )),
        12 => token(&json!(["not", "an", "object"])),
        13 => String::new(),
        14 => ".".repeat(100),
        15 => token(&claims_with(json!({"nbf": now() + 3600}))),
        16 => format!("{}..{}", rng.b64(30), rng.b64(30)),
        _ => {
            // Bytes that are not even text.
            let mut v = b"eyJ".to_vec();
            v.extend((0..40).map(|_| 0x80 | (rng.next_u64() as u8 & 0x7f)));
            return v;
        }
    };
    t.into_bytes()
}

fn garbage_request(i: usize, target: &str) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nCookie: {COOKIE}=").into_bytes();
    r.extend_from_slice(&garbage_token(i));
    r.extend_from_slice(b"; theme=dark\r\nAccept: application/json\r\n\r\n");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_leave_the_proxy_serving() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;

    // 150 on one kept-alive connection, then 150 on a connection each.
    let mut keep = Conn::open(sc.addr).await;
    for i in 0..300 {
        let target = format!("/g/{i}");
        let r = if i < 150 {
            keep.send(&garbage_request(i, &target)).await;
            keep.response(false)
                .await
                .unwrap_or_else(|| panic!("garbage token {i}: keep-alive connection closed"))
        } else {
            raw_request(sc.addr, &garbage_request(i, &target)).await
        };
        assert_eq!(
            r.status,
            200,
            "garbage token {i} ({:?}): {}",
            String::from_utf8_lossy(&garbage_token(i))
                .chars()
                .take(60)
                .collect::<String>(),
            String::from_utf8_lossy(&r.body)
        );
        let got = up.find(&target);
        assert_eq!(
            got.identity(),
            Vec::<(String, String)>::new(),
            "garbage token {i} gave an identity"
        );
    }
    assert_eq!(up.count(), 300);
    assert_eq!(
        backend.calls(),
        0,
        "a forged impersonation token made the proxy call the backend"
    );

    // Still serving: the admin listener, a valid token on the old keep-alive
    // connection and on a new one.
    sc.assert_healthy().await;
    let normal = normal_cookie();
    keep.send(&http1(
        "GET",
        "/valid-keepalive",
        &[("Cookie", &normal)],
        b"",
    ))
    .await;
    let r = keep
        .response(false)
        .await
        .expect("valid token after garbage");
    assert_eq!(r.status, 200);
    let r = raw_request(
        sc.addr,
        &http1("GET", "/valid-new", &[("Cookie", &normal)], b""),
    )
    .await;
    assert_eq!(r.status, 200);
    for t in ["/valid-keepalive", "/valid-new"] {
        assert_eq!(
            up.find(t).header("x-auth-user-id").as_deref(),
            Some("user-42"),
            "{t}"
        );
    }

    // No identity leaks from one request to the next on a kept-alive connection.
    let imp = imp_cookie("imp-leak");
    let mut c = Conn::open(sc.addr).await;
    let seq: Vec<(String, Option<&str>)> = (0..12)
        .map(|i| {
            let cookie = match i % 4 {
                0 => Some(normal.as_str()),
                2 => Some(imp.as_str()),
                _ => None,
            };
            (format!("/leak/{i}"), cookie)
        })
        .collect();
    for (i, (target, cookie)) in seq.iter().enumerate() {
        let bytes = match cookie {
            Some(ck) => http1("GET", target, &[("Cookie", ck)], b""),
            None => garbage_request(i, target),
        };
        c.send(&bytes).await;
        let r = c.response(false).await.expect("keep-alive response");
        assert_eq!(r.status, 200, "{target}");
        let got = up.find(target);
        match cookie {
            Some(ck) if *ck == imp => assert_eq!(
                got.header("x-auth-impersonation-session").as_deref(),
                Some("imp-leak"),
                "{target}"
            ),
            Some(_) => {
                assert_eq!(
                    got.header("x-auth-user-id").as_deref(),
                    Some("user-42"),
                    "{target}"
                );
                assert_eq!(got.header("x-auth-impersonation-session"), None, "{target}");
            }
            None => assert_eq!(
                got.identity(),
                Vec::<(String, String)>::new(),
                "{target}: identity leaked from the previous request"
            ),
        }
    }
}
