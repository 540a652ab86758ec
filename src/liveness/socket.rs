//! The WebSocket guard: an upgraded impersonating connection is closed on the first frame after
//! its session ends or its token expires.

use super::{Liveness, LivenessChecker};
use crate::config::LivenessConfig;
use crate::token::{Identity, now};
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A request asking to switch protocols (WebSocket).
pub fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key("upgrade")
        && req.headers.get_all("connection").iter().any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// An upgraded (WebSocket) impersonating connection: closed on the first frame after its
/// session ends or its token expires.
pub struct SocketGuard {
    ended: AtomicBool,
    sid: String,
    exp: u64,
}

impl SocketGuard {
    /// Watches an upgraded impersonating connection: every `cache_ttl` (and at the token's
    /// expiry) the session is checked again; an end flags the guard. The watcher stops when the
    /// connection (the last strong handle) is gone.
    pub fn watch(
        checker: Arc<LivenessChecker>,
        cfg: LivenessConfig,
        id: &Identity,
    ) -> Option<Arc<SocketGuard>> {
        let imp = id.impersonation.as_ref()?;
        let guard = Arc::new(SocketGuard {
            ended: AtomicBool::new(false),
            sid: imp.sid.clone(),
            exp: id.exp,
        });
        let weak = Arc::downgrade(&guard);
        tokio::spawn(async move {
            loop {
                let exp = weak.upgrade().map_or(0, |g| g.exp);
                let left = Duration::from_secs(exp.saturating_sub(now()));
                tokio::time::sleep(cfg.cache_ttl.min(left)).await;
                let Some(g) = weak.upgrade() else { return };
                let expired = now() >= g.exp;
                let live = !expired
                    && matches!(
                        checker.check(&cfg, &g.sid, None, g.exp).await,
                        Ok(Liveness::Live)
                    );
                if !live {
                    g.ended.store(true, Ordering::Relaxed);
                    return;
                }
            }
        });
        Some(guard)
    }

    /// Refuses a frame of an upgraded connection whose impersonation is over.
    pub fn check(&self, checker: &LivenessChecker) -> pingora::Result<()> {
        let over = self.ended.load(Ordering::Relaxed)
            || now() >= self.exp
            || checker.is_marked_ended(&self.sid);
        if over {
            self.ended.store(true, Ordering::Relaxed);
            return Err(pingora::Error::explain(
                pingora::ErrorType::Custom("impersonation_ended"),
                "closing a WebSocket whose impersonation ended",
            ));
        }
        Ok(())
    }
}
