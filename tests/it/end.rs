//! Ending an impersonation from the banner (SPEC.md "The proxy's own endpoints":
//! `POST /.sessiongate/end-impersonation`), black-box: only this site's exact origin, with
//! the banner's csrf field and a live impersonation cookie, ends the session, at once, after
//! telling the platform backend; anything else leaves the session working.

use crate::common::*;
use serde_json::json;

/// A sibling subdomain (same site for SameSite cookies, another origin).
const SIBLING: &str = "login.nixtech.app";
const ADMIN_EMAIL: &str = "root@nixtech.app";
const AFTER_END: &str = "/ended";

/// The session still works: the page still comes with a banner.
async fn assert_session_works(sc: &Sidecar, cookie: &str, what: &str) {
    let r = sc.raw_navigate(HOST, "/page", Some(cookie), &[]).await;
    assert_eq!(r.status, 200, "{what}: the session stopped working");
    assert!(
        r.body_text().contains(BANNER_START),
        "{what}: no banner any more"
    );
}

/// A banner page and a JSON API behind `cafe.nixtech.app`, which sends ended sessions to
/// `/ended`.
async fn end_setup() -> (Backend, Upstream, Sidecar) {
    let backend = spawn_backend().await;
    let up = routed_upstream(vec![
        ("/page", Reply::html(page().as_bytes())),
        ("/api/orders", Reply::typed("application/json", b"[]")),
    ])
    .await;
    let sc = Sidecar::start(
        &Config::new()
            .liveness(Liveness::on(&backend))
            .site(Site::new(HOST, up.addr).after_end_url(AFTER_END)),
    )
    .await;
    (backend, up, sc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_is_refused_by_get_and_without_this_sites_origin() {
    let (backend, _up, sc) = end_setup().await;
    let cookie = imp_cookie("sid-origin");
    let csrf = sc.csrf_for(&cookie).await;
    let form = format!("csrf={csrf}");
    let c = sc.client();

    // GET (and other methods): 405 with Allow: POST.
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let r = send(
            c.request(
                method.clone(),
                sc.url(HOST, &format!("{END_PATH}?csrf={csrf}")),
            )
            .header("cookie", &cookie)
            .header("origin", sc.origin(HOST))
            .header("accept", "application/json"),
        )
        .await;
        assert_eq!(r.status, 405, "{method}: {}", r.body);
        assert_eq!(r.header("allow").as_deref(), Some("POST"), "{method}");
    }

    let own = sc.origin(HOST);
    let port = sc.addr.port();
    let other_port = format!(
        "http://{HOST}:{}",
        if port == u16::MAX { port - 1 } else { port + 1 }
    );
    let sibling = sc.origin(SIBLING);
    let sibling_page = format!("{sibling}/settings");
    let bare = format!("http://{HOST}");
    let suffix = format!("http://{HOST}.evil.test:{}", sc.addr.port());
    let userinfo = format!("http://{}@evil.test:{}", HOST, sc.addr.port());
    let refusals: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        ("no Origin, no Referer", None, None),
        ("foreign Origin", Some("https://evil.test"), None),
        ("sibling-subdomain Origin", Some(&sibling), None),
        ("sibling Origin, own Referer", Some(&sibling), Some(&own)),
        ("Origin on another port", Some(&other_port), None),
        ("Origin without the port", Some(&bare), None),
        ("Origin with this host as a prefix", Some(&suffix), None),
        ("Origin with userinfo", Some(&userinfo), None),
        ("Origin: null", Some("null"), None),
        ("sibling Referer, no Origin", None, Some(&sibling_page)),
    ];
    for (what, origin_h, referer) in refusals {
        let r = sc
            .post_end(EndReq {
                cookie: Some(&cookie),
                origin: origin_h,
                referer,
                body: Some(form.clone()),
                ..Default::default()
            })
            .await;
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_origin", "{what}");
        assert!(r.header("set-cookie").is_none(), "{what}: cookie touched");
    }
    assert!(
        backend.end_calls().is_empty(),
        "a refused End reached the backend"
    );
    assert_session_works(&sc, &cookie, "after refused origins").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_is_refused_with_a_wrong_csrf_or_without_an_impersonation() {
    let (backend, _up, sc) = end_setup().await;
    let cookie = imp_cookie("sid-csrf");
    let other = imp_cookie("sid-csrf-other");
    let csrf = sc.csrf_for(&cookie).await;
    let other_csrf = sc.csrf_for(&other).await;
    assert_ne!(csrf, other_csrf, "the csrf is not bound to the session");
    let own = sc.origin(HOST);

    let mut flipped = csrf.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let bodies: Vec<(&str, String, bool)> = vec![
        ("no body", String::new(), false),
        ("no csrf field", "x=1".into(), false),
        ("empty csrf", "csrf=".into(), false),
        ("one character changed", format!("csrf={flipped}"), false),
        (
            "another session's csrf",
            format!("csrf={other_csrf}"),
            false,
        ),
        (
            "csrf in JSON but sent as a form",
            format!(r#"{{"csrf":"{csrf}"}}"#),
            false,
        ),
        ("wrong csrf in JSON", r#"{"csrf":"nope"}"#.into(), true),
    ];
    for (what, body, json_body) in bodies {
        let r = sc
            .post_end(EndReq {
                cookie: Some(&cookie),
                origin: Some(&own),
                body: Some(body),
                json_body,
                ..Default::default()
            })
            .await;
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_csrf", "{what}");
        assert!(r.header("set-cookie").is_none(), "{what}");
    }

    // A csrf in the query string is not the form field.
    let r = send(
        sc.client()
            .post(sc.url(HOST, &format!("{END_PATH}?csrf={csrf}")))
            .header("cookie", &cookie)
            .header("origin", &own)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(""),
    )
    .await;
    assert_eq!(r.status, 403, "csrf in the query: {}", r.body);

    // No session: 401. A normal (non-impersonation) session: 403.
    let r = sc
        .post_end(EndReq {
            origin: Some(&own),
            body: Some(format!("csrf={csrf}")),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, 401, "no session: {}", r.body);
    let normal = session_cookie(&token(&claims()));
    let r = sc
        .post_end(EndReq {
            cookie: Some(&normal),
            origin: Some(&own),
            body: Some(format!("csrf={csrf}")),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, 403, "normal session: {}", r.body);

    assert!(
        backend.end_calls().is_empty(),
        "a refused End reached the backend"
    );
    assert_session_works(&sc, &cookie, "after refused csrf").await;
    assert_session_works(&sc, &other, "the other session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_with_origin_csrf_and_cookie_ends_the_session_at_once() {
    let (backend, up, sc) = end_setup().await;
    let iat = now() - 120;
    let tok = token(&imp_claims_with("sid-end", json!({ "iat": iat })));
    let cookie = session_cookie(&tok);
    let csrf = sc.csrf_for(&cookie).await;
    let calls_before = backend.calls();

    // A browser form post: Origin, the field, the cookie.
    let r = sc
        .post_end(EndReq {
            cookie: Some(&cookie),
            origin: Some(&sc.origin(HOST)),
            body: Some(format!("csrf={}", csrf.replace('-', "%2D"))),
            accept: Some("text/html,application/xhtml+xml,*/*;q=0.8"),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location").as_deref(), Some(AFTER_END));
    let set_cookie = r.header_all("set-cookie");
    assert_eq!(set_cookie.len(), 1, "{set_cookie:?}");
    let sc0 = set_cookie[0].to_ascii_lowercase();
    assert!(sc0.starts_with("nix_session=;"), "{sc0}");
    for part in ["max-age=0", "domain=.nixtech.app", "path=/"] {
        assert!(
            sc0.split(';').any(|p| p.trim() == part),
            "clearing cookie lacks {part}: {sc0}"
        );
    }
    let cc = r.header("cache-control").unwrap_or_default();
    assert!(cc.contains("no-store"), "{cc}");

    // The backend was told, with the session cookie.
    let calls = backend.end_calls();
    assert_eq!(calls.len(), 1, "end_url calls: {calls:?}");
    assert_eq!(calls[0].method, "POST");
    let sent_cookie = calls[0].header("cookie").unwrap_or_default();
    assert!(
        sent_cookie.split(';').any(|c| c.trim() == cookie),
        "end_url got Cookie {sent_cookie:?}"
    );

    // Audit.
    let ev = sc
        .wait_for_audit(|e| e["event"] == "impersonation.ended")
        .await
        .expect("no impersonation.ended audit event");
    assert_eq!(ev["sid"], "sid-end");
    assert_eq!(ev["ended_by"], "tenant");
    assert_eq!(ev["admin_email"], ADMIN_EMAIL);
    assert_eq!(ev["user_id"], "user-42");
    let dur = ev["session_duration_s"]
        .as_u64()
        .unwrap_or_else(|| panic!("session_duration_s: {ev}"));
    assert!((110..=3600).contains(&dur), "session_duration_s {dur}");

    // The same cookie is refused at once, although the backend still says live.
    let upstream_before = up.count();
    let c = sc.client();
    let r = send(api_call(c.get(sc.url(HOST, "/api/orders")), &cookie)).await;
    assert_eq!(r.status, 401, "API call after End: {}", r.body);
    assert_eq!(without_request_id(&r.body), ENDED_BODY);
    let r = send(navigate(c.get(sc.url(HOST, "/page")), &cookie)).await;
    assert_eq!(r.status, 302, "navigation after End: {}", r.body);
    assert_eq!(r.header("location").as_deref(), Some(AFTER_END));
    assert_eq!(
        up.count(),
        upstream_before,
        "an ended session reached the upstream"
    );

    // A second End with the same cookie does not end anything again.
    let r = sc.end_with_form(&cookie, &csrf, "application/json").await;
    assert_ne!(r.status, 303, "ended twice: {}", r.body);
    assert_ne!(r.status, 200, "ended twice: {}", r.body);
    assert_eq!(backend.end_calls().len(), 1, "end_url called again");
    assert!(backend.calls() > calls_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_for_json_clients_and_by_referer() {
    let (backend, _up, sc) = end_setup().await;
    let own = sc.origin(HOST);

    // JSON client: JSON body, Accept: application/json -> 200 {"ended":true}.
    let cookie = imp_cookie("sid-json");
    let csrf = sc.csrf_for(&cookie).await;
    let r = sc
        .post_end(EndReq {
            cookie: Some(&cookie),
            origin: Some(&own),
            body: Some(json!({ "csrf": csrf }).to_string()),
            json_body: true,
            accept: Some("application/json"),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"ended": true}));
    assert!(
        r.header("set-cookie")
            .is_some_and(|v| v.to_ascii_lowercase().contains("max-age=0")),
        "{:?}",
        r.header_all("set-cookie")
    );

    // No Origin, but a Referer on this site (an https origin behind TLS counts).
    let cookie = imp_cookie("sid-referer");
    let csrf = sc.csrf_for(&cookie).await;
    let referer = format!("{own}/orders?tab=open");
    let r = sc
        .post_end(EndReq {
            cookie: Some(&cookie),
            referer: Some(&referer),
            body: Some(format!("csrf={csrf}")),
            accept: Some("text/html"),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(backend.end_calls().len(), 2);

    // The backend says "already ended" (410): success too.
    backend.set_for("end-impersonation", 410, r#"{"error":"already ended"}"#);
    let cookie = imp_cookie("sid-gone");
    let csrf = sc.csrf_for(&cookie).await;
    let r = sc
        .post_end(EndReq {
            cookie: Some(&cookie),
            origin: Some(&format!("https://{}", sc.authority(HOST))),
            body: Some(format!("csrf={csrf}")),
            accept: Some("text/html"),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, 303, "already ended at the backend: {}", r.body);
    let r = sc.raw_navigate(HOST, "/page", Some(&cookie), &[]).await;
    assert_eq!(r.status, 302, "after an already-ended End");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_backend_failure_is_502_and_keeps_the_session() {
    let (backend, _up, sc) = end_setup().await;
    let cookie = imp_cookie("sid-fail");
    let csrf = sc.csrf_for(&cookie).await;
    backend.set_for("end-impersonation", 500, r#"{"error":"boom"}"#);
    let r = sc.end_with_form(&cookie, &csrf, "text/html").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.header("set-cookie").is_none(),
        "cookie cleared on failure"
    );
    assert_eq!(backend.end_calls().len(), 1);
    assert_session_works(&sc, &cookie, "after a failed End").await;
    assert!(
        sc.wait_for_audit(|e| e["event"] == "impersonation.ended")
            .await
            .is_none(),
        "a failed End was audited as ended"
    );

    // Once the backend is back, the same form works.
    backend.set_for("end-impersonation", 200, r#"{"ok":true}"#);
    let r = sc.end_with_form(&cookie, &csrf, "text/html").await;
    assert_eq!(r.status, 303, "{}", r.body);
}
