//! The thin `impl ProxyHttp`: each hook calls the modules that make the decisions.

use crate::audit::AuditEvent;
use crate::banner;
use crate::banner::encoding;
use crate::banner::markup::{self, BannerInfo};
use crate::banner::rewrite::{BannerStream, Splice};
use crate::config::Unauthenticated;
use crate::endpoints;
use crate::headers::{self, SessionCookie};
use crate::liveness::Liveness;
use crate::metrics::METRICS;
use crate::policy::{self, CanonicalPath};
use crate::response::{LocalResponse, wants_html};
use crate::site::normalize_host;
use crate::state::{InflightGuard, Shared, Snapshot};
use crate::token::Identity;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Request headers over this size in all get `431`.
pub const MAX_REQUEST_HEAD: usize = 32 * 1024;

pub struct Proxy {
    pub shared: Arc<Shared>,
}

pub struct Ctx {
    started: Instant,
    snap: Option<Arc<Snapshot>>,
    site: Option<usize>,
    /// The request's host as sent (Host header or `:authority`), for the upstream Host header.
    authority: String,
    /// Normalized host.
    host: String,
    identity: Option<Identity>,
    /// The session token that gave `identity` (forwarded only on `forward_session_cookie` sites).
    token: Option<String>,
    /// The impersonation was found live: impersonation headers go up, `no-store` comes back,
    /// and every request is audited.
    impersonating: bool,
    /// The banner splice for this response, when it applies. (`Mutex` because lol_html's
    /// rewriter is `Send` but not `Sync`; only `get_mut` is used.)
    banner: Option<Mutex<BannerStream>>,
    /// An upgraded (WebSocket) impersonating connection: closed on the first frame after its
    /// session ends or its token expires.
    socket: Option<Arc<SocketGuard>>,
    outcome: &'static str,
    _inflight: InflightGuard,
}

impl Ctx {
    fn site_label(&self) -> &str {
        match (&self.snap, self.site) {
            (Some(s), Some(i)) => s.config.site(i).map_or("-", |s| s.name.as_str()),
            _ => "-",
        }
    }
}

/// Why a request cannot be routed.
#[derive(Debug, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Duplicate,
    Invalid,
    /// Absolute-form target (or HTTP/2 `:authority`) naming a different host than `Host`.
    Mismatch,
}

/// The request's host: `:authority` / absolute-form target first, checked against `Host`.
/// Returns (as sent, normalized).
pub fn request_host(req: &RequestHeader) -> Result<(String, String), HostError> {
    let hosts: Vec<_> = req.headers.get_all("host").iter().collect();
    if hosts.len() > 1 {
        return Err(HostError::Duplicate);
    }
    let header = match hosts.first() {
        Some(v) => Some(v.to_str().map_err(|_| HostError::Invalid)?),
        None => None,
    };
    // HTTP/2 carries `:authority` in the URI; an HTTP/1.1 absolute-form target keeps its
    // authority only in the raw target, classified by Pingora's own parser.
    let absolute = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute { authority, .. } => {
            Some(std::str::from_utf8(authority).map_err(|_| HostError::Invalid)?)
        }
        RawTargetAuthority::AmbiguousAuthority => return Err(HostError::Invalid),
        RawTargetAuthority::None => None,
    };
    let authority = req.uri.authority().map(|a| a.as_str()).or(absolute);
    let raw = match (authority, header) {
        (Some(a), Some(h)) => {
            let (na, nh) = (normalize_host(a), normalize_host(h));
            if na.is_none() || na != nh {
                return Err(HostError::Mismatch);
            }
            h
        }
        (Some(a), None) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(HostError::Missing),
    };
    let normalized = normalize_host(raw).ok_or(HostError::Invalid)?;
    Ok((raw.to_string(), normalized))
}

/// A top-level navigation: the kind of request a login redirect makes sense for.
pub fn is_navigation(req: &RequestHeader) -> bool {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return false;
    }
    let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    match h("sec-fetch-mode") {
        Some(mode) => mode.eq_ignore_ascii_case("navigate"),
        None => wants_html(h("accept")),
    }
}

/// The login URL with `{url}` = this request's URL on this site, percent-encoded. The path's
/// leading slashes and backslashes collapse to one `/`, so the URL can never name another host.
pub fn login_location(login_url: &str, host: &str, req: &RequestHeader) -> String {
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .trim_start_matches(['/', '\\']);
    let scheme = match req.headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => "https",
        _ => "http",
    };
    let url = format!("{scheme}://{host}/{target}");
    let encoded = percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC);
    login_url.replace("{url}", &encoded.to_string())
}

