//! The on-disk record format of the spool journal. Sans-I/O: bytes in, records out.
//!
//! ```text
//! record  = magic "SHR1" | kind u8 | payload length u32 LE | crc32 u32 LE | payload
//! ```
//!
//! The CRC covers the kind and the payload, so a torn write (a crash in the middle of
//! an append) or a flipped bit is detected and the record is never used half.
//!
//! A message's flags: bit 0 SMTPUTF8, bit 1 BODY=8BITMIME, bit 2 a route name follows
//! the recipients.
//!
//! Kinds: 1 a message, 2 a new delivery state, 3 a removal, 4 a message whose content
//! continues in a body file (a large message; the record names the file, its length
//! and whether it has 8-bit octets, then holds the content's first part).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::message::{Envelope, QueueId};
use crate::proto::{Address, ReversePath};

/// Marks the start of every record.
pub const MAGIC: [u8; 4] = *b"SHR1";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 13;
/// Largest payload accepted when reading (a corrupt length must not make us allocate GiBs).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Where a recipient stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptState {
    /// Still to be delivered.
    Pending,
    /// An upstream accepted it.
    Delivered,
    /// Failed for good (a bounce was or will be sent).
    Failed,
}

impl RcptState {
    fn to_byte(self) -> u8 {
        match self {
            RcptState::Pending => 0,
            RcptState::Delivered => 1,
            RcptState::Failed => 2,
        }
    }

    fn from_byte(b: u8) -> Option<RcptState> {
        Some(match b {
            0 => RcptState::Pending,
            1 => RcptState::Delivered,
            2 => RcptState::Failed,
            _ => return None,
        })
    }
}

/// The delivery state of a message, kept durably.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryState {
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (whole seconds since the epoch).
    pub next_attempt: u64,
    /// The last failure, for `queue show` and the bounce.
    pub last_error: String,
    /// Per recipient, in envelope order.
    pub rcpts: Vec<RcptState>,
}

impl DeliveryState {
    /// A fresh message: every recipient pending, due now.
    pub fn new(recipients: usize) -> DeliveryState {
        DeliveryState {
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
            rcpts: vec![RcptState::Pending; recipients],
        }
    }

    /// No recipient is pending any more.
    pub fn is_complete(&self) -> bool {
        self.rcpts.iter().all(|r| *r != RcptState::Pending)
    }
}

/// The rest of a large message's content: a file in the spool's `body/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyFile<'a> {
    /// The file's name.
    pub name: &'a str,
    /// Its length.
    pub len: u64,
    /// Whether it has 8-bit octets.
    pub eight_bit: bool,
}

/// One journal record. A decoded message borrows its content from the bytes it was
/// read from: recovery only needs where the content is, never a copy of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A message: envelope, state and content.
    Message {
        /// Its id.
        id: QueueId,
        /// When it was accepted.
        received_at: SystemTime,
        /// Its envelope.
        envelope: Envelope,
        /// Its state when written.
        state: DeliveryState,
        /// The content (its first part if `body` is set).
        content: &'a [u8],
        /// Where the rest of the content is, for a large message.
        body: Option<BodyFile<'a>>,
    },
    /// A new state for a message written earlier.
    Update {
        /// The message.
        id: QueueId,
        /// Its new state.
        state: DeliveryState,
    },
    /// The message is finished (delivered, bounced or deleted).
    Remove {
        /// The message.
        id: QueueId,
    },
}

/// Why bytes are not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not enough bytes yet (at the end of a file: a torn write).
    #[error("incomplete record")]
    Incomplete,
    /// The bytes do not start with the magic.
    #[error("no record marker")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload does not parse.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Append the encoding of `record` to `out`; returns the offset of the content within
/// `out` (for Message records), so it can be read back without decoding the rest.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> Option<usize> {
    match record {
        Record::Message {
            id,
            received_at,
            envelope,
            state,
            content,
            body,
        } => Some(encode_message(
            *id,
            *received_at,
            envelope,
            state,
            (content, body.as_ref()),
            out,
        )),
        Record::Update { id, state } => {
            let start = begin(out);
            put_u64(out, id.as_u64());
            put_state(out, state);
            finish(out, start, 2);
            None
        }
        Record::Remove { id } => {
            let start = begin(out);
            put_u64(out, id.as_u64());
            finish(out, start, 3);
            None
        }
    }
}

