//! The session cookie: found in `Cookie` headers read as bytes, removed from what the app gets
//! (with every name that some app would read as it), kept out of an upstream's `Set-Cookie`, and
//! cleared when a session ends.

use crate::config::TokenConfig;
use pingora::http::{RequestHeader, ResponseHeader};

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
pub fn cookie_pairs(req: &RequestHeader) -> impl Iterator<Item = &[u8]> {
    req.headers
        .get_all("cookie")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// A pair's name and value (both trimmed). A pair without `=` is a cookie with an empty name
/// (RFC 6265bis): what a browser sends back for `Set-Cookie: nix_session`, never a session.
pub fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|b| *b == b'=') {
        Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
        None => (&[], pair.trim_ascii()),
    }
}

/// A cookie name as the most lenient parsers read it: percent-decoded (Rack, PHP), `.`, ` ` and
/// `[` read as `_` (PHP), case folded. Two names with the same reading are the same cookie to
/// some app.
pub fn lenient_name(name: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(name)
        .map(|b| match b {
            b'.' | b' ' | b'[' => b'_',
            b => b.to_ascii_lowercase(),
        })
        .collect()
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

/// The `Set-Cookie` that clears the platform's session cookie (on the configured domain).
pub fn clearing_cookie(cfg: &TokenConfig) -> String {
    let domain = cfg
        .cookie_domain
        .as_deref()
        .map(|d| format!("; Domain={d}"))
        .unwrap_or_default();
    format!(
        "{}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{domain}; Path=/; Secure; HttpOnly; SameSite=Lax",
        cfg.cookie
    )
}

/// Removes the session cookie from the `Cookie` headers: every pair whose name is the session
/// cookie's in any case, except, with `keep`, the exact pair that carried the token the proxy
/// verified (a site with `forward_session_cookie`). The other pairs pass byte for byte, joined
/// with `; ` into one header. Untouched when there is nothing to remove.
pub fn remove_session_cookie(req: &mut RequestHeader, name: &str, keep: Option<&str>) {
    let wanted = lenient_name(name.as_bytes());
    let doomed = |pair: &[u8]| {
        let (n, v) = split_pair(pair);
        if keep.is_some_and(|k| n == name.as_bytes() && cookie_value(v) == Some(k.as_bytes())) {
            return false;
        }
        // Rack and Python's SimpleCookie also split on `,`: `a=1, nix_session=…` is a session
        // cookie to them. A nameless pair is one too if its value reads as the name.
        pair.split(|b| *b == b',')
            .any(|part| lenient_name(name_as_read(part)) == wanted)
    };
    let crumbs = req.headers.get_all("cookie").iter().count();
    // HTTP/2 sends cookies as crumbs, one header each; an HTTP/1.1 app must get one header
    // (RFC 9113 8.2.3), or some frameworks see only the first.
    if crumbs <= 1 && !cookie_pairs(req).any(doomed) {
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

/// The name a lenient parser reads for a pair: its own, or for a nameless pair (no `=`, or an
/// empty name) the one its value gives.
fn name_as_read(pair: &[u8]) -> &[u8] {
    let (n, v) = split_pair(pair);
    if !n.is_empty() {
        return n;
    }
    match split_pair(v) {
        (n, _) if !n.is_empty() => n,
        (_, v) => v,
    }
}

/// Drops an upstream `Set-Cookie` for the session cookie: only the platform sets it. Any name
/// that reads as the session cookie's counts (see [`lenient_name`]), and so does a nameless
/// cookie whose value does (`Set-Cookie: nix_session` or `=nix_session=…`: browsers send it back
/// as a bare `nix_session`). Returns how many were dropped.
pub fn drop_session_set_cookie(resp: &mut ResponseHeader, name: &str) -> usize {
    let wanted = lenient_name(name.as_bytes());
    let values: Vec<_> = resp.headers.get_all("set-cookie").iter().cloned().collect();
    let is_session = |v: &http::HeaderValue| {
        let first = v.as_bytes().split(|b| *b == b';').next().unwrap_or(&[]);
        lenient_name(name_as_read(first)) == wanted
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request("GET", "/", headers)
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
