//! Impersonation liveness (SPEC.md step 7, "Liveness backend contract", the
//! admin revoke and the http audit sink), black-box: the real binary between a
//! recording upstream and a scriptable platform backend on loopback.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The `Set-Cookie` that clears the session on the parent domain.
const CLEARED: &str = "nix_session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; \
                       Domain=.nixtech.app; Path=/; Secure; HttpOnly; SameSite=Lax";

/// The proxy for `cafe.nixtech.app` in front of `up`, with `liveness`.
async fn proxy(up: &Upstream, liveness: Liveness) -> Sidecar {
    Sidecar::start(
        &Config::new()
            .liveness(liveness)
            .site(Site::new(HOST, up.addr)),
    )
    .await
}

/// A normal user's API call to `/normal` is forwarded, with the user's identity.
async fn assert_normal_user_is_served(sc: &Sidecar, up: &Upstream) {
    let r = send(api_call(
        sc.client().get(sc.url(HOST, "/normal")),
        &normal_cookie(),
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/normal").identity(), user_identity());
}

/// The answer to a request that came with an ended impersonation.
fn assert_ended(what: &str, r: &Resp, navigation_to: Option<&str>) {
    match navigation_to {
        Some(location) => {
            assert_eq!(r.status, 302, "{what}: status (body {:?})", r.body);
            assert_eq!(
                r.header("location").as_deref(),
                Some(location),
                "{what}: Location"
            );
        }
        None => {
            assert_eq!(r.status, 401, "{what}: status (body {:?})", r.body);
            assert_eq!(without_request_id(&r.body), ENDED_BODY, "{what}: body");
            let ct = r.header("content-type").unwrap_or_default();
            assert!(
                ct.starts_with("application/json"),
                "{what}: Content-Type {ct:?}"
            );
        }
    }
    assert_eq!(
        r.header_all("set-cookie"),
        vec![CLEARED.to_string()],
        "{what}: the session cookie must be cleared"
    );
    assert_no_store(what, r);
}

/// A `503 liveness_unavailable` answer.
fn assert_unavailable(what: &str, r: &Resp, html: bool) {
    assert_eq!(r.status, 503, "{what}: status (body {:?})", r.body);
    assert!(
        r.header("retry-after").is_some(),
        "{what}: 503 without Retry-After"
    );
    assert_no_store(what, r);
    let ct = r.header("content-type").unwrap_or_default();
    if html {
        assert!(ct.starts_with("text/html"), "{what}: Content-Type {ct:?}");
    } else {
        assert!(
            ct.starts_with("application/json"),
            "{what}: Content-Type {ct:?}"
        );
        assert_eq!(
            r.json()["error"],
            "liveness_unavailable",
            "{what}: body {:?}",
            r.body
        );
    }
    assert!(
        !r.header_all("set-cookie")
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}="))),
        "{what}: a backend failure must not clear the session cookie: {:?}",
        r.header_all("set-cookie")
    );
}

// ---------------------------------------------------------------------------
// Live
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_impersonation_is_forwarded_with_impersonation_headers_and_audited() {
    let backend = spawn_backend().await;
    backend.set_for("imp-empty", 200, "");
    backend.set_for("imp-204", 204, "");
    backend.set_for("imp-plain-object", 200, r#"{"sessionId":"x"}"#);
    let up = spawn_upstream_with(|r| {
        if r.path() == "/cacheable" {
            Reply::default()
                .header("Cache-Control", "public, max-age=600")
                .header("Vary", "Accept-Encoding")
        } else {
            Reply::default()
        }
    })
    .await;
    let sc = proxy(&up, Liveness::on(&backend).bearer().forward_cookie()).await;
    let c = sc.client();
    let tok = token(&imp_claims("imp-live-1"));
    let cookie = session_cookie(&tok);

    let r = send(api_call(c.get(sc.url(HOST, "/orders?page=2")), &cookie)).await;
    assert_eq!(r.status, 200, "live impersonation: {}", r.body);
    assert_eq!(r.body, "ok");
    assert_eq!(
        up.find("/orders?page=2").identity(),
        impersonated_identity("imp-live-1")
    );
    assert_private("/orders", &r);

    // What the backend was asked.
    let asked = backend.requests_for("imp-live-1");
    assert_eq!(asked.len(), 1, "one backend call for the first request");
    assert_eq!(asked[0].method, "GET");
    assert_eq!(asked[0].target, "/internal/impersonations/imp-live-1");
    assert_eq!(
        asked[0].header("authorization"),
        Some(format!("Bearer {BACKEND_TOKEN}")),
        "bearer_env is configured"
    );
    assert_eq!(
        asked[0].header("cookie"),
        Some(format!("{COOKIE}={tok}")),
        "forward_cookie = true"
    );

    // The upstream's own caching headers cannot make an impersonated page cacheable.
    let r = send(api_call(c.get(sc.url(HOST, "/cacheable")), &cookie)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.find("/cacheable").identity(),
        impersonated_identity("imp-live-1")
    );
    assert_private("/cacheable", &r);

    // The audit line, with every field.
    let ev = sc
        .wait_for_audit(|e| {
            e["event"] == "impersonation.request"
                && e["path"].as_str().is_some_and(|p| p.starts_with("/orders"))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no impersonation.request audit line for /orders; audit: {:?}",
                sc.audit_events()
            )
        });
    for field in [
        "ts",
        "event",
        "site",
        "sid",
        "admin_id",
        "admin_email",
        "user_id",
        "tenant_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "peer",
    ] {
        assert!(
            ev.get(field).is_some_and(|v| !v.is_null()),
            "audit line lacks {field}: {ev}"
        );
    }
    assert_eq!(ev["site"], HOST, "{ev}");
    assert_eq!(ev["sid"], "imp-live-1", "{ev}");
    assert_eq!(ev["admin_id"], "admin-7", "{ev}");
    assert_eq!(ev["admin_email"], "root@nixtech.app", "{ev}");
    assert_eq!(ev["user_id"], "user-42", "{ev}");
    assert_eq!(ev["tenant_id"], "cafe", "{ev}");
    assert_eq!(ev["method"], "GET", "{ev}");
    assert_eq!(ev["status"], 200, "{ev}");
    assert!(ev["duration_ms"].is_u64(), "duration_ms: {ev}");
    assert_eq!(ev["peer"], "127.0.0.1", "{ev}");
    let ts = ev["ts"].as_str().expect("ts is a string");
    assert!(
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
        "ts is not RFC 3339: {ts:?}"
    );
    // One line per proxied request.
    let per_request = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["event"] == "impersonation.request" && e["sid"] == "imp-live-1")
            .count()
    };
    sc.wait_for_audit(|e| e["event"] == "impersonation.request" && e["path"] == "/cacheable")
        .await
        .expect("audit line for /cacheable");
    assert_eq!(
        per_request(&sc.audit_events()),
        2,
        "{:?}",
        sc.audit_events()
    );

    // Other 2xx answers that mean live: an empty body, 204, an object without "active".
    for sid in ["imp-empty", "imp-204", "imp-plain-object"] {
        let path = format!("/live/{sid}");
        let r = send(api_call(c.get(sc.url(HOST, &path)), &imp_cookie(sid))).await;
        assert_eq!(r.status, 200, "{sid}: {}", r.body);
        assert_eq!(
            up.find(&path).identity(),
            impersonated_identity(sid),
            "{sid}"
        );
        assert_eq!(backend.calls_for(sid), 1, "{sid}");
    }

    // A normal user never calls the backend and gets no impersonation headers,
    // even when the client tries to send them.
    let calls = backend.calls();
    let r = send(
        api_call(
            c.get(sc.url(HOST, "/normal")),
            &session_cookie(&token(&claims())),
        )
        .header("X-Auth-Impersonation-Session", "evil-sid")
        .header("X-Auth-Impersonator-Id", "evil-admin"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.find("/normal").identity(), user_identity());
    assert_eq!(backend.calls(), calls, "a normal user called the backend");
}

