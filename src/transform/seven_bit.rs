//! 8-bit MIME content made 7-bit for an upstream without 8BITMIME (RFC 6152 §3, RFC
//! 2045 §6): every body part with 8-bit octets gets a transfer encoding, quoted-printable
//! for text (still readable) and base64 for everything else. Multiparts are walked part
//! by part; an encapsulated message (`message/rfc822`) is converted inside, since RFC
//! 2046 §5.2.1 does not allow encoding it as a whole.
//!
//! What cannot be converted is a raw 8-bit header field: its meaning depends on the
//! reader (SMTPUTF8, or a charset nobody declared). Such a message needs an upstream
//! with 8BITMIME (or SMTPUTF8), else it bounces with `5.6.3`.
//!
//! Runs before DKIM signing, so the signature covers what is sent.

use super::headers::Parsed;

/// Content that cannot be made 7-bit; the text says where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot convert the message to 7 bits for an upstream without 8BITMIME: {0}")]
pub struct NotConvertible(pub String);

/// `content` as 7-bit data: borrowed back if it already is, converted otherwise.
pub fn to_seven_bit(content: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, NotConvertible> {
    if content.is_ascii() {
        return Ok(std::borrow::Cow::Borrowed(content));
    }
    let mut out = Vec::with_capacity(content.len() + content.len() / 3 + 256);
    convert_entity(content, true, &mut out)?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Convert one entity (a message or a body part: header fields, empty line, body).
fn convert_entity(entity: &[u8], top: bool, out: &mut Vec<u8>) -> Result<(), NotConvertible> {
    if entity.is_ascii() {
        out.extend_from_slice(entity);
        return Ok(());
    }
    let mut msg = Parsed::parse(entity);
    if let Some(field) = msg
        .fields
        .iter()
        .find(|f| !f.name.is_ascii() || !f.raw_value.is_ascii())
    {
        return Err(NotConvertible(format!(
            "the header field {} has raw 8-bit characters",
            field.name
        )));
    }
    let content_type = msg
        .get("Content-Type")
        .map(|f| String::from_utf8_lossy(&f.unfolded()).into_owned());
    let (kind, boundary) = match &content_type {
        Some(value) => media_type(value),
        None => ("text/plain".to_owned(), None),
    };
    let encoding = msg
        .get("Content-Transfer-Encoding")
        .map(|f| {
            String::from_utf8_lossy(&f.unfolded())
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "7bit".to_owned());
    // The body proper, after the empty line that ends the header section.
    let separator = if msg.body.starts_with(b"\r\n") {
        2
    } else if msg.body.starts_with(b"\n") {
        1
    } else {
        0
    };
    let body = msg.body.split_off(separator);

    if kind.starts_with("multipart/") {
        let Some(boundary) = boundary else {
            return Err(NotConvertible(format!(
                "a {kind} part has no boundary parameter"
            )));
        };
        let converted = convert_multipart(&body, &boundary)?;
        set_identity_encoding(&mut msg, &encoding);
        msg.body.extend_from_slice(&converted);
    } else if kind == "message/rfc822" || kind == "message/global" {
        let mut inner = Vec::with_capacity(body.len());
        convert_entity(&body, false, &mut inner)?;
        set_identity_encoding(&mut msg, &encoding);
        msg.body.extend_from_slice(&inner);
    } else {
        if !matches!(encoding.as_str(), "7bit" | "8bit" | "binary") {
            return Err(NotConvertible(format!(
                "a part declared as {encoding} has raw 8-bit octets"
            )));
        }
        let (name, encoded) = if kind.starts_with("text/") {
            ("quoted-printable", quoted_printable::encode(&body))
        } else {
            ("base64", base64_lines(&body))
        };
        msg.fields.retain(|f| !f.is("Content-Transfer-Encoding"));
        if top && !msg.has("MIME-Version") {
            msg.push("MIME-Version", "1.0");
        }
        if content_type.is_none() {
            // Plain text with 8-bit octets and no declared charset: say what it is.
            let charset = if std::str::from_utf8(&body).is_ok() {
                "utf-8"
            } else {
                "unknown-8bit"
            };
            msg.push("Content-Type", &format!("text/plain; charset={charset}"));
        }
        msg.push("Content-Transfer-Encoding", name);
        msg.body.extend_from_slice(&encoded);
    }
    out.extend_from_slice(&msg.to_bytes());
    Ok(())
}

/// An 8bit/binary multipart or message whose insides are now 7-bit is itself 7bit.
fn set_identity_encoding(msg: &mut Parsed, encoding: &str) {
    if encoding != "7bit"
        && let Some(index) = msg
            .fields
            .iter()
            .position(|f| f.is("Content-Transfer-Encoding"))
    {
        msg.set(index, "7bit");
    }
}

/// `type/subtype` in lower case, and the `boundary` parameter.
fn media_type(value: &str) -> (String, Option<String>) {
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let boundary = parts.find_map(|p| {
        let (name, val) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| val.trim().trim_matches('"').to_owned())
    });
    (kind, boundary)
}

/// Convert every part of a multipart body delimited by `boundary` (RFC 2046 §5.1.1);
/// the delimiter lines stay as they are. Text before the first delimiter and after the
/// last (preamble, epilogue) is not shown by any reader: its 8-bit octets become `?`.
fn convert_multipart(body: &[u8], boundary: &str) -> Result<Vec<u8>, NotConvertible> {
    let delimiter = format!("--{boundary}");
    let mut out = Vec::with_capacity(body.len() + body.len() / 3);
    // Delimiter lines: (start of the line, end of the line incl. CRLF, is the close).
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i + 1);
        let line = &body[pos..end];
        if let Some(rest) = line.strip_prefix(delimiter.as_bytes()) {
            let (close, rest) = match rest.strip_prefix(b"--") {
                Some(rest) => (true, rest),
                None => (false, rest),
            };
            if rest
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                lines.push((pos, end, close));
                if close {
                    break;
                }
            }
        }
        pos = end;
    }
    let Some(&(first, _, _)) = lines.first() else {
        return Err(NotConvertible(format!(
            "a multipart body has no delimiter --{boundary}"
        )));
    };
    out.extend(
        body[..first]
            .iter()
            .map(|&b| if b.is_ascii() { b } else { b'?' }),
    );
    for (i, &(start, end, close)) in lines.iter().enumerate() {
        out.extend_from_slice(&body[start..end]);
        if close {
            break;
        }
        // The part runs to the CRLF before the next delimiter (which belongs to it).
        let next = lines.get(i + 1).map_or(body.len(), |&(s, _, _)| s);
        let part = &body[end..next];
        let (part, crlf) = match part.strip_suffix(b"\r\n") {
            Some(p) => (p, &b"\r\n"[..]),
            None => (part, &b""[..]),
        };
        convert_entity(part, false, &mut out)?;
        out.extend_from_slice(crlf);
    }
    if let Some(&(_, end, true)) = lines.last() {
        out.extend(
            body[end..]
                .iter()
                .map(|&b| if b.is_ascii() { b } else { b'?' }),
        );
    }
    Ok(out)
}

