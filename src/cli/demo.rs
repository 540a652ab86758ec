//! `sessiongate demo`: everything on loopback in one process, no files or env. A sample tenant
//! app, an in-memory platform backend (liveness, end, sign-in links, a page of live
//! impersonations with Revoke), and the proxy in front with a generated config, written in the
//! recommended layout (a main file and `sites.d/` with one file per site) to a new directory
//! under the system's temp dir, so that editing or adding a site file shows a reload.
//!
//! Hosts are `cafe.localhost`: browsers resolve `*.localhost` to loopback and treat it as a
//! secure context, so the platform's `Secure` cookie works over plain http. Cookies are scoped
//! by host, not port, so the backend (its own port) can sign users in for the app.

use crate::token::{MintArgs, mint};
use async_trait::async_trait;
use base64::Engine;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::RunArgs;
use pingora::services::listening::Service;
use sessiongate::ConfigSource;
use sessiongate::config::Config;
use sessiongate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HOST: &str = "cafe.localhost";
const SECRET: &str = "sessiongate-demo-secret-not-for-production";
const ADMIN_TOKEN: &str = "sessiongate-demo-admin-token";

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn respond(
    status: u16,
    content_type: &str,
    body: impl Into<Vec<u8>>,
    extra: &[(&str, String)],
) -> Response<Vec<u8>> {
    let body = body.into();
    let mut b = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len().to_string())
        .header("cache-control", "no-store");
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(body.clone()).unwrap_or_else(|_| Response::new(body))
}

fn esc(s: &str) -> String {
    sessiongate::banner::markup::escape(s)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:0}}main{{padding:24px;max-width:760px}}\
nav a{{margin-right:12px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
.muted{{color:#666}}</style></head><body class=\"demo\"><main><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    )
}

async fn read_body(s: &mut ServerSession) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = s.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            break;
        }
    }
    body
}

/// The sample tenant app: it trusts the identity headers, like an unmodified app would.
struct SampleApp;

fn identity_headers(s: &ServerSession) -> BTreeMap<String, String> {
    s.req_header()
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-auth-"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[async_trait]
impl ServeHttp for SampleApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let ids = identity_headers(s);
        let path = s.req_header().uri.path().to_string();
        let method = s.req_header().method.to_string();
        let nav = "<nav><a href=\"/\">Home</a><a href=\"/orders\">Orders</a><a href=\"/strict\">Strict CSP page</a>\
<a href=\"/api/whoami\">/api/whoami (JSON)</a><a href=\"/settings/password\">Change password</a></nav>";
        let who = if ids.is_empty() {
            "<p class=\"muted\">No identity headers: you are not signed in.</p>".to_string()
        } else {
            let rows: String = ids
                .iter()
                .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v)))
                .collect();
            format!(
                "<p>The app received these identity headers from sessiongate:</p><table>{rows}</table>"
            )
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/api/whoami") => {
                let body = serde_json::to_string_pretty(&ids).unwrap_or_default();
                respond(200, "application/json", body, &[])
            }
            ("GET", "/") => respond(
                200,
                "text/html; charset=utf-8",
                page("Cafe — home", &format!("{nav}{who}")),
                &[],
            ),
            ("GET", "/orders") => {
                let rows: String = (1..=25)
                    .map(|i| {
                        format!(
                            "<tr><td>#{}</td><td>Flat white</td><td>${}.50</td></tr>",
                            1000 + i,
                            3 + i % 4
                        )
                    })
                    .collect();
                let body = format!(
                    "{nav}<table><tr><th>Order</th><th>Item</th><th>Total</th></tr>{rows}</table>"
                );
                respond(
                    200,
                    "text/html; charset=utf-8",
                    page("Cafe — orders", &body),
                    &[],
                )
            }
            ("GET", "/strict") => {
                let Ok(nonce) = sessiongate::banner::nonce() else {
                    return respond(500, "text/plain", "no randomness for a nonce", &[]);
                };
                let body = format!(
                    "{nav}<p>This page is served with <code>Content-Security-Policy: default-src 'none'; \
script-src 'nonce-…' 'strict-dynamic'; style-src 'self'</code>. Its own inline script still runs:</p>\
<p id=\"inline\">inline script did not run</p>\
<script nonce=\"{nonce}\">document.getElementById('inline').textContent='inline script ran';</script>{who}"
                );
                let csp = format!(
                    "default-src 'none'; script-src 'nonce-{nonce}' 'strict-dynamic'; style-src 'self'"
                );
                respond(
                    200,
                    "text/html; charset=utf-8",
                    page("Cafe — strict CSP", &body),
                    &[("content-security-policy", csp)],
                )
            }
            ("GET", "/settings/password") => {
                let body = format!(
                    "{nav}<form method=\"post\"><label>New password <input type=\"password\" name=\"p\"></label> \
<button>Change</button></form><p class=\"muted\">While impersonating, sessiongate refuses this POST (403) and audits the attempt.</p>"
                );
                respond(
                    200,
                    "text/html; charset=utf-8",
                    page("Cafe — change password", &body),
                    &[],
                )
            }
            ("POST", "/settings/password") => respond(
                200,
                "text/html; charset=utf-8",
                page("Password changed", nav),
                &[],
            ),
            ("GET", "/ended") => respond(
                200,
                "text/html; charset=utf-8",
                page(
                    "Impersonation ended",
                    &format!("{nav}<p>The impersonation session is over.</p>{who}"),
                ),
                &[],
            ),
            _ => respond(404, "text/html; charset=utf-8", page("Not found", nav), &[]),
        }
    }
}

