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

/// `_` read as `-` here too: Rack and WSGI apps see `X_Forwarded_Host` as `X-Forwarded-Host`.
fn is_forwarding(name: &str) -> bool {
    FORWARDING.iter().any(|f| folded_eq(name, f))
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

/// Removes every identity-family header and every client copy of the forwarding headers, and
/// rewrites `Connection` so that it can no longer name them (Pingora drops the headers a client
/// lists there from the upstream request, which would remove what we inject). Other headers a
/// client lists as hop-by-hop are removed here, as `Connection` asks.
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
    let conn: Vec<String> = req
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut keep = Vec::new();
    for token in conn {
        match token.as_str() {
            "close" | "keep-alive" | "upgrade" | "te" => keep.push(token),
            t if names.in_family(t) || is_forwarding(t) => {}
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

fn cookie_pairs(req: &RequestHeader) -> impl Iterator<Item = &str> {
    req.headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Finds the session cookie by exact name (cookie names are case-sensitive).
pub fn session_cookie(req: &RequestHeader, name: &str) -> SessionCookie {
    let mut found: Option<&str> = None;
    for pair in cookie_pairs(req) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if n.trim() != name {
            continue;
        }
        let v = v.trim();
        match found {
            None => found = Some(v),
            Some(prev) if prev == v => {}
            Some(_) => return SessionCookie::Conflict,
        }
    }
    match found {
        Some(v) => SessionCookie::One(v.to_string()),
        None => SessionCookie::Absent,
    }
}

/// Removes the session cookie (any case of its name) from the `Cookie` headers; the other
/// pairs pass as sent, joined with `; ` into one header. Untouched when it is not there.
pub fn remove_session_cookie(req: &mut RequestHeader, name: &str) {
    let is_session = |pair: &str| {
        pair.split_once('=')
            .map_or(pair, |(n, _)| n)
            .trim()
            .eq_ignore_ascii_case(name)
    };
    if !cookie_pairs(req).any(is_session) {
        return;
    }
    let kept: Vec<String> = cookie_pairs(req)
        .filter(|p| !is_session(p))
        .map(str::to_string)
        .collect();
    req.remove_header("cookie");
    if !kept.is_empty() {
        // Infallible: the pairs came from valid header values.
        let _ = req.insert_header("cookie", kept.join("; "));
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

/// The request's method and every method an override header names, upper-cased.
pub fn effective_methods(req: &RequestHeader) -> Vec<String> {
    let mut out = vec![req.method.as_str().to_ascii_uppercase()];
    for h in METHOD_OVERRIDES {
        for v in req.headers.get_all(h) {
            let v = String::from_utf8_lossy(v.as_bytes());
            out.extend(
                v.split(',')
                    .map(|m| m.trim().to_ascii_uppercase())
                    .filter(|m| !m.is_empty()),
            );
        }
    }
    out
}

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
        remove_session_cookie(&mut r, "nix_session");
        assert_eq!(
            r.headers.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1; b=\"x y\""[..])
        );
        let mut only = req(&[("Cookie", "nix_session=t")]);
        remove_session_cookie(&mut only, "nix_session");
        assert!(only.headers.get("cookie").is_none());
        let mut untouched = req(&[("Cookie", "a=1;b=2")]);
        remove_session_cookie(&mut untouched, "nix_session");
        assert_eq!(
            untouched.headers.get("cookie").map(|v| v.as_bytes()),
            Some(&b"a=1;b=2"[..])
        );
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
