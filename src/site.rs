//! Host -> Site: host normalization, exact and `*.` wildcard patterns, and `{tenant}` patterns.

use crate::config::{Config, SiteConfig, is_host_char};
use std::collections::HashMap;

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

/// Chooses the site for a normalized host: an exact host wins, then the longest wildcard.
#[derive(Debug, Clone, Default)]
pub struct Router {
    exact: HashMap<String, usize>,
    /// (suffix, site index), longest suffix first.
    wildcards: Vec<(String, usize)>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut r = Router::default();
        for (i, site) in config.sites.iter().enumerate() {
            r.add(i, site);
        }
        r.wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        r
    }

    fn add(&mut self, i: usize, site: &SiteConfig) {
        match &site.host {
            HostPattern::Exact(h) => {
                self.exact.entry(h.clone()).or_insert(i);
            }
            HostPattern::Wildcard(s) => self.wildcards.push((s.clone(), i)),
        }
    }

    pub fn route(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, i)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
