//! Content-Security-Policy editing: let the banner's same-origin assets and End form through
//! while the page's own policy keeps holding for the page's own content.
//!
//! The banner needs a script (`/.sessiongate/banner.js`), a stylesheet
//! (`/.sessiongate/banner.css`) and a form POST to `/.sessiongate/end-impersonation`. For each
//! need, the governing directive is found (`script-src-elem` > `script-src` > `default-src`, and
//! likewise for styles; `form-action` has no fallback). When it already allows the asset nothing
//! changes. Otherwise the exact URL of the asset is added as a path-specific source, which
//! widens the policy by that one URL and leaves `'unsafe-inline'` working. Under
//! `'strict-dynamic'` host sources are ignored, so the script gets a per-response nonce
//! instead; such a directive is nonce/hash-based already, so the nonce cannot switch off an
//! `'unsafe-inline'` the page relies on.

pub const SCRIPT_PATH: &str = "/.sessiongate/banner.js";
pub const STYLE_PATH: &str = "/.sessiongate/banner.css";
pub const END_PATH: &str = "/.sessiongate/end-impersonation";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub policy: String,
    /// The banner's script must carry the nonce.
    pub script_nonce: bool,
}

#[derive(Clone, Copy)]
enum Need {
    Script,
    Style,
    Form,
}

impl Need {
    fn directives(self) -> &'static [&'static str] {
        match self {
            Need::Script => &["script-src-elem", "script-src", "default-src"],
            Need::Style => &["style-src-elem", "style-src", "default-src"],
            Need::Form => &["form-action"],
        }
    }
    fn path(self) -> &'static str {
        match self {
            Need::Script => SCRIPT_PATH,
            Need::Style => STYLE_PATH,
            Need::Form => END_PATH,
        }
    }
}

struct Directive {
    name: String,
    sources: Vec<String>,
}

fn parse(policy: &str) -> Vec<Directive> {
    policy
        .split(';')
        .filter_map(|d| {
            let mut parts = d.split_ascii_whitespace();
            let name = parts.next()?.to_ascii_lowercase();
            Some(Directive {
                name,
                sources: parts.map(str::to_string).collect(),
            })
        })
        .collect()
}

