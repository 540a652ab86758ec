//! Regression tests for the holes an outside review found (issue 11), and for those our own
//! review of its fixes found, black-box: the real binary between raw-byte clients and recording
//! servers on loopback. Each test names the review item or finding it covers; SECURITY.md
//! points here.

use crate::common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A site with `forward_session_cookie = true`.
const FORWARDING_HOST: &str = "legacy.nixtech.app";

/// A revoke bearer, `liveness` (with a 5 s timeout), and the sites `cafe` and `legacy`.
fn with_sites(liveness: Liveness, cafe: Site, legacy: Site) -> Config {
    Config::new()
        .admin_token()
        .liveness(liveness.timeout("5s"))
        .site(cafe)
        .site(legacy)
}

/// `cafe` (the defaults, a deny rule for `DELETE /account`) and `legacy`
/// (`forward_session_cookie = true`), both on `up`, as [`with_sites`] serves them.
fn two_sites(liveness: Liveness, up: SocketAddr) -> Config {
    with_sites(
        liveness,
        Site::new(HOST, up).deny(&["DELETE"], "/account"),
        Site::new(FORWARDING_HOST, up).forward_session_cookie(),
    )
}

/// [`two_sites`] with deny rules for `DELETE /account` and `GET /export` on both sites.
fn two_guarded_sites(liveness: Liveness, up: SocketAddr) -> Config {
    let guarded = |site: Site| site.deny(&["DELETE"], "/account").deny(&["GET"], "/export");
    with_sites(
        liveness,
        guarded(Site::new(HOST, up)),
        guarded(Site::new(FORWARDING_HOST, up).forward_session_cookie()),
    )
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
    let r = sc
        .raw_send("DELETE", HOST, "/account", &[("Cookie", &cookie2)], b"")
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

// ===========================================================================
// Findings of our own review of the issue-11 fixes
// ===========================================================================
//
// Our own adversarial review of the fixes above (commit 4149e92) found the holes below. Every
// test in this section failed on 4149e92: each was a hole those fixes left open, or a spot next
// to them. They run on `cafe` and the forwarding site `legacy`, both with deny rules for
// `DELETE /account` and `GET /export` ([`two_guarded_sites`]).

/// Whether a request for `target` reached the app with `token` in one of its `Cookie` headers.
fn token_reached_the_app(up: &Upstream, target: &str, token: &str) -> bool {
    up.requests()
        .iter()
        .filter(|r| r.target == target)
        .flat_map(Recorded::cookies)
        .any(|c| contains_bytes(&c, token.as_bytes()))
}

// ---------------------------------------------------------------------------
// Finding 1: session-cookie look-alikes reach an app that reads the cookie itself
// ---------------------------------------------------------------------------

/// On a `forward_session_cookie` site the app judges the cookie itself. Common cookie parsers read
/// more names as `nix_session` than the proxy does: Rack 2 (`parse_query(header, ';,')` with
/// `unescape`, first value wins) reads `nix%5Fsession` and `a=1, nix_session=`; PHP urldecodes
/// names and maps `.`, ` ` and `[` to `_` (first wins); Python's `http.cookies.SimpleCookie`
/// (Bottle, CherryPy) reads `a=1, nix_session=`. The proxy sees no session in any of them, so an
/// ENDED impersonation (or another tenant's token) skips liveness, the deny list, the audit and
/// the tenant binding, and the app gets the token anyway. The fix said "the app never judges a
/// token on its own": only the exact cookie the proxy verified may carry a token to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookie_look_alikes_never_carry_an_unverified_token_to_a_forwarding_app() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    let sid = "imp-look-alike";
    let ended = token(&imp_claims(sid));
    backend.set_for(sid, 404, "gone");
    // The plain cookie is refused (ended): the baseline the look-alikes must not escape.
    let plain = session_cookie(&ended);
    let r = sc
        .raw_send(
            "DELETE",
            FORWARDING_HOST,
            "/account",
            &[("Cookie", plain.as_bytes())],
            b"",
        )
        .await;
    assert_eq!(r.status, 401, "baseline: an ended impersonation is refused");

    let variants = [
        format!("a=1, {COOKIE}={ended}"), // Rack 2, SimpleCookie: split on ','
        format!("a=1,{COOKIE}={ended}"),  // Rack 2
        format!("nix%5Fsession={ended}"), // Rack 2, PHP: percent-decoded names
        format!("nix%5fsession={ended}"),
        format!("nix.session={ended}"), // PHP: '.' -> '_'
        format!("nix session={ended}"), // PHP: ' ' -> '_'
        format!("nix[session={ended}"), // PHP: '[' -> '_'
    ];
    let mut leaked = Vec::new();
    for (i, cookie) in variants.iter().enumerate() {
        let target = format!("/account?v={i}");
        let r = sc
            .raw_send(
                "DELETE",
                FORWARDING_HOST,
                &target,
                &[("Cookie", cookie.as_bytes())],
                b"",
            )
            .await;
        if token_reached_the_app(&up, &target, &ended) {
            leaked.push(format!(
                "{cookie:.24}... -> {} (forwarded to the app)",
                r.status
            ));
        }
    }

    // Cookie tossing with a look-alike: a sibling plants `nix%5Fsession=<attacker>` on the parent
    // domain (sent first: longer Path); the victim's own session verifies, and Rack/PHP (first
    // wins) run the request as the attacker.
    let attacker = token(&claims_with(json!({"sub": "attacker-1"})));
    let victim = token(&claims());
    let tossed = format!("nix%5Fsession={attacker}; nix.session={attacker}; {COOKIE}={victim}");
    let r = get(
        &sc,
        FORWARDING_HOST,
        "/tossed",
        &[("Cookie", tossed.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    if token_reached_the_app(&up, "/tossed", &attacker) {
        leaked.push("tossed look-alike beside a verified session (forwarded to the app)".into());
    }
    assert!(
        leaked.is_empty(),
        "unverified tokens reached a forward_session_cookie app under look-alike names:\n{}",
        leaked.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 2: a nameless `Set-Cookie: nix_session` from an app signs everyone out
// ---------------------------------------------------------------------------

/// `Set-Cookie: nix_session; Domain=.nixtech.app` has no `=`: browsers store a cookie with an
/// EMPTY name and the value `nix_session`, and send it back as a bare `nix_session` (RFC 6265bis
/// 5.6 and 5.8.3; checked in Chromium). The proxy's Set-Cookie filter looks for `name=` and lets
/// it through; its Cookie parser then reads the bare `nix_session` as a session cookie with an
/// empty value, which conflicts with the real one: any one tenant app can end every session on
/// every tenant of the parent domain, for as long as its Max-Age says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameless_session_cookie_from_an_app_neither_passes_nor_conflicts() {
    let up = spawn_upstream_with(|rec| {
        if rec.target == "/set" {
            Reply::default()
                .header(
                    "Set-Cookie",
                    "nix_session; Domain=.nixtech.app; Path=/; Max-Age=31536000",
                )
                .header("Set-Cookie", "theme=dark; Path=/")
        } else {
            Reply::default()
        }
    })
    .await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;

    let r = get(&sc, HOST, "/set", &[]).await;
    assert_eq!(r.status, 200);
    let passed: Vec<String> = r
        .header_all("set-cookie")
        .into_iter()
        .filter(|v| {
            let first = v.split(';').next().unwrap_or("").trim();
            let first = first.strip_prefix('=').unwrap_or(first);
            first.eq_ignore_ascii_case(COOKIE)
                || first
                    .to_ascii_lowercase()
                    .starts_with(&format!("{COOKIE}="))
        })
        .collect();

    // What the browser then sends: the real session, and the nameless cookie as its bare value.
    let good = token(&claims());
    let cookie = format!("{COOKIE}={good}; theme=dark; {COOKIE}");
    let r = get(&sc, HOST, "/after", &[("Cookie", cookie.as_bytes())]).await;
    assert_eq!(r.status, 200);
    let user = up.find("/after").header("x-auth-user-id");
    assert!(
        passed.is_empty() && user.as_deref() == Some("user-42"),
        "nameless session cookie from the app passed: {passed:?}; the session afterwards: {user:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 3: method overrides by parameter, and HEAD for a GET rule
// ---------------------------------------------------------------------------

/// Rails (`button_to ... method: :delete`, Rack::MethodOverride), Laravel/Symfony and Sinatra turn
/// a POST with `_method=DELETE` (form body; Symfony/Laravel also the query) into a DELETE: that
/// is how every browser DELETE is sent in those apps. And every common router runs a GET route
/// for HEAD (Express, Rails, Flask, Django, Next.js), with its side effects. None of these is
/// judged by the deny list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_parameters_and_head_are_judged_by_the_deny_list() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    let cookie = imp_cookie("imp-override-param");
    let c = cookie.as_bytes();
    let form: &[u8] = b"application/x-www-form-urlencoded";
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a [u8])>, &'a [u8]);
    let cases: [Case; 4] = [
        ("POST", "/account?_method=DELETE", vec![("Cookie", c)], b""),
        (
            "POST",
            "/account",
            vec![("Cookie", c), ("Content-Type", form)],
            b"_method=delete&authenticity_token=x",
        ),
        ("HEAD", "/export", vec![("Cookie", c)], b""),
        ("HEAD", "/export?x=1", vec![("Cookie", c)], b""),
    ];
    let mut passed = Vec::new();
    for (method, target, headers, body) in &cases {
        let r = sc.raw_send(method, HOST, target, headers, body).await;
        if r.status != 403 {
            passed.push(format!(
                "{method} {target} body={:?} -> {} (upstream got it: {})",
                String::from_utf8_lossy(body),
                r.status,
                up.received(target)
            ));
        }
    }
    assert!(
        passed.is_empty(),
        "denied routes reached:\n{}",
        passed.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 4: forwarding and identity look-alikes that frameworks trust still pass
// ---------------------------------------------------------------------------

/// Client copies of headers that apps and frameworks take as the proxy's word: client address
/// (`Client-IP`, PHP's first choice; `Proxy-Client-IP`/`WL-Proxy-Client-IP`, Java snippets;
/// `X-Originating-IP`, `X-Remote-Addr`), scheme and URL (`X-Scheme`, Tornado and nginx recipes;
/// `X-Forwarded-Uri`/`-Method`/`-Path`, Traefik; `X-Forwarded-By`, Tomcat's RemoteIpValve), and
/// identity set by other auth proxies that apps migrating to sessiongate may still trust
/// (oauth2-proxy's `X-Forwarded-User`/`-Email`/`-Groups`/`-Access-Token`, `Remote-User`,
/// Envoy's `X-Forwarded-Client-Cert`, nginx-ingress's `ssl-client-*`, Grafana's `X-WEBAUTH-USER`,
/// IAP/Cloudflare Access/ALB/Pomerium assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_forwarding_and_identity_look_alikes_never_reach_the_app() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    let names = [
        "Client-IP",
        "X-Client-IP-Address",
        "Proxy-Client-IP",
        "WL-Proxy-Client-IP",
        "X-Originating-IP",
        "X-Remote-Addr",
        "X-Remote-IP",
        "X-ProxyUser-Ip",
        "X-Scheme",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Forwarded-Method",
        "X-Forwarded-By",
        "X-Forwarded-Client-Cert",
        "X-Forwarded-Tls-Client-Cert",
        "X-SSL-Client-Cert",
        "Ssl-Client-Subject-Dn",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Groups",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Access-Token",
        "Remote-User",
        "X-Remote-User",
        "X-WEBAUTH-USER",
        "X-Goog-Authenticated-User-Email",
        "X-Goog-Iap-Jwt-Assertion",
        "Cf-Access-Authenticated-User-Email",
        "Cf-Access-Jwt-Assertion",
        "X-Amzn-Oidc-Identity",
        "X-Amzn-Oidc-Data",
        "X-Pomerium-Jwt-Assertion",
        "X-MS-CLIENT-PRINCIPAL-NAME",
    ];
    let headers: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, &b"spoofed"[..])).collect();
    let r = get(&sc, HOST, "/lookalikes", &headers).await;
    assert_eq!(r.status, 200);
    let rec = up.find("/lookalikes");
    let reached: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| rec.header(n).is_some())
        .collect();
    assert!(
        reached.is_empty(),
        "client copies reached the app: {reached:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 5: header values still read alike for different claims
// ---------------------------------------------------------------------------

/// Item 7 promised that decoding a header gives the claim back exactly. Leading and trailing
/// spaces are not encoded, and every HTTP parser strips them as OWS, so `" user-42"` reaches the
/// app as `user-42`. Integers beyond u64 go through f64, so two different numeric ids become one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_claims_never_reach_the_app_as_the_same_header() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    // `sub` as raw JSON text (a serde_json Value would already round the big numbers here).
    let pairs = [
        ("\"user-42\"", "\" user-42\""),
        ("\"user-42\"", "\"user-42 \""),
        ("123456789012345678901234", "123456789012345678901235"),
    ];
    let mut same = Vec::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let mut seen = Vec::new();
        for (j, sub) in [a, b].iter().enumerate() {
            let target = format!("/claims/{i}/{j}");
            let cookie = session_cookie(&mint_raw(&format!(
                r#"{{"sub":{sub},"tenant_id":"cafe","exp":{}}}"#,
                now() + 3600
            )));
            let r = get(&sc, HOST, &target, &[("Cookie", cookie.as_bytes())]).await;
            assert_eq!(r.status, 200);
            // None = the token was refused, which is also fine.
            seen.push(up.find(&target).header("x-auth-user-id"));
        }
        if seen[0].is_some() && seen[0] == seen[1] {
            same.push(format!("{a} and {b} both arrive as {:?}", seen[0]));
        }
    }
    assert!(
        same.is_empty(),
        "ambiguous identity headers:\n{}",
        same.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 6: invisible characters make the banner show another address
// ---------------------------------------------------------------------------

/// Unicode default-ignorable code points: rendered as nothing.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// The text of `<bdi class="{class}">…</bdi>`, character references decoded.
fn bdi_text(html: &str, class: &str) -> Option<String> {
    let open = format!("<bdi class=\"{class}\">");
    let start = html.find(&open)? + open.len();
    let end = start + html[start..].find("</bdi>")?;
    let raw = &html[start..end];
    let mut out = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find("&#x") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let semi = after.find(';')?;
        let c = u32::from_str_radix(&after[..semi], 16)
            .ok()
            .and_then(char::from_u32)?;
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Item 10 dropped the bidi controls, but the other invisible code points (zero-width space and
/// joiners, U+2060..U+2064 and U+206A..U+206F, BOM, soft hyphen, Hangul fillers, tag characters)
/// still go out as character references, which browsers render as nothing: the banner shows
/// `ceo@acme.com` while the session is another account's. (Dropping them would not help either:
/// the two accounts would still read alike. They have to be shown.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_in_claims_cannot_make_the_banner_show_another_address() {
    let up = html_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    let mut spoofed = Vec::new();
    for (i, hidden) in [
        "\u{200B}",
        "\u{2060}",
        "\u{2063}",
        "\u{206A}",
        "\u{FEFF}",
        "\u{00AD}",
        "\u{3164}",
        "\u{E0041}",
    ]
    .iter()
    .enumerate()
    {
        let email = format!("ceo{hidden}@acme.com");
        let mut c = imp_claims(&format!("imp-invisible-{i}"));
        c["email"] = json!(email);
        let cookie = session_cookie(&token(&c));
        let r = get(
            &sc,
            HOST,
            &format!("/inv/{i}"),
            &[("Cookie", cookie.as_bytes()), ("Accept", b"text/html")],
        )
        .await;
        assert_eq!(r.status, 200);
        let html = r.body_text();
        let shown = bdi_text(&html, "sg-who").expect("the banner names the target");
        let visible: String = shown.chars().filter(|c| !invisible(*c)).collect();
        if visible == "ceo@acme.com" {
            spoofed.push(format!(
                "U+{:04X}",
                hidden.chars().next().map_or(0, |c| c as u32)
            ));
        }
    }
    assert!(
        spoofed.is_empty(),
        "the banner displays `ceo@acme.com` for another account's address holding {spoofed:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 7: HTTP/2 cookie crumbs go to an HTTP/1.1 app as several Cookie headers
// ---------------------------------------------------------------------------

/// RFC 9113 8.2.3: crumbs "MUST be concatenated into a single octet string using the two-octet
/// delimiter of 0x3b, 0x20 ("; ") before being passed into a non-HTTP/2 context such as an
/// HTTP/1.1 connection". They are forwarded as separate lines unless the proxy happened to remove
/// a session cookie; gunicorn then joins them with "," (Django sees one cookie), others keep only
/// the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_reach_an_http1_app_as_one_header() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    let good = token(&claims());
    let c = sc.h2_client();
    for (path, host, crumbs) in [
        (
            "/crumbs/plain",
            HOST,
            vec!["a=1".to_string(), "b=2".to_string()],
        ),
        (
            "/crumbs/forwarded",
            FORWARDING_HOST,
            vec![
                "a=1".to_string(),
                format!("{COOKIE}={good}"),
                "b=2".to_string(),
            ],
        ),
    ] {
        let mut req = c.get(sc.url(host, path));
        for crumb in &crumbs {
            req = req.header("cookie", crumb);
        }
        let r = req.send().await.expect("h2 request");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let got = up.find(path).cookies();
        assert_eq!(
            got.len(),
            1,
            "{path}: {} Cookie headers reached the HTTP/1.1 app: {:?}",
            got.len(),
            got.iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------
// Finding 8: a vendor's targeted cache directive still passes
// ---------------------------------------------------------------------------

/// RFC 9213 targeted fields are `<target>-Cache-Control`; the list has five vendors but not
/// Netlify's documented `Netlify-CDN-Cache-Control`, nor any other `*-CDN-Cache-Control`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_responses_lose_every_targeted_cache_directive() {
    let up = spawn_upstream_with(|_| {
        Reply::default()
            .header("Netlify-CDN-Cache-Control", "public, s-maxage=31536000")
            .header("Akamai-CDN-Cache-Control", "max-age=3600")
    })
    .await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(Liveness::on(&backend), up.addr)).await;
    let cookie = imp_cookie("imp-netlify");
    let r = get(&sc, HOST, "/cdn", &[("Cookie", cookie.as_bytes())]).await;
    assert_eq!(r.status, 200);
    let kept: Vec<&String> = r
        .headers
        .iter()
        .map(|(n, _)| n)
        .filter(|n| {
            n.to_ascii_lowercase().ends_with("cache-control")
                && !n.eq_ignore_ascii_case("cache-control")
        })
        .collect();
    assert!(
        kept.is_empty(),
        "targeted cache directives kept on an impersonated response: {kept:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 9: "ended stays ended" only for tokens this replica has already seen
// ---------------------------------------------------------------------------

/// Item 5 asked that an ended sid stay ended until the latest exp a token of it CAN have. It stays
/// ended until the latest exp this replica has SEEN. An admin revoke (no token) on a replica that
/// has not served the sid yet, or a `v:1` message from the backend, is remembered for `ended_ttl`
/// only (10 min by default; tokens live 30): after it a misconfigured backend's "live" brings the
/// session back, on this replica and on every one the revoke reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sid_stays_ended_on_a_replica_that_had_not_seen_its_token() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&two_guarded_sites(
        Liveness::on(&backend).cache_ttl("200ms").ended_ttl("1s"),
        up.addr,
    ))
    .await;
    let sid = "imp-revoked-unseen";
    // The admin revokes from the console; this replica has not served the sid yet.
    sc.revoke(sid).await;
    // The backend (misconfigured, or its row restored) keeps answering "live".
    backend.set_for(sid, 200, r#"{"active":true}"#);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The token (30 minutes left) arrives.
    let cookie = imp_cookie(sid);
    let r = get(&sc, HOST, "/revoked/late", &[("Cookie", cookie.as_bytes())]).await;
    assert_eq!(
        r.status,
        401,
        "a revoked impersonation came back after ended_ttl (the upstream got it: {})",
        up.received("/revoked/late")
    );
}
