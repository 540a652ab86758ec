//! Deny-while-impersonating (SPEC.md step 8), black-box: the password form and the API keys
//! subtree of the issue, against path-normalization tricks, every method of a subtree rule,
//! method-override and URL-override headers, and HTTP/2; ambiguous paths on any route. Each
//! refusal is audited once; a normal user reaches the app with every variant.
//!
//! Path variants are written as raw bytes over `TcpStream` so that no client library
//! normalizes them on the way.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const FORBIDDEN: &str = "impersonation.forbidden_attempt";

/// `cafe.nixtech.app` with the deny rules of the issue: the password form for writes, the API
/// keys subtree for every method.
pub fn guarded_site(upstream: SocketAddr) -> Site {
    Site::new(HOST, upstream)
        .deny(&["POST", "PUT", "PATCH", "DELETE"], "/settings/password")
        .deny_every_method("/settings/api-keys/*")
}

/// HS256, [`guarded_site`] in front of `upstream`, liveness on `backend`.
pub fn guarded_config(upstream: SocketAddr, backend: &Backend) -> Config {
    Config::new()
        .liveness(Liveness::on(backend).cache_ttl("5s").timeout("5s"))
        .site(guarded_site(upstream))
}

// ---------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------

/// Waits (bounded) until at least `n` events named `name` were written, then
/// a little longer so that surplus events would show too.
async fn settle_events(sc: &Sidecar, name: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = sc.audit_events_named(name);
        if got.len() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waited 20 s for {n} {name} events; there are {}: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sc.audit_events_named(name)
}

/// A refusal the proxy's own logic made, to be found once in the audit.
#[derive(Debug, Clone)]
struct Refused {
    method: String,
    target: String,
    status: u16,
    /// The canonical path the event must name, when it is certain.
    canonical: Option<String>,
}

/// Exactly one `impersonation.forbidden_attempt` per refusal, with every field.
async fn assert_one_event_per_refusal(sc: &Sidecar, sid: &str, refused: &[Refused]) {
    let events = settle_events(sc, FORBIDDEN, refused.len()).await;
    for r in refused {
        let hits: Vec<&Value> = events
            .iter()
            .filter(|e| {
                // The fragment is not part of the request-target: the parser drops it.
                let sent = r.target.split('#').next().unwrap_or_default();
                (e["path"] == r.target.as_str() || e["path"] == sent)
                    && e["method"] == r.method.as_str()
            })
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{} {:?}: expected one {FORBIDDEN} event, found {}: {hits:#?}",
            r.method,
            r.target,
            hits.len()
        );
        let e = hits[0];
        let what = format!("{FORBIDDEN} for {} {:?}", r.method, r.target);
        assert_eq!(e["site"], HOST, "{what}: site in {e}");
        assert_eq!(e["sid"], sid, "{what}: sid in {e}");
        assert_eq!(e["admin_id"], "admin-7", "{what}: admin_id in {e}");
        assert_eq!(
            e["admin_email"], "root@nixtech.app",
            "{what}: admin_email in {e}"
        );
        assert_eq!(e["user_id"], "user-42", "{what}: user_id in {e}");
        assert_eq!(e["tenant_id"], "cafe", "{what}: tenant_id in {e}");
        assert_eq!(e["status"], r.status, "{what}: status in {e}");
        assert_eq!(e["peer"], "127.0.0.1", "{what}: peer in {e}");
        assert!(
            e["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: no reason in {e}"
        );
        assert!(e["ts"].is_string(), "{what}: no ts in {e}");
        match &r.canonical {
            Some(c) => assert_eq!(
                e["canonical_path"],
                c.as_str(),
                "{what}: canonical_path in {e}"
            ),
            None => assert!(
                e["canonical_path"].is_string(),
                "{what}: no canonical_path in {e}"
            ),
        }
    }
    assert_eq!(
        events.len(),
        refused.len(),
        "one {FORBIDDEN} event per refusal: {} refusals, {} events",
        refused.len(),
        events.len()
    );
}

// ---------------------------------------------------------------------------
// Deny-while-impersonating attempts
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `403 forbidden_while_impersonating`.
    Forbidden,
    /// `400 ambiguous_path`.
    Ambiguous,
    /// 400 or 403 from the proxy's own logic (either code is right).
    Refused,
    /// 400: `ambiguous_path`, or the HTTP parser's own refusal (then no audit).
    AmbiguousOrParser,
}

#[derive(Debug, Clone)]
struct Attempt {
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, String)>,
    expect: Expect,
    /// What the upstream sees for a normal user, when it is not `target`.
    upstream_target: Option<String>,
}

