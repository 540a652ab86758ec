//! The config: `raw` is the TOML as written, `validate` checks it in exactly one place and
//! builds the validated model below, `locate` maps a key path to its line:column for errors.
//! Every error names the key path and, when the file has that key, its line:column.

mod locate;
pub mod raw;
mod validate;

use crate::policy::{SitePolicy, Unauthenticated};
use crate::site::{HostPattern, TenantPattern};
use jsonwebtoken::{Algorithm, DecodingKey};
pub use raw::OnError;
use raw::RawConfig;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A secret read from the environment or a file. Never printed.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The plain (HTTP/1.1 and h2c) listener, when there is one.
    pub listen: Option<SocketAddr>,
    /// The TLS listener (`[listen.tls]`), when there is one.
    pub tls: Option<TlsListener>,
    /// Peers whose forwarding headers are believed (`listen.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub grace_period: Duration,
    /// A new connection that has not shown what it speaks by then is answered 408 or closed.
    pub header_timeout: Duration,
    /// Open connections on the public listener, per process (the descriptor limit can lower
    /// it further, see `connections`).
    pub max_connections: usize,
    pub admin: AdminConfig,
    pub token: TokenConfig,
    pub liveness: LivenessConfig,
    pub header_prefix: String,
    pub banner: BannerConfig,
    pub audit: AuditSink,
    pub audit_queue: usize,
    /// `[access_log]`: `None` when off.
    pub access_log: Option<AuditSink>,
    pub access_include_query: bool,
    /// `[assertion]`, when the proxy signs an assertion for the apps.
    pub assertion: Option<AssertionConfig>,
    /// `[backchannel_logout]`, when logout tokens are accepted.
    pub backchannel_logout: Option<LogoutConfig>,
    /// Shared handles: a request keeps the site it was routed to, whatever reloads meanwhile.
    pub sites: Vec<Arc<SiteConfig>>,
}

/// `[listen.tls]`: its address, the certificate files, and the certificates they held at load.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub addr: SocketAddr,
    /// (cert_file, key_file) pairs, in config order.
    pub files: Vec<(PathBuf, PathBuf)>,
    pub certs: Arc<crate::tls::CertSet>,
}

/// Where a site's app is.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// `https://` upstreams: TLS with SNI and verification.
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Sent in SNI and verified against the certificate.
    pub sni: String,
    /// `upstream_ca_file`'s roots; `None`: the system's.
    pub roots: Option<crate::tls::Roots>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Clone)]
pub struct TokenConfig {
    pub cookie: String,
    pub cookie_domain: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: KeySource,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    pub leeway: Duration,
    /// How long a revocation (an ended sid whose tokens this replica has not seen) is remembered.
    pub revocation_retention: Duration,
    pub claims: ClaimPaths,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("cookie", &self.cookie)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// `[assertion]`, validated: the keys loaded, the issuer, the lifetime.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    pub keys: Arc<crate::signing::Keys>,
    pub issuer: String,
    pub ttl: Duration,
    /// The key files, watched for a reload.
    pub files: Vec<PathBuf>,
}

/// `[backchannel_logout]`: whose logout tokens are believed, and how they are verified.
#[derive(Clone)]
pub struct LogoutConfig {
    pub issuer: String,
    pub audience: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: KeySource,
    /// Clock skew allowed on `iat`/`exp` (fixed: the provider's clock, not the platform's).
    pub leeway: Duration,
}

impl fmt::Debug for LogoutConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogoutConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Where verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// An HS* secret or a PEM public key, fixed for the life of the config.
    Static(DecodingKey),
    /// A JWKS document, fetched at run time and refreshed when a token names an unknown `kid`
    /// (at most once per `JWKS_MIN_REFRESH`), so keys rotate without a restart.
    Jwks(String),
}

/// Where one field of the identity is in the JWT payload: a dotted path, or several tried in
/// order (the first one the token has wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub Vec<Vec<String>>);

impl ClaimPath {
    /// The alternatives as written (`act.sid, sid, jti`).
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|p| p.join("."))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where identity lives in the JWT (`[token.claims]`).
#[derive(Debug, Clone)]
pub struct ClaimPaths {
    pub user_id: ClaimPath,
    pub tenant_id: ClaimPath,
    pub email: ClaimPath,
    pub roles: ClaimPath,
    /// The platform's id of an ordinary session (revocation by `sid`).
    pub session_id: ClaimPath,
    /// The object whose presence makes an impersonation token (`imp`, or RFC 8693's `act`).
    pub impersonation: ClaimPath,
    pub impersonation_sid: ClaimPath,
    pub impersonator_id: ClaimPath,
    pub impersonator_email: ClaimPath,
    pub impersonation_reason: ClaimPath,
    pub impersonation_mode: ClaimPath,
}

