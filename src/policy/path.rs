//! The path a request means: one canonicalization used by every path rule (public paths, deny
//! rules, the reserved prefix), and the rules themselves (an exact path or a subtree).

/// The reserved prefix answered by the proxy itself.
pub const RESERVED_PREFIX: &str = "/.sessiongate";

/// A request path reduced to what it means: query dropped, percent-decoded, dot segments
/// resolved, repeated and trailing slashes collapsed, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    pub path: String,
    /// The raw path holds something whose meaning depends on the app behind the proxy
    /// (`%2F`, `\`, `;` parameters, control bytes, double encoding, malformed escapes).
    /// `path` is then the proxy's best reading, used only to refuse, never to allow.
    pub ambiguous: bool,
}

/// Canonicalizes the path of a request target (origin-form, with or without a query).
pub fn canonical_path(target: &str) -> CanonicalPath {
    let mut ambiguous = false;
    let raw = match target.find(['?', '#']) {
        Some(i) => {
            if target.as_bytes()[i] == b'#' {
                ambiguous = true;
            }
            &target[..i]
        }
        None => target,
    };
    // Decode once. A decoded '%' that still starts an escape is double encoding.
    let bytes = raw.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    let c = h << 4 | l;
                    match c {
                        b'/' | b'\\' => {
                            ambiguous = true;
                            decoded.push(b'/');
                        }
                        b'%' => {
                            if hex(bytes.get(i + 3)).is_some() && hex(bytes.get(i + 4)).is_some() {
                                ambiguous = true;
                            }
                            // Kept encoded, like `?` and `#`, so the canonical form reads the
                            // same when canonicalized again.
                            decoded.extend_from_slice(b"%25");
                        }
                        b'?' => decoded.extend_from_slice(b"%3f"),
                        b'#' => decoded.extend_from_slice(b"%23"),
                        b';' => {
                            ambiguous = true;
                            decoded.push(b';');
                        }
                        c if c < 0x20 || c == 0x7f => {
                            ambiguous = true;
                        }
                        c => decoded.push(c),
                    }
                    i += 3;
                    continue;
                }
                _ => {
                    ambiguous = true;
                    decoded.extend_from_slice(b"%25");
                }
            }
        } else if b == b'\\' {
            ambiguous = true;
            decoded.push(b'/');
        } else if b == b';' {
            ambiguous = true;
            decoded.push(b';');
        } else if b < 0x20 || b == 0x7f {
            ambiguous = true;
        } else {
            decoded.push(b);
        }
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).to_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // `;` parameters: `..;/` is `..` to Tomcat, and `x;y` is `x` to many servers.
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                // Windows servers and IIS drop a trailing dot or space (`/account.` is
                // `/account`), and Spring's `trimTokens` the space.
                if s.ends_with(['.', ' ']) {
                    ambiguous = true;
                }
                segments.push(s)
            }
        }
    }
    CanonicalPath {
        path: format!("/{}", segments.join("/")),
        ambiguous,
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A configured path: exact (`/favicon.ico`) or a subtree (`/assets/*` = `/assets` and below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    Exact(String),
    Subtree(String),
}

impl PathRule {
    pub fn parse(raw: &str) -> Result<PathRule, String> {
        if !raw.starts_with('/') {
            return Err(format!("\"{raw}\" must start with '/'"));
        }
        let (base, subtree) = match raw.strip_suffix("/*") {
            Some(b) => (if b.is_empty() { "/" } else { b }, true),
            None => (raw, false),
        };
        if base.contains('*') {
            return Err(format!(
                "\"{raw}\": '*' is only allowed as a final \"/*\" (a subtree)"
            ));
        }
        let c = canonical_path(base);
        if c.ambiguous || raw.contains('?') || raw.contains('#') {
            return Err(format!(
                "\"{raw}\" holds characters that are ambiguous in a path (%2F, \\, ;, ?, #, control characters)"
            ));
        }
        Ok(if subtree {
            PathRule::Subtree(c.path)
        } else {
            PathRule::Exact(c.path)
        })
    }

    /// The rule as configured (canonical), for messages.
    pub fn as_str(&self) -> String {
        match self {
            PathRule::Exact(p) => p.clone(),
            PathRule::Subtree(p) if p == "/" => "/*".to_string(),
            PathRule::Subtree(p) => format!("{p}/*"),
        }
    }

    /// `path` must be canonical.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Exact(p) => p == path,
            PathRule::Subtree(p) => {
                p == "/"
                    || path == p
                    || path.len() > p.len()
                        && path.starts_with(p.as_str())
                        && path.as_bytes()[p.len()] == b'/'
            }
        }
    }
}

