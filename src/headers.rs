//! Header policy over Pingora's request/response headers: strip the identity family, keep a
//! client from removing injected headers through `Connection`, find the session cookie,
//! filter it out of the upstream `Cookie`, drop an upstream `Set-Cookie` for it, inject.

use crate::token::{Identity, header_encode};
use pingora::http::{RequestHeader, ResponseHeader};

/// The names injected for one `[headers] prefix`, built once per config.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Lower-case, `_` read as `-`: the family every inbound header is checked against.
    family: String,
    pub user_id: String,
    pub tenant_id: String,
    pub email: String,
    pub roles: String,
    pub imp_session: String,
    pub imp_id: String,
    pub imp_email: String,
}

impl IdentityHeaders {
    pub fn new(prefix: &str) -> IdentityHeaders {
        let n = |s: &str| format!("{prefix}{s}");
        IdentityHeaders {
            family: fold(prefix),
            user_id: n("User-Id"),
            tenant_id: n("Tenant-Id"),
            email: n("Email"),
            roles: n("Roles"),
            imp_session: n("Impersonation-Session"),
            imp_id: n("Impersonator-Id"),
            imp_email: n("Impersonator-Email"),
        }
    }

    /// Case-insensitive, with `_` read as `-` (some servers map `X_Auth_User_Id` onto
    /// `X-Auth-User-Id`, so the client must not be able to send either).
    pub fn in_family(&self, name: &str) -> bool {
        name.len() >= self.family.len()
            && name
                .bytes()
                .zip(self.family.bytes())
                .all(|(a, b)| fold_byte(a) == b)
    }
}

fn fold_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

fn fold(s: &str) -> String {
    s.bytes().map(|b| fold_byte(b) as char).collect()
}

/// Headers the proxy sets from its own view; client copies never pass.
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Look-alikes of the forwarding headers that frameworks and proxies trust for the client's
/// address, scheme, host or path (Rails, Django, Spring, Express, Envoy, Cloudflare, Akamai...).
/// The proxy never sets them and never forwards a client's copy: an app that reads one would
/// otherwise take the client's word for its own address or for which URL it serves.
const FORWARDING_LOOKALIKES: [&str; 21] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-original-host",
    "x-host",
    "x-original-uri",
    "x-url-scheme",
    "front-end-https",
    "x-envoy-original-path",
    "x-original-forwarded-for",
];

/// `_` read as `-` here too: Rack and WSGI apps see `X_Forwarded_Host` as `X-Forwarded-Host`.
fn is_forwarding(name: &str) -> bool {
    FORWARDING
        .iter()
        .chain(FORWARDING_LOOKALIKES.iter())
        .any(|f| folded_eq(name, f))
}

/// `name` equals the lower-case `target` with `_` read as `-` (no allocation: this runs for
/// every header of every request).
fn folded_eq(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| fold_byte(a) == b)
}

/// The tokens of every `Connection` header, lower-cased (a header that is not ASCII is read
/// lossily: its odd bytes cannot form a header name anyway).
fn connection_tokens(req: &RequestHeader) -> Vec<String> {
    req.headers
        .get_all("connection")
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Headers that frame the message or route it. A client may not make them hop-by-hop: removing
/// `Content-Length` before the body is read turns the body into a second request (desync), and
/// `Host` decides the site.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Does the client name a framing header in `Connection`? Such a request is refused (400).
pub fn connection_names_framing(req: &RequestHeader) -> bool {
    connection_tokens(req)
        .iter()
        .any(|t| FRAMING.iter().any(|f| folded_eq(t, f)))
}

/// Removes every identity-family header and every client copy of the forwarding headers (and
/// their look-alikes), and rewrites `Connection` so that it can no longer name them (Pingora
/// drops the headers a client lists there from the upstream request, which would remove what
/// we inject). Other headers a client lists as hop-by-hop are removed here, as `Connection`
/// asks; framing headers never are (`connection_names_framing` refuses such requests first).
pub fn strip_inbound(req: &mut RequestHeader, names: &IdentityHeaders) {
    let doomed: Vec<String> = req
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| {
            names.in_family(k) || is_forwarding(k) || URL_OVERRIDES.iter().any(|u| folded_eq(k, u))
        })
        .map(str::to_string)
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    if !req.headers.contains_key("connection") {
        return;
    }
    let mut keep = Vec::new();
    for token in connection_tokens(req) {
        match token.as_str() {
            "close" | "keep-alive" | "upgrade" | "te" => keep.push(token),
            t if names.in_family(t) || is_forwarding(t) => {}
            t if FRAMING.iter().any(|f| folded_eq(t, f)) => {}
            t => {
                req.remove_header(t);
            }
        }
    }
    req.remove_header("connection");
    if !keep.is_empty() {
        // Infallible: the tokens are lower-case ASCII from a header value.
        let _ = req.insert_header("connection", keep.join(", "));
    }
}

