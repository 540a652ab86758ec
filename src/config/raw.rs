//! The TOML file as written. Nothing here is trusted: `validate` checks every field in one place
//! and builds the `Config`. Unknown keys are refused by serde (`deny_unknown_fields`); a
//! missing key takes the default of its struct (`#[serde(default)]`); durations are parsed by
//! humantime so `"300ms"`, `"5s"` and `"30m"` all work.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// A directory of site files (one `RawSite` each), relative to the main file's directory.
    pub sites_dir: Option<String>,
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub token: Option<RawToken>,
    pub liveness: RawLiveness,
    pub headers: RawHeaders,
    pub banner: RawBanner,
    pub audit: RawAudit,
    pub access_log: RawAccessLog,
    pub assertion: Option<RawAssertion>,
    pub backchannel_logout: Option<RawBackchannel>,
    pub site: Vec<RawSite>,
}

/// `[assertion]`: the signed JWT for the apps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    pub key_file: String,
    pub previous_public_key_file: Option<String>,
    pub issuer: String,
    #[serde(default = "default_assertion_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_assertion_ttl() -> Duration {
    Duration::from_secs(60)
}

/// `[backchannel_logout]`: OIDC Back-Channel Logout 1.0.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackchannel {
    pub issuer: String,
    pub audience: Vec<String>,
    #[serde(default = "default_logout_algorithms")]
    pub algorithms: Vec<String>,
    pub secret_env: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_url: Option<String>,
}

fn default_logout_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    /// The plain (HTTP/1.1 and h2c) listener: `0.0.0.0:8080` unless only `[listen.tls]` is set.
    pub addr: Option<String>,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long a new connection may take to show what it speaks before it is answered 408
    /// (sent nothing) or closed (stopped mid-preface).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open client connections allowed on the public listener, per process.
    pub max_connections: usize,
    /// CIDRs (or addresses) of the load balancers in front, whose forwarding headers are kept.
    pub trusted_proxies: Vec<String>,
    pub tls: Option<RawTls>,
}

/// `[listen.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub addr: String,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
}

/// `[[listen.tls.certificates]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert_file: String,
    pub key_file: String,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            addr: None,
            grace_period: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub addr: String,
    pub token_env: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            addr: "127.0.0.1:9090".into(),
            token_env: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawToken {
    pub cookie: String,
    pub cookie_domain: Option<String>,
    pub algorithms: Vec<String>,
    pub secret_env: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How long a revocation is remembered when the token it covers is not known.
    #[serde(with = "humantime_serde")]
    pub revocation_retention: Duration,
    pub claims: RawClaims,
}

impl Default for RawToken {
    fn default() -> Self {
        RawToken {
            cookie: "nix_session".into(),
            cookie_domain: None,
            algorithms: vec!["HS256".into()],
            secret_env: None,
            public_key_file: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            revocation_retention: Duration::from_secs(24 * 3600),
            claims: RawClaims::default(),
        }
    }
}

/// A claim path as written: one dotted path, or a list tried in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawClaimPath {
    One(String),
    Many(Vec<String>),
}

impl RawClaimPath {
    pub fn paths(&self) -> Vec<String> {
        match self {
            RawClaimPath::One(p) => vec![p.clone()],
            RawClaimPath::Many(ps) => ps.clone(),
        }
    }
}

fn one(path: &str) -> RawClaimPath {
    RawClaimPath::One(path.to_string())
}

/// `[token.claims]`. The impersonation fields default to paths under `impersonation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClaims {
    pub user_id: RawClaimPath,
    pub tenant_id: RawClaimPath,
    pub email: RawClaimPath,
    pub roles: RawClaimPath,
    pub session_id: RawClaimPath,
    pub impersonation: RawClaimPath,
    pub impersonation_sid: Option<RawClaimPath>,
    pub impersonator_id: Option<RawClaimPath>,
    pub impersonator_email: Option<RawClaimPath>,
    pub impersonation_reason: Option<RawClaimPath>,
    pub impersonation_mode: Option<RawClaimPath>,
}

