//! Revoking ordinary sessions (SPEC.md "Revocation"): one token (`jti`), every token of one
//! platform session (`sid`, the token's `session_id` claim), or every token of a user issued
//! before a time (`sub` + `before`: "sign out everywhere"). They come from `POST /revocations`,
//! an OIDC back-channel logout, or another replica through Redis (`v:2` messages, also stored in
//! Redis so that a replica that starts later loads them).
//!
//! Every request is checked, verified-token cache hits included, in O(1): three hash lookups.
//! Each entry is kept until its `until` (the revocation's time plus `revocation_retention`); the
//! memory is bounded by that and by a cap, and counted.

use crate::metrics::METRICS;
use moka::Expiry;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// Entries per kind kept at most; beyond it the oldest go first, and are counted.
const MAX_ENTRIES: u64 = 1_000_000;
/// How long a request waits for the first load from Redis before it goes on without it.
const LOAD_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Jti,
    Sid,
    Sub,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Sid => "sid",
            Kind::Sub => "sub",
        }
    }
}

/// One revocation, as stored and as sent between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub kind: Kind,
    pub value: String,
    /// `sub` only: tokens issued (`iat`) before this Unix time are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Remembered until this Unix time.
    pub until: u64,
}

/// A value a revocation may name: non-empty, at most 1 KiB, no control characters.
fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 1024 && !v.chars().any(char::is_control)
}

impl Revocation {
    /// Well formed: a valid value, and `before` exactly for `sub`.
    pub fn is_valid(&self) -> bool {
        valid_value(&self.value) && (self.kind == Kind::Sub) == self.before.is_some()
    }

    /// A revocation of `kind`/`value` made now, remembered for `retention`.
    pub fn new(
        kind: Kind,
        value: String,
        before: Option<u64>,
        now: u64,
        retention: Duration,
    ) -> Revocation {
        Revocation {
            kind,
            value,
            before: (kind == Kind::Sub).then(|| before.unwrap_or(now)),
            until: now.saturating_add(retention.as_secs()),
        }
    }

    /// Reads a `POST /revocations` body: `{"jti": ...}`, `{"sid": ...}` or
    /// `{"sub": ..., "before": <unix>}` (exactly one of the three). `Err` says what is wrong.
    pub fn from_request(body: &[u8], now: u64, retention: Duration) -> Result<Revocation, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("the body must be a JSON object")?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "jti" | "sid" | "sub" | "before") {
                return Err(format!(
                    "unknown field \"{key}\" (jti, sid, or sub with before)"
                ));
            }
        }
        let named: Vec<Kind> = [("jti", Kind::Jti), ("sid", Kind::Sid), ("sub", Kind::Sub)]
            .into_iter()
            .filter(|(k, _)| obj.contains_key(*k))
            .map(|(_, kind)| kind)
            .collect();
        let kind = match named.as_slice() {
            [one] => *one,
            [] => return Err("name what to revoke: \"jti\", \"sid\" or \"sub\"".into()),
            _ => return Err("name exactly one of \"jti\", \"sid\", \"sub\"".into()),
        };
        let value = obj
            .get(kind.label())
            .and_then(|v| v.as_str())
            .filter(|v| valid_value(v))
            .ok_or_else(|| format!("\"{}\" must be a non-empty string", kind.label()))?
            .to_string();
        let before = match obj.get("before") {
            None => None,
            Some(_) if kind != Kind::Sub => {
                return Err("\"before\" goes with \"sub\" only".into());
            }
            Some(b) => Some(
                b.as_u64()
                    .filter(|b| *b <= crate::token::MAX_TIME)
                    .ok_or("\"before\" must be a Unix time in seconds")?,
            ),
        };
        Ok(Revocation::new(kind, value, before, now, retention))
    }
}

/// Until when (Unix seconds) a value is kept; the cache forgets it then.
struct UntilUnix;

fn left(until: u64) -> Duration {
    Duration::from_secs(until.saturating_sub(crate::token::now()))
}

impl Expiry<String, u64> for UntilUnix {
    fn expire_after_create(&self, _k: &String, until: &u64, _at: Instant) -> Option<Duration> {
        Some(left(*until))
    }
    fn expire_after_update(
        &self,
        _k: &String,
        until: &u64,
        _at: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(left(*until))
    }
}

impl Expiry<String, (u64, u64)> for UntilUnix {
    fn expire_after_create(&self, _k: &String, v: &(u64, u64), _at: Instant) -> Option<Duration> {
        Some(left(v.1))
    }
    fn expire_after_update(
        &self,
        _k: &String,
        v: &(u64, u64),
        _at: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(left(v.1))
    }
}

fn cache<V: Clone + Send + Sync + 'static>(kind: Kind) -> Cache<String, V>
where
    UntilUnix: Expiry<String, V>,
{
    Cache::builder()
        .max_capacity(MAX_ENTRIES)
        .expire_after(UntilUnix)
        .eviction_listener(move |_k, _v, cause| {
            use moka::notification::RemovalCause;
            if cause == RemovalCause::Size {
                METRICS.revocations_evicted.inc();
            }
            if cause != RemovalCause::Replaced {
                METRICS.revocations.with_label_values(&[kind.label()]).dec();
            }
        })
        .build()
}

