//! The `ProxyHttp` hooks. Each is a short sequence of stage calls, in the order of SPEC.md's
//! pipeline (site -> token -> liveness -> policy -> headers -> banner -> audit). A stage that
//! stops a request returns a [`Refusal`]; [`Proxy::refuse`] answers every one of them.

use crate::access::{self, AccessLine};
use crate::audit::Scope;
use crate::banner::{self, Page, rewrite::BannerStream};
use crate::config::SiteConfig;
use crate::endpoints;
use crate::headers::{self, Client, Forward};
use crate::liveness::{self, Admission, SocketGuard};
use crate::metrics::METRICS;
use crate::policy;
use crate::response::{LocalResponse, REQUEST_ID, Refusal, html_requested};
use crate::site::{self, RequestHost};
use crate::state::{InflightGuard, Shared, Snapshot};
use crate::tls;
use crate::token::{self, Session as TokenSession};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub shared: Arc<Shared>,
}

pub struct Ctx {
    started: Instant,
    /// The config this request runs on, whatever reloads meanwhile.
    snap: Arc<Snapshot>,
    host: RequestHost,
    /// Who sent the request: its peer, whether that peer is trusted, whether it came over TLS.
    client: Client,
    /// The scheme the client used (step 10's effective scheme).
    scheme: &'static str,
    site: Option<Arc<SiteConfig>>,
    session: Option<TokenSession>,
    /// The impersonation was found live: impersonation headers go up, `no-store` comes back,
    /// and every request is audited.
    impersonating: bool,
    /// The impersonation may only read (its token's mode, or the site's `impersonation`).
    read_only: bool,
    /// The banner splice for this response, when it applies. (`Mutex` because lol_html's
    /// rewriter is `Send` but not `Sync`; only `get_mut` is used.)
    banner: Option<Mutex<BannerStream>>,
    /// An upgraded (WebSocket) impersonating connection.
    socket: Option<Arc<SocketGuard>>,
    outcome: &'static str,
    /// Step 10's request id.
    request_id: String,
    /// The trace this request belongs to (an incoming `traceparent`, or the proxy's own).
    trace_id: Option<String>,
    /// When the upstream exchange began, and how long its response head took.
    upstream_started: Option<Instant>,
    upstream_ms: Option<f64>,
    _inflight: InflightGuard,
}

impl Ctx {
    fn site_label(&self) -> &str {
        self.site.as_ref().map_or("-", |s| s.name.as_str())
    }

    fn site(&self) -> Result<&Arc<SiteConfig>> {
        self.site
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no site chosen"))
    }
}

/// What steps 1-9 decided for a request that was not refused.
enum Admitted {
    /// On to the upstream.
    Proxy,
    /// The proxy's own endpoint answered.
    Answer(LocalResponse),
}

