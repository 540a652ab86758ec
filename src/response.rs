//! Every response the proxy makes itself goes through this builder: status, a short reason,
//! JSON or a small HTML page by `Accept`, `Cache-Control: no-store`, never user data.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub content_type: &'static str,
}

/// Does the client prefer an HTML page over JSON?
pub fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("text/html") || a.contains("application/xhtml+xml")
    })
}

impl LocalResponse {
    /// An error answer: `{"error": code}` or a one-line HTML page.
    pub fn error(status: u16, code: &str, message: &str, html: bool) -> LocalResponse {
        if html {
            let title = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            let body = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\
                 <body><h1>{status} {title}</h1><p>{message}</p></body></html>\n"
            );
            LocalResponse {
                status,
                headers: Vec::new(),
                body: Bytes::from(body),
                content_type: "text/html; charset=utf-8",
            }
        } else {
            let body = serde_json::json!({ "error": code, "message": message }).to_string();
            LocalResponse::json(status, body)
        }
    }

    pub fn json(status: u16, body: String) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Bytes::from(body),
            content_type: "application/json",
        }
    }

    pub fn redirect(status: u16, location: String) -> LocalResponse {
        LocalResponse {
            status,
            headers: vec![("location", location)],
            body: Bytes::new(),
            content_type: "text/plain; charset=utf-8",
        }
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
