//! Test certificates, made by the tests themselves (rcgen) and written to a temporary directory:
//! a test CA, and leaf certificates it signs. Nothing here is a committed key.

use super::TempDir;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;
use std::sync::Arc;

/// A test certificate authority; its certificate is in `ca_file`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: TempDir,
    pub ca_file: PathBuf,
}

/// A leaf certificate and its key, as PEM files and as DER.
pub struct Leaf {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("sessiongate test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("ca cert");
        let dir = TempDir::new();
        let ca_file = dir.write("ca.pem", &issuer.pem());
        TestCa {
            issuer,
            dir,
            ca_file,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `<file>.crt` and
    /// `<file>.key` in this CA's directory.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Leaf {
            cert_file: self.dir.write(&format!("{file}.crt"), &cert_pem),
            key_file: self.dir.write(&format!("{file}.key"), &key_pem),
            cert_der: cert.der().to_vec(),
            cert_pem,
            key_pem,
        }
    }

    /// A rustls client config that trusts only this CA, speaking `alpn` (e.g. `h2`, `http/1.1`).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.issuer.der().to_vec(),
            ))
            .expect("add test CA");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