// ---------------------------------------------------------------------------
// Ended
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_are_refused_with_the_cookie_cleared_and_never_forwarded() {
    let backend = spawn_backend().await;
    let ended: &[(&str, u16, &str)] = &[
        ("imp-410", 410, r#"{"error":"gone"}"#),
        ("imp-404", 404, ""),
        ("imp-401", 401, ""),
        ("imp-403", 403, "forbidden"),
        (
            "imp-inactive",
            200,
            r#"{"active":false,"endedAt":"2024-01-01T00:00:00Z"}"#,
        ),
    ];
    for (sid, status, body) in ended {
        backend.set_for(sid, *status, body);
    }
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .liveness(Liveness::on(&backend))
            .site(Site::new(HOST, up.addr))
            .site(Site::new("legacy.nixtech.app", up.addr).after_end_url("/goodbye?from=legacy")),
    )
    .await;
    let c = sc.client();

    for (sid, status, _) in ended {
        let cookie = imp_cookie(sid);
        let what = |case: &str| format!("{sid} (backend {status}): {case}");

        let r = send(api_call(c.get(sc.url(HOST, "/api/data")), &cookie)).await;
        assert_ended(&what("API call"), &r, None);

        let r = send(navigate(c.get(sc.url(HOST, "/dashboard")), &cookie)).await;
        assert_ended(&what("navigation"), &r, Some("/"));

        // No Sec-Fetch-Mode, Accept with text/html: a navigation; the site's after_end_url.
        let r = send(
            c.get(sc.url("legacy.nixtech.app", "/page"))
                .header("cookie", &cookie)
                .header("accept", "text/html"),
        )
        .await;
        assert_ended(&what("legacy navigation"), &r, Some("/goodbye?from=legacy"));

        // Not a navigation even though it would accept HTML.
        let r = send(
            c.post(sc.url(HOST, "/form"))
                .header("cookie", &cookie)
                .header("accept", "text/html")
                .header("sec-fetch-mode", "navigate")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("a=1"),
        )
        .await;
        assert_ended(&what("form POST"), &r, None);
        let r = send(
            c.get(sc.url(HOST, "/img"))
                .header("cookie", &cookie)
                .header("accept", "text/html,*/*")
                .header("sec-fetch-mode", "no-cors"),
        )
        .await;
        assert_ended(&what("subresource"), &r, None);

        // Ended is cached: one backend call for the five requests.
        assert_eq!(backend.calls_for(sid), 1, "{sid}: backend calls");

        sc.wait_for_audit(|e| e["event"] == "impersonation.ended_seen" && e["sid"] == *sid)
            .await
            .unwrap_or_else(|| panic!("no impersonation.ended_seen for {sid}"));
    }
    assert_eq!(up.count(), 0, "an ended session reached the upstream");

    // Ended is terminal: the backend saying "live" again changes nothing.
    backend.set_for("imp-410", 200, r#"{"active":true}"#);
    let r = send(api_call(
        c.get(sc.url(HOST, "/again")),
        &imp_cookie("imp-410"),
    ))
    .await;
    assert_ended("imp-410 after the backend says live", &r, None);
    assert_eq!(backend.calls_for("imp-410"), 1);
    assert_eq!(up.count(), 0);

    // Every field of the ended_seen line.
    let ev = sc
        .wait_for_audit(|e| e["event"] == "impersonation.ended_seen" && e["sid"] == "imp-404")
        .await
        .expect("ended_seen for imp-404");
    assert_eq!(ev["site"], HOST, "{ev}");
    assert_eq!(ev["admin_id"], "admin-7", "{ev}");
    assert_eq!(ev["admin_email"], "root@nixtech.app", "{ev}");
    assert_eq!(ev["user_id"], "user-42", "{ev}");
    assert_eq!(ev["tenant_id"], "cafe", "{ev}");
    assert!(ev["ts"].is_string(), "{ev}");

    // A normal user on the same proxy is served, without a backend call.
    let calls = backend.calls();
    assert_normal_user_is_served(&sc, &up).await;
    assert_eq!(backend.calls(), calls);
}

// ---------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_is_cached_for_cache_ttl_and_the_end_is_seen_after_it() {
    // A TTL far longer than 40 loopback requests take, so the first phase holds on any machine
    // without timing it.
    const TTL: Duration = Duration::from_secs(20);
    let backend = spawn_backend().await;
    let up = spawn_upstream().await;
    let sc = proxy(&up, Liveness::on(&backend).cache_ttl("20s")).await;
    let c = sc.client();
    let cookie = imp_cookie("imp-ttl");
    let normal = session_cookie(&token(&claims()));

    // The live answer cannot have been received before t0.
    let t0 = Instant::now();
    for i in 0..20 {
        let r = send(api_call(c.get(sc.url(HOST, &format!("/ttl/{i}"))), &cookie)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        if i == 0 {
            // The session ends in the backend; this proxy may believe "live" until the TTL.
            backend.set_for("imp-ttl", 410, "");
        }
        // Normal users in between never reach the backend.
        let r = send(api_call(
            c.get(sc.url(HOST, &format!("/normal/{i}"))),
            &normal,
        ))
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        backend.calls(),
        1,
        "20 requests within the TTL: one backend call"
    );
    assert_eq!(up.count(), 40);
    let hits = sc
        .metric("sessiongate_liveness_cache_total", &[("result", "hit")])
        .await;
    assert!(hits >= 19.0, "cache hits {hits}, expected at least 19");

    // Once the TTL has passed, the end is seen (bounded poll).
    let deadline = Instant::now() + TTL + Duration::from_secs(40);
    let mut served_after = 0;
    loop {
        let r = send(api_call(c.get(sc.url(HOST, "/poll")), &cookie)).await;
        if r.status == 401 {
            assert_ended("after the TTL", &r, None);
            break;
        }
        assert_eq!(r.status, 200, "before the TTL passes: {}", r.body);
        served_after += 1;
        assert!(
            Instant::now() < deadline,
            "the end was not seen 40 s after cache_ttl"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        t0.elapsed() >= TTL,
        "the end was seen before cache_ttl had passed"
    );
    assert_eq!(
        backend.calls(),
        2,
        "exactly one more backend call once the TTL passed"
    );
    assert_eq!(
        up.count(),
        40 + served_after,
        "the 401 reached the upstream"
    );
    let ended = sc
        .metric("sessiongate_liveness_lookups_total", &[("result", "ended")])
        .await;
    assert!(ended >= 1.0, "lookups{{result=ended}} = {ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_cold_sid_share_one_backend_call() {
    let backend = spawn_backend().await;
    backend.set_delay(Duration::from_millis(300));
    let up = spawn_upstream().await;
    let sc = proxy(&up, Liveness::on(&backend).timeout("10s").cache_ttl("10m")).await;
    let c = sc.client();
    let cookie = imp_cookie("imp-cold");

    let mut tasks = Vec::new();
    for i in 0..100 {
        let req = api_call(c.get(sc.url(HOST, &format!("/burst/{i}"))), &cookie);
        tasks.push(tokio::spawn(send(req)));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert_eq!(
        backend.calls(),
        1,
        "100 concurrent cold requests: one backend call"
    );
    assert_eq!(up.count(), 100, "all 100 served");
    for i in 0..100 {
        assert_eq!(
            up.find(&format!("/burst/{i}")).identity(),
            impersonated_identity("imp-cold")
        );
    }
    let coalesced = sc.metric("sessiongate_liveness_coalesced_total", &[]).await;
    assert!(
        coalesced >= 1.0,
        "sessiongate_liveness_coalesced_total = {coalesced}"
    );
}

// ---------------------------------------------------------------------------
// Backend failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_deny_with_503_and_leave_normal_users_alone() {
    let backend = spawn_backend().await;
    let failing: Vec<(&str, Answer)> = vec![
        ("imp-500", Answer::new(500, r#"{"error":"boom"}"#)),
        ("imp-502", Answer::new(502, "")),
        ("imp-302", Answer::new(302, "")),
        (
            "imp-html",
            Answer::new(200, "<html><body>login</body></html>"),
        ),
        ("imp-array", Answer::new(200, "[1]")),
        ("imp-active-str", Answer::new(200, r#"{"active":"no"}"#)),
        ("imp-broken", Answer::broken()),
        ("imp-slow", Answer::live().delay(Duration::from_secs(3600))),
    ];
    for (sid, a) in &failing {
        backend.set_answer_for(sid, a.clone());
    }
    let up = spawn_upstream().await;
    let sc = proxy(
        &up,
        Liveness::on(&backend).timeout("300ms").on_error("deny"),
    )
    .await;
    let c = sc.client();

    for (sid, _) in &failing {
        let cookie = imp_cookie(sid);
        // The backend answers imp-slow after an hour: an answer at all means the
        // proxy gave up after its own timeout.
        let r =
            send(api_call(c.get(sc.url(HOST, "/api")), &cookie).timeout(Duration::from_secs(20)))
                .await;
        assert_unavailable(&format!("{sid} API"), &r, false);
        let r =
            send(navigate(c.get(sc.url(HOST, "/page")), &cookie).timeout(Duration::from_secs(20)))
                .await;
        assert_unavailable(&format!("{sid} navigation"), &r, true);
        assert!(backend.calls_for(sid) >= 1, "{sid}: backend never asked");
    }
    assert_eq!(
        up.count(),
        0,
        "a request reached the upstream without a liveness answer"
    );
    let errors = sc
        .metric("sessiongate_liveness_lookups_total", &[("result", "error")])
        .await;
    assert!(
        errors >= failing.len() as f64,
        "lookups{{result=error}} = {errors}"
    );

    // While an impersonated request waits on the slow backend, a normal user is
    // served, without a backend call of its own.
    let calls = backend.calls();
    let slow = tokio::spawn(send(
        api_call(
            c.get(sc.url(HOST, "/slow-pending")),
            &imp_cookie("imp-slow"),
        )
        .timeout(Duration::from_secs(20)),
    ));
    backend.wait_for_calls(calls + 1).await;
    assert_normal_user_is_served(&sc, &up).await;
    assert_eq!(
        backend.calls(),
        calls + 1,
        "a normal user reached the backend"
    );
    let r = slow.await.expect("slow request task");
    assert_unavailable("imp-slow while a normal user is served", &r, false);
    assert_eq!(up.count(), 1);

    // A failure is not an end: once the backend answers again, the session is live.
    backend.set_for("imp-500", 200, r#"{"active":true}"#);
    let r = send(api_call(
        c.get(sc.url(HOST, "/recovered")),
        &imp_cookie("imp-500"),
    ))
    .await;
    assert_eq!(r.status, 200, "after the backend recovered: {}", r.body);
    assert_eq!(
        up.find("/recovered").identity(),
        impersonated_identity("imp-500")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_mode_serves_the_last_live_answer_within_stale_ttl_then_denies() {
    const STALE_TTL: Duration = Duration::from_secs(4);
    let backend = spawn_backend().await;
    backend.set_for("imp-never", 500, "");
    backend.set_for("imp-gone", 410, "");
    let up = spawn_upstream().await;
    let sc = proxy(
        &up,
        Liveness::on(&backend)
            .cache_ttl("1s")
            .on_error("stale")
            .stale_ttl("4s")
            .timeout("300ms"),
    )
    .await;
    let c = sc.client();
    let sid = "imp-stale";
    let cookie = imp_cookie(sid);

    // No live answer ever seen: nothing to be stale with.
    let r = send(api_call(
        c.get(sc.url(HOST, "/never")),
        &imp_cookie("imp-never"),
    ))
    .await;
    assert_unavailable("stale mode, never live", &r, false);
    // Stale mode does not soften an end.
    let r = send(api_call(
        c.get(sc.url(HOST, "/gone")),
        &imp_cookie("imp-gone"),
    ))
    .await;
    assert_ended("stale mode, ended", &r, None);
    assert_eq!(up.count(), 0);

    // The live answer is received between t0 and t1.
    let t0 = Instant::now();
    let r = send(api_call(c.get(sc.url(HOST, "/first")), &cookie)).await;
    let t1 = Instant::now();
    assert_eq!(r.status, 200, "{}", r.body);
    backend.set_for(sid, 500, r#"{"error":"db down"}"#);

    struct Seen {
        sent: Instant,
        received: Instant,
        status: u16,
        made_a_backend_call: bool,
    }
    let mut seen: Vec<Seen> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = backend.calls_for(sid);
        let sent = Instant::now();
        let r = send(api_call(c.get(sc.url(HOST, "/poll")), &cookie)).await;
        let received = Instant::now();
        match r.status {
            200 => {}
            503 => assert_unavailable("stale_ttl passed", &r, false),
            s => panic!("stale mode answered {s}: {}", r.body),
        }
        seen.push(Seen {
            sent,
            received,
            status: r.status,
            made_a_backend_call: backend.calls_for(sid) > before,
        });
        if seen.iter().filter(|s| s.status == 503).count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 within 30 s of stale_ttl = 4s"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // Backend failures were answered from the last live answer.
    assert!(
        seen.iter()
            .any(|s| s.status == 200 && s.made_a_backend_call),
        "no request that met a failing backend was served stale"
    );
    for s in &seen {
        let at = s.received.duration_since(t0);
        // Answered before the live answer was stale_ttl old: must be served.
        if s.received < t0 + STALE_TTL {
            assert_eq!(s.status, 200, "denied {at:?} after the live answer");
        }
        // Asked after the live answer was stale_ttl old: must be denied.
        if s.sent > t1 + STALE_TTL {
            assert_eq!(s.status, 503, "still served {at:?} after the live answer");
        }
    }
    let served = seen.iter().filter(|s| s.status == 200).count();
    assert_eq!(up.count(), 1 + served, "a 503 reached the upstream");
}

// ---------------------------------------------------------------------------
// Revoke and the backend request
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revoke_needs_the_bearer_and_ends_the_session_at_once() {
    let backend = spawn_backend().await;
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .admin_token()
            // The backend keeps saying live and the cache would believe it for ten
            // minutes: only the revoke can end these sessions.
            .liveness(Liveness::on(&backend).cache_ttl("10m"))
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let c = sc.client();
    let cookie = imp_cookie("imp-rev");
    let other = imp_cookie("imp-other");
    for (p, ck) in [("/before", &cookie), ("/other-before", &other)] {
        let r = send(api_call(c.get(sc.url(HOST, p)), ck)).await;
        assert_eq!(r.status, 200, "{p}: {}", r.body);
    }

    // Without the right bearer: 401, and nothing changes.
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("wrong bearer", Some("Bearer not-the-token".into())),
        (
            "bearer with a suffix",
            Some(format!("Bearer {ADMIN_TOKEN}x")),
        ),
        (
            "basic auth",
            Some(format!("Basic {}", b64url(ADMIN_TOKEN.as_bytes()))),
        ),
        ("bare token", Some(ADMIN_TOKEN.to_string())),
    ];
    for (what, auth) in &bad {
        let mut req = sc.revoke_request("imp-rev");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = send(req).await;
        assert_eq!(r.status, 401, "revoke with {what}: {}", r.body);
    }
    let r = send(api_call(c.get(sc.url(HOST, "/after-bad-revokes")), &cookie)).await;
    assert_eq!(
        r.status, 200,
        "a refused revoke ended the session: {}",
        r.body
    );

    // With it: revoked, and refused at once.
    let r = send(sc.revoke_request("imp-rev").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "revoke: {}", r.body);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "revoke Content-Type {:?}",
        r.header("content-type")
    );
    assert_eq!(r.json(), json!({"revoked": true, "sid": "imp-rev"}));
    let forwarded = up.count();
    let r = send(api_call(c.get(sc.url(HOST, "/after")), &cookie)).await;
    assert_ended("API call after revoke", &r, None);
    let r = send(navigate(c.get(sc.url(HOST, "/after-nav")), &cookie)).await;
    assert_ended("navigation after revoke", &r, Some("/"));
    assert_eq!(
        up.count(),
        forwarded,
        "a revoked session reached the upstream"
    );
    assert_eq!(backend.calls_for("imp-rev"), 1);

    let ev = sc
        .wait_for_audit(|e| e["event"] == "impersonation.ended" && e["sid"] == "imp-rev")
        .await
        .unwrap_or_else(|| {
            panic!(
                "no impersonation.ended for imp-rev: {:?}",
                sc.audit_events()
            )
        });
    assert_eq!(ev["ended_by"], "admin", "{ev}");
    assert!(ev["ts"].is_string(), "{ev}");
    sc.wait_for_audit(|e| e["event"] == "impersonation.ended_seen" && e["sid"] == "imp-rev")
        .await
        .expect("ended_seen after the revoke");

    // Another session is untouched.
    let r = send(api_call(c.get(sc.url(HOST, "/other-after")), &other)).await;
    assert_eq!(
        r.status, 200,
        "revoking imp-rev ended imp-other: {}",
        r.body
    );

    // The sid in the admin path is percent-decoded.
    let weird = "imp/with space?x=1";
    let r = send(
        sc.revoke_request("imp%2Fwith%20space%3Fx%3D1")
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "revoke of an encoded sid: {}", r.body);
    assert_eq!(r.json(), json!({"revoked": true, "sid": weird}));
    let r = send(api_call(c.get(sc.url(HOST, "/weird")), &imp_cookie(weird))).await;
    assert_ended("revoked before first use", &r, None);
    assert!(!up.received("/weird"));
    sc.wait_for_audit(|e| {
        e["event"] == "impersonation.ended" && e["sid"] == weird && e["ended_by"] == "admin"
    })
    .await
    .expect("impersonation.ended for the decoded sid");

    // A non-ASCII sid: revoked by its own (decoded) value.
    let r = send(sc.revoke_request("imp-%C3%BC").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "revoke of a non-ASCII sid: {}", r.body);
    assert_eq!(r.json(), json!({"revoked": true, "sid": "imp-ü"}));
    let r = send(api_call(
        c.get(sc.url(HOST, "/unicode")),
        &imp_cookie("imp-ü"),
    ))
    .await;
    assert_ended("non-ASCII sid after its revoke", &r, None);
    assert!(
        !up.received("/unicode"),
        "a revoked session reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sid_is_one_encoded_segment_credentials_only_when_configured_and_revoke_off_without_token()
{
    let backend = spawn_backend().await;
    let up = spawn_upstream().await;
    let sc = proxy(&up, Liveness::on(&backend)).await;
    let c = sc.client();

    // (sid in the token, raw target the backend must get)
    let cases = [
        (
            "../../admin?x=1",
            "/internal/impersonations/..%2F..%2Fadmin%3Fx%3D1",
        ),
        ("abc-1_2.3~Z", "/internal/impersonations/abc-1_2.3~Z"),
        ("%2e%2e", "/internal/impersonations/%252e%252e"),
        ("a b#c/d", "/internal/impersonations/a%20b%23c%2Fd"),
        // Non-ASCII: the sid's own UTF-8 bytes, encoded once.
        ("imp-ü", "/internal/impersonations/imp-%C3%BC"),
        // A different sid that merely looks like the encoded form of the one above.
        ("imp-%C3%BC", "/internal/impersonations/imp-%25C3%25BC"),
    ];
    let mut wrong = Vec::new();
    for (i, (sid, target)) in cases.iter().enumerate() {
        let path = format!("/enc/{i}");
        let before = backend.requests().len();
        let r = send(api_call(c.get(sc.url(HOST, &path)), &imp_cookie(sid))).await;
        assert_eq!(r.status, 200, "sid {sid:?}: {}", r.body);
        assert!(up.received(&path), "sid {sid:?} not forwarded");
        let asked: Vec<String> = backend
            .requests()
            .iter()
            .skip(before)
            .map(|r| r.target.clone())
            .collect();
        if asked != [target.to_string()] {
            wrong.push(format!(
                "sid {sid:?}: expected one backend call to {target}, got {asked:?}"
            ));
        }
    }
    for r in backend.requests() {
        assert_eq!(r.method, "GET", "{}", r.target);
        assert_eq!(
            r.header("authorization"),
            None,
            "no bearer_env: no Authorization"
        );
        assert_eq!(
            r.header("cookie"),
            None,
            "forward_cookie = false: no Cookie"
        );
    }

    // Without [admin] token_env, revocation is off, whatever the request carries.
    for auth in [None, Some(format!("Bearer {ADMIN_TOKEN}"))] {
        let mut req = sc.revoke_request("abc-1_2.3~Z");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = send(req).await;
        assert_eq!(
            r.status, 403,
            "revoke without token_env ({auth:?}): {}",
            r.body
        );
    }
    let r = send(api_call(
        c.get(sc.url(HOST, "/still-live")),
        &imp_cookie("abc-1_2.3~Z"),
    ))
    .await;
    assert_eq!(
        r.status, 200,
        "a refused revoke ended the session: {}",
        r.body
    );

    assert!(
        wrong.is_empty(),
        "the sid is not one percent-encoded segment of its own bytes:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------
// HTTP audit sink
// ---------------------------------------------------------------------------

/// Sends one impersonated request for `path` and waits until its audit event
/// has been emitted, so events are queued in request order.
async fn audited_request(sc: &Sidecar, c: &reqwest::Client, cookie: &str, path: &str, n: f64) {
    let r = send(api_call(c.get(sc.url(HOST, path)), cookie)).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    sc.wait_for_metric(
        "sessiongate_audit_events_total",
        &[("event", "impersonation.request")],
        |v| v >= n,
    )
    .await;
}

fn request_paths(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "impersonation.request")
        .map(|e| e["path"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_audit_sink_delivers_every_event_in_order_after_an_outage() {
    let backend = spawn_backend().await;
    let up = spawn_upstream().await;
    let receiver = spawn_audit_receiver().await;
    let sc = Sidecar::start(
        &Config::new()
            .liveness(Liveness::on(&backend).cache_ttl("10m"))
            .audit_sink(&receiver.url())
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let c = sc.client();
    let cookie = imp_cookie("imp-audit");
    let mut n = 0.0;
    let mut expected: Vec<String> = Vec::new();

    // Up: delivered as x-ndjson POSTs.
    for i in 0..3 {
        let p = format!("/up/{i}");
        n += 1.0;
        audited_request(&sc, &c, &cookie, &p, n).await;
        expected.push(p);
    }
    let events = receiver
        .wait_for_events("the first 3 events", |e| request_paths(e).len() >= 3)
        .await;
    assert_eq!(request_paths(&events), expected);
    for post in receiver.accepted() {
        assert_eq!(post.method, "POST");
        assert_eq!(post.path(), "/audit");
        assert!(
            post.header("content-type")
                .unwrap_or_default()
                .starts_with("application/x-ndjson"),
            "Content-Type {:?}",
            post.header("content-type")
        );
    }
    let ev = &events[0];
    assert_eq!(ev["sid"], "imp-audit", "{ev}");
    assert_eq!(ev["admin_id"], "admin-7", "{ev}");
    assert_eq!(ev["status"], 200, "{ev}");

    // Outage 1: the receiver answers 503.
    receiver.refuse(true);
    let attempts = receiver.attempts();
    for i in 0..5 {
        let p = format!("/refused/{i}");
        n += 1.0;
        audited_request(&sc, &c, &cookie, &p, n).await;
        expected.push(p);
    }
    // Wait (bounded) until the sink has been refused at least twice (a retry).
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.attempts() < attempts + 2 {
        assert!(
            Instant::now() < deadline,
            "the sink did not retry within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.refuse(false);
    let events = receiver
        .wait_for_events("the events refused with 503", |e| {
            request_paths(e).len() >= expected.len()
        })
        .await;
    assert_eq!(request_paths(&events), expected, "order and exactly once");

    // Outage 2: nothing listens on the port.
    receiver.go_down().await;
    for i in 0..5 {
        let p = format!("/down/{i}");
        n += 1.0;
        audited_request(&sc, &c, &cookie, &p, n).await;
        expected.push(p);
    }
    // Let the sink fail (and back off) at least once before the receiver returns.
    tokio::time::sleep(Duration::from_millis(700)).await;
    receiver.come_back().await;
    let events = receiver
        .wait_for_events("the events sent while the receiver was down", |e| {
            request_paths(e).len() >= expected.len()
        })
        .await;
    assert_eq!(request_paths(&events), expected, "order and exactly once");

    let dropped = sc.metric("sessiongate_audit_dropped_total", &[]).await;
    assert_eq!(dropped, 0.0, "events dropped although the queue had room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_audit_sink_counts_what_it_drops_when_its_queue_is_full() {
    const QUEUE: usize = 5;
    const SENT: usize = 40;
    let backend = spawn_backend().await;
    let up = spawn_upstream().await;
    let receiver = spawn_audit_receiver().await;
    receiver.refuse(true);
    let sc = Sidecar::start(
        &Config::new()
            .liveness(Liveness::on(&backend).cache_ttl("10m"))
            .audit_sink(&receiver.url())
            .audit_queue(QUEUE)
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let c = sc.client();
    let cookie = imp_cookie("imp-drop");
    for i in 0..SENT {
        audited_request(&sc, &c, &cookie, &format!("/e/{i}"), (i + 1) as f64).await;
    }
    let emitted = sc
        .wait_for_metric(
            "sessiongate_audit_events_total",
            &[("event", "impersonation.request")],
            |v| v >= SENT as f64,
        )
        .await;
    assert_eq!(emitted, SENT as f64, "audit events emitted");
    let dropped = sc
        .wait_for_metric("sessiongate_audit_dropped_total", &[], |v| v > 0.0)
        .await;
    assert!(
        dropped >= (SENT - 2 * QUEUE) as f64,
        "{dropped} dropped of {SENT} with queue = {QUEUE} while the sink was down"
    );

    // Back up: what was kept arrives, and kept + dropped accounts for everything.
    receiver.refuse(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = request_paths(&receiver.events()).len() as f64;
        let dropped = sc.metric("sessiongate_audit_dropped_total", &[]).await;
        if delivered + dropped >= SENT as f64 {
            assert_eq!(
                delivered + dropped,
                SENT as f64,
                "delivered {delivered} + dropped {dropped} != {SENT} emitted"
            );
            assert!(delivered >= 1.0, "nothing that was queued was delivered");
            assert!(
                delivered <= (2 * QUEUE) as f64,
                "{delivered} delivered: more than queue = {QUEUE} were held"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s: delivered {delivered} + dropped {dropped} < {SENT} emitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Delivered events are distinct and in order.
    let paths = request_paths(&receiver.events());
    let nums: Vec<usize> = paths
        .iter()
        .map(|p| {
            p.trim_start_matches("/e/")
                .parse()
                .unwrap_or_else(|_| panic!("unexpected path {p}"))
        })
        .collect();
    let in_order = nums.windows(2).all(|w| w[0] < w[1]);
    assert!(in_order, "delivered out of order or twice: {paths:?}");
}
