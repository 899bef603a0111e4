//! DKIM signing (RFC 6376, RFC 8463) with keys that live in the data volume.
//!
//! Keys are loaded once at startup. A key that is missing (without `generate = true`),
//! unreadable, malformed, of the wrong algorithm or readable by others stops the start
//! with the reason and the fix. `generate = true` creates a missing key once; an
//! existing key is never replaced.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{DkimAlgorithm, DkimConfig};

/// Headers signed (RFC 6376 §5.4.1 recommendations). Listing `From` twice oversigns it:
/// a second From added in transit breaks the signature. Listed headers that are absent
/// are signed as absent, so they cannot be added later either.
pub const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
];

/// A streamed signature in progress, for either kind of key.
enum Stream<'a> {
    Rsa(mail_auth::dkim::DkimSigningStream<'a, RsaKey<Sha256>>),
    Ed25519(mail_auth::dkim::DkimSigningStream<'a, Ed25519Key>),
}

impl Stream<'_> {
    fn write(&mut self, chunk: &[u8]) {
        match self {
            Stream::Rsa(s) => s.write(chunk),
            Stream::Ed25519(s) => s.write(chunk),
        }
    }
}

/// Why a streamed signature failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The body could not be read.
    #[error("reading the message body: {0}")]
    Read(std::io::Error),
    /// mail-auth refused.
    #[error("{0}")]
    Signing(String),
}

/// A DKIM key that cannot be used, with the reason and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file does not exist and `generate` is off.
    #[error(
        "DKIM key {path} for {domain} does not exist; create it with `smarthost dkim keygen --domain {domain} --selector {selector} --out {dir}` or set generate = true in its [[dkim]] entry"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// Its domain.
        domain: String,
        /// Its selector.
        selector: String,
        /// The directory for keygen.
        dir: String,
    },
    /// The key file cannot be read.
    #[error("DKIM key {path}: cannot read it: {source} (the smarthost user needs read access)")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read the private key.
    #[error("DKIM key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a usable private key.
    #[error("DKIM key {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Generating or writing a new key failed.
    #[error("DKIM key {path}: cannot create it: {reason}")]
    Generate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

enum Signer {
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
}

/// One loaded signing key.
pub struct DkimKey {
    /// `d=`
    pub domain: String,
    /// `s=`
    pub selector: String,
    /// The algorithm.
    pub algorithm: DkimAlgorithm,
    /// The public key as it goes into `p=` (base64).
    pub public_key: String,
    signer: Signer,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DkimKey({} {} {})",
            self.domain, self.selector, self.algorithm
        )
    }
}

/// The keys by domain.
#[derive(Debug, Default)]
pub struct DkimKeys {
    keys: Vec<DkimKey>,
}

impl DkimKeys {
    /// Load every `[[dkim]]` key, generating missing ones where asked to.
    pub fn load(configs: &[DkimConfig]) -> Result<DkimKeys, DkimError> {
        let mut keys = Vec::new();
        for cfg in configs {
            if !cfg.key_file.exists() {
                if !cfg.generate {
                    let dir = cfg
                        .key_file
                        .parent()
                        .map_or(".".into(), |p| p.display().to_string());
                    return Err(DkimError::Missing {
                        path: cfg.key_file.clone(),
                        domain: cfg.domain.clone(),
                        selector: cfg.selector.clone(),
                        dir: if dir.is_empty() { ".".into() } else { dir },
                    });
                }
                generate_key_file(&cfg.key_file, cfg.algorithm, 2048)?;
                tracing::info!(domain = %cfg.domain, selector = %cfg.selector, path = %cfg.key_file.display(), "generated a new DKIM key; publish its record (smarthost dkim dns)");
            }
            keys.push(DkimKey::load(cfg)?);
        }
        // Longest domain first, so a subdomain's own key wins over its parent's.
        keys.sort_by_key(|k| std::cmp::Reverse(k.domain.len()));
        Ok(DkimKeys { keys })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys.
    pub fn iter(&self) -> impl Iterator<Item = &DkimKey> {
        self.keys.iter()
    }

    /// The key for `domain` or its nearest parent domain.
    pub fn for_domain(&self, domain: &str) -> Option<&DkimKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.keys.iter().find(|k| {
            let d = k.domain.to_ascii_lowercase();
            domain == d || domain.ends_with(&format!(".{d}"))
        })
    }
}

