//! Revocation across replicas through Redis pub/sub. Every local "ended" (End button, admin
//! revoke, a backend answer of ended) is published; every replica subscribes and marks the sid
//! ended at once. The platform backend can publish the same message to revoke everywhere.
//!
//! Channel `sessiongate:revocations`, messages (versioned JSON):
//! - `{"v":1,"sid":"imp-42","ended_by":"tenant"|"admin"|"backend","origin":"<replica id>","ts":<unix s>}`:
//!   an impersonation sid ended;
//! - `{"v":2,"kind":"jti"|"sid"|"sub","value":"...","before":<unix, sub only>,"until":<unix>}`: a
//!   session revocation ([`crate::revocation`]). It is also stored under
//!   `sessiongate:revocation:<kind>:<value>` (for `sub`, `...:<before>`) until `until`, and every
//!   replica loads the stored ones after each (re)connect, so one that was away or just started
//!   never honours a token revoked meanwhile.
//!
//! Only `v` and the fields that say what ended are required from a publisher; unknown fields are
//! ignored; a message with another `v` is ignored (and counted) so that a newer format can roll
//! out safely.
//!
//! While Redis is unreachable a replica falls back to `cache_ttl` (it says so in `/readyz` and
//! `sessiongate_redis_connected`). After reconnecting (subscribed first) it drops every live
//! answer cached before that moment, since it may have missed messages, so the bound holds.

