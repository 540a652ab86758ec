//! The config: `raw` is the TOML as written, `validate` checks it in exactly one place and
//! builds the validated model below, `locate` maps a key path to its line:column for errors.
//! Every error names the key path and, when the file has that key, its line:column.

mod locate;
pub mod raw;
mod sites_dir;
mod validate;

use crate::policy::{SitePolicy, Unauthenticated};
use crate::site::{HostPattern, TenantPattern};
use jsonwebtoken::{Algorithm, DecodingKey};
pub use raw::OnError;
use raw::{RawConfig, RawSite};
pub use sites_dir::site_files;
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
    /// The main file's `[[site]]` tables first, then the files of `sites_dir` in name order.
    pub sites: Vec<Arc<SiteConfig>>,
    /// `sites_dir`, resolved against the main file's directory (watched for changes).
    pub sites_dir: Option<PathBuf>,
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
    /// The file that defines it, named as in error messages: the main file, or its own file
    /// in `sites_dir`.
    pub file: String,
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
    /// The site file (in `sites_dir`) it is in; `None`: the main file.
    pub file: Option<String>,
    /// Key path such as `site[0].upstream` (in a site file: `upstream`); empty for whole-file
    /// problems.
    pub path: String,
    pub message: String,
    /// 1-based line and column in the file: of the value when the file has it, else of the
    /// key (or of its closest table).
    pub position: Option<(usize, usize)>,
}

/// Every problem found in a config file and its site files, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The main file.
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
            let file = e.file.as_deref().unwrap_or(&self.file);
            if e.path.is_empty() {
                write!(f, "{file}:{line}:{col}: {}", e.message)?;
            } else {
                write!(f, "{file}:{line}:{col}: {}: {}", e.path, e.message)?;
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

    /// Reads, parses and validates a config file (and its `sites_dir`) against the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, &ProcessEnv)
    }

    /// [`Config::load`] with secrets from `env`.
    pub fn load_with(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                file: None,
                path: String::new(),
                message: format!("cannot read config file: {e}"),
                position: None,
            }],
        })?;
        Config::from_main(Source { name: file, text }, path, env)
    }

    /// Parses and validates config text. `file` names it in messages, and `sites_dir` is read
    /// relative to its directory.
    pub fn parse(src: &str, file: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let main = Source {
            name: file.to_string(),
            text: src.to_string(),
        };
        Config::from_main(main, Path::new(file), env)
    }

    /// The directory of site files the config at `path` names now, if it parses that far: a
    /// reload that fails still watches the directory its file asks for.
    pub fn sites_dir_named(path: &Path) -> Option<PathBuf> {
        let text = std::fs::read_to_string(path).ok()?;
        let raw: RawConfig = toml::from_str(&text).ok()?;
        raw.sites_dir
            .filter(|d| !d.is_empty())
            .map(|d| base_dir(path).join(d))
    }

    fn from_main(main: Source, main_path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: main.name.clone(),
            errors,
        };
        let raw: RawConfig = match toml::from_str(&main.text) {
            Ok(raw) => raw,
            Err(e) => return Err(fail(vec![syntax_error(None, &main.text, &e)])),
        };
        let mut errors = Vec::new();
        let dir = raw
            .sites_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(|d| read_sites_dir(base_dir(main_path).join(d), main_path, &mut errors));
        // The texts, to place the validator's errors (which name a file and a key path).
        let texts: Vec<Source> = dir
            .iter()
            .flat_map(|d| d.files.iter().map(|(source, _)| source.clone()))
            .collect();
        let order: Vec<String> = dir.iter().flat_map(|d| d.listed.clone()).collect();
        let (config, more) = validate::validate(raw, &main, dir, env);
        errors.extend(more);
        if errors.is_empty()
            && let Some(config) = config
        {
            return Ok(config);
        }
        for e in errors.iter_mut().filter(|e| e.position.is_none()) {
            let text = match &e.file {
                None => Some(&main.text),
                Some(name) => texts.iter().find(|t| &t.name == name).map(|t| &t.text),
            };
            e.position = text.and_then(|t| locate::position_of(t, &e.path));
        }
        // The main file first, then the site files in the order they are read.
        let file_rank = |e: &ConfigError| match &e.file {
            None => 0,
            Some(name) => 1 + order.iter().position(|n| n == name).unwrap_or(order.len()),
        };
        errors.sort_by_key(|e| (file_rank(e), e.position.unwrap_or((usize::MAX, 0))));
        Err(fail(errors))
    }
}

/// Config text and the name it has in messages.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub name: String,
    pub text: String,
}

/// `sites_dir` as read: its path, the name of every site file found (in the order they are
/// read), and the ones that parsed (the others are reported already).
pub(crate) struct SitesDir {
    pub path: PathBuf,
    /// The directory could not be listed (reported already).
    pub unreadable: bool,
    pub listed: Vec<String>,
    pub files: Vec<(Source, RawSite)>,
}

