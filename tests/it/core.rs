//! The core request pipeline of SPEC.md, black-box: the real binary in front of
//! a recording upstream, asserting what the upstream received and what the
//! client got.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

const ISS: &str = "https://api.nixtech.app";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_injected_from_a_valid_cookie() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let c = sc.client();

    let r = send(
        c.get(sc.url("cafe.nixtech.app", "/orders?page=2"))
            .header("cookie", session_cookie(&token(&claims()))),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    let rec = up.find("/orders?page=2");
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.identity(), user_identity());
    assert_eq!(
        rec.header("host"),
        Some(format!("cafe.nixtech.app:{}", sc.addr.port())),
        "Host is preserved"
    );

    // A claim that is absent gives no header at all.
    let sparse = claims_with(json!({"email": null, "roles": null, "tenant_id": null}));
    let r = send(
        c.get(sc.url("cafe.nixtech.app", "/sparse"))
            .header("cookie", session_cookie(&token(&sparse))),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/sparse").identity(),
        pairs(&[("x-auth-user-id", "user-42")])
    );

    // A request body reaches the upstream intact, with the identity.
    let r = send(
        c.post(sc.url("cafe.nixtech.app", "/submit"))
            .header("cookie", session_cookie(&token(&claims())))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1&b=two"),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/submit");
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.body, b"a=1&b=two");
    assert_eq!(rec.identity(), user_identity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let good = session_cookie(&token(&claims()));

    let spoofed: &[(&str, &str)] = &[
        ("X-Auth-User-Id", "evil-1"),
        ("x-auth-user-id", "evil-2"),
        ("X_Auth_User_Id", "evil-3"),
        ("X-AUTH-TENANT-ID", "evil-4"),
        ("X-Auth-Email", "evil-5@example.com"),
        ("X-Auth-Roles", "evil-6"),
        ("X-Auth-Impersonator-Id", "evil-7"),
        ("x_auth_something_else", "evil-8"),
        ("X-Auth-", "evil-9"),
        ("X-Custom-Kept", "kept"),
    ];

    for (i, with_cookie) in [false, true].into_iter().enumerate() {
        let path = format!("/spoof/{i}");
        let mut headers: Vec<(&str, &str)> = spoofed.to_vec();
        if with_cookie {
            headers.push(("Cookie", &good));
        }
        let r = sc.raw_get(HOST, &path, &headers).await;
        assert_eq!(r.status, 200, "{path}");
        let rec = up.find(&path);
        assert_eq!(
            rec.header("x-custom-kept").as_deref(),
            Some("kept"),
            "an ordinary header must pass (the recording works)"
        );
        for (name, value) in &rec.headers {
            assert!(
                !String::from_utf8_lossy(value).contains("evil"),
                "{path}: spoofed header reached the upstream: {name}: {:?}",
                String::from_utf8_lossy(value)
            );
        }
        if with_cookie {
            assert_eq!(rec.identity(), user_identity(), "{path}");
        } else {
            assert_eq!(rec.identity(), vec![], "{path}");
        }
    }

    // A client naming identity headers in Connection must not make the proxy
    // drop the ones it injects.
    let r = raw_request(
        sc.addr,
        b"GET /conn HTTP/1.1\r\n\
          Host: cafe.nixtech.app\r\n\
          Connection: X-Auth-User-Id, x-auth-tenant-id, X_Auth_Email\r\n\
          Connection: X-Auth-Roles\r\n\
          X-Auth-User-Id: evil-10\r\n\
          Cookie: "
            .iter()
            .chain(good.as_bytes())
            .chain(b"\r\n\r\n".iter())
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/conn");
    assert_eq!(rec.identity(), user_identity());
    for v in rec.header_all("connection") {
        assert!(
            !canonical_name(&v).contains("x-auth"),
            "Connection naming identity headers reached the upstream: {v}"
        );
    }

    // The same without a cookie: nothing of the family arrives.
    let r = sc
        .raw_get(
            HOST,
            "/conn-anon",
            &[
                ("Connection", "keep-alive, X-Auth-User-Id"),
                ("X-Auth-User-Id", "evil-11"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/conn-anon").identity(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_give_no_identity() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .token(Token::hs256().issuer(ISS).audience(&["nixtech"]))
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let c = sc.client();

    let base = || claims_with(json!({"iss": ISS, "aud": "nixtech"}));
    let with = |changes: serde_json::Value| merged(base(), changes);
    let valid = token(&base());
    let (vh, vp, vs) = {
        let mut parts = valid.split('.');
        (
            parts.next().expect("h").to_string(),
            parts.next().expect("p").to_string(),
            parts.next().expect("s").to_string(),
        )
    };
    let admin_payload = b64url(with(json!({"sub": "admin-1"})).to_string().as_bytes());
    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let t = now();

    // (name, token, accepted?)
    let cases: Vec<(&str, String, bool)> = vec![
        ("valid", valid.clone(), true),
        (
            "expired-within-leeway",
            token(&with(json!({"exp": t - 5}))),
            true,
        ),
        (
            "nbf-within-leeway",
            token(&with(json!({"nbf": t + 5}))),
            true,
        ),
        (
            "bad-signature",
            mint_hs256("some-other-secret-0123456789abcdef", &base()),
            false,
        ),
        (
            "tampered-payload",
            format!("{vh}.{admin_payload}.{vs}"),
            false,
        ),
        ("alg-none", alg_none_token(&base()), false),
        (
            "alg-none-with-signature",
            format!("{none_header}.{vp}.{vs}"),
            false,
        ),
        (
            "alg-not-allowed-hs384",
            mint(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &base(),
            ),
            false,
        ),
        (
            "expired-beyond-leeway",
            token(&with(json!({"exp": t - 120, "iat": t - 3600}))),
            false,
        ),
        ("future-nbf", token(&with(json!({"nbf": t + 600}))), false),
        (
            "wrong-iss",
            token(&with(json!({"iss": "https://evil.example"}))),
            false,
        ),
        ("no-iss", token(&with(json!({"iss": null}))), false),
        (
            "wrong-aud",
            token(&with(json!({"aud": "someone-else"}))),
            false,
        ),
        ("no-aud", token(&with(json!({"aud": null}))), false),
        ("no-exp", token(&with(json!({"exp": null}))), false),
        (
            "exp-as-string",
            token(&with(json!({"exp": "9999999999"}))),
            false,
        ),
        ("no-sub", token(&with(json!({"sub": null}))), false),
        ("garbage", "garbage".to_string(), false),
        ("garbage-three-parts", "a.b.c".to_string(), false),
        ("empty", String::new(), false),
        (
            "large-but-under-8kib",
            token(&with(json!({"pad": "x".repeat(5000)}))),
            true,
        ),
        (
            "oversized",
            token(&with(json!({"pad": "x".repeat(9 * 1024)}))),
            false,
        ),
    ];

    let mut failures = Vec::new();
    for (name, tok, accepted) in &cases {
        let path = format!("/case/{name}");
        let r = send(
            c.get(sc.url("cafe.nixtech.app", &path))
                .header("cookie", session_cookie(tok)),
        )
        .await;
        if r.status != 200 {
            failures.push(format!(
                "{name}: status {} (pass mode must forward)",
                r.status
            ));
            continue;
        }
        let got = up.find(&path).identity();
        let want = if *accepted { user_identity() } else { vec![] };
        if got != want {
            failures.push(format!(
                "{name}: upstream got identity {got:?}, want {want:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "token cases failed:\n{}",
        failures.join("\n")
    );

    // The token is never logged.
    let logs = sc.stderr();
    for (name, tok, _) in &cases {
        if tok.len() > 20 {
            assert!(
                !logs.contains(tok.as_str()),
                "{name}: token written to the log"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_config_refuses_hs256_token_signed_with_the_public_key() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .token(Token::rs256())
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let c = sc.client();
    let public_pem = std::fs::read_to_string(fixture("rsa_public.pem")).expect("public key");

    let cases: Vec<(&str, String, bool)> = vec![
        ("rs256-valid", mint_rs256(&claims()), true),
        (
            "hs256-public-pem",
            mint_hs256(&public_pem, &claims()),
            false,
        ),
        (
            "hs256-public-pem-trimmed",
            mint_hs256(public_pem.trim(), &claims()),
            false,
        ),
        ("hs256-shared-secret", token(&claims()), false),
        ("alg-none", alg_none_token(&claims()), false),
    ];
    for (name, tok, accepted) in &cases {
        let path = format!("/rs/{name}");
        let r = send(
            c.get(sc.url("cafe.nixtech.app", &path))
                .header("cookie", session_cookie(tok)),
        )
        .await;
        assert_eq!(r.status, 200, "{name}");
        let want = if *accepted { user_identity() } else { vec![] };
        assert_eq!(up.find(&path).identity(), want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_421_without_upstream_contact() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let cookie = session_cookie(&token(&claims()));

    let r = send(
        sc.client()
            .get(sc.url("unknown.nixtech.app", "/x"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(r.status, 421);
    assert_no_store("421", &r);

    for host in [
        "cafe.nixtech.app.evil.example",
        "xcafe.nixtech.app",
        "nixtech.app",
        "127.0.0.1",
    ] {
        let r = sc.raw_get(host, "/x", &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 421, "Host: {host}");
    }
    // A malformed host may be refused as a bad request instead.
    let r = sc
        .raw_get("cafe.nixtech.app..", "/x", &[("Cookie", &cookie)])
        .await;
    assert!(
        [400, 421].contains(&r.status),
        "Host: cafe.nixtech.app.. got {}",
        r.status
    );
    assert_eq!(up.count(), 0, "upstream contacted for an unknown host");

    // The known host does reach the upstream through the same proxy.
    let r = send(sc.client().get(sc.url("cafe.nixtech.app", "/known"))).await;
    assert_eq!(r.status, 200);
    assert!(up.received("/known"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_normalized_for_site_selection() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let cookie = session_cookie(&token(&claims()));
    let port_host = format!("cafe.nixtech.app:{}", sc.addr.port());

    let hosts = [
        "cafe.nixtech.app",
        "CAFE.NIXTECH.APP",
        "Cafe.NixTech.App:8080",
        "cafe.nixtech.app.",
        "CAFE.nixtech.app.:80",
        port_host.as_str(),
    ];
    for (i, host) in hosts.iter().enumerate() {
        let path = format!("/host/{i}");
        let r = sc.raw_get(host, &path, &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "Host: {host}");
        let rec = up.find(&path);
        assert_eq!(rec.identity(), user_identity(), "Host: {host}");
        assert_eq!(
            rec.header_all("x-forwarded-host"),
            vec!["cafe.nixtech.app".to_string()],
            "Host: {host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_binding_on_a_wildcard_site() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(
        Site::new("*.shop.nixtech.app", up.addr).tenant_from_host("{tenant}.shop.nixtech.app"),
    ))
    .await;
    let c = sc.client();
    let acme = token(&claims_with(json!({"tenant_id": "acme"})));

    // The tenant the host names matches the token's.
    let r = send(
        c.get(sc.url("acme.shop.nixtech.app", "/home"))
            .header("cookie", session_cookie(&acme)),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/home").identity(),
        pairs(&[
            ("x-auth-user-id", "user-42"),
            ("x-auth-tenant-id", "acme"),
            ("x-auth-email", "ana@example.com"),
            ("x-auth-roles", "admin,staff"),
        ])
    );

    // Host case does not matter for the binding.
    let r = sc
        .raw_get(
            "ACME.Shop.NixTech.App:443",
            "/home-upper",
            &[("Cookie", &session_cookie(&acme))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/home-upper").header("x-auth-tenant-id").as_deref(),
        Some("acme")
    );

    // Another tenant's subdomain: no session there, and an audit event.
    let r = send(
        c.get(sc.url("evil.shop.nixtech.app", "/home"))
            .header("cookie", session_cookie(&acme)),
    )
    .await;
    assert_eq!(r.status, 200, "pass mode forwards without identity");
    let rec = up
        .requests()
        .into_iter()
        .find(|r| {
            r.target == "/home"
                && r.header("host")
                    .is_some_and(|h| h.starts_with("evil.shop.nixtech.app"))
        })
        .expect("the evil.shop request reached the upstream");
    assert_eq!(rec.identity(), vec![]);

    let ev = sc
        .wait_for_audit(|e| e["event"] == "tenant_mismatch")
        .await
        .unwrap_or_else(|| {
            panic!(
                "no tenant_mismatch audit event; audit file: {:?}",
                sc.audit_text()
            )
        });
    assert_eq!(ev["user_id"], "user-42", "{ev}");
    assert_eq!(ev["tenant_id"], "acme", "{ev}");
    assert!(
        ev["site"]
            .as_str()
            .is_some_and(|s| s.contains("shop.nixtech.app")),
        "site: {ev}"
    );
    assert!(
        ev["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "reason: {ev}"
    );
    assert!(!ev["ts"].is_null(), "ts: {ev}");
    let audit_text = sc.audit_text();
    assert!(!audit_text.contains(&acme), "the token is in the audit log");

    // A token without a tenant is bound to no tenant.
    let no_tenant = token(&claims_with(json!({"tenant_id": null})));
    let r = send(
        c.get(sc.url("acme.shop.nixtech.app", "/no-tenant"))
            .header("cookie", session_cookie(&no_tenant)),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/no-tenant").identity(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_session_cookies() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let a = token(&claims());
    let b = token(&claims_with(
        json!({"sub": "user-666", "email": "mallory@example.com"}),
    ));

    // Cookie tossing: two different values → no session, in either order, and split over
    // two Cookie header lines.
    let tossed = [
        (
            "/dup/different",
            vec![format!("{COOKIE}={a}; theme=dark; {COOKIE}={b}")],
        ),
        (
            "/dup/different-reversed",
            vec![format!("{COOKIE}={b}; {COOKIE}={a}")],
        ),
        (
            "/dup/two-lines",
            vec![format!("{COOKIE}={a}"), format!("{COOKIE}={b}")],
        ),
    ];
    for (path, cookies) in &tossed {
        let headers: Vec<(&str, &String)> = cookies.iter().map(|c| ("Cookie", c)).collect();
        let r = sc.raw_get(HOST, path, &headers).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(up.find(path).identity(), vec![], "{path}");
    }

    // The same value twice is fine.
    let r = sc
        .raw_get(
            HOST,
            "/dup/same",
            &[("Cookie", &format!("{COOKIE}={a}; theme=dark; {COOKIE}={a}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/dup/same");
    assert_eq!(rec.identity(), user_identity());
    assert_eq!(rec.header_all("cookie"), vec!["theme=dark".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookie_is_kept_from_the_upstream_and_other_cookies_pass_unchanged() {
    let up = spawn_upstream().await;
    let legacy = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .site(Site::new(HOST, up.addr))
            .site(Site::new("legacy.nixtech.app", legacy.addr).forward_session_cookie()),
    )
    .await;
    let c = sc.client();
    let tok = token(&claims());

    let cases: &[(&str, String, Option<&str>)] = &[
        (
            "/c/mixed",
            format!(
                "theme=dark; {COOKIE}={tok}; nix_session_old=zzz; csrftoken=abc%3D%3D; _ga=GA1.2.3.4"
            ),
            Some("theme=dark; nix_session_old=zzz; csrftoken=abc%3D%3D; _ga=GA1.2.3.4"),
        ),
        ("/c/first", format!("{COOKIE}={tok}; a=1"), Some("a=1")),
        (
            "/c/last",
            format!("a=1; b=2; {COOKIE}={tok}"),
            Some("a=1; b=2"),
        ),
        ("/c/only", format!("{COOKIE}={tok}"), None),
    ];
    for (path, cookie, want) in cases {
        let r = send(
            c.get(sc.url("cafe.nixtech.app", path))
                .header("cookie", cookie),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        let rec = up.find(path);
        assert_eq!(rec.identity(), user_identity(), "{path}");
        let got = rec.header_all("cookie");
        match want {
            Some(w) => assert_eq!(got, vec![w.to_string()], "{path}"),
            None => assert!(
                got.is_empty(),
                "{path}: Cookie header {got:?} should be absent"
            ),
        }
    }

    // Without a session cookie the Cookie header is untouched.
    let r = send(
        c.get(sc.url("cafe.nixtech.app", "/c/none"))
            .header("cookie", "a=1; b=2"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/c/none").header_all("cookie"),
        vec!["a=1; b=2".to_string()]
    );

    // forward_session_cookie = true: everything passes as sent.
    let sent = format!("theme=dark; {COOKIE}={tok}; b=2");
    let r = send(
        c.get(sc.url("legacy.nixtech.app", "/c/legacy"))
            .header("cookie", &sent),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = legacy.find("/c/legacy");
    assert_eq!(rec.identity(), user_identity());
    assert_eq!(rec.header_all("cookie"), vec![sent]);
    assert!(!up.received("/c/legacy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_set_cookie_for_the_session_cookie_is_dropped() {
    let up = spawn_upstream_with(|_| {
        Reply::default()
            .header("Set-Cookie", "theme=dark; Path=/")
            .header(
                "Set-Cookie",
                "nix_session=forged; Domain=.nixtech.app; Path=/",
            )
            .header("Set-Cookie", "other=1; HttpOnly")
            .header("Set-Cookie", "NIX_SESSION=forged2; Path=/")
            .header("Set-Cookie", "Nix_Session=forged3")
            .header("Set-Cookie", "nix_session_extra=1")
            .header("set-cookie", " nix_session=forged4; Max-Age=0")
    })
    .await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let c = sc.client();

    for cookie in [None, Some(session_cookie(&token(&claims())))] {
        let mut req = c.get(sc.url("cafe.nixtech.app", "/set"));
        if let Some(ck) = &cookie {
            req = req.header("cookie", ck);
        }
        let r = send(req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
        assert_eq!(
            r.header_all("set-cookie"),
            vec![
                "theme=dark; Path=/".to_string(),
                "other=1; HttpOnly".to_string(),
                "nix_session_extra=1".to_string(),
            ],
            "with session cookie: {}",
            cookie.is_some()
        );
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_pass_forwards_without_identity() {
    let up = spawn_upstream().await;
    let sc =
        Sidecar::start(&Config::new().site(Site::new(HOST, up.addr).unauthenticated("pass"))).await;
    let c = sc.client();

    let r = send(
        c.get(sc.url("cafe.nixtech.app", "/anon"))
            .header("accept", "text/html"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(up.find("/anon").identity(), vec![]);

    let r = send(
        c.get(sc.url("cafe.nixtech.app", "/bad"))
            .header("cookie", session_cookie("garbage")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/bad").identity(), vec![]);

    let r = send(
        c.get(sc.url("cafe.nixtech.app", "/good"))
            .header("cookie", session_cookie(&token(&claims()))),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/good").identity(), user_identity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_reject_is_401_without_upstream_contact() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new().site(Site::new("strict.nixtech.app", up.addr).unauthenticated("reject")),
    )
    .await;
    let c = sc.client();

    for (path, cookie) in [
        ("/r/none", None),
        ("/r/garbage", Some(session_cookie("garbage"))),
        (
            "/r/expired",
            Some(session_cookie(&token(&claims_with(
                json!({"exp": now() - 3600}),
            )))),
        ),
    ] {
        let mut req = c
            .get(sc.url("strict.nixtech.app", path))
            .header("accept", "text/html");
        if let Some(ck) = cookie {
            req = req.header("cookie", ck);
        }
        let r = send(req).await;
        assert_eq!(r.status, 401, "{path}");
        assert_no_store(path, &r);
        assert!(!r.body.contains("user-42"), "{path}: user data in the page");
    }
    assert_eq!(up.count(), 0, "upstream contacted for a rejected request");

    let r = send(
        c.post(sc.url("strict.nixtech.app", "/r/good"))
            .header("cookie", session_cookie(&token(&claims())))
            .body("x=1"),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/r/good");
    assert_eq!(rec.identity(), user_identity());
    assert_eq!(rec.body, b"x=1");
}

const LOGIN_URL: &str = "https://nixtech.app/login?return_to={url}";

/// `login.nixtech.app`, which sends navigations without a session to [`LOGIN_URL`].
fn login_site(upstream: std::net::SocketAddr) -> Site {
    Site::new("login.nixtech.app", upstream)
        .unauthenticated("redirect")
        .login_url(LOGIN_URL)
}

/// The `{url}` part of a login redirect, checked to be one encoded component,
/// and decoded.
fn return_url(location: &str) -> String {
    let prefix = "https://nixtech.app/login?return_to=";
    let encoded = location
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("Location {location:?} does not start with {prefix:?}"));
    for ch in [':', '/', '?', '&', '=', '#', ' ', '\\'] {
        assert!(
            !encoded.contains(ch),
            "return URL {encoded:?} is not component-encoded ({ch:?})"
        );
    }
    String::from_utf8(pct_decode(encoded)).expect("UTF-8 return URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_redirect_sends_navigations_to_login() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(login_site(up.addr))).await;
    let c = sc.client();
    let host = "login.nixtech.app";

    // A browser navigation (Accept: text/html).
    let r = send(
        c.get(sc.url(host, "/orders/42?tab=items&x=1"))
            .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
    )
    .await;
    assert_eq!(r.status, 302);
    assert_no_store("302", &r);
    let loc = r.header("location").expect("Location");
    assert_eq!(
        return_url(&loc),
        "http://login.nixtech.app/orders/42?tab=items&x=1"
    );

    // Sec-Fetch-Mode: navigate, whatever the Accept.
    let r = send(
        c.get(sc.url(host, "/nav"))
            .header("sec-fetch-mode", "navigate")
            .header("accept", "*/*"),
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        return_url(&r.header("location").expect("Location")),
        "http://login.nixtech.app/nav"
    );

    // HEAD navigation.
    let r = send(c.head(sc.url(host, "/head")).header("accept", "text/html")).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        return_url(&r.header("location").expect("Location")),
        "http://login.nixtech.app/head"
    );

    // An invalid token is no session.
    let r = send(
        c.get(sc.url(host, "/bad-token"))
            .header("accept", "text/html")
            .header("cookie", session_cookie("garbage")),
    )
    .await;
    assert_eq!(r.status, 302);

    // The return URL names this site's normalized host, never another one.
    for (target, host_header, want) in [
        (
            "//evil.com/x",
            "login.nixtech.app",
            "http://login.nixtech.app/evil.com/x",
        ),
        (
            "///evil.com/x?y=1",
            "login.nixtech.app",
            "http://login.nixtech.app/evil.com/x?y=1",
        ),
        (
            "/p",
            "LOGIN.NixTech.App.:8080",
            "http://login.nixtech.app/p",
        ),
    ] {
        let r = sc
            .raw_get(host_header, target, &[("Accept", "text/html")])
            .await;
        assert_eq!(r.status, 302, "{target}");
        assert_eq!(
            return_url(&r.header("location").expect("Location")),
            want,
            "{target}"
        );
    }
    // A backslash variant: either refused outright or redirected to this host.
    let r = sc
        .raw_get(host, "/\\evil.com/x", &[("Accept", "text/html")])
        .await;
    match r.status {
        400 => {}
        302 => assert_eq!(
            return_url(&r.header("location").expect("Location")),
            "http://login.nixtech.app/evil.com/x"
        ),
        s => panic!("/\\evil.com/x: status {s}"),
    }

    // Not navigations → 401.
    let not_navigations = [
        c.get(sc.url(host, "/api"))
            .header("accept", "application/json"),
        c.get(sc.url(host, "/api2")),
        c.get(sc.url(host, "/cors"))
            .header("sec-fetch-mode", "cors")
            .header("accept", "text/html"),
        c.post(sc.url(host, "/form"))
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .body("a=1"),
        c.post(sc.url(host, "/form2"))
            .header("accept", "text/html")
            .body("a=1"),
    ];
    for (i, req) in not_navigations.into_iter().enumerate() {
        let r = send(req).await;
        assert_eq!(r.status, 401, "non-navigation #{i}");
        assert!(r.header("location").is_none(), "non-navigation #{i}");
        assert_no_store("401", &r);
    }
    assert_eq!(up.count(), 0, "upstream contacted without a session");

    // With a session: forwarded with identity.
    let r = send(
        c.get(sc.url(host, "/in"))
            .header("accept", "text/html")
            .header("cookie", session_cookie(&token(&claims()))),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/in").identity(), user_identity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_with_another_host_is_400() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let cookie = session_cookie(&token(&claims()));

    for target in [
        "http://evil.example/x",
        "http://other.nixtech.app/x",
        "http://cafe.nixtech.app.evil.example/x",
    ] {
        let r = sc.raw_get(HOST, target, &[("Cookie", &cookie)]).await;
        assert_eq!(r.status, 400, "{target}");
        assert_no_store(target, &r);
    }
    assert_eq!(up.count(), 0, "upstream contacted for a mismatched target");

    // The same host in absolute form is an ordinary request.
    let r = sc
        .raw_get(HOST, "http://cafe.nixtech.app/abs", &[("Cookie", &cookie)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().identity(), user_identity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_checked_and_encoded_for_headers() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let c = sc.client();

    // Control characters anywhere → the token is refused.
    let refused = [
        ("crlf-sub", json!({"sub": "user-42\r\nX-Injected: 1"})),
        (
            "lf-email",
            json!({"email": "ana@example.com\nX-Injected: 1"}),
        ),
        ("cr-tenant", json!({"tenant_id": "cafe\rX"})),
        ("nul-tenant", json!({"tenant_id": "ca\u{0}fe"})),
        ("esc-role", json!({"roles": ["admin", "st\u{1b}aff"]})),
        ("del-sub", json!({"sub": "user\u{7f}42"})),
        ("comma-role", json!({"roles": ["admin", "staff,owner"]})),
        ("space-role", json!({"roles": ["admin", "staff owner"]})),
    ];
    for (name, changes) in &refused {
        let path = format!("/claims/{name}");
        let r = send(c.get(sc.url("cafe.nixtech.app", &path)).header(
            "cookie",
            session_cookie(&token(&claims_with(changes.clone()))),
        ))
        .await;
        assert_eq!(r.status, 200, "{name}");
        let rec = up.find(&path);
        assert_eq!(rec.identity(), vec![], "{name}");
        assert!(
            rec.header("x-injected").is_none(),
            "{name}: header injection"
        );
    }

    // Roles are comma-joined without spaces.
    let r = send(c.get(sc.url("cafe.nixtech.app", "/claims/roles")).header(
        "cookie",
        session_cookie(&token(&claims_with(
            json!({"roles": ["admin", "staff", "billing"]}),
        ))),
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/claims/roles").header_all("x-auth-roles"),
        vec!["admin,staff,billing".to_string()]
    );

    // Non-ASCII → percent-encoded UTF-8.
    let r = send(c.get(sc.url("cafe.nixtech.app", "/claims/utf8")).header(
        "cookie",
        session_cookie(&token(&claims_with(json!({
            "sub": "josé",
            "email": "zoë@example.com",
            "tenant_id": "café",
        })))),
    ))
    .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/claims/utf8");
    for (name, want) in [
        ("x-auth-user-id", "jos%C3%A9"),
        ("x-auth-email", "zo%C3%AB@example.com"),
        ("x-auth-tenant-id", "caf%C3%A9"),
    ] {
        let got = rec
            .header(name)
            .unwrap_or_else(|| panic!("{name} missing: {:?}", rec.identity()));
        assert!(
            got.eq_ignore_ascii_case(want),
            "{name}: got {got:?}, want {want:?}"
        );
    }
    assert_eq!(
        rec.header("x-auth-roles").as_deref(),
        Some("admin,staff"),
        "the rest of the identity is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_paths_are_forwarded_without_identity() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new().site(
            Site::new("public.nixtech.app", up.addr)
                .unauthenticated("reject")
                .public_paths(&["/assets/*", "/favicon.ico"]),
        ),
    )
    .await;
    let c = sc.client();
    let cookie = session_cookie(&token(&claims()));
    let host = "public.nixtech.app";

    // Even with a valid cookie (and a spoofed header), no identity.
    let r = send(
        c.get(sc.url(host, "/assets/app.js"))
            .header("cookie", &cookie)
            .header("x-auth-user-id", "evil"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/assets/app.js").identity(), vec![]);

    // Without a cookie, a reject site still serves its public paths.
    for path in ["/favicon.ico", "/assets/img/logo.png"] {
        let r = send(c.get(sc.url(host, path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(up.find(path).identity(), vec![], "{path}");
    }
    let r = send(
        c.get(sc.url(host, "/favicon.ico"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(r.status, 200);

    // Everything else is not public.
    for path in ["/account", "/favicon.ico.php", "/assetsx/app.js"] {
        let r = send(c.get(sc.url(host, path))).await;
        assert_eq!(r.status, 401, "{path} is not public");
        assert!(!up.received(path), "{path}");
    }
    let r = send(c.get(sc.url(host, "/account")).header("cookie", &cookie)).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/account").identity(), user_identity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_replaced() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;

    let r = sc
        .raw_get(
            "Cafe.NixTech.App:1234",
            "/xff",
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("x-forwarded-for", "7.7.7.7, 8.8.8.8"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/xff");
    assert_eq!(rec.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(rec.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(rec.header_all("x-forwarded-host"), vec!["cafe.nixtech.app"]);
    for (name, value) in &rec.headers {
        assert!(
            !String::from_utf8_lossy(value).contains("evil"),
            "client copy forwarded: {name}"
        );
        assert!(
            !String::from_utf8_lossy(value).contains("6.6.6.6"),
            "client copy forwarded: {name}"
        );
    }

    // Also without any client copies.
    let r = send(sc.client().get(sc.url("cafe.nixtech.app", "/xff2"))).await;
    assert_eq!(r.status, 200);
    let rec = up.find("/xff2");
    assert_eq!(rec.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(rec.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(rec.header_all("x-forwarded-host"), vec!["cafe.nixtech.app"]);
}

/// Beyond the letter of SPEC.md (which reads `_` as `-` for the identity
/// family only): CGI-style apps (Rack, WSGI) see `X_Forwarded_Host` and
/// `X-Forwarded-Host` as the same variable, so an underscore copy would let a
/// client choose the host such an app uses to build absolute URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_underscore_variants_are_not_forwarded() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;

    let r = sc
        .raw_get(
            HOST,
            "/xff-underscore",
            &[
                ("X_Forwarded_For", "6.6.6.6"),
                ("X_Forwarded_Proto", "https"),
                ("X_Forwarded_Host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/xff-underscore");
    for (name, value) in &rec.headers {
        let value = String::from_utf8_lossy(value);
        assert!(
            !value.contains("evil") && !value.contains("6.6.6.6") && value != "https",
            "client copy forwarded: {name}: {value}"
        );
    }
    assert_eq!(rec.header_all("x-forwarded-host"), vec!["cafe.nixtech.app"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_without_internals() {
    let dead = free_addr();
    let dead_port = dead.port();
    let sc = Sidecar::start(&Config::new().site(Site::new("down.nixtech.app", dead))).await;

    let r = send(
        sc.client()
            .get(sc.url("down.nixtech.app", "/x"))
            .header("cookie", session_cookie(&token(&claims()))),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_no_store("502", &r);
    let body = r.body.to_ascii_lowercase();
    for leak in [
        dead_port.to_string().as_str(),
        "127.0.0.1",
        "refused",
        "os error",
        "pingora",
        "user-42",
    ] {
        assert!(
            !body.contains(leak),
            "502 body leaks {leak:?}: {:?}",
            r.body
        );
    }
    for (name, value) in r.headers.iter() {
        let v = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
        assert!(
            !v.contains(&dead_port.to_string()) && !v.contains("refused"),
            "502 header {name} leaks internals: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_works_and_injects_identity() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let h2 = sc.h2_client();
    let tok = token(&claims());

    let r = send(
        h2.get(sc.url("cafe.nixtech.app", "/h2?q=1"))
            .header("cookie", format!("theme=dark; {COOKIE}={tok}"))
            .header("x-auth-user-id", "evil")
            .header("x-forwarded-for", "6.6.6.6"),
    )
    .await;
    assert_eq!(r.version, reqwest::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    let rec = up.find("/h2?q=1");
    assert_eq!(rec.identity(), user_identity());
    assert_eq!(rec.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(rec.header_all("x-forwarded-host"), vec!["cafe.nixtech.app"]);
    assert_eq!(rec.header_all("cookie"), vec!["theme=dark".to_string()]);

    // Cookie crumbs (several cookie fields, as HTTP/2 allows).
    let r = send(
        h2.get(sc.url("cafe.nixtech.app", "/h2-crumbs"))
            .header("cookie", "theme=dark")
            .header("cookie", format!("{COOKIE}={tok}")),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = up.find("/h2-crumbs");
    assert_eq!(rec.identity(), user_identity());
    for v in rec.header_all("cookie") {
        assert!(!v.contains(COOKIE), "session cookie forwarded: {v}");
    }

    // Site selection uses :authority.
    let r = send(h2.get(sc.url("unknown.nixtech.app", "/h2-unknown"))).await;
    assert_eq!(r.status, 421);
    assert!(!up.received("/h2-unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_health_and_metrics_and_public_does_not() {
    let up = spawn_upstream().await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let admin = plain_client();
    let c = sc.client();

    // One proxied request so per-site counters exist.
    let r = send(c.get(sc.url("cafe.nixtech.app", "/warm"))).await;
    assert_eq!(r.status, 200);

    let r = send(admin.get(sc.admin_url("/healthz"))).await;
    assert_eq!(r.status, 200);
    let r = send(admin.get(sc.admin_url("/readyz"))).await;
    assert_eq!(r.status, 200);
    let r = send(admin.get(sc.admin_url("/metrics"))).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("sessiongate_requests_total"),
        "metrics: {}",
        r.body
    );

    // On the public listener these paths belong to the app.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = send(c.get(sc.url("cafe.nixtech.app", path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, "ok", "{path} must come from the upstream");
        assert!(up.received(path), "{path} was not forwarded");
    }
    let r = send(c.get(sc.url("unknown.nixtech.app", "/metrics"))).await;
    assert_eq!(r.status, 421);
    assert!(
        !r.body.contains("sessiongate_"),
        "metrics on the public listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_prefix_is_answered_by_the_proxy() {
    let up = spawn_upstream().await;
    let strict = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .site(Site::new(HOST, up.addr))
            .site(Site::new("strict.nixtech.app", strict.addr).unauthenticated("reject")),
    )
    .await;
    let c = sc.client();
    let cookie = session_cookie(&token(&claims()));

    for (host, path, with_cookie) in [
        ("cafe.nixtech.app", "/.sessiongate/anything", false),
        ("cafe.nixtech.app", "/.sessiongate/anything", true),
        ("cafe.nixtech.app", "/.sessiongate/nested/x?y=1", true),
        ("strict.nixtech.app", "/.sessiongate/anything", false),
    ] {
        let mut req = c.get(sc.url(host, path));
        if with_cookie {
            req = req.header("cookie", &cookie);
        }
        let r = send(req).await;
        assert_eq!(r.status, 404, "{host}{path}");
        assert_no_store(path, &r);
        assert_ne!(r.body, "ok", "{host}{path} came from the upstream");
    }
    let r = send(
        c.post(sc.url("cafe.nixtech.app", "/.sessiongate/anything"))
            .body("x=1"),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(up.count(), 0, "reserved prefix reached the upstream");
    assert_eq!(strict.count(), 0, "reserved prefix reached the upstream");

    // Paths that only look alike belong to the app.
    for path in ["/x/.sessiongate/y", "/.sessiongatex/y"] {
        let r = send(c.get(sc.url("cafe.nixtech.app", path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(up.received(path), "{path} was not forwarded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_made_responses_carry_no_store() {
    let up = spawn_upstream().await;
    let dead = free_addr();
    let sc = Sidecar::start(
        &Config::new()
            .site(Site::new(HOST, up.addr))
            .site(Site::new("strict.nixtech.app", up.addr).unauthenticated("reject"))
            .site(login_site(up.addr))
            .site(Site::new("down.nixtech.app", dead)),
    )
    .await;
    let c = sc.client();

    let cases = [
        ("421", c.get(sc.url("unknown.nixtech.app", "/")), 421),
        ("401", c.get(sc.url("strict.nixtech.app", "/")), 401),
        (
            "302",
            c.get(sc.url("login.nixtech.app", "/"))
                .header("accept", "text/html"),
            302,
        ),
        (
            "401-redirect-site",
            c.get(sc.url("login.nixtech.app", "/api"))
                .header("accept", "application/json"),
            401,
        ),
        (
            "404-reserved",
            c.get(sc.url("cafe.nixtech.app", "/.sessiongate/x")),
            404,
        ),
        ("502", c.get(sc.url("down.nixtech.app", "/")), 502),
    ];
    for (name, req, status) in cases {
        let r = send(req).await;
        assert_eq!(r.status, status, "{name}");
        assert_no_store(name, &r);
    }
    let r = sc.raw_get::<&str>(HOST, "http://evil.example/", &[]).await;
    assert_eq!(r.status, 400);
    assert_no_store("400", &r);
    assert_eq!(up.count(), 0);
}