/// The in-memory platform backend.
struct Backend {
    /// sid -> (target e-mail, live)
    sessions: Mutex<HashMap<String, (String, bool)>>,
    next: Mutex<u64>,
    app_url: String,
    admin_url: String,
    backend_url: String,
}

impl Backend {
    fn cookie(&self, token: &str) -> String {
        format!("nix_session={token}; Path=/; HttpOnly; SameSite=Lax; Secure")
    }

    fn sign_in(&self, admin: bool) -> Response<Vec<u8>> {
        let mut args = MintArgs {
            alg: "HS256".into(),
            sub: "user-42".into(),
            tenant: Some("cafe".into()),
            email: Some("maria@cafe.example".into()),
            roles: vec!["owner".into()],
            ttl: Duration::from_secs(30 * 60),
            ..MintArgs::default()
        };
        if admin {
            let n = {
                let mut next = lock(&self.next);
                *next += 1;
                *next
            };
            let sid = format!("imp-{n}");
            lock(&self.sessions).insert(sid.clone(), ("maria@cafe.example".into(), true));
            args.imp_sid = Some(sid);
            args.imp_admin_id = Some("admin-7".into());
            args.imp_admin_email = Some("support@nixtech.example".into());
            args.imp_reason = Some("Ticket #4711: receipts look wrong".into());
        }
        match mint(&args, SECRET.as_bytes()) {
            Ok(token) => respond(
                302,
                "text/plain",
                "",
                &[
                    ("location", format!("{}/", self.app_url)),
                    ("set-cookie", self.cookie(&token)),
                ],
            ),
            Err(e) => respond(500, "text/plain", e, &[]),
        }
    }