impl DkimKey {
    /// Load the key of one `[[dkim]]` entry.
    pub fn load(cfg: &DkimConfig) -> Result<DkimKey, DkimError> {
        let path = &cfg.key_file;
        check_permissions(path)?;
        let pem = std::fs::read(path).map_err(|source| DkimError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let malformed = |reason: String| DkimError::Malformed {
            path: path.clone(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| malformed(format!("no PEM private key found ({e}); expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----")))?;
        let (signer, public_key) = match cfg.algorithm {
            DkimAlgorithm::RsaSha256 => {
                let public = match &der {
                    PrivateKeyDer::Pkcs8(k) => aws_lc_rs::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
                    PrivateKeyDer::Pkcs1(k) => aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
                    _ => return Err(malformed("not an RSA key; set algorithm = \"ed25519-sha256\" if it is an Ed25519 key".into())),
                }
                .map_err(|e| malformed(format!("not a usable RSA key ({e}); with algorithm = \"ed25519-sha256\" give an Ed25519 key")))?
                .public_key()
                .as_der()
                .map_err(|_| malformed("cannot derive the public key".into()))?;
                let key = RsaKey::<Sha256>::from_key_der(der.clone_key())
                    .map_err(|e| malformed(e.to_string()))?;
                (
                    Signer::Rsa(Box::new(configure(DkimSigner::from_key(key), cfg))),
                    BASE64_STANDARD.encode(public.as_ref()),
                )
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let PrivateKeyDer::Pkcs8(k) = &der else {
                    return Err(malformed("not an Ed25519 PKCS#8 key; set algorithm = \"rsa-sha256\" if it is an RSA key".into()));
                };
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der())
                    .map_err(|e| malformed(format!("not a usable Ed25519 key ({e}); with algorithm = \"rsa-sha256\" give an RSA key")))?;
                let public = BASE64_STANDARD.encode(key.public_key());
                (
                    Signer::Ed25519(Box::new(configure(DkimSigner::from_key(key), cfg))),
                    public,
                )
            }
        };
        Ok(DkimKey {
            domain: cfg.domain.clone(),
            selector: cfg.selector.clone(),
            algorithm: cfg.algorithm,
            public_key,
            signer,
        })
    }

    /// The `DKIM-Signature` header (folded, with CRLF) for `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        };
        signature.map(|s| s.to_header()).map_err(|e| e.to_string())
    }

    /// The `DKIM-Signature` header for a message whose content is `head` followed by
    /// what `body` reads: the body is hashed a piece at a time as it is read, never
    /// held whole.
    pub fn sign_streamed(
        &self,
        head: &[u8],
        body: &mut impl std::io::Read,
    ) -> Result<String, SignError> {
        let mut stream = match &self.signer {
            Signer::Rsa(s) => Stream::Rsa(s.sign_streaming()),
            Signer::Ed25519(s) => Stream::Ed25519(s.sign_streaming()),
        };
        stream.write(head);
        let mut buf = vec![0; 256 * 1024];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => stream.write(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SignError::Read(e)),
            }
        }
        let signature = match stream {
            Stream::Rsa(s) => s.finish(),
            Stream::Ed25519(s) => s.finish(),
        };
        signature
            .map(|s| s.to_header())
            .map_err(|e| SignError::Signing(e.to_string()))
    }

    /// Where the record goes: `selector._domainkey.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record's value.
    pub fn dns_value(&self) -> String {
        let k = match self.algorithm {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_key)
    }

    /// The record in zone-file form, the value split into strings of at most 255
    /// characters (RFC 7208 §3.3 / RFC 1035 character-strings).
    pub fn zone_record(&self) -> String {
        zone_txt(&self.dns_name(), &self.dns_value())
    }
}

/// `name. IN TXT ( "part1" "part2" )`
pub fn zone_txt(name: &str, value: &str) -> String {
    let mut out = format!("{name}. IN TXT (");
    for chunk in value.as_bytes().chunks(255) {
        let _ = write!(out, " \"{}\"", String::from_utf8_lossy(chunk));
    }
    out.push_str(" )");
    out
}

fn configure<T: mail_auth::common::crypto::SigningKey>(
    signer: DkimSigner<T, mail_auth::dkim::NeedDomain>,
    cfg: &DkimConfig,
) -> DkimSigner<T, Done> {
    signer
        .domain(cfg.domain.clone())
        .selector(cfg.selector.clone())
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), DkimError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| DkimError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(DkimError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), DkimError> {
    Ok(())
}

