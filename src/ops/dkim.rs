//! `smarthost dkim keygen` and `smarthost dkim dns`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{Config, DkimAlgorithm, DkimConfig, UpstreamUrl};
use crate::transform::dkim::{DkimError, DkimKey, generate_key_file, zone_txt};

/// Create a key for `domain`/`selector` in `out_dir` and return (its path, the text to
/// print: where the key is and the DNS record to publish).
pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    bits: u32,
    out_dir: &Path,
) -> Result<(PathBuf, String), DkimError> {
    let invalid = |reason: String| DkimError::Generate {
        path: out_dir.to_owned(),
        reason,
    };
    let domain_ok = !domain.is_empty()
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'));
    if !domain_ok {
        return Err(invalid(format!("--domain {domain:?} is not a domain name")));
    }
    let selector_ok = !selector.is_empty()
        && selector.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !selector_ok {
        return Err(invalid(format!(
            "--selector {selector:?} is not a DKIM selector (letters, digits, - and _, dot-separated)"
        )));
    }
    let path = out_dir.join(format!("{domain}.{selector}.pem"));
    generate_key_file(&path, algorithm, bits)?;
    let cfg = DkimConfig {
        domain: domain.into(),
        selector: selector.into(),
        key_file: path.clone(),
        algorithm,
        generate: false,
    };
    let key = DkimKey::load(&cfg)?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "private key written to {} (mode 0600); keep it in the data volume and back it up",
        path.display()
    );
    let _ = writeln!(text, "publish this DNS record:");
    let _ = writeln!(text, "{}", key.zone_record());
    let _ = writeln!(text, "then add to the configuration:");
    let _ = writeln!(
        text,
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"\nalgorithm = \"{algorithm}\"",
        path.display()
    );
    Ok((path, text))
}

/// The DKIM record of every configured key, with SPF and DMARC suggestions. Keys are
/// only read here, never generated.
pub fn dns_records(config: &Config) -> Result<String, DkimError> {
    let mut text = String::new();
    if config.dkim.is_empty() {
        let _ = writeln!(
            text,
            "no [[dkim]] keys are configured; create one with `smarthost dkim keygen --domain DOMAIN`"
        );
    }
    for cfg in &config.dkim {
        if cfg.generate && !cfg.key_file.exists() {
            let _ = writeln!(
                text,
                "; DKIM for {}: the key {} does not exist yet; `smarthost serve` creates it on its first start (generate = true), then run this command again\n",
                cfg.domain,
                cfg.key_file.display()
            );
            continue;
        }
        let key = DkimKey::load(cfg)?;
        let _ = writeln!(
            text,
            "; DKIM for {} (selector {}, {})",
            cfg.domain, cfg.selector, cfg.algorithm
        );
        let _ = writeln!(text, "{}", key.zone_record());
        let includes = spf_includes(config);
        let spf = if includes.is_empty() {
            "v=spf1 mx ~all".to_owned()
        } else {
            format!(
                "v=spf1 mx {} ~all",
                includes
                    .iter()
                    .map(|i| format!("include:{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let _ = writeln!(
            text,
            "; SPF: allow the servers that send for {} (merge with an existing SPF record; a domain has only one)",
            cfg.domain
        );
        let _ = writeln!(text, "{}", zone_txt(&cfg.domain, &spf));
        let _ = writeln!(
            text,
            "; DMARC: start with p=none and read the reports before tightening"
        );
        let _ = writeln!(
            text,
            "{}",
            zone_txt(
                &format!("_dmarc.{}", cfg.domain),
                &format!("v=DMARC1; p=none; rua=mailto:postmaster@{}", cfg.domain)
            )
        );
        let _ = writeln!(text);
    }
    Ok(text)
}

/// SPF includes of well-known providers, found from the upstream host names.
fn spf_includes(config: &Config) -> Vec<&'static str> {
    const KNOWN: [(&str, &str); 8] = [
        ("gmail.com", "_spf.google.com"),
        ("office365.com", "spf.protection.outlook.com"),
        ("outlook.com", "spf.protection.outlook.com"),
        ("qq.com", "spf.mail.qq.com"),
        ("163.com", "spf.163.com"),
        ("amazonaws.com", "amazonses.com"),
        ("sendgrid.net", "sendgrid.net"),
        ("mailgun.org", "mailgun.org"),
    ];
    let mut out = Vec::new();
    for up in &config.upstream {
        if let UpstreamUrl::Smtp { host, .. } = &up.url {
            for (suffix, include) in KNOWN {
                if (host == suffix || host.ends_with(&format!(".{suffix}")))
                    && !out.contains(&include)
                {
                    out.push(include);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_prints_the_record_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let (path, text) = keygen(
            "example.org",
            "mail",
            DkimAlgorithm::Ed25519Sha256,
            2048,
            dir.path(),
        )
        .unwrap();
        assert!(path.ends_with("example.org.mail.pem"));
        assert!(
            text.contains("mail._domainkey.example.org. IN TXT ( \"v=DKIM1; k=ed25519; p="),
            "{text}"
        );
        assert!(
            keygen(
                "example.org",
                "mail",
                DkimAlgorithm::Ed25519Sha256,
                2048,
                dir.path()
            )
            .is_err()
        );
    }
}
