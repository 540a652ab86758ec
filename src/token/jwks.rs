//! Keys from a JWKS URL, by `kid`, refetched when a token names an unknown one.

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A JWKS refresh is asked for by tokens with an unknown `kid`; this bounds how often an
/// attacker with random kids can make the proxy fetch.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(5);

/// Keys from a JWKS URL, by `kid`.
pub struct Jwks {
    url: String,
    keys: ArcSwap<HashMap<String, DecodingKey>>,
    /// A key without `kid`, used for tokens without one when it is the only key.
    sole: ArcSwap<Option<DecodingKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl Jwks {
    pub fn new(url: String) -> Jwks {
        Jwks {
            url,
            keys: ArcSwap::from_pointee(HashMap::new()),
            sole: ArcSwap::from_pointee(None),
            last_fetch: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }

    pub fn key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        match kid {
            Some(k) => self.keys.load().get(k).cloned(),
            None => self.sole.load().as_ref().clone(),
        }
    }

    /// Fetches the set again unless it was fetched within `JWKS_MIN_REFRESH`; concurrent
    /// callers share one fetch.
    pub async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, sole)) => {
                tracing::info!(keys = keys.len(), "JWKS refreshed");
                self.keys.store(std::sync::Arc::new(keys));
                self.sole.store(std::sync::Arc::new(sole));
            }
            Err(e) => tracing::warn!(error = %e, "JWKS fetch failed; keeping the previous keys"),
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, DecodingKey>, Option<DecodingKey>), String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("JWKS answered {}", resp.status()));
        }
        let set: JwkSet = resp.json().await.map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), key);
                }
                None => anonymous.push(key),
            }
        }
        let sole = match (anonymous.len(), keys.len()) {
            (1, 0) => anonymous.pop(),
            (0, 1) => keys.values().next().cloned(),
            _ => None,
        };
        Ok((keys, sole))
    }
}
