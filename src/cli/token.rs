//! `sessiongate token mint` and `token inspect`: make tokens for tests and demos, and say
//! exactly why a token would be refused by a config.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Map, Value, json};
use sessiongate::config::Config;
use sessiongate::site::{Router, normalize_host};
use sessiongate::token::{MAX_TOKEN_LEN, TokenError, Verifier, explain_claims, now, precheck};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// `token mint`'s flags: the key, then the claims.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct MintArgs {
    #[arg(long, default_value = "HS256")]
    pub alg: String,
    /// Environment variable holding the HS* secret.
    #[arg(long, conflicts_with = "key_file")]
    pub secret_env: Option<String>,
    /// PEM private key for RS*/PS*/ES*/EdDSA (or an HS* secret file).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    #[arg(long)]
    pub sub: String,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime, e.g. "30m".
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub iss: Option<String>,
    #[arg(long)]
    pub aud: Option<String>,
    /// Make it an impersonation token with this session id.
    #[arg(long)]
    pub imp_sid: Option<String>,
    #[arg(long)]
    pub imp_admin_id: Option<String>,
    #[arg(long)]
    pub imp_admin_email: Option<String>,
    #[arg(long)]
    pub imp_reason: Option<String>,
    /// Extra claim, `key=value` (JSON values are parsed). Repeatable.
    #[arg(long = "claim", value_parser = parse_claim)]
    pub claims: Vec<(String, String)>,
}

fn parse_claim(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// The signing key the flags name: an environment variable (HS*) or a file.
pub fn signing_key(a: &MintArgs) -> Result<Vec<u8>, String> {
    match (&a.secret_env, &a.key_file) {
        (Some(name), _) => match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v.into_bytes()),
            _ => Err(format!(
                "--secret-env: environment variable {name} is not set"
            )),
        },
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("--key-file: cannot read {}: {e}", path.display())),
        (None, None) => Err("give --secret-env NAME (HS*) or --key-file PEM".to_string()),
    }
}

/// Signs the claims the flags describe with `key` (HS*: the secret; others: a PEM private key).
pub fn mint(a: &MintArgs, key: &[u8]) -> Result<String, String> {
    let alg = Algorithm::from_str(&a.alg).map_err(|_| format!("unknown algorithm {}", a.alg))?;
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Ok(EncodingKey::from_secret(key)),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(key),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key),
        _ => EncodingKey::from_rsa_pem(key),
    }
    .map_err(|e| format!("the key is not a {alg:?} private key: {e}"))?;
    let iat = now();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(a.sub));
    claims.insert("iat".into(), json!(iat));
    claims.insert("exp".into(), json!(iat + a.ttl.as_secs()));
    let opt = |claims: &mut Map<String, Value>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            claims.insert(k.into(), json!(v));
        }
    };
    opt(&mut claims, "tenant_id", &a.tenant);
    opt(&mut claims, "email", &a.email);
    opt(&mut claims, "iss", &a.iss);
    opt(&mut claims, "aud", &a.aud);
    if !a.roles.is_empty() {
        claims.insert("roles".into(), json!(a.roles));
    }
    if let Some(sid) = &a.imp_sid {
        let mut imp = Map::new();
        imp.insert("sid".into(), json!(sid));
        opt(&mut imp, "admin_id", &a.imp_admin_id);
        opt(&mut imp, "admin_email", &a.imp_admin_email);
        opt(&mut imp, "reason", &a.imp_reason);
        claims.insert("imp".into(), Value::Object(imp));
    }
    for (k, v) in &a.claims {
        let value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
        claims.insert(k.clone(), value);
    }
    encode(&Header::new(alg), &Value::Object(claims), &key).map_err(|e| format!("cannot sign: {e}"))
}

