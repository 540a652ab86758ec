//! Steps 4-6, the token: the session cookie (parsed as bytes) -> verified claims -> `Identity`
//! -> bound to the tenant the host names (`authenticate`). The algorithm is pinned by config and
//! never read from the token; `exp` is required; every claim that becomes a header is checked
//! here. The proxy's clock lives here too, since tokens are what it is read for. `cookie` is
//! the session cookie, `jwks` the keys fetched from a JWKS URL.

mod claims;
pub mod cookie;
mod jwks;
pub mod logout;

pub use claims::{MAX_TIME, Provenance, explained as explain_claims};

pub use cookie::{SessionCookie, clearing_cookie, session_cookie};
pub use jwks::{JWKS_MIN_REFRESH, Jwks};

use crate::audit::{AuditEvent, Scope};
use crate::config::{KeySource, SiteConfig, TokenConfig};
use crate::metrics::METRICS;
use crate::response::Refusal;
use crate::revocation::Revocations;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode};
use pingora::http::RequestHeader;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a token gives no session. The label goes to logs and metrics; the token never does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than 8 KiB")]
    TooLarge,
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("token algorithm is not allowed by config")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("issuer does not match")]
    Issuer,
    #[error("audience does not match")]
    Audience,
    #[error("required claim {0} is missing")]
    MissingClaim(String),
    #[error("claim {0} has an invalid value")]
    InvalidClaim(String),
    #[error("no key in the JWKS matches the token's kid")]
    UnknownKey,
    /// An impersonation token whose only fault is its expiry: step 7 answers it (the admin goes
    /// back to the console) instead of treating the request as anonymous.
    #[error("impersonation token has expired")]
    ExpiredImpersonation(Box<Identity>),
    #[error("the token has been revoked (by {0})")]
    Revoked(&'static str),
}

impl TokenError {
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::ExpiredImpersonation(_) => "expired",
            TokenError::Revoked(_) => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    pub sid: String,
    pub admin_id: Option<String>,
    pub admin_email: Option<String>,
    pub reason: Option<String>,
    /// `read_only` makes the impersonation read-only; anything else is read-write.
    pub mode: Option<String>,
}

impl Impersonation {
    /// Did the token ask for a read-only impersonation?
    pub fn read_only(&self) -> bool {
        self.mode.as_deref() == Some("read_only")
    }
}

/// Who the verified token says the caller is. Values are as in the token (checked to be free of
/// control characters); `headers::inject` encodes them for headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub tenant_id: Option<String>,
    pub email: Option<String>,
    /// Comma-joined.
    pub roles: Option<String>,
    /// The platform's session (`[token.claims] session_id`), for revocation by `sid`.
    pub session_id: Option<String>,
    pub jti: Option<String>,
    pub impersonation: Option<Impersonation>,
    pub exp: u64,
    pub iat: Option<u64>,
}

impl Identity {
    /// An audit event about this identity: who, on whose behalf, which impersonation.
    pub fn audit_event(&self, event: &'static str, site: &str) -> AuditEvent {
        let mut ev = AuditEvent::new(event, site);
        ev.user_id = Some(self.user_id.clone());
        ev.tenant_id = self.tenant_id.clone();
        if let Some(imp) = &self.impersonation {
            ev.sid = Some(imp.sid.clone());
            ev.admin_id = imp.admin_id.clone();
            ev.admin_email = imp.admin_email.clone();
        }
        ev
    }
}

/// A request's verified session.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    /// The cookie's value, as sent.
    pub token: String,
    /// An impersonation token past its `exp` (everything else verified): no session, but step 7
    /// sends the admin back to the console.
    pub expired: bool,
}

/// What the revocation store's state does to a verified session it cannot check yet.
pub fn revocations_unavailable() -> Refusal {
    Refusal::error(
        503,
        "revocations_unavailable",
        "Sessions cannot be checked right now. Try again shortly.",
        "revocations_unavailable",
    )
    .header("retry-after", "5".to_string())
}

