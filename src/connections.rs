//! Client connections on the public listener: how many may be open at once.
//!
//! Each connection holds a descriptor for as long as it is open, and an idle one costs its
//! client nothing. Uncapped, idle sockets fill the descriptor table until the process cannot
//! open anything else: the admin listener stops accepting (no `/healthz`, no `/metrics`), and
//! upstream connects and the audit file fail. So at start the soft `RLIMIT_NOFILE` is raised
//! to the hard limit, and the public listener keeps at most
//! `min(listen.max_connections, soft limit - reserve)` connections open. A connection beyond
//! that is accepted and closed at once (accepting, not leaving it in the backlog, is what
//! tells the client), and counted.

use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors the public listener never takes: a quarter of the limit, and at least 64.
///
/// They are for what the process itself needs while the public listener is full: its fixed
/// descriptors (26 measured with 2 worker threads: listeners, one epoll and eventfd per
/// runtime thread, stdio, the audit file; about two more per extra thread), the admin
/// listener's connections, the liveness backend and Redis, the connection each accepted-and-
/// refused client briefly holds, and upstream connections (one per request in flight, and the
/// keep-alive pool). 64 covers the fixed part with room to spare on small limits (at 128, 64
/// clients still fit); a quarter grows the reserve with the limit for the upstream side, which
/// grows with the traffic. After the raise to the hard limit (1,048,576 in most container
/// runtimes, 524,288 under systemd) the cap is `listen.max_connections`.
pub fn reserve(soft_limit: u64) -> u64 {
    (soft_limit / 4).max(64)
}

/// How many client connections the descriptor limit leaves room for (at least one, so that a
/// tiny limit degrades the listener instead of closing it).
pub fn room(soft_limit: u64) -> usize {
    let room = soft_limit.saturating_sub(reserve(soft_limit)).max(1);
    usize::try_from(room).unwrap_or(usize::MAX)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (allowed without privileges) and returns
/// the soft limit in force afterwards; `None` when it cannot be read.
#[cfg(target_os = "linux")]
pub fn raise_descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot read the descriptor limit"))
        .ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(hard),
        Err(e) => {
            // An infinite hard limit is above the kernel's `nr_open`, which refuses it.
            tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
            Some(soft)
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn raise_descriptor_limit() -> Option<u64> {
    None
}

/// Counts the public listener's open connections against the cap.
pub struct Limiter {
    /// `listen.max_connections`, read for every new connection so that a reload applies.
    configured: Box<dyn Fn() -> usize + Send + Sync>,
    /// What the descriptor limit leaves for client connections.
    room: usize,
    open: AtomicUsize,
}

impl Limiter {
    /// `soft_limit`: the descriptor limit in force (`None`: unknown, only `configured` caps).
    pub fn new(
        configured: impl Fn() -> usize + Send + Sync + 'static,
        soft_limit: Option<u64>,
    ) -> Limiter {
        let room = soft_limit.map_or(usize::MAX, room);
        if room < configured() {
            tracing::warn!(
                descriptors = soft_limit,
                cap = room,
                "the descriptor limit caps the public listener below listen.max_connections"
            );
        }
        Limiter {
            configured: Box::new(configured),
            room,
            open: AtomicUsize::new(0),
        }
    }

    pub fn cap(&self) -> usize {
        (self.configured)().min(self.room)
    }

    /// A place for one more connection, held until the guard drops; `None` when full (counted).
    pub fn admit(self: &Arc<Self>) -> Option<OpenConnection> {
        let cap = self.cap();
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            METRICS.connections_refused.inc();
            return None;
        }
        METRICS.open_connections.inc();
        Some(OpenConnection(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One admitted connection; its place is given back on drop, however the connection ends.
pub struct OpenConnection(Arc<Limiter>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        METRICS.open_connections.dec();
    }
}

/// The public listener's app: `app` (the proxy) behind the connection cap.
pub struct Limited<A> {
    app: Arc<A>,
    limiter: Arc<Limiter>,
}

impl<A> Limited<A> {
    pub fn new(app: A, limiter: Arc<Limiter>) -> Limited<A> {
        Limited {
            app: Arc::new(app),
            limiter,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_open) = self.limiter.admit() else {
            tracing::debug!(
                cap = self.limiter.cap(),
                "connection refused: listener full"
            );
            // Dropping the stream closes it.
            return None;
        };
        // An app may hand a reusable connection back for another round. Serve those rounds
        // here, so the connection is counted once, under one guard, for its whole life.
        let mut next = self.app.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.app.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_reserve_is_a_quarter_and_at_least_64() {
        assert_eq!(room(128), 64);
        assert_eq!(room(1024), 768);
        assert_eq!(room(1_048_576), 786_432);
        assert_eq!(room(64), 1);
        assert_eq!(room(0), 1);
        assert!(room(u64::MAX) > 1_000_000);
    }

    #[test]
    fn admits_up_to_the_cap_and_frees_a_place_on_drop() {
        let configured = Arc::new(AtomicUsize::new(2));
        let c = configured.clone();
        let limiter = Arc::new(Limiter::new(move || c.load(Ordering::Relaxed), Some(1024)));
        let a = limiter.admit().expect("first");
        let b = limiter.admit().expect("second");
        assert!(limiter.admit().is_none(), "third beyond the cap of 2");
        assert_eq!(limiter.open(), 2);
        drop(a);
        let c = limiter.admit().expect("a place was freed");
        // A reload that lowers the cap refuses new ones; the open ones stay.
        configured.store(1, Ordering::Relaxed);
        assert!(limiter.admit().is_none());
        drop((b, c));
        assert_eq!(limiter.open(), 0);
        assert!(limiter.admit().is_some());
    }

    #[test]
    fn the_descriptor_limit_caps_a_larger_configured_maximum() {
        let limiter = Limiter::new(|| 10_000, Some(128));
        assert_eq!(limiter.cap(), 64);
        let limiter = Limiter::new(|| 50, Some(1_048_576));
        assert_eq!(limiter.cap(), 50);
        let limiter = Limiter::new(|| 50, None);
        assert_eq!(limiter.cap(), 50);
    }
}