/// What `token inspect` found.
#[derive(Debug)]
pub struct Inspection {
    pub header: Option<Value>,
    pub claims: Option<Value>,
    /// `None`: accepted.
    pub refusal: Option<String>,
    pub notes: Vec<String>,
    /// Each identity field the claim mapping found: (field, value, the path it came from).
    pub fields: Vec<(&'static str, String, String)>,
}

fn decode_part(part: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Decodes a token for display and verifies it against `config` (and, with `host`, the tenant
/// binding of the site serving that host).
pub fn inspect(config: &Config, token: &str, host: Option<&str>) -> Inspection {
    let token = token.trim();
    let mut parts = token.split('.');
    let header = parts.next().and_then(decode_part);
    let claims = parts.next().and_then(decode_part);
    let mut notes = Vec::new();
    let refusal = explain(config, token, host, claims.as_ref(), &mut notes);
    let fields = claims
        .as_ref()
        .map(|c| mapped_fields(config, c))
        .unwrap_or_default();
    Inspection {
        header,
        claims,
        refusal,
        notes,
        fields,
    }
}

/// Which `[token.claims]` path produced each identity field, with its value.
fn mapped_fields(config: &Config, claims: &Value) -> Vec<(&'static str, String, String)> {
    let (_, provenance) = explain_claims(&config.token, claims);
    provenance
        .into_iter()
        .map(|(field, path)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let value = claims
                .pointer(&pointer)
                .map_or_else(String::new, |v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            (field, value, path)
        })
        .collect()
}

fn explain(
    config: &Config,
    token: &str,
    host: Option<&str>,
    claims: Option<&Value>,
    notes: &mut Vec<String>,
) -> Option<String> {
    if let Err(e) = precheck(token) {
        return Some(match e {
            TokenError::TooLarge => format!(
                "size: {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
                token.len()
            ),
            _ => "malformed: not a compact JWS (three base64url parts)".to_string(),
        });
    }
    let leeway = config.token.leeway.as_secs();
    let t = now();
    // A JWKS config fetches its keys: a small runtime for this one call.
    let verifier = Verifier::new(&config.token);
    let verified = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(verifier.verify_fresh(token)),
        Err(_) => verifier.verify(token),
    };
    let identity = match verified {
        Ok(id) => id,
        Err(e) => {
            let num = |k: &str| claims.and_then(|c| c.get(k)).and_then(Value::as_u64);
            return Some(match e {
                TokenError::Expired => match num("exp") {
                    Some(exp) => format!(
                        "expired: {} ago (exp {exp}, leeway {})",
                        human(t.saturating_sub(exp)),
                        human(leeway)
                    ),
                    None => "expired".into(),
                },
                TokenError::NotYetValid => match num("nbf") {
                    Some(nbf) => format!(
                        "not valid yet: nbf is {} from now",
                        human(nbf.saturating_sub(t))
                    ),
                    None => "not valid yet".into(),
                },
                TokenError::Algorithm => format!(
                    "algorithm: the token says {}, the config allows {:?}",
                    claims_alg(token),
                    config.token.algorithms
                ),
                TokenError::Signature => {
                    "signature: does not verify with the configured key".into()
                }
                TokenError::Issuer => format!(
                    "issuer: expected {:?}, token has {}",
                    config.token.issuer.as_deref().unwrap_or(""),
                    claims
                        .and_then(|c| c.get("iss"))
                        .map_or("none".into(), Value::to_string)
                ),
                TokenError::Audience => format!(
                    "audience: expected one of {:?}, token has {}",
                    config.token.audience.clone().unwrap_or_default(),
                    claims
                        .and_then(|c| c.get("aud"))
                        .map_or("none".into(), Value::to_string)
                ),
                TokenError::MissingClaim(paths) => format!(
                    "claims: the token has none of {paths} ([token.claims] says where each field lives)"
                ),
                TokenError::InvalidClaim(path) => format!(
                    "claims: {path} holds a value no header can carry (empty, control characters, or not a string)"
                ),
                other => format!("{}: {other}", other.label()),
            });
        }
    };
    let left = identity.exp.saturating_sub(t);
    notes.push(format!("expires in {}", human(left)));
    if identity.impersonation.is_some() {
        notes.push("impersonation token: also needs the liveness backend to say live".into());
    }
    let Some(host) = host else {
        if config.sites.iter().any(|s| s.tenant_from_host.is_some()) {
            notes.push("tenant binding not checked: pass --host HOST".into());
        }
        return None;
    };
    let Some(normalized) = normalize_host(host) else {
        return Some(format!("host: {host:?} is not a host name"));
    };
    let router = Router::new(config.sites.iter().map(|s| (&s.host, s.clone())));
    let Some(site) = router.route(&normalized) else {
        return Some(format!(
            "host: no site serves {normalized} (the proxy answers 421)"
        ));
    };
    if let Some(pattern) = &site.tenant_from_host {
        let want = pattern.tenant(&normalized);
        let ok =
            matches!((want, &identity.tenant_id), (Some(w), Some(t)) if w.eq_ignore_ascii_case(t));
        if !ok {
            return Some(format!(
                "tenant: {normalized} names tenant {}, the token's tenant is {}",
                want.unwrap_or("(none)"),
                identity.tenant_id.as_deref().unwrap_or("(none)")
            ));
        }
    }
    None
}

fn claims_alg(token: &str) -> String {
    token
        .split('.')
        .next()
        .and_then(decode_part)
        .and_then(|h| h.get("alg").map(Value::to_string))
        .unwrap_or_else(|| "nothing".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config() -> Config {
        let env: HashMap<String, String> = [("S".to_string(), "s3cret".to_string())].into();
        Config::parse(
            "[token]\nsecret_env = \"S\"\n[[site]]\nhost = \"*.shop.example\"\nupstream = \"127.0.0.1:1\"\ntenant_from_host = \"{tenant}.shop.example\"\n",
            "t.toml",
            &env,
        )
        .expect("config")
    }

    fn args() -> MintArgs {
        MintArgs {
            alg: "HS256".into(),
            sub: "u1".into(),
            tenant: Some("acme".into()),
            ttl: Duration::from_secs(600),
            ..MintArgs::default()
        }
    }

    const KEY: &[u8] = b"s3cret";

    #[test]
    fn inspect_shows_which_path_gave_each_field_of_an_rfc8693_token() {
        let env: HashMap<String, String> = [("S".to_string(), "s3cret".to_string())].into();
        let config = Config::parse(
            "[token]\nsecret_env = \"S\"\n[token.claims]\nimpersonation = \"act\"\nimpersonator_id = \"act.sub\"\nimpersonator_email = \"act.email\"\nimpersonation_sid = [\"act.sid\", \"sid\"]\n[[site]]\nhost = \"a.example\"\nupstream = \"127.0.0.1:1\"\n",
            "t.toml",
            &env,
        )
        .expect("config");
        let claims = json!({
            "sub": "u-1",
            "exp": now() + 600,
            "sid": "s-9",
            "act": {"sub": "admin-7", "email": "root@example.com", "act": {"sub": "earlier"}},
        });
        let key = EncodingKey::from_secret(KEY);
        let t = encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign");
        let i = inspect(&config, &t, None);
        assert_eq!(i.refusal, None);
        let field = |name: &str| {
            i.fields
                .iter()
                .find(|f| f.0 == name)
                .map(|f| (f.1.clone(), f.2.clone()))
        };
        assert_eq!(field("user_id"), Some(("u-1".into(), "sub".into())));
        assert_eq!(
            field("impersonator_id"),
            Some(("admin-7".into(), "act.sub".into())),
            "the outermost actor counts"
        );
        assert_eq!(
            field("impersonation_sid"),
            Some(("s-9".into(), "sid".into())),
            "the first path the token has"
        );
        // No sid anywhere: refused, and the reason names the paths tried.
        let mut no_sid = claims.clone();
        no_sid.as_object_mut().map(|o| o.remove("sid"));
        let t = encode(&Header::new(Algorithm::HS256), &no_sid, &key).expect("sign");
        let r = inspect(&config, &t, None).refusal.expect("refused");
        assert!(r.contains("act.sid, sid"), "{r}");
    }

    #[test]
    fn minted_tokens_are_accepted_and_bound() {
        let t = mint(&args(), KEY).expect("mint");
        let i = inspect(&config(), &t, Some("acme.shop.example"));
        assert_eq!(i.refusal, None);
        assert_eq!(
            i.claims.and_then(|c| c.get("sub").cloned()),
            Some(json!("u1"))
        );
        let wrong = inspect(&config(), &t, Some("other.shop.example"));
        assert!(wrong.refusal.is_some_and(|r| r.starts_with("tenant:")));
    }

    #[test]
    fn reasons() {
        let r = inspect(&config(), &mint(&args(), b"other").expect("mint"), None).refusal;
        assert!(
            r.as_deref().is_some_and(|r| r.starts_with("signature")),
            "{r:?}"
        );
        let mut old = args();
        old.claims = vec![("exp".into(), (now() - 3600).to_string())];
        let r = inspect(&config(), &mint(&old, KEY).expect("mint"), None).refusal;
        assert!(
            r.as_deref().is_some_and(|r| r.starts_with("expired: 1h")),
            "{r:?}"
        );
        let r = inspect(&config(), "nope", None).refusal;
        assert!(r.as_deref().is_some_and(|r| r.starts_with("malformed")));
    }
}
