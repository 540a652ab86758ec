//! The token-verifier service behind the nginx anchor of the load benchmark (`bench/run.sh`):
//! nginx's `auth_request` asks it about every (uncached) session cookie.
//!
//! It reads the `nix_session` cookie, verifies the HS256 JWT (signature, `exp`/`nbf`, and
//! `iss`/`aud` when given) and answers `200` with `X-Auth-User-Id`, `X-Auth-Tenant-Id`,
//! `X-Auth-Email` (and, for an `imp` claim, `X-Auth-Impersonation-Session` and
//! `X-Auth-Impersonator-Email`), or `401`. Any path and method get the same treatment.
//!
//! ```text
//! SESSIONGATE_JWT_SECRET=... cargo run --release --example bench_verifier -- --listen 127.0.0.1:8090
//! ```

use async_trait::async_trait;
use clap::Parser;
use http::{HeaderValue, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "HS256 session-cookie verifier for nginx auth_request (benchmark anchor)")]
struct Args {
    /// Address to listen on (plain HTTP/1.1).
    #[arg(long)]
    listen: SocketAddr,
    /// Environment variable holding the HS256 secret.
    #[arg(long, default_value = "SESSIONGATE_JWT_SECRET")]
    secret_env: String,
    /// Cookie carrying the JWT.
    #[arg(long, default_value = "nix_session")]
    cookie: String,
    /// Required `iss`, when given.
    #[arg(long)]
    issuer: Option<String>,
    /// Required `aud`, when given.
    #[arg(long)]
    audience: Option<String>,
    /// Worker threads (the verifier only sees nginx's cache misses).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct VerifierApp {
    cookie: String,
    key: DecodingKey,
    validation: Validation,
}

/// The value of cookie `name` in every `Cookie` header; `None` when absent or ambiguous.
fn find_cookie(session: &ServerSession, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for header in session.req_header().headers.get_all(http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k != name {
                continue;
            }
            match &found {
                Some(prev) if prev != v => return None,
                _ => found = Some(v.to_string()),
            }
        }
    }
    found
}

fn claim<'a>(claims: &'a Value, key: &str) -> Option<&'a str> {
    claims.get(key).and_then(Value::as_str)
}

fn respond(status: StatusCode, headers: &[(&str, &str)]) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    for (name, value) in headers {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                h.insert(n, v);
            }
            // A claim that cannot be a header value refuses the token.
            _ => return respond(StatusCode::UNAUTHORIZED, &[]),
        }
    }
    r
}

impl VerifierApp {
    fn answer(&self, token: &str) -> Response<Vec<u8>> {
        let Ok(data) = decode::<Value>(token, &self.key, &self.validation) else {
            return respond(StatusCode::UNAUTHORIZED, &[]);
        };
        let claims = &data.claims;
        let Some(user) = claim(claims, "sub") else {
            return respond(StatusCode::UNAUTHORIZED, &[]);
        };
        let mut headers = vec![("x-auth-user-id", user)];
        if let Some(t) = claim(claims, "tenant_id") {
            headers.push(("x-auth-tenant-id", t));
        }
        if let Some(e) = claim(claims, "email") {
            headers.push(("x-auth-email", e));
        }
        if let Some(imp) = claims.get("imp").filter(|v| v.is_object()) {
            let Some(sid) = claim(imp, "sid") else {
                return respond(StatusCode::UNAUTHORIZED, &[]);
            };
            headers.push(("x-auth-impersonation-session", sid));
            if let Some(e) = claim(imp, "admin_email") {
                headers.push(("x-auth-impersonator-email", e));
            }
        }
        respond(StatusCode::OK, &headers)
    }
}

#[async_trait]
impl ServeHttp for VerifierApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match find_cookie(session, &self.cookie) {
            Some(token) => self.answer(&token),
            None => respond(StatusCode::UNAUTHORIZED, &[]),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Ok(secret) = std::env::var(&args.secret_env) else {
        eprintln!(
            "bench_verifier: set {} to the HS256 secret",
            args.secret_env
        );
        return ExitCode::from(2);
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 30;
    validation.validate_nbf = true;
    match &args.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &args.issuer {
        validation.set_issuer(&[iss]);
    }
    let app = VerifierApp {
        cookie: args.cookie.clone(),
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
    };

    let conf = ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("bench verifier".to_string(), HttpServer::new_app(app));
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    server.run_forever();
}
