//! Step 7, liveness: is this impersonation still live? The platform backend (`backend`) behind
//! a moka cache: live answers for `cache_ttl`, single-flight per sid, and `on_error`
//! deny/stale. `socket` guards upgraded (WebSocket) impersonating connections.
//! "Ended" is terminal: a late "live" never overwrites it, and it is remembered at least
//! `ended_ttl` and until the latest expiry a token of that sid can have (as far as this
//! replica has seen one), so a backend that later answers "live" by mistake cannot bring an
//! ended session back while its tokens still verify.

pub mod backend;
mod socket;

pub use backend::{BackendError, classify, sid_url};
pub use socket::{SocketGuard, is_upgrade};

use crate::audit::Scope;
use crate::config::{LivenessConfig, OnError, SiteConfig, TokenConfig};
use crate::metrics::METRICS;
use crate::response::{Refusal, is_navigation};
use crate::token::{Session, clearing_cookie, now};
use moka::Expiry;
use moka::future::Cache;
use pingora::http::RequestHeader;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Bounded size of each cache (sids are short strings; 100k entries is a few MB).
const MAX_ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Ended,
}

/// What a lookup that reached the backend learned (errors are not cached; both outcomes are
/// shared with every coalesced waiter).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fetched {
    Ended,
    Failed(BackendError),
}

/// A cached value that carries its own time to live, so a reload that changes the TTLs applies
/// to new entries without rebuilding the cache.
#[derive(Debug, Clone, Copy)]
struct Timed {
    at: Instant,
    ttl: Duration,
}

struct OwnTtl;