/// The state of an upgraded impersonating connection.
pub struct SocketGuard {
    ended: AtomicBool,
    sid: String,
    exp: u64,
}

fn guard_exp(weak: &std::sync::Weak<SocketGuard>) -> u64 {
    weak.upgrade().map_or(0, |g| g.exp)
}

/// A request asking to switch protocols (WebSocket).
pub fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key("upgrade")
        && req.headers.get_all("connection").iter().any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// The request target as sent (for audit events).
fn raw_path(req: &RequestHeader) -> String {
    String::from_utf8_lossy(req.raw_path()).into_owned()
}

fn peer_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

/// Steps 4–6: cookie, verification, tenant binding. `None` = no session.
pub async fn authenticate(
    shared: &Shared,
    snap: &Snapshot,
    site_idx: usize,
    req: &RequestHeader,
    host: &str,
) -> Option<(Identity, String)> {
    let config = &snap.config;
    let site = config.site(site_idx)?;
    let token = match headers::session_cookie(req, &config.token.cookie) {
        SessionCookie::Absent => return None,
        SessionCookie::Conflict => {
            METRICS.cookie_conflicts.inc();
            tracing::warn!(site = %site.name, "several different session cookies: no session");
            return None;
        }
        SessionCookie::One(t) => t,
    };
    let mut identity = match snap.verifier.verify_fresh(&token).await {
        Ok(id) => id,
        Err(e) => {
            METRICS.token_rejected.with_label_values(&[e.label()]).inc();
            tracing::info!(site = %site.name, reason = %e, "session cookie refused");
            return None;
        }
    };
    if let Some(pattern) = &site.tenant_from_host {
        let host_tenant = pattern.tenant(host);
        let bound = matches!((host_tenant, &identity.tenant_id),
            (Some(h), Some(t)) if h.eq_ignore_ascii_case(t));
        if !bound {
            METRICS
                .token_rejected
                .with_label_values(&["tenant_mismatch"])
                .inc();
            let mut ev = AuditEvent::about("tenant_mismatch", &site.name, &identity);
            ev.method = Some(req.method.to_string());
            ev.path = Some(req.uri.path().to_string());
            ev.reason = Some(format!(
                "host names tenant {}",
                host_tenant.unwrap_or("(none)")
            ));
            shared.auditor.emit(ev);
            return None;
        }
        // The binding compares case-insensitively; the app gets the host's (lower-case) form,
        // so one tenant never reaches it under two spellings.
        identity.tenant_id = host_tenant.map(str::to_string);
    }
    Some((identity, token))
}

