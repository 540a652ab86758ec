//! The banner in a real browser: headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API, loads pages through the proxy under
//! four Content-Security-Policies and checks that the page's own scripts and
//! styles still work, that the banner renders at the top with a live
//! countdown, and that its End button ends the session.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them). Set
//! `SESSIONGATE_SKIP_BROWSER=1` to skip on a machine without them (see
//! `common::browser_available`).
//!
//! Everything runs on loopback: the site is `cafe.localhost`, which Chromium
//! resolves to 127.0.0.1 and treats as a secure context. Screenshots are kept
//! in `target/test-artifacts/banner-<variant>.png`.

use crate::common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `*.localhost` resolves to 127.0.0.1 in Chromium and is a secure context.
const SITE_HOST: &str = "cafe.localhost";
const PAGE_NONCE: &str = "pAgEn0nce4711";
const ADMIN_EMAIL: &str = "root@nixtech.app";
const AMBER: &str = "rgb(245, 158, 11)";

// ---------------------------------------------------------------------------
// The site
// ---------------------------------------------------------------------------

/// (variant, Content-Security-Policy header)
const VARIANTS: &[(&str, Option<&str>)] = &[
    ("no-csp", None),
    ("unsafe-inline", Some("script-src 'self' 'unsafe-inline'")),
    (
        "strict-dynamic",
        Some(
            "script-src 'nonce-pAgEn0nce4711' 'strict-dynamic'; object-src 'none'; base-uri 'none'",
        ),
    ),
    (
        "default-none",
        Some("default-src 'none'; script-src 'nonce-pAgEn0nce4711'; style-src 'self'"),
    ),
];

/// The page: a violation recorder and an inline script (both with the page's
/// nonce), a same-origin stylesheet and script, and enough text to scroll.
fn variant_page(variant: &str) -> String {
    let paragraphs: String = (1..=60)
        .map(|i| format!("<p class=\"row\">Order {i}: two flat whites and a croissant.</p>\n"))
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Orders ({variant})</title>
<script nonce="{PAGE_NONCE}">
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {{
  window.__violations.push({{ blocked: String(e.blockedURI), directive: e.effectiveDirective,
    source: String(e.sourceFile), sample: String(e.sample || "") }});
}});
</script>
<link rel="stylesheet" href="/public/app.css">
<script nonce="{PAGE_NONCE}" src="/public/app.js"></script>
</head>
<body><h1 id="title">Orders ({variant})</h1>
<script nonce="{PAGE_NONCE}">document.body.dataset.inline = "ran";</script>
{paragraphs}</body></html>
"#
    )
}

/// The page's own stylesheet, hostile to anything that looks like a banner.
const APP_CSS: &str = "h1 { color: rgb(1, 2, 3); }\n\
div { background: rgb(255, 0, 0) !important; }\n\
#sessiongate-banner { background: rgb(255, 0, 0) !important; }\n\
button { visibility: hidden !important; }\n\
p.row { margin: 0 0 40px 0; }\n";

const APP_JS: &str = "document.documentElement.dataset.external = \"ran\";\n";

fn reply(content_type: &str, body: &str) -> Reply {
    Reply::typed(content_type, body.as_bytes())
}

fn route(rec: &Recorded) -> Reply {
    let path = rec.path();
    if let Some(variant) = path.strip_prefix("/csp/")
        && let Some((name, csp)) = VARIANTS.iter().find(|(n, _)| *n == variant)
    {
        let mut r = reply("text/html; charset=utf-8", &variant_page(name));
        if let Some(csp) = csp {
            r = r.header("Content-Security-Policy", csp);
        }
        return r;
    }
    match path {
        "/public/app.css" => reply("text/css", APP_CSS),
        "/public/app.js" => reply("text/javascript", APP_JS),
        "/public/start" => reply(
            "text/html; charset=utf-8",
            "<!DOCTYPE html><html><head><title>start</title></head><body><p>start</p></body></html>",
        ),
        "/ended" => reply(
            "text/html; charset=utf-8",
            "<!DOCTYPE html><html><head><title>ended</title></head><body><p id=\"ended\">Impersonation ended.</p></body></html>",
        ),
        _ => reply("text/plain", "not found").status(404),
    }
}