/// Base64 in lines of 76 characters (RFC 2045 §6.8), each ended by CRLF.
fn base64_lines(data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(input: &str) -> String {
        String::from_utf8(to_seven_bit(input.as_bytes()).unwrap().into_owned()).unwrap()
    }

    #[test]
    fn seven_bit_content_is_left_alone() {
        let content = b"From: <a@x>\r\nSubject: hi\r\n\r\nhello\r\n";
        assert!(matches!(
            to_seven_bit(content).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn plain_8bit_text_becomes_quoted_printable_with_a_charset() {
        assert_eq!(
            convert("From: <a@x>\r\nSubject: hi\r\n\r\nGrüße\r\n"),
            "From: <a@x>\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"
        );
    }

    #[test]
    fn a_declared_8bit_text_part_keeps_its_type_and_changes_its_encoding() {
        assert_eq!(
            convert(
                "From: <a@x>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\u{e9}\r\n"
            ),
            "From: <a@x>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
        );
    }

    #[test]
    fn multipart_parts_are_converted_one_by_one() {
        let input = "From: <a@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nä\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\u{ff}\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii\r\n--b1--\r\nepilogue\r\n";
        let out = convert(input);
        assert_eq!(
            out,
            "From: <a@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A4\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nw78=\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii\r\n--b1--\r\nepilogue\r\n"
        );
        assert!(out.is_ascii());
    }

    #[test]
    fn an_8bit_header_cannot_be_converted() {
        let e = to_seven_bit("From: <a@x>\r\nSubject: Grüße\r\n\r\nx\r\n".as_bytes()).unwrap_err();
        assert!(e.to_string().contains("Subject has raw 8-bit"), "{e}");
        let nested = "From: <a@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: ü\r\n\r\nx\r\n--b--\r\n";
        assert!(to_seven_bit(nested.as_bytes()).is_err());
    }

    #[test]
    fn quoted_printable_decodes_to_the_original() {
        let text = "Zeile mit Umlauten äöü und einem sehr langen Satz, der weit über sechsundsiebzig Zeichen hinausgeht, damit weich umbrochen wird.\r\nzweite Zeile  \r\n";
        let out = convert(&format!("From: <a@x>\r\n\r\n{text}"));
        let body = out.split_once("\r\n\r\n").unwrap().1;
        assert!(body.lines().all(|l| l.len() <= 76), "{body}");
        let decoded = quoted_printable::decode(body, quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), text);
    }
}