/// Is this request path under the reserved prefix? Decided on the canonical reading so
/// `/.SessionGate/x`, `//.sessiongate/x` and `/a/../.sessiongate/x` are all reserved.
pub fn is_reserved(path: &CanonicalPath) -> bool {
    PathRule::Subtree(RESERVED_PREFIX.to_string()).matches(&path.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> (String, bool) {
        let c = canonical_path(p);
        (c.path, c.ambiguous)
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            c("/settings/password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/settings//password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("//settings/password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/Settings/Password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/settings/./password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/settings/x/../password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/%73ettings/password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/settings/password/"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/settings/password?next=/"),
            ("/settings/password".into(), false)
        );
        assert_eq!(
            c("/settings/%2e%2e/settings/password"),
            ("/settings/password".into(), false)
        );
        assert_eq!(c("/../../x"), ("/x".into(), false));
        assert_eq!(c("/a%3Fb%23c%25"), ("/a%3fb%23c%25".into(), false));
        assert_eq!(c(""), ("/".into(), false));
    }

    #[test]
    fn ambiguous_forms() {
        for p in [
            "/settings%2Fpassword",
            "/settings%2fpassword",
            "/settings/password;x=1",
            "/settings\\password",
            "/settings%5Cpassword",
            "/settings/..;/settings/password",
            "/settings/%252e%252e/password",
            "/settings/password%00",
            "/settings/password#x",
            "/bad%zz",
        ] {
            let got = canonical_path(p);
            assert!(got.ambiguous, "{p} should be ambiguous, got {got:?}");
        }
        assert_eq!(c("/settings%2Fpassword").0, "/settings/password");
        assert_eq!(c("/settings/..;/settings/password").0, "/settings/password");
    }

    #[test]
    fn canonical_is_idempotent_on_examples() {
        for p in [
            "/a//b/../c/",
            "/%41/./b",
            "/x/%2e/y",
            "/",
            "/%3f",
            "/%2541",
            "/%zz",
        ] {
            let once = canonical_path(p).path;
            assert_eq!(canonical_path(&once).path, once);
        }
    }

    #[test]
    fn path_rules() {
        let exact = PathRule::parse("/favicon.ico").expect("valid");
        assert!(exact.matches("/favicon.ico"));
        assert!(!exact.matches("/favicon.ico/x"));
        let sub = PathRule::parse("/assets/*").expect("valid");
        assert!(sub.matches("/assets"));
        assert!(sub.matches("/assets/app.js"));
        assert!(!sub.matches("/assetsx"));
        assert!(
            PathRule::parse("/Assets/*")
                .expect("valid")
                .matches("/assets/a")
        );
        assert!(PathRule::parse("/*").expect("valid").matches("/anything"));
        assert!(PathRule::parse("assets").is_err());
        assert!(PathRule::parse("/a*b").is_err());
        assert!(PathRule::parse("/a;b").is_err());
    }

    #[test]
    fn reserved_prefix_is_canonical() {
        assert!(is_reserved(&canonical_path("/.sessiongate/banner.js")));
        assert!(is_reserved(&canonical_path("/.SessionGate/x")));
        assert!(is_reserved(&canonical_path("//.sessiongate/x")));
        assert!(is_reserved(&canonical_path("/a/../.sessiongate/x")));
        assert!(is_reserved(&canonical_path("/%2esessiongate/x")));
        assert!(!is_reserved(&canonical_path("/.sessiongatex")));
    }
}
