//! Randomness for the banner: the per-response CSP nonce and the process's CSRF key. There is
//! no fallback to anything predictable.

use base64::Engine;

/// The system RNG failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct NoRandomness;

/// `n` random bytes from the system RNG. There is no fallback: these values keep the page's
/// CSP and the End form safe, and a predictable one would not.
pub(super) fn random_bytes(n: usize) -> Result<Vec<u8>, NoRandomness> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| NoRandomness)?;
    Ok(b)
}

/// A fresh per-response nonce.
pub fn nonce() -> Result<String, NoRandomness> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(16)?))
}

/// A response's nonce, drawn the first time a policy needs it (most pages have no CSP). `None`
/// when the RNG failed: the page's policy then stays as it is and the banner shows without its
/// script.
#[derive(Debug, Default)]
pub struct Nonce(std::sync::OnceLock<Option<String>>);

impl Nonce {
    pub fn get(&self) -> Option<&str> {
        self.0
            .get_or_init(|| {
                nonce()
                    .inspect_err(|e| tracing::error!(error = %e, "no nonce for the banner"))
                    .ok()
            })
            .as_deref()
    }

    pub fn is_drawn(&self) -> bool {
        self.0.get().is_some()
    }
}

impl From<&str> for Nonce {
    fn from(value: &str) -> Nonce {
        Nonce(std::sync::OnceLock::from(Some(value.to_string())))
    }
}
