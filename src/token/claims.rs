//! Claims -> `Identity`: every field found where `[token.claims]` says (a dotted path, or the
//! first of several that the token has), every value checked for what a header and the banner
//! can carry. The defaults are the platform's `imp` shape; RFC 8693 actor tokens (Keycloak,
//! Clerk, Auth0) map with `impersonation = "act"` (the outermost actor is the one acting: its
//! fields are `act.sub`, `act.email`, ...).

use super::{Identity, Impersonation, TokenError};
use crate::config::{ClaimPath, TokenConfig};
use serde_json::Value;

fn lookup<'v>(claims: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut v = claims;
    for key in path {
        v = v.get(key)?;
    }
    (!v.is_null()).then_some(v)
}

/// The first alternative the token has: its value and the path that gave it.
fn find<'v>(claims: &'v Value, path: &ClaimPath) -> Option<(&'v Value, String)> {
    path.0
        .iter()
        .find_map(|p| lookup(claims, p).map(|v| (v, p.join("."))))
}

/// A claim value as the token has it: a string or a whole number; empty or blank, or holding
/// control characters (CR/LF included), it rejects the token. Kept raw: encoded only for headers.
fn claim_string(name: &str, v: &Value) -> Result<String, TokenError> {
    let s = match v {
        Value::String(s) => s.clone(),
        // Whole numbers only: a fraction or an integer beyond 64 bits is a float here, and two
        // different ids would read alike after rounding.
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return Err(TokenError::InvalidClaim(name.to_string())),
    };
    if s.trim().is_empty() || s.chars().any(|c| c.is_control()) {
        return Err(TokenError::InvalidClaim(name.to_string()));
    }
    Ok(s)
}

/// The latest time a token may name: 9999-12-31T23:59:59Z. Anything later is a mistake (a time
/// in milliseconds reads as the year 58000) and is refused, so no time computation downstream
/// can overflow.
pub const MAX_TIME: u64 = 253_402_300_799;

/// A NumericDate claim (`exp`, `nbf`, `iat`): absent, or a whole number of seconds between 0 and
/// `MAX_TIME`. A fraction, a string or an absurd time rejects the token.
pub(crate) fn time_claim(claims: &Value, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(t) if t <= MAX_TIME => Ok(Some(t)),
            _ => Err(TokenError::InvalidClaim(name.to_string())),
        },
    }
}

/// Which path gave each field, for `token inspect`.
pub type Provenance = Vec<(&'static str, String)>;

struct Mapper<'c> {
    claims: &'c Value,
    provenance: Provenance,
}

impl Mapper<'_> {
    fn string(
        &mut self,
        name: &'static str,
        path: &ClaimPath,
    ) -> Result<Option<String>, TokenError> {
        let Some((v, from)) = find(self.claims, path) else {
            return Ok(None);
        };
        let value = claim_string(&from, v);
        self.provenance.push((name, from));
        value.map(Some)
    }

    fn required(&mut self, name: &'static str, path: &ClaimPath) -> Result<String, TokenError> {
        self.string(name, path)?
            .ok_or_else(|| TokenError::MissingClaim(path.describe()))
    }

    fn roles(&mut self, path: &ClaimPath) -> Result<Option<String>, TokenError> {
        let Some((v, from)) = find(self.claims, path) else {
            return Ok(None);
        };
        let bad = || TokenError::InvalidClaim(from.clone());
        let list: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            v @ Value::String(_) => vec![v],
            _ => return Err(bad()),
        };
        let mut out = Vec::with_capacity(list.len());
        for v in list {
            let role = claim_string(&from, v)?;
            if role.contains(',') || role.chars().any(char::is_whitespace) {
                return Err(bad());
            }
            out.push(role);
        }
        self.provenance.push(("roles", from));
        Ok(Some(out.join(",")))
    }
}

/// The identity a verified token's claims describe.
pub fn identity(config: &TokenConfig, claims: &Value) -> Result<Identity, TokenError> {
    explained(config, claims).0
}

/// The identity, and which path gave each field (as far as the mapping got).
pub fn explained(
    config: &TokenConfig,
    claims: &Value,
) -> (Result<Identity, TokenError>, Provenance) {
    let mut m = Mapper {
        claims,
        provenance: Vec::new(),
    };
    let result = map(config, &mut m);
    (result, m.provenance)
}

fn map(config: &TokenConfig, m: &mut Mapper<'_>) -> Result<Identity, TokenError> {
    let claims = m.claims;
    time_claim(claims, "nbf")?;
    let paths = &config.claims;
    let user_id = m.required("user_id", &paths.user_id)?;
    let impersonation = match find(claims, &paths.impersonation) {
        None => None,
        Some((Value::Object(_), from)) => {
            m.provenance.push(("impersonation", from));
            Some(Impersonation {
                sid: m.required("impersonation_sid", &paths.impersonation_sid)?,
                admin_id: m.string("impersonator_id", &paths.impersonator_id)?,
                admin_email: m.string("impersonator_email", &paths.impersonator_email)?,
                reason: m.string("impersonation_reason", &paths.impersonation_reason)?,
                mode: m.string("impersonation_mode", &paths.impersonation_mode)?,
            })
        }
        Some((_, from)) => return Err(TokenError::InvalidClaim(from)),
    };
    let jti = match claims.get("jti") {
        None | Some(Value::Null) => None,
        Some(v) => Some(claim_string("jti", v)?),
    };
    Ok(Identity {
        user_id,
        tenant_id: m.string("tenant_id", &paths.tenant_id)?,
        email: m.string("email", &paths.email)?,
        roles: m.roles(&paths.roles)?,
        session_id: m.string("session_id", &paths.session_id)?,
        jti,
        impersonation,
        exp: time_claim(claims, "exp")?.ok_or_else(|| TokenError::MissingClaim("exp".into()))?,
        iat: time_claim(claims, "iat")?,
    })
}
