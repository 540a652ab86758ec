//! Every answer the proxy makes itself. A stage that stops a request returns a [`Refusal`]: the
//! status, the error code and message, the outcome label for metrics, extra headers
//! (`Retry-After`, `Set-Cookie`, `Location`), whether the connection must close, and the audit
//! event it leaves. `proxy.rs` renders it in one place (JSON, or a small HTML page when `Accept`
//! asks for HTML) with `Cache-Control: no-store` and never any user data. Answers that are not
//! refusals (the banner's assets, the End endpoint's success) are a [`LocalResponse`].

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::borrow::Cow;

/// The header that carries the request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Text for an HTML page.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Does the client prefer an HTML page over JSON?
pub fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("text/html") || a.contains("application/xhtml+xml")
    })
}

fn header<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Does this request's `Accept` ask for an HTML answer?
pub fn html_requested(req: &RequestHeader) -> bool {
    wants_html(header(req, "accept"))
}

/// A top-level navigation: the kind of request a redirect (to a login page, or back to the
/// console after an ended impersonation) makes sense for.
pub fn is_navigation(req: &RequestHeader) -> bool {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return false;
    }
    match header(req, "sec-fetch-mode") {
        Some(mode) => mode.eq_ignore_ascii_case("navigate"),
        None => wants_html(header(req, "accept")),
    }
}

/// An answer the proxy writes itself.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub content_type: &'static str,
}

