//! Provider presets: `provider = "gmail"` instead of a URL.
//!
//! A preset fills in the host, port and TLS mode the provider documents, plus the
//! defaults its accounts need (SendGrid's `apikey` user; From = the account for the
//! mailbox providers). An unknown preset is an error that lists every valid one, never
//! a silent default upstream.

use std::fmt;

use serde::Deserialize;

use super::UpstreamUrl;

/// A known provider.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Provider {
    /// Gmail / Google Workspace: `smtp.gmail.com:465`, implicit TLS.
    Gmail,
    /// Outlook.com: `smtp-mail.outlook.com:587`, STARTTLS.
    Outlook,
    /// Microsoft 365: `smtp.office365.com:587`, STARTTLS.
    Office365,
    /// QQ Mail: `smtp.qq.com:465`, implicit TLS.
    Qq,
    /// Tencent Exmail: `smtp.exmail.qq.com:465`, implicit TLS.
    Exmail,
    /// NetEase 163: `smtp.163.com:465`, implicit TLS.
    Netease163,
    /// Amazon SES in a region: `email-smtp.REGION.amazonaws.com:587`, STARTTLS.
    Ses(String),
    /// SendGrid: `smtp.sendgrid.net:587`, STARTTLS, user `apikey`.
    SendGrid,
    /// Mailgun: `smtp.mailgun.org:587`, STARTTLS.
    Mailgun,
}

/// Every valid preset, for error messages and docs.
pub const PRESETS: &str = "\"gmail\", \"outlook\", \"office365\", \"qq\", \"exmail\", \"163\", \
                           \"ses:REGION\" (e.g. \"ses:us-east-1\"), \"sendgrid\", \"mailgun\"";

impl Provider {
    /// The upstream URL the preset stands for.
    pub fn url(&self) -> UpstreamUrl {
        let text = match self {
            Provider::Gmail => "smtps://smtp.gmail.com:465".to_owned(),
            Provider::Outlook => "smtp://smtp-mail.outlook.com:587".to_owned(),
            Provider::Office365 => "smtp://smtp.office365.com:587".to_owned(),
            Provider::Qq => "smtps://smtp.qq.com:465".to_owned(),
            Provider::Exmail => "smtps://smtp.exmail.qq.com:465".to_owned(),
            Provider::Netease163 => "smtps://smtp.163.com:465".to_owned(),
            Provider::Ses(region) => format!("smtp://email-smtp.{region}.amazonaws.com:587"),
            Provider::SendGrid => "smtp://smtp.sendgrid.net:587".to_owned(),
            Provider::Mailgun => "smtp://smtp.mailgun.org:587".to_owned(),
        };
        text.parse()
            .expect("preset URLs are valid (the SES region is checked)")
    }