use crate::liveness::{Ended, LivenessChecker};
use crate::metrics::METRICS;
use crate::revocation::{Revocation, Revocations};
use crate::sync::lock;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const CHANNEL: &str = "sessiongate:revocations";
/// Where `v:2` revocations are stored: `<prefix><kind>:<value>`.
pub const KEY_PREFIX: &str = "sessiongate:revocation:";
/// Keys read per SCAN/MGET round trip when loading.
const LOAD_BATCH: usize = 1000;
const HEALTH_EVERY: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A `v:1` message: an impersonation sid ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndMessage {
    pub v: u32,
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Until when (Unix seconds) a token of this sid can still verify, when the publisher knows:
    /// the receivers keep the sid ended at least that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// A `v:2` message: a session revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeMessage {
    pub v: u32,
    #[serde(flatten)]
    pub revocation: Revocation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl RevokeMessage {
    /// The key it is stored under.
    pub fn key(&self) -> String {
        let r = &self.revocation;
        match r.before {
            Some(before) => format!("{KEY_PREFIX}{}:{}:{before}", r.kind.label(), r.value),
            None => format!("{KEY_PREFIX}{}:{}", r.kind.label(), r.value),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ended(EndMessage),
    Revoked(RevokeMessage),
}

impl Message {
    fn origin(&self) -> Option<&str> {
        match self {
            Message::Ended(m) => m.origin.as_deref(),
            Message::Revoked(m) => m.origin.as_deref(),
        }
    }
}

/// Parses a message from the channel; `None` for anything this version does not understand.
pub fn parse(payload: &[u8]) -> Option<Message> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.get("v")?.as_u64()? {
        1 => {
            let m: EndMessage = serde_json::from_value(value).ok()?;
            (!m.sid.is_empty() && !m.sid.chars().any(char::is_control)).then_some(Message::Ended(m))
        }
        2 => {
            let m: RevokeMessage = serde_json::from_value(value).ok()?;
            m.revocation.is_valid().then_some(Message::Revoked(m))
        }
        _ => None,
    }
}

/// How long a received end is remembered: `ended_ttl` when the message says until when its
/// tokens live (they are kept that long too), the revocation retention when it does not.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub ended_ttl: Duration,
    pub retention: Duration,
}

/// The replica's link to Redis: what the rest of the proxy sees of it. It owns the channel the
/// liveness checker hands its local ends to ([`Fanout::outbox`]).
pub struct Fanout {
    tx: mpsc::Sender<Ended>,
    rx: Mutex<Option<mpsc::Receiver<Ended>>>,
    revoke_tx: mpsc::Sender<Revocation>,
    revoke_rx: Mutex<Option<mpsc::Receiver<Revocation>>>,
    connected: AtomicBool,
    down_since: Mutex<Option<Instant>>,
    pub replica: String,
}

/// A short id for this replica, so it can ignore its own messages.
fn replica_id() -> String {
    let mut b = [0u8; 6];
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => format!(
            "{}-{}",
            std::process::id(),
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        // Only tells replicas apart; a pid alone still does on one host.
        Err(_) => std::process::id().to_string(),
    }
}

impl Fanout {
    pub fn new() -> Fanout {
        let (tx, rx) = mpsc::channel(4096);
        let (revoke_tx, revoke_rx) = mpsc::channel(4096);
        Fanout {
            tx,
            rx: Mutex::new(Some(rx)),
            revoke_tx,
            revoke_rx: Mutex::new(Some(revoke_rx)),
            connected: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            replica: replica_id(),
        }
    }

    /// Where local ends go to be published.
    pub fn outbox(&self) -> mpsc::Sender<Ended> {
        self.tx.clone()
    }

    /// Where local session revocations go to be published and stored.
    pub fn revocation_outbox(&self) -> mpsc::Sender<Revocation> {
        self.revoke_tx.clone()
    }

    fn message(&self, e: Ended) -> EndMessage {
        EndMessage {
            v: 1,
            sid: e.sid,
            ended_by: Some(e.ended_by.to_string()),
            origin: Some(self.replica.clone()),
            ts: Some(crate::token::now()),
            until: e.until,
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// `/readyz` detail.
    pub fn status(&self) -> String {
        if self.connected() {
            "redis: connected".to_string()
        } else {
            let since = lock(&self.down_since).map_or(0, |t| t.elapsed().as_secs());
            format!(
                "redis: disconnected for {since}s; revocations from other replicas fall back to cache_ttl"
            )
        }
    }

    fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        METRICS.redis_connected.set(i64::from(up));
        if up {
            *lock(&self.down_since) = None;
        } else if was {
            *lock(&self.down_since) = Some(Instant::now());
            METRICS.redis_disconnects.inc();
        }
    }

    /// Runs the link until the process stops: connect, subscribe, load the stored revocations,
    /// publish local ends and revocations, apply remote ones, reconnect with backoff.
    pub async fn run(&self, url: String, to: Targets<'_>) {
        let (Some(ends), Some(revocations)) = (lock(&self.rx).take(), lock(&self.revoke_rx).take())
        else {
            return;
        };
        let mut outboxes = Outboxes { ends, revocations };
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "liveness.redis_url_env does not hold a usable Redis URL; fan-out is off");
                to.revocations.first_load_over(false);
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        // A link was lost: what is cached may have missed a revocation.
        let mut after_outage = false;
        loop {
            match self
                .session(&client, &mut outboxes, to, &mut after_outage)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    if self.connected() {
                        tracing::warn!(error = %e, "lost Redis; revocations from other replicas fall back to cache_ttl");
                    } else {
                        tracing::debug!(error = %e, "Redis still unreachable");
                    }
                    if to.revocations.loading() {
                        tracing::warn!(error = %e, "cannot load the stored revocations from Redis; not ready until it can");
                        to.revocations.first_load_over(false);
                    }
                    after_outage = true;
                    self.set_connected(false);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if self.connected() {
                backoff = Duration::from_millis(100);
            }
        }
    }

    async fn session(
        &self,
        client: &redis::Client,
        outboxes: &mut Outboxes,
        to: Targets<'_>,
        after_outage: &mut bool,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        // Subscribed: from here on no message is missed. Any live answer cached before now may
        // have missed a revocation published during the outage, whenever it was cached; the
        // stored revocations cover what was published while away.
        if std::mem::take(after_outage) {
            to.liveness.forget_live_since(Instant::now());
            tracing::info!("Redis is back: live answers cached before the reconnect dropped");
        }
        let loaded = load_stored(&mut conn, to.revocations).await?;
        to.revocations.first_load_over(true);
        self.set_connected(true);
        tracing::info!(channel = CHANNEL, loaded, "revocation fan-out connected");
        let mut messages = pubsub.on_message();
        let mut health = tokio::time::interval(HEALTH_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")));
                    };
                    self.receive(msg.get_payload_bytes(), to).await;
                }
                out = outboxes.ends.recv() => {
                    let Some(ended) = out else { return Ok(()) };
                    let payload = serde_json::to_string(&self.message(ended)).unwrap_or_default();
                    let _: i64 = redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).query_async(&mut conn).await?;
                    METRICS.redis_revocations_published.inc();
                }
                out = outboxes.revocations.recv() => {
                    let Some(revocation) = out else { return Ok(()) };
                    let message = RevokeMessage { v: 2, revocation, origin: Some(self.replica.clone()) };
                    let left_ms = message.revocation.until.saturating_sub(crate::token::now()).saturating_mul(1000);
                    if left_ms == 0 {
                        continue;
                    }
                    let payload = serde_json::to_string(&message).unwrap_or_default();
                    // Stored first, so a replica loading after a reconnect cannot miss it.
                    let _: () = redis::pipe()
                        .cmd("SET").arg(message.key()).arg(&payload).arg("PX").arg(left_ms).ignore()
                        .cmd("PUBLISH").arg(CHANNEL).arg(&payload).ignore()
                        .query_async(&mut conn)
                        .await?;
                    METRICS.redis_revocations_published.inc();
                }
                _ = health.tick() => {
                    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                }
            }
        }
    }

    /// One message from the channel.
    async fn receive(&self, payload: &[u8], to: Targets<'_>) {
        match parse(payload) {
            Some(m) if m.origin() == Some(self.replica.as_str()) => {}
            Some(Message::Ended(r)) => {
                METRICS.redis_revocations_received.inc();
                let floor = if r.until.is_some() {
                    to.memory.ended_ttl
                } else {
                    to.memory.retention
                };
                to.liveness.mark_ended_quietly(&r.sid, floor, r.until).await;
                tracing::info!(sid = %r.sid, origin = ?r.origin, "impersonation ended by another replica");
            }
            Some(Message::Revoked(m)) => {
                METRICS.redis_revocations_received.inc();
                to.revocations.apply(&m.revocation);
                tracing::info!(kind = m.revocation.kind.label(), origin = ?m.origin, "session revoked by another replica");
            }
            None => {
                METRICS.redis_messages_ignored.inc();
                tracing::warn!("ignoring a revocation message this version does not understand");
            }
        }
    }
}