/// Steps 4-6: the session cookie, verified, not revoked, bound to the tenant the host names.
/// `Ok(None)` = no session (the reason is logged and counted, a tenant mismatch audited; the
/// token never is). `Err`: a verified token whose revocations cannot be known yet (a replica
/// whose Redis load has not happened): refused rather than honoured blindly.
pub async fn authenticate(
    verifier: &Verifier,
    revocations: &Revocations,
    site: &SiteConfig,
    req: &RequestHeader,
    host: &str,
    auditor: &Scope<'_>,
) -> Result<Option<Session>, Refusal> {
    let token = match session_cookie(req, &verifier.config.cookie) {
        SessionCookie::Absent => return Ok(None),
        SessionCookie::Conflict => {
            METRICS.cookie_conflicts.inc();
            tracing::warn!(site = %site.name, "several different session cookies: no session");
            return Ok(None);
        }
        SessionCookie::One(t) => t,
    };
    let refused = |e: &TokenError| {
        METRICS.token_rejected.with_label_values(&[e.label()]).inc();
        tracing::info!(site = %site.name, reason = %e, "session cookie refused");
    };
    let (mut identity, expired) = match verifier.verify_fresh(&token).await {
        Ok(id) => (id, false),
        Err(TokenError::ExpiredImpersonation(id)) => {
            refused(&TokenError::Expired);
            (*id, true)
        }
        Err(e) => {
            refused(&e);
            return Ok(None);
        }
    };
    // Checked on every request, verified-token cache hits included.
    if !revocations.ready().await {
        return Err(revocations_unavailable());
    }
    if let Some(kind) = revocations.revoked(
        identity.jti.as_deref(),
        identity.session_id.as_deref(),
        &identity.user_id,
        identity.iat,
    ) {
        refused(&TokenError::Revoked(kind.label()));
        return Ok(None);
    }
    if let Some(pattern) = &site.tenant_from_host {
        let host_tenant = pattern.tenant(host);
        let bound = matches!((host_tenant, &identity.tenant_id),
            (Some(h), Some(t)) if h.eq_ignore_ascii_case(t));
        if !bound {
            METRICS
                .token_rejected
                .with_label_values(&["tenant_mismatch"])
                .inc();
            let mut ev = identity.audit_event("tenant_mismatch", &site.name);
            ev.method = Some(req.method.to_string());
            ev.path = Some(req.uri.path().to_string());
            ev.reason = Some(format!(
                "host names tenant {}",
                host_tenant.unwrap_or("(none)")
            ));
            auditor.emit(ev);
            return Ok(None);
        }
        // The binding compares case-insensitively; the app gets the host's (lower-case) form,
        // so one tenant never reaches it under two spellings.
        identity.tenant_id = host_tenant.map(str::to_string);
    }
    Ok(Some(Session {
        identity,
        token,
        expired,
    }))
}

/// Verifies tokens against one `[token]` config.
pub struct Verifier {
    config: TokenConfig,
    validation: Validation,
    /// The same checks but `exp`: to tell an expired impersonation token from a bad one.
    expired_ok: Validation,
    /// Shared with the verifier of the config before a reload when both name the same URL, so
    /// a reload (a site file changed) neither drops the fetched keys nor refetches them.
    jwks: Option<Arc<Jwks>>,
    /// Tokens already verified with a fixed key, until their expiry (at most
    /// `VERIFIED_TTL`): a session's requests skip the HMAC/RSA and JSON work. Not used with a
    /// JWKS, whose keys can be withdrawn.
    verified: Option<moka::sync::Cache<String, Identity>>,
}

/// The longest a verified token is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

struct UntilExpiry(u64);

impl moka::Expiry<String, Identity> for UntilExpiry {
    fn expire_after_create(&self, _k: &String, id: &Identity, _at: Instant) -> Option<Duration> {
        let left = id.exp.saturating_add(self.0).saturating_sub(now());
        Some(Duration::from_secs(left).min(VERIFIED_TTL))
    }
}

