//! The TOML file as written. Nothing here is trusted: `config::Config::from_raw` validates every
//! field in one place. Unknown keys are refused by serde (`deny_unknown_fields`), durations are
//! parsed by humantime so `"300ms"`, `"5s"` and `"30m"` all work.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub admin: RawAdmin,
    pub token: Option<RawToken>,
    #[serde(default)]
    pub liveness: RawLiveness,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub banner: RawBanner,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub site: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    #[serde(default = "default_listen_addr")]
    pub addr: String,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long a new connection may take to show what it speaks before it is answered 408
    /// (sent nothing) or closed (stopped mid-preface).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open client connections allowed on the public listener, per process.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            addr: default_listen_addr(),
            grace_period: default_grace(),
            header_timeout: default_header_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_listen_addr() -> String {
    "0.0.0.0:8080".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_addr")]
    pub addr: String,
    pub token_env: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            addr: default_admin_addr(),
            token_env: None,
        }
    }
}

fn default_admin_addr() -> String {
    "127.0.0.1:9090".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    #[serde(default = "default_cookie")]
    pub cookie: String,
    pub cookie_domain: Option<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    pub secret_env: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default)]
    pub claims: RawClaims,
}

fn default_cookie() -> String {
    "nix_session".into()
}
fn default_algorithms() -> Vec<String> {
    vec!["HS256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    #[serde(default = "d_sub")]
    pub user_id: String,
    #[serde(default = "d_tenant")]
    pub tenant_id: String,
    #[serde(default = "d_email")]
    pub email: String,
    #[serde(default = "d_roles")]
    pub roles: String,
    #[serde(default = "d_imp")]
    pub impersonation: String,
}

impl Default for RawClaims {
    fn default() -> Self {
        RawClaims {
            user_id: d_sub(),
            tenant_id: d_tenant(),
            email: d_email(),
            roles: d_roles(),
            impersonation: d_imp(),
        }
    }
}

fn d_sub() -> String {
    "sub".into()
}
fn d_tenant() -> String {
    "tenant_id".into()
}
fn d_email() -> String {
    "email".into()
}
fn d_roles() -> String {
    "roles".into()
}
fn d_imp() -> String {
    "imp".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLiveness {
    #[serde(default = "d_live_url")]
    pub url: String,
    #[serde(default = "d_end_url")]
    pub end_url: String,
    pub bearer_env: Option<String>,
    #[serde(default)]
    pub forward_cookie: bool,
    #[serde(default = "d_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "d_ended_ttl", with = "humantime_serde")]
    pub ended_ttl: Duration,
    #[serde(default = "d_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "d_on_error")]
    pub on_error: String,
    #[serde(default = "d_stale_ttl", with = "humantime_serde")]
    pub stale_ttl: Duration,
    pub redis_url_env: Option<String>,
}

impl Default for RawLiveness {
    fn default() -> Self {
        RawLiveness {
            url: d_live_url(),
            end_url: d_end_url(),
            bearer_env: None,
            forward_cookie: false,
            cache_ttl: d_cache_ttl(),
            ended_ttl: d_ended_ttl(),
            timeout: d_timeout(),
            on_error: d_on_error(),
            stale_ttl: d_stale_ttl(),
            redis_url_env: None,
        }
    }
}

fn d_live_url() -> String {
    "http://127.0.0.1:4000/internal/impersonations/{sid}".into()
}
fn d_end_url() -> String {
    "http://127.0.0.1:4000/tenant/auth/end-impersonation".into()
}
fn d_cache_ttl() -> Duration {
    Duration::from_secs(5)
}
fn d_ended_ttl() -> Duration {
    Duration::from_secs(600)
}
fn d_timeout() -> Duration {
    Duration::from_millis(300)
}
fn d_on_error() -> String {
    "deny".into()
}
fn d_stale_ttl() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    #[serde(default = "d_prefix")]
    pub prefix: String,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders { prefix: d_prefix() }
    }
}

fn d_prefix() -> String {
    "X-Auth-".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBanner {
    pub csrf_secret_env: Option<String>,
    pub color: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default = "d_sink")]
    pub sink: String,
    /// Events held in memory before new ones are dropped (and counted).
    #[serde(default = "d_queue")]
    pub queue: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            sink: d_sink(),
            queue: d_queue(),
        }
    }
}

fn d_queue() -> usize {
    10_000
}

fn d_sink() -> String {
    "stdout".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub host: String,
    pub upstream: String,
    pub tenant_from_host: Option<String>,
    #[serde(default = "d_unauth")]
    pub unauthenticated: String,
    pub login_url: Option<String>,
    #[serde(default)]
    pub public_paths: Vec<String>,
    #[serde(default = "d_true")]
    pub banner: bool,
    #[serde(default = "d_after_end")]
    pub after_end_url: String,
    #[serde(default)]
    pub forward_session_cookie: bool,
    #[serde(default = "d_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "d_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(default)]
    pub deny_while_impersonating: Vec<RawDenyRule>,
}

fn d_unauth() -> String {
    "pass".into()
}
fn d_true() -> bool {
    true
}
fn d_after_end() -> String {
    "/".into()
}
fn d_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn d_read_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDenyRule {
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
}