fn browser_config(backend: &Backend, upstream: SocketAddr) -> Config {
    Config::new()
        // No cookie_domain: the clearing cookie is host-only, like the one the test sets.
        .token(Token::hs256().host_only_cookie())
        .liveness(Liveness::on(backend))
        .site(
            Site::new(SITE_HOST, upstream)
                .public_paths(&["/ended", "/public/*"])
                .after_end_url("/ended"),
        )
}

/// What the page looks like, as one JSON object (for checks and for messages).
const STATE_JS: &str = r#"
var host = document.getElementById("sessiongate-banner");
var out = {
  url: location.href,
  readyState: document.readyState,
  inline: document.body ? (document.body.dataset.inline || null) : null,
  external: document.documentElement.dataset.external || null,
  violations: window.__violations || null,
  banner: !!host
};
if (host) {
  var r = host.getBoundingClientRect();
  var cs = getComputedStyle(host);
  var root = host.shadowRoot;
  var left = root ? root.querySelector(".sg-left") : null;
  var button = root ? root.querySelector("button") : null;
  var h1 = document.getElementById("title");
  var hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  out.ready = host.getAttribute("data-sg-ready");
  out.firstChild = document.body.firstChild === host;
  out.firstElementChild = document.body.firstElementChild === host;
  out.top = r.top; out.height = r.height; out.width = r.width;
  out.viewportWidth = document.documentElement.clientWidth;
  out.display = cs.display; out.visibility = cs.visibility; out.position = cs.position;
  out.zIndex = cs.zIndex; out.background = cs.backgroundColor;
  out.shadow = !!root;
  out.shadowText = root ? root.textContent : null;
  out.left = left ? left.textContent : null;
  out.buttonVisibility = button ? getComputedStyle(button).visibility : null;
  out.buttonText = button ? button.textContent : null;
  out.hitIsBanner = hit === host;
  out.h1Top = h1 ? h1.getBoundingClientRect().top : null;
  out.h1Color = h1 ? getComputedStyle(h1).color : null;
}
return out;
"#;

