//! Every check of a config, in one place: from the raw TOML to the validated `Config`, with
//! each problem collected (not just the first) under its key path.

use super::locate;
use super::raw::{self, RawConfig, RawSite, RawUnauthenticated};
use super::{
    AdminConfig, AssertionConfig, AuditSink, BannerConfig, ClaimPath, ClaimPaths, Config,
    ConfigError, Env, KeySource, LivenessConfig, LogoutConfig, Secret, SiteConfig, SitesDir,
    Source, TlsListener, TokenConfig, Upstream, UpstreamTls,
};
use crate::policy::{PathRule, RouteRule, SitePolicy, Unauthenticated};
use crate::site::{HostPattern, TenantPattern, is_host_char};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Validates the main file's `raw` (whose text is `main`) and the site files of `sites_dir`;
/// the config when there was no error, and every error (without positions).
pub fn validate(
    raw: RawConfig,
    main: &Source,
    sites_dir: Option<SitesDir>,
    env: &dyn Env,
) -> (Option<Config>, Vec<ConfigError>) {
    let mut v = Validator {
        env,
        errors: Vec::new(),
        file: None,
    };
    let config = v.config(raw, main, sites_dir);
    (config, v.errors)
}

/// The longest `assertion.ttl`: an assertion is a proof of the moment, not a session.
const MAX_ASSERTION_TTL: Duration = Duration::from_secs(600);

struct Validator<'a> {
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
    /// The site file being checked (its errors name it); `None`: the main file.
    file: Option<String>,
}