fn render(directives: &[Directive]) -> String {
    directives
        .iter()
        .map(|d| {
            if d.sources.is_empty() {
                d.name.clone()
            } else {
                format!("{} {}", d.name, d.sources.join(" "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn has(d: &Directive, keyword: &str) -> bool {
    d.sources.iter().any(|s| s.eq_ignore_ascii_case(keyword))
}

/// Does this source list already let a same-origin URL through?
fn allows_same_origin(d: &Directive, host: &str) -> bool {
    d.sources.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        if s == "'self'" || s == "*" || s == "http:" || s == "https:" {
            return true;
        }
        // A host source naming this host (any scheme, no path): `cafe.example`,
        // `https://cafe.example`, `*.example`.
        let bare = s.split_once("://").map_or(s.as_str(), |(_, rest)| rest);
        if bare.contains('/') {
            return false;
        }
        let name = bare.split(':').next().unwrap_or("");
        name == host
            || name
                .strip_prefix("*.")
                .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
    })
}

/// Edits one policy (a header value may hold several, comma-separated: each is edited).
/// `authority` is the request's host as sent (host[:port]); `nonce` the per-response nonce
/// (`None` when none could be drawn: a `'strict-dynamic'` script directive is then left as it is,
/// and the banner shows without its script).
pub fn edit(policy_list: &str, authority: &str, nonce: Option<&str>) -> Edited {
    let host = authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h)
        .to_ascii_lowercase();
    let mut script_nonce = false;
    let policies: Vec<String> = policy_list
        .split(',')
        .map(|policy| {
            let mut directives = parse(policy);
            for need in [Need::Script, Need::Style, Need::Form] {
                // The most specific directive present governs (`script-src-elem` over
                // `script-src` over `default-src`), whatever its position in the policy.
                let Some(i) = need
                    .directives()
                    .iter()
                    .find_map(|name| directives.iter().position(|d| d.name == *name))
                else {
                    continue;
                };
                let d = &mut directives[i];
                let strict = matches!(need, Need::Script) && has(d, "'strict-dynamic'");
                if !strict && allows_same_origin(d, &host) {
                    continue;
                }
                if strict {
                    if let Some(nonce) = nonce {
                        d.sources.retain(|s| !s.eq_ignore_ascii_case("'none'"));
                        d.sources.push(format!("'nonce-{nonce}'"));
                        script_nonce = true;
                    }
                } else {
                    d.sources.retain(|s| !s.eq_ignore_ascii_case("'none'"));
                    d.sources.push(format!("{authority}{}", need.path()));
                }
            }
            render(&directives)
        })
        .collect();
    Edited {
        policy: policies.join(", "),
        script_nonce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cafe.example:8080";

    #[test]
    fn no_change_when_self_is_allowed() {
        let e = edit(
            "script-src 'self' 'unsafe-inline'; style-src 'self'",
            A,
            Some("N"),
        );
        assert_eq!(
            e.policy,
            "script-src 'self' 'unsafe-inline'; style-src 'self'"
        );
        assert!(!e.script_nonce);
    }

    #[test]
    fn unsafe_inline_never_gets_a_nonce() {
        let e = edit(
            "script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            A,
            Some("N"),
        );
        assert!(!e.policy.contains("nonce"), "{}", e.policy);
        assert!(
            e.policy
                .contains("script-src 'unsafe-inline' cafe.example:8080/.sessiongate/banner.js")
        );
        assert!(
            e.policy
                .contains("style-src 'unsafe-inline' cafe.example:8080/.sessiongate/banner.css")
        );
        assert!(!e.script_nonce);
    }

    #[test]
    fn strict_dynamic_gets_the_nonce() {
        let e = edit("script-src 'nonce-abc' 'strict-dynamic'", A, Some("N"));
        assert_eq!(
            e.policy,
            "script-src 'nonce-abc' 'strict-dynamic' 'nonce-N'"
        );
        assert!(e.script_nonce);
        // 'self' is ignored under strict-dynamic.
        let e = edit("script-src 'self' 'strict-dynamic' 'nonce-x'", A, Some("N"));
        assert!(e.script_nonce);
    }

    #[test]
    fn without_a_nonce_strict_dynamic_is_left_alone() {
        let e = edit("script-src 'nonce-abc' 'strict-dynamic'", A, None);
        assert_eq!(e.policy, "script-src 'nonce-abc' 'strict-dynamic'");
        assert!(!e.script_nonce);
    }

    #[test]
    fn default_none_is_replaced_by_exact_urls() {
        let e = edit(
            "default-src 'none'; script-src 'nonce-abc'; style-src 'self'",
            A,
            Some("N"),
        );
        assert_eq!(
            e.policy,
            "default-src 'none'; script-src 'nonce-abc' cafe.example:8080/.sessiongate/banner.js; style-src 'self'"
        );
        let e = edit("default-src 'none'", A, Some("N"));
        assert_eq!(
            e.policy,
            "default-src cafe.example:8080/.sessiongate/banner.js cafe.example:8080/.sessiongate/banner.css"
        );
    }

    #[test]
    fn form_action_gets_the_end_url() {
        let e = edit("form-action 'none'", A, Some("N"));
        assert_eq!(
            e.policy,
            "form-action cafe.example:8080/.sessiongate/end-impersonation"
        );
        let e = edit("form-action 'self'", A, Some("N"));
        assert_eq!(e.policy, "form-action 'self'");
    }

    #[test]
    fn host_sources_and_several_policies() {
        let e = edit(
            "script-src https://cafe.example, script-src *.example",
            A,
            Some("N"),
        );
        assert_eq!(
            e.policy,
            "script-src https://cafe.example, script-src *.example"
        );
        let e = edit("script-src https://cdn.other", A, Some("N"));
        assert_eq!(
            e.policy,
            "script-src https://cdn.other cafe.example:8080/.sessiongate/banner.js"
        );
        let e = edit("img-src 'none'", A, Some("N"));
        assert_eq!(e.policy, "img-src 'none'");
    }
}