/// What the `Cookie` headers say about the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCookie {
    Absent,
    One(String),
    /// Several cookies of that name with different values: cookie tossing from a sibling
    /// subdomain is indistinguishable from the real one, so there is no session.
    Conflict,
}

/// The `name=value` pairs of every `Cookie` header, as bytes. A `Cookie` header is bytes, not
/// text: browsers send what `document.cookie` set (UTF-8 included), and a sibling subdomain can
/// plant such a cookie on the parent domain. So one odd byte never hides the rest of the header:
/// pairs are split on `;` and trimmed, whatever they hold.
fn cookie_pairs(req: &RequestHeader) -> impl Iterator<Item = &[u8]> {
    req.headers
        .get_all("cookie")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// A pair's name and value (both trimmed); a pair without `=` has an empty value.
fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|b| *b == b'=') {
        Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
        None => (pair.trim_ascii(), &[]),
    }
}

/// RFC 6265 cookie-value: cookie-octets, optionally inside double quotes. `None` when the value
/// holds anything else (such a value is never a session).
pub fn cookie_value(value: &[u8]) -> Option<&[u8]> {
    let inner = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    let octet = |b: &u8| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e);
    inner.iter().all(octet).then_some(inner)
}

/// Finds the session cookie by exact (case-sensitive) name. Pairs of other names are never
/// looked at beyond their name, so their bytes do not matter. A session-named pair whose value
/// is not a valid cookie-value still counts (as a value no token can match), so that it cannot
/// be used to win against a conflicting one.
pub fn session_cookie(req: &RequestHeader, name: &str) -> SessionCookie {
    let mut found: Option<&[u8]> = None;
    for pair in cookie_pairs(req) {
        let (n, v) = split_pair(pair);
        if n != name.as_bytes() {
            continue;
        }
        let v = cookie_value(v).unwrap_or(v);
        match found {
            None => found = Some(v),
            Some(prev) if prev == v => {}
            Some(_) => return SessionCookie::Conflict,
        }
    }
    match found {
        Some(v) => SessionCookie::One(String::from_utf8_lossy(v).into_owned()),
        None => SessionCookie::Absent,
    }
}