/// The directory relative paths in a config file are read against.
fn base_dir(main_path: &Path) -> &Path {
    main_path.parent().unwrap_or(Path::new(""))
}

/// Lists and parses the site files of `path`; what cannot be read or parsed becomes an error
/// in `errors`. The main file itself is skipped when `sites_dir` is its own directory.
fn read_sites_dir(path: PathBuf, main_path: &Path, errors: &mut Vec<ConfigError>) -> SitesDir {
    let mut dir = SitesDir {
        unreadable: false,
        listed: Vec::new(),
        files: Vec::new(),
        path,
    };
    let listed = match site_files(&dir.path) {
        Ok(l) => l,
        Err(e) => {
            errors.push(ConfigError {
                file: None,
                path: "sites_dir".into(),
                message: format!("cannot read the directory \"{}\": {e}", dir.path.display()),
                position: None,
            });
            dir.unreadable = true;
            return dir;
        }
    };
    let main_real = std::fs::canonicalize(main_path).ok();
    for file in listed {
        if main_real.is_some() && std::fs::canonicalize(&file).ok() == main_real {
            continue;
        }
        let name = file.display().to_string();
        dir.listed.push(name.clone());
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: Some(name),
                    path: String::new(),
                    message: format!("cannot read site file: {e}"),
                    position: None,
                });
                continue;
            }
        };
        match toml::from_str::<RawSite>(&text) {
            Ok(raw) => dir.files.push((Source { name, text }, raw)),
            Err(e) => errors.push(syntax_error(Some(name), &text, &e)),
        }
    }
    dir
}

