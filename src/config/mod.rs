//! One validated `Config`, built from the raw TOML in exactly one place (`Config::from_raw`).
//! Every error names the key path and, when the file has that key, its line:column.

pub mod raw;

use crate::policy::PathRule;
use crate::site::{HostPattern, TenantPattern};
use jsonwebtoken::{Algorithm, DecodingKey};
use raw::{RawConfig, RawSite};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
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
    pub listen: SocketAddr,
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
    pub sites: Vec<SiteConfig>,
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

/// Where verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// An HS* secret or a PEM public key, fixed for the life of the config.
    Static(DecodingKey),
    /// A JWKS document, fetched at run time and refreshed when a token names an unknown `kid`
    /// (at most once per `JWKS_MIN_REFRESH`), so keys rotate without a restart.
    Jwks(String),
}

/// Dotted paths into the JWT payload.
#[derive(Debug, Clone)]
pub struct ClaimPaths {
    pub user_id: Vec<String>,
    pub tenant_id: Vec<String>,
    pub email: Vec<String>,
    pub roles: Vec<String>,
    pub impersonation: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Deny,
    Stale,
}

#[derive(Debug, Clone)]
pub struct LivenessConfig {
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    Pass,
    Reject,
    Redirect { login_url: String },
}

#[derive(Debug, Clone)]
pub struct DenyRule {
    /// Upper-case method names; empty means every method.
    pub methods: Vec<String>,
    pub path: PathRule,
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The `host` value as written, used as the `site` label in metrics and audit events.
    pub name: String,
    pub host: HostPattern,
    pub upstream: SocketAddr,
    pub tenant_from_host: Option<TenantPattern>,
    pub unauthenticated: Unauthenticated,
    pub public_paths: Vec<PathRule>,
    pub banner: bool,
    pub after_end_url: String,
    pub forward_session_cookie: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub deny: Vec<DenyRule>,
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
        let mut v = Validator {
            env,
            errors: Vec::new(),
        };
        let config = v.config(raw);
        let mut errors = v.errors;
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

    pub fn site(&self, index: usize) -> Option<&SiteConfig> {
        self.sites.get(index)
    }
}

