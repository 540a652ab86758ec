//! The client side through `reqwest`: one response type, requests as a browser navigation or
//! as an API call, and the checks every proxy-made or impersonated response must pass.

use std::time::Duration;

use serde_json::Value;

use super::Headers;

/// A top-level navigation, as a browser sends it (no `Accept-Encoding`).
pub const NAVIGATION: [(&str, &str); 3] = [
    (
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Dest", "document"),
];

/// What the client got back from the proxy.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub version: reqwest::Version,
    pub body: String,
}

impl Headers for Resp {
    fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.expect("request to the proxy failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let version = r.version();
    let body = r.text().await.expect("response body");
    Resp {
        status,
        headers,
        version,
        body,
    }
}

/// A client for loopback addresses (no proxies from the environment, no redirects).
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `req` as a browser navigation with the session `cookie`.
pub fn navigate(req: reqwest::RequestBuilder, cookie: &str) -> reqwest::RequestBuilder {
    NAVIGATION
        .iter()
        .fold(req, |r, (k, v)| r.header(*k, *v))
        .header("cookie", cookie)
}

/// `req` as a `fetch()`-style API call with the session `cookie`: not a navigation.
pub fn api_call(req: reqwest::RequestBuilder, cookie: &str) -> reqwest::RequestBuilder {
    req.header("cookie", cookie)
        .header("accept", "application/json")
        .header("sec-fetch-mode", "cors")
}

/// `Cache-Control` carries `no-store`.
pub fn assert_no_store(what: &str, r: &impl Headers) {
    let cc = r
        .header("cache-control")
        .unwrap_or_else(|| panic!("{what}: no Cache-Control header"));
    assert!(
        cc.to_ascii_lowercase().contains("no-store"),
        "{what}: Cache-Control is {cc:?}, expected no-store"
    );
}

/// The comma-separated tokens of every `name` header, trimmed and lower-cased.
pub fn header_tokens(r: &impl Headers, name: &str) -> Vec<String> {
    r.header_all(name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// What every response to an impersonating request carries: `Cache-Control: private,
/// no-store` (and nothing that lets a cache keep it) and a `Vary` that names `Cookie`.
pub fn assert_private(what: &str, r: &impl Headers) {
    let cc = header_tokens(r, "cache-control");
    assert!(
        cc.iter().any(|d| d == "private") && cc.iter().any(|d| d == "no-store"),
        "{what}: Cache-Control directives {cc:?}, expected private and no-store"
    );
    assert!(
        !cc.iter()
            .any(|d| d == "public" || d.starts_with("max-age") || d.starts_with("s-maxage")),
        "{what}: Cache-Control still allows caching: {cc:?}"
    );
    let vary = header_tokens(r, "vary");
    assert!(
        vary.iter().any(|v| v == "cookie" || v == "*"),
        "{what}: Vary is {vary:?}, expected it to contain Cookie"
    );
}
