//! The proxy's own endpoints: `/.sessiongate/*` on the public listener (step 1: they never
//! reach an upstream), and the admin listener (`/healthz`, `/readyz`, `/metrics`, revoke),
//! which is never served on the public one.

use crate::audit::Scope;
use crate::banner::csp;
use crate::config::SiteConfig;
use crate::liveness::{self, Liveness};
use crate::metrics::METRICS;
use crate::policy::CanonicalPath;
use crate::response::{LocalResponse, Refusal};
use crate::revocation::{Kind, Revocation};
use crate::site::RequestHost;
use crate::state::{Shared, Snapshot};
use crate::token;
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
    pub site: Option<&'a SiteConfig>,
    pub host: &'a RequestHost,
    pub path: &'a CanonicalPath,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
}

impl Reserved<'_> {
    /// The auditor for events this request causes.
    fn scope(&self) -> Scope<'_> {
        Scope {
            auditor: &self.shared.auditor,
            request_id: self.request_id,
            trace_id: self.trace_id,
        }
    }
}

/// Answers a request under the reserved prefix.
pub async fn reserved(r: Reserved<'_>, session: &mut Session) -> Result<LocalResponse, Refusal> {
    let method = session.req_header().method.clone();
    let asset = match r.path.path.as_str() {
        p if p == csp::SCRIPT_PATH => Some((&r.snap.assets.js, "text/javascript; charset=utf-8")),
        p if p == csp::STYLE_PATH => Some((&r.snap.assets.css, "text/css; charset=utf-8")),
        _ => None,
    };
    if let Some((body, content_type)) = asset {
        if !matches!(method.as_str(), "GET" | "HEAD") {
            return Err(Refusal::method_not_allowed("GET"));
        }
        return Ok(LocalResponse::new(200, content_type, body.clone()).header(
            "cache-control",
            "public, max-age=31536000, immutable".into(),
        ));
    }
    match r.path.path.as_str() {
        p if p == csp::END_PATH => end_impersonation(&r, session).await,
        BACKCHANNEL_LOGOUT_PATH => backchannel_logout(&r, session).await,
        JWKS_PATH => {
            let Some(assertions) = &r.snap.assertions else {
                return Err(Refusal::not_found());
            };
            if !matches!(method.as_str(), "GET" | "HEAD") {
                return Err(Refusal::method_not_allowed("GET"));
            }
            Ok(LocalResponse::json(200, assertions.jwks())
                .header("cache-control", JWKS_CACHE.into()))
        }
        _ => Err(Refusal::not_found()),
    }
}

pub const BACKCHANNEL_LOGOUT_PATH: &str = "/.sessiongate/backchannel-logout";
/// The assertion keys, on every site.
pub const JWKS_PATH: &str = "/.sessiongate/jwks.json";
/// Apps cache the keys this long; a rotation keeps the previous key published longer.
const JWKS_CACHE: &str = "public, max-age=300";