/// Where the load from Redis stands.
const LOADING: u8 = 0;
const LOADED: u8 = 1;
/// The first attempt failed: sessions are refused (503) until a load succeeds.
const FAILED: u8 = 2;
/// No Redis: nothing to load.
const NO_STORE: u8 = 3;

/// The revocations this replica knows. One per process: it survives config reloads.
pub struct Revocations {
    jti: Cache<String, u64>,
    sid: Cache<String, u64>,
    /// user id -> (issued before, until)
    sub: Cache<String, (u64, u64)>,
    load: AtomicU8,
    loaded: Notify,
    /// Logout token `jti`s already used, until their tokens expire (replays are refused).
    logout_jtis: Cache<String, u64>,
    /// Where local revocations go to reach the other replicas (the Redis fan-out owns it).
    outbox: OnceLock<mpsc::Sender<Revocation>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::new(false)
    }
}

impl Revocations {
    /// `from_redis`: a first load from Redis is coming, and requests wait (briefly) for it.
    pub fn new(from_redis: bool) -> Revocations {
        Revocations {
            jti: cache(Kind::Jti),
            sid: cache(Kind::Sid),
            sub: cache(Kind::Sub),
            logout_jtis: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(UntilUnix)
                .build(),
            load: AtomicU8::new(if from_redis { LOADING } else { NO_STORE }),
            loaded: Notify::new(),
            outbox: OnceLock::new(),
        }
    }

    /// Sends every local revocation to `outbox` from now on (the fan-out).
    pub fn send_to(&self, outbox: mpsc::Sender<Revocation>) {
        let _ = self.outbox.set(outbox);
    }

    /// Remembers a revocation (from anywhere). Returns false when it was already over.
    pub fn apply(&self, r: &Revocation) -> bool {
        if r.until <= crate::token::now() {
            return false;
        }
        let counted = |present: bool| {
            if !present {
                METRICS
                    .revocations
                    .with_label_values(&[r.kind.label()])
                    .inc();
            }
        };
        match r.kind {
            Kind::Jti => {
                counted(self.jti.contains_key(&r.value));
                let until = self.jti.get(&r.value).unwrap_or(0).max(r.until);
                self.jti.insert(r.value.clone(), until);
            }
            Kind::Sid => {
                counted(self.sid.contains_key(&r.value));
                let until = self.sid.get(&r.value).unwrap_or(0).max(r.until);
                self.sid.insert(r.value.clone(), until);
            }
            Kind::Sub => {
                counted(self.sub.contains_key(&r.value));
                let (before, until) = self.sub.get(&r.value).unwrap_or((0, 0));
                let entry = (before.max(r.before.unwrap_or(0)), until.max(r.until));
                self.sub.insert(r.value.clone(), entry);
            }
        }
        true
    }

    /// A revocation made here: remembered, and handed to the fan-out.
    pub fn revoke(&self, r: Revocation) {
        self.apply(&r);
        if let Some(outbox) = self.outbox.get()
            && outbox.try_send(r).is_err()
        {
            tracing::warn!(
                "revocation publish queue full; other replicas load it from Redis later"
            );
        }
    }

    /// Is this the first time a logout token `jti` is presented? It is remembered until `until`
    /// (the token's expiry), so a replay on this replica is refused.
    pub fn first_use_of_logout(&self, jti: &str, until: u64) -> bool {
        until > crate::token::now()
            && self
                .logout_jtis
                .entry(jti.to_string())
                .or_insert(until)
                .is_fresh()
    }

    /// Is a token with these claims revoked? By `jti`, by its session, or as its user's token
    /// issued before a "sign out everywhere" (a token without `iat` counts as issued before).
    pub fn revoked(
        &self,
        jti: Option<&str>,
        session: Option<&str>,
        user: &str,
        iat: Option<u64>,
    ) -> Option<Kind> {
        if jti.is_some_and(|j| self.jti.contains_key(j)) {
            return Some(Kind::Jti);
        }
        if session.is_some_and(|s| self.sid.contains_key(s)) {
            return Some(Kind::Sid);
        }
        if let Some((before, _)) = self.sub.get(user)
            && iat.is_none_or(|iat| iat < before)
        {
            return Some(Kind::Sub);
        }
        None
    }

    /// Can a session be honoured? Not before the stored revocations have been loaded from Redis
    /// (when it is configured), so that a replica that just started never honours a token revoked
    /// while it was away: a request waits (at most `LOAD_WAIT`) for the first load, and while it
    /// cannot happen, sessions are refused (fail closed).
    pub async fn ready(&self) -> bool {
        if self.load.load(Ordering::Acquire) == LOADING {
            let wait = self.loaded.notified();
            if self.load.load(Ordering::Acquire) == LOADING {
                let _ = tokio::time::timeout(LOAD_WAIT, wait).await;
            }
        }
        matches!(self.load.load(Ordering::Acquire), LOADED | NO_STORE)
    }