    /// The username when none is configured.
    pub fn default_username(&self) -> Option<&'static str> {
        match self {
            Provider::SendGrid => Some("apikey"),
            _ => None,
        }
    }

    /// The provider's documented cap on recipients per message over SMTP, where it
    /// documents one; `None`: the relay's default applies.
    ///
    /// - Gmail / Google Workspace: 100 "recipients per message sent via SMTP by POP or
    ///   IMAP users" (Google Workspace Admin Help, "Gmail sending limits in Google
    ///   Workspace", support.google.com/a/answer/166852).
    /// - Microsoft 365: 500 recipients per message, the default "recipient limit" of
    ///   Exchange Online (Microsoft Learn, "Exchange Online limits", receiving and
    ///   sending limits; admins can raise it to 1,000).
    /// - Amazon SES: 50 recipients per message, To, CC and BCC together, not adjustable
    ///   (Amazon SES Developer Guide, "Service quotas in Amazon SES").
    /// - Outlook.com documents 500 only for Microsoft 365 subscribers and "lower for
    ///   non-subscribers" without a number: the default (100) stays. QQ, Exmail, 163,
    ///   SendGrid and Mailgun document no per-message SMTP cap we could confirm: the
    ///   default stays.
    pub fn max_recipients(&self) -> Option<usize> {
        match self {
            Provider::Gmail => Some(100),
            Provider::Office365 => Some(500),
            Provider::Ses(_) => Some(50),
            _ => None,
        }
    }

    /// The provider's documented cap on messages per SMTP connection, where it documents
    /// one; `None`: the relay's default (100) applies.
    ///
    /// - SendGrid: "You may send up to 5k messages per SMTP connection" (Twilio SendGrid
    ///   docs, "Integrating with the SMTP API", rate limits).
    /// - Amazon SES asks clients to reconnect "after you have delivered a fixed number of
    ///   messages" without giving the number (AWS Messaging blog, "Amazon SES SMTP
    ///   Recommendations"); Microsoft 365 documents 3 concurrent connections and 30
    ///   messages a minute, not a count per connection ("Exchange Online limits"). Gmail,
    ///   Outlook.com, QQ, Exmail, 163 and Mailgun document none we could confirm. The
    ///   default stays for all of them; a connection the provider ends early costs only
    ///   a reconnection (no failure, no back-off).
    pub fn max_messages_per_connection(&self) -> Option<usize> {
        match self {
            Provider::SendGrid => Some(5000),
            _ => None,
        }
    }

    /// Whether the provider refuses mail whose From is not the authenticated account,
    /// so `sender` defaults to the username.
    pub fn from_must_be_account(&self) -> bool {
        matches!(
            self,
            Provider::Gmail
                | Provider::Outlook
                | Provider::Office365
                | Provider::Qq
                | Provider::Exmail
                | Provider::Netease163
        )
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Gmail => f.write_str("gmail"),
            Provider::Outlook => f.write_str("outlook"),
            Provider::Office365 => f.write_str("office365"),
            Provider::Qq => f.write_str("qq"),
            Provider::Exmail => f.write_str("exmail"),
            Provider::Netease163 => f.write_str("163"),
            Provider::Ses(region) => write!(f, "ses:{region}"),
            Provider::SendGrid => f.write_str("sendgrid"),
            Provider::Mailgun => f.write_str("mailgun"),
        }
    }
}

impl TryFrom<String> for Provider {
    type Error = String;

    fn try_from(text: String) -> Result<Provider, String> {
        let word = text.trim().to_ascii_lowercase();
        Ok(match word.as_str() {
            "gmail" => Provider::Gmail,
            "outlook" => Provider::Outlook,
            "office365" => Provider::Office365,
            "qq" => Provider::Qq,
            "exmail" => Provider::Exmail,
            "163" => Provider::Netease163,
            "sendgrid" => Provider::SendGrid,
            "mailgun" => Provider::Mailgun,
            _ => match word.strip_prefix("ses:") {
                Some(region) if is_aws_region(region) => Provider::Ses(region.to_owned()),
                Some(region) => {
                    return Err(format!(
                        "invalid SES region {region:?} in {text:?}: write the region as AWS names it, e.g. \"ses:us-east-1\" or \"ses:eu-west-2\""
                    ));
                }
                None => {
                    return Err(format!(
                        "unknown provider preset {text:?}; valid presets are {PRESETS} (or give url instead)"
                    ));
                }
            },
        })
    }
}

/// `us-east-1`, `ap-southeast-2`, `us-gov-west-1`: letters-...-digits.
fn is_aws_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((last, rest)) = parts.split_last() else {
        return false;
    };
    parts.len() >= 3
        && rest[0].len() == 2
        && rest
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        for ok in ["us-east-1", "eu-west-2", "ap-southeast-2", "us-gov-west-1"] {
            assert!(is_aws_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us-east",
            "useast1",
            "us-east-1a",
            "us_east_1",
            "usa-east-1",
            "us--1",
            "us-east-1.evil.com",
        ] {
            assert!(!is_aws_region(bad), "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "gmail",
            "outlook",
            "office365",
            "qq",
            "exmail",
            "163",
            "ses:us-east-1",
            "sendgrid",
            "mailgun",
        ] {
            let p = Provider::try_from(name.to_owned()).unwrap();
            assert_eq!(p.to_string(), name);
            let _ = p.url();
        }
    }
}