fn attempt(method: &'static str, target: &str, expect: Expect) -> Attempt {
    Attempt {
        method,
        target: target.to_string(),
        headers: Vec::new(),
        expect,
        upstream_target: None,
    }
}

impl Attempt {
    fn header(mut self, name: &'static str, value: &str) -> Attempt {
        self.headers.push((name, value.to_string()));
        self
    }

    fn upstream(mut self, target: &str) -> Attempt {
        self.upstream_target = Some(target.to_string());
        self
    }

    fn head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }

    fn bytes(&self, cookie: &str) -> Vec<u8> {
        let mut headers: Vec<(&str, &str)> = vec![("Cookie", cookie)];
        if !self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
        {
            headers.push(("Accept", "application/json"));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        let body: &[u8] = match self.method.to_ascii_uppercase().as_str() {
            "GET" | "HEAD" | "OPTIONS" => b"",
            _ => br#"{"password":"hunter2"}"#,
        };
        http1(self.method, &self.target, &headers, body)
    }
}

/// The variants of `/settings/password` of the issue, and a few more.
fn password_variants() -> Vec<Attempt> {
    use Expect::*;
    vec![
        attempt("POST", "/settings/password", Forbidden),
        attempt("POST", "/settings//password", Forbidden),
        attempt("POST", "//settings/password", Forbidden),
        attempt("POST", "///settings///password", Forbidden),
        attempt("POST", "/Settings/Password", Forbidden),
        attempt("POST", "/SETTINGS/PASSWORD", Forbidden),
        attempt("POST", "/settings/./password", Forbidden),
        attempt("POST", "/./settings/password", Forbidden),
        attempt("POST", "/settings/x/../password", Forbidden),
        attempt("POST", "/x/y/../../settings/password", Forbidden),
        attempt("POST", "/../settings/password", Forbidden),
        attempt("POST", "/%73ettings/password", Forbidden),
        attempt("POST", "/%53ETTINGS/pa%73%73word", Forbidden),
        attempt("POST", "/settings/password/", Forbidden),
        attempt("POST", "/settings/password//", Forbidden),
        attempt("POST", "/settings/password/.", Forbidden),
        attempt("POST", "/settings/password?next=/", Forbidden),
        attempt("POST", "/settings/password?", Forbidden),
        attempt("POST", "/settings/%2e/password", Forbidden),
        attempt("POST", "/settings/%2e%2e/settings/password", Forbidden),
        attempt("POST", "/settings/%2E%2E/settings/password", Forbidden),
        attempt(
            "POST",
            "http://cafe.nixtech.app/settings/password",
            Forbidden,
        )
        .upstream("/settings/password"),
        attempt("DELETE", "/Settings/password#top", Refused).upstream("/Settings/password"),
        attempt("PUT", "/settings/password", Forbidden),
        attempt("PATCH", "/Settings/Password/", Forbidden),
        attempt("DELETE", "/settings//password", Forbidden),
        attempt("post", "/settings/password", Forbidden),
        attempt("POST", "/settings/password?html=1", Forbidden)
            .header("Accept", "text/html,application/xhtml+xml"),
        attempt("POST", "/settings%2Fpassword", Ambiguous),
        attempt("POST", "/settings%2fpassword", Ambiguous),
        attempt("POST", "/settings/password%2F", Ambiguous),
        attempt("POST", "/settings/password;x=1", Ambiguous),
        attempt("POST", "/settings/password;", Ambiguous),
        attempt("POST", "/settings;x=1/password", Ambiguous),
        attempt("POST", "/settings\\password", AmbiguousOrParser),
        attempt("POST", "/settings%5Cpassword", Ambiguous),
        attempt("POST", "/settings/..;/settings/password", Ambiguous),
        attempt("POST", "/settings/%252e%252e/settings/password", Ambiguous),
        attempt("POST", "/settings/pass%2577ord", Ambiguous),
        attempt("POST", "/settings/password%00", Ambiguous),
        attempt("POST", "/settings/password%00.json", Ambiguous),
        attempt("POST", "/settings%00/password", Ambiguous),
        attempt("POST", "/settings/password%0d%0a", Ambiguous),
        attempt("POST", "/settings/password%", Ambiguous),
        attempt("POST", "/settings/password%zz", Ambiguous),
    ]
}

