//! The `ProxyHttp` hooks. Each is a short sequence of stage calls, in the order of SPEC.md's
//! pipeline (site -> token -> liveness -> policy -> headers -> banner -> audit). A stage that
//! stops a request returns a [`Refusal`]; [`Proxy::refuse`] answers every one of them.

use crate::banner::{self, Page, rewrite::BannerStream};
use crate::config::SiteConfig;
use crate::endpoints;
use crate::headers::{self, Client, Forward};
use crate::liveness::{self, Admission, SocketGuard};
use crate::metrics::METRICS;
use crate::policy;
use crate::response::{LocalResponse, Refusal, html_requested};
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

fn peer_ip(session: &Session) -> Option<String> {
    peer_addr(session).map(|ip| ip.to_string())
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
        let raw_head = match session.as_downstream() {
            ServerSession::H1(h1) => Some(h1.get_headers_raw_bytes()),
            _ => None,
        };
        headers::check_framing(session.req_header(), raw_head.as_deref())?;
        ctx.host = site::request_host(session.req_header())?;
        let served = tls::served_names(session);
        // On the TLS listener, a host the connection's certificate does not cover was meant for
        // another server (a reused connection, a client that ignores SNI).
        if served
            .as_ref()
            .is_some_and(|names| !tls::covers(names, &ctx.host.host))
        {
            return Err(Refusal::misdirected());
        }
        let peer = peer_addr(session);
        ctx.client = Client {
            peer,
            trusted: peer.is_some_and(|p| snap.config.trusts(p)),
            tls: served.is_some(),
        };
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
        let auditor = &self.shared.auditor;
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
            ev.peer = peer_ip(session);
            self.shared.auditor.emit(ev);
        }
        if refusal.close {
            session.set_keepalive(None);
        }
        let req = session.req_header();
        let (html, head) = (html_requested(req), is_head(req));
        refusal.render(html).send(session, head).await
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
            _inflight: InflightGuard::new(&self.shared),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(Admitted::Proxy) => Ok(false),
            Ok(Admitted::Answer(answer)) => {
                let head = is_head(session.req_header());
                answer.send(session, head).await?;
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
                if let Err(err) = refusal.render(html).send(session, head).await {
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
        METRICS.requests.with_label_values(&[&site, outcome]).inc();
        METRICS
            .request_duration
            .with_label_values(&[&site])
            .observe(ctx.started.elapsed().as_secs_f64());
        if let (Some(s), true) = (&ctx.session, ctx.impersonating) {
            let req = session.req_header();
            let mut ev = s.identity.audit_event("impersonation.request", &site);
            ev.method = Some(req.method.to_string());
            ev.path = Some(String::from_utf8_lossy(req.raw_path()).into_owned());
            ev.status = status;
            ev.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            ev.peer = peer_ip(session);
            self.shared.auditor.emit(ev);
        }
    }
}
