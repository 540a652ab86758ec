//! Step 2, the site: the request's host (Host, `:authority`, an absolute-form target), its
//! normalization, exact and `*.` wildcard host patterns, `{tenant}` patterns, and the router
//! from a host to the site serving it.

use crate::response::Refusal;
use pingora::http::RequestHeader;
use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
use std::collections::HashMap;

/// A character allowed in a (lower-case) host name.
pub fn is_host_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.shop.nixtech.app` stored as `.shop.nixtech.app`: any host with a non-empty prefix
    /// before that suffix (nginx's `server_name *.example.com` semantics).
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let host = raw.to_ascii_lowercase();
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        if name.contains('*') {
            return Err(format!(
                "\"{raw}\": a wildcard is only allowed as the whole first label (\"*.example.com\")"
            ));
        }
        if !is_hostname(name) {
            return Err(format!(
                "\"{raw}\" is not a host name (letters, digits, '-' and '.', no port)"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(is_host_char)
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
}

/// `{tenant}.shop.nixtech.app`: the tenant is what stands in place of `{tenant}`, one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPattern {
    prefix: String,
    suffix: String,
}

impl TenantPattern {
    pub fn parse(raw: &str) -> Result<TenantPattern, String> {
        let lower = raw.to_ascii_lowercase();
        let Some((prefix, suffix)) = lower.split_once("{tenant}") else {
            return Err(format!("\"{raw}\" must contain {{tenant}}"));
        };
        if suffix.contains("{tenant}") {
            return Err(format!("\"{raw}\" must contain {{tenant}} once"));
        }
        let sample = format!("{prefix}t{suffix}");
        if !is_hostname(&sample) {
            return Err(format!(
                "\"{raw}\" is not a host pattern (e.g. \"{{tenant}}.shop.example.com\")"
            ));
        }
        Ok(TenantPattern {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The tenant a normalized host names, if the host fits the pattern.
    pub fn tenant<'h>(&self, host: &'h str) -> Option<&'h str> {
        let mid = host
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        (!mid.is_empty() && !mid.contains('.')).then_some(mid)
    }
}

/// Lower-cases, removes the port and a trailing dot. `None` for something that is not a host.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(format!("[{}]", rest[..end].to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    is_hostname(&host).then_some(host)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Why a request cannot be routed.
#[derive(Debug, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Duplicate,
    Invalid,
    /// Absolute-form target (or HTTP/2 `:authority`) naming a different host than `Host`.
    Mismatch,
}

impl From<HostError> for Refusal {
    fn from(e: HostError) -> Refusal {
        tracing::info!(error = ?e, "unroutable host");
        Refusal::bad_request("The request's host is missing or inconsistent.").closing()
    }
}

/// The request's host, as sent and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// As sent (Host header or `:authority`, with its port): the upstream's Host and the
    /// origin the proxy's own URLs and the End form's origin check use.
    pub authority: String,
    /// Lower-case, no port, no trailing dot: what sites are chosen by.
    pub host: String,
}

/// The request's host: `:authority` / absolute-form target first, checked against `Host`.
pub fn request_host(req: &RequestHeader) -> Result<RequestHost, HostError> {
    let hosts: Vec<_> = req.headers.get_all("host").iter().collect();
    if hosts.len() > 1 {
        return Err(HostError::Duplicate);
    }
    let header = match hosts.first() {
        Some(v) => Some(v.to_str().map_err(|_| HostError::Invalid)?),
        None => None,
    };
    // HTTP/2 carries `:authority` in the URI; an HTTP/1.1 absolute-form target keeps its
    // authority only in the raw target, classified by Pingora's own parser.
    let absolute = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute { authority, .. } => {
            Some(std::str::from_utf8(authority).map_err(|_| HostError::Invalid)?)
        }
        RawTargetAuthority::AmbiguousAuthority => return Err(HostError::Invalid),
        RawTargetAuthority::None => None,
    };
    let authority = req.uri.authority().map(|a| a.as_str()).or(absolute);
    let raw = match (authority, header) {
        (Some(a), Some(h)) => {
            let (na, nh) = (normalize_host(a), normalize_host(h));
            if na.is_none() || na != nh {
                return Err(HostError::Mismatch);
            }
            h
        }
        (Some(a), None) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(HostError::Missing),
    };
    let host = normalize_host(raw).ok_or(HostError::Invalid)?;
    Ok(RequestHost {
        authority: raw.to_string(),
        host,
    })
}

/// Chooses the site for a normalized host: an exact host wins, then the longest wildcard.
/// `T` is whatever the caller keeps per site (a handle to its config).
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact: HashMap<String, T>,
    /// (suffix, site), longest suffix first.
    wildcards: Vec<(String, T)>,
}

impl<T> Router<T> {
    /// The first site of a host wins (config validation refuses a host defined twice).
    pub fn new<'p>(sites: impl IntoIterator<Item = (&'p HostPattern, T)>) -> Router<T> {
        let mut r = Router {
            exact: HashMap::new(),
            wildcards: Vec::new(),
        };
        for (pattern, site) in sites {
            match pattern {
                HostPattern::Exact(h) => {
                    r.exact.entry(h.clone()).or_insert(site);
                }
                HostPattern::Wildcard(s) => r.wildcards.push((s.clone(), site)),
            }
        }
        r.wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        r
    }

    pub fn route(&self, host: &str) -> Option<&T> {
        if let Some(site) = self.exact.get(host) {
            return Some(site);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, site)| site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request("GET", target, headers)
    }

    #[test]
    fn host_selection() {
        let ok = req("/", &[("Host", "Cafe.Example.com:8080")]);
        assert_eq!(
            request_host(&ok),
            Ok(RequestHost {
                authority: "Cafe.Example.com:8080".into(),
                host: "cafe.example.com".into()
            })
        );
        let abs = req("http://cafe.example.com/x", &[("Host", "cafe.example.com")]);
        assert!(request_host(&abs).is_ok());
        let mismatch = req("http://evil.example.com/x", &[("Host", "cafe.example.com")]);
        assert_eq!(request_host(&mismatch), Err(HostError::Mismatch));
        let dup = req("/", &[("Host", "a.example"), ("Host", "b.example")]);
        assert_eq!(request_host(&dup), Err(HostError::Duplicate));
        assert_eq!(request_host(&req("/", &[])), Err(HostError::Missing));
        assert_eq!(
            request_host(&req("/", &[("Host", "a b")])),
            Err(HostError::Invalid)
        );
    }

    #[test]
    fn exact_hosts_win_then_the_longest_wildcard() {
        let pats = [
            HostPattern::parse("*.example.com").expect("p"),
            HostPattern::parse("*.shop.example.com").expect("p"),
            HostPattern::parse("acme.shop.example.com").expect("p"),
        ];
        let r = Router::new(pats.iter().zip(["wild", "shop", "acme"]));
        assert_eq!(r.route("acme.shop.example.com"), Some(&"acme"));
        assert_eq!(r.route("x.shop.example.com"), Some(&"shop"));
        assert_eq!(r.route("x.example.com"), Some(&"wild"));
        assert_eq!(r.route("example.com"), None);
    }

    #[test]
    fn normalizes_case_port_and_trailing_dot() {
        assert_eq!(
            normalize_host("Cafe.NixTech.App:8080").as_deref(),
            Some("cafe.nixtech.app")
        );
        assert_eq!(
            normalize_host("cafe.nixtech.app.").as_deref(),
            Some("cafe.nixtech.app")
        );
        assert_eq!(
            normalize_host("cafe.nixtech.app.:80").as_deref(),
            Some("cafe.nixtech.app")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("bad host"), None);
        assert_eq!(normalize_host("a:b"), None);
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a..b"), None);
        assert_eq!(normalize_host("evil.com/x"), None);
    }

    #[test]
    fn wildcard_patterns() {
        let w = HostPattern::parse("*.Shop.nixtech.app").expect("valid");
        assert!(w.matches("acme.shop.nixtech.app"));
        assert!(w.matches("a.b.shop.nixtech.app"));
        assert!(!w.matches("shop.nixtech.app"));
        assert!(!w.matches("evilshop.nixtech.app"));
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("*foo.com").is_err());
        assert!(HostPattern::parse("foo.com:80").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn tenant_patterns() {
        let t = TenantPattern::parse("{tenant}.shop.nixtech.app").expect("valid");
        assert_eq!(t.tenant("acme.shop.nixtech.app"), Some("acme"));
        assert_eq!(t.tenant("a.b.shop.nixtech.app"), None);
        assert_eq!(t.tenant("shop.nixtech.app"), None);
        assert_eq!(t.tenant(".shop.nixtech.app"), None);
        assert!(TenantPattern::parse("shop.nixtech.app").is_err());
        assert!(TenantPattern::parse("{tenant}.{tenant}.app").is_err());
        let p = TenantPattern::parse("shop-{tenant}.nixtech.app").expect("valid");
        assert_eq!(p.tenant("shop-acme.nixtech.app"), Some("acme"));
    }
}
