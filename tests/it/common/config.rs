//! A typed builder for `sessiongate.toml`, so that each test's config reads as what the test
//! is about:
//!
//! ```text
//! Config::new()
//!     .admin_token()
//!     .liveness(Liveness::on(&backend).cache_ttl("5s"))
//!     .site(Site::new(HOST, up.addr).after_end_url("/ended").forward_session_cookie())
//! ```
//!
//! The builder also knows which environment variables the config names (the HS256 secret, the
//! admin and backend bearers, the Redis URL, the CSRF secret) and hands them to
//! `Sidecar::start`. `@LISTEN@`, `@ADMIN@` and `@AUDIT@` stand for the addresses and the audit
//! file until the sidecar (or [`materialize`]) fills them in. Keys the builder does not know
//! yet go in raw with `.extra(...)` (on `Config`, `Token`, `Liveness` and `Site`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Backend, COOKIE, SECRET, SECRET_ENV, TempDir, fixture, free_addr};

pub const ADMIN_TOKEN_ENV: &str = "SG_TEST_ADMIN_TOKEN";
pub const ADMIN_TOKEN: &str = "admin-token-7f3e9a0c5d21";
pub const BACKEND_TOKEN_ENV: &str = "SG_TEST_BACKEND_TOKEN";
pub const BACKEND_TOKEN: &str = "backend-token-4b8d2e61";
pub const REDIS_URL_ENV: &str = "SG_TEST_REDIS_URL";
pub const CSRF_SECRET_ENV: &str = "SG_TEST_CSRF_SECRET";
pub const CSRF_SECRET: &str = "csrf-secret-shared-by-every-replica-0123456789";

type Env = Vec<(String, String)>;

