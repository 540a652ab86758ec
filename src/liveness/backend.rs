//! The platform backend, as the liveness contract describes it: `GET url` (is this sid live?)
//! and `POST end_url` (end it), with bounded answers read per the contract.

use super::Liveness;
use crate::config::LivenessConfig;
use crate::metrics::METRICS;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::time::{Duration, Instant};

/// Backend answers larger than this are a contract violation.
const MAX_BODY: usize = 64 * 1024;

/// Why the backend gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend timed out")]
    Timeout,
    #[error("backend answered {0}")]
    Status(u16),
    #[error("backend connection failed")]
    Transport,
    #[error("backend answer does not follow the contract: {0}")]
    Contract(&'static str),
}

impl BackendError {
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Timeout => "timeout",
            BackendError::Status(_) => "status",
            BackendError::Transport => "transport",
            BackendError::Contract(_) => "contract",
        }
    }
}

/// Path-segment encoding: everything but unreserved characters, so a sid can never add a path
/// segment, a query or a fragment to the backend URL.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn sid_url(template: &str, sid: &str) -> String {
    template.replace("{sid}", &utf8_percent_encode(sid, SEGMENT).to_string())
}

/// Reads the backend's answer per the contract.
pub fn classify(status: u16, body: &[u8]) -> Result<Liveness, BackendError> {
    match status {
        200..=299 => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Liveness::Live);
            }
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|_| BackendError::Contract("2xx body is not JSON"))?;
            let obj = v
                .as_object()
                .ok_or(BackendError::Contract("2xx body is not a JSON object"))?;
            match obj.get("active") {
                None | Some(serde_json::Value::Bool(true)) => Ok(Liveness::Live),
                Some(serde_json::Value::Bool(false)) => Ok(Liveness::Ended),
                Some(_) => Err(BackendError::Contract("\"active\" is not a boolean")),
            }
        }
        401 | 403 | 404 | 410 => Ok(Liveness::Ended),
        s => Err(BackendError::Status(s)),
    }
}

/// Asks the backend about one sid (the lookup behind a cache miss), timed and counted.
pub async fn fetch(
    http: &reqwest::Client,
    cfg: &LivenessConfig,
    sid: &str,
    cookie: Option<&str>,
) -> Result<Liveness, BackendError> {
    let started = Instant::now();
    let result = ask(http, cfg, sid, cookie).await;
    METRICS
        .liveness_backend_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        METRICS
            .liveness_backend_errors
            .with_label_values(&[e.label()])
            .inc();
        tracing::warn!(error = %e, "liveness backend error");
    }
    result
}

async fn ask(
    http: &reqwest::Client,
    cfg: &LivenessConfig,
    sid: &str,
    cookie: Option<&str>,
) -> Result<Liveness, BackendError> {
    let mut req = http
        .get(sid_url(&cfg.url, sid))
        .timeout(cfg.timeout)
        .header("accept", "application/json");
    if let Some(b) = &cfg.bearer {
        req = req.bearer_auth(String::from_utf8_lossy(&b.0));
    }
    if cfg.forward_cookie
        && let Some(c) = cookie
    {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let body = read_limited(resp).await?;
    classify(status, &body)
}

/// `POST end_url`: ends the session at the backend. `Err` says why not.
pub async fn end(
    http: &reqwest::Client,
    cfg: &LivenessConfig,
    sid: &str,
    cookie: &str,
) -> Result<(), String> {
    let mut req = http
        .post(sid_url(&cfg.end_url, sid))
        .timeout(cfg.timeout.max(Duration::from_secs(2)))
        .header("cookie", cookie)
        .header("accept", "application/json");
    if let Some(b) = &cfg.bearer {
        req = req.bearer_auth(String::from_utf8_lossy(&b.0));
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = read_limited(resp).await.unwrap_or_default();
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

fn transport(e: reqwest::Error) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout
    } else {
        BackendError::Transport
    }
}

pub async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, BackendError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BackendError::Contract("body larger than 64 KiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_is_one_encoded_segment() {
        assert_eq!(
            sid_url(
                "http://b/internal/impersonations/{sid}",
                "../../admin?x=1#f"
            ),
            "http://b/internal/impersonations/..%2F..%2Fadmin%3Fx%3D1%23f"
        );
        assert_eq!(
            sid_url("http://b/{sid}/x", "abc-1_2.3~"),
            "http://b/abc-1_2.3~/x"
        );
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
    fn contract() {
        assert_eq!(classify(200, b""), Ok(Liveness::Live));
        assert_eq!(classify(204, b""), Ok(Liveness::Live));
        assert_eq!(classify(200, br#"{"active":true}"#), Ok(Liveness::Live));
        assert_eq!(classify(200, br#"{"sessionId":"s"}"#), Ok(Liveness::Live));
        assert_eq!(classify(200, br#"{"active":false}"#), Ok(Liveness::Ended));
        for s in [401, 403, 404, 410] {
            assert_eq!(classify(s, b"gone"), Ok(Liveness::Ended));
        }
        assert_eq!(classify(500, b""), Err(BackendError::Status(500)));
        assert_eq!(classify(302, b""), Err(BackendError::Status(302)));
        assert!(classify(200, b"<html>").is_err());
        assert!(classify(200, br#"{"active":"no"}"#).is_err());
        assert!(classify(200, b"[1]").is_err());
    }
}
