//! Trace information: the `Received` header (RFC 5321 §4.4) and RFC 5322 dates.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::{ClientInfo, Envelope, QueueId};

/// A message with more `Received` headers than this is looping (RFC 5321 §6.3).
pub const MAX_RECEIVED_HEADERS: usize = 50;

/// Count the `Received:` fields in the header section of `content`.
pub fn count_received(content: &[u8]) -> usize {
    if content.starts_with(b"\r\n") {
        return 0; // no header section at all
    }
    let header_end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2);
    content[..header_end]
        .split(|b| *b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Whether our `Received` header names the client (`[transform] hide_client`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientTrace {
    /// `from HELO ([IP])`: the client's EHLO name and address.
    #[default]
    Shown,
    /// `from unknown`: neither, for clients whose names and addresses are internal.
    Hidden,
}

/// The `Received` header for this hop, folded, ending in CRLF.
///
/// The `with` keyword follows RFC 3848 and RFC 6531 §3.7.3: SMTP, ESMTP, ESMTPS, ESMTPA,
/// ESMTPSA, and the UTF8 variants when the client used SMTPUTF8. An authenticated
/// client's user name follows in a comment unless the client is hidden.
pub fn received_header(
    client: &ClientInfo,
    trace: ClientTrace,
    envelope: &Envelope,
    id: QueueId,
    by: &str,
    now: SystemTime,
) -> String {
    let authenticated = client.user.is_some();
    let protocol = match (
        envelope.smtputf8,
        client.esmtp,
        client.tls.is_some(),
        authenticated,
    ) {
        (true, _, true, true) => "UTF8SMTPSA",
        (true, _, false, true) => "UTF8SMTPA",
        (true, _, true, false) => "UTF8SMTPS",
        (true, _, false, false) => "UTF8SMTP",
        (false, true, true, true) => "ESMTPSA",
        (false, true, false, true) => "ESMTPA",
        (false, true, true, false) => "ESMTPS",
        (false, true, false, false) => "ESMTP",
        (false, false, _, _) => "SMTP",
    };
    let from = match trace {
        ClientTrace::Shown => from_client(client),
        // RFC 5321 §4.4 requires the From-domain; the TCP-info in parentheses is
        // optional. `unknown` is a syntactically valid domain that names nobody.
        ClientTrace::Hidden => "unknown".to_owned(),
    };
    let mut header = format!("Received: from {from}\r\n\tby {by} (smarthost) with {protocol}");
    if let Some(tls) = &client.tls {
        header.push_str(&format!("\r\n\t({tls})"));
    }
    if let (Some(user), ClientTrace::Shown) = (&client.user, trace) {
        // User names are [A-Za-z0-9._@-]+ (the users file checks): safe in a comment.
        header.push_str(&format!("\r\n\t(authenticated as {user})"));
    }
    header.push_str(&format!("\r\n\tid {id}"));
    if let [only] = envelope.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{only}>"));
    }
    header.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(now)));
    header
}

/// `HELO ([IP])`: the name the client gave (without characters that would end the
/// clause) and its address as an RFC 5321 address literal.
fn from_client(client: &ClientInfo) -> String {
    let helo: String = client
        .helo
        .chars()
        .filter(|c| !c.is_control() && !"()".contains(*c))
        .collect();
    match client.ip {
        std::net::IpAddr::V4(v4) => format!("{helo} ([{v4}])"),
        std::net::IpAddr::V6(v6) => format!("{helo} ([IPv6:{v6}])"),
    }
}

/// `Sun, 22 Nov 2026 01:26:52 +0000` (RFC 5322 §3.3), always in UTC.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days` algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Address, ReversePath};
    use std::time::Duration;

    #[test]
    fn formats_dates() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc5322_date(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_795_311_212)),
            "Sun, 22 Nov 2026 01:33:32 +0000"
        );
    }

    #[test]
    fn counts_received_headers_only_in_the_header_section() {
        let msg = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received(msg), 2);
        assert_eq!(count_received(b"Received: only headers\r\n"), 1);
        assert_eq!(
            count_received(b"\r\nReceived: body after an empty header section\r\n"),
            0
        );
    }

    #[test]
    fn received_header_names_the_hop() {
        let client = ClientInfo {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "app.local".into(),
            esmtp: true,
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            user: None,
        };
        let env = Envelope {
            sender: ReversePath::Null,
            recipients: vec![Address::parse("to@example.com").unwrap()],
            smtputf8: false,
            eight_bit: false,
            route: None,
        };
        let id = QueueId::parse("0000000000000001").unwrap();
        let h = received_header(
            &client,
            ClientTrace::Shown,
            &env,
            id,
            "relay.example",
            UNIX_EPOCH,
        );
        assert_eq!(
            h,
            "Received: from app.local ([192.0.2.1])\r\n\tby relay.example (smarthost) with ESMTPS\r\n\t(TLSv1.3 TLS13_AES_256_GCM_SHA384)\r\n\tid 0000000000000001\r\n\tfor <to@example.com>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        // Hidden: the same header with `from unknown` and nothing else of the client.
        let hidden = received_header(
            &client,
            ClientTrace::Hidden,
            &env,
            id,
            "relay.example",
            UNIX_EPOCH,
        );
        assert_eq!(
            hidden,
            h.replace("from app.local ([192.0.2.1])", "from unknown")
        );
        assert!(!hidden.contains("192.0.2.1") && !hidden.contains("app.local"));
        let v6 = ClientInfo {
            ip: "2001:db8::7".parse().unwrap(),
            ..client
        };
        let shown = received_header(&v6, ClientTrace::Shown, &env, id, "r", UNIX_EPOCH);
        assert!(shown.starts_with("Received: from app.local ([IPv6:2001:db8::7])\r\n"));
        let hidden = received_header(&v6, ClientTrace::Hidden, &env, id, "r", UNIX_EPOCH);
        assert!(hidden.starts_with("Received: from unknown\r\n\tby r (smarthost)"));
        assert!(!hidden.contains("2001:db8"));
    }

    #[test]
    fn an_authenticated_client_is_received_with_esmtpsa_and_its_user() {
        let client = ClientInfo {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "app.local".into(),
            esmtp: true,
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            user: Some("billing".into()),
        };
        let mut env = Envelope {
            sender: ReversePath::Null,
            recipients: vec![Address::parse("to@example.com").unwrap()],
            smtputf8: false,
            eight_bit: false,
            route: None,
        };
        let id = QueueId::parse("0000000000000001").unwrap();
        let h = received_header(&client, ClientTrace::Shown, &env, id, "r", UNIX_EPOCH);
        assert!(
            h.contains("with ESMTPSA\r\n\t(TLSv1.3 TLS13_AES_256_GCM_SHA384)\r\n\t(authenticated as billing)\r\n\tid "),
            "{h}"
        );
        let hidden = received_header(&client, ClientTrace::Hidden, &env, id, "r", UNIX_EPOCH);
        assert!(
            hidden.contains("with ESMTPSA") && !hidden.contains("billing"),
            "{hidden}"
        );
        env.smtputf8 = true;
        let utf8 = received_header(&client, ClientTrace::Shown, &env, id, "r", UNIX_EPOCH);
        assert!(utf8.contains("with UTF8SMTPSA"), "{utf8}");
    }
}
