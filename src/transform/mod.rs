//! Stage 3: rewrites of the message itself. Pure functions; the clock is a parameter.
//!
//! * At acceptance, once per message ([`normalize`]): strict From/Sender/Reply-To, Date
//!   and Message-ID if missing, then the operator's `[[header_rule]]`s
//!   ([`header_rules`]). Our `Received` header ([`trace`]) is added on top after them.
//! * At delivery, once per upstream policy ([`Transformer::for_upstream`]): the
//!   upstream's `sender` policy, then the DKIM signature ([`dkim`]) for the From domain.

pub mod dkim;
pub mod from_rewrite;
pub mod header_rules;
pub mod headers;
pub mod normalize;
pub mod seven_bit;
pub mod trace;

use from_rewrite::{Mailbox, read_mailboxes, render};
use headers::Parsed;

/// Why a message could not be transformed.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// Neither the From header nor the envelope has an address (refused at DATA, 550 5.6.0).
    #[error("the From header has no usable address and the envelope sender is empty")]
    NoAddress,
    /// 8-bit content for an upstream without 8BITMIME that cannot be made 7-bit.
    #[error(transparent)]
    NotConvertible(seven_bit::NotConvertible),
    /// Signing failed; the message is not sent unsigned (a transient failure).
    #[error("DKIM signing for {domain} failed: {reason}")]
    Signing {
        /// The signing domain.
        domain: String,
        /// mail-auth's reason.
        reason: String,
    },
}

impl From<seven_bit::NotConvertible> for TransformError {
    fn from(e: seven_bit::NotConvertible) -> TransformError {
        TransformError::NotConvertible(e)
    }
}

/// The first mailbox of the From header.
pub fn from_mailbox(content: &[u8]) -> Option<Mailbox> {
    let msg = Parsed::parse(content);
    let field = msg.get("From")?;
    read_mailboxes(&field.raw_value).into_iter().next()
}

/// The upstream's `sender` policy: the From address becomes `account`, the display name
/// stays, and the original address moves to Reply-To unless the message has one.
pub fn apply_sender_policy(content: &[u8], account: &str) -> Vec<u8> {
    let mut msg = Parsed::parse(content);
    let Some(index) = msg.fields.iter().position(|f| f.is("From")) else {
        msg.push(
            "From",
            &render(
                &[Mailbox {
                    name: None,
                    address: account.to_owned(),
                }],
                "From",
            ),
        );
        return msg.to_bytes();
    };
    let original = read_mailboxes(&msg.fields[index].raw_value)
        .into_iter()
        .next();
    if original
        .as_ref()
        .is_some_and(|m| m.address.eq_ignore_ascii_case(account))
    {
        return content.to_vec();
    }
    let name = original.as_ref().and_then(|m| m.name.clone());
    msg.set(
        index,
        &render(
            &[Mailbox {
                name,
                address: account.to_owned(),
            }],
            "From",
        ),
    );
    if let Some(original) = original
        && !msg.has("Reply-To")
    {
        msg.push("Reply-To", &render(&[original], "Reply-To"));
    }
    msg.to_bytes()
}

/// Applies the delivery-time rewrites with the configured DKIM keys.
#[derive(Debug, Default)]
pub struct Transformer {
    keys: dkim::DkimKeys,
}

impl Transformer {
    /// A transformer signing with `keys`.
    pub fn new(keys: dkim::DkimKeys) -> Transformer {
        Transformer { keys }
    }

    /// The DKIM keys.
    pub fn keys(&self) -> &dkim::DkimKeys {
        &self.keys
    }

    /// Whether every signature it may make is cheap (Ed25519, or none at all): an
    /// rsa-sha256 signature takes hundreds of microseconds of CPU.
    pub fn signs_cheaply(&self) -> bool {
        self.keys
            .iter()
            .all(|k| k.algorithm == crate::config::DkimAlgorithm::Ed25519Sha256)
    }

    /// The content as an upstream with policy `sender` receives it: sender policy
    /// applied, then signed if a key covers the From domain. CPU-bound: unless
    /// [`Transformer::signs_cheaply`], call it off the async reactor.
    pub fn for_upstream(
        &self,
        content: &[u8],
        sender: Option<&str>,
    ) -> Result<Vec<u8>, TransformError> {
        self.for_upstream_cow(content, sender)
            .map(std::borrow::Cow::into_owned)
    }

