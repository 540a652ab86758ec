//! What the proxy holds while it runs: the current config snapshot (swapped atomically on
//! reload; a request keeps the snapshot it started with), the audit queue, the liveness cache
//! the revocations and the Redis fan-out (all survive reloads), and the in-flight count.

use crate::access::AccessLog;
use crate::audit::Auditor;
use crate::banner::{Assets, CsrfKey, NoRandomness};
use crate::config::{Config, SiteConfig};
use crate::fanout::Fanout;
use crate::headers::IdentityHeaders;
use crate::liveness::LivenessChecker;
use crate::revocation::Revocations;
use crate::site::Router;
use crate::tls::CertStore;
use crate::token::Verifier;
use crate::token::logout::LogoutVerifier;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A config and everything derived from it, built once per load.
pub struct Snapshot {
    pub config: Config,
    pub assets: Assets,
    pub csrf: CsrfKey,
    pub router: Router<Arc<SiteConfig>>,
    pub verifier: Verifier,
    /// `[assertion]`'s issuer and its cache (a reload starts afresh with the new key).
    pub assertions: Option<crate::assertion::Assertions>,
    /// `[backchannel_logout]`'s verifier, when logout tokens are accepted.
    pub logout: Option<LogoutVerifier>,
    pub names: IdentityHeaders,
}

impl Snapshot {
    /// `process_key`: the CSRF key used when the config names none.
    pub fn new(config: Config, process_key: &[u8]) -> Snapshot {
        Snapshot::after(config, process_key, None)
    }

    /// The snapshot of a reloaded config. What is shared with `previous` survives the swap:
    /// the JWKS keys already fetched (same URL). Nothing here is per site: a site's upstream
    /// connections are pooled by Pingora by address and TLS name, and the liveness cache lives
    /// in `Shared`, so a reload that changes one site leaves the others' as they were.
    pub fn after(config: Config, process_key: &[u8], previous: Option<&Snapshot>) -> Snapshot {
        let csrf = match &config.banner.csrf_secret {
            Some(s) => CsrfKey::new(&s.0),
            None => CsrfKey::new(process_key),
        };
        // Every site's request series exists from the start (at zero), so dashboards and
        // alerts see it before the first request.
        for site in &config.sites {
            let _ = crate::metrics::METRICS
                .requests
                .with_label_values(&[site.name.as_str(), "proxied"]);
        }
        Snapshot {
            assets: Assets::new(&config.banner.color),
            csrf,
            router: Router::new(config.sites.iter().map(|s| (&s.host, s.clone()))),
            verifier: Verifier::after(&config.token, previous.map(|p| &p.verifier)),
            logout: config.backchannel_logout.as_ref().map(LogoutVerifier::new),
            assertions: config
                .assertion
                .as_ref()
                .map(crate::assertion::Assertions::new),
            names: IdentityHeaders::new(&config.header_prefix),
            config,
        }
    }
}

/// Where the proxy's logs go (fixed for the process: a sink change needs a restart).
pub struct Logs {
    pub auditor: Auditor,
    pub access: AccessLog,
}

pub struct Shared {
    current: ArcSwap<Snapshot>,
    pub auditor: Auditor,
    pub access: AccessLog,
    /// Survives reloads: the cache and the backend client's pool.
    pub liveness: Arc<LivenessChecker>,
    /// The Redis revocation fan-out, when `liveness.redis_url_env` is set (read at start).
    pub fanout: Option<Arc<Fanout>>,
    /// Revoked sessions (survive reloads; loaded from Redis when it is configured).
    pub revocations: Arc<Revocations>,
    /// The TLS listener's certificates (empty without one), swapped on reload.
    pub certs: Arc<CertStore>,
    process_key: Vec<u8>,
    inflight: AtomicUsize,
}

impl Shared {
    /// Fails only when the system has no randomness for the process's CSRF key.
    pub fn new(config: Config, logs: Logs) -> Result<Shared, NoRandomness> {
        let process_key = CsrfKey::random()?;
        let liveness = Arc::new(LivenessChecker::new());
        let fanout = config
            .liveness
            .redis_url
            .as_ref()
            .map(|_| Arc::new(Fanout::new()));
        let revocations = Arc::new(Revocations::new(fanout.is_some()));
        if let Some(f) = &fanout {
            liveness.send_ends_to(f.outbox());
            revocations.send_to(f.revocation_outbox());
        }
        let certs = Arc::new(CertStore::new(
            config
                .tls
                .as_ref()
                .map(|t| t.certs.clone())
                .unwrap_or_default(),
        ));
        Ok(Shared {
            fanout,
            revocations,
            certs,
            current: ArcSwap::from_pointee(Snapshot::new(config, &process_key)),
            process_key,
            auditor: logs.auditor,
            access: logs.access,
            liveness,
            inflight: AtomicUsize::new(0),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, config: Config) {
        if let Some(tls) = &config.tls {
            self.certs.replace(tls.certs.clone());
        }
        let previous = self.snapshot();
        self.current.store(Arc::new(Snapshot::after(
            config,
            &self.process_key,
            Some(&previous),
        )));
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// Counts a request as in flight for as long as it lives (the graceful stop waits for zero).
pub struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    pub fn new(shared: &Arc<Shared>) -> InflightGuard {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(shared.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
