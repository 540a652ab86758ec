//! Steps 8 and 9, the policy: one path canonicalization used by every path rule (public paths,
//! deny rules, the reserved prefix), the deny-while-impersonating decision, and what a request
//! without a session gets. Pure functions over the request head: no sockets, no state.

mod path;

pub use path::{CanonicalPath, PathRule, RESERVED_PREFIX, canonical_path, is_reserved};

use crate::response::{AuditNote, Refusal, is_navigation};
use pingora::http::RequestHeader;

/// A header-name byte as the identity family and the override headers compare it: lower-case,
/// with `_` read as `-` (Rack and WSGI map `X_Auth_User_Id` onto `X-Auth-User-Id`).
pub fn fold_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// `name` equals the lower-case `target` with `_` read as `-` (no allocation: this runs for
/// every header of every request).
pub fn folded_eq(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| fold_byte(a) == b)
}

/// A deny-while-impersonating rule.
#[derive(Debug, Clone)]
pub struct DenyRule {
    /// Upper-case method names; empty means every method.
    pub methods: Vec<String>,
    pub path: PathRule,
}

/// What a site does for a request without a session (step 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    Pass,
    Reject,
    Redirect { login_url: String },
}

/// A site's path rules.
#[derive(Debug, Clone, Default)]
pub struct SitePolicy {
    /// Forwarded with no cookie work and no identity.
    pub public_paths: Vec<PathRule>,
    pub deny: Vec<DenyRule>,
    /// `allow_while_read_only`: the writes a read-only impersonation may still make (same
    /// shape and matching as the deny rules).
    pub allow_while_read_only: Vec<DenyRule>,
}

/// Public paths skip cookie work. An ambiguous path is never public (fail closed).
pub fn is_public(site: &SitePolicy, path: &CanonicalPath) -> bool {
    !path.ambiguous && site.public_paths.iter().any(|r| r.matches(&path.path))
}

/// The path without a format suffix on its last segment (`/account.json` -> `/account`): Rails'
/// `(.:format)` and Spring's suffix matching route both to one handler.
fn without_format(path: &str) -> Option<&str> {
    let last = path.rfind('/')?;
    let dot = last + path[last..].rfind('.')?;
    (dot > last + 1).then(|| &path[..dot])
}

/// Does a rule's method list cover this method? A rule that names GET covers HEAD too: every
/// common router runs the GET handler for HEAD, side effects included.
fn covers(methods: &[String], method: &str) -> bool {
    methods.is_empty()
        || methods.iter().any(|m| {
            m.eq_ignore_ascii_case(method)
                || (m.eq_ignore_ascii_case("GET") && method.eq_ignore_ascii_case("HEAD"))
        })
}

/// The first deny rule matching this method and canonical path (or the path without a format
/// suffix: deny rules err on the side of refusing).
pub fn denied<'a>(
    rules: &'a [DenyRule],
    method: &str,
    path: &CanonicalPath,
) -> Option<&'a DenyRule> {
    let bare = without_format(&path.path);
    rules.iter().find(|r| {
        covers(&r.methods, method)
            && (r.path.matches(&path.path) || bare.is_some_and(|b| r.path.matches(b)))
    })
}

/// Headers that ask an app to act as another method. Kept (apps use them), but deny rules
/// judge the request by every method it names.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
];

/// The parameter Rails, Rack, Laravel, Symfony and Sinatra read as the method of a POST (from
/// the form body; Symfony and Laravel also from the query).
const METHOD_PARAM: &str = "_method";

fn upper_methods(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
}

/// The request's method and every method an override names (a header, or `_method` in the
/// query), upper-cased. Override headers are matched with `_` read as `-`: Rack and WSGI read
/// `X_HTTP_Method_Override` as `X-HTTP-Method-Override`.
pub fn effective_methods(req: &RequestHeader) -> Vec<String> {
    let mut out = vec![req.method.as_str().to_ascii_uppercase()];
    for (name, v) in req.headers.iter() {
        if METHOD_OVERRIDES.iter().any(|h| folded_eq(name.as_str(), h)) {
            out.extend(upper_methods(&String::from_utf8_lossy(v.as_bytes())));
        }
    }
    if let Some(query) = req.uri.query() {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == METHOD_PARAM {
                out.extend(upper_methods(&v));
            }
        }
    }
    out
}