    /// [`Transformer::for_upstream`] without a copy when nothing changes (no sender
    /// policy, no key for the From domain): the delivery hot path.
    pub fn for_upstream_cow<'a>(
        &self,
        content: &'a [u8],
        sender: Option<&str>,
    ) -> Result<std::borrow::Cow<'a, [u8]>, TransformError> {
        self.for_upstream_as(content, sender, false)
    }

    /// [`Transformer::for_upstream_cow`], and with `seven_bit` 8-bit body parts are first
    /// given a 7-bit transfer encoding (an upstream without 8BITMIME), so the signature
    /// covers the converted content.
    pub fn for_upstream_as<'a>(
        &self,
        content: &'a [u8],
        sender: Option<&str>,
        seven_bit: bool,
    ) -> Result<std::borrow::Cow<'a, [u8]>, TransformError> {
        self.for_upstream_with(content, None, sender, seven_bit)
    }

    /// [`Transformer::for_upstream_as`] for a message whose content is `content`
    /// followed by `body`, a spool file (a large message): the rewrites concern the
    /// header block in `content`, the signature covers the body as it is read from the
    /// file, and the body itself is sent as it is. With `seven_bit`, `body` must be
    /// 7-bit (the caller reads an 8-bit one in to convert it).
    pub fn for_upstream_with<'a>(
        &self,
        content: &'a [u8],
        body: Option<&crate::message::SpooledBody>,
        sender: Option<&str>,
        seven_bit: bool,
    ) -> Result<std::borrow::Cow<'a, [u8]>, TransformError> {
        use std::borrow::Cow;
        let content: Cow<'a, [u8]> = if seven_bit {
            seven_bit::to_seven_bit(content)?
        } else {
            Cow::Borrowed(content)
        };
        let content: Cow<'a, [u8]> = match sender {
            Some(account) => Cow::Owned(apply_sender_policy(&content, account)),
            None => content,
        };
        let Some(domain) = from_mailbox(&content)
            .and_then(|m| m.address.rsplit_once('@').map(|(_, d)| d.to_owned()))
        else {
            return Ok(content);
        };
        let Some(key) = self.keys.for_domain(&domain) else {
            return Ok(content);
        };
        let started = std::time::Instant::now();
        let signing_failed = |reason: String| TransformError::Signing {
            domain: key.domain.clone(),
            reason,
        };
        let header = match body {
            None => key.sign(&content).map_err(signing_failed)?,
            Some(body) => {
                let mut file = std::fs::File::open(&body.path)
                    .map_err(|e| signing_failed(format!("opening {}: {e}", body.path.display())))?;
                key.sign_streamed(&content, &mut file)
                    .map_err(|e| signing_failed(e.to_string()))?
            }
        };
        metrics::histogram!(crate::telemetry::name::DKIM_DURATION)
            .record(started.elapsed().as_secs_f64());
        let mut signed = Vec::with_capacity(header.len() + content.len());
        signed.extend_from_slice(header.as_bytes());
        signed.extend_from_slice(&content);
        Ok(Cow::Owned(signed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_policy_keeps_the_name_and_moves_the_address_to_reply_to() {
        let out = apply_sender_policy(
            b"From: Shop <orders@shop.example>\r\nSubject: s\r\n\r\nb\r\n",
            "relay@qq.com",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: Shop <relay@qq.com>\r\nSubject: s\r\nReply-To: Shop <orders@shop.example>\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn sender_policy_keeps_an_existing_reply_to() {
        let out = apply_sender_policy(
            b"From: a@x.org\r\nReply-To: r@x.org\r\n\r\nb\r\n",
            "acct@y.org",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: <acct@y.org>\r\nReply-To: r@x.org\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn sender_policy_leaves_matching_from_alone() {
        let content = b"From: Me <ACCT@y.org>\r\n\r\nb\r\n";
        assert_eq!(apply_sender_policy(content, "acct@y.org"), content);
    }
}
