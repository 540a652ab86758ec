//! TLS: the public listener's certificates (`[listen.tls]`), chosen by SNI and swapped on reload
//! without touching open connections; what a connection's certificate covers (step 2's 421);
//! and the roots an `https://` upstream is verified against.
//!
//! The backend is rustls (Pingora's `rustls` feature): the build stays free of OpenSSL, and
//! reqwest, jsonwebtoken and aws-lc-rs already bring its crypto. A certificate is chosen by a
//! resolver that reads an `ArcSwap`, so a reload is one atomic store and handshakes in flight
//! keep the certificate they started with.

use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::TlsRef;
use pingora::utils::tls::{WrappedX509, parse_x509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::any::Any;
use std::path::Path;
use std::sync::Arc;

/// One certificate of the listener: its chain and key, the names it covers, when it expires.
#[derive(Debug)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names of the leaf's subjectAltName (its common name when it has none);
    /// wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

impl Cert {
    /// What the certificate is called in metrics and logs: its first name.
    pub fn label(&self) -> &str {
        self.names.first().map_or("(no name)", String::as_str)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("\"{}\" is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("\"{}\" holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Loads a PEM chain and its PEM private key, checking that they belong together.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Cert, String> {
    let chain = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("\"{}\" is not a PEM private key: {e}", key_file.display()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("\"{}\": unsupported private key: {e}", key_file.display()))?;
    let (names, not_after) = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            format!(
                "\"{}\": the certificate does not parse: {e}",
                cert_file.display()
            )
        })?;
        (names_of(&leaf), leaf.validity().not_after.timestamp())
    };
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(format!(
                "\"{}\" is not the key of the certificate in \"{}\"",
                key_file.display(),
                cert_file.display()
            ));
        }
    }
    Ok(Cert {
        key: Arc::new(key),
        names,
        not_after,
    })
}

fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(ip) => ip_text(ip),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// An IP subjectAltName as a host (`127.0.0.1`, `[::1]`).
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(format!(
            "[{}]",
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)
        )),
        _ => None,
    }
}

/// Does a certificate with these names cover this normalized host? An exact name, or a
/// wildcard `*.example.com` for exactly one more label.
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || n.strip_prefix("*.").is_some_and(|suffix| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            })
    })
}

/// The listener's certificates, in config order.
#[derive(Debug, Default)]
pub struct CertSet {
    certs: Vec<Cert>,
}

impl CertSet {
    pub fn new(certs: Vec<Cert>) -> CertSet {
        CertSet { certs }
    }

    pub fn certs(&self) -> &[Cert] {
        &self.certs
    }

    /// The certificate for a client's SNI: one naming it exactly, then one whose wildcard
    /// covers it, else the first (also for a client that sends no SNI).
    pub fn select(&self, sni: Option<&str>) -> Option<&Cert> {
        if let Some(sni) = sni.map(str::to_ascii_lowercase) {
            let sni = sni.trim_end_matches('.');
            if let Some(c) = self.certs.iter().find(|c| c.names.iter().any(|n| n == sni)) {
                return Some(c);
            }
            if let Some(c) = self.certs.iter().find(|c| covers(&c.names, sni)) {
                return Some(c);
            }
        }
        self.certs.first()
    }
}

/// The live certificates, read by every handshake and swapped on reload.
#[derive(Debug, Default)]
pub struct CertStore(ArcSwap<CertSet>);

impl CertStore {
    pub fn new(set: Arc<CertSet>) -> CertStore {
        let store = CertStore(ArcSwap::new(set.clone()));
        export_expiry(&set);
        store
    }

    /// Serves `set` from the next handshake on; open connections keep theirs.
    pub fn replace(&self, set: Arc<CertSet>) {
        export_expiry(&set);
        self.0.store(set);
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.0.load_full()
    }
}

/// `sessiongate_tls_certificate_expiry_seconds{name}` for the certificates now served.
fn export_expiry(set: &CertSet) {
    METRICS.tls_certificate_expiry.reset();
    for c in set.certs() {
        METRICS
            .tls_certificate_expiry
            .with_label_values(&[c.label()])
            .set(c.not_after);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .load()
            .select(hello.server_name())
            .map(|c| c.key.clone())
    }
}

/// What the certificate of a TLS connection covers: kept with the connection (in the extension
/// of Pingora's SSL digest) for step 2's 421.
#[derive(Debug)]
pub struct Served {
    pub names: Vec<String>,
}

struct Handshakes(Arc<CertStore>);

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let set = self.0.current();
        let names = set
            .select(tls.server_name())
            .map(|c| c.names.clone())
            .unwrap_or_default();
        Some(Arc::new(Served { names }))
    }
}

/// The listener's TLS settings: certificates from `store`, HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2
/// and 1.3 only (rustls speaks nothing older).
pub fn listener_settings(store: Arc<CertStore>) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(Handshakes(store.clone())))?;
    settings.set_cert_resolver(store);
    settings.enable_h2();
    Ok(settings)
}

/// The names the certificate of this session's connection covers; `None` off TLS.
pub fn served_names(session: &pingora::proxy::Session) -> Option<Vec<String>> {
    let ssl = session.digest()?.ssl_digest.as_ref()?;
    Some(
        ssl.extension
            .get::<Served>()
            .map(|s| s.names.clone())
            .unwrap_or_default(),
    )
}

/// The roots an `https://` upstream's certificate is verified against, from a PEM file.
pub type Roots = Arc<[WrappedX509]>;

/// Loads `upstream_ca_file`.
pub fn load_roots(path: &Path) -> Result<Roots, String> {
    let certs = read_certs(path)?;
    let mut roots = Vec::with_capacity(certs.len());
    for der in certs {
        // Pingora's wrapper panics on a certificate it cannot parse: check it first.
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("\"{}\": a certificate does not parse: {e}", path.display()))?;
        roots.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    Ok(Arc::from(roots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec!["cafe.example".to_string(), "*.shop.example".to_string()];
        assert!(covers(&names, "cafe.example"));
        assert!(covers(&names, "acme.shop.example"));
        assert!(!covers(&names, "a.b.shop.example"));
        assert!(!covers(&names, "shop.example"));
        assert!(!covers(&names, "evil.example"));
    }
}