struct Validator<'a> {
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
            position: None,
        });
    }

    fn secret_env(&mut self, path: &str, name: &str) -> Option<Secret> {
        if name.is_empty() {
            self.err(path, "names no environment variable");
            return None;
        }
        match self.env.var(name) {
            Some(v) if !v.is_empty() => Some(Secret(v.into_bytes())),
            Some(_) => {
                self.err(path, format!("environment variable {name} is empty"));
                None
            }
            None => {
                self.err(path, format!("environment variable {name} is not set"));
                None
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        if let Ok(addr) = SocketAddr::from_str(value) {
            return Some(addr);
        }
        // host:port with a name (a sidecar's `localhost:3000`, a compose service name):
        // resolved once here so a typo fails at load, not on the first request.
        let has_port = value
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !has_port {
            self.err(
                path,
                format!("\"{value}\" is not an address (expected host:port, e.g. 127.0.0.1:3000)"),
            );
            return None;
        }
        match value.to_socket_addrs() {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => Some(a),
                None => {
                    self.err(path, format!("\"{value}\" resolves to no address"));
                    None
                }
            },
            Err(e) => {
                self.err(path, format!("cannot resolve \"{value}\": {e}"));
                None
            }
        }
    }

    fn positive(&mut self, path: &str, d: Duration) {
        if d.is_zero() {
            self.err(path, "must be greater than zero");
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let listen = self.socket_addr("listen.addr", &raw.listen.addr);
        let admin_addr = self.socket_addr("admin.addr", &raw.admin.addr);
        if let (Some(l), Some(a)) = (listen, admin_addr)
            && l == a
        {
            self.err(
                "admin.addr",
                "must differ from listen.addr (the admin endpoints are never public)",
            );
        }
        self.positive("listen.header_timeout", raw.listen.header_timeout);
        if raw.listen.max_connections == 0 {
            self.err("listen.max_connections", "must be at least 1");
        }
        let admin_token = raw
            .admin
            .token_env
            .as_deref()
            .and_then(|n| self.secret_env("admin.token_env", n));

        let token = match raw.token {
            Some(t) => self.token(t),
            None => {
                self.err("token", "missing [token] section");
                None
            }
        };
        let liveness = self.liveness(raw.liveness);
        let header_prefix = self.header_prefix(&raw.headers.prefix);
        let banner = self.banner(raw.banner);
        let audit = self.audit(&raw.audit.sink);
        if raw.audit.queue == 0 || raw.audit.queue > 10_000_000 {
            self.err("audit.queue", "must be between 1 and 10000000");
        }

        if raw.site.is_empty() {
            self.err("site", "at least one [[site]] is required");
        }
        let mut sites = Vec::new();
        for (i, s) in raw.site.into_iter().enumerate() {
            if let Some(site) = self.site(i, s) {
                sites.push(site);
            }
        }
        for (i, a) in sites.iter().enumerate() {
            if sites[..i].iter().any(|b| b.host == a.host) {
                self.err(
                    format!("site[{i}].host"),
                    format!("\"{}\" is already used by another site", a.name),
                );
            }
        }

        Some(Config {
            listen: listen?,
            grace_period: raw.listen.grace_period,
            header_timeout: raw.listen.header_timeout,
            max_connections: raw.listen.max_connections,
            admin: AdminConfig {
                addr: admin_addr?,
                token: admin_token,
            },
            token: token?,
            liveness: liveness?,
            header_prefix: header_prefix?,
            banner: banner?,
            audit: audit?,
            audit_queue: raw.audit.queue,
            sites,
        })
    }

    fn token(&mut self, t: raw::RawToken) -> Option<TokenConfig> {
        if !is_cookie_name(&t.cookie) {
            self.err(
                "token.cookie",
                format!("\"{}\" is not a cookie name", t.cookie),
            );
        }
        if let Some(d) = &t.cookie_domain
            && (d.is_empty() || !d.trim_start_matches('.').chars().all(is_host_char))
        {
            self.err("token.cookie_domain", format!("\"{d}\" is not a domain"));
        }
        let mut algorithms = Vec::new();
        if t.algorithms.is_empty() {
            self.err("token.algorithms", "must list at least one algorithm");
        }
        for (i, name) in t.algorithms.iter().enumerate() {
            if name.eq_ignore_ascii_case("none") {
                self.err(
                    format!("token.algorithms[{i}]"),
                    "\"none\" is never accepted",
                );
                continue;
            }
            match Algorithm::from_str(name) {
                Ok(a) => algorithms.push(a),
                Err(_) => self.err(
                    format!("token.algorithms[{i}]"),
                    format!(
                        "unknown algorithm \"{name}\" (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                    ),
                ),
            }
        }
        let families: Vec<_> = algorithms.iter().map(|a| a.family()).collect();
        if families.windows(2).any(|w| w[0] != w[1]) {
            self.err(
                "token.algorithms",
                "mixes algorithm families: one key verifies one family (HS*, RS*/PS*, ES*, EdDSA)",
            );
        }
        let sources = [
            t.secret_env.is_some(),
            t.public_key_file.is_some(),
            t.jwks_url.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            self.err(
                "token",
                "set exactly one of secret_env, public_key_file, jwks_url",
            );
        }
        let key = if let Some(url) = &t.jwks_url {
            if algorithms.iter().any(|a| is_hmac(*a)) {
                self.err(
                    "token.jwks_url",
                    "a JWKS holds public keys: use RS*/PS*/ES*/EdDSA algorithms",
                );
            }
            self.http_url("token.jwks_url", url)
                .then(|| KeySource::Jwks(url.clone()))
        } else if let Some(name) = &t.secret_env {
            if algorithms.iter().any(|a| !is_hmac(*a)) {
                self.err(
                    "token.secret_env",
                    "a shared secret only verifies HS256/HS384/HS512; use public_key_file",
                );
            }
            self.secret_env("token.secret_env", name)
                .map(|s| KeySource::Static(DecodingKey::from_secret(&s.0)))
        } else if let Some(file) = &t.public_key_file {
            self.public_key("token.public_key_file", file, algorithms.first().copied())
                .map(KeySource::Static)
        } else {
            None
        };
        if let Some(iss) = &t.issuer
            && iss.is_empty()
        {
            self.err(
                "token.issuer",
                "must not be empty (remove it to skip the check)",
            );
        }
        if let Some(aud) = &t.audience
            && (aud.is_empty() || aud.iter().any(String::is_empty))
        {
            self.err("token.audience", "must list non-empty audiences");
        }
        let claims = ClaimPaths {
            user_id: self.claim_path("token.claims.user_id", &t.claims.user_id),
            tenant_id: self.claim_path("token.claims.tenant_id", &t.claims.tenant_id),
            email: self.claim_path("token.claims.email", &t.claims.email),
            roles: self.claim_path("token.claims.roles", &t.claims.roles),
            impersonation: self.claim_path("token.claims.impersonation", &t.claims.impersonation),
        };
        Some(TokenConfig {
            cookie: t.cookie,
            cookie_domain: t.cookie_domain,
            algorithms,
            key: key?,
            issuer: t.issuer,
            audience: t.audience,
            leeway: t.leeway,
            claims,
        })
    }

    fn public_key(
        &mut self,
        path: &str,
        file: &str,
        alg: Option<Algorithm>,
    ) -> Option<DecodingKey> {
        let pem = match std::fs::read(file) {
            Ok(p) => p,
            Err(e) => {
                self.err(path, format!("cannot read \"{file}\": {e}"));
                return None;
            }
        };
        let alg = alg?;
        if is_hmac(alg) {
            self.err(path, "HS* algorithms take secret_env, not a public key");
            return None;
        }
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        };
        match key {
            Ok(k) => Some(k),
            Err(e) => {
                self.err(
                    path,
                    format!("\"{file}\" is not a {alg:?} public key in PEM: {e}"),
                );
                None
            }
        }
    }

    fn claim_path(&mut self, path: &str, value: &str) -> Vec<String> {
        let parts: Vec<String> = value.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            self.err(path, format!("\"{value}\" is not a dotted claim path"));
        }
        parts
    }

    fn liveness(&mut self, l: raw::RawLiveness) -> Option<LivenessConfig> {
        if !l.url.contains("{sid}") {
            self.err("liveness.url", "must contain {sid}");
        }
        self.http_url("liveness.url", &l.url.replace("{sid}", "sid"));
        self.http_url("liveness.end_url", &l.end_url.replace("{sid}", "sid"));
        let bearer = l
            .bearer_env
            .as_deref()
            .and_then(|n| self.secret_env("liveness.bearer_env", n));
        let redis_url = l
            .redis_url_env
            .as_deref()
            .and_then(|n| self.secret_env("liveness.redis_url_env", n));
        if let Some(url) = &redis_url {
            let url = String::from_utf8_lossy(&url.0);
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                self.err(
                    "liveness.redis_url_env",
                    "the variable must hold a redis://, rediss:// or unix:// URL",
                );
            }
        }
        self.positive("liveness.cache_ttl", l.cache_ttl);
        self.positive("liveness.ended_ttl", l.ended_ttl);
        self.positive("liveness.timeout", l.timeout);
        let on_error = match l.on_error.as_str() {
            "deny" => Some(OnError::Deny),
            "stale" => Some(OnError::Stale),
            other => {
                self.err(
                    "liveness.on_error",
                    format!("\"{other}\" is not one of \"deny\", \"stale\""),
                );
                None
            }
        };
        Some(LivenessConfig {
            url: l.url,
            end_url: l.end_url,
            bearer,
            forward_cookie: l.forward_cookie,
            cache_ttl: l.cache_ttl,
            ended_ttl: l.ended_ttl,
            timeout: l.timeout,
            on_error: on_error?,
            stale_ttl: l.stale_ttl,
            redis_url,
        })
    }

    fn http_url(&mut self, path: &str, value: &str) -> bool {
        match reqwest::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => true,
            Ok(_) => {
                self.err(path, format!("\"{value}\" is not an http(s) URL"));
                false
            }
            Err(e) => {
                self.err(path, format!("\"{value}\" is not a URL: {e}"));
                false
            }
        }
    }

    fn header_prefix(&mut self, prefix: &str) -> Option<String> {
        let ok = prefix.len() >= 2
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            self.err(
                "headers.prefix",
                format!("\"{prefix}\" is not a header-name prefix (letters, digits, '-')"),
            );
            return None;
        }
        Some(prefix.to_string())
    }

    fn banner(&mut self, b: raw::RawBanner) -> Option<BannerConfig> {
        let csrf_secret = b
            .csrf_secret_env
            .as_deref()
            .and_then(|n| self.secret_env("banner.csrf_secret_env", n));
        let color = b.color.unwrap_or_else(|| "#f59e0b".to_string());
        if !is_css_color(&color) {
            self.err(
                "banner.color",
                format!("\"{color}\" is not a color (#rgb, #rrggbb or a color name)"),
            );
            return None;
        }
        Some(BannerConfig { csrf_secret, color })
    }

    fn audit(&mut self, sink: &str) -> Option<AuditSink> {
        if sink == "stdout" {
            return Some(AuditSink::Stdout);
        }
        if let Some(path) = sink.strip_prefix("file:") {
            if path.is_empty() {
                self.err(
                    "audit.sink",
                    "file: needs a path, e.g. file:/var/log/sessiongate/audit.jsonl",
                );
                return None;
            }
            return Some(AuditSink::File(PathBuf::from(path)));
        }
        if sink.starts_with("http://") || sink.starts_with("https://") {
            return self
                .http_url("audit.sink", sink)
                .then(|| AuditSink::Http(sink.to_string()));
        }
        self.err(
            "audit.sink",
            format!("\"{sink}\" is not \"stdout\", \"file:PATH\" or an http(s) URL"),
        );
        None
    }

    fn site(&mut self, i: usize, s: RawSite) -> Option<SiteConfig> {
        let p = |k: &str| format!("site[{i}].{k}");
        let host = match HostPattern::parse(&s.host) {
            Ok(h) => Some(h),
            Err(e) => {
                self.err(p("host"), e);
                None
            }
        };
        let upstream = self.socket_addr(&p("upstream"), &s.upstream);
        let tenant_from_host = match s.tenant_from_host.as_deref().map(TenantPattern::parse) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                self.err(p("tenant_from_host"), e);
                None
            }
        };
        let unauthenticated = match (s.unauthenticated.as_str(), s.login_url) {
            ("pass", _) => Some(Unauthenticated::Pass),
            ("reject", _) => Some(Unauthenticated::Reject),
            ("redirect", Some(url)) => {
                let ok = if url.starts_with('/') && !url.starts_with("//") {
                    true
                } else {
                    self.http_url(&p("login_url"), &url.replace("{url}", "x"))
                };
                ok.then_some(Unauthenticated::Redirect { login_url: url })
            }
            ("redirect", None) => {
                self.err(
                    p("login_url"),
                    "unauthenticated = \"redirect\" needs login_url",
                );
                None
            }
            (other, _) => {
                self.err(
                    p("unauthenticated"),
                    format!("\"{other}\" is not one of \"pass\", \"reject\", \"redirect\""),
                );
                None
            }
        };
        let mut public_paths = Vec::new();
        for (j, raw) in s.public_paths.iter().enumerate() {
            match PathRule::parse(raw) {
                Ok(r) => public_paths.push(r),
                Err(e) => self.err(p(&format!("public_paths[{j}]")), e),
            }
        }
        let after = &s.after_end_url;
        if !after.starts_with('/') || after.starts_with("//") {
            self.http_url(&p("after_end_url"), after);
        }
        if after.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            self.err(
                p("after_end_url"),
                "must not contain spaces or control characters",
            );
        }
        self.positive(&p("connect_timeout"), s.connect_timeout);
        self.positive(&p("read_timeout"), s.read_timeout);
        let mut deny = Vec::new();
        for (j, rule) in s.deny_while_impersonating.into_iter().enumerate() {
            let rp = |k: &str| format!("site[{i}].deny_while_impersonating[{j}].{k}");
            let path = match PathRule::parse(&rule.path) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.err(rp("path"), e);
                    None
                }
            };
            let mut methods = Vec::new();
            for m in rule.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    self.err(rp("methods"), format!("\"{m}\" is not an HTTP method"));
                } else {
                    methods.push(m.to_ascii_uppercase());
                }
            }
            if let Some(path) = path {
                deny.push(DenyRule { methods, path });
            }
        }
        Some(SiteConfig {
            name: s.host.to_ascii_lowercase(),
            host: host?,
            upstream: upstream?,
            tenant_from_host,
            unauthenticated: unauthenticated?,
            public_paths,
            banner: s.banner,
            after_end_url: s.after_end_url,
            forward_session_cookie: s.forward_session_cookie,
            connect_timeout: s.connect_timeout,
            read_timeout: s.read_timeout,
            deny,
        })
    }
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// RFC 6265 cookie-name = token.
fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