    fn sid_from_cookie(s: &ServerSession) -> Option<String> {
        let cookies = String::from_utf8_lossy(s.get_header_bytes("cookie")).into_owned();
        let token = cookies
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == "nix_session")
            .map(|(_, v)| v.to_string())?;
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        claims.get("imp")?.get("sid")?.as_str().map(str::to_string)
    }

    fn end(&self, sid: &str) -> bool {
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(sid) {
            Some(s) => {
                s.1 = false;
                true
            }
            None => false,
        }
    }

    fn admin_page(&self) -> Response<Vec<u8>> {
        let sessions = lock(&self.sessions);
        let rows: String = sessions
            .iter()
            .map(|(sid, (target, live))| {
                let action = if *live {
                    format!(
                        "<form method=\"post\" action=\"/admin/revoke/{sid}\"><button>Revoke</button></form>",
                        sid = esc(sid)
                    )
                } else {
                    "ended".into()
                };
                format!("<tr><td>{}</td><td>{}</td><td>{action}</td></tr>", esc(sid), esc(target))
            })
            .collect();
        let body = format!(
            "<p><a href=\"/login/user\">Sign in as the tenant user</a> · <a href=\"/login/admin\">Sign in as support, impersonating the user</a></p>\
<table><tr><th>Session</th><th>Target</th><th></th></tr>{rows}</table>\
<p class=\"muted\">Revoke ends the session here and tells sessiongate at once (admin endpoint); a replica without that call would learn within cache_ttl.</p>"
        );
        respond(
            200,
            "text/html; charset=utf-8",
            page("Platform — live impersonations", &body),
            &[],
        )
    }
}

struct BackendApp(Arc<Backend>);

#[async_trait]
impl ServeHttp for BackendApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let b = &self.0;
        let path = s.req_header().uri.path().to_string();
        let method = s.req_header().method.to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/login/user") => b.sign_in(false),
            ("GET", "/login/admin") => b.sign_in(true),
            ("GET", "/admin") | ("GET", "/") => b.admin_page(),
            ("GET", p) if p.starts_with("/internal/impersonations/") => {
                let raw = &p["/internal/impersonations/".len()..];
                let sid = percent_encoding::percent_decode_str(raw)
                    .decode_utf8_lossy()
                    .into_owned();
                let live = lock(&b.sessions).get(&sid).map(|s| s.1);
                match live {
                    Some(true) => respond(200, "application/json", r#"{"active":true}"#, &[]),
                    _ => respond(
                        410,
                        "application/json",
                        r#"{"active":false,"code":"IMPERSONATION_ENDED"}"#,
                        &[],
                    ),
                }
            }
            ("POST", "/tenant/auth/end-impersonation") => match BackendApp::sid(s) {
                Some(sid) if b.end(&sid) => {
                    respond(200, "application/json", r#"{"ended":true}"#, &[])
                }
                _ => respond(
                    404,
                    "application/json",
                    r#"{"error":"no impersonation"}"#,
                    &[],
                ),
            },
            ("POST", p) if p.starts_with("/admin/revoke/") => {
                let _ = read_body(s).await;
                let sid = p["/admin/revoke/".len()..].to_string();
                b.end(&sid);
                let url = format!("{}/sessions/{sid}/revoke", b.admin_url);
                let told = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if !told {
                    tracing::warn!(sid, "could not tell sessiongate about the revoke");
                }
                respond(
                    303,
                    "text/plain",
                    "",
                    &[("location", format!("{}/admin", b.backend_url))],
                )
            }
            _ => respond(404, "text/plain", "not found", &[]),
        }
    }
}

impl BackendApp {
    fn sid(s: &ServerSession) -> Option<String> {
        Backend::sid_from_cookie(s)
    }
}

/// The generated main file: everything but the sites, which live in `sites.d/`.
pub fn demo_config(proxy: u16, admin: u16, backend: u16) -> String {
    format!(
        r#"sites_dir = "sites.d"

[listen]
addr = "127.0.0.1:{proxy}"
grace_period = "5s"

[admin]
addr = "127.0.0.1:{admin}"
token_env = "DEMO_ADMIN_TOKEN"

[token]
secret_env = "DEMO_JWT_SECRET"
algorithms = ["HS256"]

[liveness]
url = "http://127.0.0.1:{backend}/internal/impersonations/{{sid}}"
end_url = "http://127.0.0.1:{backend}/tenant/auth/end-impersonation"
cache_ttl = "5s"

[audit]
sink = "stdout"
"#
    )
}

