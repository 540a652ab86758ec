//! The banner stage: whether an impersonated response gets the banner, the header fixes that go
//! with a changed body, the CSRF token of its End form, and the assets. The streaming itself
//! is `rewrite` (decoding in `encoding`, the markup in `markup`, policy edits in `csp`).

pub mod csp;
pub mod encoding;
pub mod markup;
mod nonce;
pub mod rewrite;

use nonce::random_bytes;
pub use nonce::{NoRandomness, Nonce, nonce};

use crate::metrics::METRICS;
use crate::token::Identity;
use aws_lc_rs::hmac;
use base64::Engine;
use encoding::{Coding, OutCoding};
use markup::BannerInfo;
use pingora::http::{RequestHeader, ResponseHeader};
use rewrite::{BannerStream, Splice};

/// Why an impersonated response gets no banner (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    SiteOff,
    Head,
    Status,
    NotHtml,
    Attachment,
    NotDocument,
    UnknownEncoding,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::SiteOff => "site_off",
            Skip::Head => "head",
            Skip::Status => "status",
            Skip::NotHtml => "not_html",
            Skip::Attachment => "attachment",
            Skip::NotDocument => "not_document",
            Skip::UnknownEncoding => "unknown_encoding",
        }
    }
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Is this request for a top-level document (as far as the request tells)?
pub fn wants_document(req: &RequestHeader) -> Result<(), Skip> {
    if req.method == http::Method::HEAD {
        return Err(Skip::Head);
    }
    match header(&req.headers, "sec-fetch-dest") {
        None => Ok(()),
        Some(d) if d.trim().eq_ignore_ascii_case("document") => Ok(()),
        Some(_) => Err(Skip::NotDocument),
    }
}

/// Does this response get the banner? `Ok` carries the upstream coding to decode.
pub fn decide(
    req: &RequestHeader,
    resp: &ResponseHeader,
    site_banner: bool,
) -> Result<Coding, Skip> {
    if !site_banner {
        return Err(Skip::SiteOff);
    }
    wants_document(req)?;
    let status = resp.status.as_u16();
    if status < 200 || matches!(status, 204 | 206 | 304) {
        return Err(Skip::Status);
    }
    let ct = header(&resp.headers, "content-type")
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if ct != "text/html" && ct != "application/xhtml+xml" {
        return Err(Skip::NotHtml);
    }
    if header(&resp.headers, "content-disposition").is_some_and(|d| {
        d.trim_start()
            .to_ascii_lowercase()
            .starts_with("attachment")
    }) {
        return Err(Skip::Attachment);
    }
    let encodings: Vec<_> = resp.headers.get_all("content-encoding").iter().collect();
    let coding = match encodings.as_slice() {
        [] => Some(Coding::Identity),
        [one] => Coding::parse(one.to_str().ok()),
        _ => None,
    };
    coding.ok_or(Skip::UnknownEncoding)
}

/// What the banner of one response needs besides the request and response heads.
pub struct Page<'a> {
    /// The site's `banner` switch.
    pub enabled: bool,
    pub identity: &'a Identity,
    /// The request's host as sent (host[:port]): the origin of the banner's own URLs.
    pub authority: &'a str,
    /// The scheme the client used, when the proxy knows it for certain (`https`).
    pub scheme: &'a str,
    pub csrf: &'a CsrfKey,
    pub assets_version: &'a str,
}

/// The banner stage, for an impersonated response: decides whether it gets the banner (a
/// skip is counted by reason), fixes the headers that go with a changed body and sets up the
/// streaming splice.
pub fn start(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    page: Page<'_>,
) -> pingora::Result<Option<BannerStream>> {
    let Some(imp) = &page.identity.impersonation else {
        return Ok(None);
    };
    let coding = match decide(req, resp, page.enabled) {
        Ok(c) => c,
        Err(skip) => {
            METRICS
                .banner_skipped
                .with_label_values(&[skip.label()])
                .inc();
            return Ok(None);
        }
    };
    let out = encoding::choose(header(&req.headers, "accept-encoding"));
    let nonce = Nonce::default();
    let chunked = req.version == http::Version::HTTP_11;
    let script_nonce = fix_response_headers(resp, out, page.authority, &nonce, chunked)?;
    let id = page.identity;
    let info = BannerInfo {
        target: id.email.clone().unwrap_or_else(|| id.user_id.clone()),
        tenant: id.tenant_id.clone(),
        admin_email: imp.admin_email.clone(),
        reason: imp.reason.clone(),
        expires: id.exp,
        csrf: page.csrf.token(&imp.sid),
        // `https://` when the client's scheme is known to be it; otherwise a network-path
        // reference, which keeps the page's scheme (behind a terminator not listed as trusted,
        // an `http://` URL would be mixed content on an https page).
        origin: if page.scheme == "https" {
            format!("https://{}", page.authority)
        } else {
            format!("//{}", page.authority)
        },
    };
    let version = page.assets_version.to_string();
    let splice = Splice {
        render: Box::new(move |nonce| markup::banner_html(&info, nonce, &version)),
        authority: page.authority.to_string(),
        nonce,
        script_nonce,
    };
    let stream = BannerStream::new(coding, out, splice).map_err(|e| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            format!("banner setup: {e}"),
        )
    })?;
    Ok(Some(stream))
}