async fn run_variant(variant: &str) {
    if !browser_available() {
        return;
    }
    let backend = spawn_backend().await;
    let up = spawn_upstream_with(route).await;
    let sc = Sidecar::start(&browser_config(&backend, up.addr)).await;
    let sid = format!("sid-browser-{variant}");
    let tok = token(&imp_claims(&sid));
    let base = format!("http://{SITE_HOST}:{}", sc.addr.port());
    let page_url = format!("{base}/csp/{variant}");
    let d = Driver::start().await;

    // A public page first, so the cookie can be set for this host.
    d.goto(&format!("{base}/public/start")).await;
    d.add_cookie(COOKIE, &tok).await;
    d.goto(&page_url).await;

    let ready = r#"var h = document.getElementById("sessiongate-banner");
        return document.readyState === "complete" && !!h && h.getAttribute("data-sg-ready") === "1"
            && !!h.shadowRoot && !!document.body.dataset.inline;"#;
    d.wait_for(
        &format!("{variant}: the page and the banner script"),
        ready,
        STATE_JS,
    )
    .await;
    let s = d.exec(STATE_JS).await;
    let ctx = format!("{variant}: {s}");

    // The page's own content still works under its policy.
    assert_eq!(s["inline"], "ran", "inline script did not run; {ctx}");
    assert_eq!(
        s["external"], "ran",
        "same-origin script did not run; {ctx}"
    );
    assert_eq!(
        s["h1Color"], "rgb(1, 2, 3)",
        "page stylesheet not applied; {ctx}"
    );

    // The banner: first in body, on top, full width, visible, styled by its own CSS.
    // Where it sits is asserted at the end (`placement`), so that the rest still runs.
    let mut placement = Vec::new();
    assert_eq!(s["ready"], "1", "{ctx}");
    assert_eq!(
        s["firstChild"], true,
        "banner is not body's first child; {ctx}"
    );
    if s["top"].as_f64() != Some(0.0) {
        placement.push(format!("banner top is {} px, not 0", s["top"]));
    }
    if s["width"] != s["viewportWidth"] {
        placement.push(format!(
            "banner is {} px wide in a {} px wide viewport",
            s["width"], s["viewportWidth"]
        ));
    }
    assert!(
        s["height"].as_f64().unwrap_or(0.0) > 0.0,
        "banner has no height; {ctx}"
    );
    assert_ne!(s["display"], "none", "{ctx}");
    assert_eq!(s["visibility"], "visible", "{ctx}");
    assert_eq!(
        s["position"], "sticky",
        "banner stylesheet not applied; {ctx}"
    );
    assert_eq!(s["zIndex"], "2147483647", "{ctx}");
    assert_eq!(
        s["background"], AMBER,
        "the page restyled the banner; {ctx}"
    );
    assert_eq!(s["hitIsBanner"], true, "something covers the banner; {ctx}");
    assert!(
        s["h1Top"].as_f64().unwrap_or(0.0) >= s["height"].as_f64().unwrap_or(f64::MAX) - 0.5,
        "the banner covers the page instead of pushing it down; {ctx}"
    );
    assert_eq!(
        s["buttonVisibility"], "visible",
        "the page hid the End button; {ctx}"
    );
    assert_eq!(s["buttonText"], "End impersonation", "{ctx}");
    let shadow_text = s["shadowText"].as_str().unwrap_or_default();
    assert!(shadow_text.contains(ADMIN_EMAIL), "{ctx}");
    assert!(shadow_text.contains("ana@example.com"), "{ctx}");

    // The countdown moves.
    let first = s["left"].as_str().unwrap_or_default().to_string();
    assert!(is_countdown(&first), "countdown text {first:?}; {ctx}");
    let left_js = r#"var h = document.getElementById("sessiongate-banner");
        return h.shadowRoot.querySelector(".sg-left").textContent;"#;
    let deadline = Instant::now() + Duration::from_secs(15);
    let moved = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now_text = d
            .exec(left_js)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string();
        if now_text != first {
            break now_text;
        }
        assert!(
            Instant::now() < deadline,
            "{variant}: the countdown stayed at {first:?}"
        );
    };
    assert!(is_countdown(&moved), "{variant}: countdown text {moved:?}");

    // Sticky: still at the top after scrolling.
    let scrolled = d
        .exec(
            r#"window.scrollTo(0, 600);
            return [window.scrollY, document.getElementById("sessiongate-banner").getBoundingClientRect().top];"#,
        )
        .await;
    assert!(
        scrolled[0].as_f64().unwrap_or(0.0) > 0.0,
        "{variant}: the page did not scroll: {scrolled}"
    );
    assert_eq!(
        scrolled[1].as_f64(),
        Some(0.0),
        "{variant}: the banner scrolled away: {scrolled}"
    );
    d.exec("window.scrollTo(0, 0); return true;").await;

    // No policy violation for the page's own resources, nor for the banner's.
    let violations = d.exec("return window.__violations;").await;
    let own: Vec<&Value> = violations
        .as_array()
        .expect("violations array")
        .iter()
        .filter(|v| {
            !v["blocked"]
                .as_str()
                .unwrap_or("")
                .ends_with("/favicon.ico")
        })
        .collect();
    assert!(own.is_empty(), "{variant}: CSP violations {own:?}");

    // The screenshot, kept as an artifact.
    let png = d.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG"),
        "{variant}: screenshot is not a PNG"
    );
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    let shot = dir.join(format!("banner-{variant}.png"));
    std::fs::write(&shot, &png).expect("write screenshot");
    eprintln!("{variant}: screenshot at {}", shot.display());

    // End impersonation: the button in the shadow root.
    let ends_before = backend.end_calls().len();
    d.exec(
        "document.getElementById('sessiongate-banner').shadowRoot.querySelector('button').click(); return true;",
    )
    .await;
    d.wait_for_path("/ended").await;
    let ends = backend.end_calls();
    assert_eq!(
        ends.len(),
        ends_before + 1,
        "{variant}: end_url calls {ends:?}"
    );
    let sent = ends
        .last()
        .and_then(|r| r.header("cookie"))
        .unwrap_or_default();
    assert!(
        sent.split(';')
            .any(|c| c.trim() == session_cookie(&tok).as_str()),
        "{variant}: end_url got Cookie {sent:?}"
    );
    assert_eq!(
        d.cookie(COOKIE).await,
        None,
        "{variant}: the browser still holds the session cookie"
    );
    let ended_text = d
        .exec("var e = document.getElementById('ended'); return e ? e.textContent : null;")
        .await;
    assert_eq!(ended_text, "Impersonation ended.", "{variant}");

    // The same token now gets the ended treatment, at once.
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(SITE_HOST, sc.addr)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let r = c
        .get(&page_url)
        .header("cookie", session_cookie(&tok))
        .header("accept", "application/json")
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-dest", "empty")
        .send()
        .await
        .expect("fetch after End");
    assert_eq!(r.status(), 401, "{variant}: fetch after End");
    assert_eq!(
        without_request_id(&r.text().await.expect("body")),
        ENDED_BODY,
        "{variant}"
    );
    // And in the browser: the old cookie brought back lands on after_end_url.
    d.add_cookie(COOKIE, &tok).await;
    d.goto(&page_url).await;
    d.wait_for_path("/ended").await;
    let banner_left = d
        .exec("return !!document.getElementById('sessiongate-banner');")
        .await;
    assert_eq!(banner_left, false, "{variant}: a banner after End");
    let audit = sc
        .wait_for_audit(|e| e["event"] == "impersonation.ended" && e["sid"] == sid.as_str())
        .await;
    assert!(
        audit.is_some(),
        "{variant}: no impersonation.ended audit event"
    );

    assert!(
        placement.is_empty(),
        "{variant}: the banner is not at the top, full width: {placement:?}; {ctx}"
    );
}

