//! Adversarial hardening, black-box: the real binary between raw-byte clients
//! and recording servers on loopback.
//!
//! - deny-while-impersonating (SPEC.md step 8) against path-normalization
//!   tricks, every method of a subtree rule, method-override headers and
//!   URL-override headers, each refusal audited once;
//! - HTTP/1.1 framing attacks (CL+TE smuggling, duplicate Content-Length,
//!   obs-fold, duplicate Host, stacked Transfer-Encoding) and the 32 KiB
//!   header limit ("Limits");
//! - a flood of garbage and forged tokens;
//! - WebSockets: identity on the handshake, the socket closed once the
//!   impersonation ends (revoke, backend, expiry, idle);
//! - a JWKS whose keys rotate mid-run.
//!
//! Path variants are written as raw bytes over `TcpStream` so that no client
//! library normalizes them on the way.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "cafe.nixtech.app";
const ADMIN_TOKEN_ENV: &str = "SG_HARDENING_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "hardening-admin-token-5c1d93e7";
const FORBIDDEN: &str = "impersonation.forbidden_attempt";
/// The RFC 6455 sample key and its accept value (section 1.3).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The deny rules of the issue: the password form for writes, the API keys
/// subtree for every method.
const DENY_RULES: &str = r#"
[[site.deny_while_impersonating]]
methods = ["POST", "PUT", "PATCH", "DELETE"]
path = "/settings/password"

[[site.deny_while_impersonating]]
path = "/settings/api-keys/*"
"#;

// ---------------------------------------------------------------------------
// Configuration and start-up
// ---------------------------------------------------------------------------

/// A whole config: `[admin]` with the revoke bearer, `[liveness]` on `backend`
/// with `cache_ttl`, a file audit sink, and `sites`.
fn hardening_config(
    token_section: &str,
    backend: &Backend,
    cache_ttl: &str,
    sites: &str,
) -> String {
    format!(
        r#"[listen]
addr = "@LISTEN@"

[admin]
addr = "@ADMIN@"
token_env = "{ADMIN_TOKEN_ENV}"

{token_section}
[liveness]
url = "{url}"
end_url = "{end_url}"
cache_ttl = "{cache_ttl}"
timeout = "5s"

[audit]
sink = "file:@AUDIT@"

{sites}"#,
        url = backend.url(),
        end_url = backend.end_url(),
    )
}

async fn start(config: &str) -> Sidecar {
    Sidecar::start(
        config,
        &[(SECRET_ENV, SECRET), (ADMIN_TOKEN_ENV, ADMIN_TOKEN)],
    )
    .await
}

/// HS256, the deny rules on `cafe.nixtech.app` in front of `upstream`.
async fn start_deny(upstream: SocketAddr, backend: &Backend) -> Sidecar {
    let sites = site(HOST, upstream, DENY_RULES);
    start(&hardening_config(
        &hs256_token_section(""),
        backend,
        "5s",
        &sites,
    ))
    .await
}

fn normal_cookie() -> String {
    session_cookie(&token(&claims()))
}