impl LocalResponse {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            content_type,
        }
    }

    pub fn json(status: u16, body: impl Into<Bytes>) -> LocalResponse {
        LocalResponse::new(status, "application/json", body)
    }

    pub fn redirect(status: u16, location: String) -> LocalResponse {
        LocalResponse::new(status, "text/plain; charset=utf-8", Bytes::new())
            .header("location", location)
    }

    pub fn header(mut self, name: &'static str, value: String) -> LocalResponse {
        self.headers.push((name, value));
        self
    }

    pub fn to_header(&self) -> pingora::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        h.insert_header("content-type", self.content_type)?;
        h.insert_header("content-length", self.body.len().to_string())?;
        if !self.headers.iter().any(|(k, _)| *k == "cache-control") {
            h.insert_header("cache-control", "no-store")?;
        }
        h.insert_header("x-content-type-options", "nosniff")?;
        for (k, v) in &self.headers {
            h.append_header(*k, v.as_str())?;
        }
        Ok(h)
    }

    /// Writes the whole response; `head_only` (a HEAD request) sends the headers alone.
    pub async fn send(self, session: &mut Session, head_only: bool) -> pingora::Result<()> {
        let header = self.to_header()?;
        session
            .write_response_header(Box::new(header), head_only || self.body.is_empty())
            .await?;
        if !head_only && !self.body.is_empty() {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}

/// The audit event a refusal leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditNote {
    pub event: &'static str,
    pub reason: Option<String>,
    /// The path as the proxy judged it, for path decisions.
    pub canonical_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// `{"error": code, "message": message}`, or an HTML page with the message.
    Error {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// A fixed JSON body, whatever `Accept` says (the seeds' frontends parse it).
    Json(&'static str),
    /// An empty body beside a `Location`.
    Redirect,
}

/// Why the pipeline stopped a request, as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// `sessiongate_requests_total{outcome}`.
    pub outcome: &'static str,
    body: Body,
    headers: Vec<(&'static str, String)>,
    /// The request's framing cannot be trusted: answer, then close the connection.
    pub close: bool,
    /// Boxed: most refusals carry none, and a refusal travels in every stage's `Err`.
    pub audit: Option<Box<AuditNote>>,
}

impl Refusal {
    /// An error answer: `{"error": code, "message": message}` or a small HTML page.
    pub fn error(
        status: u16,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
        outcome: &'static str,
    ) -> Refusal {
        Refusal {
            status,
            outcome,
            body: Body::Error {
                code,
                message: message.into(),
            },
            headers: Vec::new(),
            close: false,
            audit: None,
        }
    }

    /// A fixed JSON body (for answers whose exact shape clients depend on).
    pub fn json(status: u16, body: &'static str, outcome: &'static str) -> Refusal {
        Refusal {
            body: Body::Json(body),
            ..Refusal::error(status, "", "", outcome)
        }
    }

    pub fn redirect(status: u16, location: String, outcome: &'static str) -> Refusal {
        Refusal {
            body: Body::Redirect,
            ..Refusal::error(status, "", "", outcome)
        }
        .header("location", location)
    }

    pub fn header(mut self, name: &'static str, value: String) -> Refusal {
        self.headers.push((name, value));
        self
    }

    /// Answer, then close the connection.
    pub fn closing(mut self) -> Refusal {
        self.close = true;
        self
    }

    pub fn audited(mut self, note: AuditNote) -> Refusal {
        self.audit = Some(Box::new(note));
        self
    }

    /// The error code (`""` for redirects and fixed bodies).
    pub fn code(&self) -> &'static str {
        match self.body {
            Body::Error { code, .. } => code,
            _ => "",
        }
    }

    /// The response, as JSON or (`html`) a small page, carrying the request's id (in
    /// `X-Request-Id`, and in the body: `request_id` in JSON, a line of the page).
    pub fn render(self, html: bool, request_id: &str) -> LocalResponse {
        let resp = match self.body {
            Body::Error { message, .. } if html => {
                let title = http::StatusCode::from_u16(self.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error");
                let status = self.status;
                LocalResponse::new(
                    status,
                    "text/html; charset=utf-8",
                    format!(
                        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\
                         <body><h1>{status} {title}</h1><p>{}</p><p><small>Request id: {}</small></p></body></html>\n",
                        escape_html(&message),
                        escape_html(request_id),
                    ),
                )
            }
            Body::Error { code, message } => LocalResponse::json(
                self.status,
                serde_json::json!({ "error": code, "message": message, "request_id": request_id })
                    .to_string(),
            ),
            Body::Json(body) => {
                // The fixed shape (fields in their order), plus the request id.
                let body = match body.strip_suffix('}') {
                    Some(open) => format!(
                        "{open},\"request_id\":{}}}",
                        serde_json::Value::from(request_id)
                    ),
                    None => body.to_string(),
                };
                LocalResponse::json(self.status, body)
            }
            Body::Redirect => {
                LocalResponse::new(self.status, "text/plain; charset=utf-8", Bytes::new())
            }
        };
        self.headers
            .into_iter()
            .fold(resp, |r, (k, v)| r.header(k, v))
            .header(REQUEST_ID, request_id.to_string())
    }

    // The refusals more than one stage gives, written once.

    pub fn bad_request(message: &'static str) -> Refusal {
        Refusal::error(400, "bad_request", message, "bad_request")
    }

    pub fn misdirected() -> Refusal {
        Refusal::error(
            421,
            "misdirected_request",
            "No site is served at this host.",
            "misdirected",
        )
    }

    /// A request that failed on its way through the proxy (Pingora's error, by status).
    pub fn failure(status: u16) -> Refusal {
        match status {
            502 => Refusal::error(
                502,
                "bad_gateway",
                "The application behind this proxy is not answering.",
                "upstream_error",
            ),
            400 => Refusal::error(
                400,
                "bad_request",
                "The request could not be read.",
                "error",
            ),
            _ => Refusal::error(
                status,
                "internal_error",
                "The proxy could not handle this request.",
                "error",
            ),
        }
    }

    pub fn not_found() -> Refusal {
        Refusal::error(
            404,
            "not_found",
            "No such sessiongate endpoint.",
            "reserved",
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> Refusal {
        Refusal::error(405, "method_not_allowed", "Method not allowed.", "reserved")
            .header("allow", allow.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request("GET", "/", headers)
    }

    #[test]
    fn navigation() {
        assert!(is_navigation(&req(&[("Sec-Fetch-Mode", "navigate")])));
        assert!(!is_navigation(&req(&[
            ("Sec-Fetch-Mode", "cors"),
            ("Accept", "text/html")
        ])));
        assert!(is_navigation(&req(&[("Accept", "text/html,*/*")])));
        assert!(!is_navigation(&req(&[("Accept", "application/json")])));
    }

    #[test]
    fn a_refusal_renders_as_json_or_html_with_no_store() {
        let r =
            Refusal::error(403, "denied", "Not here.", "denied").header("retry-after", "5".into());
        let json = r.clone().render(false, "rid-1");
        assert_eq!(json.content_type, "application/json");
        assert_eq!(
            &json.body[..],
            br#"{"error":"denied","message":"Not here.","request_id":"rid-1"}"#
        );
        assert!(json.headers.contains(&(REQUEST_ID, "rid-1".to_string())));
        let fixed = Refusal::json(401, r#"{"error":"x","code":"Y"}"#, "o").render(true, "rid-2");
        assert_eq!(
            &fixed.body[..],
            br#"{"error":"x","code":"Y","request_id":"rid-2"}"#
        );
        let html = r.render(true, "<rid>");
        assert!(String::from_utf8_lossy(&html.body).contains("&lt;rid&gt;"));
        assert!(html.content_type.starts_with("text/html"));
        let head = html.to_header().expect("head");
        assert_eq!(
            head.headers.get("cache-control").map(|v| v.as_bytes()),
            Some(&b"no-store"[..])
        );
        assert_eq!(
            head.headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        let redirect = Refusal::redirect(302, "/x".into(), "redirected").render(true, "r");
        assert!(redirect.body.is_empty());
        assert_eq!(
            redirect.headers,
            vec![
                ("location", "/x".to_string()),
                (REQUEST_ID, "r".to_string())
            ]
        );
    }
}
