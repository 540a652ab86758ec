//! The proxy's own endpoints: `/.sessiongate/*` on the public listener, and the admin listener
//! (`/healthz`, `/readyz`, `/metrics`), which is never served on the public one.

use crate::audit::AuditEvent;
use crate::banner::csp;
use crate::liveness::Liveness;
use crate::metrics::METRICS;
use crate::policy::CanonicalPath;
use crate::response::LocalResponse;
use crate::state::{Shared, Snapshot};
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use std::sync::Arc;

/// A request under the reserved prefix, with what the pipeline already knows.
pub struct Reserved<'a> {
    pub shared: &'a Shared,
    pub snap: &'a Snapshot,
    pub site: Option<usize>,
    /// Normalized host.
    pub host: &'a str,
    /// Host as sent (host[:port]): the origin the End form must come from.
    pub authority: &'a str,
    pub path: &'a CanonicalPath,
    pub html: bool,
}

/// Answers a request under the reserved prefix. It never reaches an upstream.
pub async fn reserved(r: Reserved<'_>, session: &mut Session) -> pingora::Result<()> {
    let head = session.req_header().method == http::Method::HEAD;
    let method = session.req_header().method.clone();
    let asset = match r.path.path.as_str() {
        p if p == csp::SCRIPT_PATH => Some((&r.snap.assets.js, "text/javascript; charset=utf-8")),
        p if p == csp::STYLE_PATH => Some((&r.snap.assets.css, "text/css; charset=utf-8")),
        _ => None,
    };
    if let Some((body, content_type)) = asset {
        if !matches!(method.as_str(), "GET" | "HEAD") {
            return method_not_allowed("GET", r.html).send(session, head).await;
        }
        let mut resp = LocalResponse::json(200, String::new()).header(
            "cache-control",
            "public, max-age=31536000, immutable".into(),
        );
        resp.body = body.clone();
        resp.content_type = content_type;
        return resp.send(session, head).await;
    }
    match r.path.path.as_str() {
        p if p == csp::END_PATH => {
            let answer = end_impersonation(&r, session).await;
            answer.send(session, head).await
        }
        _ => {
            LocalResponse::error(404, "not_found", "No such sessiongate endpoint.", r.html)
                .send(session, head)
                .await
        }
    }
}

fn method_not_allowed(allow: &'static str, html: bool) -> LocalResponse {
    LocalResponse::error(405, "method_not_allowed", "Method not allowed.", html)
        .header("allow", allow.into())
}

