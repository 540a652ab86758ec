//! What the proxy holds while it runs: the current config snapshot (swapped atomically on
//! reload; a request keeps the snapshot it started with), the audit queue, in-flight count.

use crate::audit::Auditor;
use crate::config::Config;
use crate::headers::IdentityHeaders;
use crate::liveness::LivenessChecker;
use crate::site::Router;
use crate::token::Verifier;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A config and everything derived from it, built once per load.
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    pub verifier: Verifier,
    pub names: IdentityHeaders,
}

impl Snapshot {
    pub fn new(config: Config) -> Snapshot {
        Snapshot {
            router: Router::new(&config),
            verifier: Verifier::new(&config.token),
            names: IdentityHeaders::new(&config.header_prefix),
            config,
        }
    }
}

pub struct Shared {
    current: ArcSwap<Snapshot>,
    pub auditor: Auditor,
    /// Survives reloads: the cache and the backend client's pool.
    pub liveness: LivenessChecker,
    inflight: AtomicUsize,
}

impl Shared {
    pub fn new(config: Config, auditor: Auditor) -> Shared {
        Shared {
            current: ArcSwap::from_pointee(Snapshot::new(config)),
            auditor,
            liveness: LivenessChecker::new(),
            inflight: AtomicUsize::new(0),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, config: Config) {
        self.current.store(Arc::new(Snapshot::new(config)));
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