impl Validator<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
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

    fn config(
        &mut self,
        mut raw: RawConfig,
        main: &Source,
        sites_dir: Option<SitesDir>,
    ) -> Option<Config> {
        // Without [listen.tls], a plain listener is the default; with it, only if asked for.
        let plain = match (&raw.listen.addr, &raw.listen.tls) {
            (Some(a), _) => Some(a.clone()),
            (None, None) => Some("0.0.0.0:8080".to_string()),
            (None, Some(_)) => None,
        };
        let listen = plain.map(|a| self.socket_addr("listen.addr", &a));
        let tls = raw.listen.tls.take().map(|t| self.tls_listener(t));
        let admin_addr = self.socket_addr("admin.addr", &raw.admin.addr);
        for (key, addr) in [
            ("listen.addr", listen.flatten()),
            (
                "listen.tls.addr",
                tls.as_ref().and_then(|t| t.as_ref().map(|t| t.addr)),
            ),
        ] {
            if addr.is_some() && addr == admin_addr {
                self.err(
                    "admin.addr",
                    format!("must differ from {key} (the admin endpoints are never public)"),
                );
            }
        }
        let trusted_proxies = self.trusted_proxies(&raw.listen.trusted_proxies);
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
        let assertion = raw.assertion.map(|a| self.assertion(a));
        let backchannel_logout = raw.backchannel_logout.map(|b| self.backchannel_logout(b));
        let header_prefix = self.header_prefix(&raw.headers.prefix);
        let banner = self.banner(raw.banner);
        let audit = self.sink("audit.sink", &raw.audit.sink, true);
        let access_log = match raw.access_log.sink.as_str() {
            "off" => None,
            sink => Some(self.sink("access_log.sink", sink, false)),
        };
        if raw.audit.queue == 0 || raw.audit.queue > 10_000_000 {
            self.err("audit.queue", "must be between 1 and 10000000");
        }

        if raw.sites_dir.as_ref().is_some_and(|d| d.is_empty()) {
            self.err(
                "sites_dir",
                "must name a directory (relative to this file's), or be left out",
            );
        }
        let sites_dir_path = sites_dir.as_ref().map(|d| d.path.clone());
        let sites = self.sites(raw.site, main, sites_dir);

        Some(Config {
            listen: match listen {
                Some(l) => Some(l?),
                None => None,
            },
            tls: match tls {
                Some(t) => Some(t?),
                None => None,
            },
            trusted_proxies,
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
            access_log: match access_log {
                Some(s) => Some(s?),
                None => None,
            },
            access_include_query: raw.access_log.include_query,
            assertion: match assertion {
                Some(a) => Some(a?),
                None => None,
            },
            backchannel_logout: match backchannel_logout {
                Some(b) => Some(b?),
                None => None,
            },
            sites,
            sites_dir: sites_dir_path,
        })
    }

    /// The main file's `[[site]]` tables, then one site per file of `sites_dir`, each checked
    /// by `site`. At least one site in all; a host defined twice names both places.
    fn sites(
        &mut self,
        tables: Vec<RawSite>,
        main: &Source,
        sites_dir: Option<SitesDir>,
    ) -> Vec<Arc<SiteConfig>> {
        let (files, listed, unreadable) = match sites_dir {
            Some(d) => (d.files, d.listed.len(), Some(d.unreadable)),
            None => (Vec::new(), 0, None),
        };
        if tables.is_empty() && listed == 0 {
            match unreadable {
                // The directory could not be read: that error says it all.
                Some(true) => {}
                Some(false) => self.err(
                    "sites_dir",
                    "holds no site file (*.toml) and this file has no [[site]]: at least one site is required",
                ),
                None => self.err("site", "at least one [[site]] is required"),
            }
        }
        // Each site with where its host is written (FILE:LINE:COL), for the duplicate check.
        let mut found: Vec<(Arc<SiteConfig>, String)> = Vec::new();
        for (i, s) in tables.into_iter().enumerate() {
            if let Some(site) = self.site(&format!("site[{i}]."), s, &main.name) {
                self.unique_host(site, &format!("site[{i}].host"), main, &mut found);
            }
        }
        for (source, s) in files {
            self.file = Some(source.name.clone());
            if let Some(site) = self.site("", s, &source.name) {
                self.unique_host(site, "host", &source, &mut found);
            }
            self.file = None;
        }
        found.into_iter().map(|(site, _)| site).collect()
    }

    /// Adds `site` to `found` unless another site has its host (an error at `key`, naming where
    /// the other one is).
    fn unique_host(
        &mut self,
        site: Arc<SiteConfig>,
        key: &str,
        source: &Source,
        found: &mut Vec<(Arc<SiteConfig>, String)>,
    ) {
        let (line, col) = locate::position_of(&source.text, key).unwrap_or((1, 1));
        let here = format!("{}:{line}:{col}", source.name);
        if let Some((_, there)) = found.iter().find(|(other, _)| other.host == site.host) {
            self.err(
                key,
                format!("\"{}\" is already defined at {there}", site.name),
            );
            return;
        }
        found.push((site, here));
    }

    fn tls_listener(&mut self, t: raw::RawTls) -> Option<TlsListener> {
        let addr = self.socket_addr("listen.tls.addr", &t.addr);
        if t.certificates.is_empty() {
            self.err(
                "listen.tls",
                "needs at least one [[listen.tls.certificates]] (cert_file, key_file)",
            );
        }
        let mut files = Vec::new();
        let mut certs = Vec::new();
        for (i, c) in t.certificates.into_iter().enumerate() {
            let (cert_file, key_file) = (PathBuf::from(&c.cert_file), PathBuf::from(&c.key_file));
            match crate::tls::load_pair(&cert_file, &key_file) {
                Ok(cert) => certs.push(cert),
                Err(e) => {
                    let which = if e.contains(&format!("\"{}\"", key_file.display())) {
                        "key_file"
                    } else {
                        "cert_file"
                    };
                    self.err(format!("listen.tls.certificates[{i}].{which}"), e);
                }
            }
            files.push((cert_file, key_file));
        }
        Some(TlsListener {
            addr: addr?,
            files,
            certs: Arc::new(crate::tls::CertSet::new(certs)),
        })
    }

    fn trusted_proxies(&mut self, raw: &[String]) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for (i, value) in raw.iter().enumerate() {
            let net = value.parse::<ipnet::IpNet>().ok().or_else(|| {
                value
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .map(ipnet::IpNet::from)
            });
            match net {
                Some(n) => nets.push(n.trunc()),
                None => self.err(
                    format!("listen.trusted_proxies[{i}]"),
                    format!(
                        "\"{value}\" is not a CIDR (\"10.0.0.0/8\", \"fd00::/8\") or an address"
                    ),
                ),
            }
        }
        nets
    }

    /// `host:port`, `http://host:port` (plain) or `https://host:port` (TLS, verified).
    fn upstream(&mut self, prefix: &str, s: &RawSite) -> Option<Upstream> {
        let p = |k: &str| format!("{prefix}{k}");
        if s.upstream.is_empty() {
            self.err(p("upstream"), "is required: the app's host:port");
            return None;
        }
        let (https, hostport) = match s.upstream.split_once("://") {
            Some(("https", rest)) => (true, rest.trim_end_matches('/')),
            Some(("http", rest)) => (false, rest.trim_end_matches('/')),
            Some((scheme, _)) => {
                self.err(
                    p("upstream"),
                    format!(
                        "\"{scheme}://\" is not a scheme for an upstream (http:// or https://)"
                    ),
                );
                return None;
            }
            None => (false, s.upstream.as_str()),
        };
        if !https && (s.upstream_ca_file.is_some() || s.upstream_sni.is_some()) {
            let key = if s.upstream_ca_file.is_some() {
                "upstream_ca_file"
            } else {
                "upstream_sni"
            };
            self.err(p(key), "only applies to an https:// upstream");
        }
        let addr = self.socket_addr(&p("upstream"), hostport)?;
        if !https {
            return Some(Upstream { addr, tls: None });
        }
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let sni = s.upstream_sni.clone().unwrap_or_else(|| host.to_string());
        let roots = match &s.upstream_ca_file {
            None => None,
            Some(f) => match crate::tls::load_roots(std::path::Path::new(f)) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.err(p("upstream_ca_file"), e);
                    return None;
                }
            },
        };
        Some(Upstream {
            addr,
            tls: Some(UpstreamTls { sni, roots }),
        })
    }

    /// Method and path rules (`deny_while_impersonating`, `allow_while_read_only`) under `key`.
    fn rules(&mut self, key: &str, raw: Vec<raw::RawRouteRule>) -> Vec<RouteRule> {
        let mut rules = Vec::new();
        for (j, rule) in raw.into_iter().enumerate() {
            let rp = |k: &str| format!("{key}[{j}].{k}");
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
                rules.push(RouteRule { methods, path });
            }
        }
        rules
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
        let algorithms = self.algorithms("token", &t.algorithms);
        let key = self.key_source(
            "token",
            &algorithms,
            t.secret_env.as_deref(),
            t.public_key_file.as_deref(),
            t.jwks_url.as_deref(),
        );
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
        self.positive("token.revocation_retention", t.revocation_retention);
        let claims = self.claims(&t.claims);
        Some(TokenConfig {
            cookie: t.cookie,
            cookie_domain: t.cookie_domain,
            algorithms,
            key: key?,
            issuer: t.issuer,
            audience: t.audience,
            leeway: t.leeway,
            revocation_retention: t.revocation_retention,
            claims,
        })
    }

    /// `<section>.algorithms`: known names, never `none`, one family.
    fn algorithms(&mut self, section: &str, names: &[String]) -> Vec<Algorithm> {
        let mut algorithms = Vec::new();
        if names.is_empty() {
            self.err(
                format!("{section}.algorithms"),
                "must list at least one algorithm",
            );
        }
        for (i, name) in names.iter().enumerate() {
            if name.eq_ignore_ascii_case("none") {
                self.err(
                    format!("{section}.algorithms[{i}]"),
                    "\"none\" is never accepted",
                );
                continue;
            }
            match Algorithm::from_str(name) {
                Ok(a) => algorithms.push(a),
                Err(_) => self.err(
                    format!("{section}.algorithms[{i}]"),
                    format!(
                        "unknown algorithm \"{name}\" (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                    ),
                ),
            }
        }
        let families: Vec<_> = algorithms.iter().map(|a| a.family()).collect();
        if families.windows(2).any(|w| w[0] != w[1]) {
            self.err(
                format!("{section}.algorithms"),
                "mixes algorithm families: one key verifies one family (HS*, RS*/PS*, ES*, EdDSA)",
            );
        }
        algorithms
    }

    /// Exactly one of `secret_env`, `public_key_file`, `jwks_url` in `section`, fitting its
    /// algorithms.
    fn key_source(
        &mut self,
        section: &str,
        algorithms: &[Algorithm],
        secret_env: Option<&str>,
        public_key_file: Option<&str>,
        jwks_url: Option<&str>,
    ) -> Option<KeySource> {
        let sources = [
            secret_env.is_some(),
            public_key_file.is_some(),
            jwks_url.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            self.err(
                section,
                "set exactly one of secret_env, public_key_file, jwks_url",
            );
        }
        if let Some(url) = jwks_url {
            if algorithms.iter().any(|a| is_hmac(*a)) {
                self.err(
                    format!("{section}.jwks_url"),
                    "a JWKS holds public keys: use RS*/PS*/ES*/EdDSA algorithms",
                );
            }
            self.http_url(&format!("{section}.jwks_url"), url)
                .then(|| KeySource::Jwks(url.to_string()))
        } else if let Some(name) = secret_env {
            let key = format!("{section}.secret_env");
            if algorithms.iter().any(|a| !is_hmac(*a)) {
                self.err(
                    &key,
                    "a shared secret only verifies HS256/HS384/HS512; use public_key_file",
                );
            }
            self.secret_env(&key, name)
                .map(|s| KeySource::Static(DecodingKey::from_secret(&s.0)))
        } else if let Some(file) = public_key_file {
            self.public_key(
                &format!("{section}.public_key_file"),
                file,
                algorithms.first().copied(),
            )
            .map(KeySource::Static)
        } else {
            None
        }
    }

    /// `[assertion]`: the key files loaded now (a bad key fails the load, not a request).
    fn assertion(&mut self, a: raw::RawAssertion) -> Option<AssertionConfig> {
        if a.issuer.is_empty() {
            self.err(
                "assertion.issuer",
                "must name this proxy (the assertions' iss)",
            );
        }
        if a.ttl > MAX_ASSERTION_TTL {
            self.err("assertion.ttl", "must be at most 10m");
        }
        if a.ttl < Duration::from_secs(2) {
            self.err(
                "assertion.ttl",
                "must be at least 2s (an assertion is reused for half its life)",
            );
        }
        let key_file = PathBuf::from(&a.key_file);
        let previous = a.previous_public_key_file.as_ref().map(PathBuf::from);
        let keys = match crate::signing::Keys::load(&key_file, previous.as_deref()) {
            Ok(k) => Some(k),
            Err(e) => {
                let key = if previous
                    .as_ref()
                    .is_some_and(|p| e.contains(&p.display().to_string()))
                {
                    "assertion.previous_public_key_file"
                } else {
                    "assertion.key_file"
                };
                self.err(key, e);
                None
            }
        };
        let mut files = vec![key_file];
        files.extend(previous);
        Some(AssertionConfig {
            keys: Arc::new(keys?),
            issuer: a.issuer,
            ttl: a.ttl,
            files,
        })
    }

    /// `[backchannel_logout]`: the identity provider whose logout tokens are believed.
    fn backchannel_logout(&mut self, b: raw::RawBackchannel) -> Option<LogoutConfig> {
        let algorithms = self.algorithms("backchannel_logout", &b.algorithms);
        let key = self.key_source(
            "backchannel_logout",
            &algorithms,
            b.secret_env.as_deref(),
            b.public_key_file.as_deref(),
            b.jwks_url.as_deref(),
        );
        if b.issuer.is_empty() {
            self.err(
                "backchannel_logout.issuer",
                "must name the identity provider (its logout tokens' iss)",
            );
        }
        if b.audience.is_empty() || b.audience.iter().any(String::is_empty) {
            self.err(
                "backchannel_logout.audience",
                "must list non-empty audiences (this client's id at the provider)",
            );
        }
        Some(LogoutConfig {
            issuer: b.issuer,
            audience: b.audience,
            algorithms,
            key: key?,
            leeway: Duration::from_secs(30),
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

    fn claim_path(&mut self, key: &str, value: &raw::RawClaimPath) -> ClaimPath {
        let path = format!("token.claims.{key}");
        let alternatives = value.paths();
        if alternatives.is_empty() {
            self.err(&path, "must name at least one claim path");
        }
        let mut out = Vec::new();
        for p in alternatives {
            let parts: Vec<String> = p.split('.').map(str::to_string).collect();
            if parts.iter().any(String::is_empty) {
                self.err(&path, format!("\"{p}\" is not a dotted claim path"));
            }
            out.push(parts);
        }
        ClaimPath(out)
    }

    /// `[token.claims]`; the impersonation fields default to `<impersonation>.sid` and so on.
    fn claims(&mut self, c: &raw::RawClaims) -> ClaimPaths {
        let impersonation = self.claim_path("impersonation", &c.impersonation);
        let under = |field: &str| {
            let base = impersonation
                .0
                .first()
                .map(|p| p.join("."))
                .unwrap_or_default();
            raw::RawClaimPath::One(format!("{base}.{field}"))
        };
        let mut field = |key: &str, given: &Option<raw::RawClaimPath>, default: &str| {
            let value = given.clone().unwrap_or_else(|| under(default));
            self.claim_path(key, &value)
        };
        let impersonation_sid = field("impersonation_sid", &c.impersonation_sid, "sid");
        let impersonator_id = field("impersonator_id", &c.impersonator_id, "admin_id");
        let impersonator_email = field("impersonator_email", &c.impersonator_email, "admin_email");
        let impersonation_reason = field("impersonation_reason", &c.impersonation_reason, "reason");
        let impersonation_mode = field("impersonation_mode", &c.impersonation_mode, "mode");
        ClaimPaths {
            user_id: self.claim_path("user_id", &c.user_id),
            tenant_id: self.claim_path("tenant_id", &c.tenant_id),
            email: self.claim_path("email", &c.email),
            roles: self.claim_path("roles", &c.roles),
            session_id: self.claim_path("session_id", &c.session_id),
            impersonation,
            impersonation_sid,
            impersonator_id,
            impersonator_email,
            impersonation_reason,
            impersonation_mode,
        }
    }

    fn liveness(&mut self, l: raw::RawLiveness) -> Option<LivenessConfig> {
        // Without a backend (`enabled = false`) the URLs are never called.
        if l.enabled {
            if !l.url.contains("{sid}") {
                self.err("liveness.url", "must contain {sid}");
            }
            self.http_url("liveness.url", &l.url.replace("{sid}", "sid"));
            self.http_url("liveness.end_url", &l.end_url.replace("{sid}", "sid"));
        }
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
        Some(LivenessConfig {
            enabled: l.enabled,
            url: l.url,
            end_url: l.end_url,
            bearer,
            forward_cookie: l.forward_cookie,
            cache_ttl: l.cache_ttl,
            ended_ttl: l.ended_ttl,
            timeout: l.timeout,
            on_error: l.on_error,
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

    /// A log sink: `stdout`, `file:PATH`, and (`http`) an http(s) URL.
    fn sink(&mut self, key: &str, sink: &str, http: bool) -> Option<AuditSink> {
        if sink == "stdout" {
            return Some(AuditSink::Stdout);
        }
        if let Some(path) = sink.strip_prefix("file:") {
            if path.is_empty() {
                self.err(
                    key,
                    "file: needs a path, e.g. file:/var/log/sessiongate/audit.jsonl",
                );
                return None;
            }
            return Some(AuditSink::File(PathBuf::from(path)));
        }
        if http && (sink.starts_with("http://") || sink.starts_with("https://")) {
            return self
                .http_url(key, sink)
                .then(|| AuditSink::Http(sink.to_string()));
        }
        let expected = if http {
            "\"stdout\", \"file:PATH\" or an http(s) URL"
        } else {
            "\"off\", \"stdout\" or \"file:PATH\""
        };
        self.err(key, format!("\"{sink}\" is not {expected}"));
        None
    }

    /// One site: a `[[site]]` table (its keys under `prefix`, `site[0].`) or a site file (no
    /// prefix), defined in `file`.
    fn site(&mut self, prefix: &str, s: RawSite, file: &str) -> Option<Arc<SiteConfig>> {
        let p = |k: &str| format!("{prefix}{k}");
        let host = match HostPattern::parse(&s.host) {
            _ if s.host.is_empty() => {
                self.err(p("host"), "is required: the host this site serves");
                None
            }
            Ok(h) => Some(h),
            Err(e) => {
                self.err(p("host"), e);
                None
            }
        };
        let upstream = self.upstream(prefix, &s);
        let tenant_from_host = match s.tenant_from_host.as_deref().map(TenantPattern::parse) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                self.err(p("tenant_from_host"), e);
                None
            }
        };
        let unauthenticated = match (s.unauthenticated, s.login_url) {
            (RawUnauthenticated::Pass, _) => Some(Unauthenticated::Pass),
            (RawUnauthenticated::Reject, _) => Some(Unauthenticated::Reject),
            (RawUnauthenticated::Redirect, Some(url)) => {
                let ok = if url.starts_with('/') && !url.starts_with("//") {
                    true
                } else {
                    self.http_url(&p("login_url"), &url.replace("{url}", "x"))
                };
                ok.then_some(Unauthenticated::Redirect { login_url: url })
            }
            (RawUnauthenticated::Redirect, None) => {
                self.err(
                    p("login_url"),
                    "unauthenticated = \"redirect\" needs login_url",
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
        let deny = self.rules(&p("deny_while_impersonating"), s.deny_while_impersonating);
        let allow = self.rules(&p("allow_while_read_only"), s.allow_while_read_only);
        Some(Arc::new(SiteConfig {
            name: s.host.to_ascii_lowercase(),
            file: file.to_string(),
            host: host?,
            upstream: upstream?,
            tenant_from_host,
            unauthenticated: unauthenticated?,
            policy: SitePolicy {
                public_paths,
                deny,
                read_only: s.impersonation == raw::RawImpersonationMode::ReadOnly,
                allow,
            },
            banner: s.banner,
            after_end_url: s.after_end_url,
            forward_session_cookie: s.forward_session_cookie,
            connect_timeout: s.connect_timeout,
            read_timeout: s.read_timeout,
        }))
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

fn is_css_color(s: &str) -> bool {
    if let Some(hex) = s.strip_prefix('#') {
        return matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphabetic())
}
