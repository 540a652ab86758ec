//! The signed assertion (SPEC.md "The signed assertion"): a short-lived JWT of the identity the
//! proxy forwards, for apps that must not trust bare headers (they can be reached around the
//! proxy). ES256 (P-256) or EdDSA (Ed25519), `kid` = the RFC 7638 thumbprint of the public key,
//! keys published as a JWKS (the current key first, then the previous one during a rotation).
//!
//! This module makes the claims and keeps the cache: an assertion is reused for later requests
//! of the same token, host and mode while more than half its life is left, so the hot path is a
//! cache lookup. The keys and the signing are `signing`'s.

use crate::config::AssertionConfig;
use crate::headers::Mode;
use crate::token::{Identity, now};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of cached assertions (keys and values) kept at most.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// What an assertion says besides the identity: the impersonation, when it was found live, and
/// its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Acting {
    pub impersonating: bool,
    pub read_only: bool,
}

/// The claims of an assertion issued at `iat` for `identity` on `host`.
pub fn claims(
    cfg: &AssertionConfig,
    identity: &Identity,
    host: &str,
    acting: Acting,
    iat: u64,
    jti: &str,
) -> Value {
    let mut c = Map::new();
    c.insert("iss".into(), json!(cfg.issuer));
    c.insert("aud".into(), json!(host));
    c.insert("sub".into(), json!(identity.user_id));
    if let Some(t) = &identity.tenant_id {
        c.insert("tenant_id".into(), json!(t));
    }
    if let Some(e) = &identity.email {
        c.insert("email".into(), json!(e));
    }
    let roles: Vec<&str> = identity
        .roles
        .as_deref()
        .map(|r| r.split(',').filter(|r| !r.is_empty()).collect())
        .unwrap_or_default();
    c.insert("roles".into(), json!(roles));
    let exp = iat.saturating_add(cfg.ttl.as_secs()).min(identity.exp);
    c.insert("iat".into(), json!(iat));
    c.insert("nbf".into(), json!(iat));
    c.insert("exp".into(), json!(exp));
    c.insert("jti".into(), json!(jti));
    if let (true, Some(imp)) = (acting.impersonating, &identity.impersonation) {
        let mut act = Map::new();
        if let Some(a) = &imp.admin_id {
            act.insert("sub".into(), json!(a));
        }
        if let Some(e) = &imp.admin_email {
            act.insert("email".into(), json!(e));
        }
        act.insert("sid".into(), json!(imp.sid));
        c.insert("act".into(), Value::Object(act));
        c.insert(
            "imp_mode".into(),
            json!(Mode::of(acting.read_only).as_str()),
        );
        if let Some(r) = &imp.reason {
            c.insert("imp_reason".into(), json!(r));
        }
    }
    Value::Object(c)
}

/// A random 128-bit id, hex.
fn new_jti() -> Result<String, String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness for the assertion's jti")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[derive(Clone)]
struct Cached {
    jws: Arc<str>,
    /// Reused until then: half its lifetime.
    reuse_until: Instant,
}

/// Issues assertions for one config (a reload makes a new one, so a new key is used at once).
pub struct Assertions {
    cfg: AssertionConfig,
    /// (token, host, mode) -> the assertion.
    cache: moka::sync::Cache<(Arc<str>, Box<str>, Acting), Cached>,
}

