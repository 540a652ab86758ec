//! The assertion's signing keys (SPEC.md "The signed assertion"): a PKCS#8 private key, EC P-256
//! (ES256) or Ed25519 (EdDSA), parsed once; its public half as a JWK whose `kid` is the RFC 7638
//! thumbprint; the previous public key during a rotation; the JWKS document they make. Signing
//! is aws-lc-rs over the parsed key (a compact JWS is three base64url parts), so the hot path
//! never re-parses a PEM.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value, json};
use std::fmt;
use std::path::Path;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A public key as published: its JWK members and its thumbprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: String,
    pub alg: &'static str,
    /// The JWK, with `kid`, `alg` and `use`.
    pub jwk: Value,
}

impl PublicJwk {
    /// From the raw public key: an uncompressed P-256 point (`04 || x || y`) or 32 Ed25519 bytes.
    fn new(kind: KeyKind, public: &[u8]) -> Result<PublicJwk, String> {
        // RFC 7638: the required members, in lexicographic order, no whitespace.
        let (canonical, mut jwk) = match kind {
            KeyKind::Es256 => {
                if public.len() != 65 || public[0] != 4 {
                    return Err("not an uncompressed P-256 public key".into());
                }
                let (x, y) = (b64(&public[1..33]), b64(&public[33..]));
                (
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                    json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                )
            }
            KeyKind::EdDsa => {
                if public.len() != 32 {
                    return Err("not an Ed25519 public key".into());
                }
                let x = b64(public);
                (
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                )
            }
        };
        let kid = b64(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
        );
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(kind.alg());
        jwk["use"] = json!("sig");
        Ok(PublicJwk {
            kid,
            alg: kind.alg(),
            jwk,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Es256,
    EdDsa,
}

impl KeyKind {
    fn alg(self) -> &'static str {
        match self {
            KeyKind::Es256 => "ES256",
            KeyKind::EdDsa => "EdDSA",
        }
    }
}

enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A PKCS#8 private key, P-256 or Ed25519, and its public JWK.
fn private_key(der: &[u8]) -> Result<(Signer, PublicJwk), String> {
    if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
        let jwk = PublicJwk::new(KeyKind::Es256, k.public_key().as_ref())?;
        return Ok((Signer::Es256(k), jwk));
    }
    if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
        let jwk = PublicJwk::new(KeyKind::EdDsa, k.public_key().as_ref())?;
        return Ok((Signer::EdDsa(k), jwk));
    }
    Err("the key is neither an EC P-256 nor an Ed25519 private key (PKCS#8)".into())
}

/// A SubjectPublicKeyInfo (PEM "PUBLIC KEY"), P-256 or Ed25519.
fn public_key(der: &[u8]) -> Result<PublicJwk, String> {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;
    let (_, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let key = spki.subject_public_key.data.as_ref();
    match (alg.as_str(), curve.as_deref()) {
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => PublicJwk::new(KeyKind::Es256, key),
        (OID_ED25519, _) => PublicJwk::new(KeyKind::EdDsa, key),
        _ => Err("the key is neither an EC P-256 nor an Ed25519 public key".into()),
    }
}

/// The signing key and the published keys, loaded once per config.
pub struct Keys {
    signer: Signer,
    pub current: PublicJwk,
    pub previous: Option<PublicJwk>,
    /// `{"keys":[...]}`, rendered once.
    pub jwks: bytes::Bytes,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.current.kid)
            .field("previous", &self.previous.as_ref().map(|p| &p.kid))
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// `key_file`: a PKCS#8 PEM private key. `previous`: a PEM public key (or the previous
    /// PKCS#8 private key, whose public half is then published). `Err` says what is wrong.
    pub fn load(key_file: &Path, previous: Option<&Path>) -> Result<Keys, String> {
        let der = PrivatePkcs8KeyDer::from_pem_file(key_file).map_err(|e| {
            format!(
                "\"{}\" is not a PKCS#8 PEM private key: {e}",
                key_file.display()
            )
        })?;
        let (signer, current) = private_key(der.secret_pkcs8_der())
            .map_err(|e| format!("\"{}\": {e}", key_file.display()))?;
        let previous = match previous {
            None => None,
            Some(p) => {
                let jwk = match SubjectPublicKeyInfoDer::from_pem_file(p) {
                    Ok(spki) => public_key(spki.as_ref()),
                    Err(_) => match PrivatePkcs8KeyDer::from_pem_file(p) {
                        Ok(der) => private_key(der.secret_pkcs8_der()).map(|(_, jwk)| jwk),
                        Err(e) => Err(format!("not a PEM public key: {e}")),
                    },
                }
                .map_err(|e| format!("\"{}\": {e}", p.display()))?;
                (jwk.kid != current.kid).then_some(jwk)
            }
        };
        Ok(Keys::assemble(signer, current, previous))
    }

    /// A fresh P-256 key (tests and benchmarks).
    pub fn generate_es256() -> Result<Keys, String> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate a P-256 key".to_string())?;
        let (signer, current) = private_key(pkcs8.as_ref())?;
        Ok(Keys::assemble(signer, current, None))
    }

    fn assemble(signer: Signer, current: PublicJwk, previous: Option<PublicJwk>) -> Keys {
        let keys: Vec<&Value> = std::iter::once(&current.jwk)
            .chain(previous.as_ref().map(|p| &p.jwk))
            .collect();
        let jwks = json!({ "keys": keys }).to_string().into();
        Keys {
            signer,
            current,
            previous,
            jwks,
        }
    }

    /// A compact JWS of `claims` with the current key.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": self.current.alg, "typ": "JWT", "kid": self.current.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match &self.signer {
            Signer::Es256(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|_| "ECDSA signing failed".to_string())?,
            Signer::EdDsa(k) => k.sign(input.as_bytes()),
        };
        Ok(format!("{input}.{}", b64(signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.1's Ed25519 key: its thumbprint is given in A.3.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_KID: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";

    fn ed25519_pkcs8(seed: &[u8]) -> Vec<u8> {
        // PKCS#8 v1 prefix for an Ed25519 private key, then the 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        der
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        let seed = URL_SAFE_NO_PAD.decode(RFC8037_D).expect("seed");
        let (_, jwk) = private_key(&ed25519_pkcs8(&seed)).expect("Ed25519 key");
        assert_eq!(jwk.kid, RFC8037_KID);
        assert_eq!(jwk.jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!((jwk.alg, &jwk.jwk["use"]), ("EdDSA", &json!("sig")));
    }
}