impl Expiry<String, Timed> for OwnTtl {
    fn expire_after_create(
        &self,
        _k: &String,
        v: &Timed,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &String,
        v: &Timed,
        _at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

fn timed_cache() -> Cache<String, Timed> {
    Cache::builder()
        .max_capacity(MAX_ENTRIES)
        .expire_after(OwnTtl)
        .support_invalidation_closures()
        .build()
}

/// The ended sids. Bounded like the others; an entry pushed out by the bound (not by its
/// expiry) is counted, since that sid is then only as ended as the backend says.
fn ended_cache() -> Cache<String, Timed> {
    Cache::builder()
        .max_capacity(MAX_ENTRIES)
        .expire_after(OwnTtl)
        .eviction_listener(|_k, _v, cause| {
            use moka::notification::RemovalCause;
            if cause == RemovalCause::Size {
                METRICS.liveness_ended_evicted.inc();
            }
            if cause != RemovalCause::Replaced {
                METRICS.liveness_ended_entries.dec();
            }
        })
        .build()
}

/// The latest `exp` (plus leeway, Unix seconds) seen on a token of each sid, kept until then.
struct UntilExp;

impl Expiry<String, u64> for UntilExp {
    fn expire_after_create(&self, _k: &String, until: &u64, _at: Instant) -> Option<Duration> {
        Some(seconds_until(*until))
    }
    fn expire_after_update(
        &self,
        _k: &String,
        until: &u64,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(seconds_until(*until))
    }
}

/// No entry needs to outlive this (tokens are refused past 9999 anyway); it keeps every
/// `Instant` computation far from overflow.
const LONGEST_MEMORY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn seconds_until(unix: u64) -> Duration {
    Duration::from_secs(unix.saturating_sub(now())).min(LONGEST_MEMORY)
}

/// The liveness checker. One per process: it survives config reloads.
pub struct LivenessChecker {
    http: reqwest::Client,
    live: Cache<String, Timed>,
    ended: Cache<String, Timed>,
    /// Per sid, until when a token of it seen here can be honoured (its `exp` plus leeway).
    token_until: Cache<String, u64>,
    /// When each sid was last seen live, for `on_error = "stale"`.
    last_live: Cache<String, Timed>,
    /// Where local ends go to reach the other replicas (the Redis fan-out owns the receiver).
    outbox: OnceLock<mpsc::Sender<Ended>>,
}

impl Default for LivenessChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl LivenessChecker {
    pub fn new() -> LivenessChecker {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        LivenessChecker {
            http,
            live: timed_cache(),
            ended: ended_cache(),
            token_until: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(UntilExp)
                .build(),
            last_live: timed_cache(),
            outbox: OnceLock::new(),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST end_url` for this sid (see [`backend::end`]). Without a backend (`enabled =
    /// false`) there is nothing to tell: the proxy's own mark is the end.
    pub async fn end(&self, cfg: &LivenessConfig, sid: &str, cookie: &str) -> Result<(), String> {
        if !cfg.enabled {
            return Ok(());
        }
        backend::end(&self.http, cfg, sid, cookie).await
    }

    /// Sends every local end to `outbox` from now on (the fan-out to the other replicas).
    pub fn send_ends_to(&self, outbox: mpsc::Sender<Ended>) {
        let _ = self.outbox.set(outbox);
    }

    /// Marks a sid ended in this proxy at once (End endpoint, admin revoke) and tells the other
    /// replicas. `ended_by`: `tenant`, `admin` or `backend`. `token_until`: the expiry (plus
    /// leeway) of the token that asked, when there is one.
    pub async fn mark_ended(
        &self,
        sid: &str,
        ended_ttl: Duration,
        token_until: Option<u64>,
        ended_by: &'static str,
    ) {
        let until = self.mark_ended_quietly(sid, ended_ttl, token_until).await;
        let Some(outbox) = self.outbox.get() else {
            return;
        };
        let ended = Ended {
            sid: sid.to_string(),
            ended_by,
            until,
        };
        if outbox.try_send(ended).is_err() {
            tracing::warn!(
                sid,
                "revocation publish queue full; other replicas learn within cache_ttl"
            );
        }
    }

    /// Marks a sid ended without telling anyone (a revocation that came from elsewhere), for at
    /// least `ended_ttl` and until the latest token expiry known for it. Returns that expiry.
    pub async fn mark_ended_quietly(
        &self,
        sid: &str,
        ended_ttl: Duration,
        token_until: Option<u64>,
    ) -> Option<u64> {
        let seen = self.token_until.get(sid).await;
        let until = seen.max(token_until);
        let ttl = ended_ttl.max(until.map_or(Duration::ZERO, seconds_until));
        let at = Instant::now();
        if !self.ended.contains_key(sid) {
            METRICS.liveness_ended_entries.inc();
        }
        self.ended.insert(sid.to_string(), Timed { at, ttl }).await;
        self.live.invalidate(sid).await;
        self.last_live.invalidate(sid).await;
        until
    }

    /// An ended sid came back with a token that lives longer than the sid is remembered: keep
    /// it ended for as long as that token could be honoured.
    async fn keep_ended(&self, sid: &str, entry: Timed, token_until: u64) {
        let wanted = seconds_until(token_until);
        // A second of slack: the token that ended it usually asks again, and needs no write.
        if entry.at.elapsed() + wanted > entry.ttl + Duration::from_secs(1) {
            let at = Instant::now();
            let ttl = wanted.max(entry.ttl.saturating_sub(entry.at.elapsed()));
            self.ended.insert(sid.to_string(), Timed { at, ttl }).await;
        }
    }

    /// Remembers the latest expiry of the tokens seen for a sid.
    async fn saw_token(&self, sid: &str, token_until: u64) {
        if self
            .token_until
            .get(sid)
            .await
            .is_none_or(|known| known < token_until)
        {
            self.token_until.insert(sid.to_string(), token_until).await;
        }
    }

    /// Drops live answers obtained before `since` (after a fan-out outage: a revocation may
    /// have been missed).
    pub fn forget_live_since(&self, since: Instant) {
        let _ = self.live.invalidate_entries_if(move |_, v| v.at < since);
        let _ = self
            .last_live
            .invalidate_entries_if(move |_, v| v.at < since);
    }

    /// Synchronous: usable from Pingora's body filters.
    pub fn is_marked_ended(&self, sid: &str) -> bool {
        self.ended.contains_key(sid)
    }

    /// The answer for one request. `cookie` is the `Cookie` header value sent when
    /// `forward_cookie` is on; `token_until` is the asking token's `exp` plus leeway.
    pub async fn check(
        &self,
        cfg: &LivenessConfig,
        sid: &str,
        cookie: Option<&str>,
        token_until: u64,
    ) -> Result<Liveness, BackendError> {
        if let Some(entry) = self.ended.get(sid).await {
            METRICS.liveness_cache.with_label_values(&["hit"]).inc();
            self.keep_ended(sid, entry, token_until).await;
            return Ok(self.counted(Liveness::Ended));
        }
        self.saw_token(sid, token_until).await;
        if !cfg.enabled {
            // No backend: an impersonation holds until its exp unless it was ended here (End,
            // a revoke, another replica through Redis).
            return Ok(self.counted(Liveness::Live));
        }
        if self.live.get(sid).await.is_some() {
            METRICS.liveness_cache.with_label_values(&["hit"]).inc();
            return Ok(self.counted(Liveness::Live));
        }
        METRICS.liveness_cache.with_label_values(&["miss"]).inc();
        let ran = AtomicBool::new(false);
        let fetched = self
            .live
            .try_get_with(sid.to_string(), async {
                ran.store(true, Ordering::Relaxed);
                match backend::fetch(&self.http, cfg, sid, cookie).await {
                    Ok(Liveness::Live) => Ok(Timed {
                        at: Instant::now(),
                        ttl: cfg.cache_ttl,
                    }),
                    Ok(Liveness::Ended) => Err(Fetched::Ended),
                    Err(e) => Err(Fetched::Failed(e)),
                }
            })
            .await;
        if !ran.load(Ordering::Relaxed) {
            METRICS.liveness_coalesced.inc();
        }
        match fetched {
            // Ended is terminal: an End or revoke that raced this lookup wins.
            Ok(_) if self.ended.contains_key(sid) => Ok(self.counted(Liveness::Ended)),
            Ok(_) => {
                self.last_live
                    .insert(
                        sid.to_string(),
                        Timed {
                            at: Instant::now(),
                            ttl: cfg.stale_ttl,
                        },
                    )
                    .await;
                Ok(self.counted(Liveness::Live))
            }
            Err(e) => match e.as_ref() {
                Fetched::Ended => {
                    // Only the caller that ran the lookup tells the other replicas.
                    if ran.load(Ordering::Relaxed) {
                        self.mark_ended(sid, cfg.ended_ttl, Some(token_until), "backend")
                            .await;
                    } else {
                        self.mark_ended_quietly(sid, cfg.ended_ttl, Some(token_until))
                            .await;
                    }
                    Ok(self.counted(Liveness::Ended))
                }
                Fetched::Failed(err) => {
                    if cfg.on_error == OnError::Stale
                        && let Some(seen) = self.last_live.get(sid).await
                        && seen.at.elapsed() < cfg.stale_ttl
                    {
                        METRICS.liveness_stale_served.inc();
                        return Ok(self.counted(Liveness::Live));
                    }
                    METRICS.liveness_lookups.with_label_values(&["error"]).inc();
                    Err(err.clone())
                }
            },
        }
    }

    fn counted(&self, l: Liveness) -> Liveness {
        let label = match l {
            Liveness::Live => "live",
            Liveness::Ended => "ended",
        };
        METRICS.liveness_lookups.with_label_values(&[label]).inc();
        l
    }
}

/// A local end, on its way to the other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub sid: String,
    /// `tenant` (the End button), `admin` (a revoke) or `backend` (its answer).
    pub ended_by: &'static str,
    /// Until when a token of this sid can still verify, when known.
    pub until: Option<u64>,
}

/// Why an impersonation is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Ended,
    Expired,
}

/// What an ended (or expired) impersonation gets: navigations go to `after_end_url`, anything
/// else a `401` whose `code` is what the seeds' frontends already check on `/me`; both clear the
/// cookie.
pub fn over_refusal(
    req: &RequestHeader,
    site: &SiteConfig,
    token: &TokenConfig,
    over: Over,
) -> Refusal {
    let (outcome, body) = match over {
        Over::Ended => (
            "impersonation_ended",
            r#"{"error":"impersonation_ended","code":"IMPERSONATION_ENDED"}"#,
        ),
        Over::Expired => (
            "impersonation_expired",
            r#"{"error":"impersonation_expired","code":"IMPERSONATION_ENDED"}"#,
        ),
    };
    let answer = if is_navigation(req) {
        Refusal::redirect(302, site.after_end_url.clone(), outcome)
    } else {
        Refusal::json(401, body, outcome)
    };
    answer.header("set-cookie", clearing_cookie(token))
}

/// What an ended impersonation gets.
pub fn ended_refusal(req: &RequestHeader, site: &SiteConfig, token: &TokenConfig) -> Refusal {
    over_refusal(req, site, token, Over::Ended)
}

/// What an impersonation gets while the backend cannot say whether it is live.
pub fn unavailable() -> Refusal {
    Refusal::error(
        503,
        "liveness_unavailable",
        "The impersonation session cannot be checked right now. Try again shortly.",
        "liveness_error",
    )
    .header("retry-after", "5".to_string())
}

/// The inputs of step 7 for one request.
pub struct Admission<'a> {
    pub cfg: &'a LivenessConfig,
    pub token: &'a TokenConfig,
    pub site: &'a SiteConfig,
    pub req: &'a RequestHeader,
    pub session: &'a Session,
    /// Until when the session's token is honoured (`exp` plus leeway).
    pub until: u64,
}

/// Step 7: an impersonation is honoured only while the backend says it is live. `Ok(true)`:
/// impersonating; `Ok(false)`: not an impersonation token.
pub async fn admit(
    checker: &LivenessChecker,
    a: Admission<'_>,
    auditor: &Scope<'_>,
) -> Result<bool, Refusal> {
    let Some(imp) = &a.session.identity.impersonation else {
        return Ok(false);
    };
    let over = |event: &'static str, over: Over| {
        let mut ev = a.session.identity.audit_event(event, &a.site.name);
        ev.method = Some(a.req.method.to_string());
        ev.path = Some(String::from_utf8_lossy(a.req.raw_path()).into_owned());
        auditor.emit(ev);
        over_refusal(a.req, a.site, a.token, over)
    };
    if a.session.expired {
        return Err(over("impersonation.expired_seen", Over::Expired));
    }
    let cookie = format!("{}={}", a.token.cookie, a.session.token);
    match checker.check(a.cfg, &imp.sid, Some(&cookie), a.until).await {
        Ok(Liveness::Live) => Ok(true),
        Ok(Liveness::Ended) => Err(over("impersonation.ended_seen", Over::Ended)),
        Err(e) => {
            tracing::warn!(site = %a.site.name, error = %e, "impersonation refused: liveness unknown");
            Err(unavailable())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ended_sid_is_kept_while_a_token_of_it_lives() {
        let l = LivenessChecker::new();
        let soon = now() + 3600;
        l.mark_ended_quietly("s", Duration::from_secs(1), None)
            .await;
        let entry = l.ended.get("s").await.expect("ended");
        assert_eq!(entry.ttl, Duration::from_secs(1));
        // A token of that sid that lives an hour keeps it ended an hour.
        l.keep_ended("s", entry, soon).await;
        let entry = l.ended.get("s").await.expect("ended");
        assert!(entry.ttl >= Duration::from_secs(3590), "{entry:?}");
        // A sid whose token was seen is ended until that token's end, even without one in hand.
        l.saw_token("t", soon).await;
        assert_eq!(
            l.mark_ended_quietly("t", Duration::from_secs(1), None)
                .await,
            Some(soon)
        );
        let entry = l.ended.get("t").await.expect("ended");
        assert!(entry.ttl >= Duration::from_secs(3590), "{entry:?}");
    }
}