async fn revoke(sc: &Sidecar, sid: &str) {
    let r = plain_client()
        .post(sc.admin_url(&format!("/sessions/{sid}/revoke")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("POST /sessions/{sid}/revoke");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "revoke of {sid}: {body}");
}

async fn assert_healthz(sc: &Sidecar) {
    let r = plain_client()
        .get(sc.admin_url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(r.status(), 200, "admin /healthz");
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over one connection
// ---------------------------------------------------------------------------

/// `METHOD TARGET HTTP/1.1`, `Host` first (unless `headers` has one), then
/// `headers` as given, `Content-Length` for a body unless framing is given,
/// and the body. No `Connection` header: closing is the proxy's decision.
fn http1(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        s.extend_from_slice(format!("Host: {HOST}\r\n").as_bytes());
    }
    for (k, v) in headers {
        s.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !body.is_empty() && !framed {
        s.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    s.extend_from_slice(b"\r\n");
    s.extend_from_slice(body);
    s
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One client connection, reading responses one at a time (keep-alive aware).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes the bytes as they are; a failed write is not a verdict (the
    /// proxy may answer and close before reading everything).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    async fn read_more(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match self.stream.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    async fn fill(&mut self, n: usize) -> Option<()> {
        while self.buf.len() < n {
            if !self.read_more().await {
                return None;
            }
        }
        Some(())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(p) = find_bytes(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return Some(line);
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    async fn chunked_body(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                loop {
                    if self.line().await?.is_empty() {
                        return Some(body);
                    }
                }
            }
            self.fill(size + 2).await?;
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// The next response (bounded by 30 s); `None` when the connection ends
    /// before a complete one. `head`: the request was HEAD (no body).
    async fn response(&mut self, head: bool) -> Option<RawResponse> {
        tokio::time::timeout(Duration::from_secs(30), self.read_response(head))
            .await
            .expect("no complete response within 30 s")
    }

    async fn read_response(&mut self, head: bool) -> Option<RawResponse> {
        loop {
            let parsed = {
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let mut resp = httparse::Response::new(&mut hs);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => Some((
                        n,
                        resp.code.unwrap_or(0),
                        resp.headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect::<Vec<_>>(),
                    )),
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => panic!(
                        "unparseable response ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                }
            };
            let Some((n, status, headers)) = parsed else {
                if !self.read_more().await {
                    return None;
                }
                continue;
            };
            self.buf.drain(..n);
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let r = RawResponse {
                status,
                headers,
                body: Vec::new(),
            };
            let cl = r
                .header("content-length")
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = r
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            let body = if head || matches!(status, 101 | 204 | 304) {
                Vec::new()
            } else if chunked {
                self.chunked_body().await?
            } else if let Some(cl) = cl {
                self.fill(cl).await?;
                self.buf.drain(..cl).collect()
            } else {
                while self.read_more().await {}
                std::mem::take(&mut self.buf)
            };
            return Some(RawResponse { body, ..r });
        }
    }

    /// The peer closes the connection (EOF or reset) within a bounded wait,
    /// without sending anything more.
    async fn assert_closed(&mut self, what: &str) {
        assert!(
            self.buf.is_empty(),
            "{what}: the proxy sent more after its answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(15), self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!(
                "{what}: the proxy sent more after its answer: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(_) => panic!("{what}: the connection is still open 15 s after the answer"),
        }
    }
}

/// One request on a fresh connection.
async fn exchange(addr: SocketAddr, request: &[u8], head: bool) -> RawResponse {
    let mut c = Conn::open(addr).await;
    c.send(request).await;
    c.response(head)
        .await
        .unwrap_or_else(|| panic!("connection closed without a response to {request:?}"))
}

fn json_body(r: &RawResponse) -> Option<Value> {
    serde_json::from_slice(&r.body).ok()
}

fn error_code(r: &RawResponse) -> Option<String> {
    json_body(r).and_then(|v| v["error"].as_str().map(str::to_string))
}

// ---------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------

fn events_named(sc: &Sidecar, name: &str) -> Vec<Value> {
    sc.audit_events()
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

/// Waits (bounded) until at least `n` events named `name` were written, then
/// a little longer so that surplus events would show too.
async fn settle_events(sc: &Sidecar, name: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = events_named(sc, name);
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
    events_named(sc, name)
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
    let r = exchange(sc.addr, &a.bytes(cookie), a.head()).await;
    let code = error_code(&r);
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
    let sc = start_deny(up.addr, &backend).await;
    let sid = "imp-variants";
    let cookie = imp_cookie(sid);

    // The session is live and reaches the app on an allowed route.
    let r = exchange(
        sc.addr,
        &http1("GET", "/live-check", &[("Cookie", &cookie)], b""),
        false,
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
    let sc = start_deny(up.addr, &backend).await;
    let cookie = normal_cookie();

    for a in password_variants() {
        let what = format!("{} {:?} as a normal user", a.method, a.target);
        let before = up.count();
        let r = exchange(sc.addr, &a.bytes(&cookie), a.head()).await;
        if a.expect == Expect::AmbiguousOrParser && r.status == 400 && up.count() == before {
            // The HTTP parser refused the bytes for everyone: not a deny rule.
            assert_ne!(
                error_code(&r).as_deref(),
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
        events_named(&sc, FORBIDDEN).is_empty(),
        "forbidden_attempt events for a normal user: {:?}",
        events_named(&sc, FORBIDDEN)
    );
    assert_eq!(backend.calls(), 0, "a normal user needs no liveness lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_refused_on_any_route_while_impersonating() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start_deny(up.addr, &backend).await;
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
        let r = exchange(
            sc.addr,
            &http1("GET", target, &[("Cookie", &cookie)], b""),
            false,
        )
        .await;
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
    let sc = start_deny(up.addr, &backend).await;
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
    for e in events_named(&sc, FORBIDDEN) {
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
        let r = exchange(
            sc.addr,
            &attempt(method, target, Expect::Forbidden).bytes(&cookie),
            method == "HEAD",
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
        let r = exchange(
            sc.addr,
            &attempt(method, target, Expect::Forbidden).bytes(&normal),
            method == "HEAD",
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
    let sc = start_deny(up.addr, &backend).await;
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
    let r = exchange(
        sc.addr,
        &attempt("GET", "/settings/password?o=ok", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "GET")
            .bytes(&cookie),
        false,
    )
    .await;
    assert_eq!(r.status, 200, "GET overridden to GET while impersonating");
    assert_eq!(up.find("/settings/password?o=ok").method, "GET");
    let r = exchange(
        sc.addr,
        &attempt("GET", "/profile?o=ok", Expect::Forbidden)
            .header("X-HTTP-Method-Override", "POST")
            .bytes(&cookie),
        false,
    )
    .await;
    assert_eq!(r.status, 200, "POST override of an allowed route");

    // A normal user: every one of them reaches the app.
    let normal = normal_cookie();
    for a in &denied {
        let before = up.count();
        let r = exchange(sc.addr, &a.bytes(&normal), a.head()).await;
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
    let sc = start_deny(up.addr, &backend).await;
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
                let r = exchange(sc.addr, &a.bytes(cookie), false).await;
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
    let sc = start_deny(up.addr, &backend).await;
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

// ---------------------------------------------------------------------------
// Framing and limits
// ---------------------------------------------------------------------------

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
    let sc = start_deny(up.addr, &backend).await;
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
    let sc = start_deny(up.addr, &backend).await;
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
    let r = exchange(
        sc.addr,
        &http1("GET", "/still-up", &[("Cookie", &normal)], b""),
        false,
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
    let sc = start_deny(up.addr, &backend).await;
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
    let sc = start_deny(up.addr, &backend).await;
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

        let r = exchange(
            sc.addr,
            &http1(
                "GET",
                &format!("/after-431-{who}"),
                &[("Cookie", session)],
                b"",
            ),
            false,
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
    assert_healthz(&sc).await;
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
    let sc = start_deny(up.addr, &backend).await;

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
            exchange(sc.addr, &garbage_request(i, &target), false).await
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
    assert_healthz(&sc).await;
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
    let r = exchange(
        sc.addr,
        &http1("GET", "/valid-new", &[("Cookie", &normal)], b""),
        false,
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

// ---------------------------------------------------------------------------
// WebSockets
// ---------------------------------------------------------------------------

fn ws_accept(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// One frame: `(opcode, payload, bytes used)`, unmasked.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        let b = buf.get(2..4)?;
        len = u16::from_be_bytes([b[0], b[1]]) as usize;
        pos = 4;
    } else if len == 127 {
        let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
        len = u64::from_be_bytes(b) as usize;
        pos = 10;
    }
    let mask = if masked {
        let m: [u8; 4] = buf.get(pos..pos + 4)?.try_into().ok()?;
        pos += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = buf.get(pos..pos + len)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((opcode, payload, pos + len))
}

fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A WebSocket echo server: records each handshake and each payload it
/// receives, echoes frames back unmasked, and can push frames of its own.
struct WsUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Recorded>>>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    pushers: Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    fn handshakes(&self) -> Vec<Recorded> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }

    fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("received lock")
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Sends a text frame from the server on every open socket.
    fn push(&self, text: &str) {
        for tx in self.pushers.lock().expect("pushers lock").iter() {
            let _ = tx.send(text.as_bytes().to_vec());
        }
    }
}

async fn spawn_ws_upstream() -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ws upstream");
    let addr = listener.local_addr().expect("ws upstream addr");
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let pushers = Arc::new(Mutex::new(Vec::new()));
    let (h, r, p) = (handshakes.clone(), received.clone(), pushers.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_ws(stream, h.clone(), r.clone(), p.clone()));
        }
    });
    WsUpstream {
        addr,
        handshakes,
        received,
        pushers,
        task,
    }
}

async fn serve_ws(
    mut stream: TcpStream,
    handshakes: Arc<Mutex<Vec<Recorded>>>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    pushers: Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>>>,
) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let (rec, used) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
            let rec = Recorded {
                method: req.method.unwrap_or("").to_string(),
                target: req.path.unwrap_or("").to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.to_vec()))
                    .collect(),
                body: Vec::new(),
            };
            break (rec, n);
        }
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    buf.drain(..used);
    let key = rec.header("sec-websocket-key").unwrap_or_default();
    let websocket = rec
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    handshakes.lock().expect("handshakes lock").push(rec);
    if !websocket {
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws_accept(&key)
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    pushers.lock().expect("pushers lock").push(tx);
    loop {
        while let Some((opcode, payload, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if opcode == 8 {
                let _ = stream.write_all(&encode_frame(8, &payload, None)).await;
                return;
            }
            received
                .lock()
                .expect("received lock")
                .push(payload.clone());
            let reply = if opcode == 9 { 10 } else { opcode };
            if stream
                .write_all(&encode_frame(reply, &payload, None))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            r = stream.read(&mut tmp) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            },
            Some(msg) = rx.recv() => {
                if stream.write_all(&encode_frame(1, &msg, None)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug)]
enum WsEvent {
    Frame(u8, Vec<u8>),
    Closed,
    Silent,
}

/// The client side of a WebSocket through the proxy.
struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Opens `path` with the session `cookie`; returns the handshake response and,
/// on 101, the socket.
async fn ws_connect(addr: SocketAddr, path: &str, cookie: &str) -> (RawResponse, Option<WsClient>) {
    let mut c = Conn::open(addr).await;
    c.send(&http1(
        "GET",
        path,
        &[
            ("Cookie", cookie),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", WS_KEY),
            ("Sec-WebSocket-Version", "13"),
            ("Origin", "http://cafe.nixtech.app"),
        ],
        b"",
    ))
    .await;
    let r = c
        .response(false)
        .await
        .expect("an answer to the WebSocket handshake");
    if r.status != 101 {
        return (r, None);
    }
    let ws = WsClient {
        stream: c.stream,
        buf: c.buf,
    };
    (r, Some(ws))
}

impl WsClient {
    async fn send_text(&mut self, text: &str) {
        let _ = self
            .stream
            .write_all(&encode_frame(
                1,
                text.as_bytes(),
                Some([0x37, 0xfa, 0x21, 0x3d]),
            ))
            .await;
    }

    /// The next frame, EOF/reset, or nothing within `wait`.
    async fn recv(&mut self, wait: Duration) -> WsEvent {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return WsEvent::Frame(op, payload);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut tmp = [0u8; 16 * 1024];
            match tokio::time::timeout(left, self.stream.read(&mut tmp)).await {
                Err(_) => return WsEvent::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => return WsEvent::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Sends `text` and expects it back.
    async fn echo(&mut self, text: &str) {
        self.send_text(text).await;
        match self.recv(Duration::from_secs(15)).await {
            WsEvent::Frame(1, p) if p == text.as_bytes() => {}
            WsEvent::Closed => panic!(
                "echo of {text:?}: the proxy closed the socket instead (an upgrade torn down \
                 right after its 101 looks like cloudflare/pingora#946)"
            ),
            other => panic!("echo of {text:?}: got {other:?}"),
        }
    }

    /// After `text` was sent (or pushed), the socket must close within a
    /// bounded wait and never deliver `text`.
    async fn expect_closed_without(&mut self, text: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                WsEvent::Closed => return,
                WsEvent::Frame(_, p) if p == text.as_bytes() => {
                    panic!("{what}: {text:?} was delivered")
                }
                WsEvent::Frame(..) => {}
                WsEvent::Silent => panic!("{what}: the socket is still open after 20 s"),
            }
        }
    }
}

/// HS256 config with a WebSocket upstream; `leeway` and `cache_ttl` given.
fn ws_config(backend: &Backend, upstream: SocketAddr, leeway: &str, cache_ttl: &str) -> String {
    let token_section = format!(
        r#"[token]
cookie = "nix_session"
cookie_domain = ".nixtech.app"
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"
leeway = "{leeway}"
"#
    );
    hardening_config(
        &token_section,
        backend,
        cache_ttl,
        &site(HOST, upstream, DENY_RULES),
    )
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
    let sc = start(&ws_config(&backend, ws.addr, "30s", "30s")).await;
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
    let sc = start(&ws_config(&backend, ws.addr, "30s", "30s")).await;
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

    revoke(&sc, sid).await;
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
    let sc = start(&ws_config(&backend, ws.addr, "30s", "30s")).await;
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

    revoke(&sc, sid).await;
    ws.push("news-after-revoke");
    sock.expect_closed_without("news-after-revoke", "server frame after the revoke")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_when_the_backend_reports_the_end() {
    let ws = spawn_ws_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&ws_config(&backend, ws.addr, "30s", "1s")).await;
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
    let sc = start(&ws_config(&backend, ws.addr, "1s", "30s")).await;
    let sid = "imp-ws-exp";
    let mut c = imp_claims(sid);
    let exp = now() + 6;
    c["exp"] = json!(exp);
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
    let sc = start(&ws_config(&backend, ws.addr, "30s", "2s")).await;

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

// ---------------------------------------------------------------------------
// JWKS rotation
// ---------------------------------------------------------------------------

/// The public key of `file` (n, e) as a JWK with `kid`.
fn jwk(file: &str, kid: &str) -> Value {
    let text = std::fs::read_to_string(fixture(file)).expect("read JWK fixture");
    let mut v: Value = serde_json::from_str(&text).expect("JWK fixture is JSON");
    v["kid"] = json!(kid);
    v["alg"] = json!("RS256");
    v["use"] = json!("sig");
    v
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn mint_kid(private_pem: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).expect("read private key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA private key");
    let header = Header {
        kid: Some(kid.to_string()),
        ..Header::new(Algorithm::RS256)
    };
    jsonwebtoken::encode(&header, claims, &key).expect("encode RS256 token")
}

/// A JWKS endpoint whose answer the test switches, counting fetches.
struct JwksServer {
    server: Upstream,
    answer: Arc<Mutex<(u16, String)>>,
}

impl JwksServer {
    async fn spawn(body: String) -> JwksServer {
        let answer = Arc::new(Mutex::new((200, body)));
        let a = answer.clone();
        let server = spawn_upstream_with(move |_| {
            let (status, body) = a.lock().expect("jwks answer lock").clone();
            Reply {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: body.into_bytes(),
                // Slow enough for concurrent refreshes to overlap.
                delay: Duration::from_millis(300),
            }
        })
        .await;
        JwksServer { server, answer }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.server.addr)
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().expect("jwks answer lock") = (status, body);
    }

    fn fetches(&self) -> usize {
        self.server.count()
    }
}

fn jwks_token_section(url: &str) -> String {
    format!(
        r#"[token]
cookie = "nix_session"
cookie_domain = ".nixtech.app"
algorithms = ["RS256"]
jwks_url = "{url}"
leeway = "30s"
"#
    )
}

/// Sends the token; returns the user id the upstream was given, if any.
async fn identity_with(sc: &Sidecar, up: &Upstream, token: &str) -> Option<String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let target = format!("/jwks-probe/{}", N.fetch_add(1, Ordering::SeqCst));
    let r = sc
        .client()
        .get(sc.url(HOST, &target))
        .header("cookie", session_cookie(token))
        .header("accept", "application/json")
        .send()
        .await
        .expect("request to the proxy");
    assert_eq!(r.status(), 200, "{target}: unauthenticated = pass forwards");
    up.find(&target).header("x-auth-user-id")
}

/// Sleeps until `since + 5.5 s` (the refresh window has passed).
async fn past_refresh_window(since: Instant) {
    let until = since + Duration::from_millis(5500);
    let now = Instant::now();
    if until > now {
        tokio::time::sleep(until - now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_mid_run() {
    let jwks_server = JwksServer::spawn(jwks(&[jwk("rsa_public.jwk.json", "k1")])).await;
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&hardening_config(
        &jwks_token_section(&jwks_server.url()),
        &backend,
        "5s",
        &site(HOST, up.addr, ""),
    ))
    .await;
    let k1 = mint_kid("rsa_private.pem", "k1", &claims());
    let k2 = mint_kid("rsa2_private.pem", "k2", &claims());

    // {k1}: accepted; later tokens use the keys at hand.
    let f0 = jwks_server.fetches();
    assert_eq!(
        identity_with(&sc, &up, &k1).await.as_deref(),
        Some("user-42"),
        "k1 token"
    );
    let last_fetch = Instant::now();
    let f1 = jwks_server.fetches();
    assert!(
        f1 >= 1 && f1 <= f0 + 1,
        "JWKS fetches: {f0} before, {f1} after the first token"
    );
    for _ in 0..5 {
        assert_eq!(
            identity_with(&sc, &up, &k1).await.as_deref(),
            Some("user-42")
        );
    }
    assert_eq!(jwks_server.fetches(), f1, "a known kid caused a fetch");

    // Rotation to {k2}.
    jwks_server.serve(200, jwks(&[jwk("rsa2_public.jwk.json", "k2")]));
    past_refresh_window(last_fetch).await;
    assert_eq!(
        identity_with(&sc, &up, &k2).await.as_deref(),
        Some("user-42"),
        "k2 token after the rotation"
    );
    let rotated = Instant::now();
    assert_eq!(jwks_server.fetches(), f1 + 1, "one refetch for the new kid");
    assert_eq!(
        identity_with(&sc, &up, &k1).await,
        None,
        "k1 after the refresh removed it"
    );
    assert_eq!(
        identity_with(&sc, &up, &k2).await.as_deref(),
        Some("user-42")
    );

    // Forgeries around the rotation.
    let wrong_key = mint_kid("rsa_private.pem", "k2", &claims());
    assert_eq!(
        identity_with(&sc, &up, &wrong_key).await,
        None,
        "k1's key under kid k2"
    );
    let public_pem = std::fs::read(fixture("rsa2_public.pem")).expect("public pem");
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("k2".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(),
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("HS256 token");
    assert_eq!(
        identity_with(&sc, &up, &confused).await,
        None,
        "HS256 with the public key"
    );
    assert_eq!(jwks_server.fetches(), f1 + 1, "no fetch within the window");

    // Random unknown kids: at most one fetch per 5 s window, concurrent
    // callers sharing it.
    past_refresh_window(rotated).await;
    let before = jwks_server.fetches();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = sc.client();
        let url = sc.url(HOST, &format!("/unknown-kid/{i}"));
        let t = mint_kid("rsa2_private.pem", &format!("rnd-{i}-{}", now()), &claims());
        set.spawn(async move {
            c.get(url)
                .header("cookie", session_cookie(&t))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("task").expect("request"), 200);
    }
    for i in 20..40 {
        let t = mint_kid("rsa2_private.pem", &format!("rnd-{i}"), &claims());
        assert_eq!(identity_with(&sc, &up, &t).await, None, "unknown kid {i}");
    }
    let windows = started.elapsed().as_secs() as usize / 5 + 1;
    let extra = jwks_server.fetches() - before;
    assert!(
        extra >= 1,
        "an unknown kid after the window caused no refresh"
    );
    assert!(
        extra <= windows,
        "40 unknown-kid tokens caused {extra} fetches within {windows} refresh window(s)"
    );
    for i in 0..20 {
        let got = up.find(&format!("/unknown-kid/{i}"));
        assert_eq!(
            got.identity(),
            Vec::<(String, String)>::new(),
            "unknown kid {i}"
        );
    }

    // A broken JWKS endpoint keeps the previous keys.
    for (status, body) in [(500, "oops".to_string()), (200, "not json".to_string())] {
        jwks_server.serve(status, body);
        past_refresh_window(Instant::now()).await;
        let before = jwks_server.fetches();
        let t = mint_kid("rsa2_private.pem", "k-missing", &claims());
        assert_eq!(identity_with(&sc, &up, &t).await, None);
        assert_eq!(
            jwks_server.fetches(),
            before + 1,
            "refresh attempt ({status})"
        );
        assert_eq!(
            identity_with(&sc, &up, &k2).await.as_deref(),
            Some("user-42"),
            "k2 after a failed refresh ({status})"
        );
    }
    assert_healthz(&sc).await;
}