/// `POST /.sessiongate/backchannel-logout` (OIDC Back-Channel Logout 1.0): the form field
/// `logout_token`, verified, becomes a `sid` revocation (or, naming only `sub`, a "sign out
/// everywhere" of that user). Served on any host: the provider calls whichever URL it was given.
async fn backchannel_logout(
    r: &Reserved<'_>,
    session: &mut Session,
) -> Result<LocalResponse, Refusal> {
    let Some(verifier) = &r.snap.logout else {
        return Err(Refusal::not_found());
    };
    if session.req_header().method != http::Method::POST {
        return Err(Refusal::method_not_allowed("POST"));
    }
    let invalid = |message: &str| {
        Err(Refusal::error(
            400,
            "invalid_logout_token",
            message.to_string(),
            "reserved",
        ))
    };
    let Ok(body) = read_body(session).await else {
        return invalid("the body is missing, unreadable or larger than 16 KiB");
    };
    let tokens: Vec<String> = form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
        .collect();
    let token = match tokens.as_slice() {
        [one] => one,
        [] => return invalid("the form has no logout_token field"),
        _ => return invalid("the form has several logout_token fields"),
    };
    let logout = match verifier.verify(token).await {
        Ok(l) => l,
        Err(why) => {
            tracing::info!(reason = %why, "back-channel logout token refused");
            return invalid(&why);
        }
    };
    if !r
        .shared
        .revocations
        .first_use_of_logout(&logout.jti, logout.replayable_until)
    {
        return invalid("this logout token was already used (jti)");
    }
    let now = token::now();
    let retention = r.snap.config.token.revocation_retention;
    let revocation = match (logout.sid, logout.sub) {
        (Some(sid), _) => Revocation::new(Kind::Sid, sid, None, now, retention),
        (None, Some(sub)) => Revocation::new(Kind::Sub, sub, Some(now), now, retention),
        (None, None) => return invalid("the token names neither sid nor sub"),
    };
    record_revocation(r.shared, revocation, "backchannel_logout", Some(r.scope()));
    Ok(LocalResponse::json(200, r#"{"revoked":true}"#))
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
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
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
async fn end_impersonation(
    r: &Reserved<'_>,
    session: &mut Session,
) -> Result<LocalResponse, Refusal> {
    let req = session.req_header();
    if req.method != http::Method::POST {
        return Err(Refusal::method_not_allowed("POST"));
    }
    let site = r.site.ok_or_else(Refusal::misdirected)?;
    let h = |n: &str| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let origin = h("origin").or_else(|| h("referer"));
    if !origin
        .as_deref()
        .is_some_and(|o| same_origin(o, &r.host.authority))
    {
        return Err(Refusal::error(
            403,
            "bad_origin",
            "This request did not come from this site.",
            "reserved",
        ));
    }
    let json_body = h("content-type").is_some_and(|c| c.to_ascii_lowercase().contains("json"));
    let json_client = !crate::response::html_requested(req)
        && h("accept").is_some_and(|a| a.to_ascii_lowercase().contains("json"));
    let Some(sess) = token::authenticate(
        &r.snap.verifier,
        &r.shared.revocations,
        site,
        req,
        &r.host.host,
        &r.scope(),
    )
    .await?
    else {
        return Err(Refusal::error(
            401,
            "unauthenticated",
            "No session.",
            "reserved",
        ));
    };
    let Some(imp) = sess.identity.impersonation.clone() else {
        return Err(Refusal::error(
            403,
            "not_impersonating",
            "This session is not an impersonation.",
            "reserved",
        ));
    };
    let cfg = &r.snap.config;
    let until = r.snap.verifier.honoured_until(&sess.identity);
    let cookie = format!("{}={}", cfg.token.cookie, sess.token);
    match r
        .shared
        .liveness
        .check(&cfg.liveness, &imp.sid, Some(&cookie), until)
        .await
    {
        Ok(Liveness::Live) => {}
        Ok(Liveness::Ended) => return Err(liveness::ended_refusal(req, site, &cfg.token)),
        Err(_) => return Err(liveness::unavailable()),
    }
    let Ok(body) = read_body(session).await else {
        return Err(Refusal::error(
            413,
            "body_too_large",
            "The form is too large.",
            "reserved",
        ));
    };
    let csrf_ok =
        csrf_field(&body, json_body).is_some_and(|given| r.snap.csrf.verify(&imp.sid, &given));
    if !csrf_ok {
        return Err(Refusal::error(
            403,
            "bad_csrf",
            "The form token is missing or wrong.",
            "reserved",
        ));
    }
    if let Err(e) = r
        .shared
        .liveness
        .end(&cfg.liveness, &imp.sid, &cookie)
        .await
    {
        tracing::warn!(site = %site.name, error = %e, "ending the impersonation failed at the backend");
        return Err(Refusal::error(
            502,
            "end_failed",
            "The platform could not end the impersonation. Try again.",
            "reserved",
        ));
    }
    r.shared
        .liveness
        .mark_ended(&imp.sid, cfg.liveness.ended_ttl, Some(until), "tenant")
        .await;
    let mut ev = sess.identity.audit_event("impersonation.ended", &site.name);
    ev.ended_by = Some("tenant");
    ev.session_duration_s = sess
        .identity
        .iat
        .map(|iat| token::now().saturating_sub(iat));
    ev.peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string());
    r.scope().emit(ev);
    let clear = token::clearing_cookie(&cfg.token);
    Ok(if json_client {
        LocalResponse::json(200, r#"{"ended":true}"#).header("set-cookie", clear)
    } else {
        LocalResponse::redirect(303, site.after_end_url.clone()).header("set-cookie", clear)
    })
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

/// Does an `Authorization` header carry this bearer token?
pub fn bearer_matches(header: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(h) = header else { return false };
    let Some(given) = h
        .strip_prefix(b"Bearer ")
        .or_else(|| h.strip_prefix(b"bearer "))
    else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(given.trim_ascii(), token).is_ok()
}

/// The largest `POST /revocations` body read.
const MAX_ADMIN_BODY: usize = 64 * 1024;

fn json_error(status: u16, error: &str, message: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    plain(status, "application/json", body.into_bytes())
}

/// Records a session revocation made on this replica (admin or back-channel logout): applied at
/// once, sent to the other replicas, audited as `session.revoked` (with the request's ids when a
/// public request made it).
pub fn record_revocation(shared: &Shared, r: Revocation, by: &str, scope: Option<Scope<'_>>) {
    let mut ev = crate::audit::AuditEvent::new("session.revoked", "-");
    ev.kind = Some(r.kind.label());
    ev.value = Some(r.value.clone());
    ev.before = r.before;
    ev.reason = Some(by.to_string());
    tracing::info!(kind = r.kind.label(), by, "session revoked");
    shared.revocations.revoke(r);
    match scope {
        Some(scope) => scope.emit(ev),
        None => shared.auditor.emit(ev),
    }
}

impl AdminApp {
    /// The revoke endpoints' bearer check: `403` when no `admin.token_env` is configured, `401`
    /// for a missing or wrong bearer.
    /// `None` when the caller may revoke; else the answer to send.
    fn unauthorized(&self, snap: &Snapshot, auth: Option<&[u8]>) -> Option<Response<Vec<u8>>> {
        let Some(token) = &snap.config.admin.token else {
            return Some(plain(
                403,
                "application/json",
                br#"{"error":"revoke_disabled","message":"set [admin] token_env to enable revocation"}"#.to_vec(),
            ));
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
            return Some(r);
        }
        None
    }

    async fn revoke(&self, sid: &str, auth: Option<&[u8]>) -> Response<Vec<u8>> {
        let snap = self.shared.snapshot();
        if let Some(r) = self.unauthorized(&snap, auth) {
            return r;
        }
        self.shared
            .liveness
            .mark_ended(sid, snap.config.revocation_floor(), None, "admin")
            .await;
        let mut ev = crate::audit::AuditEvent::new("impersonation.ended", "-");
        ev.sid = Some(sid.to_string());
        ev.ended_by = Some("admin");
        self.shared.auditor.emit(ev);
        tracing::info!(sid, "impersonation revoked by admin");
        let body = serde_json::json!({ "revoked": true, "sid": sid }).to_string();
        plain(200, "application/json", body.into_bytes())
    }

    /// Ready once the config is loaded and, with Redis, the stored revocations have been
    /// loaded (a replica that cannot know what was revoked takes no traffic). A Redis outage
    /// after that keeps it ready: ends fall back to `cache_ttl`, and it says so.
    fn readyz(&self) -> Response<Vec<u8>> {
        let snap = self.shared.snapshot();
        let mut body = format!("sites: {}\n", snap.config.sites.len());
        let mut ready = true;
        if let Some(f) = &self.shared.fanout {
            body.push_str(&f.status());
            body.push('\n');
            if !self.shared.revocations.loaded() {
                ready = false;
                body.push_str("revocations: not loaded from Redis yet\n");
            }
        }
        if ready {
            plain(200, "text/plain", format!("ready\n{body}").into_bytes())
        } else {
            plain(503, "text/plain", format!("not ready\n{body}").into_bytes())
        }
    }

    /// `POST /revocations`: `{"jti"}`, `{"sid"}` or `{"sub","before"}` (SPEC.md "Revocation").
    async fn revoke_sessions(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let snap = self.shared.snapshot();
        let auth = session
            .req_header()
            .headers
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        if let Some(r) = self.unauthorized(&snap, auth.as_deref()) {
            return r;
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ADMIN_BODY => {
                    return json_error(413, "body_too_large", "the body is larger than 64 KiB");
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(_) => return json_error(400, "bad_request", "the body could not be read"),
            }
        }
        let retention = snap.config.token.revocation_retention;
        match Revocation::from_request(&body, token::now(), retention) {
            Ok(r) => {
                record_revocation(&self.shared, r, "admin", None);
                plain(200, "application/json", br#"{"revoked":true}"#.to_vec())
            }
            Err(problem) => json_error(400, "bad_request", &problem),
        }
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
            ("GET", "/readyz") => self.readyz(),
            ("GET", "/metrics") => plain(200, "text/plain; version=0.0.4", METRICS.render()),
            ("GET" | "HEAD", "/jwks.json") => match &self.shared.snapshot().assertions {
                Some(a) => {
                    let mut r = plain(200, "application/json", a.jwks().to_vec());
                    r.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static(JWKS_CACHE),
                    );
                    r
                }
                None => plain(
                    404,
                    "application/json",
                    br#"{"error":"not_found"}"#.to_vec(),
                ),
            },
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
            ("POST", "/revocations") => self.revoke_sessions(session).await,
            (_, "/healthz" | "/readyz" | "/metrics" | "/revocations" | "/jwks.json") => plain(
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
    fn bearer() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(None, b"s3cret"));
    }
}