impl Verifier {
    pub fn new(config: &TokenConfig) -> Verifier {
        Verifier::after(config, None)
    }

    /// A verifier for a reloaded `config`: the JWKS keys `previous` fetched are kept when the
    /// URL is the same.
    pub fn after(config: &TokenConfig, previous: Option<&Verifier>) -> Verifier {
        let first = config
            .algorithms
            .first()
            .copied()
            .unwrap_or(jsonwebtoken::Algorithm::HS256);
        let mut validation = Validation::new(first);
        validation.algorithms = config.algorithms.clone();
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // jsonwebtoken checks iss/aud only when the token has them: a configured check must
        // also refuse a token that leaves the claim out.
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        if config.issuer.is_some() {
            validation.required_spec_claims.insert("iss".to_string());
        }
        if config.audience.is_some() {
            validation.required_spec_claims.insert("aud".to_string());
        }
        match &config.audience {
            Some(aud) => validation.set_audience(aud),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        let jwks = match (&config.key, previous) {
            (KeySource::Jwks(url), Some(old)) if matches!(&old.config.key, KeySource::Jwks(u) if u == url) => {
                old.jwks.clone()
            }
            (KeySource::Jwks(url), _) => Some(Arc::new(Jwks::new(url.clone()))),
            (KeySource::Static(_), _) => None,
        };
        let mut expired_ok = validation.clone();
        expired_ok.validate_exp = false;
        Verifier {
            config: config.clone(),
            expired_ok,
            validation,
            verified: jwks.is_none().then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(50_000)
                    .expire_after(UntilExpiry(config.leeway.as_secs()))
                    .build()
            }),
            jwks,
        }
    }

    /// Until when (Unix seconds) this identity's token is honoured: its `exp` plus the leeway.
    pub fn honoured_until(&self, id: &Identity) -> u64 {
        id.exp.saturating_add(self.config.leeway.as_secs())
    }

    /// Verifies with the keys at hand (a JWKS token with an unknown `kid` is `UnknownKey`).
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        precheck(token)?;
        if let Some(cache) = &self.verified
            && let Some(id) = cache.get(token)
        {
            // The entry expires with the token, but a clock read keeps it exact.
            if now() < id.exp.saturating_add(self.config.leeway.as_secs()) {
                return Ok(id);
            }
            cache.invalidate(token);
        }
        let identity = self.verify_uncached(token)?;
        if let Some(cache) = &self.verified {
            cache.insert(token.to_string(), identity.clone());
        }
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str) -> Result<Identity, TokenError> {
        let key = key_for(
            token,
            &self.config.key,
            self.jwks.as_deref(),
            &self.config.algorithms,
        )?;
        let data = match decode::<Value>(token, &key, &self.validation) {
            Ok(data) => data,
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                // Signature, issuer, audience and nbf hold: only the expiry is past. For an
                // impersonation token that is step 7's business.
                let data = decode::<Value>(token, &key, &self.expired_ok)
                    .map_err(|_| TokenError::Expired)?;
                return match claims::identity(&self.config, &data.claims) {
                    Ok(id) if id.impersonation.is_some() => {
                        Err(TokenError::ExpiredImpersonation(Box::new(id)))
                    }
                    _ => Err(TokenError::Expired),
                };
            }
            Err(e) => return Err(token_error(&e)),
        };
        claims::identity(&self.config, &data.claims)
    }

    /// `verify`, and for a JWKS key unknown so far: refresh the set (rate-limited) and retry.
    pub async fn verify_fresh(&self, token: &str) -> Result<Identity, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKey) => {
                if let Some(jwks) = &self.jwks {
                    jwks.refresh().await;
                }
                self.verify(token)
            }
            other => other,
        }
    }
}