/// For an impersonated document request (`impersonating` on a site with the banner): no
/// conditional or range request (a 304 or 206 would show a page without the banner), and
/// identity from the upstream where it agrees.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    impersonating: bool,
) -> pingora::Result<()> {
    if !impersonating || wants_document(req).is_err() {
        return Ok(());
    }
    for h in [
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
    ] {
        req.remove_header(h);
    }
    req.insert_header("accept-encoding", "identity")?;
    Ok(())
}

/// Header fixes for a body the proxy rewrites. Returns whether the page's CSP headers need the
/// banner script to carry `nonce`.
pub fn fix_response_headers(
    resp: &mut ResponseHeader,
    out: OutCoding,
    authority: &str,
    nonce: &Nonce,
    chunked: bool,
) -> pingora::Result<bool> {
    resp.remove_header("content-length");
    resp.remove_header("accept-ranges");
    resp.remove_header("content-md5");
    resp.remove_header("digest");
    resp.remove_header("content-encoding");
    if let Some(enc) = out.header() {
        resp.insert_header("content-encoding", enc)?;
    }
    if chunked {
        // Without a length, HTTP/1.1 needs chunked framing or the response is close-delimited.
        resp.insert_header("transfer-encoding", "chunked")?;
    }
    if let Some(etag) = header(&resp.headers, "etag").map(str::to_string)
        && !etag.starts_with("W/")
    {
        resp.insert_header("etag", format!("W/{etag}"))?;
    }
    let vary_has_ae = resp.headers.get_all("vary").iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
    });
    if !vary_has_ae {
        resp.append_header("vary", "Accept-Encoding")?;
    }
    let mut script_nonce = false;
    for name in [
        "content-security-policy",
        "content-security-policy-report-only",
    ] {
        let values: Vec<String> = resp
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if values.is_empty() {
            continue;
        }
        resp.remove_header(name);
        for v in values {
            let edited = csp::edit(&v, authority, nonce.get());
            // Report-only policies never block: their nonce needs do not count.
            script_nonce |= edited.script_nonce && name == "content-security-policy";
            resp.append_header(name, edited.policy)?;
        }
    }
    Ok(script_nonce)
}

/// The End form's CSRF token: HMAC-SHA256 of the sid, bound to the session.
pub struct CsrfKey(hmac::Key);

