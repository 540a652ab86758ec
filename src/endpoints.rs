//! The proxy's own endpoints: `/.sessiongate/*` on the public listener, and the admin listener
//! (`/healthz`, `/readyz`, `/metrics`), which is never served on the public one.

use crate::audit::AuditEvent;
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

/// Answers a request under the reserved prefix.
pub async fn reserved(
    session: &mut Session,
    _snap: &Snapshot,
    _site: Option<usize>,
    _path: &CanonicalPath,
    html: bool,
) -> pingora::Result<()> {
    let head = session.req_header().method == http::Method::HEAD;
    LocalResponse::error(404, "not_found", "No such sessiongate endpoint.", html)
        .send(session, head)
        .await
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
            .mark_ended(sid, snap.config.liveness.ended_ttl)
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
                let body = format!("ready\nsites: {}\n", snap.config.sites.len());
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
    fn bearer() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(None, b"s3cret"));
    }
}