/// Create a new private key at `path` (PEM, PKCS#8, mode 0600), never overwriting.
/// Creates missing parent directories with mode 0700.
pub fn generate_key_file(
    path: &Path,
    algorithm: DkimAlgorithm,
    bits: u32,
) -> Result<(), DkimError> {
    let fail = |reason: String| DkimError::Generate {
        path: path.to_owned(),
        reason,
    };
    let der: Vec<u8> = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let size = match bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                other => {
                    return Err(fail(format!(
                        "{other} bits is not supported; use 2048, 3072 or 4096"
                    )));
                }
            };
            let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|e| fail(e.to_string()))?;
            pair.as_der()
                .map_err(|e| fail(e.to_string()))?
                .as_ref()
                .to_vec()
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::generate()
                .map_err(|e| fail(e.to_string()))?;
            pair.to_pkcs8v1()
                .map_err(|e| fail(e.to_string()))?
                .as_ref()
                .to_vec()
        }
    };
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    let b64 = BASE64_STANDARD.encode(&der);
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)
            .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            fail("the file already exists; smarthost never overwrites a key".into())
        }
        _ => fail(e.to_string()),
    })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, domain: &str, algorithm: DkimAlgorithm, generate: bool) -> DkimConfig {
        DkimConfig {
            domain: domain.into(),
            selector: "s1".into(),
            key_file: dir.join(format!("{domain}.pem")),
            algorithm,
            generate,
        }
    }

    #[test]
    fn generates_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(
            &dir.path().join("keys"),
            "example.com",
            DkimAlgorithm::Ed25519Sha256,
            true,
        );
        let keys = DkimKeys::load(std::slice::from_ref(&c)).unwrap();
        let first = keys.for_domain("example.com").unwrap().public_key.clone();
        let again = DkimKeys::load(std::slice::from_ref(&c)).unwrap();
        assert_eq!(again.for_domain("example.com").unwrap().public_key, first);
        assert!(
            generate_key_file(&c.key_file, DkimAlgorithm::Ed25519Sha256, 2048)
                .unwrap_err()
                .to_string()
                .contains("never overwrites")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&c.key_file).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn explains_unusable_keys() {
        let dir = tempfile::tempdir().unwrap();
        let missing = cfg(
            dir.path(),
            "missing.example",
            DkimAlgorithm::RsaSha256,
            false,
        );
        let e = DkimKeys::load(&[missing]).unwrap_err().to_string();
        assert!(
            e.contains("does not exist")
                && e.contains("smarthost dkim keygen --domain missing.example"),
            "{e}"
        );

        let garbage = cfg(
            dir.path(),
            "garbage.example",
            DkimAlgorithm::RsaSha256,
            false,
        );
        std::fs::write(&garbage.key_file, "not a key").unwrap();
        set_mode(&garbage.key_file, 0o600);
        assert!(
            DkimKeys::load(&[garbage])
                .unwrap_err()
                .to_string()
                .contains("no PEM private key")
        );

        let exposed = cfg(
            dir.path(),
            "exposed.example",
            DkimAlgorithm::Ed25519Sha256,
            true,
        );
        DkimKeys::load(std::slice::from_ref(&exposed)).unwrap();
        set_mode(&exposed.key_file, 0o644);
        let e = DkimKeys::load(&[exposed]).unwrap_err().to_string();
        assert!(
            e.contains("readable by other users") && e.contains("chmod 600"),
            "{e}"
        );

        let mismatch = cfg(
            dir.path(),
            "mismatch.example",
            DkimAlgorithm::Ed25519Sha256,
            true,
        );
        DkimKeys::load(std::slice::from_ref(&mismatch)).unwrap();
        let as_rsa = DkimConfig {
            algorithm: DkimAlgorithm::RsaSha256,
            ..mismatch
        };
        assert!(
            DkimKeys::load(&[as_rsa])
                .unwrap_err()
                .to_string()
                .contains("ed25519")
        );
    }

    fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    #[test]
    fn only_ed25519_keys_sign_cheaply() {
        use crate::transform::Transformer;
        let dir = tempfile::tempdir().unwrap();
        let ed = cfg(dir.path(), "a.example", DkimAlgorithm::Ed25519Sha256, true);
        let rsa = cfg(dir.path(), "b.example", DkimAlgorithm::RsaSha256, true);
        let cheap = |configs: &[DkimConfig]| {
            Transformer::new(DkimKeys::load(configs).unwrap()).signs_cheaply()
        };
        assert!(cheap(&[]), "no signature at all");
        assert!(cheap(std::slice::from_ref(&ed)));
        assert!(
            !cheap(&[ed, rsa]),
            "one rsa-sha256 key is enough to be costly"
        );
    }

    #[test]
    fn picks_the_key_of_the_domain_or_a_parent() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DkimKeys::load(&[
            cfg(
                dir.path(),
                "example.com",
                DkimAlgorithm::Ed25519Sha256,
                true,
            ),
            cfg(
                dir.path(),
                "mail.example.com",
                DkimAlgorithm::Ed25519Sha256,
                true,
            ),
        ])
        .unwrap();
        assert_eq!(
            keys.for_domain("EXAMPLE.com").unwrap().domain,
            "example.com"
        );
        assert_eq!(
            keys.for_domain("news.example.com").unwrap().domain,
            "example.com"
        );
        assert_eq!(
            keys.for_domain("a.mail.example.com").unwrap().domain,
            "mail.example.com"
        );
        assert!(keys.for_domain("badexample.com").is_none());
    }

    #[test]
    fn dns_records_split_long_values() {
        let value = "v=DKIM1; k=rsa; p=".to_owned() + &"A".repeat(400);
        let zone = zone_txt("s._domainkey.example.com", &value);
        let parts: Vec<&str> = zone.split('"').skip(1).step_by(2).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= 255));
        assert_eq!(parts.concat(), value);
    }
}