impl CsrfKey {
    pub fn new(secret: &[u8]) -> CsrfKey {
        CsrfKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A key for this process only (no `csrf_secret_env`). Without randomness the proxy does
    /// not start: a guessable key would let any page end an admin's impersonation.
    pub fn random() -> Result<Vec<u8>, NoRandomness> {
        random_bytes(32)
    }

    pub fn token(&self, sid: &str) -> String {
        let tag = hmac::sign(&self.0, sid.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    pub fn verify(&self, sid: &str, given: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(given.trim()) else {
            return false;
        };
        hmac::verify(&self.0, sid.as_bytes(), &tag).is_ok()
    }
}

/// The banner's static assets for one config (the color is the only variable).
pub struct Assets {
    pub css: bytes::Bytes,
    pub js: bytes::Bytes,
    pub version: String,
}

impl Assets {
    pub fn new(color: &str) -> Assets {
        let css = markup::banner_css(color);
        let version = markup::version_of(&[&css, markup::BANNER_JS]);
        Assets {
            css: bytes::Bytes::from(css),
            js: bytes::Bytes::from_static(markup::BANNER_JS.as_bytes()),
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request(method, "/", headers)
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("resp");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("h");
        }
        r
    }

    #[test]
    fn decides_when_the_banner_goes_in() {
        let html = [("content-type", "text/html; charset=utf-8")];
        let get = req("GET", &[]);
        assert_eq!(decide(&get, &resp(200, &html), true), Ok(Coding::Identity));
        assert_eq!(decide(&get, &resp(200, &html), false), Err(Skip::SiteOff));
        assert_eq!(
            decide(&req("HEAD", &[]), &resp(200, &html), true),
            Err(Skip::Head)
        );
        assert_eq!(
            decide(
                &req("GET", &[("sec-fetch-dest", "empty")]),
                &resp(200, &html),
                true
            ),
            Err(Skip::NotDocument)
        );
        assert!(
            decide(
                &req("GET", &[("sec-fetch-dest", "document")]),
                &resp(200, &html),
                true
            )
            .is_ok()
        );
        for s in [204, 206, 304] {
            assert_eq!(decide(&get, &resp(s, &html), true), Err(Skip::Status));
        }
        assert!(decide(&get, &resp(404, &html), true).is_ok());
        assert_eq!(
            decide(
                &get,
                &resp(200, &[("content-type", "application/json")]),
                true
            ),
            Err(Skip::NotHtml)
        );
        assert!(
            decide(
                &get,
                &resp(200, &[("content-type", "application/xhtml+xml")]),
                true
            )
            .is_ok()
        );
        let attach = [
            ("content-type", "text/html"),
            ("content-disposition", "attachment; filename=a.html"),
        ];
        assert_eq!(
            decide(&get, &resp(200, &attach), true),
            Err(Skip::Attachment)
        );
        let zstd = [("content-type", "text/html"), ("content-encoding", "zstd")];
        assert_eq!(decide(&get, &resp(200, &zstd), true), Ok(Coding::Zstd));
        let odd = [
            ("content-type", "text/html"),
            ("content-encoding", "compress"),
        ];
        assert_eq!(
            decide(&get, &resp(200, &odd), true),
            Err(Skip::UnknownEncoding)
        );
        let stacked = [
            ("content-type", "text/html"),
            ("content-encoding", "gzip, br"),
        ];
        assert_eq!(
            decide(&get, &resp(200, &stacked), true),
            Err(Skip::UnknownEncoding)
        );
    }

    #[test]
    fn the_nonce_is_drawn_only_for_a_page_with_a_csp() {
        let mut plain = resp(200, &[("content-type", "text/html")]);
        let nonce = Nonce::default();
        let needs = fix_response_headers(&mut plain, OutCoding::Gzip, "cafe.example", &nonce, true)
            .expect("fix");
        assert!(!needs && !nonce.is_drawn());
        let mut strict = resp(
            200,
            &[(
                "content-security-policy",
                "script-src 'nonce-x' 'strict-dynamic'",
            )],
        );
        let needs =
            fix_response_headers(&mut strict, OutCoding::Gzip, "cafe.example", &nonce, true)
                .expect("fix");
        assert!(needs && nonce.is_drawn());
        let drawn = nonce.get().expect("a nonce").to_string();
        assert_eq!(drawn.len(), 22, "16 random bytes, base64url");
        assert_eq!(nonce.get(), Some(drawn.as_str()), "one nonce per response");
        assert_ne!(Nonce::default().get(), Some(drawn.as_str()));
    }

    #[test]
    fn header_fixes() {
        let mut r = resp(
            200,
            &[
                ("content-type", "text/html"),
                ("content-length", "100"),
                ("content-encoding", "gzip"),
                ("etag", "\"abc\""),
                ("accept-ranges", "bytes"),
                (
                    "content-security-policy",
                    "script-src 'nonce-x' 'strict-dynamic'",
                ),
            ],
        );
        let nonce = fix_response_headers(&mut r, OutCoding::Br, "cafe.example", &"N".into(), true)
            .expect("fix");
        assert!(nonce);
        let h = |n: &str| {
            r.headers
                .get(n)
                .map(|v| v.to_str().unwrap_or("").to_string())
        };
        assert_eq!(h("content-length"), None);
        assert_eq!(h("accept-ranges"), None);
        assert_eq!(h("content-encoding").as_deref(), Some("br"));
        assert_eq!(h("transfer-encoding").as_deref(), Some("chunked"));
        assert_eq!(h("etag").as_deref(), Some("W/\"abc\""));
        assert_eq!(h("vary").as_deref(), Some("Accept-Encoding"));
        assert_eq!(
            h("content-security-policy").as_deref(),
            Some("script-src 'nonce-x' 'strict-dynamic' 'nonce-N'")
        );
    }

    #[test]
    fn csrf_is_bound_to_the_sid_and_key() {
        let k = CsrfKey::new(b"k1");
        let t = k.token("sid-1");
        assert!(k.verify("sid-1", &t));
        assert!(!k.verify("sid-2", &t));
        assert!(!CsrfKey::new(b"k2").verify("sid-1", &t));
        assert!(!k.verify("sid-1", "garbage!"));
    }
}