fn peer_addr(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

fn is_head(req: &RequestHeader) -> bool {
    req.method == http::Method::HEAD
}

/// The upstream of a site, as Pingora's peer: TLS with SNI and verification for `https://`.
fn upstream_peer_of(site: &SiteConfig) -> HttpPeer {
    let tls = site.upstream.tls.as_ref();
    let sni = tls.map_or_else(String::new, |t| t.sni.clone());
    let mut peer = HttpPeer::new(site.upstream.addr, tls.is_some(), sni);
    if let Some(t) = tls {
        peer.options.ca = t.roots.clone();
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
    }
    peer.options.connection_timeout = Some(site.connect_timeout);
    peer.options.total_connection_timeout = Some(site.connect_timeout);
    peer.options.read_timeout = Some(site.read_timeout);
    peer.options.write_timeout = Some(site.read_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

impl Proxy {
    /// Steps 1-9.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Admitted, Refusal> {
        let snap = ctx.snap.clone();
        // Who sent it comes first: every answer, refusals included, carries the request id.
        let served = tls::served_names(session);
        let peer = peer_addr(session);
        ctx.client = Client {
            peer,
            trusted: peer.is_some_and(|p| snap.config.trusts(p)),
            tls: served.is_some(),
        };
        ctx.request_id = headers::request_id(session.req_header(), ctx.client.trusted);
        let raw_head = match session.as_downstream() {
            ServerSession::H1(h1) => Some(h1.get_headers_raw_bytes()),
            _ => None,
        };
        headers::check_framing(session.req_header(), raw_head.as_deref())?;
        ctx.host = site::request_host(session.req_header())?;
        // On the TLS listener, a host the connection's certificate does not cover was meant for
        // another server (a reused connection, a client that ignores SNI).
        if served
            .as_ref()
            .is_some_and(|names| !tls::covers(names, &ctx.host.host))
        {
            return Err(Refusal::misdirected());
        }
        ctx.site = snap.router.route(&ctx.host.host).cloned();
        let req = session.req_header();
        let path = policy::canonical_path(req.uri.path_and_query().map_or("/", |pq| pq.as_str()));
        if policy::is_reserved(&path) {
            ctx.outcome = "reserved";
            let r = endpoints::Reserved {
                shared: &self.shared,
                snap: &snap,
                site: ctx.site.as_deref(),
                host: &ctx.host,
                path: &path,
                request_id: &ctx.request_id,
                trace_id: ctx.trace_id.as_deref(),
            };
            return endpoints::reserved(r, session).await.map(Admitted::Answer);
        }
        let site = ctx.site.clone().ok_or_else(Refusal::misdirected)?;
        headers::strip_inbound(session.req_header_mut(), &snap.names, ctx.client.trusted);
        ctx.scheme = ctx.client.scheme(session.req_header());
        if policy::is_public(&site.policy, &path) {
            ctx.outcome = "public";
            return Ok(Admitted::Proxy);
        }
        let req = session.req_header();
        let auditor = &Scope {
            auditor: &self.shared.auditor,
            request_id: &ctx.request_id,
            trace_id: ctx.trace_id.as_deref(),
        };
        ctx.session = token::authenticate(
            &snap.verifier,
            &self.shared.revocations,
            &site,
            req,
            &ctx.host.host,
            auditor,
        )
        .await?;
        if let Some(s) = &ctx.session {
            let admission = Admission {
                cfg: &snap.config.liveness,
                token: &snap.config.token,
                site: &site,
                req,
                session: s,
                until: snap.verifier.honoured_until(&s.identity),
            };
            ctx.impersonating = liveness::admit(&self.shared.liveness, admission, auditor).await?;
            ctx.read_only = ctx.impersonating
                && (site.policy.read_only
                    || s.identity
                        .impersonation
                        .as_ref()
                        .is_some_and(|i| i.read_only()));
        }
        if ctx.impersonating {
            // A `_method` in a form body could make this POST a denied method: read it first.
            let body_methods = if policy::body_may_override(&site.policy, req, &path, ctx.read_only)
            {
                policy::read_body_methods(session).await?
            } else {
                Vec::new()
            };
            let req = session.req_header();
            if let Some(r) = policy::impersonation_refusal(
                &site.policy,
                req,
                &path,
                &body_methods,
                ctx.read_only,
            ) {
                return Err(r);
            }
        }
        let req = session.req_header();
        if ctx.session.is_none()
            && let Some(r) = policy::unauthenticated_refusal(
                &site.unauthenticated,
                req,
                &ctx.host.host,
                ctx.scheme,
            )
        {
            return Err(r);
        }
        Ok(Admitted::Proxy)
    }

    /// Answers a refusal: the outcome, its audit event, the connection's fate, the response.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, refusal: Refusal) -> Result<()> {
        ctx.outcome = refusal.outcome;
        if let (Some(note), Some(s)) = (&refusal.audit, &ctx.session) {
            let req = session.req_header();
            let mut ev = s.identity.audit_event(note.event, ctx.site_label());
            ev.method = Some(req.method.to_string());
            ev.path = Some(String::from_utf8_lossy(req.raw_path()).into_owned());
            ev.canonical_path = note.canonical_path.clone();
            ev.status = Some(refusal.status);
            ev.reason = note.reason.clone();
            ev.peer = self.client_ip(session, ctx);
            self.scope(ctx).emit(ev);
        }
        if refusal.close {
            session.set_keepalive(None);
        }
        let req = session.req_header();
        let (html, head) = (html_requested(req), is_head(req));
        refusal
            .render(html, &ctx.request_id)
            .send(session, head)
            .await
    }

    /// The auditor for events this request causes.
    fn scope<'a>(&'a self, ctx: &'a Ctx) -> Scope<'a> {
        Scope {
            auditor: &self.shared.auditor,
            request_id: &ctx.request_id,
            trace_id: ctx.trace_id.as_deref(),
        }
    }

    /// The effective client address, for logs.
    fn client_ip(&self, session: &Session, ctx: &Ctx) -> Option<String> {
        headers::effective_client(session.req_header(), &ctx.client, |ip| {
            ctx.snap.config.trusts(ip)
        })
        .map(|ip| ip.to_string())
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snap: self.shared.snapshot(),
            host: RequestHost {
                authority: String::new(),
                host: String::new(),
            },
            client: Client::default(),
            scheme: "http",
            site: None,
            session: None,
            impersonating: false,
            read_only: false,
            banner: None,
            socket: None,
            outcome: "proxied",
            request_id: String::new(),
            trace_id: None,
            upstream_started: None,
            upstream_ms: None,
            _inflight: InflightGuard::new(&self.shared),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(Admitted::Proxy) => Ok(false),
            Ok(Admitted::Answer(answer)) => {
                let head = is_head(session.req_header());
                answer
                    .header(REQUEST_ID, ctx.request_id.clone())
                    .send(session, head)
                    .await?;
                Ok(true)
            }
            Err(refusal) => {
                self.refuse(session, ctx, refusal).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let site = ctx.site()?;
        let mut peer = upstream_peer_of(site);
        if ctx.impersonating && liveness::is_upgrade(session.req_header()) {
            // An idle impersonating WebSocket cannot be told its session ended (no frame
            // passes a filter), so it is closed after cache_ttl of silence; clients reconnect
            // through the liveness check.
            let cap = ctx.snap.config.liveness.cache_ttl;
            peer.options.read_timeout = Some(site.read_timeout.min(cap));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_started = Some(Instant::now());
        let site = ctx.site()?;
        let assertion = match (&ctx.snap.assertions, &ctx.session) {
            (Some(issuer), Some(s)) => {
                let acting = crate::assertion::Acting {
                    impersonating: ctx.impersonating,
                    read_only: ctx.read_only,
                };
                let signed = issuer
                    .issue(&s.token, &s.identity, &ctx.host.host, acting)
                    .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
                Some(signed)
            }
            _ => None,
        };
        let forward = Forward {
            authority: &ctx.host.authority,
            host: &ctx.host.host,
            client: &ctx.client,
            cookie_name: &ctx.snap.config.token.cookie,
            keep_cookie: ctx
                .session
                .as_ref()
                .filter(|_| site.forward_session_cookie)
                .map(|s| s.token.as_str()),
            names: &ctx.snap.names,
            identity: ctx.session.as_ref().map(|s| &s.identity),
            impersonating: ctx
                .impersonating
                .then_some(headers::Mode::of(ctx.read_only)),
            assertion: assertion.as_deref(),
            request_id: &ctx.request_id,
        };
        headers::prepare_upstream(upstream, &forward)?;
        banner::prepare_upstream_request(upstream, ctx.impersonating && site.banner)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(started) = ctx.upstream_started {
            ctx.upstream_ms = Some(access::millis(started.elapsed()));
        }
        resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        let dropped = token::cookie::drop_session_set_cookie(resp, &ctx.snap.config.token.cookie);
        if dropped > 0 {
            tracing::warn!(
                site = ctx.site_label(),
                dropped,
                "upstream tried to set the session cookie"
            );
        }
        let (Some(s), true) = (&ctx.session, ctx.impersonating) else {
            return Ok(());
        };
        headers::mark_private(resp)?;
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let cfg = ctx.snap.config.liveness.clone();
            ctx.socket = SocketGuard::watch(self.shared.liveness.clone(), cfg, &s.identity);
            return Ok(());
        }
        let page = Page {
            enabled: ctx.site.as_ref().is_some_and(|s| s.banner),
            identity: &s.identity,
            authority: &ctx.host.authority,
            scheme: ctx.scheme,
            csrf: &ctx.snap.csrf,
            assets_version: &ctx.snap.assets.version,
        };
        ctx.banner = banner::start(session.req_header(), resp, page)?.map(Mutex::new);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match &ctx.socket {
            Some(g) => g.check(&self.shared.liveness),
            None => Ok(()),
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(g) = &ctx.socket {
            g.check(&self.shared.liveness)?;
        }
        let Some(stream) = ctx.banner.as_mut() else {
            return Ok(None);
        };
        let stream = stream.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = stream.filter(body, end_of_stream) {
            ctx.outcome = "banner_error";
            tracing::warn!(site = ctx.site_label(), error = %e, "ending an impersonated page early");
            return Err(Error::explain(ErrorType::Custom("banner"), e.to_string()));
        }
        Ok(None)
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
        if code > 0 {
            let refusal = Refusal::failure(code);
            ctx.outcome = refusal.outcome;
            if code == 502 {
                METRICS
                    .upstream_errors
                    .with_label_values(&[ctx.site_label()])
                    .inc();
            }
            if session.response_written().is_none() {
                let req = session.req_header();
                let (html, head) = (html_requested(req), is_head(req));
                if let Err(err) = refusal
                    .render(html, &ctx.request_id)
                    .send(session, head)
                    .await
                {
                    tracing::debug!(error = %err, "could not send the error page");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let site = ctx.site_label().to_string();
        let status = session.response_written().map(|r| r.status.as_u16());
        let outcome = match (ctx.outcome, status) {
            ("proxied", Some(s)) if s >= 500 => "upstream_5xx",
            (o, _) => o,
        };
        let elapsed = ctx.started.elapsed();
        METRICS.requests.with_label_values(&[&site, outcome]).inc();
        METRICS
            .request_duration
            .with_label_values(&[&site])
            .observe(elapsed.as_secs_f64());
        let peer = self.client_ip(session, ctx);
        let req = session.req_header();
        let target = String::from_utf8_lossy(req.raw_path());
        let impersonation = ctx
            .session
            .as_ref()
            .filter(|_| ctx.impersonating)
            .and_then(|s| s.identity.impersonation.as_ref());
        if let (Some(s), Some(_)) = (&ctx.session, impersonation) {
            let mut ev = s.identity.audit_event("impersonation.request", &site);
            ev.method = Some(req.method.to_string());
            ev.path = Some(target.clone().into_owned());
            ev.status = status;
            ev.duration_ms = Some(elapsed.as_millis() as u64);
            ev.peer = peer.clone();
            self.scope(ctx).emit(ev);
        }
        if self.shared.access.enabled() {
            let identity = ctx.session.as_ref().map(|s| &s.identity);
            let user_agent = req.headers.get("user-agent").and_then(|v| v.to_str().ok());
            let line = AccessLine {
                ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                request_id: &ctx.request_id,
                trace_id: ctx.trace_id.as_deref(),
                site: ctx.site.as_ref().map(|s| s.name.as_str()),
                host: &ctx.host.host,
                method: req.method.as_str(),
                path: access::logged_path(&target, ctx.snap.config.access_include_query),
                status: status.unwrap_or(0),
                bytes_sent: session.body_bytes_sent(),
                duration_ms: access::millis(elapsed),
                upstream_ms: ctx.upstream_ms,
                outcome,
                peer,
                user_agent,
                user_id: identity.map(|i| i.user_id.as_str()),
                tenant_id: identity.and_then(|i| i.tenant_id.as_deref()),
                sid: impersonation.map(|i| i.sid.as_str()),
            };
            self.shared.access.write(&line);
        }
    }
}