impl Default for RawClaims {
    fn default() -> Self {
        RawClaims {
            user_id: one("sub"),
            tenant_id: one("tenant_id"),
            email: one("email"),
            roles: one("roles"),
            session_id: one("sid"),
            impersonation: one("imp"),
            impersonation_sid: None,
            impersonator_id: None,
            impersonator_email: None,
            impersonation_reason: None,
            impersonation_mode: None,
        }
    }
}

/// What to do when the liveness backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 503 with `Retry-After`.
    Deny,
    /// The last live answer, while younger than `stale_ttl`.
    Stale,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLiveness {
    /// `false`: no backend; impersonations hold until their `exp` unless ended here.
    pub enabled: bool,
    pub url: String,
    pub end_url: String,
    pub bearer_env: Option<String>,
    pub forward_cookie: bool,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub ended_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
    #[serde(with = "humantime_serde")]
    pub stale_ttl: Duration,
    pub redis_url_env: Option<String>,
}

impl Default for RawLiveness {
    fn default() -> Self {
        RawLiveness {
            enabled: true,
            url: "http://127.0.0.1:4000/internal/impersonations/{sid}".into(),
            end_url: "http://127.0.0.1:4000/tenant/auth/end-impersonation".into(),
            bearer_env: None,
            forward_cookie: false,
            cache_ttl: Duration::from_secs(5),
            ended_ttl: Duration::from_secs(600),
            timeout: Duration::from_millis(300),
            on_error: OnError::Deny,
            stale_ttl: Duration::from_secs(60),
            redis_url_env: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaders {
    pub prefix: String,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders {
            prefix: "X-Auth-".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBanner {
    pub csrf_secret_env: Option<String>,
    pub color: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    pub sink: String,
    /// Events held in memory before new ones are dropped (and counted).
    pub queue: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            sink: "stdout".into(),
            queue: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccessLog {
    /// "off", "stdout" or "file:PATH".
    pub sink: String,
    pub include_query: bool,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog {
            sink: "stdout".into(),
            include_query: false,
        }
    }
}

/// What a site does for a request without a session (`login_url` goes with `redirect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawUnauthenticated {
    #[default]
    Pass,
    Reject,
    Redirect,
}

/// A `[[site]]` table of the main file, or the top level of a file in `sites_dir`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSite {
    /// Required: an empty value is reported by the validator, with the key's position.
    pub host: String,
    pub upstream: String,
    /// For an `https://` upstream: trust these roots instead of the system's.
    pub upstream_ca_file: Option<String>,
    /// For an `https://` upstream: the name sent in SNI and verified (default: its host).
    pub upstream_sni: Option<String>,
    pub tenant_from_host: Option<String>,
    pub unauthenticated: RawUnauthenticated,
    pub login_url: Option<String>,
    pub public_paths: Vec<String>,
    pub banner: bool,
    pub after_end_url: String,
    pub forward_session_cookie: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    pub deny_while_impersonating: Vec<RawRouteRule>,
    /// `read_only`: every impersonation on this site is read-only.
    pub impersonation: RawImpersonationMode,
    /// Writes a read-only impersonation may still make.
    pub allow_while_read_only: Vec<RawRouteRule>,
}

/// What an impersonation may do on a site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawImpersonationMode {
    #[default]
    ReadWrite,
    ReadOnly,
}

impl Default for RawSite {
    fn default() -> Self {
        RawSite {
            host: String::new(),
            upstream: String::new(),
            upstream_ca_file: None,
            upstream_sni: None,
            tenant_from_host: None,
            unauthenticated: RawUnauthenticated::Pass,
            login_url: None,
            public_paths: Vec::new(),
            banner: true,
            after_end_url: "/".into(),
            forward_session_cookie: false,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(60),
            deny_while_impersonating: Vec::new(),
            impersonation: RawImpersonationMode::ReadWrite,
            allow_while_read_only: Vec::new(),
        }
    }
}

/// A route rule: `deny_while_impersonating` and `allow_while_read_only` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteRule {
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
}