/// Removes the session cookie from the `Cookie` headers: every pair whose name is the session
/// cookie's in any case, except, with `keep`, the exact pair that carried the token the proxy
/// verified (a site with `forward_session_cookie`). The other pairs pass byte for byte, joined
/// with `; ` into one header. Untouched when there is nothing to remove.
pub fn remove_session_cookie(req: &mut RequestHeader, name: &str, keep: Option<&str>) {
    let doomed = |pair: &[u8]| {
        let (n, v) = split_pair(pair);
        n.eq_ignore_ascii_case(name.as_bytes())
            && !(keep
                .is_some_and(|k| n == name.as_bytes() && cookie_value(v) == Some(k.as_bytes())))
    };
    if !cookie_pairs(req).any(doomed) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for pair in cookie_pairs(req).filter(|p| !doomed(p)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    req.remove_header("cookie");
    if !kept.is_empty() {
        // The pairs came from valid header values (no CR, LF or NUL), so this cannot fail.
        if let Ok(v) = http::HeaderValue::from_bytes(&kept) {
            let _ = req.insert_header("cookie", v);
        }
    }
}

/// Drops an upstream `Set-Cookie` for the session cookie (any case): only the platform sets it.
/// Returns how many were dropped.
pub fn drop_session_set_cookie(resp: &mut ResponseHeader, name: &str) -> usize {
    let values: Vec<_> = resp.headers.get_all("set-cookie").iter().cloned().collect();
    let is_session = |v: &http::HeaderValue| {
        let s = String::from_utf8_lossy(v.as_bytes());
        s.split(';')
            .next()
            .and_then(|p| p.split_once('='))
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    };
    let dropped = values.iter().filter(|v| is_session(v)).count();
    if dropped == 0 {
        return 0;
    }
    resp.remove_header("set-cookie");
    for v in values.into_iter().filter(|v| !is_session(v)) {
        // Infallible: re-appending values that were already in this header map.
        let _ = resp.append_header("set-cookie", v);
    }
    dropped
}

/// Sets the identity headers for a verified identity. Impersonation headers only when the
/// impersonation has been found live.
pub fn inject(
    req: &mut RequestHeader,
    names: &IdentityHeaders,
    id: &Identity,
    impersonation_live: bool,
) -> pingora::Result<()> {
    let mut set =
        |name: &str, value: &str| req.insert_header(name.to_string(), header_encode(value));
    set(&names.user_id, &id.user_id)?;
    if let Some(t) = &id.tenant_id {
        set(&names.tenant_id, t)?;
    }
    if let Some(e) = &id.email {
        set(&names.email, e)?;
    }
    if let Some(r) = &id.roles {
        set(&names.roles, r)?;
    }
    if let (true, Some(imp)) = (impersonation_live, &id.impersonation) {
        set(&names.imp_session, &imp.sid)?;
        if let Some(a) = &imp.admin_id {
            set(&names.imp_id, a)?;
        }
        if let Some(a) = &imp.admin_email {
            set(&names.imp_email, a)?;
        }
    }
    Ok(())
}

/// `X-Forwarded-*` from the proxy's own view.
pub fn set_forwarded(
    req: &mut RequestHeader,
    peer_ip: Option<String>,
    host: &str,
) -> pingora::Result<()> {
    if let Some(ip) = peer_ip {
        req.insert_header("x-forwarded-for", ip)?;
    }
    req.insert_header("x-forwarded-proto", "http")?;
    req.insert_header("x-forwarded-host", host)?;
    Ok(())
}

/// The `Set-Cookie` that clears the platform's session cookie (the domain as configured).
pub fn clear_session_cookie(name: &str, domain: Option<&str>) -> String {
    let domain = domain.map(|d| format!("; Domain={d}")).unwrap_or_default();
    format!(
        "{name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{domain}; Path=/; Secure; HttpOnly; SameSite=Lax"
    )
}

/// Headers that ask an app to act on another URL than the request line's. Stripped: a deny
/// rule judges the request line, so the app must not be told another path.
const URL_OVERRIDES: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-override-url"];

/// Headers that ask an app to act as another method. Kept (apps use them), but deny rules
/// judge the request by every method it names.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
];

/// The request's method and every method an override header names, upper-cased. Override
/// headers are matched with `_` read as `-`: Rack and WSGI read `X_HTTP_Method_Override` as
/// `X-HTTP-Method-Override`.
pub fn effective_methods(req: &RequestHeader) -> Vec<String> {
    let mut out = vec![req.method.as_str().to_ascii_uppercase()];
    for (name, v) in req.headers.iter() {
        if !METHOD_OVERRIDES.iter().any(|h| folded_eq(name.as_str(), h)) {
            continue;
        }
        let v = String::from_utf8_lossy(v.as_bytes());
        out.extend(
            v.split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| !m.is_empty()),
        );
    }
    out
}

/// Cache directives aimed at one kind of cache, which such caches honour over `Cache-Control`
/// (RFC 9213 and the CDNs' own): an impersonated page must not be stored by any of them.
const TARGETED_CACHE_CONTROL: [&str; 6] = [
    "cdn-cache-control",
    "surrogate-control",
    "cloudflare-cdn-cache-control",
    "vercel-cdn-cache-control",
    "x-accel-expires",
    "edge-control",
];

/// An impersonated response must never be stored by a shared cache, nor served to the user
/// later from a private one.
pub fn mark_private(resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.insert_header("cache-control", "private, no-store")?;
    let has_cookie = resp.headers.get_all("vary").iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("cookie") || t.trim() == "*")
    });
    if !has_cookie {
        resp.append_header("vary", "Cookie")?;
    }
    resp.remove_header("expires");
    for h in TARGETED_CACHE_CONTROL {
        resp.remove_header(h);
    }
    Ok(())
}