/// Sends `a` while impersonating and checks the refusal. Returns the audit
/// expectation when the proxy's own logic answered.
async fn refuse(sc: &Sidecar, cookie: &str, a: &Attempt) -> Option<Refused> {
    let what = format!("{} {:?} while impersonating", a.method, a.target);
    let r = raw_request(sc.addr, &a.bytes(cookie)).await;
    let code = r.error_code();
    let html = a
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("accept") && v.contains("text/html"));
    let proxy_logic = match (a.expect, r.status) {
        (Expect::Forbidden, 403) => true,
        (Expect::Ambiguous, 400) => true,
        (Expect::Refused, 400 | 403) => true,
        (Expect::AmbiguousOrParser, 400) => code.as_deref() == Some("ambiguous_path"),
        (want, got) => panic!(
            "{what}: expected {want:?}, got {got}: {}",
            String::from_utf8_lossy(&r.body)
        ),
    };
    if proxy_logic {
        let cc = r.header("cache-control").unwrap_or_default();
        assert!(
            cc.to_ascii_lowercase().contains("no-store"),
            "{what}: Cache-Control {cc:?}, expected no-store"
        );
        let body = String::from_utf8_lossy(&r.body);
        for secret in ["user-42", "ana@example.com", "root@nixtech.app", "admin-7"] {
            assert!(
                !body.contains(secret),
                "{what}: body carries {secret:?}: {body}"
            );
        }
        if html {
            let ct = r.header("content-type").unwrap_or_default();
            assert!(
                ct.starts_with("text/html"),
                "{what}: Content-Type {ct:?} for a browser"
            );
        } else if !a.head() {
            let want = if r.status == 403 {
                "forbidden_while_impersonating"
            } else {
                "ambiguous_path"
            };
            assert_eq!(code.as_deref(), Some(want), "{what}: body {body}");
        }
    }
    proxy_logic.then(|| Refused {
        method: a.method.to_string(),
        target: a.target.clone(),
        status: r.status,
        canonical: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_route_and_its_variants_are_refused_while_impersonating() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let sid = "imp-variants";
    let cookie = imp_cookie(sid);

    // The session is live and reaches the app on an allowed route.
    let r = raw_request(
        sc.addr,
        &http1("GET", "/live-check", &[("Cookie", &cookie)], b""),
    )
    .await;
    assert_eq!(r.status, 200, "allowed route while impersonating");
    assert_eq!(
        up.find("/live-check")
            .header("x-auth-impersonation-session"),
        Some(sid.to_string())
    );
    let before = up.count();

    let mut refused = Vec::new();
    for a in password_variants() {
        if let Some(mut r) = refuse(&sc, &cookie, &a).await {
            if a.expect == Expect::Forbidden {
                r.canonical = Some("/settings/password".into());
            }
            refused.push(r);
        }
        assert_eq!(
            up.count(),
            before,
            "{} {:?} reached the upstream while impersonating: {:?}",
            a.method,
            a.target,
            up.requests().last().map(|r| &r.target)
        );
    }
    assert_one_event_per_refusal(&sc, sid, &refused).await;
    assert_eq!(up.count(), before, "nothing refused reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_route_variants_reach_the_app_for_a_normal_user() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let cookie = normal_cookie();

    for a in password_variants() {
        let what = format!("{} {:?} as a normal user", a.method, a.target);
        let before = up.count();
        let r = raw_request(sc.addr, &a.bytes(&cookie)).await;
        if a.expect == Expect::AmbiguousOrParser && r.status == 400 && up.count() == before {
            // The HTTP parser refused the bytes for everyone: not a deny rule.
            assert_ne!(
                r.error_code().as_deref(),
                Some("ambiguous_path"),
                "{what}: ambiguous_path for a user who is not impersonating"
            );
            continue;
        }
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(up.count(), before + 1, "{what}: not forwarded once");
        let got = up.last();
        let want = a
            .upstream_target
            .clone()
            .unwrap_or_else(|| a.target.clone());
        assert_eq!(got.target, want, "{what}: the upstream got another target");
        assert_eq!(got.method, a.method, "{what}: method changed");
        assert_eq!(
            got.header("x-auth-user-id").as_deref(),
            Some("user-42"),
            "{what}: no identity"
        );
        assert_eq!(got.header("x-auth-impersonation-session"), None, "{what}");
    }
    assert!(
        sc.audit_events_named(FORBIDDEN).is_empty(),
        "forbidden_attempt events for a normal user: {:?}",
        sc.audit_events_named(FORBIDDEN)
    );
    assert_eq!(backend.calls(), 0, "a normal user needs no liveness lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_refused_on_any_route_while_impersonating() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let sid = "imp-ambiguous";
    let cookie = imp_cookie(sid);

    let ambiguous = [
        "/products%2Fitem",
        "/orders/1;jsessionid=abc",
        "/images/a%5Cb.png",
        "/reports/x%00.pdf",
        "/docs/%252e%252e/secret",
        "/search/%zz",
        "/files/100%",
    ];
    let mut refused = Vec::new();
    for target in ambiguous {
        for method in ["GET", "POST"] {
            let a = attempt(method, target, Expect::Ambiguous);
            refused.extend(refuse(&sc, &cookie, &a).await);
        }
    }
    assert_eq!(up.count(), 0, "an ambiguous path reached the upstream");
    assert_one_event_per_refusal(&sc, sid, &refused).await;

    // Plain paths on the same routes still work while impersonating.
    for target in [
        "/products/item",
        "/orders/1",
        "/reports/x.pdf",
        "/search/%41bc",
    ] {
        let r = raw_request(sc.addr, &http1("GET", target, &[("Cookie", &cookie)], b"")).await;
        assert_eq!(r.status, 200, "GET {target} while impersonating");
        assert_eq!(
            up.find(target)
                .header("x-auth-impersonation-session")
                .as_deref(),
            Some(sid)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtree_rule_refuses_every_method() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let sid = "imp-subtree";
    let cookie = imp_cookie(sid);

    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ];
    let paths = [
        "/settings/api-keys",
        "/settings/api-keys/",
        "/settings/api-keys/42",
        "/Settings/API-Keys/42/rotate?confirm=1",
        "/settings//api-keys/./42",
        "/settings/%61pi-keys/42",
        "/settings/x/../api-keys",
    ];
    let mut refused = Vec::new();
    for method in methods {
        for path in paths {
            let a = attempt(method, path, Expect::Forbidden);
            let r = refuse(&sc, &cookie, &a)
                .await
                .expect("a 403 is the proxy's own answer");
            refused.push(r);
        }
    }
    // Ambiguous below the subtree, and a WebSocket handshake into it.
    let a = attempt("GET", "/settings/api-keys;a=b/42", Expect::Ambiguous);
    refused.extend(refuse(&sc, &cookie, &a).await);
    let ws = attempt("GET", "/settings/api-keys/stream", Expect::Forbidden)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Key", WS_KEY)
        .header("Sec-WebSocket-Version", "13");
    refused.extend(refuse(&sc, &cookie, &ws).await);
    assert_eq!(up.count(), 0, "a subtree request reached the upstream");
    assert_one_event_per_refusal(&sc, sid, &refused).await;
    for e in sc.audit_events_named(FORBIDDEN) {
        let c = e["canonical_path"].as_str().unwrap_or_default();
        assert!(
            c == "/settings/api-keys" || c.starts_with("/settings/api-keys/"),
            "canonical_path {c:?} in {e}"
        );
    }

    // Outside the subtree, or a method the password rule does not name: forwarded.
    let allowed = [
        ("GET", "/settings/api-keys-legacy"),
        ("POST", "/settings/api-keysx/1"),
        ("GET", "/settings"),
        ("GET", "/settings/password"),
        ("HEAD", "/settings/password/"),
        ("OPTIONS", "/settings/password"),
    ];
    for (method, target) in allowed {
        let before = up.count();
        let r = raw_request(
            sc.addr,
            &attempt(method, target, Expect::Forbidden).bytes(&cookie),
        )
        .await;
        assert_eq!(r.status, 200, "{method} {target} while impersonating");
        assert_eq!(up.count(), before + 1, "{method} {target} not forwarded");
        let got = up.last();
        assert_eq!(got.target, target);
        assert_eq!(
            got.header("x-auth-impersonation-session").as_deref(),
            Some(sid)
        );
    }

    // A normal user goes through the subtree with every method.
    let normal = normal_cookie();
    for method in methods {
        let before = up.count();
        let target = "/settings/api-keys/42";
        let r = raw_request(
            sc.addr,
            &attempt(method, target, Expect::Forbidden).bytes(&normal),
        )
        .await;
        assert_eq!(r.status, 200, "{method} {target} as a normal user");
        assert_eq!(up.count(), before + 1, "{method} {target} as a normal user");
        assert_eq!(
            up.last().header("x-auth-user-id").as_deref(),
            Some("user-42")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_are_judged_by_deny_rules() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let sid = "imp-override";
    let cookie = imp_cookie(sid);

    let denied = [
        attempt("GET", "/settings/password?o=1", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "POST"),
        attempt("GET", "/settings/password?o=2", Expect::Forbidden)
            .header("X-Method-Override", "PUT"),
        attempt("GET", "/settings/password?o=3", Expect::Forbidden)
            .header("X-HTTP-Method", "DELETE"),
        attempt("GET", "/settings/password?o=4", Expect::Forbidden)
            .header("x-http-method-override", "patch"),
        attempt("GET", "/settings/password?o=5", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "GET, POST"),
        attempt("GET", "/settings/password?o=6", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "GET")
            .header("X-HTTP-Method-Override", "DELETE"),
        attempt("HEAD", "/Settings//Password/?o=7", Expect::Forbidden)
            .header("X-Method-Override", "POST"),
        attempt("POST", "/settings/password?o=8", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "GET"),
        attempt("OPTIONS", "/%73ettings/password?o=9", Expect::Forbidden)
            .header("X-HTTP-Method", " Post "),
    ];
    let mut refused = Vec::new();
    for a in &denied {
        let mut r = refuse(&sc, &cookie, a).await.expect("proxy's own 403");
        r.canonical = Some("/settings/password".into());
        refused.push(r);
    }
    assert_eq!(up.count(), 0, "an overridden method reached the upstream");
    assert_one_event_per_refusal(&sc, sid, &refused).await;

    // Overrides that name no denied method pass while impersonating.
    let r = raw_request(
        sc.addr,
        &attempt("GET", "/settings/password?o=ok", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "GET")
            .bytes(&cookie),
    )
    .await;
    assert_eq!(r.status, 200, "GET overridden to GET while impersonating");
    assert_eq!(up.find("/settings/password?o=ok").method, "GET");
    let r = raw_request(
        sc.addr,
        &attempt("GET", "/profile?o=ok", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "POST")
            .bytes(&cookie),
    )
    .await;
    assert_eq!(r.status, 200, "POST override of an allowed route");

    // A normal user: every one of them reaches the app.
    let normal = normal_cookie();
    for a in &denied {
        let before = up.count();
        let r = raw_request(sc.addr, &a.bytes(&normal)).await;
        assert_eq!(r.status, 200, "{} {} as a normal user", a.method, a.target);
        assert_eq!(
            up.count(),
            before + 1,
            "{} {} as a normal user",
            a.method,
            a.target
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_override_headers_never_reach_the_upstream() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let imp = imp_cookie("imp-url-override");
    let normal = normal_cookie();

    let overrides = [
        ("X-Original-URL", "/settings/password"),
        ("X-Rewrite-URL", "/settings/api-keys/1"),
        ("x-original-url", "/settings/api-keys"),
        ("X_Original_URL", "/settings/password"),
        ("X-REWRITE-URL", "/settings/password"),
        ("X_Rewrite_Url", "/settings/api-keys/1"),
    ];
    let mut n = 0;
    for (who, cookie) in [("impersonating", &imp), ("normal", &normal)] {
        for (name, value) in overrides {
            for method in ["GET", "POST"] {
                n += 1;
                let target = format!("/home?n={n}");
                let a = attempt(method, &target, Expect::Forbidden).header(name, value);
                let r = raw_request(sc.addr, &a.bytes(cookie)).await;
                assert_eq!(r.status, 200, "{who} {method} {target} with {name}");
                let got = up.find(&target);
                assert!(
                    !got.headers.iter().any(|(k, _)| {
                        let k = canonical_name(k);
                        k == "x-original-url" || k == "x-rewrite-url"
                    }),
                    "{who} {method} with {name}: the upstream saw {:?}",
                    got.headers
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_route_is_refused_over_h2c() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&guarded_config(up.addr, &backend)).await;
    let sid = "imp-h2";
    let cookie = imp_cookie(sid);
    let c = sc.h2_client();

    let cases = [
        ("POST", "/settings/password", 403),
        ("PUT", "/Settings//Password/", 403),
        ("DELETE", "/settings/api-keys/9", 403),
        ("GET", "/settings/api-keys", 403),
        ("POST", "/settings/password;x=1", 400),
        ("POST", "/settings%2Fpassword", 400),
    ];
    let mut refused = Vec::new();
    for (method, path, status) in cases {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = c
            .request(m, sc.url(HOST, path))
            .header("cookie", &cookie)
            .header("accept", "application/json")
            .body("x=1")
            .send()
            .await
            .expect("h2c request");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status().as_u16(), status, "h2c {method} {path}");
        refused.push(Refused {
            method: method.to_string(),
            target: path.to_string(),
            status,
            canonical: None,
        });
    }
    assert_eq!(up.count(), 0, "a denied h2c request reached the upstream");
    assert_one_event_per_refusal(&sc, sid, &refused).await;
}