/// The sample app's site file, `sites.d/cafe.toml`.
pub fn demo_site(app: u16) -> String {
    format!(
        r#"host = "{HOST}"
upstream = "127.0.0.1:{app}"
public_paths = ["/ended"]
after_end_url = "/ended"

[[deny_while_impersonating]]
methods = ["POST", "PUT", "PATCH", "DELETE"]
path = "/settings/password"
"#
    )
}

/// A new directory of the demo's own under the system's temp dir. `create_dir` refuses a name
/// that exists, so nothing planted there beforehand is ever read as config.
fn demo_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "sessiongate-demo-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free directory name"))
}

/// Writes the demo's config files; the main file's path.
fn write_config(proxy: u16, admin: u16, app: u16, backend: u16) -> std::io::Result<PathBuf> {
    let dir = demo_dir()?;
    std::fs::create_dir(dir.join("sites.d"))?;
    std::fs::write(dir.join("sites.d").join("cafe.toml"), demo_site(app))?;
    let main = dir.join("sessiongate.toml");
    std::fs::write(&main, demo_config(proxy, admin, backend))?;
    Ok(main)
}

/// Runs the demo until SIGINT/SIGTERM.
pub fn run(port: u16) -> Result<(), String> {
    let (admin, app, backend) = (
        free_port().map_err(|e| e.to_string())?,
        free_port().map_err(|e| e.to_string())?,
        free_port().map_err(|e| e.to_string())?,
    );
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("port {port} is not free: {e}"))?;
    let main = write_config(port, admin, app, backend)
        .map_err(|e| format!("cannot write the demo's config: {e}"))?;
    let env: HashMap<String, String> = [
        ("DEMO_JWT_SECRET".to_string(), SECRET.to_string()),
        ("DEMO_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
    ]
    .into();
    let config = Config::load_with(&main, &env).map_err(|e| e.to_string())?;

    let app_url = format!("http://{HOST}:{port}");
    let backend_url = format!("http://{HOST}:{backend}");
    let platform = Arc::new(Backend {
        sessions: Mutex::new(HashMap::new()),
        next: Mutex::new(0),
        app_url: app_url.clone(),
        admin_url: format!("http://127.0.0.1:{admin}"),
        backend_url: backend_url.clone(),
    });

    let source = ConfigSource {
        path: main.clone(),
        env: Arc::new(env),
    };
    let mut server = sessiongate::build(config, Some(source)).map_err(|e| e.to_string())?;
    let mut app_service = Service::new("demo app".to_string(), HttpServer::new_app(SampleApp));
    app_service.add_tcp(&format!("127.0.0.1:{app}"));
    let mut backend_service = Service::new(
        "demo backend".to_string(),
        HttpServer::new_app(BackendApp(platform)),
    );
    backend_service.add_tcp(&format!("127.0.0.1:{backend}"));
    server.add_service(app_service);
    server.add_service(backend_service);

    println!("sessiongate demo is running (Ctrl-C stops it).");
    println!();
    println!("  Open as a tenant user:           {backend_url}/login/user");
    println!("  Open as an impersonating admin:  {backend_url}/login/admin");
    println!("  Platform page (live sessions, Revoke): {backend_url}/admin");
    println!();
    println!("  The app behind the proxy:  {app_url}/   (JSON: {app_url}/api/whoami)");
    println!("  Proxy metrics:             http://127.0.0.1:{admin}/metrics");
    let sites_dir = main.with_file_name("sites.d");
    println!(
        "  Config: {} and one file per site in {}/",
        main.display(),
        sites_dir.display()
    );
    println!("          (edit or add a site file: the proxy reloads it within 2 s, no signal)");
    println!(
        "  Token at sign-in expires in 30 minutes; audit events are printed below as JSON lines."
    );
    println!();
    server.run(RunArgs {
        shutdown_signal: Box::new(sessiongate::lifecycle::Signals),
    });
    Ok(())
}
