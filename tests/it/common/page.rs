//! Pages and the banner in them: a test page, finding the banner element and its End form,
//! and posting that form.

use super::{HOST, Resp, Sidecar, send};

pub const BANNER_START: &str = "<div id=\"sessiongate-banner\"";
pub const END_PATH: &str = "/.sessiongate/end-impersonation";
/// The body of the answer to an API call with an ended impersonation.
/// A JSON error body without its `"request_id"` member (every error body carries one), for
/// comparing with a fixed shape such as [`ENDED_BODY`].
pub fn without_request_id(body: &str) -> String {
    let Some(at) = body.find(",\"request_id\":\"") else {
        return body.to_string();
    };
    let value = at + ",\"request_id\":\"".len();
    match body[value..].find('"') {
        Some(end) => format!("{}{}", &body[..at], &body[value + end + 1..]),
        None => body.to_string(),
    }
}

pub const ENDED_BODY: &str = r#"{"error":"impersonation_ended","code":"IMPERSONATION_ENDED"}"#;

pub const BODY_TAG: &str = "<body class=\"app\" data-page=\"orders\">";

/// A small page with a `<body …>` start tag that carries attributes.
pub fn page() -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Orders</title></head>\n\
         {BODY_TAG}<h1>Orders</h1><p>caf\u{e9} &amp; cr\u{e8}me</p><script>window.ok = 1;</script></body></html>\n"
    )
}

/// Byte range of the banner element (`<div id="sessiongate-banner" …>…</div>`).
pub fn banner_range(html: &str) -> Option<(usize, usize)> {
    let start = html.find(BANNER_START)?;
    let mut depth = 0usize;
    let mut i = start;
    while i < html.len() {
        let rest = &html[i..];
        if rest.starts_with("<div") {
            depth += 1;
            i += 4;
        } else if rest.starts_with("</div") {
            depth -= 1;
            i += 5;
            if depth == 0 {
                let close = html[i..].find('>')? + i + 1;
                return Some((start, close));
            }
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    None
}

/// The banner markup; panics (with the page) when there is none.
pub fn banner(html: &str) -> String {
    let (s, e) = banner_range(html).unwrap_or_else(|| {
        panic!(
            "no complete banner in the page: {:?}",
            html.chars().take(3000).collect::<String>()
        )
    });
    html[s..e].to_string()
}

/// The page with the banner taken out again.
pub fn without_banner(html: &str) -> String {
    match banner_range(html) {
        Some((s, e)) => format!("{}{}", &html[..s], &html[e..]),
        None => html.to_string(),
    }
}

/// The value of the first `attr="…"` after `marker` in `html`.
pub fn attr_after(html: &str, marker: &str, attr: &str) -> Option<String> {
    let from = html.find(marker)?;
    let tag_end = html[from..].find('>')? + from;
    let tag = &html[from..tag_end];
    let key = format!(" {attr}=\"");
    let at = tag.find(&key)? + key.len();
    let end = tag[at..].find('"')? + at;
    Some(tag[at..end].to_string())
}

/// The banner's csrf form field.
pub fn csrf_of(banner: &str) -> String {
    attr_after(banner, "name=\"csrf\"", "value").unwrap_or_else(|| {
        panic!("the banner has no csrf field with a value: {banner}");
    })
}

/// How a POST to the End endpoint is made.
#[derive(Clone, Default)]
pub struct EndReq<'a> {
    pub cookie: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub body: Option<String>,
    pub json_body: bool,
    /// `application/json` unless given.
    pub accept: Option<&'a str>,
}

impl Sidecar {
    /// The csrf value of the banner this cookie gets on `cafe.nixtech.app/page`.
    pub async fn csrf_for(&self, cookie: &str) -> String {
        let r = self.raw_navigate(HOST, "/page", Some(cookie), &[]).await;
        assert_eq!(r.status, 200, "banner page: {}", r.body_text());
        csrf_of(&banner(&r.body_text()))
    }

    /// POSTs to `cafe.nixtech.app`'s End endpoint (a form unless `json_body`).
    pub async fn post_end(&self, e: EndReq<'_>) -> Resp {
        let c = self.client();
        let mut req = c.post(self.url(HOST, END_PATH));
        if let Some(v) = e.cookie {
            req = req.header("cookie", v);
        }
        if let Some(v) = e.origin {
            req = req.header("origin", v);
        }
        if let Some(v) = e.referer {
            req = req.header("referer", v);
        }
        req = req.header("accept", e.accept.unwrap_or("application/json"));
        req = req.header(
            "content-type",
            if e.json_body {
                "application/json"
            } else {
                "application/x-www-form-urlencoded"
            },
        );
        send(req.body(e.body.unwrap_or_default())).await
    }

    /// The End form as the banner posts it: this site's origin, the session cookie and the
    /// csrf field.
    pub async fn end_with_form(&self, cookie: &str, csrf: &str, accept: &str) -> Resp {
        let origin = self.origin(HOST);
        self.post_end(EndReq {
            cookie: Some(cookie),
            origin: Some(&origin),
            body: Some(format!("csrf={csrf}")),
            accept: Some(accept),
            ..Default::default()
        })
        .await
    }
}