/// The key that verifies `token`: the fixed one, or the JWKS key its `kid` names (its `alg`
/// must be allowed; the key set is what is at hand, see [`Verifier::verify_fresh`]).
fn key_for(
    token: &str,
    source: &KeySource,
    jwks: Option<&Jwks>,
    algorithms: &[jsonwebtoken::Algorithm],
) -> Result<jsonwebtoken::DecodingKey, TokenError> {
    match (source, jwks) {
        (KeySource::Static(k), _) => Ok(k.clone()),
        (KeySource::Jwks(_), Some(jwks)) => {
            let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
            if !algorithms.contains(&header.alg) {
                return Err(TokenError::Algorithm);
            }
            jwks.key(header.kid.as_deref())
                .ok_or(TokenError::UnknownKey)
        }
        (KeySource::Jwks(_), None) => Err(TokenError::UnknownKey),
    }
}

/// A jsonwebtoken failure, as the proxy labels it.
fn token_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => TokenError::Algorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => TokenError::InvalidClaim(c.clone()),
        _ => TokenError::Malformed,
    }
}

/// Cheap checks before any base64 or crypto: size and the compact-JWS alphabet.
pub fn precheck(token: &str) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    let ok_chars = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let parts = token.split('.').collect::<Vec<_>>();
    if !ok_chars || parts.len() != 3 || parts[0].is_empty() || parts[1].is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::collections::HashMap;

    const SECRET: &str = "unit-test-secret-unit-test-secret";

    fn verifier() -> Verifier {
        let env: HashMap<String, String> = [("S".to_string(), SECRET.to_string())].into();
        let cfg = Config::parse(
            "[token]\nsecret_env = \"S\"\n[[site]]\nhost = \"a.example\"\nupstream = \"127.0.0.1:1\"\n",
            "t.toml",
            &env,
        )
        .expect("valid config");
        Verifier::new(&cfg.token)
    }

    #[test]
    fn a_reload_keeps_the_fetched_jwks_keys_while_the_url_is_the_same() {
        let token = |url: &str| {
            let src = format!(
                "[token]\nalgorithms = [\"RS256\"]\njwks_url = \"{url}\"\n[[site]]\nhost = \"a.example\"\nupstream = \"127.0.0.1:1\"\n"
            );
            let env: HashMap<String, String> = HashMap::new();
            Config::parse(&src, "t.toml", &env)
                .expect("valid config")
                .token
        };
        let first = Verifier::new(&token("https://idp.example/jwks"));
        let same = Verifier::after(&token("https://idp.example/jwks"), Some(&first));
        let moved = Verifier::after(&token("https://idp2.example/jwks"), Some(&first));
        let keys = |v: &Verifier| v.jwks.clone().expect("a JWKS verifier");
        assert!(Arc::ptr_eq(&keys(&first), &keys(&same)));
        assert!(!Arc::ptr_eq(&keys(&first), &keys(&moved)));
    }

    fn mint(claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn good_token_gives_identity() {
        let t = mint(json!({"sub": "u1", "tenant_id": 7, "email": "José@x.io",
            "roles": ["admin", "staff"], "exp": now() + 60}));
        let id = verifier().verify(&t).expect("valid");
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.tenant_id.as_deref(), Some("7"));
        assert_eq!(id.email.as_deref(), Some("José@x.io"));

        assert_eq!(id.roles.as_deref(), Some("admin,staff"));
        assert_eq!(id.impersonation, None);
    }

    #[test]
    fn refusals() {
        let v = verifier();
        let cases = [
            (json!({"sub": "u1"}), TokenError::MissingClaim("exp".into())),
            (
                json!({"sub": "u1", "exp": now() - 120}),
                TokenError::Expired,
            ),
            (
                json!({"sub": "u1", "exp": now() + 60, "nbf": now() + 600}),
                TokenError::NotYetValid,
            ),
            (
                json!({"exp": now() + 60}),
                TokenError::MissingClaim("sub".into()),
            ),
            (
                json!({"sub": "u\r\n1", "exp": now() + 60}),
                TokenError::InvalidClaim("sub".into()),
            ),
            (
                json!({"sub": "u1", "roles": ["a,b"], "exp": now() + 60}),
                TokenError::InvalidClaim("roles".into()),
            ),
            (
                json!({"sub": "u1", "roles": ["a b"], "exp": now() + 60}),
                TokenError::InvalidClaim("roles".into()),
            ),
            (
                json!({"sub": "u1", "imp": "x", "exp": now() + 60}),
                TokenError::InvalidClaim("imp".into()),
            ),
            (
                json!({"sub": "u1", "imp": {"admin_id": "a"}, "exp": now() + 60}),
                TokenError::MissingClaim("imp.sid".into()),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(v.verify(&mint(claims.clone())), Err(want), "{claims}");
        }
        assert!(
            v.verify(&mint(json!({"sub": "u1", "exp": "9999999999"})))
                .is_err()
        );
        assert!(
            v.verify(&mint(json!({"sub": "u1", "exp": now() - 10})))
                .is_ok(),
            "within leeway"
        );
    }

    #[test]
    fn absurd_times_and_blank_claims_are_refused_without_panicking() {
        let v = verifier();
        let invalid = |c: &str| Err(TokenError::InvalidClaim(c.into()));
        let cases = [
            (json!({"sub": "u1", "exp": u64::MAX}), invalid("exp")),
            (
                json!({"sub": "u1", "exp": (now() + 600) * 1000}),
                invalid("exp"),
            ),
            (json!({"sub": "u1", "exp": MAX_TIME + 1}), invalid("exp")),
            (
                json!({"sub": "u1", "exp": now() + 600, "iat": u64::MAX}),
                invalid("iat"),
            ),
            (
                json!({"sub": "u1", "exp": now() + 600, "iat": 1.5}),
                invalid("iat"),
            ),
            (json!({"sub": " ", "exp": now() + 600}), invalid("sub")),
            (
                json!({"sub": "u1", "tenant_id": "\t ", "exp": now() + 600}),
                invalid("tenant_id"),
            ),
        ];
        for (claims, want) in cases {
            let got = v.verify(&mint(claims.clone()));
            // jsonwebtoken may refuse some of these itself, first: any refusal will do, as long
            // as there is no identity and no panic.
            assert!(got.is_err(), "{claims}: {got:?}");
            if matches!(got, Err(TokenError::InvalidClaim(_))) {
                assert_eq!(got, want, "{claims}");
            }
        }
        let float_exp = v.verify(&mint(
            json!({"sub": "u1", "exp": (now() + 600) as f64 + 0.5}),
        ));
        assert!(
            float_exp.is_err(),
            "a fractional exp is refused: {float_exp:?}"
        );
        let id = v
            .verify(&mint(
                json!({"sub": "u1", "exp": now() + 600, "iat": now()}),
            ))
            .expect("valid");
        assert!(id.exp > now() && id.iat.is_some());
    }

    #[test]
    fn prechecks() {
        assert_eq!(
            precheck(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLarge)
        );
        assert_eq!(precheck("abc"), Err(TokenError::Malformed));
        assert_eq!(precheck("a.b.c.d"), Err(TokenError::Malformed));
        assert_eq!(precheck("a b.c.d"), Err(TokenError::Malformed));
        assert_eq!(precheck("\"a.b.c\""), Err(TokenError::Malformed));
        assert_eq!(precheck("a.b.c"), Ok(()));
        assert_eq!(precheck("a.b."), Ok(()));
    }

    #[test]
    fn alg_none_and_bad_signature_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = json!({"sub": "u1", "exp": now() + 60}).to_string();
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(&claims)
        );
        assert!(verifier().verify(&none).is_err());
        let good = mint(json!({"sub": "u1", "exp": now() + 60}));
        let (head, _) = good.rsplit_once('.').expect("three parts");
        let forged = format!("{head}.{}", b64.encode([0u8; 32]));
        assert_eq!(verifier().verify(&forged), Err(TokenError::Signature));
    }
}