/// "in M:SS" or "in H:MM:SS".
fn is_countdown(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("in ") else {
        return false;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[1..].iter().all(|p| p.len() == 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_banner_without_csp() {
    run_variant("no-csp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_banner_under_self_and_unsafe_inline() {
    run_variant("unsafe-inline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_banner_under_nonce_and_strict_dynamic() {
    run_variant("strict-dynamic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_banner_under_default_src_none() {
    run_variant("default-none").await;
}

// ---------------------------------------------------------------------------
// Security regressions in the browser (issue 11, items 1, 3 and 11)
// ---------------------------------------------------------------------------

const WHOAMI_PAGE: &str =
    "<!DOCTYPE html><html><head><title>who</title></head><body><p id=\"who\">who</p></body></html>";

/// A page with an HTML injection before `<body>`: a `<base>` pointing at another origin,
/// under a nonce + `'strict-dynamic'` policy without `base-uri`.
fn base_injection_page(evil: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>injected</title>\
         <base href=\"{evil}/\"></head><body><p id=\"page\">page</p></body></html>"
    )
}

const XHTML_PAGE: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><title>xhtml</title></head>\
<body><p id=\"page\">An XHTML page &amp; its banner.</p></body></html>";

/// `route`, plus the pages these tests need.
fn security_route(evil: String) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |rec: &Recorded| match rec.path() {
        "/whoami" => reply("text/html; charset=utf-8", WHOAMI_PAGE),
        "/injected" => reply("text/html; charset=utf-8", &base_injection_page(&evil)).header(
            "Content-Security-Policy",
            "script-src 'nonce-pAgEn0nce4711' 'strict-dynamic'; object-src 'none'",
        ),
        "/xhtml" => reply("application/xhtml+xml; charset=utf-8", XHTML_PAGE),
        _ => route(rec),
    }
}

const BANNER_READY_JS: &str = r#"var h = document.getElementById("sessiongate-banner");
    return document.readyState === "complete" && !!h && h.getAttribute("data-sg-ready") === "1"
        && !!h.shadowRoot;"#;

/// Item 1: a UTF-8 cookie set by `document.cookie` neither hides the session nor lets the
/// session cookie through to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_a_utf8_cookie_from_document_cookie_hides_nothing() {
    if !browser_available() {
        return;
    }
    let backend = spawn_backend().await;
    let up = spawn_upstream_with(security_route(String::new())).await;
    let sc = Sidecar::start(&browser_config(&backend, up.addr)).await;
    let tok = token(&claims());
    let base = format!("http://{SITE_HOST}:{}", sc.addr.port());
    let d = Driver::start().await;
    d.goto(&format!("{base}/public/start")).await;
    d.add_cookie(COOKIE, &tok).await;
    let jar = d
        .exec("document.cookie = 'pref=caf\u{e9}; path=/'; return document.cookie;")
        .await;
    assert!(
        jar.as_str().unwrap_or_default().contains("pref=caf\u{e9}"),
        "the browser took the cookie: {jar}"
    );
    d.goto(&format!("{base}/whoami")).await;
    d.wait_for(
        "the page",
        "return !!document.getElementById('who');",
        "return document.documentElement.outerHTML;",
    )
    .await;
    let rec = up.find("/whoami");
    assert_eq!(
        rec.header("x-auth-user-id").as_deref(),
        Some("user-42"),
        "the session was hidden by the UTF-8 cookie; upstream got {:?}",
        rec.headers
    );
    let cookies: Vec<&Vec<u8>> = rec
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let sent = cookies[0];
    assert!(
        sent.windows(b"pref=caf\xc3\xa9".len())
            .any(|w| w == b"pref=caf\xc3\xa9"),
        "the UTF-8 cookie passes byte for byte: {:?}",
        String::from_utf8_lossy(sent)
    );
    assert!(
        !String::from_utf8_lossy(sent).contains(COOKIE),
        "the session cookie reached the app: {:?}",
        String::from_utf8_lossy(sent)
    );
}

/// Item 3: an injected `<base href>` cannot redirect the banner's script (which carries the
/// page's nonce), stylesheet or form to another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_an_injected_base_cannot_take_the_banner_elsewhere() {
    if !browser_available() {
        return;
    }
    let evil = spawn_upstream_with(|_| reply("text/javascript", "window.__evil = true;")).await;
    let evil_origin = format!("http://evil.localhost:{}", evil.addr.port());
    let backend = spawn_backend().await;
    let up = spawn_upstream_with(security_route(evil_origin.clone())).await;
    let sc = Sidecar::start(&browser_config(&backend, up.addr)).await;
    let base = format!("http://{SITE_HOST}:{}", sc.addr.port());
    let d = Driver::start().await;
    d.goto(&format!("{base}/public/start")).await;
    d.add_cookie(COOKIE, &token(&imp_claims("sid-base-injection")))
        .await;
    d.goto(&format!("{base}/injected")).await;
    d.wait_for(
        "the banner script from the proxy's own origin",
        BANNER_READY_JS,
        "return [document.documentElement.outerHTML, performance.getEntriesByType('resource').map(function (e) { return e.name; })];",
    )
    .await;
    let s = d
        .exec(
            r#"var h = document.getElementById("sessiongate-banner");
            return {
              evil: !!window.__evil,
              form: h.shadowRoot.querySelector("form").action,
              resources: performance.getEntriesByType("resource").map(function (e) { return e.name; })
            };"#,
        )
        .await;
    assert_eq!(s["evil"], false, "the evil script ran: {s}");
    assert!(
        s["form"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{base}/.sessiongate/end-impersonation")),
        "the End form posts elsewhere: {s}"
    );
    for r in s["resources"].as_array().expect("resources") {
        let r = r.as_str().unwrap_or_default();
        assert!(
            !r.contains("evil.localhost"),
            "{r} loaded from the injected base: {s}"
        );
    }
    assert_eq!(
        evil.count(),
        0,
        "the injected origin was asked: {:?}",
        evil.requests()
    );
}

/// Item 11: an `application/xhtml+xml` page still parses with the banner in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_an_xhtml_page_parses_with_the_banner() {
    if !browser_available() {
        return;
    }
    let backend = spawn_backend().await;
    let up = spawn_upstream_with(security_route(String::new())).await;
    let sc = Sidecar::start(&browser_config(&backend, up.addr)).await;
    let base = format!("http://{SITE_HOST}:{}", sc.addr.port());
    let d = Driver::start().await;
    d.goto(&format!("{base}/public/start")).await;
    d.add_cookie(COOKIE, &token(&imp_claims("sid-xhtml"))).await;
    d.goto(&format!("{base}/xhtml")).await;
    d.wait_for(
        "the XHTML page with its banner",
        BANNER_READY_JS,
        "return document.documentElement.outerHTML;",
    )
    .await;
    let s = d
        .exec(
            r#"var h = document.getElementById("sessiongate-banner");
            return {
              errors: document.getElementsByTagName("parsererror").length,
              ns: h.namespaceURI,
              page: document.getElementById("page").textContent,
              button: h.shadowRoot.querySelector("button").textContent,
              height: h.getBoundingClientRect().height
            };"#,
        )
        .await;
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["ns"], "http://www.w3.org/1999/xhtml", "{s}");
    assert_eq!(s["page"], "An XHTML page & its banner.", "{s}");
    assert_eq!(s["button"], "End impersonation", "{s}");
    assert!(s["height"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
}