/// Is `origin` (an `Origin` value, or a `Referer` URL) exactly this site's origin? Sibling
/// subdomains are same-site, so SameSite cookies do not stop them: only the exact host and port
/// pass. The scheme is not known behind a TLS terminator, so http and https both count, with a
/// port absent from `Host` read as that scheme's default.
pub fn same_origin(origin: &str, authority: &str) -> bool {
    let origin = origin.trim();
    let (scheme, rest) = match origin.split_once("://") {
        Some((s, r)) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            (s.to_ascii_lowercase(), r)
        }
        _ => return false,
    };
    let hostport = rest.split(['/', '?', '#']).next().unwrap_or("");
    if hostport.contains('@') {
        return false;
    }
    let default_port = if scheme == "https" { "443" } else { "80" };
    let split = |hp: &str| -> Option<(String, String)> {
        let host = crate::site::normalize_host(hp)?;
        let port = match hp.rsplit_once(':') {
            Some((_, p)) if !hp.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.to_string()
            }
            _ => default_port.to_string(),
        };
        Some((host, port))
    };
    match (split(hostport), split(authority)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The `csrf` field of a form-encoded (or JSON) body.
pub fn csrf_field(body: &[u8], json: bool) -> Option<String> {
    if json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        return v.get("csrf")?.as_str().map(str::to_string);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "csrf").then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

const MAX_FORM: usize = 16 * 1024;

async fn read_body(session: &mut Session) -> Result<Vec<u8>, ()> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.map_err(|_| ())? {
        if body.len() + chunk.len() > MAX_FORM {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `POST /.sessiongate/end-impersonation`: live impersonation cookie, exact-origin Origin (or
/// Referer), the banner's `csrf` field; then the backend's `end_url`, the sid ended here at
/// once, the cookie cleared, audit `impersonation.ended`.
async fn end_impersonation(r: &Reserved<'_>, session: &mut Session) -> LocalResponse {
    let html = r.html;
    let req = session.req_header();
    if req.method != http::Method::POST {
        return method_not_allowed("POST", html);
    }
    let Some(site_idx) = r.site else {
        return LocalResponse::error(
            421,
            "misdirected_request",
            "No site is served at this host.",
            html,
        );
    };
    let Some(site) = r.snap.config.site(site_idx) else {
        return LocalResponse::error(500, "internal_error", "Site not found.", html);
    };
    let h = |n: &str| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let origin = h("origin").or_else(|| h("referer"));
    if !origin
        .as_deref()
        .is_some_and(|o| same_origin(o, r.authority))
    {
        return LocalResponse::error(
            403,
            "bad_origin",
            "This request did not come from this site.",
            html,
        );
    }
    let json_body = h("content-type").is_some_and(|c| c.to_ascii_lowercase().contains("json"));
    let json_client = !html && h("accept").is_some_and(|a| a.to_ascii_lowercase().contains("json"));
    let Some((identity, token)) =
        crate::proxy::authenticate(r.shared, r.snap, site_idx, req, r.host).await
    else {
        return LocalResponse::error(401, "unauthenticated", "No session.", html);
    };
    let Some(imp) = identity.impersonation.clone() else {
        return LocalResponse::error(
            403,
            "not_impersonating",
            "This session is not an impersonation.",
            html,
        );
    };
    let cfg = &r.snap.config;
    let cookie = format!("{}={token}", cfg.token.cookie);
    let clear =
        crate::headers::clear_session_cookie(&cfg.token.cookie, cfg.token.cookie_domain.as_deref());
    match r
        .shared
        .liveness
        .check(
            &cfg.liveness,
            &imp.sid,
            Some(&cookie),
            r.snap.verifier.honoured_until(&identity),
        )
        .await
    {
        Ok(Liveness::Live) => {}
        Ok(Liveness::Ended) => {
            return LocalResponse::json(401, r#"{"error":"impersonation_ended"}"#.into())
                .header("set-cookie", clear);
        }
        Err(_) => {
            return LocalResponse::error(
                503,
                "liveness_unavailable",
                "The impersonation cannot be checked right now.",
                html,
            )
            .header("retry-after", "5".into());
        }
    }
    let Ok(body) = read_body(session).await else {
        return LocalResponse::error(413, "body_too_large", "The form is too large.", html);
    };
    let csrf_ok =
        csrf_field(&body, json_body).is_some_and(|given| r.snap.csrf.verify(&imp.sid, &given));
    if !csrf_ok {
        return LocalResponse::error(403, "bad_csrf", "The form token is missing or wrong.", html);
    }
    if let Err(e) = call_end(r.shared, &cfg.liveness, &imp.sid, &cookie).await {
        tracing::warn!(site = %site.name, error = %e, "ending the impersonation failed at the backend");
        return LocalResponse::error(
            502,
            "end_failed",
            "The platform could not end the impersonation. Try again.",
            html,
        );
    }
    r.shared
        .liveness
        .mark_ended(
            &imp.sid,
            cfg.liveness.ended_ttl,
            Some(r.snap.verifier.honoured_until(&identity)),
            "tenant",
        )
        .await;
    let mut ev = AuditEvent::about("impersonation.ended", &site.name, &identity);
    ev.ended_by = Some("tenant");
    ev.session_duration_s = identity.iat.map(|iat| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(iat)
    });
    ev.peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string());
    r.shared.auditor.emit(ev);
    if json_client {
        LocalResponse::json(200, r#"{"ended":true}"#.into()).header("set-cookie", clear)
    } else {
        LocalResponse::redirect(303, site.after_end_url.clone()).header("set-cookie", clear)
    }
}

/// `POST end_url`: 2xx, or an answer that the session is already ended, is success.
async fn call_end(
    shared: &Shared,
    cfg: &crate::config::LivenessConfig,
    sid: &str,
    cookie: &str,
) -> Result<(), String> {
    let url = crate::liveness::sid_url(&cfg.end_url, sid);
    let mut req = shared
        .liveness
        .http()
        .post(url)
        .timeout(cfg.timeout.max(std::time::Duration::from_secs(2)))
        .header("cookie", cookie)
        .header("accept", "application/json");
    if let Some(b) = &cfg.bearer {
        req = req.bearer_auth(String::from_utf8_lossy(&b.0));
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = crate::liveness::read_limited(resp)
        .await
        .unwrap_or_default();
    if end_succeeded(status, &body) {
        return Ok(());
    }
    Err(format!("backend answered {status}"))
}

/// Did `end_url` end the session? `2xx` and `410 Gone` did; another `4xx` (a `404` included,
/// which is also what a wrong `end_url` answers) only when its body says the session is
/// already ended.
pub fn end_succeeded(status: u16, body: &[u8]) -> bool {
    if (200..300).contains(&status) || status == 410 {
        return true;
    }
    (400..500).contains(&status)
        && String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("ended")
}

pub struct AdminApp {
    pub shared: Arc<Shared>,
}

fn plain(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    let len = r.body().len().to_string();
    if let Ok(v) = http::HeaderValue::from_str(&len) {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    r
}

/// `/sessions/{sid}/revoke` -> the percent-decoded sid.
pub fn revoke_sid(path: &str) -> Option<String> {
    let raw = path.strip_prefix("/sessions/")?.strip_suffix("/revoke")?;
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    let sid = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    (!sid.is_empty() && !sid.chars().any(char::is_control)).then(|| sid.into_owned())
}

/// Compares secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Does an `Authorization` header carry this bearer token?
pub fn bearer_matches(header: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(h) = header else { return false };
    let Some(given) = h
        .strip_prefix(b"Bearer ")
        .or_else(|| h.strip_prefix(b"bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim_ascii(), token)
}

impl AdminApp {
    async fn revoke(&self, sid: &str, auth: Option<&[u8]>) -> Response<Vec<u8>> {
        let snap = self.shared.snapshot();
        let Some(token) = &snap.config.admin.token else {
            return plain(
                403,
                "application/json",
                br#"{"error":"revoke_disabled","message":"set [admin] token_env to enable revocation"}"#.to_vec(),
            );
        };
        if !bearer_matches(auth, &token.0) {
            let mut r = plain(
                401,
                "application/json",
                br#"{"error":"unauthorized"}"#.to_vec(),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        self.shared
            .liveness
            .mark_ended(sid, snap.config.liveness.ended_ttl, None, "admin")
            .await;
        let mut ev = AuditEvent::new("impersonation.ended", "-");
        ev.sid = Some(sid.to_string());
        ev.ended_by = Some("admin");
        self.shared.auditor.emit(ev);
        tracing::info!(sid, "impersonation revoked by admin");
        let body = serde_json::json!({ "revoked": true, "sid": sid }).to_string();
        plain(200, "application/json", body.into_bytes())
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => plain(200, "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => {
                let snap = self.shared.snapshot();
                let mut body = format!("ready\nsites: {}\n", snap.config.sites.len());
                if let Some(f) = &self.shared.fanout {
                    body.push_str(&f.status());
                    body.push('\n');
                }
                plain(200, "text/plain", body.into_bytes())
            }
            ("GET", "/metrics") => plain(200, "text/plain; version=0.0.4", METRICS.render()),
            (m, p) if revoke_sid(p).is_some() => {
                if m != "POST" {
                    return plain(
                        405,
                        "application/json",
                        br#"{"error":"method_not_allowed"}"#.to_vec(),
                    );
                }
                let sid = revoke_sid(p).unwrap_or_default();
                let auth = req
                    .headers
                    .get("authorization")
                    .map(|v| v.as_bytes().to_vec());
                self.revoke(&sid, auth.as_deref()).await
            }
            (_, "/healthz" | "/readyz" | "/metrics") => plain(
                405,
                "application/json",
                br#"{"error":"method_not_allowed"}"#.to_vec(),
            ),
            _ => plain(
                404,
                "application/json",
                br#"{"error":"not_found"}"#.to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_paths() {
        assert_eq!(revoke_sid("/sessions/abc/revoke").as_deref(), Some("abc"));
        assert_eq!(revoke_sid("/sessions/a%2Fb/revoke").as_deref(), Some("a/b"));
        assert_eq!(revoke_sid("/sessions//revoke"), None);
        assert_eq!(revoke_sid("/sessions/a/b/revoke"), None);
        assert_eq!(revoke_sid("/sessions/abc"), None);
    }

    #[test]
    fn origins() {
        assert!(same_origin("https://cafe.example", "cafe.example"));
        assert!(same_origin("http://cafe.example:8080", "cafe.example:8080"));
        assert!(same_origin("https://Cafe.Example/page?x=1", "cafe.example"));
        assert!(!same_origin("https://cafe.example:8443", "cafe.example"));
        assert!(!same_origin("https://other.example", "cafe.example"));
        assert!(!same_origin("https://evil.cafe.example", "cafe.example"));
        assert!(!same_origin(
            "https://acme.shop.example",
            "other.shop.example"
        ));
        assert!(!same_origin("null", "cafe.example"));
        assert!(!same_origin(
            "https://cafe.example@evil.example",
            "cafe.example"
        ));
        assert!(!same_origin("ftp://cafe.example", "cafe.example"));
    }

    #[test]
    fn csrf_fields() {
        assert_eq!(
            csrf_field(b"a=1&csrf=abc%2Dd", false).as_deref(),
            Some("abc-d")
        );
        assert_eq!(csrf_field(br#"{"csrf":"x"}"#, true).as_deref(), Some("x"));
        assert_eq!(csrf_field(b"a=1", false), None);
    }

    #[test]
    fn end_url_answers() {
        assert!(end_succeeded(200, b""));
        assert!(end_succeeded(204, b""));
        assert!(end_succeeded(410, b""));
        assert!(end_succeeded(409, br#"{"code":"IMPERSONATION_ENDED"}"#));
        assert!(end_succeeded(404, b"impersonation already ended"));
        assert!(!end_succeeded(404, b"<h1>Not Found</h1>"));
        assert!(!end_succeeded(404, b""));
        assert!(!end_succeeded(500, b"ended"));
        assert!(!end_succeeded(302, b""));
    }

    #[test]
    fn bearer() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(None, b"s3cret"));
    }
}