/// A body `_method` can hide in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    UrlEncoded,
    Multipart,
}

/// The form kind of a POST body, from its `Content-Type`.
pub fn form_kind(req: &RequestHeader) -> Option<FormKind> {
    if req.method != http::Method::POST {
        return None;
    }
    let ct = req.headers.get("content-type")?.to_str().ok()?;
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/x-www-form-urlencoded" => Some(FormKind::UrlEncoded),
        "multipart/form-data" => Some(FormKind::Multipart),
        _ => None,
    }
}

/// Must the form body be read before deciding? Only for a form POST to a path that a deny rule
/// covers for some method other than POST (a `_method` in the body could turn it into that one).
pub fn body_may_override(site: &SitePolicy, req: &RequestHeader, path: &CanonicalPath) -> bool {
    form_kind(req).is_some()
        && site.deny.iter().any(|r| {
            !covers(&r.methods, "POST")
                && (r.path.matches(&path.path)
                    || without_format(&path.path).is_some_and(|b| r.path.matches(b)))
        })
}

/// The `_method` values of a form body.
pub fn body_methods(kind: FormKind, body: &[u8]) -> Vec<String> {
    match kind {
        FormKind::UrlEncoded => form_urlencoded::parse(body)
            .filter(|(k, _)| k == METHOD_PARAM)
            .flat_map(|(_, v)| upper_methods(&v).collect::<Vec<_>>())
            .collect(),
        FormKind::Multipart => {
            // `Content-Disposition: form-data; name="_method"`, a blank line, the value.
            let marker = b"name=\"_method\"";
            let mut out = Vec::new();
            let mut rest = body;
            while let Some(at) = find(rest, marker) {
                rest = &rest[at + marker.len()..];
                let Some(start) = find(rest, b"\r\n\r\n") else {
                    break;
                };
                let value = &rest[start + 4..];
                let end = find(value, b"\r\n").unwrap_or(value.len());
                out.extend(upper_methods(&String::from_utf8_lossy(&value[..end])));
                rest = &value[end..];
            }
            out
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The most of a form body read to find its `_method`: Pingora's replay buffer, which sends what
/// was read to the upstream before the rest of the body.
pub const MAX_JUDGED_BODY: usize = 64 * 1024;

/// Reads a form body (kept for the upstream) to judge the methods it names. A body larger than
/// [`MAX_JUDGED_BODY`] is refused: its `_method` could hide past what can be held.
pub async fn read_body_methods(
    session: &mut pingora::proxy::Session,
) -> Result<Vec<String>, Refusal> {
    let Some(kind) = form_kind(session.req_header()) else {
        return Ok(Vec::new());
    };
    let too_large = || {
        Refusal::error(
            413,
            "form_too_large",
            "This form is too large to be checked while impersonating.",
            "denied",
        )
        .audited(AuditNote {
            event: FORBIDDEN_ATTEMPT,
            reason: Some(format!(
                "form body over {} KiB on a route with deny rules",
                MAX_JUDGED_BODY / 1024
            )),
            canonical_path: None,
        })
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_JUDGED_BODY) {
        return Err(too_large().closing());
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_JUDGED_BODY {
                    return Err(too_large().closing());
                }
            }
            Ok(None) => break,
            Err(_) => {
                return Err(Refusal::bad_request("The request body could not be read.").closing());
            }
        }
    }
    Ok(body_methods(kind, &body))
}

const FORBIDDEN_ATTEMPT: &str = "impersonation.forbidden_attempt";

/// Step 8: what an impersonating request to this path gets, if it may not pass. An ambiguous
/// path is refused on any route (its meaning depends on the app); a route on the deny list is
/// refused for every method the request names. Both are audited.
pub fn impersonation_refusal(
    site: &SitePolicy,
    req: &RequestHeader,
    path: &CanonicalPath,
    body_methods: &[String],
) -> Option<Refusal> {
    let (refusal, reason) = if path.ambiguous {
        (
            Refusal::error(
                400,
                "ambiguous_path",
                "This path is ambiguous and is refused while impersonating.",
                "denied",
            ),
            "ambiguous path".to_string(),
        )
    } else {
        let mut methods = effective_methods(req);
        methods.extend_from_slice(body_methods);
        let (method, rule) = methods
            .iter()
            .find_map(|m| denied(&site.deny, m, path).map(|r| (m, r)))?;
        (
            Refusal::error(
                403,
                "forbidden_while_impersonating",
                "This action is not available while impersonating a user.",
                "denied",
            ),
            format!(
                "{method} {} is denied while impersonating",
                rule.path.as_str()
            ),
        )
    };
    Some(
        refusal
            .header("vary", "Cookie".to_string())
            .audited(AuditNote {
                event: FORBIDDEN_ATTEMPT,
                reason: Some(reason),
                canonical_path: Some(path.path.clone()),
            }),
    )
}

/// Step 9: what a request without a session gets on this site, if it may not pass.
pub fn unauthenticated_refusal(
    rule: &Unauthenticated,
    req: &RequestHeader,
    host: &str,
    scheme: &str,
) -> Option<Refusal> {
    match rule {
        Unauthenticated::Pass => None,
        Unauthenticated::Redirect { login_url } if is_navigation(req) => Some(Refusal::redirect(
            302,
            login_location(login_url, scheme, host, req),
            "redirected",
        )),
        Unauthenticated::Reject | Unauthenticated::Redirect { .. } => Some(Refusal::error(
            401,
            "unauthenticated",
            "Sign in to continue.",
            "unauthenticated",
        )),
    }
}

/// What a query value keeps as it is (RFC 3986's unreserved characters); everything else is
/// percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The login URL with `{url}` = this request's URL on this site, percent-encoded. The path's
/// leading slashes and backslashes collapse to one `/`, so the URL can never name another host.
pub fn login_location(login_url: &str, scheme: &str, host: &str, req: &RequestHeader) -> String {
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .trim_start_matches(['/', '\\']);
    let url = format!("{scheme}://{host}/{target}");
    let encoded = percent_encoding::utf8_percent_encode(&url, QUERY_VALUE);
    login_url.replace("{url}", &encoded.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request("GET", target, headers)
    }

    #[test]
    fn login_location_stays_on_site() {
        let r = req("//evil.com/x?a=1", &[]);
        let loc = login_location(
            "https://id.example/login?return_to={url}",
            "http",
            "cafe.example.com",
            &r,
        );
        assert_eq!(
            loc,
            "https://id.example/login?return_to=http%3A%2F%2Fcafe.example.com%2Fevil.com%2Fx%3Fa%3D1"
        );
        let r = req("/\\evil.com", &[]);
        let loc = login_location("/login?next={url}", "http", "cafe.example.com", &r);
        assert_eq!(loc, "/login?next=http%3A%2F%2Fcafe.example.com%2Fevil.com");
    }

    #[test]
    fn method_overrides_are_read_in_any_spelling() {
        let r = req(
            "/",
            &[
                ("X_HTTP_Method_Override", "delete"),
                ("x-method-override", "PUT"),
            ],
        );
        assert_eq!(effective_methods(&r), vec!["GET", "DELETE", "PUT"]);
    }

    fn site() -> SitePolicy {
        SitePolicy {
            public_paths: vec![],
            deny: vec![DenyRule {
                methods: vec!["POST".into()],
                path: PathRule::parse("/settings/password").expect("rule"),
            }],
            ..SitePolicy::default()
        }
    }

    #[test]
    fn impersonation_refusals_are_decided_without_sockets() {
        let site = site();
        let path = canonical_path("/Settings//password/");
        let get = req("/settings/password", &[]);
        assert_eq!(impersonation_refusal(&site, &get, &path, &[]), None);
        let overridden = req("/settings/password", &[("X_HTTP_Method_Override", "post")]);
        let r = impersonation_refusal(&site, &overridden, &path, &[]).expect("denied");
        assert_eq!(
            (r.status, r.code(), r.outcome),
            (403, "forbidden_while_impersonating", "denied")
        );
        let note = r.audit.expect("audited");
        assert_eq!(note.event, "impersonation.forbidden_attempt");
        assert_eq!(note.canonical_path.as_deref(), Some("/settings/password"));
        assert_eq!(
            note.reason.as_deref(),
            Some("POST /settings/password is denied while impersonating")
        );
        let ambiguous = canonical_path("/anything%2Fat-all");
        let r = impersonation_refusal(&site, &get, &ambiguous, &[]).expect("refused");
        assert_eq!((r.status, r.code()), (400, "ambiguous_path"));
    }

    #[test]
    fn method_parameters_head_and_format_suffixes_are_judged() {
        let site = SitePolicy {
            public_paths: vec![],
            deny: vec![
                DenyRule {
                    methods: vec!["DELETE".into()],
                    path: PathRule::parse("/account").expect("rule"),
                },
                DenyRule {
                    methods: vec!["GET".into()],
                    path: PathRule::parse("/export").expect("rule"),
                },
            ],
            ..SitePolicy::default()
        };
        let refused = |method: &str, target: &str, headers: &[(&str, &str)], body: &[String]| {
            let mut r = RequestHeader::build(method, target.as_bytes(), None).expect("request");
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).expect("header");
            }
            let path = canonical_path(target);
            impersonation_refusal(&site, &r, &path, body).map(|r| r.status)
        };
        assert_eq!(
            refused("POST", "/account?_method=delete", &[], &[]),
            Some(403)
        );
        assert_eq!(
            refused("POST", "/account", &[], &["DELETE".into()]),
            Some(403)
        );
        assert_eq!(refused("POST", "/account", &[], &[]), None);
        assert_eq!(refused("HEAD", "/export", &[], &[]), Some(403));
        assert_eq!(refused("DELETE", "/account.json", &[], &[]), Some(403));
        assert_eq!(refused("DELETE", "/account.", &[], &[]), Some(400));
        assert_eq!(refused("DELETE", "/account%20", &[], &[]), Some(400));
        assert_eq!(refused("GET", "/account.json", &[], &[]), None);

        let form = |ct: &str| {
            let mut r = RequestHeader::build("POST", b"/account", None).expect("request");
            r.append_header("content-type", ct).expect("header");
            r
        };
        let path = canonical_path("/account");
        assert!(body_may_override(
            &site,
            &form("application/x-www-form-urlencoded"),
            &path
        ));
        assert!(body_may_override(
            &site,
            &form("multipart/form-data; boundary=x"),
            &path
        ));
        assert!(!body_may_override(&site, &form("application/json"), &path));
        assert!(!body_may_override(
            &site,
            &form("application/x-www-form-urlencoded"),
            &canonical_path("/other")
        ));
        assert_eq!(
            body_methods(FormKind::UrlEncoded, b"a=1&_method=delete&b=2"),
            vec!["DELETE"]
        );
        assert_eq!(
            body_methods(
                FormKind::Multipart,
                b"--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\npatch\r\n--x--\r\n"
            ),
            vec!["PATCH"]
        );
    }

    #[test]
    fn a_request_without_a_session_gets_what_the_site_says() {
        let nav = req("/orders", &[("Sec-Fetch-Mode", "navigate")]);
        let api = req("/api", &[("Accept", "application/json")]);
        assert_eq!(
            unauthenticated_refusal(&Unauthenticated::Pass, &nav, "a.example", "http"),
            None
        );
        let redirect = Unauthenticated::Redirect {
            login_url: "/login?next={url}".into(),
        };
        let r = unauthenticated_refusal(&redirect, &nav, "a.example", "http").expect("redirect");
        assert_eq!((r.status, r.outcome), (302, "redirected"));
        let r = unauthenticated_refusal(&redirect, &api, "a.example", "http").expect("401");
        assert_eq!((r.status, r.code()), (401, "unauthenticated"));
        let r = unauthenticated_refusal(&Unauthenticated::Reject, &nav, "a.example", "http")
            .expect("401");
        assert_eq!(r.status, 401);
    }
}