/// A TOML or serde error (bad syntax, an unknown key, a wrong type) at its key and position.
fn syntax_error(file: Option<String>, text: &str, e: &toml::de::Error) -> ConfigError {
    let (path, position) = match e.span() {
        Some(span) => (
            locate::path_at(text, span.start),
            Some(locate::line_col(text, span.start)),
        ),
        None => (String::new(), None),
    };
    ConfigError {
        file,
        path,
        message: e.message().trim().to_string(),
        position,
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

    #[test]
    fn the_nixtech_directory_layout_holds_the_same_sites_as_the_single_file() {
        let sites = |file: &str| -> Vec<String> {
            let config =
                Config::load_with(Path::new(file), &env()).unwrap_or_else(|e| panic!("{e}"));
            config
                .sites
                .iter()
                .map(|s| {
                    let site = SiteConfig {
                        file: String::new(),
                        ..SiteConfig::clone(s)
                    };
                    format!("{site:?}")
                })
                .collect()
        };
        let layout = sites("config/nixtech/sessiongate.toml");
        assert_eq!(layout.len(), 3);
        assert_eq!(layout, sites("config/nixtech.toml"));
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
            vec![("token.secret_env".to_string(), Some((2, 14)))]
        );
        let src = "[token]\nsecret_env = \"S\"\n[[site]]\nhost = \"a.*.b\"\nupstream = \"nope\"\nunauthenticated = \"redirect\"\n";
        assert_eq!(
            errors(src),
            vec![
                ("site[0].login_url".to_string(), Some((3, 1))),
                ("site[0].host".to_string(), Some((4, 8))),
                ("site[0].upstream".to_string(), Some((5, 12))),
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

    /// A fresh directory holding `files` (`name`, contents; `name` may have a folder).
    fn tree(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sg-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    const MAIN: &str = "sites_dir = \"sites.d\"\n[token]\nsecret_env = \"S\"\n";

    fn load(dir: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(&dir.join("main.toml"), &env())
    }

    fn load_err(dir: &Path) -> String {
        match load(dir) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_visible_toml_file_of_sites_dir_is_a_site_beside_the_main_files_tables() {
        let dir = tree(&[
            ("main.toml", &format!("{MAIN}{SITE}")),
            (
                "sites.d/b.toml",
                "host = \"b.example\"\nupstream = \"127.0.0.1:2\"\nunauthenticated = \"reject\"\n\
                 [[deny_while_impersonating]]\nmethods = [\"post\"]\npath = \"/settings/*\"\n\
                 [[allow_while_read_only]]\nmethods = [\"POST\"]\npath = \"/graphql\"\n",
            ),
            (
                "sites.d/a.toml",
                "host = \"*.a.example\"\nupstream = \"127.0.0.1:3\"\n",
            ),
            ("sites.d/.b.toml.tmp", "host = \"half-writ"),
            ("sites.d/README.md", "not a site"),
        ]);
        let config = load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let sites: Vec<(&str, String)> = config
            .sites
            .iter()
            .map(|s| {
                let file = Path::new(&s.file).strip_prefix(&dir).expect("under dir");
                (s.name.as_str(), file.display().to_string())
            })
            .collect();
        assert_eq!(
            sites,
            [
                ("a.example", "main.toml".to_string()),
                ("*.a.example", "sites.d/a.toml".to_string()),
                ("b.example", "sites.d/b.toml".to_string()),
            ]
        );
        let b = &config.sites[2];
        assert_eq!(b.unauthenticated, Unauthenticated::Reject);
        assert_eq!(b.policy.deny.len(), 1);
        assert_eq!(b.policy.deny[0].methods, ["POST"]);
        assert_eq!(b.policy.allow.len(), 1);
        assert_eq!(config.sites_dir, Some(dir.join("sites.d")));

        // Without [[site]] in the main file: the directory's sites are enough.
        std::fs::write(dir.join("main.toml"), MAIN).expect("write");
        assert_eq!(load(&dir).map(|c| c.sites.len()).ok(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_site_files_errors_name_that_file_and_the_key_inside_it() {
        let dir = tree(&[
            ("main.toml", MAIN),
            (
                "sites.d/cafe.toml",
                "host = \"cafe.example\"\n# the app\nupstream = \"nope\"\n\
                 [[deny_while_impersonating]]\npath = \"no-slash\"\n\
                 [[allow_while_read_only]]\nmethods = [\"P0ST\"]\npath = \"/x\"\n",
            ),
            (
                "sites.d/shop.toml",
                "host = \"shop.example\"\nupstream = \"127.0.0.1:1\"\ncolour = 1\n",
            ),
            ("sites.d/zz.toml", "host = \"zz.example\"\nupstream = [\n"),
        ]);
        let err = load_err(&dir);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 5, "{err}");
        let cafe = dir.join("sites.d/cafe.toml").display().to_string();
        assert!(
            lines[0].starts_with(&format!("{cafe}:3:12: upstream: ")),
            "{err}"
        );
        assert!(
            lines[1].starts_with(&format!("{cafe}:5:8: deny_while_impersonating[0].path: ")),
            "{err}"
        );
        assert!(
            lines[2].starts_with(&format!("{cafe}:7:11: allow_while_read_only[0].methods: ")),
            "{err}"
        );
        assert!(
            lines[3].contains("sites.d/shop.toml:3:1: colour: unknown field"),
            "{err}"
        );
        assert!(
            lines[4].contains("sites.d/zz.toml:2:13: unclosed array"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_host_defined_twice_names_both_places() {
        let dir = tree(&[
            ("main.toml", &format!("{MAIN}{SITE}")),
            (
                "sites.d/a.toml",
                "host = \"x.example\"\nupstream = \"127.0.0.1:1\"\n",
            ),
            (
                "sites.d/b.toml",
                "upstream = \"127.0.0.1:1\"\nhost = \"X.example\"\n",
            ),
            (
                "sites.d/c.toml",
                "host = \"a.example\"\nupstream = \"127.0.0.1:1\"\n",
            ),
        ]);
        let err = load_err(&dir);
        let path = |name: &str| dir.join(name).display().to_string();
        assert_eq!(
            err,
            format!(
                "{}:2:8: host: \"x.example\" is already defined at {}:1:8\n\
                 {}:1:8: host: \"a.example\" is already defined at {}:5:8",
                path("sites.d/b.toml"),
                path("sites.d/a.toml"),
                path("sites.d/c.toml"),
                path("main.toml"),
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sites_dir_must_be_a_directory_and_there_must_be_a_site() {
        let dir = tree(&[("main.toml", MAIN)]);
        let main = dir.join("main.toml").display().to_string();
        let err = load_err(&dir);
        assert!(
            err.starts_with(&format!(
                "{main}:1:13: sites_dir: cannot read the directory"
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        std::fs::create_dir(dir.join("sites.d")).expect("dir");
        std::fs::write(dir.join("sites.d/.hidden.toml"), SITE).expect("write");
        let err = load_err(&dir);
        assert!(
            err.starts_with(&format!("{main}:1:13: sites_dir: holds no site file")),
            "{err}"
        );

        std::fs::write(
            dir.join("main.toml"),
            format!("sites_dir = \"\"\n{}", &MAIN[22..]),
        )
        .expect("write");
        let err = load_err(&dir);
        assert!(
            err.contains(":1:13: sites_dir: must name a directory"),
            "{err}"
        );

        // The main file's own directory: the main file is not read as a site.
        let main_toml = format!("sites_dir = \".\"\n{}", &MAIN[22..]);
        std::fs::write(dir.join("main.toml"), &main_toml).expect("write");
        std::fs::write(dir.join("a.toml"), SITE.trim_start_matches("[[site]]\n")).expect("write");
        assert_eq!(load(&dir).map(|c| c.sites.len()).ok(), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
