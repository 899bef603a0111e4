//! `[policy]` after DATA: the From address against `allowed_senders`, and the staging
//! redirect (`redirect_all_to`). The envelope's own checks run earlier, at MAIL FROM
//! and RCPT (see [`super::phase`]).

use super::submission::Identity;
use crate::config::PolicyConfig;
use crate::message::Envelope;
use crate::proto::{Enhanced, Reply};
use crate::transform::from_mailbox;

/// The refusal of a message whose From address no pattern of `allowed_senders` matches.
/// `head` is the normalised content (its From is strict, with one address).
pub fn judge_from(policy: &PolicyConfig, head: &[u8]) -> Result<(), Reply> {
    if policy.allowed_senders.is_empty() {
        return Ok(());
    }
    let address = from_mailbox(head).map(|m| m.address).unwrap_or_default();
    if policy.sender_allowed(&address) {
        return Ok(());
    }
    Err(Reply::new(
        550,
        Enhanced(5, 7, 1),
        format!(
            "From address <{address}> is not allowed here: it matches none of policy.allowed_senders; nothing was kept"
        ),
    ))
}

/// The refusal of a message from an authenticated user whose From address none of
/// the user's `allowed_senders` matches. `head` is the normalised content.
pub fn judge_user_from(identity: &Identity, head: &[u8]) -> Result<(), Reply> {
    let Identity::User(user, _) = identity else {
        return Ok(());
    };
    let address = from_mailbox(head).map(|m| m.address).unwrap_or_default();
    if user.may_send_as(&address) {
        return Ok(());
    }
    Err(Reply::new(
        550,
        Enhanced(5, 7, 1),
        format!(
            "User {} may not send as From address <{address}>: it matches none of the user's allowed_senders; nothing was kept",
            user.name
        ),
    ))
}

/// With `redirect_all_to`, the message goes to that address only: the recipients the
/// client gave are written into `X-Original-To` fields, inserted into `content` at
/// `at` (the start of the client's header block), one per recipient.
pub fn redirect(policy: &PolicyConfig, envelope: &mut Envelope, content: &mut Vec<u8>, at: usize) {
    let Some(to) = &policy.redirect_all_to else {
        return;
    };
    let fields: String = envelope
        .recipients
        .iter()
        .map(|r| format!("X-Original-To: {r}\r\n"))
        .collect();
    content.splice(at..at, fields.into_bytes());
    envelope.recipients = vec![to.clone()];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddressGlob;
    use crate::proto::{Address, ReversePath};

    fn policy(senders: &[&str], redirect: Option<&str>) -> PolicyConfig {
        PolicyConfig {
            allowed_senders: senders
                .iter()
                .map(|s| AddressGlob::parse(s).unwrap())
                .collect(),
            allowed_recipients: Vec::new(),
            redirect_all_to: redirect.map(|a| Address::parse(a).unwrap()),
        }
    }

    #[test]
    fn the_from_address_must_match_an_allowed_sender() {
        let head = b"From: Shop <orders@shop.test>\r\nSubject: s\r\n\r\n";
        assert!(judge_from(&policy(&[], None), head).is_ok());
        assert!(judge_from(&policy(&["*@shop.test"], None), head).is_ok());
        let refused = judge_from(&policy(&["*@app.test"], None), head).unwrap_err();
        assert_eq!(
            (refused.code, refused.enhanced),
            (550, Some(Enhanced(5, 7, 1)))
        );
        assert!(refused.text.contains("<orders@shop.test>"), "{refused}");
        assert!(refused.text.contains("policy.allowed_senders"), "{refused}");
    }

    #[test]
    fn an_authenticated_users_from_address_must_be_one_of_its_senders() {
        let user = crate::config::User::new(
            "billing",
            "pw",
            vec![AddressGlob::parse("*@billing.test").unwrap()],
            None,
        )
        .unwrap();
        let identity = Identity::User(std::sync::Arc::new(user), None);
        let ok = b"From: B <invoices@billing.test>\r\n\r\n";
        assert!(judge_user_from(&identity, ok).is_ok());
        let head = b"From: CEO <ceo@corp.test>\r\n\r\n";
        let refused = judge_user_from(&identity, head).unwrap_err();
        assert_eq!(
            (refused.code, refused.enhanced),
            (550, Some(Enhanced(5, 7, 1)))
        );
        assert!(refused.text.contains("User billing"), "{refused}");
        assert!(refused.text.contains("<ceo@corp.test>"), "{refused}");
        assert!(judge_user_from(&Identity::TrustedNetwork, head).is_ok());
    }

    #[test]
    fn a_redirect_keeps_the_recipients_in_x_original_to() {
        let mut envelope = Envelope {
            sender: ReversePath::Null,
            recipients: vec![
                Address::parse("a@customer.test").unwrap(),
                Address::parse("b@customer.test").unwrap(),
            ],
            smtputf8: false,
            eight_bit: false,
            route: None,
        };
        let mut content = b"Received: ours\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
        let at = b"Received: ours\r\n".len();
        redirect(
            &policy(&[], Some("staging@example.com")),
            &mut envelope,
            &mut content,
            at,
        );
        assert_eq!(
            envelope.recipients,
            [Address::parse("staging@example.com").unwrap()]
        );
        assert_eq!(
            String::from_utf8(content).unwrap(),
            "Received: ours\r\nX-Original-To: a@customer.test\r\nX-Original-To: b@customer.test\r\nSubject: s\r\n\r\nbody\r\n"
        );
    }
}