/// Did the raw request head carry both `Content-Length` and `Transfer-Encoding`? Pingora
/// resolves that per RFC 9112 (Transfer-Encoding wins, the connection closes afterwards) and
/// drops the `Content-Length` before any hook runs, so only the raw bytes still show it. An
/// auth proxy refuses such a request outright: it is how requests are smuggled past front ends.
pub fn framing_conflict(raw_head: &[u8]) -> bool {
    let mut cl = false;
    let mut te = false;
    for line in raw_head.split(|b| *b == b'\n').skip(1) {
        let name = line.split(|b| *b == b':').next().unwrap_or(&[]);
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        }
    }
    cl && te
}

/// Total size of the request head as the limit counts it: target plus every name and value.
pub fn request_head_size(req: &RequestHeader) -> usize {
    let target = req.raw_path().len();
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn strips_family_in_any_case_and_with_underscores() {
        let names = IdentityHeaders::new("X-Auth-");
        let mut r = req(&[
            ("X-Auth-User-Id", "a"),
            ("x-auth-user-id", "b"),
            ("X_Auth_User_Id", "c"),
            ("X-AUTH-ANYTHING", "d"),
            ("x-forwarded-for", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Other", "keep"),
            ("X-Hop", "hop"),
            (
                "Connection",
                "keep-alive, X-Auth-User-Id, x-forwarded-for, X-Hop",
            ),
        ]);
        strip_inbound(&mut r, &names);
        let left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["x-other", "connection"]);
        assert_eq!(
            r.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"keep-alive"[..])
        );
    }

    #[test]
    fn session_cookie_lookup() {
        let one = req(&[("Cookie", "a=1; nix_session=t1; b=2")]);
        assert_eq!(
            session_cookie(&one, "nix_session"),
            SessionCookie::One("t1".into())
        );
        let same = req(&[("Cookie", "nix_session=t1"), ("Cookie", "nix_session=t1")]);
        assert_eq!(
            session_cookie(&same, "nix_session"),
            SessionCookie::One("t1".into())
        );
        let toss = req(&[("Cookie", "nix_session=t1; nix_session=t2")]);
        assert_eq!(
            session_cookie(&toss, "nix_session"),
            SessionCookie::Conflict
        );
        let other_case = req(&[("Cookie", "NIX_SESSION=t1")]);
        assert_eq!(
            session_cookie(&other_case, "nix_session"),
            SessionCookie::Absent
        );
    }

    #[test]
    fn removes_only_the_session_cookie() {
        let mut r = req(&[("Cookie", "a=1; nix_session=t; b=\"x y\"; NIX_Session=z")]);
        remove_session_cookie(&mut r, "nix_session", None);
        assert_eq!(
            r.headers.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1; b=\"x y\""[..])
        );
        let mut only = req(&[("Cookie", "nix_session=t")]);
        remove_session_cookie(&mut only, "nix_session", None);
        assert!(only.headers.get("cookie").is_none());
        let mut untouched = req(&[("Cookie", "a=1;b=2")]);
        remove_session_cookie(&mut untouched, "nix_session", None);
        assert_eq!(
            untouched.headers.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1;b=2"[..])
        );
    }

    fn req_bytes(cookie: &[u8]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        r.append_header(
            "cookie",
            http::HeaderValue::from_bytes(cookie).expect("header bytes"),
        )
        .expect("header");
        r
    }

    #[test]
    fn cookie_headers_are_bytes_and_one_odd_pair_hides_nothing() {
        // UTF-8 from document.cookie, and a byte that is not UTF-8 at all.
        for odd in [&b"pref=caf\xc3\xa9"[..], b"x=\xff", b"\xfe\xff", b"a b=c d"] {
            let mut header = b"nix_session=tok.en.x; ".to_vec();
            header.extend_from_slice(odd);
            header.extend_from_slice(b"; theme=dark");
            let mut r = req_bytes(&header);
            assert_eq!(
                session_cookie(&r, "nix_session"),
                SessionCookie::One("tok.en.x".into()),
                "{odd:?}"
            );
            remove_session_cookie(&mut r, "nix_session", None);
            let mut want = odd.to_vec();
            want.extend_from_slice(b"; theme=dark");
            assert_eq!(
                r.headers.get("cookie").map(|v| v.as_bytes()),
                Some(&want[..]),
                "other pairs pass byte for byte"
            );
        }
        let quoted = req_bytes(b"nix_session=\"t.o.k\"");
        assert_eq!(
            session_cookie(&quoted, "nix_session"),
            SessionCookie::One("t.o.k".into())
        );
        // A session-named pair with bytes a cookie-value cannot hold still conflicts.
        let tossed = req_bytes(b"nix_session=t.o.k; nix_session=t.o.k\xff");
        assert_eq!(
            session_cookie(&tossed, "nix_session"),
            SessionCookie::Conflict
        );
    }

    #[test]
    fn only_the_verified_session_cookie_is_kept_when_forwarding() {
        let mut r = req(&[(
            "Cookie",
            "a=1; nix_session=good; NIX_SESSION=x; nix_session=other",
        )]);
        remove_session_cookie(&mut r, "nix_session", Some("good"));
        assert_eq!(
            r.headers.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1; nix_session=good"[..])
        );
        let mut untouched = req(&[("Cookie", "a=1;nix_session=good")]);
        remove_session_cookie(&mut untouched, "nix_session", Some("good"));
        assert_eq!(
            untouched.headers.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1;nix_session=good"[..])
        );
    }

    #[test]
    fn framing_headers_named_in_connection_are_refused_not_stripped() {
        for named in [
            "content-length",
            "Transfer-Encoding",
            "host",
            "keep-alive, Content_Length",
        ] {
            let r = req(&[("Content-Length", "5"), ("Connection", named)]);
            assert!(connection_names_framing(&r), "{named}");
        }
        let ok = req(&[("Connection", "keep-alive, upgrade, x-hop")]);
        assert!(!connection_names_framing(&ok));
        let names = IdentityHeaders::new("X-Auth-");
        let mut r = req(&[("Content-Length", "5"), ("Connection", "content-length")]);
        strip_inbound(&mut r, &names);
        assert_eq!(
            r.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
    }

    #[test]
    fn forwarding_look_alikes_are_stripped_in_any_spelling() {
        let names = IdentityHeaders::new("X-Auth-");
        let mut r = req(&[
            ("X-Real-IP", "1.2.3.4"),
            ("True-Client-IP", "1.2.3.4"),
            ("X_Forwarded_Port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("X-Original-Host", "evil"),
            ("X-Envoy-Original-Path", "/x"),
            ("Front-End-Https", "on"),
            ("X-Keep", "1"),
        ]);
        strip_inbound(&mut r, &names);
        let left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["x-keep"]);
    }

    #[test]
    fn method_overrides_are_read_in_any_spelling() {
        let r = req(&[
            ("X_HTTP_Method_Override", "delete"),
            ("x-method-override", "PUT"),
        ]);
        assert_eq!(effective_methods(&r), vec!["GET", "DELETE", "PUT"]);
    }

    #[test]
    fn impersonated_responses_lose_targeted_cache_directives() {
        let mut r = ResponseHeader::build(200, None).expect("response");
        for h in [
            "CDN-Cache-Control",
            "Surrogate-Control",
            "Cloudflare-CDN-Cache-Control",
            "X-Accel-Expires",
            "Edge-Control",
        ] {
            r.append_header(h, "max-age=3600").expect("h");
        }
        mark_private(&mut r).expect("mark");
        let mut left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["cache-control", "vary"]);
    }

    #[test]
    fn framing_conflicts() {
        assert!(framing_conflict(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(framing_conflict(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nX-Transfer-Encoding: x\r\n\r\n"
        ));
    }

    #[test]
    fn drops_session_set_cookie() {
        let mut r = ResponseHeader::build(200, None).expect("response");
        r.append_header("Set-Cookie", "a=1; Path=/").expect("h");
        r.append_header("Set-Cookie", "NIX_SESSION=evil; Domain=.nixtech.app")
            .expect("h");
        r.append_header("Set-Cookie", " nix_session=evil")
            .expect("h");
        assert_eq!(drop_session_set_cookie(&mut r, "nix_session"), 2);
        let left: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(left, vec!["a=1; Path=/"]);
    }
}
