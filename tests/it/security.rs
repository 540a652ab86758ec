//! Regression tests for the holes an outside review found (issue 11), black-box: the real
//! binary between raw-byte clients and recording servers on loopback. Each test names the
//! review item it covers; SECURITY.md points here.

use crate::common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A site with `forward_session_cookie = true`.
const FORWARDING_HOST: &str = "legacy.nixtech.app";

/// A revoke bearer, `liveness` (with a 5 s timeout), and `cafe` (the defaults, a deny rule for
/// `DELETE /account`) and `legacy` (`forward_session_cookie = true`), both on `up`.
fn two_sites(liveness: Liveness, up: SocketAddr) -> Config {
    Config::new()
        .admin_token()
        .liveness(liveness.timeout("5s"))
        .site(Site::new(HOST, up).deny(&["DELETE"], "/account"))
        .site(Site::new(FORWARDING_HOST, up).forward_session_cookie())
}

/// A raw GET whose header values are bytes (not necessarily ASCII).
async fn get(sc: &Sidecar, host: &str, target: &str, headers: &[(&str, &[u8])]) -> RawResponse {
    sc.raw_get(host, target, headers).await
}

// ---------------------------------------------------------------------------
// 1. A non-ASCII byte in `Cookie` hides neither the session nor the token
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_header_with_non_ascii_bytes_still_yields_the_session_and_never_leaks_it() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let tok = token(&claims());

    // UTF-8 from document.cookie, a lone byte that is not UTF-8, a pair before the session.
    let odd: [&[u8]; 3] = [b"pref=caf\xc3\xa9", b"x=\xff", b"\xfe=\xfd"];
    for (i, o) in odd.iter().enumerate() {
        let mut cookie = format!("{COOKIE}={tok}; ").into_bytes();
        cookie.extend_from_slice(o);
        cookie.extend_from_slice(b"; theme=dark");
        let target = format!("/cookie/{i}");
        let r = get(&sc, HOST, &target, &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "{target}");
        let rec = up.find(&target);
        assert_eq!(
            rec.header("x-auth-user-id").as_deref(),
            Some("user-42"),
            "{target}: the session was hidden by an odd byte"
        );
        let mut want = o.to_vec();
        want.extend_from_slice(b"; theme=dark");
        assert_eq!(
            up.find(&target).cookies(),
            vec![want],
            "{target}: the other cookies pass byte for byte, the session cookie never"
        );
    }

    // Odd bytes first, then the session cookie.
    let mut cookie = b"a=\xe2\x82\xac; ".to_vec();
    cookie.extend_from_slice(format!("{COOKIE}={tok}").as_bytes());
    let r = get(&sc, HOST, "/cookie/last", &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    let cookies = up.find("/cookie/last").cookies();
    assert_eq!(cookies, vec![b"a=\xe2\x82\xac".to_vec()]);
    assert!(!cookies.iter().any(|c| contains_bytes(c, tok.as_bytes())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_byte_does_not_skip_liveness_on_a_site_that_forwards_the_session_cookie() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(
        Liveness::on(&backend).cache_ttl("100ms"),
        up.addr,
    ))
    .await;
    let sid = "imp-odd-byte";
    let mut cookie = imp_cookie(sid).into_bytes();
    cookie.extend_from_slice(b"; x=\xff");

    // Live: the admin gets through, with the impersonation headers and the audit.
    let r = get(&sc, FORWARDING_HOST, "/odd/live", &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    let rec = up.find("/odd/live");
    assert_eq!(
        rec.header("x-auth-impersonation-session").as_deref(),
        Some(sid)
    );
    assert_eq!(backend.calls_for(sid), 1, "liveness was asked");

    // Ended: refused, never forwarded, audited.
    sc.revoke(sid).await;
    let r = get(&sc, FORWARDING_HOST, "/odd/ended", &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 401, "{}", r.body_text());
    assert!(!up.received("/odd/ended"));
    let seen = sc
        .wait_for_audit(|e| e["event"] == "impersonation.ended_seen" && e["sid"] == sid)
        .await;
    assert!(seen.is_some(), "no impersonation.ended_seen event");

    // The deny list holds too (the same odd byte, another live session).
    let sid2 = "imp-odd-deny";
    let mut cookie2 = imp_cookie(sid2).into_bytes();
    cookie2.extend_from_slice(b"; x=\xff");
    let r = raw_request(
        sc.addr,
        &raw_request_bytes("DELETE", "/account", HOST, &[("Cookie", &cookie2)]),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!up.received("/account"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_forwards_the_session_cookie_gets_only_a_verified_one() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let good = token(&claims());
    let expired = token(&claims_with(json!({"exp": now() - 3600})));

    // The verified token passes as sent.
    let sent = format!("a=1; {COOKIE}={good}");
    let r = get(
        &sc,
        FORWARDING_HOST,
        "/fwd/good",
        &[("Cookie", sent.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/fwd/good").cookies(), vec![sent.into_bytes()]);

    // A token the proxy refused is not the app's to judge again.
    let sent = format!("a=1; {COOKIE}={expired}");
    let r = get(
        &sc,
        FORWARDING_HOST,
        "/fwd/expired",
        &[("Cookie", sent.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/fwd/expired").cookies(), vec![b"a=1".to_vec()]);
    assert!(up.find("/fwd/expired").identity().is_empty());

    // Another spelling of the name next to the verified one is dropped.
    let sent = format!("{COOKIE}={good}; NIX_SESSION={expired}");
    let r = get(
        &sc,
        FORWARDING_HOST,
        "/fwd/case",
        &[("Cookie", sent.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/fwd/case").cookies(),
        vec![format!("{COOKIE}={good}").into_bytes()]
    );
}

// ---------------------------------------------------------------------------
// 2. A framing header named in `Connection` is refused, never stripped
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_named_in_connection_is_refused_instead_of_desyncing() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    // The body is a whole second request.
    let body = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");

    for named in [
        "keep-alive, content-length",
        "Content-Length",
        "transfer-encoding",
        "close, Host",
    ] {
        let mut c = Conn::open(sc.addr).await;
        let head = format!(
            "POST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nConnection: {named}\r\n\r\n",
            body.len()
        );
        c.stream.write_all(head.as_bytes()).await.expect("head");
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.send(body.as_bytes()).await;
        let (bytes, closed) = c.read_until_closed(Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "Connection: {named}: {text}"
        );
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "Connection: {named}: one answer only: {text}"
        );
        assert!(closed, "Connection: {named}: the connection stays open");
    }
    assert!(!up.received("/smuggled"), "the body became a request");
    assert!(!up.received("/form"), "the refused POST reached the app");
}

// ---------------------------------------------------------------------------
// 4. Targeted cache directives never leave an impersonated response
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_responses_lose_cdn_targeted_cache_headers() {
    const TARGETED: [&str; 5] = [
        "CDN-Cache-Control",
        "Surrogate-Control",
        "Cloudflare-CDN-Cache-Control",
        "X-Accel-Expires",
        "Edge-Control",
    ];
    let up = spawn_upstream_with(|_| {
        TARGETED
            .iter()
            .fold(Reply::default(), |r, h| r.header(h, "max-age=86400"))
            .header("Cache-Control", "public, max-age=86400")
    })
    .await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;

    let imp = imp_cookie("imp-cdn");
    let r = get(&sc, HOST, "/cdn/imp", &[("Cookie", imp.as_bytes())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("private, no-store")
    );
    for h in TARGETED {
        assert_eq!(r.header(h), None, "{h} left on an impersonated response");
    }
    // A normal user's response is the app's business.
    let normal = session_cookie(&token(&claims()));
    let r = get(&sc, HOST, "/cdn/normal", &[("Cookie", normal.as_bytes())]).await;
    for h in TARGETED {
        assert!(r.header(h).is_some(), "{h} removed from a normal response");
    }
}

// ---------------------------------------------------------------------------
// 5. An ended session stays ended while its tokens live; a 404 is not an end
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_stays_ended_past_ended_ttl_while_its_token_lives() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(
        Liveness::on(&backend).cache_ttl("200ms").ended_ttl("1s"),
        up.addr,
    ))
    .await;

    // Ended by the backend, then a misconfigured backend says "live" again.
    let sid = "imp-ended-by-backend";
    let cookie = imp_cookie(sid);
    backend.set_for(sid, 404, "gone");
    let r = get(&sc, HOST, "/e/1", &[("Cookie", cookie.as_bytes())]).await;
    assert_eq!(r.status, 401);
    backend.set_for(sid, 200, r#"{"active":true}"#);

    // Revoked by an admin after one live request; the backend keeps saying "live".
    let sid2 = "imp-revoked";
    let cookie2 = imp_cookie(sid2);
    let r = get(&sc, HOST, "/e/2", &[("Cookie", cookie2.as_bytes())]).await;
    assert_eq!(r.status, 200);
    sc.revoke(sid2).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (path, c) in [("/e/3", &cookie), ("/e/4", &cookie2)] {
        let r = get(&sc, HOST, path, &[("Cookie", c.as_bytes())]).await;
        assert_eq!(
            r.status, 401,
            "{path}: an ended session came back after ended_ttl"
        );
        assert!(!up.received(path));
    }
    let gauge = sc.metric("sessiongate_liveness_ended_sessions", &[]).await;
    assert!(gauge >= 2.0, "ended sids are counted: {gauge}");
}

/// An upstream that answers every request with a small HTML page.
async fn html_upstream() -> Upstream {
    spawn_upstream_with(|_| Reply::typed("text/html", b"<html><body><p>page</p></body></html>"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_404_from_end_url_is_a_failure_not_an_end() {
    let up = html_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let cookie = imp_cookie("imp-end-404");

    // The banner's form token, from an impersonated page.
    let r = get(
        &sc,
        HOST,
        "/page",
        &[("Cookie", cookie.as_bytes()), ("Accept", b"text/html")],
    )
    .await;
    let csrf = csrf_of(&banner(&r.body_text()));
    let end = || sc.end_with_form(&cookie, &csrf, "application/json");

    // end_url answers a bare 404, which is also what a wrong end_url looks like.
    backend.set_for("end-impersonation", 404, "<h1>Not Found</h1>");
    let r = end().await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.header("set-cookie").is_none(), "the cookie is kept");
    let r = get(&sc, HOST, "/still-live", &[("Cookie", cookie.as_bytes())]).await;
    assert_eq!(r.status, 200, "the session was not ended here");

    // A 404 whose body says the session is already ended is an end.
    backend.set_for(
        "end-impersonation",
        404,
        r#"{"code":"IMPERSONATION_ENDED"}"#,
    );
    let r = end().await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"ended": true}));
}

// ---------------------------------------------------------------------------
// 6. No claim value panics anything; absurd times are refused
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_expiry_times_are_refused_and_never_drop_the_connection() {
    let up = html_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let exps = [
        ("max", json!(u64::MAX)),
        ("millis", json!((now() + 3600) * 1000)),
        ("year-10000", json!(253_402_300_800u64)),
        ("float", json!((now() + 3600) as f64 + 0.25)),
    ];
    for (name, exp) in exps {
        let c = imp_claims_with(&format!("imp-exp-{name}"), json!({ "exp": exp }));
        let cookie = session_cookie(&token(&c));
        let target = format!("/exp/{name}");
        let r = get(
            &sc,
            HOST,
            &target,
            &[
                ("Cookie", cookie.as_bytes()),
                ("Accept", b"text/html"),
                ("Sec-Fetch-Dest", b"document"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{name}: an answer, not a dropped connection");
        assert!(
            up.find(&target).identity().is_empty(),
            "{name}: an absurd exp gave a session"
        );
        assert!(!r.body_text().contains("sessiongate-banner"), "{name}");
    }
    // Still serving.
    let normal = session_cookie(&token(&claims()));
    let r = get(&sc, HOST, "/exp/after", &[("Cookie", normal.as_bytes())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/exp/after").header("x-auth-user-id").as_deref(),
        Some("user-42")
    );
}

// ---------------------------------------------------------------------------
// 7. `%` is encoded too: an encoded value never reads like a literal one
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_encode_percent_so_encoded_and_literal_claims_differ() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    for (path, sub, want) in [
        ("/pct/literal", "%C3%A9", "%25C3%25A9"),
        ("/pct/utf8", "\u{e9}", "%C3%A9"),
        ("/pct/mixed", "50% caf\u{e9}", "50%25%20caf%C3%A9"),
    ] {
        let cookie = session_cookie(&token(&claims_with(json!({ "sub": sub }))));
        let r = get(&sc, HOST, path, &[("Cookie", cookie.as_bytes())]).await;
        assert_eq!(r.status, 200);
        let got = up.find(path).header("x-auth-user-id");
        assert_eq!(got.as_deref(), Some(want), "{sub:?}");
        assert_eq!(
            pct_decode(want),
            sub.as_bytes(),
            "decoding gives the claim back"
        );
    }
}

// ---------------------------------------------------------------------------
// 8. Method overrides are matched with `_` read as `-`
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_underscored_method_override_is_judged_by_the_deny_list() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let cookie = imp_cookie("imp-underscore");
    for name in [
        "X_HTTP_Method_Override",
        "x_method_override",
        "X_HTTP_METHOD",
    ] {
        let r = get(
            &sc,
            HOST,
            "/account",
            &[("Cookie", cookie.as_bytes()), (name, b"DELETE")],
        )
        .await;
        assert_eq!(r.status, 403, "{name}: DELETE slipped past the deny list");
    }
    assert!(!up.received("/account"));
}

// ---------------------------------------------------------------------------
// 9. Forwarding look-alikes never reach the app from a client
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_look_alike_headers_never_reach_the_app() {
    const LOOKALIKES: [&str; 14] = [
        "X-Real-IP",
        "True-Client-IP",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Forwarded-Scheme",
        "X-Forwarded-Server",
        "X-Original-Host",
        "X-Host",
        "X-Original-URI",
        "X-Url-Scheme",
        "Front-End-Https",
        "X-Envoy-Original-Path",
        "X_Real_IP",
        "CF-Connecting-IP",
    ];
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let headers: Vec<(&str, &[u8])> = LOOKALIKES.iter().map(|h| (*h, &b"evil"[..])).collect();
    let r = get(&sc, HOST, "/lookalikes", &headers).await;
    assert_eq!(r.status, 200);
    let rec = up.find("/lookalikes");
    for h in LOOKALIKES {
        let canon = canonical_name(h);
        assert!(
            !rec.headers.iter().any(|(n, _)| canonical_name(n) == canon),
            "{h} reached the app"
        );
    }
}

// ---------------------------------------------------------------------------
// 10. Bidi controls cannot make the banner display another address
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_controls_in_claims_are_neutralised_in_the_banner() {
    let up = html_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let claims = claims_with(json!({
        "email": "\u{202E}moc.evil@ana",
        "imp": {"sid": "imp-bidi", "admin_email": "root@nixtech.app\u{2067}\u{200F}"}
    }));
    let cookie = session_cookie(&token(&claims));
    let r = get(
        &sc,
        HOST,
        "/bidi",
        &[("Cookie", cookie.as_bytes()), ("Accept", b"text/html")],
    )
    .await;
    let html = r.body_text();
    assert!(html.contains("sessiongate-banner"), "{html}");
    let lower = html.to_ascii_lowercase();
    for c in ["\u{202E}", "\u{2067}", "\u{200F}"] {
        assert!(!html.contains(c), "a raw bidi control in the banner");
    }
    for r in ["&#x202e;", "&#x2067;", "&#x200f;"] {
        assert!(!lower.contains(r), "{r} in the banner: {html}");
    }
    // Shown, so that the admin sees the address is not what it seems.
    assert!(
        html.contains("<bdi class=\"sg-who\">[U+202E]moc.evil@ana</bdi>"),
        "{html}"
    );
    assert!(
        html.contains("<bdi class=\"sg-admin\">root@nixtech.app[U+2067][U+200F]</bdi>"),
        "{html}"
    );
}

// ---------------------------------------------------------------------------
// 14. The tenant the app sees is the host's form; blank identity claims are refused
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_header_is_the_hosts_form_and_blank_claims_are_refused() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(
        &Config::new()
            .admin_token()
            .liveness(Liveness::on(&backend).timeout("5s"))
            .site(
                Site::new("*.shop.nixtech.app", up.addr)
                    .tenant_from_host("{tenant}.shop.nixtech.app"),
            ),
    )
    .await;
    let acme = session_cookie(&token(&claims_with(json!({"tenant_id": "ACME"}))));
    let r = get(
        &sc,
        "acme.shop.nixtech.app",
        "/t/case",
        &[("Cookie", acme.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/t/case").header("x-auth-tenant-id").as_deref(),
        Some("acme")
    );

    for (name, changes) in [
        ("blank-sub", json!({"sub": " ", "tenant_id": "acme"})),
        ("tab-email", json!({"email": "\t", "tenant_id": "acme"})),
        ("blank-tenant", json!({"tenant_id": "  "})),
    ] {
        let cookie = session_cookie(&token(&claims_with(changes)));
        let target = format!("/t/{name}");
        let r = get(
            &sc,
            "acme.shop.nixtech.app",
            &target,
            &[("Cookie", cookie.as_bytes())],
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            up.find(&target).identity().is_empty(),
            "{name}: a blank claim gave an identity"
        );
    }
}

// ---------------------------------------------------------------------------
// Review 3: a form POST read for its `_method` still reaches the app whole
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_post_read_for_its_method_still_reaches_the_app_whole() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_sites(Liveness::on(&backend), up.addr)).await;
    let cookie = imp_cookie("imp-form-body");
    let form = |body: &str| {
        let mut out = format!(
            "POST /account HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    };

    // Small and large (sent in many packets) forms whose `_method` is allowed reach the app as
    // sent, byte for byte.
    for (i, filler) in [10usize, 60_000].into_iter().enumerate() {
        let body = format!("_method=patch&i={i}&note={}", "x".repeat(filler));
        let r = raw_request(sc.addr, &form(&body)).await;
        assert_eq!(r.status, 200, "form {i}");
        let rec = up
            .requests()
            .into_iter()
            .find(|q| {
                q.body
                    .ends_with(format!("i={i}&note={}", "x".repeat(filler)).as_bytes())
            })
            .unwrap_or_else(|| panic!("form {i} did not reach the app whole"));
        assert_eq!(rec.body, body.as_bytes(), "form {i}");
    }
    // One whose `_method` is denied does not reach it at all.
    let before = up.count();
    let r = raw_request(sc.addr, &form("note=1&_method=DELETE")).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), before);
    // A form too large to hold while judging it is refused (its `_method` could hide past it).
    let big = format!("note={}&_method=DELETE", "y".repeat(70_000));
    let r = raw_request(sc.addr, &form(&big)).await;
    assert_eq!(r.status, 413, "{}", r.body_text());
    assert_eq!(up.count(), before);
    let ev = sc
        .wait_for_audit(|e| e["event"] == "impersonation.forbidden_attempt" && e["status"] == 413)
        .await;
    assert!(ev.is_some(), "the refused large form is audited");
}
