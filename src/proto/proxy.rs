//! The PROXY protocol header (v1 text and v2 binary), as sent by HAProxy, load
//! balancers and some container proxies ahead of the SMTP conversation, so that the
//! relay judges the real client address instead of the proxy's.
//! Specification: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included.
const V1_MAX: usize = 107;

/// What the header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxiedAddress {
    /// The original client.
    Client(SocketAddr),
    /// A health check or local connection of the proxy itself (`UNKNOWN` / `LOCAL`):
    /// use the connection's own address.
    Local,
}

/// A header that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Not a PROXY header at all.
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    /// A PROXY header that does not parse.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Parse a header at the start of `buf`. `Ok(None)`: more bytes needed. On success,
/// returns the address and the header's length (the SMTP bytes follow it).
pub fn parse(buf: &[u8]) -> Result<Option<(ProxiedAddress, usize)>, ProxyError> {
    if buf.len() >= 12 && buf[..12] == V2_SIGNATURE {
        return parse_v2(buf);
    }
    if V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) && buf.len() < 12 {
        return Ok(None);
    }
    if !b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return Err(ProxyError::Missing);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyError::Malformed("v1 line is not text"))?;
    let words: Vec<&str> = line.split(' ').collect();
    let address = match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxiedAddress::Local,
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            src,
            _dst,
            sport,
            _dport,
        ] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source port"))?;
            ProxiedAddress::Client(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError::Malformed("v1 fields")),
    };
    Ok(Some((address, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxiedAddress, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let total = 16 + len;
    match version_command & 0x0f {
        0 => return Ok(Some((ProxiedAddress::Local, total))),
        1 => {}
        _ => return Err(ProxyError::Malformed("v2 command")),
    }
    let address = match buf[13] >> 4 {
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            ProxiedAddress::Client(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            ProxiedAddress::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        0 => ProxiedAddress::Local,
        1 | 2 => return Err(ProxyError::Malformed("v2 address block too short")),
        _ => ProxiedAddress::Local,
    };
    Ok(Some((address, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.2 51234 25\r\nEHLO x\r\n";
        let (addr, used) = parse(line).unwrap().unwrap();
        assert_eq!(
            addr,
            ProxiedAddress::Client("203.0.113.7:51234".parse().unwrap())
        );
        assert_eq!(&line[used..], b"EHLO x\r\n");
        let (addr, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 4000 25\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            addr,
            ProxiedAddress::Client("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            ProxiedAddress::Local
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        assert_eq!(parse(b"EHLO client\r\n"), Err(ProxyError::Missing));
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n").is_err());
    }

    #[test]
    fn parses_v2() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 2, 0xc3, 0x50, 0, 25,
        ]);
        header.extend_from_slice(b"EHLO");
        let (addr, used) = parse(&header).unwrap().unwrap();
        assert_eq!(
            addr,
            ProxiedAddress::Client("198.51.100.9:50000".parse().unwrap())
        );
        assert_eq!(&header[used..], b"EHLO");
        assert_eq!(parse(&header[..20]).unwrap(), None);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap(), (ProxiedAddress::Local, 16));
    }
}