/// The local queues the link publishes from.
struct Outboxes {
    ends: mpsc::Receiver<Ended>,
    revocations: mpsc::Receiver<Revocation>,
}

/// Where received messages go.
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    pub liveness: &'a LivenessChecker,
    pub revocations: &'a Revocations,
    /// How long a received end is remembered (see [`Memory`]).
    pub memory: Memory,
}

/// Loads every stored revocation (SCAN + MGET in batches). Returns how many were applied.
async fn load_stored(
    conn: &mut redis::aio::MultiplexedConnection,
    revocations: &Revocations,
) -> redis::RedisResult<usize> {
    let pattern = format!("{KEY_PREFIX}*");
    let mut cursor: u64 = 0;
    let mut applied = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(LOAD_BATCH)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(&keys).query_async(conn).await?;
            for value in values.into_iter().flatten() {
                match parse(&value) {
                    Some(Message::Revoked(m)) => {
                        if revocations.apply(&m.revocation) {
                            applied += 1;
                        }
                    }
                    _ => tracing::warn!(
                        "ignoring a stored revocation this version does not understand"
                    ),
                }
            }
        }
        if next == 0 {
            return Ok(applied);
        }
        cursor = next;
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_format() {
        let sid = |m: Option<Message>| match m {
            Some(Message::Ended(e)) => Some(e.sid),
            _ => None,
        };
        assert_eq!(
            sid(parse(
                br#"{"v":1,"sid":"imp-1","ended_by":"admin","origin":"x","ts":1,"extra":true}"#
            ))
            .as_deref(),
            Some("imp-1")
        );
        assert_eq!(
            sid(parse(br#"{"v":1,"sid":"imp-1"}"#)).as_deref(),
            Some("imp-1")
        );
        assert!(
            parse(br#"{"v":2,"sid":"imp-1"}"#).is_none(),
            "v2 names a kind"
        );
        assert!(parse(br#"{"v":3,"sid":"imp-1"}"#).is_none());
        assert!(parse(br#"{"v":1,"sid":""}"#).is_none());
        assert!(parse(b"imp-1").is_none());
    }

    #[test]
    fn v2_messages_name_a_revocation() {
        use crate::revocation::Kind;
        let Some(Message::Revoked(m)) = parse(
            br#"{"v":2,"kind":"sub","value":"u-42","before":1795300000,"until":1795400000,"x":1}"#,
        ) else {
            panic!("a v2 sub message")
        };
        assert_eq!(m.revocation.kind, Kind::Sub);
        assert_eq!(m.revocation.before, Some(1_795_300_000));
        assert_eq!(m.key(), "sessiongate:revocation:sub:u-42:1795300000");
        let Some(Message::Revoked(m)) =
            parse(br#"{"v":2,"kind":"jti","value":"t-1","until":1795400000}"#)
        else {
            panic!("a v2 jti message")
        };
        assert_eq!(m.key(), "sessiongate:revocation:jti:t-1");
        for bad in [
            &br#"{"v":2,"kind":"jti","value":"","until":1}"#[..],
            br#"{"v":2,"kind":"email","value":"a","until":1}"#,
            br#"{"v":2,"kind":"jti","value":"a"}"#,
            br#"{"v":2,"kind":"sid","value":"a","before":5,"until":9}"#,
            br#"{"v":2,"kind":"sub","value":"a","until":9}"#,
            br#"{"v":2,"kind":"jti","value":"a
b","until":9}"#,
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
