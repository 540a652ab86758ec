//! Property tests for the three parsers an attacker controls: the cookie header, the token
//! pre-checks, and path canonicalization. They must never panic; canonical form is
//! idempotent; no generated variant of a denied path escapes the deny rule.

use pingora::http::RequestHeader;
use proptest::prelude::*;
use sessiongate::policy::{PathRule, canonical_path};
use sessiongate::token::cookie::remove_session_cookie;
use sessiongate::token::{MAX_TOKEN_LEN, precheck};
use sessiongate::token::{SessionCookie, session_cookie};

fn request_with_cookie(value: &str) -> Option<RequestHeader> {
    let mut r = RequestHeader::build("GET", b"/", None).ok()?;
    r.append_header("cookie", value).ok()?;
    Some(r)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cookie_parsing_never_panics(value in "[ -~]{0,300}") {
        if let Some(mut r) = request_with_cookie(&value) {
            let found = session_cookie(&r, "nix_session");
            remove_session_cookie(&mut r, "nix_session", None);
            // After removal no session cookie is left, whatever the input was.
            prop_assert_eq!(session_cookie(&r, "nix_session"), SessionCookie::Absent);
            if let SessionCookie::One(v) = found {
                prop_assert!(value.contains(&v));
            }
        }
    }

    #[test]
    fn two_different_session_cookies_are_never_a_session(a in "[A-Za-z0-9._-]{1,40}", b in "[A-Za-z0-9._-]{1,40}", other in "[a-z]{1,8}=[a-z0-9]{0,8}") {
        prop_assume!(a != b);
        let value = format!("{other}; nix_session={a}; nix_session={b}");
        let r = request_with_cookie(&value).expect("valid header");
        prop_assert_eq!(session_cookie(&r, "nix_session"), SessionCookie::Conflict);
    }

    #[test]
    fn token_precheck_never_panics_and_bounds_size(token in "\\PC{0,200}") {
        if precheck(&token).is_ok() {
            prop_assert!(token.len() <= MAX_TOKEN_LEN);
            prop_assert_eq!(token.matches('.').count(), 2);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        }
    }

    #[test]
    fn canonical_path_never_panics_and_is_idempotent(path in "/[ -~]{0,120}") {
        let once = canonical_path(&path);
        prop_assert!(once.path.starts_with('/'));
        prop_assert!(!once.path.contains("//"));
        let twice = canonical_path(&once.path);
        prop_assert_eq!(&twice.path, &once.path);
    }
}

/// One way of disguising a path segment.
#[derive(Debug, Clone)]
enum Disguise {
    Upper(usize),
    Encode(usize),
    DoubleSlash,
    DotSegment,
    DotDot,
    TrailingSlash,
    Query,
    EncodedSlash,
    Semicolon,
    Backslash,
}

fn disguise() -> impl Strategy<Value = Disguise> {
    prop_oneof![
        (0usize..32).prop_map(Disguise::Upper),
        (0usize..32).prop_map(Disguise::Encode),
        Just(Disguise::DoubleSlash),
        Just(Disguise::DotSegment),
        Just(Disguise::DotDot),
        Just(Disguise::TrailingSlash),
        Just(Disguise::Query),
        Just(Disguise::EncodedSlash),
        Just(Disguise::Semicolon),
        Just(Disguise::Backslash),
    ]
}

fn apply(path: &str, d: &Disguise) -> String {
    let (p, q) = path
        .split_once('?')
        .map_or((path.to_string(), None), |(p, q)| {
            (p.to_string(), Some(q.to_string()))
        });
    let out = match d {
        Disguise::Upper(i) => p
            .char_indices()
            .map(|(j, c)| {
                if j % 32 == *i % 32 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
        Disguise::Encode(i) => p
            .char_indices()
            .map(|(j, c)| {
                if j == *i % p.len().max(1) && c.is_ascii_alphanumeric() {
                    format!("%{:02X}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
        Disguise::DoubleSlash => p.replacen('/', "//", 1),
        Disguise::DotSegment => p.replacen("/password", "/./password", 1),
        Disguise::DotDot => p.replacen("/password", "/x/../password", 1),
        Disguise::TrailingSlash => format!("{p}/"),
        Disguise::Query => return format!("{p}?next=/&{}", q.unwrap_or_default()),
        Disguise::EncodedSlash => p.replacen("/password", "%2Fpassword", 1),
        Disguise::Semicolon => format!("{p};x=1"),
        Disguise::Backslash => p.replacen("/password", "\\password", 1),
    };
    match q {
        Some(q) => format!("{out}?{q}"),
        None => out,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Every variant either canonicalizes onto the denied route (403) or is ambiguous (400):
    /// none is both unambiguous and elsewhere.
    #[test]
    fn no_variant_of_a_denied_path_escapes(disguises in proptest::collection::vec(disguise(), 1..6)) {
        let rule = PathRule::parse("/settings/password").expect("rule");
        let mut path = "/settings/password".to_string();
        for d in &disguises {
            path = apply(&path, d);
        }
        let c = canonical_path(&path);
        prop_assert!(c.ambiguous || rule.matches(&c.path), "{path} -> {c:?}");
    }

    #[test]
    fn subtree_rules_cover_every_descendant(tail in "(/[a-zA-Z0-9._~-]{1,8}){0,4}") {
        let rule = PathRule::parse("/settings/api-keys/*").expect("rule");
        let c = canonical_path(&format!("/Settings//api-keys{tail}"));
        prop_assert!(c.ambiguous || rule.matches(&c.path) || tail.contains(".."), "{tail} -> {c:?}");
    }
}
