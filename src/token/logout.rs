//! OIDC Back-Channel Logout 1.0 (section 2.6): the identity provider POSTs a logout token, a
//! JWT that says "session `sid` (or every session of `sub`) is over". Verified like a session
//! token (pinned algorithms, signature, `iss`, `aud`, `exp`) plus what the specification adds:
//! `iat` present, the back-channel logout event, a `sid` and/or `sub`, no `nonce` (so an ID
//! token cannot pass for one), and a `jti` used once.

use super::{Jwks, TokenError, claims::time_claim, key_for, now, precheck, token_error};
use crate::config::{KeySource, LogoutConfig};
use jsonwebtoken::{Validation, decode};
use serde_json::Value;

/// The `events` member a logout token must carry.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What a valid logout token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub jti: String,
    /// Until when (Unix seconds) the token could be presented again: its `jti` is remembered
    /// that long.
    pub replayable_until: u64,
}

/// Verifies logout tokens against one `[backchannel_logout]`.
pub struct LogoutVerifier {
    config: LogoutConfig,
    validation: Validation,
    jwks: Option<Jwks>,
}

/// A string claim that, when present, must be a non-empty string without control characters.
fn string_claim(claims: &Value, name: &str) -> Result<Option<String>, String> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => {
            if s.chars().any(char::is_control) {
                Err(format!("\"{name}\" holds control characters"))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(format!("\"{name}\" must be a non-empty string")),
    }
}

impl LogoutVerifier {
    pub fn new(config: &LogoutConfig) -> LogoutVerifier {
        let first = config
            .algorithms
            .first()
            .copied()
            .unwrap_or(jsonwebtoken::Algorithm::RS256);
        let mut validation = Validation::new(first);
        validation.algorithms = config.algorithms.clone();
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud"]
            .into_iter()
            .map(str::to_string)
            .collect();
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audience);
        LogoutVerifier {
            jwks: match &config.key {
                KeySource::Jwks(url) => Some(Jwks::new(url.clone())),
                KeySource::Static(_) => None,
            },
            config: config.clone(),
            validation,
        }
    }

    /// Verifies a logout token; `Err` says why it is refused (never echoing the token).
    pub async fn verify(&self, token: &str) -> Result<Logout, String> {
        let claims = match self.decode(token) {
            Err(TokenError::UnknownKey) => {
                if let Some(jwks) = &self.jwks {
                    jwks.refresh().await;
                }
                self.decode(token)
            }
            other => other,
        }
        .map_err(|e| e.to_string())?;
        self.check(&claims)
    }

    fn decode(&self, token: &str) -> Result<Value, TokenError> {
        precheck(token)?;
        let key = key_for(
            token,
            &self.config.key,
            self.jwks.as_ref(),
            &self.config.algorithms,
        )?;
        decode::<Value>(token, &key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| token_error(&e))
    }

    /// The checks the specification adds to a verified JWT.
    fn check(&self, claims: &Value) -> Result<Logout, String> {
        let leeway = self.config.leeway.as_secs();
        let iat = time_claim(claims, "iat")
            .map_err(|e| e.to_string())?
            .ok_or("the token has no \"iat\"")?;
        if iat > now().saturating_add(leeway) {
            return Err("\"iat\" is in the future".into());
        }
        let exp = time_claim(claims, "exp")
            .map_err(|e| e.to_string())?
            .ok_or("the token has no \"exp\"")?;
        let event = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|events| events.get(LOGOUT_EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err(format!(
                "\"events\" must hold \"{LOGOUT_EVENT}\" with an object value"
            ));
        }
        if claims.get("nonce").is_some() {
            return Err("a logout token must not carry \"nonce\"".into());
        }
        let sid = string_claim(claims, "sid")?;
        let sub = string_claim(claims, "sub")?;
        if sid.is_none() && sub.is_none() {
            return Err("the token names neither \"sid\" nor \"sub\"".into());
        }
        let jti = string_claim(claims, "jti")?.ok_or("the token has no \"jti\"")?;
        Ok(Logout {
            sid,
            sub,
            jti,
            replayable_until: exp.saturating_add(leeway),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, EncodingKey, Header, encode};
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &[u8] = b"logout-unit-test-secret-logout-unit";

    fn verifier() -> LogoutVerifier {
        LogoutVerifier::new(&LogoutConfig {
            issuer: "https://idp.example".into(),
            audience: vec!["sessiongate".into()],
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            key: KeySource::Static(DecodingKey::from_secret(SECRET)),
            leeway: Duration::from_secs(30),
        })
    }

    fn good() -> Value {
        let now = now();
        json!({
            "iss": "https://idp.example",
            "aud": "sessiongate",
            "iat": now,
            "exp": now + 120,
            "jti": "lt-1",
            "sid": "sess-1",
            "events": { LOGOUT_EVENT: {} },
        })
    }

    fn sign(claims: &Value) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    async fn verdict(claims: Value) -> Result<Logout, String> {
        verifier().verify(&sign(&claims)).await
    }

    #[tokio::test]
    async fn a_valid_token_names_its_session() {
        let l = verdict(good()).await.expect("valid");
        assert_eq!(l.sid.as_deref(), Some("sess-1"));
        assert_eq!(l.sub, None);
        assert_eq!(l.jti, "lt-1");
        let mut only_sub = good();
        only_sub.as_object_mut().map(|o| o.remove("sid"));
        only_sub["sub"] = json!("u-42");
        let l = verdict(only_sub).await.expect("sub alone");
        assert_eq!((l.sid, l.sub.as_deref()), (None, Some("u-42")));
    }

    #[tokio::test]
    async fn every_rule_of_the_specification_refuses() {
        let now = now();
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "iss",
                Box::new(|c| c["iss"] = json!("https://evil.example")),
            ),
            ("aud", Box::new(|c| c["aud"] = json!("someone-else"))),
            (
                "no iat",
                Box::new(|c| drop(c.as_object_mut().map(|o| o.remove("iat")))),
            ),
            (
                "future iat",
                Box::new(move |c| c["iat"] = json!(now + 3600)),
            ),
            ("expired", Box::new(move |c| c["exp"] = json!(now - 3600))),
            (
                "no events",
                Box::new(|c| drop(c.as_object_mut().map(|o| o.remove("events")))),
            ),
            (
                "other event",
                Box::new(|c| c["events"] = json!({"http://example/other": {}})),
            ),
            (
                "event not an object",
                Box::new(|c| c["events"] = json!({ LOGOUT_EVENT: "yes" })),
            ),
            ("nonce", Box::new(|c| c["nonce"] = json!("n-1"))),
            (
                "neither sid nor sub",
                Box::new(|c| drop(c.as_object_mut().map(|o| o.remove("sid")))),
            ),
            ("sid not a string", Box::new(|c| c["sid"] = json!(7))),
            (
                "no jti",
                Box::new(|c| drop(c.as_object_mut().map(|o| o.remove("jti")))),
            ),
        ];
        for (name, edit) in cases {
            let mut claims = good();
            edit(&mut claims);
            assert!(verdict(claims).await.is_err(), "{name} must be refused");
        }
        let forged = encode(
            &Header::default(),
            &good(),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .expect("sign");
        assert!(verifier().verify(&forged).await.is_err(), "bad signature");
        let none = format!("eyJhbGciOiJub25lIn0.{}.", base64_url(&good().to_string()));
        assert!(verifier().verify(&none).await.is_err(), "alg none");
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
