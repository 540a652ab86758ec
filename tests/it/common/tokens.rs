//! Claims, signed tokens and the identity headers they must produce.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::{COOKIE, fixture, now};

/// HS256 secret handed to the sidecar through [`SECRET_ENV`].
pub const SECRET: &str = "sessiongate-test-secret-0123456789abcdef";
pub const SECRET_ENV: &str = "SG_TEST_JWT_SECRET";

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A valid identity: user-42 of tenant `cafe`, one hour left.
pub fn claims() -> Value {
    json!({
        "sub": "user-42",
        "tenant_id": "cafe",
        "email": "ana@example.com",
        "roles": ["admin", "staff"],
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// `base` with `changes` merged in; a `null` in `changes` removes the key.
pub fn merged(mut base: Value, changes: Value) -> Value {
    let obj = base.as_object_mut().expect("claims object");
    for (k, v) in changes.as_object().expect("changes object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    base
}

/// `claims()` with `changes` merged in; a `null` in `changes` removes the key.
pub fn claims_with(changes: Value) -> Value {
    merged(claims(), changes)
}

/// Claims of user-42 of tenant `cafe`, impersonated by admin-7 in session `sid`.
pub fn imp_claims(sid: &str) -> Value {
    claims_with(json!({
        "imp": {
            "sid": sid,
            "admin_id": "admin-7",
            "admin_email": "root@nixtech.app",
            "reason": "ticket #4711",
        }
    }))
}

/// `imp_claims(sid)` with `changes` merged in.
pub fn imp_claims_with(sid: &str, changes: Value) -> Value {
    merged(imp_claims(sid), changes)
}

/// The session cookie of an impersonation token for `sid`.
pub fn imp_cookie(sid: &str) -> String {
    session_cookie(&token(&imp_claims(sid)))
}

/// The session cookie of a valid token for `claims()`.
pub fn normal_cookie() -> String {
    session_cookie(&token(&claims()))
}

pub fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode token")
}

pub fn mint_hs256(secret: &str, claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// Signed with the test [`SECRET`].
pub fn token(claims: &Value) -> String {
    mint_hs256(SECRET, claims)
}

/// RS256 with the private key in the fixture file `private_pem`, the header naming `kid`.
pub fn mint_rs256_with(private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).expect("read private key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA private key");
    let header = Header {
        kid: kid.map(str::to_string),
        ..Header::new(Algorithm::RS256)
    };
    jsonwebtoken::encode(&header, claims, &key).expect("encode RS256 token")
}

/// RS256 with the fixture key `rsa_private.pem`, no `kid`.
pub fn mint_rs256(claims: &Value) -> String {
    mint_rs256_with("rsa_private.pem", None, claims)
}

/// HS256 with the test [`SECRET`] over `payload` exactly as written (JSON text, not a serde
/// value, which would already round numbers beyond 64 bits), built by hand.
pub fn mint_raw(payload: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64url(payload.as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(tag.as_ref()))
}

/// `{"alg":"none"}` with an empty signature, built by hand.
pub fn alg_none_token(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}")
}

/// Owned, sorted pairs, as `Recorded::identity` lists them.
pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = v
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// The identity headers `claims()` must produce.
pub fn user_identity() -> Vec<(String, String)> {
    pairs(&[
        ("x-auth-user-id", "user-42"),
        ("x-auth-tenant-id", "cafe"),
        ("x-auth-email", "ana@example.com"),
        ("x-auth-roles", "admin,staff"),
    ])
}

/// The identity headers `imp_claims(sid)` must produce.
pub fn impersonated_identity(sid: &str) -> Vec<(String, String)> {
    let mut v = user_identity();
    v.extend(pairs(&[
        ("x-auth-impersonation-session", sid),
        ("x-auth-impersonation-mode", "read_write"),
        ("x-auth-impersonator-id", "admin-7"),
        ("x-auth-impersonator-email", "root@nixtech.app"),
    ]));
    v.sort();
    v
}
