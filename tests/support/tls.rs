//! [`TestCert`]: a self-signed certificate for inbound STARTTLS tests.

use std::path::PathBuf;
use std::sync::Arc;

/// A self-signed certificate for `localhost` (rcgen) in PEM files, and a client
/// connector that trusts exactly that certificate.
pub struct TestCert {
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The private key file.
    pub key_file: PathBuf,
    der: rustls_pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TestCert {
    /// Generate a new certificate and key.
    pub fn generate() -> TestCert {
        let dir = tempfile::tempdir().expect("temp dir");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generate certificate");
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, certified.cert.pem()).expect("write cert");
        std::fs::write(&key_file, certified.key_pair.serialize_pem()).expect("write key");
        TestCert {
            cert_file,
            key_file,
            der: certified.cert.der().clone(),
            _dir: dir,
        }
    }

    /// The private key's PEM file (for servers outside Rust that present the certificate).
    pub fn key_file(&self) -> &std::path::Path {
        &self.key_file
    }

    /// The certificate's PEM file (for clients outside Rust that must trust it).
    pub fn cert_file(&self) -> &std::path::Path {
        &self.cert_file
    }

    /// The `[server]` keys that configure inbound STARTTLS with this certificate.
    pub fn server_toml(&self) -> String {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            self.cert_file.display(),
            self.key_file.display()
        )
    }

    /// A TLS connector that trusts only this certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("add test root");
        let config = tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}