/// Append a message record built from borrowed parts (the spool writes accepted
/// messages this way, without copying the content into a [`Record`] first). Returns
/// the offset of the content from the start of the record.
pub fn encode_message(
    id: QueueId,
    received_at: SystemTime,
    envelope: &Envelope,
    state: &DeliveryState,
    (content, body): (&[u8], Option<&BodyFile<'_>>),
    out: &mut Vec<u8>,
) -> usize {
    let start = begin(out);
    put_u64(out, id.as_u64());
    put_u64(out, secs(received_at));
    out.push(
        u8::from(envelope.smtputf8)
            | (u8::from(envelope.eight_bit) << 1)
            | (u8::from(envelope.route.is_some()) << 2),
    );
    let sender = match &envelope.sender {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(a) => a.to_string(),
    };
    put_str(out, &sender);
    put_u32(out, envelope.recipients.len() as u32);
    for r in &envelope.recipients {
        put_str(out, &r.to_string());
    }
    if let Some(route) = &envelope.route {
        put_str(out, route);
    }
    put_state(out, state);
    if let Some(body) = body {
        put_str(out, body.name);
        put_u64(out, body.len);
        out.push(u8::from(body.eight_bit));
    }
    put_u32(out, content.len() as u32);
    let content_at = out.len() - start;
    out.extend_from_slice(content);
    finish(out, start, if body.is_some() { 4 } else { 1 });
    content_at
}

/// Reserve the record header; returns where the record starts.
fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(0);
    out.extend_from_slice(&[0; 8]);
    start
}

/// Fill in kind, payload length and checksum of the record that starts at `start`.
fn finish(out: &mut [u8], start: usize, kind: u8) {
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 4] = kind;
    out[start + 5..start + 9].copy_from_slice(&payload_len.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&out[start + HEADER_LEN..]);
    out[start + 9..start + 13].copy_from_slice(&hasher.finalize().to_le_bytes());
}