fn env_pair(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// `key = "value"`.
fn quoted(key: &str, value: &str) -> String {
    format!("{key} = \"{value}\"")
}

/// `["a", "b"]`.
fn list(values: &[&str]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The `[token]` section.
#[derive(Clone, Debug)]
pub struct Token {
    algorithm: &'static str,
    /// Where the key comes from: `secret_env`, `public_key_file` or `jwks_url`.
    key: String,
    cookie_domain: Option<&'static str>,
    leeway: String,
    lines: Vec<String>,
    env: Env,
}

impl Token {
    fn with_key(algorithm: &'static str, key: String) -> Token {
        Token {
            algorithm,
            key,
            cookie_domain: Some(".nixtech.app"),
            leeway: "30s".into(),
            lines: Vec::new(),
            env: Vec::new(),
        }
    }

    /// HS256 with [`SECRET`] from [`SECRET_ENV`].
    pub fn hs256() -> Token {
        Token {
            env: vec![env_pair(SECRET_ENV, SECRET)],
            ..Token::with_key("HS256", quoted("secret_env", SECRET_ENV))
        }
    }

    /// RS256 with the fixture public key `rsa_public.pem`.
    pub fn rs256() -> Token {
        Token::with_key("RS256", String::new()).public_key_file(&fixture("rsa_public.pem"))
    }

    /// RS256 with the keys of a JWKS endpoint.
    pub fn jwks(url: &str) -> Token {
        Token::with_key("RS256", quoted("jwks_url", url))
    }

    pub fn public_key_file(mut self, path: &Path) -> Token {
        self.key = quoted("public_key_file", &path.display().to_string());
        self
    }

    pub fn leeway(mut self, leeway: &str) -> Token {
        self.leeway = leeway.into();
        self
    }

    pub fn issuer(self, issuer: &str) -> Token {
        self.extra(&quoted("issuer", issuer))
    }

    pub fn audience(self, audience: &[&str]) -> Token {
        self.extra(&format!("audience = {}", list(audience)))
    }

    /// No `cookie_domain`: the session cookie (and the one that clears it) is host-only.
    pub fn host_only_cookie(mut self) -> Token {
        self.cookie_domain = None;
        self
    }

    /// Raw `key = value` lines for `[token]`.
    pub fn extra(mut self, lines: &str) -> Token {
        self.lines.push(lines.to_string());
        self
    }

    fn toml(&self) -> String {
        let mut s = format!("[token]\n{}\n", quoted("cookie", COOKIE));
        if let Some(d) = self.cookie_domain {
            s.push_str(&format!("{}\n", quoted("cookie_domain", d)));
        }
        s.push_str(&format!("algorithms = {}\n", list(&[self.algorithm])));
        s.push_str(&format!("{}\n", self.key));
        s.push_str(&format!("{}\n", quoted("leeway", &self.leeway)));
        for l in &self.lines {
            s.push_str(&format!("{l}\n"));
        }
        s
    }
}

/// The `[liveness]` section.
#[derive(Clone, Debug)]
pub struct Liveness {
    lines: Vec<String>,
    env: Env,
}

impl Liveness {
    /// `url` and `end_url` on `backend`.
    pub fn on(backend: &Backend) -> Liveness {
        Liveness {
            lines: vec![
                quoted("url", &backend.url()),
                quoted("end_url", &backend.end_url()),
            ],
            env: Vec::new(),
        }
    }

    fn line(mut self, key: &str, value: &str) -> Liveness {
        self.lines.push(quoted(key, value));
        self
    }

    pub fn cache_ttl(self, ttl: &str) -> Liveness {
        self.line("cache_ttl", ttl)
    }

    pub fn timeout(self, timeout: &str) -> Liveness {
        self.line("timeout", timeout)
    }

    /// `deny` or `stale`.
    pub fn on_error(self, mode: &str) -> Liveness {
        self.line("on_error", mode)
    }

    pub fn stale_ttl(self, ttl: &str) -> Liveness {
        self.line("stale_ttl", ttl)
    }

    pub fn ended_ttl(self, ttl: &str) -> Liveness {
        self.line("ended_ttl", ttl)
    }

    /// `bearer_env`: the backend is asked with `Authorization: Bearer` [`BACKEND_TOKEN`].
    pub fn bearer(mut self) -> Liveness {
        self.env.push(env_pair(BACKEND_TOKEN_ENV, BACKEND_TOKEN));
        self.line("bearer_env", BACKEND_TOKEN_ENV)
    }

    /// `forward_cookie = true`.
    pub fn forward_cookie(self) -> Liveness {
        self.extra("forward_cookie = true")
    }

    /// `redis_url_env`, the variable holding `url`: revocations fan out through Redis.
    pub fn redis(mut self, url: &str) -> Liveness {
        self.env.push(env_pair(REDIS_URL_ENV, url));
        self.line("redis_url_env", REDIS_URL_ENV)
    }

    /// Raw `key = value` lines for `[liveness]`.
    pub fn extra(mut self, lines: &str) -> Liveness {
        self.lines.push(lines.to_string());
        self
    }
}

/// One `[[site]]`.
#[derive(Clone, Debug)]
pub struct Site {
    lines: Vec<String>,
    /// Sub-tables (`[[site.deny_while_impersonating]]`), after the site's own keys.
    tables: Vec<String>,
}

impl Site {
    pub fn new(host: &str, upstream: SocketAddr) -> Site {
        Site {
            lines: vec![
                quoted("host", host),
                quoted("upstream", &upstream.to_string()),
            ],
            tables: Vec::new(),
        }
    }

    /// `upstream` as written (`https://host:port`, `http://host:port`).
    pub fn upstream(mut self, upstream: &str) -> Site {
        self.lines[1] = quoted("upstream", upstream);
        self
    }

    /// For an `https://` upstream: trust these roots, and verify this name.
    pub fn upstream_tls(self, ca_file: &Path, sni: &str) -> Site {
        self.line("upstream_ca_file", &ca_file.display().to_string())
            .line("upstream_sni", sni)
    }

    fn line(mut self, key: &str, value: &str) -> Site {
        self.lines.push(quoted(key, value));
        self
    }

    /// `pass`, `reject` or `redirect`.
    pub fn unauthenticated(self, mode: &str) -> Site {
        self.line("unauthenticated", mode)
    }

    pub fn login_url(self, url: &str) -> Site {
        self.line("login_url", url)
    }

    pub fn public_paths(self, paths: &[&str]) -> Site {
        self.extra(&format!("public_paths = {}", list(paths)))
    }

    pub fn tenant_from_host(self, pattern: &str) -> Site {
        self.line("tenant_from_host", pattern)
    }

    pub fn after_end_url(self, url: &str) -> Site {
        self.line("after_end_url", url)
    }

    /// `banner = false`.
    pub fn without_banner(self) -> Site {
        self.extra("banner = false")
    }

    /// `forward_session_cookie = true`.
    pub fn forward_session_cookie(self) -> Site {
        self.extra("forward_session_cookie = true")
    }

    /// A deny-while-impersonating rule for `methods` on `path`.
    pub fn deny(mut self, methods: &[&str], path: &str) -> Site {
        self.tables.push(format!(
            "[[site.deny_while_impersonating]]\nmethods = {}\n{}\n",
            list(methods),
            quoted("path", path)
        ));
        self
    }

    /// A deny-while-impersonating rule for every method on `path`.
    pub fn deny_every_method(mut self, path: &str) -> Site {
        self.tables.push(format!(
            "[[site.deny_while_impersonating]]\n{}\n",
            quoted("path", path)
        ));
        self
    }

    /// Raw `key = value` lines for this `[[site]]`.
    pub fn extra(mut self, lines: &str) -> Site {
        self.lines.push(lines.to_string());
        self
    }

    /// This `[[site]]` as TOML (to append to a config file).
    pub fn toml(&self) -> String {
        format!(
            "[[site]]\n{}\n{}\n",
            self.lines.join("\n"),
            self.tables.join("\n")
        )
    }

    /// This site as a file of `sites_dir`: its keys at the top level, its sub-tables as
    /// `[[deny_while_impersonating]]`.
    pub fn file_toml(&self) -> String {
        format!(
            "{}\n{}\n",
            self.lines.join("\n"),
            self.tables.join("\n").replace("[[site.", "[[")
        )
    }
}

/// A whole `sessiongate.toml`.
#[derive(Clone, Debug)]
pub struct Config {
    /// More `key = value` lines for `[listen]`.
    listen: Vec<String>,
    /// `[listen.tls]`: (cert_file, key_file) pairs.
    tls: Vec<(String, String)>,
    admin: Vec<String>,
    token: Token,
    liveness: Option<Liveness>,
    banner: Vec<String>,
    audit_sink: String,
    audit_queue: Option<usize>,
    extra: Vec<String>,
    sites: Vec<Site>,
    /// `sites_dir`, and the files (name, site) the sidecar writes there before it starts.
    sites_dir: Option<String>,
    site_files: Vec<(String, Site)>,
    env: Env,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// HS256 tokens, audit to a file, no liveness, no sites.
    pub fn new() -> Config {
        Config {
            listen: Vec::new(),
            tls: Vec::new(),
            admin: Vec::new(),
            token: Token::hs256(),
            liveness: None,
            banner: Vec::new(),
            audit_sink: "file:@AUDIT@".into(),
            audit_queue: None,
            extra: Vec::new(),
            sites: Vec::new(),
            sites_dir: None,
            site_files: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `[listen] header_timeout`: how long a new connection may take to say what it speaks.
    pub fn header_timeout(mut self, timeout: &str) -> Config {
        self.listen.push(quoted("header_timeout", timeout));
        self
    }

    /// `[listen] max_connections`: open client connections on the public listener.
    pub fn max_connections(mut self, max: usize) -> Config {
        self.listen.push(format!("max_connections = {max}"));
        self
    }

    pub fn token(mut self, token: Token) -> Config {
        self.token = token;
        self
    }

    /// Raw `key = value` lines for `[listen]`.
    pub fn listen(mut self, lines: &str) -> Config {
        self.listen.push(lines.to_string());
        self
    }

    /// `listen.trusted_proxies`.
    pub fn trusted_proxies(self, cidrs: &[&str]) -> Config {
        self.listen(&format!("trusted_proxies = {}", list(cidrs)))
    }

    /// `[listen.tls]` on the sidecar's `tls_addr`, with these certificate and key files.
    pub fn tls(mut self, pairs: &[(&Path, &Path)]) -> Config {
        self.tls = pairs
            .iter()
            .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
            .collect();
        self
    }

    /// `[admin] token_env`: the revoke endpoint takes `Bearer` [`ADMIN_TOKEN`].
    pub fn admin_token(mut self) -> Config {
        self.admin.push(quoted("token_env", ADMIN_TOKEN_ENV));
        self.with_env(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
    }

    pub fn liveness(mut self, liveness: Liveness) -> Config {
        self.liveness = Some(liveness);
        self
    }

    /// `[banner] csrf_secret_env`: every replica signs the End form with [`CSRF_SECRET`].
    pub fn banner_csrf_secret(mut self) -> Config {
        self.banner.push(quoted("csrf_secret_env", CSRF_SECRET_ENV));
        self.with_env(CSRF_SECRET_ENV, CSRF_SECRET)
    }

    /// `[audit] sink` (a file under the sidecar's directory by default).
    pub fn audit_sink(mut self, sink: &str) -> Config {
        self.audit_sink = sink.into();
        self
    }

    pub fn audit_queue(mut self, queue: usize) -> Config {
        self.audit_queue = Some(queue);
        self
    }

    pub fn site(mut self, site: Site) -> Config {
        self.sites.push(site);
        self
    }

    /// `sites_dir` (relative to the config file's directory, or absolute).
    pub fn sites_dir(mut self, dir: &str) -> Config {
        self.sites_dir = Some(dir.to_string());
        self
    }

    /// A file `name` in `sites_dir` holding `site`, written before the sidecar starts (see
    /// [`Config::write_site_files`]).
    pub fn site_file(mut self, name: &str, site: Site) -> Config {
        self.site_files.push((name.to_string(), site));
        self
    }

    /// Creates `sites_dir` (when the config has one) for a config file in `config_dir`, with the
    /// files added by [`Config::site_file`]; its path.
    pub fn write_site_files(&self, config_dir: &Path) -> Option<PathBuf> {
        let dir = config_dir.join(self.sites_dir.as_ref()?);
        std::fs::create_dir_all(&dir).expect("create sites_dir");
        for (name, site) in &self.site_files {
            std::fs::write(dir.join(name), site.file_toml()).expect("write a site file");
        }
        Some(dir)
    }

    /// Raw TOML: whole tables, placed before the sites. The escape hatch for sections the
    /// builder does not know yet; no test needs one today.
    #[allow(dead_code)]
    pub fn extra(mut self, toml: &str) -> Config {
        self.extra.push(toml.to_string());
        self
    }

    /// One more variable in the sidecar's environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Config {
        self.env.push(env_pair(key, value));
        self
    }

    /// The environment this config needs (and any added with [`Config::with_env`]).
    pub fn env(&self) -> Env {
        let mut env = self.token.env.clone();
        if let Some(l) = &self.liveness {
            env.extend(l.env.iter().cloned());
        }
        env.extend(self.env.iter().cloned());
        env
    }

    pub fn toml(&self) -> String {
        let mut s = String::new();
        if let Some(dir) = &self.sites_dir {
            s.push_str(&format!("{}\n\n", quoted("sites_dir", dir)));
        }
        s.push_str("[listen]\naddr = \"@LISTEN@\"\n");
        for l in &self.listen {
            s.push_str(&format!("{l}\n"));
        }
        if !self.tls.is_empty() {
            s.push_str("\n[listen.tls]\naddr = \"@TLS@\"\n");
            for (cert, key) in &self.tls {
                s.push_str(&format!(
                    "[[listen.tls.certificates]]\n{}\n{}\n",
                    quoted("cert_file", cert),
                    quoted("key_file", key)
                ));
            }
        }
        s.push_str("\n[admin]\naddr = \"@ADMIN@\"\n");
        for l in &self.admin {
            s.push_str(&format!("{l}\n"));
        }
        s.push('\n');
        s.push_str(&self.token.toml());
        s.push('\n');
        if let Some(l) = &self.liveness {
            s.push_str(&format!("[liveness]\n{}\n\n", l.lines.join("\n")));
        }
        if !self.banner.is_empty() {
            s.push_str(&format!("[banner]\n{}\n\n", self.banner.join("\n")));
        }
        s.push_str(&format!("[audit]\n{}\n", quoted("sink", &self.audit_sink)));
        if let Some(q) = self.audit_queue {
            s.push_str(&format!("queue = {q}\n"));
        }
        s.push('\n');
        for e in &self.extra {
            s.push_str(&format!("{e}\n\n"));
        }
        for site in &self.sites {
            s.push_str(&site.toml());
            s.push('\n');
        }
        s
    }
}

/// The addresses a sidecar listens on.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// `[listen.tls]`, when the config has one.
    pub tls: SocketAddr,
}

impl Addrs {
    pub fn fresh() -> Addrs {
        Addrs {
            listen: free_addr(),
            admin: free_addr(),
            tls: free_addr(),
        }
    }
}

/// Fills the `@LISTEN@`, `@TLS@`, `@ADMIN@` and `@AUDIT@` placeholders.
pub fn fill_placeholders(toml: &str, addrs: Addrs, audit: &Path) -> String {
    toml.replace("@LISTEN@", &addrs.listen.to_string())
        .replace("@TLS@", &addrs.tls.to_string())
        .replace("@ADMIN@", &addrs.admin.to_string())
        .replace("@AUDIT@", &audit.display().to_string())
}

/// The config with fresh addresses and an audit file in `dir`, for a config that is only
/// checked, never run.
pub fn materialize(config: &Config, dir: &TempDir) -> String {
    fill_placeholders(
        &config.toml(),
        Addrs::fresh(),
        &dir.path().join("audit.jsonl"),
    )
}