impl Assertions {
    pub fn new(cfg: &AssertionConfig) -> Assertions {
        Assertions {
            cfg: cfg.clone(),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|k: &(Arc<str>, Box<str>, Acting), v: &Cached| {
                    u32::try_from(k.0.len() + k.1.len() + v.jws.len() + 64).unwrap_or(u32::MAX)
                })
                .time_to_live(cfg.ttl / 2 + Duration::from_secs(1))
                .build(),
        }
    }

    pub fn jwks(&self) -> bytes::Bytes {
        self.cfg.keys.jwks.clone()
    }

    /// The assertion for a request of `token`'s session on `host`: reused while more than half
    /// of its life is left, else signed anew.
    pub fn issue(
        &self,
        token: &str,
        identity: &Identity,
        host: &str,
        acting: Acting,
    ) -> Result<Arc<str>, String> {
        let key = (Arc::from(token), Box::from(host), acting);
        if let Some(hit) = self.cache.get(&key)
            && Instant::now() < hit.reuse_until
        {
            return Ok(hit.jws);
        }
        let iat = now();
        let claims = claims(&self.cfg, identity, host, acting, iat, &new_jti()?);
        let exp = claims["exp"].as_u64().unwrap_or(iat);
        let jws: Arc<str> = Arc::from(self.cfg.keys.sign(&claims)?);
        let half_life = Duration::from_secs(exp.saturating_sub(iat) / 2);
        if !half_life.is_zero() {
            self.cache.insert(
                key,
                Cached {
                    jws: jws.clone(),
                    reuse_until: Instant::now() + half_life,
                },
            );
        }
        Ok(jws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Keys;
    use crate::token::Impersonation;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn identity(imp: bool) -> Identity {
        Identity {
            user_id: "u-1".into(),
            tenant_id: Some("cafe".into()),
            email: Some("ana@example.com".into()),
            roles: Some("admin,staff".into()),
            session_id: None,
            jti: None,
            impersonation: imp.then(|| Impersonation {
                sid: "imp-1".into(),
                admin_id: Some("admin-7".into()),
                admin_email: Some("root@example.com".into()),
                reason: Some("ticket".into()),
                mode: None,
            }),
            exp: 2_000_000_000,
            iat: None,
        }
    }

    fn config() -> AssertionConfig {
        AssertionConfig {
            keys: Arc::new(Keys::generate_es256().expect("key")),
            issuer: "https://sg.example".into(),
            ttl: Duration::from_secs(60),
            files: Vec::new(),
        }
    }

    const READ_WRITE: Acting = Acting {
        impersonating: false,
        read_only: false,
    };

    #[test]
    fn claims_carry_the_actor_only_while_impersonating_and_exp_is_capped() {
        let cfg = config();
        let live = Acting {
            impersonating: true,
            read_only: true,
        };
        let c = claims(&cfg, &identity(true), "cafe.example", live, 1_000, "j");
        assert_eq!(c["aud"], "cafe.example");
        assert_eq!(c["roles"], json!(["admin", "staff"]));
        assert_eq!(
            (c["iat"].as_u64(), c["nbf"].as_u64(), c["exp"].as_u64()),
            (Some(1_000), Some(1_000), Some(1_060))
        );
        assert_eq!(
            c["act"],
            json!({"sub": "admin-7", "email": "root@example.com", "sid": "imp-1"})
        );
        assert_eq!(c["imp_mode"], "read_only");
        assert_eq!(c["imp_reason"], "ticket");
        let c = claims(
            &cfg,
            &identity(true),
            "cafe.example",
            READ_WRITE,
            1_000,
            "j",
        );
        assert!(c.get("act").is_none() && c.get("imp_mode").is_none());
        // The session's exp caps the assertion's.
        let mut short = identity(false);
        short.exp = 1_010;
        let c = claims(&cfg, &short, "cafe.example", READ_WRITE, 1_000, "j");
        assert_eq!(c["exp"].as_u64(), Some(1_010));
    }

    #[test]
    fn assertions_are_reused_per_token_host_and_mode() {
        let a = Assertions::new(&config());
        let id = identity(false);
        let first = a.issue("tok", &id, "a.example", READ_WRITE).expect("sign");
        assert_eq!(
            a.issue("tok", &id, "a.example", READ_WRITE).expect("hit"),
            first
        );
        assert_ne!(
            a.issue("tok", &id, "b.example", READ_WRITE).expect("sign"),
            first
        );
        assert_ne!(
            a.issue("tok2", &id, "a.example", READ_WRITE).expect("sign"),
            first
        );
        let parts: Vec<&str> = first.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).expect("b64").len(),
            64,
            "r || s"
        );
    }
}
