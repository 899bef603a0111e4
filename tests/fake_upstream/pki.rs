//! A throw-away test CA, generated per test with rcgen: a CA certificate (written to a
//! PEM file for `ca_file`) and server certificates it signs — valid for "localhost",
//! for the wrong name, expired — plus self-signed ones no CA vouches for.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;

/// A certificate authority for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    pem: tempfile::NamedTempFile,
}

/// A server certificate chain and its key.
pub struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    /// A new CA; its certificate is in [`TestCa::ca_file`].
    pub fn generate() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "smarthost test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let mut pem = tempfile::NamedTempFile::new().expect("CA file");
        pem.write_all(cert.pem().as_bytes()).expect("write CA file");
        TestCa { cert, key, pem }
    }

    /// The CA certificate (PEM), for an upstream's `ca_file`.
    pub fn ca_file(&self) -> &Path {
        self.pem.path()
    }

    /// A valid server certificate for `name`.
    pub fn leaf(&self, name: &str) -> ServerCert {
        self.issue(name, false)
    }

    /// A server certificate for `name` that expired in 2001.
    pub fn expired_leaf(&self, name: &str) -> ServerCert {
        self.issue(name, true)
    }

    fn issue(&self, name: &str, expired: bool) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut params = server_params(name);
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        ServerCert::new(&cert, &key)
    }
}

/// A self-signed certificate for `name`: no CA, configured or public, vouches for it.
pub fn self_signed(name: &str) -> ServerCert {
    let key = KeyPair::generate().expect("server key");
    let cert = server_params(name).self_signed(&key).expect("certificate");
    ServerCert::new(&cert, &key)
}

fn server_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

impl ServerCert {
    fn new(cert: &Certificate, key: &KeyPair) -> ServerCert {
        ServerCert {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// A rustls server configuration presenting this certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("server TLS config");
        Arc::new(config)
    }
}