#[derive(Debug, Clone)]
pub struct LivenessConfig {
    /// `false`: no backend is asked.
    pub enabled: bool,
    pub url: String,
    pub end_url: String,
    pub bearer: Option<Secret>,
    pub forward_cookie: bool,
    pub cache_ttl: Duration,
    pub ended_ttl: Duration,
    pub timeout: Duration,
    pub on_error: OnError,
    pub stale_ttl: Duration,
    pub redis_url: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct BannerConfig {
    /// `None`: the process makes a random key at start (forms do not survive a restart or
    /// cross replicas).
    pub csrf_secret: Option<Secret>,
    pub color: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
    Http(String),
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The `host` value as written, used as the `site` label in metrics and audit events.
    pub name: String,
    pub host: HostPattern,
    pub upstream: Upstream,
    pub tenant_from_host: Option<TenantPattern>,
    pub unauthenticated: Unauthenticated,
    /// Public paths and deny-while-impersonating rules.
    pub policy: SitePolicy,
    pub banner: bool,
    pub after_end_url: String,
    pub forward_session_cookie: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `site[0].upstream`; empty for whole-file problems.
    pub path: String,
    pub message: String,
    /// 1-based line and column of the key (or of its closest table) in the file.
    pub position: Option<(usize, usize)>,
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let (line, col) = e.position.unwrap_or((1, 1));
            if e.path.is_empty() {
                write!(f, "{}:{line}:{col}: {}", self.file, e.message)?;
            } else {
                write!(f, "{}:{line}:{col}: {}: {}", self.file, e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the validator reads `*_env` secrets from. Tests pass a map; the binary passes the
/// process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Config {
    /// Is this peer a trusted proxy (its forwarding headers believed)?
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// How long an ended sid is remembered when no token of it is known here (an admin revoke,
    /// a message from another replica without `until`): the revocation retention, and never less
    /// than `ended_ttl`.
    pub fn revocation_floor(&self) -> Duration {
        self.token.revocation_retention.max(self.liveness.ended_ttl)
    }

    /// Reads, parses and validates a config file against the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read config file: {e}"),
                position: None,
            }],
        })?;
        Config::parse(&src, &file, &ProcessEnv)
    }

    /// Parses and validates config text. `file` is only used in messages.
    pub fn parse(src: &str, file: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: file.to_string(),
            errors,
        };
        let raw: RawConfig = match toml::from_str(src) {
            Ok(raw) => raw,
            Err(e) => {
                let (path, position) = match e.span() {
                    Some(span) => (
                        locate::path_at(src, span.start),
                        Some(locate::line_col(src, span.start)),
                    ),
                    None => (String::new(), None),
                };
                return Err(fail(vec![ConfigError {
                    path,
                    message: e.message().trim().to_string(),
                    position,
                }]));
            }
        };
        let (config, mut errors) = validate::validate(raw, env);
        if errors.is_empty()
            && let Some(config) = config
        {
            return Ok(config);
        }
        for e in &mut errors {
            e.position = locate::position_of(src, &e.path);
        }
        errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, 0)));
        Err(fail(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        [
            "SESSIONGATE_JWT_SECRET",
            "SESSIONGATE_ADMIN_TOKEN",
            "SESSIONGATE_BACKEND_TOKEN",
            "SESSIONGATE_CSRF_SECRET",
            "S",
        ]
        .iter()
        .map(|k| (k.to_string(), "secret".to_string()))
        .collect()
    }

    #[test]
    fn shipped_configs_are_valid() {
        for file in ["config/example.toml", "config/nixtech.toml"] {
            let src = std::fs::read_to_string(file).expect("shipped config");
            if let Err(e) = Config::parse(&src, file, &env()) {
                panic!("{e}");
            }
        }
    }

    fn errors(src: &str) -> Vec<(String, Option<(usize, usize)>)> {
        match Config::parse(src, "t.toml", &env()) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|e| (e.path, e.position)).collect(),
        }
    }

    const SITE: &str = "[[site]]\nhost = \"a.example\"\nupstream = \"127.0.0.1:1\"\n";

    #[test]
    fn errors_name_the_key_and_its_position() {
        let src = format!("[token]\nsecret_env = \"S\"\nleeway = \"soon\"\n{SITE}");
        assert_eq!(
            errors(&src),
            vec![("token.leeway".to_string(), Some((3, 10)))]
        );
        let src = format!("[token]\nsecret_env = \"S\"\n{SITE}bogus = 1\n");
        assert_eq!(
            errors(&src),
            vec![("site[0].bogus".to_string(), Some((6, 1)))]
        );
        let src = format!("[token]\nsecret_env = \"MISSING\"\n{SITE}");
        assert_eq!(
            errors(&src),
            vec![("token.secret_env".to_string(), Some((2, 1)))]
        );
        let src = "[token]\nsecret_env = \"S\"\n[[site]]\nhost = \"a.*.b\"\nupstream = \"nope\"\nunauthenticated = \"redirect\"\n";
        assert_eq!(
            errors(src),
            vec![
                ("site[0].login_url".to_string(), Some((3, 1))),
                ("site[0].host".to_string(), Some((4, 1))),
                ("site[0].upstream".to_string(), Some((5, 1))),
            ]
        );
    }

    #[test]
    fn semantic_checks() {
        let bad = |extra: &str| {
            let src = format!("[token]\nsecret_env = \"S\"\n{extra}\n{SITE}");
            errors(&src).into_iter().map(|(p, _)| p).collect::<Vec<_>>()
        };
        assert_eq!(bad("algorithms = [\"none\"]"), vec!["token.algorithms[0]"]);
        assert_eq!(bad("algorithms = [\"RS256\"]"), vec!["token.secret_env"]);
        assert_eq!(
            bad("[listen]\naddr = \"127.0.0.1:9090\""),
            vec!["admin.addr"]
        );
        assert_eq!(bad("[liveness]\nurl = \"http://x/\""), vec!["liveness.url"]);
        assert_eq!(
            bad("[liveness]\non_error = \"maybe\""),
            vec!["liveness.on_error"]
        );
        assert_eq!(bad("[audit]\nsink = \"syslog\""), vec!["audit.sink"]);
        assert_eq!(bad("[banner]\ncolor = \"red;}\""), vec!["banner.color"]);
        assert_eq!(
            bad("[listen]\nheader_timeout = \"0s\""),
            vec!["listen.header_timeout"]
        );
        assert_eq!(
            bad("[listen]\nmax_connections = 0"),
            vec!["listen.max_connections"]
        );
        assert!(bad("").is_empty());
    }
}
