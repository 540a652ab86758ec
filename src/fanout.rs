//! Revocation across replicas through Redis pub/sub. Every local "ended" (End button, admin
//! revoke, a backend answer of ended) is published; every replica subscribes and marks the sid
//! ended at once. The platform backend can publish the same message to revoke everywhere.
//!
//! Channel `sessiongate:revocations`, message (versioned JSON):
//! `{"v":1,"sid":"imp-42","ended_by":"tenant"|"admin"|"backend","origin":"<replica id>","ts":<unix s>}`.
//! Only `v` and `sid` are required from a publisher; unknown fields are ignored; a message with
//! another `v` is ignored (and counted) so that a newer format can roll out safely.
//!
//! While Redis is unreachable a replica falls back to `cache_ttl` (it says so in `/readyz` and
//! `sessiongate_redis_connected`). After reconnecting (subscribed first) it drops every live
//! answer cached before that moment, since it may have missed messages, so the bound holds.

use crate::liveness::{Ended, LivenessChecker};
use crate::metrics::METRICS;
use crate::sync::lock;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const CHANNEL: &str = "sessiongate:revocations";
const HEALTH_EVERY: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
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

/// Parses a message from the channel; `None` for anything this version does not understand.
pub fn parse(payload: &[u8]) -> Option<Revocation> {
    let r: Revocation = serde_json::from_slice(payload).ok()?;
    (r.v == 1 && !r.sid.is_empty() && !r.sid.chars().any(char::is_control)).then_some(r)
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
        Fanout {
            tx,
            rx: Mutex::new(Some(rx)),
            connected: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            replica: replica_id(),
        }
    }

    /// Where local ends go to be published.
    pub fn outbox(&self) -> mpsc::Sender<Ended> {
        self.tx.clone()
    }

    fn message(&self, e: Ended) -> Revocation {
        Revocation {
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

    /// Runs the link until the process stops: connect, subscribe, publish local ends, apply
    /// remote ones, reconnect with backoff.
    /// `memory`: how long a received end is remembered (see [`Memory`]).
    pub async fn run(&self, url: String, liveness: &LivenessChecker, memory: Memory) {
        let Some(mut outbox) = lock(&self.rx).take() else {
            return;
        };
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "liveness.redis_url_env does not hold a usable Redis URL; fan-out is off");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        // A link was lost: what is cached may have missed a revocation.
        let mut after_outage = false;
        loop {
            match self
                .session(&client, &mut outbox, liveness, memory, &mut after_outage)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    if self.connected() {
                        tracing::warn!(error = %e, "lost Redis; revocations from other replicas fall back to cache_ttl");
                    } else {
                        tracing::debug!(error = %e, "Redis still unreachable");
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
        outbox: &mut mpsc::Receiver<Ended>,
        liveness: &LivenessChecker,
        memory: Memory,
        after_outage: &mut bool,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        // Subscribed: from here on no message is missed. Any live answer cached before now may
        // have missed a revocation published during the outage, whenever it was cached.
        if std::mem::take(after_outage) {
            liveness.forget_live_since(Instant::now());
            tracing::info!("Redis is back: live answers cached before the reconnect dropped");
        }
        self.set_connected(true);
        tracing::info!(channel = CHANNEL, "revocation fan-out connected");
        let mut messages = pubsub.on_message();
        let mut health = tokio::time::interval(HEALTH_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")));
                    };
                    match parse(msg.get_payload_bytes()) {
                        Some(r) if r.origin.as_deref() == Some(self.replica.as_str()) => {}
                        Some(r) => {
                            METRICS.redis_revocations_received.inc();
                            let floor = if r.until.is_some() { memory.ended_ttl } else { memory.retention };
                            liveness.mark_ended_quietly(&r.sid, floor, r.until).await;
                            tracing::info!(sid = %r.sid, origin = ?r.origin, "revocation from another replica");
                        }
                        None => {
                            METRICS.redis_messages_ignored.inc();
                            tracing::warn!("ignoring a revocation message this version does not understand");
                        }
                    }
                }
                out = outbox.recv() => {
                    let Some(ended) = out else { return Ok(()) };
                    let payload = serde_json::to_string(&self.message(ended)).unwrap_or_default();
                    let _: i64 = redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).query_async(&mut conn).await?;
                    METRICS.redis_revocations_published.inc();
                }
                _ = health.tick() => {
                    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                }
            }
        }
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
        let r =
            parse(br#"{"v":1,"sid":"imp-1","ended_by":"admin","origin":"x","ts":1,"extra":true}"#)
                .expect("valid");
        assert_eq!(r.sid, "imp-1");
        assert_eq!(
            parse(br#"{"v":1,"sid":"imp-1"}"#).map(|r| r.sid).as_deref(),
            Some("imp-1")
        );
        assert!(parse(br#"{"v":2,"sid":"imp-1"}"#).is_none());
        assert!(parse(br#"{"v":1,"sid":""}"#).is_none());
        assert!(parse(b"imp-1").is_none());
    }
}
