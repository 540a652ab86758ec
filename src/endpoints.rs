//! The proxy's own endpoints: `/.sessiongate/*` on the public listener, and the admin listener
//! (`/healthz`, `/readyz`, `/metrics`), which is never served on the public one.

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