    /// A load from Redis is done (`true`), or the first attempt failed (`false`: requests stop
    /// waiting and sessions are refused until a load succeeds).
    pub fn first_load_over(&self, loaded: bool) {
        if loaded {
            self.load.store(LOADED, Ordering::Release);
        } else {
            let _ =
                self.load
                    .compare_exchange(LOADING, FAILED, Ordering::AcqRel, Ordering::Acquire);
        }
        self.loaded.notify_waiters();
    }

    /// Is the first load from Redis still under way?
    pub fn loading(&self) -> bool {
        self.load.load(Ordering::Acquire) == LOADING
    }

    /// May sessions be honoured: no Redis, or its revocations loaded at least once (`/readyz`)?
    pub fn loaded(&self) -> bool {
        matches!(self.load.load(Ordering::Acquire), LOADED | NO_STORE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn request_bodies_name_one_kind() {
        let now = 1_800_000_000;
        let r = Revocation::from_request(br#"{"jti":"t-1"}"#, now, DAY).expect("jti");
        assert_eq!(
            (r.kind, r.value.as_str(), r.before, r.until),
            (Kind::Jti, "t-1", None, now + 86_400)
        );
        let r = Revocation::from_request(br#"{"sub":"u-42"}"#, now, DAY).expect("sub");
        assert_eq!(r.before, Some(now), "before defaults to now");
        let r = Revocation::from_request(br#"{"sub":"u-42","before":1795300000}"#, now, DAY)
            .expect("sub");
        assert_eq!(r.before, Some(1_795_300_000));
        for (body, problem) in [
            (&b"nope"[..], "not JSON"),
            (br#"[1]"#, "object"),
            (br#"{}"#, "name what"),
            (br#"{"jti":"a","sid":"b"}"#, "exactly one"),
            (br#"{"jti":""}"#, "non-empty"),
            (br#"{"jti":7}"#, "non-empty"),
            (br#"{"sid":"s","before":1}"#, "with \"sub\" only"),
            (br#"{"sub":"u","before":-1}"#, "Unix time"),
            (br#"{"sub":"u","whom":1}"#, "unknown field"),
        ] {
            let e = Revocation::from_request(body, now, DAY).expect_err("refused");
            assert!(
                e.contains(problem),
                "{}: {e}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn each_kind_revokes_its_tokens_only() {
        let rs = Revocations::new(false);
        let now = crate::token::now();
        rs.apply(&Revocation::new(Kind::Jti, "t-1".into(), None, now, DAY));
        rs.apply(&Revocation::new(Kind::Sid, "s-1".into(), None, now, DAY));
        rs.apply(&Revocation::new(
            Kind::Sub,
            "u-1".into(),
            Some(now),
            now,
            DAY,
        ));
        assert_eq!(
            rs.revoked(Some("t-1"), None, "u-9", Some(now)),
            Some(Kind::Jti)
        );
        assert_eq!(rs.revoked(Some("t-2"), None, "u-9", Some(now)), None);
        assert_eq!(rs.revoked(None, Some("s-1"), "u-9", None), Some(Kind::Sid));
        assert_eq!(rs.revoked(None, Some("s-2"), "u-9", None), None);
        assert_eq!(
            rs.revoked(None, None, "u-1", Some(now - 5)),
            Some(Kind::Sub)
        );
        assert_eq!(
            rs.revoked(None, None, "u-1", None),
            Some(Kind::Sub),
            "no iat: before"
        );
        assert_eq!(
            rs.revoked(None, None, "u-1", Some(now)),
            None,
            "issued at the time"
        );
        assert_eq!(
            rs.revoked(None, None, "u-1", Some(now + 60)),
            None,
            "issued later"
        );
        assert_eq!(
            rs.revoked(None, None, "u-2", Some(now - 5)),
            None,
            "another user"
        );
        // An expired revocation is not applied at all.
        assert!(!rs.apply(&Revocation {
            kind: Kind::Jti,
            value: "old".into(),
            before: None,
            until: now - 1,
        }));
        assert_eq!(rs.revoked(Some("old"), None, "u", None), None);
    }

    #[tokio::test]
    async fn sessions_wait_for_the_first_load_and_fail_closed_without_it() {
        assert!(Revocations::new(false).ready().await, "no Redis: ready");
        let rs = std::sync::Arc::new(Revocations::new(true));
        assert!(!rs.loaded());
        let waiter = {
            let rs = rs.clone();
            tokio::spawn(async move { rs.ready().await })
        };
        tokio::task::yield_now().await;
        rs.first_load_over(true);
        assert!(waiter.await.expect("join"), "woken by the load");
        assert!(rs.loaded());
        // A later failure (a reconnect) does not undo a load.
        rs.first_load_over(false);
        assert!(rs.ready().await);

        let failed = Revocations::new(true);
        failed.first_load_over(false);
        assert!(!failed.ready().await, "fail closed");
        assert!(!failed.loaded());
        failed.first_load_over(true);
        assert!(failed.ready().await, "a later load counts");
    }
}