/// Decode the record at the start of `buf`; returns it and its length in bytes.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            DecodeError::Incomplete
        } else {
            DecodeError::BadMagic
        });
    }
    if buf[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let kind = buf[4];
    let len = u32::from_le_bytes(buf[5..9].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(DecodeError::Malformed("implausible length"));
    }
    let crc = u32::from_le_bytes(buf[9..13].try_into().expect("4 bytes"));
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(DecodeError::Incomplete);
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let record = match kind {
        1 | 4 => {
            let id = QueueId::from_u64(r.u64()?);
            let received_at = UNIX_EPOCH + Duration::from_secs(r.u64()?);
            let flags = r.u8()?;
            let sender = r.str()?;
            let sender = if sender.is_empty() {
                ReversePath::Null
            } else {
                ReversePath::Mailbox(
                    Address::parse(&sender).map_err(|_| DecodeError::Malformed("sender"))?,
                )
            };
            let count = r.u32()? as usize;
            let mut recipients = Vec::with_capacity(count.min(10_000));
            for _ in 0..count {
                recipients.push(
                    Address::parse(&r.str()?).map_err(|_| DecodeError::Malformed("recipient"))?,
                );
            }
            let route = if flags & 4 != 0 { Some(r.str()?) } else { None };
            let state = r.state()?;
            let body = if kind == 4 {
                Some(BodyFile {
                    name: r.text()?,
                    len: r.u64()?,
                    eight_bit: r.u8()? != 0,
                })
            } else {
                None
            };
            let content_len = r.u32()? as usize;
            let content = r.take(content_len)?;
            let envelope = Envelope {
                sender,
                recipients,
                smtputf8: flags & 1 != 0,
                eight_bit: flags & 2 != 0,
                route,
            };
            Record::Message {
                id,
                received_at,
                envelope,
                state,
                content,
                body,
            }
        }
        2 => Record::Update {
            id: QueueId::from_u64(r.u64()?),
            state: r.state()?,
        },
        3 => Record::Remove {
            id: QueueId::from_u64(r.u64()?),
        },
        _ => return Err(DecodeError::Malformed("unknown kind")),
    };
    Ok((record, HEADER_LEN + len))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_state(out: &mut Vec<u8>, state: &DeliveryState) {
    put_u32(out, state.attempts);
    put_u64(out, state.next_attempt);
    put_str(out, &state.last_error);
    put_u32(out, state.rcpts.len() as u32);
    out.extend(state.rcpts.iter().map(|r| r.to_byte()));
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(DecodeError::Malformed("truncated payload"))?;
        self.pos += n;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        self.text().map(str::to_owned)
    }
    fn text(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::Malformed("text is not UTF-8"))
    }
    fn state(&mut self) -> Result<DeliveryState, DecodeError> {
        let attempts = self.u32()?;
        let next_attempt = self.u64()?;
        let last_error = self.str()?;
        let count = self.u32()? as usize;
        let rcpts = self
            .take(count)?
            .iter()
            .map(|b| RcptState::from_byte(*b).ok_or(DecodeError::Malformed("recipient state")))
            .collect::<Result<_, _>>()?;
        Ok(DeliveryState {
            attempts,
            next_attempt,
            last_error,
            rcpts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Record<'static> {
        Record::Message {
            id: QueueId::from_u64(42),
            received_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            envelope: Envelope {
                sender: ReversePath::Mailbox(Address::parse("a@example.com").unwrap()),
                recipients: vec![
                    Address::parse("b@example.net").unwrap(),
                    Address::parse("c@example.net").unwrap(),
                ],
                smtputf8: true,
                eight_bit: false,
                route: None,
            },
            state: DeliveryState::new(2),
            content: b"Subject: x\r\n\r\nbody\r\n",
            body: None,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut state = DeliveryState::new(2);
        state.attempts = 3;
        state.next_attempt = 99;
        state.last_error = "451 try later".into();
        state.rcpts[0] = RcptState::Delivered;
        for record in [
            message(),
            Record::Message {
                id: QueueId::from_u64(7),
                received_at: UNIX_EPOCH,
                envelope: Envelope {
                    sender: ReversePath::Null,
                    recipients: vec![],
                    smtputf8: false,
                    eight_bit: true,
                    route: None,
                },
                state: DeliveryState::new(0),
                content: &[],
                body: None,
            },
            Record::Message {
                id: QueueId::from_u64(8),
                received_at: UNIX_EPOCH,
                envelope: Envelope {
                    sender: ReversePath::Null,
                    recipients: vec![Address::parse("b@example.net").unwrap()],
                    smtputf8: false,
                    eight_bit: true,
                    route: Some("billing".into()),
                },
                state: DeliveryState::new(1),
                content: b"Subject: big\r\n\r\n",
                body: Some(BodyFile {
                    name: "000000000000002a",
                    len: 30 << 20,
                    eight_bit: true,
                }),
            },
            Record::Update {
                id: QueueId::from_u64(42),
                state,
            },
            Record::Remove {
                id: QueueId::from_u64(42),
            },
        ] {
            let mut buf = Vec::new();
            encode(&record, &mut buf);
            assert_eq!(decode(&buf), Ok((record, buf.len())));
        }
    }

    #[test]
    fn content_offset_points_at_the_content() {
        let mut buf = b"prefix".to_vec();
        let at = encode(&message(), &mut buf).unwrap();
        assert_eq!(&buf[6 + at..], b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn torn_and_corrupt_records_are_detected() {
        let mut buf = Vec::new();
        encode(&message(), &mut buf);
        for cut in [1, 5, HEADER_LEN, buf.len() - 1] {
            assert_eq!(
                decode(&buf[..cut]),
                Err(DecodeError::Incomplete),
                "cut at {cut}"
            );
        }
        let mut flipped = buf.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        assert_eq!(decode(&flipped), Err(DecodeError::Checksum));
        assert_eq!(decode(b"garbage-garbage"), Err(DecodeError::BadMagic));
    }
}