impl Proxy {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Watches an upgraded impersonating connection: every `cache_ttl` (and at the token's
    /// expiry) the session is checked again; an end flags the guard.
    fn guard_socket(&self, ctx: &mut Ctx, snap: &Snapshot) {
        let Some(imp) = ctx
            .identity
            .as_ref()
            .and_then(|id| id.impersonation.as_ref())
        else {
            return;
        };
        let guard = Arc::new(SocketGuard {
            ended: AtomicBool::new(false),
            sid: imp.sid.clone(),
            exp: ctx.identity.as_ref().map_or(0, |id| id.exp),
        });
        ctx.socket = Some(guard.clone());
        let weak = Arc::downgrade(&guard);
        let shared = self.shared.clone();
        let cfg = snap.config.liveness.clone();
        tokio::spawn(async move {
            loop {
                let left =
                    Duration::from_secs(guard_exp(&weak).saturating_sub(crate::tools::now()));
                tokio::time::sleep(cfg.cache_ttl.min(left)).await;
                let Some(g) = weak.upgrade() else { return };
                let expired = crate::tools::now() >= g.exp;
                let live = !expired
                    && matches!(
                        shared.liveness.check(&cfg, &g.sid, None, g.exp).await,
                        Ok(Liveness::Live)
                    );
                if !live {
                    g.ended.store(true, Ordering::Relaxed);
                    return;
                }
            }
        });
    }

    /// Refuses a frame of an upgraded connection whose impersonation is over.
    fn check_socket(&self, ctx: &Ctx) -> Result<()> {
        let Some(g) = &ctx.socket else { return Ok(()) };
        let over = g.ended.load(Ordering::Relaxed)
            || crate::tools::now() >= g.exp
            || self.shared.liveness.is_marked_ended(&g.sid);
        if over {
            g.ended.store(true, Ordering::Relaxed);
            return Err(Error::explain(
                ErrorType::Custom("impersonation_ended"),
                "closing a WebSocket whose impersonation ended",
            ));
        }
        Ok(())
    }

    /// Decides the banner for an impersonated response and, when it applies, fixes the headers
    /// and sets up the streaming splice.
    fn start_banner(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<()> {
        let (Some(site), Some(id)) = (ctx.site.and_then(|i| snap.config.site(i)), &ctx.identity)
        else {
            return Ok(());
        };
        let Some(imp) = &id.impersonation else {
            return Ok(());
        };
        let req = session.req_header();
        let coding = match banner::decide(req, resp, site.banner) {
            Ok(c) => c,
            Err(skip) => {
                METRICS
                    .banner_skipped
                    .with_label_values(&[skip.label()])
                    .inc();
                return Ok(());
            }
        };
        let out = encoding::choose(
            req.headers
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok()),
        );
        let nonce = banner::Nonce::default();
        let chunked = req.version == http::Version::HTTP_11;
        let script_nonce =
            banner::fix_response_headers(resp, out, &ctx.authority, &nonce, chunked)?;
        let info = BannerInfo {
            target: id.email.clone().unwrap_or_else(|| id.user_id.clone()),
            tenant: id.tenant_id.clone(),
            admin_email: imp.admin_email.clone(),
            reason: imp.reason.clone(),
            expires: id.exp,
            csrf: snap.csrf.token(&imp.sid),
            origin: format!("//{}", ctx.authority),
        };
        let version = snap.assets.version.clone();
        let splice = Splice {
            render: Box::new(move |nonce| markup::banner_html(&info, nonce, &version)),
            authority: ctx.authority.clone(),
            nonce,
            script_nonce,
        };
        let stream = BannerStream::new(coding, out, splice)
            .map_err(|e| Error::explain(ErrorType::InternalError, format!("banner setup: {e}")))?;
        ctx.banner = Some(Mutex::new(stream));
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snap: None,
            site: None,
            authority: String::new(),
            host: String::new(),
            identity: None,
            token: None,
            impersonating: false,
            banner: None,
            socket: None,
            outcome: "proxied",
            _inflight: InflightGuard::new(&self.shared),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.snapshot();
        ctx.snap = Some(snap.clone());
        let req = session.req_header();
        let html = wants_html(req.headers.get("accept").and_then(|v| v.to_str().ok()));
        let head = req.method == http::Method::HEAD;

        if headers::request_head_size(req) > MAX_REQUEST_HEAD {
            ctx.outcome = "header_too_large";
            session.set_keepalive(None);
            LocalResponse::error(
                431,
                "request_header_fields_too_large",
                "Request headers are too large.",
                html,
            )
            .send(session, head)
            .await?;
            return Ok(true);
        }
        let cl_te = req.headers.contains_key("transfer-encoding")
            && matches!(session.as_downstream(),
                pingora::protocols::http::ServerSession::H1(h1) if headers::framing_conflict(&h1.get_headers_raw_bytes()));
        // Pingora refuses differing duplicate Content-Lengths but forwards equal ones; an
        // auth proxy refuses both (RFC 9110 allows either; a front end that merges them
        // differently is how smuggling starts).
        let duplicate_cl = req.headers.get_all("content-length").iter().count() > 1;
        if cl_te || duplicate_cl || headers::connection_names_framing(req) {
            ctx.outcome = "bad_request";
            session.set_keepalive(None);
            LocalResponse::error(
                400,
                "bad_request",
                "Ambiguous message framing (Content-Length with Transfer-Encoding or twice, or a framing header named in Connection) is refused.",
                html,
            )
            .send(session, head)
            .await?;
            return Ok(true);
        }
        let (authority, host) = match request_host(req) {
            Ok(h) => h,
            Err(e) => {
                ctx.outcome = "bad_request";
                tracing::info!(error = ?e, "unroutable host");
                session.set_keepalive(None);
                LocalResponse::error(
                    400,
                    "bad_request",
                    "The request's host is missing or inconsistent.",
                    html,
                )
                .send(session, head)
                .await?;
                return Ok(true);
            }
        };
        ctx.authority = authority;
        ctx.host = host;
        ctx.site = snap.router.route(&ctx.host);
        let path: CanonicalPath =
            policy::canonical_path(req.uri.path_and_query().map_or("/", |pq| pq.as_str()));

        // Step 1: the reserved prefix never reaches an upstream.
        if policy::is_reserved(&path) {
            ctx.outcome = "reserved";
            let r = endpoints::Reserved {
                shared: &self.shared,
                snap: &snap,
                site: ctx.site,
                host: &ctx.host,
                authority: &ctx.authority,
                path: &path,
                html,
            };
            endpoints::reserved(r, session).await?;
            return Ok(true);
        }
        // Step 2: no site, no upstream contact.
        let Some(site_idx) = ctx.site else {
            ctx.outcome = "misdirected";
            LocalResponse::error(
                421,
                "misdirected_request",
                "No site is served at this host.",
                html,
            )
            .send(session, head)
            .await?;
            return Ok(true);
        };
        let Some(site) = snap.config.site(site_idx) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "site index out of range",
            ));
        };
        // Step 3: strip whatever identity the client made up.
        headers::strip_inbound(session.req_header_mut(), &snap.names);
        if policy::is_public(site, &path) {
            ctx.outcome = "public";
            return Ok(false);
        }
        // Steps 4–6.
        let authenticated = authenticate(
            &self.shared,
            &snap,
            site_idx,
            session.req_header(),
            &ctx.host,
        );
        let (identity, token) = match authenticated.await {
            Some((id, token)) => (Some(id), Some(token)),
            None => (None, None),
        };
        // Step 7: an impersonation is honoured only while the backend says it is live.
        if let Some(id) = &identity
            && let Some(imp) = &id.impersonation
        {
            let cookie = token
                .as_ref()
                .map(|t| format!("{}={t}", snap.config.token.cookie));
            match self
                .shared
                .liveness
                .check(
                    &snap.config.liveness,
                    &imp.sid,
                    cookie.as_deref(),
                    snap.verifier.honoured_until(id),
                )
                .await
            {
                Ok(Liveness::Live) => ctx.impersonating = true,
                Ok(Liveness::Ended) => {
                    ctx.outcome = "impersonation_ended";
                    let mut ev = AuditEvent::about("impersonation.ended_seen", &site.name, id);
                    ev.method = Some(session.req_header().method.to_string());
                    ev.path = Some(raw_path(session.req_header()));
                    self.shared.auditor.emit(ev);
                    let clear = headers::clear_session_cookie(
                        &snap.config.token.cookie,
                        snap.config.token.cookie_domain.as_deref(),
                    );
                    let answer = if is_navigation(session.req_header()) {
                        LocalResponse::redirect(302, site.after_end_url.clone())
                    } else {
                        LocalResponse::json(401, r#"{"error":"impersonation_ended"}"#.into())
                    };
                    answer
                        .header("set-cookie", clear)
                        .send(session, head)
                        .await?;
                    return Ok(true);
                }
                Err(e) => {
                    ctx.outcome = "liveness_error";
                    tracing::warn!(site = %site.name, error = %e, "impersonation refused: liveness unknown");
                    LocalResponse::error(
                        503,
                        "liveness_unavailable",
                        "The impersonation session cannot be checked right now. Try again shortly.",
                        html,
                    )
                    .header("retry-after", "5".into())
                    .send(session, head)
                    .await?;
                    return Ok(true);
                }
            }
        }
        // Step 8: routes an impersonating admin must never touch.
        if ctx.impersonating
            && let Some(id) = &identity
        {
            let req = session.req_header();
            let refusal = if path.ambiguous {
                Some((
                    400,
                    "ambiguous_path",
                    "This path is ambiguous and is refused while impersonating.",
                    "ambiguous path".to_string(),
                ))
            } else {
                let methods = headers::effective_methods(req);
                methods
                    .iter()
                    .find_map(|m| policy::denied(&site.deny, m, &path).map(|r| (m, r)))
                    .map(|(m, rule)| {
                        (
                            403,
                            "forbidden_while_impersonating",
                            "This action is not available while impersonating a user.",
                            format!("{m} {} is denied while impersonating", rule.path.as_str()),
                        )
                    })
            };
            if let Some((status, code, message, reason)) = refusal {
                ctx.outcome = "denied";
                let mut ev = AuditEvent::about("impersonation.forbidden_attempt", &site.name, id);
                ev.method = Some(req.method.to_string());
                ev.path = Some(raw_path(req));
                ev.canonical_path = Some(path.path.clone());
                ev.status = Some(status);
                ev.reason = Some(reason);
                ev.peer = peer_ip(session);
                self.shared.auditor.emit(ev);
                LocalResponse::error(status, code, message, html)
                    .header("vary", "Cookie".into())
                    .send(session, head)
                    .await?;
                return Ok(true);
            }
        }
        // Step 9: no session.
        if identity.is_none() {
            match &site.unauthenticated {
                Unauthenticated::Pass => {}
                Unauthenticated::Redirect { login_url } if is_navigation(session.req_header()) => {
                    ctx.outcome = "redirected";
                    let location = login_location(login_url, &ctx.host, session.req_header());
                    LocalResponse::redirect(302, location)
                        .send(session, head)
                        .await?;
                    return Ok(true);
                }
                Unauthenticated::Reject | Unauthenticated::Redirect { .. } => {
                    ctx.outcome = "unauthenticated";
                    LocalResponse::error(401, "unauthenticated", "Sign in to continue.", html)
                        .send(session, head)
                        .await?;
                    return Ok(true);
                }
            }
        }
        ctx.identity = identity;
        ctx.token = token;
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let site = ctx
            .snap
            .as_ref()
            .zip(ctx.site)
            .and_then(|(s, i)| s.config.site(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no site chosen"))?;
        let mut peer = HttpPeer::new(site.upstream, false, String::new());
        peer.options.connection_timeout = Some(site.connect_timeout);
        peer.options.total_connection_timeout = Some(site.connect_timeout);
        peer.options.read_timeout = Some(site.read_timeout);
        peer.options.write_timeout = Some(site.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if ctx.impersonating && is_upgrade(session.req_header()) {
            // An idle impersonating WebSocket cannot be told its session ended (no frame
            // passes a filter), so it is closed after cache_ttl of silence; clients reconnect
            // through the liveness check.
            let cap = ctx
                .snap
                .as_ref()
                .map_or(site.read_timeout, |s| s.config.liveness.cache_ttl);
            peer.options.read_timeout = Some(site.read_timeout.min(cap));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(snap), Some(site_idx)) = (ctx.snap.as_ref(), ctx.site) else {
            return Err(Error::explain(ErrorType::InternalError, "no site chosen"));
        };
        let Some(site) = snap.config.site(site_idx) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "site index out of range",
            ));
        };
        // Origin-form to the upstream, with the client's Host (HTTP/2 has only `:authority`).
        let origin_form = upstream.raw_path().first() == Some(&b'/');
        if !origin_form || upstream.uri.authority().is_some() || upstream.uri.scheme().is_some() {
            let pq = upstream
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string();
            upstream.set_uri(
                pq.parse()
                    .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad target"))?,
            );
        }
        if upstream.headers.get("host").is_none() {
            upstream.insert_header("host", &ctx.authority)?;
        }
        // Only a session cookie the proxy verified and honoured may reach a site that forwards
        // it; every other copy (unverified, refused, another tenant's, on a public path, a
        // look-alike in another case) is removed, so the app never judges a token on its own.
        let keep = ctx
            .token
            .as_deref()
            .filter(|_| site.forward_session_cookie && ctx.identity.is_some());
        headers::remove_session_cookie(upstream, &snap.config.token.cookie, keep);
        headers::set_forwarded(upstream, peer_ip(session), &ctx.host)?;
        if let Some(id) = &ctx.identity {
            headers::inject(upstream, &snap.names, id, ctx.impersonating)?;
        }
        if ctx.impersonating && site.banner && banner::wants_document(upstream).is_ok() {
            banner::prepare_upstream_request(upstream)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(snap) = ctx.snap.clone() {
            let snap = &snap;
            let dropped = headers::drop_session_set_cookie(resp, &snap.config.token.cookie);
            if ctx.impersonating {
                headers::mark_private(resp)?;
                if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    self.guard_socket(ctx, snap);
                } else {
                    self.start_banner(session, resp, ctx, snap)?;
                }
            }
            if dropped > 0 {
                tracing::warn!(
                    site = ctx.site_label(),
                    dropped,
                    "upstream tried to set the session cookie"
                );
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.check_socket(ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.check_socket(ctx)?;
        let Some(stream) = ctx.banner.as_mut() else {
            return Ok(None);
        };
        let stream = stream.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut out = match body.take() {
            Some(chunk) => stream.push(&chunk),
            None => Ok(Vec::new()),
        };
        if end_of_stream && let Ok(bytes) = &mut out {
            match stream.finish() {
                Ok(tail) => bytes.extend(tail),
                Err(e) => out = Err(e),
            }
            if stream.inserted() {
                METRICS.banners_spliced.inc();
            } else {
                METRICS
                    .banner_skipped
                    .with_label_values(&["no_body_tag"])
                    .inc();
            }
        }
        match out {
            Ok(bytes) => {
                // An empty chunk would read as the end of a chunked body.
                *body = (!bytes.is_empty()).then(|| Bytes::from(bytes));
                Ok(None)
            }
            Err(e) => {
                ctx.outcome = "banner_error";
                METRICS
                    .banner_skipped
                    .with_label_values(&["body_error"])
                    .inc();
                tracing::warn!(site = ctx.site_label(), error = %e, "ending an impersonated page early");
                Err(Error::explain(ErrorType::Custom("banner"), e.to_string()))
            }
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code == 502 {
            ctx.outcome = "upstream_error";
            METRICS
                .upstream_errors
                .with_label_values(&[ctx.site_label()])
                .inc();
        } else if code > 0 {
            ctx.outcome = "error";
        }
        if code > 0 && session.response_written().is_none() {
            let html = wants_html(
                session
                    .req_header()
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok()),
            );
            let (name, msg) = match code {
                502 => (
                    "bad_gateway",
                    "The application behind this proxy is not answering.",
                ),
                400 => ("bad_request", "The request could not be read."),
                _ => ("internal_error", "The proxy could not handle this request."),
            };
            let head = session.req_header().method == http::Method::HEAD;
            if let Err(err) = LocalResponse::error(code, name, msg, html)
                .send(session, head)
                .await
            {
                tracing::debug!(error = %err, "could not send the error page");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let site = ctx.site_label().to_string();
        let outcome = match (
            ctx.outcome,
            session.response_written().map(|r| r.status.as_u16()),
        ) {
            ("proxied", Some(s)) if s >= 500 => "upstream_5xx",
            (o, _) => o,
        };
        METRICS.requests.with_label_values(&[&site, outcome]).inc();
        if ctx.impersonating
            && let Some(id) = &ctx.identity
        {
            let mut ev = AuditEvent::about("impersonation.request", &site, id);
            let req = session.req_header();
            ev.method = Some(req.method.to_string());
            ev.path = Some(raw_path(req));
            ev.status = session.response_written().map(|r| r.status.as_u16());
            ev.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            ev.peer = peer_ip(session);
            self.shared.auditor.emit(ev);
        }
        METRICS
            .request_duration
            .with_label_values(&[&site])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn host_selection() {
        let ok = req("/", &[("Host", "Cafe.Example.com:8080")]);
        assert_eq!(
            request_host(&ok),
            Ok(("Cafe.Example.com:8080".into(), "cafe.example.com".into()))
        );
        let abs = req("http://cafe.example.com/x", &[("Host", "cafe.example.com")]);
        assert!(request_host(&abs).is_ok());
        let mismatch = req("http://evil.example.com/x", &[("Host", "cafe.example.com")]);
        assert_eq!(request_host(&mismatch), Err(HostError::Mismatch));
        let dup = req("/", &[("Host", "a.example"), ("Host", "b.example")]);
        assert_eq!(request_host(&dup), Err(HostError::Duplicate));
        assert_eq!(request_host(&req("/", &[])), Err(HostError::Missing));
        assert_eq!(
            request_host(&req("/", &[("Host", "a b")])),
            Err(HostError::Invalid)
        );
    }

    #[test]
    fn navigation() {
        assert!(is_navigation(&req("/", &[("Sec-Fetch-Mode", "navigate")])));
        assert!(!is_navigation(&req(
            "/",
            &[("Sec-Fetch-Mode", "cors"), ("Accept", "text/html")]
        )));
        assert!(is_navigation(&req("/", &[("Accept", "text/html,*/*")])));
        assert!(!is_navigation(&req("/", &[("Accept", "application/json")])));
    }

    #[test]
    fn login_location_stays_on_site() {
        let r = req("//evil.com/x?a=1", &[]);
        let loc = login_location(
            "https://id.example/login?return_to={url}",
            "cafe.example.com",
            &r,
        );
        assert_eq!(
            loc,
            "https://id.example/login?return_to=http%3A%2F%2Fcafe%2Eexample%2Ecom%2Fevil%2Ecom%2Fx%3Fa%3D1"
        );
        let r = req("/\\evil.com", &[]);
        let loc = login_location("/login?next={url}", "cafe.example.com", &r);
        assert_eq!(
            loc,
            "/login?next=http%3A%2F%2Fcafe%2Eexample%2Ecom%2Fevil%2Ecom"
        );
    }
}