pub(crate) fn is_host_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
}

fn is_css_color(s: &str) -> bool {
    if let Some(hex) = s.strip_prefix('#') {
        return matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Mapping key paths to positions in the source, through toml's span-preserving parse tree.
mod locate {
    use toml::Spanned;
    use toml::de::{DeTable, DeValue};

    pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(src.len());
        let before = &src.as_bytes()[..offset];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        (line, col)
    }

    enum Seg<'a> {
        Key(&'a str),
        Index(usize),
    }

    fn segments(path: &str) -> Vec<Seg<'_>> {
        let mut out = Vec::new();
        for part in path.split('.') {
            let (key, rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                out.push(Seg::Key(key));
            }
            for idx in rest.split('[').filter(|s| !s.is_empty()) {
                if let Ok(n) = idx.trim_end_matches(']').parse() {
                    out.push(Seg::Index(n));
                }
            }
        }
        out
    }

    /// The position of the deepest part of `path` that the file has.
    pub fn position_of(src: &str, path: &str) -> Option<(usize, usize)> {
        let root = DeTable::parse(src).ok()?;
        let mut best = None;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in segments(path) {
            match seg {
                Seg::Key(k) => {
                    let Some((key, v)) =
                        table.and_then(|t| t.iter().find(|(key, _)| key.get_ref().as_ref() == k))
                    else {
                        break;
                    };
                    best = Some(key.span().start);
                    value = Some(v);
                }
                Seg::Index(n) => {
                    let DeValue::Array(items) = value?.get_ref() else {
                        break;
                    };
                    let Some(item) = items.get(n) else { break };
                    best = Some(item.span().start);
                    value = Some(item);
                }
            }
            table = match value.map(|v| v.get_ref()) {
                Some(DeValue::Table(t)) => Some(t),
                _ => None,
            };
        }
        best.map(|o| line_col(src, o))
    }

    /// The key path of the innermost key whose key or value covers `offset`.
    pub fn path_at(src: &str, offset: usize) -> String {
        let Ok(root) = DeTable::parse(src) else {
            return String::new();
        };
        let mut path = String::new();
        walk_table(root.get_ref(), offset, &mut path);
        path
    }

    fn walk_table(t: &DeTable<'_>, offset: usize, path: &mut String) {
        for (k, v) in t.iter() {
            let covers = k.span().contains(&offset) || v.span().contains(&offset);
            let inside_table = matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_));
            if covers || inside_table && contains_deep(v, offset) {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.get_ref().as_ref());
                walk_value(v, offset, path);
                return;
            }
        }
    }

    fn walk_value(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
        match v.get_ref() {
            DeValue::Table(t) => walk_table(t, offset, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if contains_deep(item, offset) {
                        path.push_str(&format!("[{i}]"));
                        walk_value(item, offset, path);
                        return;
                    }
                }
            }
            _ => {}
        }
    }

    /// Array-of-tables and dotted tables have spans that do not cover their keys, so look
    /// inside.
    fn contains_deep(v: &Spanned<DeValue<'_>>, offset: usize) -> bool {
        if v.span().contains(&offset) {
            return true;
        }
        match v.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .any(|(k, v)| k.span().contains(&offset) || contains_deep(v, offset)),
            DeValue::Array(items) => items.iter().any(|i| contains_deep(i, offset)),
            _ => false,
        }
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
