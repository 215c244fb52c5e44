//! Tagged frontend messages after the startup packet, as PostgreSQL's postgres.c reads them: the type byte
//! is checked before the length (an unknown type means the stream has lost sync: FATAL), and each type has
//! a length bound (10000 bytes for control messages, a larger configurable one for Query and CopyData), so a
//! client can never make the server allocate without limit.
//!
//! 'p' carries a PasswordMessage, SASLInitialResponse or SASLResponse depending on the authentication step,
//! so it is decoded as raw bytes and read with [`password`] or [`sasl_initial_response`] by whoever knows
//! the step. The extended query protocol and function calls are recognised so that they can be refused with
//! PostgreSQL's words (see [`super::errors::extended_query_not_supported`]).

use super::errors;
use crate::protocol::ServerError;
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// PostgreSQL's PQ_SMALL_MESSAGE_LIMIT: the bound on every message but Query, CopyData and the extended
/// protocol's Parse/Bind.
pub const SMALL_MESSAGE_LIMIT: usize = 10_000;

/// Default bound on Query and CopyData. Replication commands and standby replies are tiny; 1 MiB leaves
/// room for any command a tool sends.
pub const DEFAULT_LARGE_MESSAGE_LIMIT: usize = 1 << 20;

/// A decoded frontend message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// 'Q': the query text without its terminator (bytes in the client's encoding).
    Query(Bytes),
    /// 'p': PasswordMessage, SASLInitialResponse or SASLResponse, undecoded.
    Password(Bytes),
    CopyData(Bytes),
    CopyDone,
    /// 'f': the client's reason for failing the COPY.
    CopyFail(String),
    Sync,
    Flush,
    Terminate,
    /// Parse 'P', Bind 'B', Describe 'D', Execute 'E' or Close 'C' of the extended query protocol.
    ExtendedQuery(u8),
    /// 'F': a fast-path function call.
    FunctionCall,
}

/// A frontend message that cannot be read: the connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontendError {
    /// PostgreSQL answers this one with FATAL before closing.
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
    #[error("invalid message length {len} for frontend message type {tag:?} (limit {max} bytes)")]
    BadLength { tag: char, len: i64, max: usize },
    #[error("malformed {what} message from client: {reason}")]
    Malformed { what: &'static str, reason: &'static str },
    #[error("connection closed by the client in the middle of a message")]
    Truncated,
    #[error("could not receive data from client: {0}")]
    Io(String),
}

impl FrontendError {
    /// The FATAL error to send before closing, where PostgreSQL sends one (for a bad length or a broken
    /// connection it closes without a word).
    pub fn report(&self) -> Option<ServerError> {
        match self {
            FrontendError::UnknownType(tag) => Some(errors::invalid_frontend_message_type(*tag)),
            FrontendError::Malformed { reason, .. } => {
                Some(errors::fatal(errors::PROTOCOL_VIOLATION, *reason))
            }
            _ => None,
        }
    }
}

impl From<std::io::Error> for FrontendError {
    fn from(e: std::io::Error) -> FrontendError {
        FrontendError::Io(e.to_string())
    }
}

/// The bound PostgreSQL applies to a message type, or `None` for a type it does not know.
fn limit(tag: u8, large: usize) -> Option<usize> {
    match tag {
        b'Q' | b'd' | b'P' | b'B' | b'F' => Some(large),
        // 'p' during authentication: PostgreSQL bounds SASL messages to 1024 bytes and passwords to 65535;
        // the small limit covers both uses here.
        b'p' | b'c' | b'f' | b'S' | b'H' | b'X' | b'D' | b'E' | b'C' => Some(SMALL_MESSAGE_LIMIT),
        _ => None,
    }
}

/// Codec for tagged frontend messages; see the module documentation for the bounds.
#[derive(Debug, Clone)]
pub struct FrontendCodec {
    large_message_limit: usize,
}

impl FrontendCodec {
    pub fn new(large_message_limit: usize) -> FrontendCodec {
        FrontendCodec { large_message_limit }
    }
}

impl Default for FrontendCodec {
    fn default() -> Self {
        FrontendCodec::new(DEFAULT_LARGE_MESSAGE_LIMIT)
    }
}

impl Decoder for FrontendCodec {
    type Item = Frontend;
    type Error = FrontendError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frontend>, FrontendError> {
        let Some(&tag) = src.first() else { return Ok(None) };
        let max = limit(tag, self.large_message_limit).ok_or(FrontendError::UnknownType(tag))?;
        if src.len() < 5 {
            return Ok(None);
        }
        let len = i64::from(i32::from_be_bytes([src[1], src[2], src[3], src[4]]));
        let body_len = match usize::try_from(len - 4) {
            Ok(n) if n <= max => n,
            _ => return Err(FrontendError::BadLength { tag: char::from(tag), len, max }),
        };
        if src.len() < 5 + body_len {
            src.reserve(5 + body_len - src.len());
            return Ok(None);
        }
        src.advance(5);
        let body = src.split_to(body_len).freeze();
        decode(tag, body).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frontend>, FrontendError> {
        match self.decode(src)? {
            Some(m) => Ok(Some(m)),
            None if src.is_empty() => Ok(None),
            None => Err(FrontendError::Truncated),
        }
    }
}

fn malformed(what: &'static str, reason: &'static str) -> FrontendError {
    FrontendError::Malformed { what, reason }
}

/// A body that must be exactly one NUL-terminated string (PostgreSQL: pq_getmsgstring + pq_getmsgend).
fn only_cstr(mut body: Bytes, what: &'static str) -> Result<Bytes, FrontendError> {
    let end =
        body.iter().position(|&b| b == 0).ok_or_else(|| malformed(what, "invalid string in message"))?;
    if end + 1 != body.len() {
        return Err(malformed(what, "invalid message format"));
    }
    body.truncate(end);
    Ok(body)
}

/// Interprets one message body by its type byte.
pub fn decode(tag: u8, body: Bytes) -> Result<Frontend, FrontendError> {
    Ok(match tag {
        b'Q' => Frontend::Query(only_cstr(body, "Query")?),
        b'p' => Frontend::Password(body),
        b'd' => Frontend::CopyData(body),
        b'c' => Frontend::CopyDone,
        b'f' => Frontend::CopyFail(String::from_utf8_lossy(&only_cstr(body, "CopyFail")?).into_owned()),
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'X' => Frontend::Terminate,
        b'P' | b'B' | b'D' | b'E' | b'C' => Frontend::ExtendedQuery(tag),
        b'F' => Frontend::FunctionCall,
        other => return Err(FrontendError::UnknownType(other)),
    })
}

/// A PasswordMessage: one non-empty NUL-terminated string (auth.c's recv_password_packet).
pub fn password(body: &Bytes) -> Result<Bytes, ServerError> {
    let fatal = |message| errors::fatal(errors::PROTOCOL_VIOLATION, message);
    let end = body.iter().position(|&b| b == 0).ok_or_else(|| fatal("invalid password packet size"))?;
    if end + 1 != body.len() {
        return Err(fatal("invalid password packet size"));
    }
    if end == 0 {
        return Err(errors::fatal(errors::INVALID_PASSWORD, "empty password returned by client"));
    }
    Ok(body.slice(..end))
}

/// The first 'p' of a SASL exchange: the mechanism chosen, and the initial client response (absent when
/// the client sent length -1, which is not the same as empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    pub data: Option<Bytes>,
}

/// Reads a SASLInitialResponse body as auth-sasl.c does; errors are FATAL protocol violations.
pub fn sasl_initial_response(body: &Bytes) -> Result<SaslInitialResponse, ServerError> {
    let fatal = |message| errors::fatal(errors::PROTOCOL_VIOLATION, message);
    let mut b = body.clone();
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| fatal("invalid string in message"))?;
    let mechanism = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    if b.remaining() < 4 {
        return Err(fatal("insufficient data left in message"));
    }
    let len = b.get_i32();
    let data = match len {
        -1 => None,
        n => {
            let n = usize::try_from(n).map_err(|_| fatal("insufficient data left in message"))?;
            if n > b.remaining() {
                return Err(fatal("insufficient data left in message"));
            }
            Some(b.split_to(n))
        }
    };
    if !b.is_empty() {
        return Err(fatal("invalid message format"));
    }
    Ok(SaslInitialResponse { mechanism, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend;
    use proptest::prelude::*;

    fn decode_all(mut buf: BytesMut) -> Vec<Frontend> {
        let mut codec = FrontendCodec::default();
        let mut out = Vec::new();
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn decodes_what_libpq_sends() {
        let mut b = BytesMut::new();
        frontend::query("IDENTIFY_SYSTEM", &mut b).unwrap();
        frontend::password_message(b"secret", &mut b).unwrap();
        frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", &mut b).unwrap();
        frontend::sasl_response(b"c=biws,r=abcdef,p=xyz", &mut b).unwrap();
        frontend::CopyData::new(&b"r-status"[..]).unwrap().write(&mut b);
        frontend::copy_done(&mut b);
        frontend::copy_fail("standby shut down", &mut b).unwrap();
        frontend::sync(&mut b);
        frontend::flush(&mut b);
        frontend::terminate(&mut b);
        frontend::parse("", "SELECT 1", std::iter::empty(), &mut b).unwrap();
        let got = decode_all(b);
        assert_eq!(got[0], Frontend::Query(Bytes::from_static(b"IDENTIFY_SYSTEM")));
        let Frontend::Password(pw) = &got[1] else { panic!() };
        assert_eq!(password(pw).unwrap(), Bytes::from_static(b"secret"));
        let Frontend::Password(init) = &got[2] else { panic!() };
        assert_eq!(
            sasl_initial_response(init).unwrap(),
            SaslInitialResponse {
                mechanism: "SCRAM-SHA-256".into(),
                data: Some(Bytes::from_static(b"n,,n=,r=abc"))
            }
        );
        assert_eq!(got[3], Frontend::Password(Bytes::from_static(b"c=biws,r=abcdef,p=xyz")));
        assert_eq!(got[4], Frontend::CopyData(Bytes::from_static(b"r-status")));
        assert_eq!(
            &got[5..],
            &[
                Frontend::CopyDone,
                Frontend::CopyFail("standby shut down".into()),
                Frontend::Sync,
                Frontend::Flush,
                Frontend::Terminate,
                Frontend::ExtendedQuery(b'P'),
            ]
        );
    }

    #[test]
    fn unknown_types_and_bad_lengths_end_the_connection() {
        let mut codec = FrontendCodec::default();
        // The type is judged before the length arrives, as PostgreSQL does.
        let e = codec.decode(&mut BytesMut::from(&b"z"[..])).unwrap_err();
        assert_eq!(e, FrontendError::UnknownType(b'z'));
        assert_eq!(e.report().unwrap().message, "invalid frontend message type 122");
        let e = codec.decode(&mut BytesMut::from(&[b'X', 0, 0, 0, 3][..])).unwrap_err();
        assert!(matches!(e, FrontendError::BadLength { len: 3, .. }));
        assert!(e.report().is_none());
        // Control messages are small; a 10001-byte Sync is refused before it is read.
        let e = codec.decode(&mut BytesMut::from(&[b'S', 0, 0, 0x27, 0x15][..])).unwrap_err();
        assert!(matches!(e, FrontendError::BadLength { len: 10005, max: SMALL_MESSAGE_LIMIT, .. }));
        let mut small = FrontendCodec::new(16);
        let e = small.decode(&mut BytesMut::from(&[b'Q', 0, 0, 0, 21][..])).unwrap_err();
        assert_eq!(e.to_string(), "invalid message length 21 for frontend message type 'Q' (limit 16 bytes)");
        let mut partial = BytesMut::from(&[b'Q', 0, 0, 0, 9, b'a'][..]);
        assert_eq!(codec.decode_eof(&mut partial).unwrap_err(), FrontendError::Truncated);
    }

    #[test]
    fn malformed_bodies() {
        assert!(matches!(decode(b'Q', Bytes::from_static(b"no nul")), Err(FrontendError::Malformed { .. })));
        let e = decode(b'Q', Bytes::from_static(b"a\0b\0")).unwrap_err();
        assert_eq!(e.report().unwrap().message, "invalid message format");
        assert_eq!(password(&Bytes::from_static(b"\0")).unwrap_err().code, "28P01");
        assert!(password(&Bytes::from_static(b"pw")).is_err());
        assert!(password(&Bytes::from_static(b"pw\0x")).is_err());
        let mut no_data = b"SCRAM-SHA-256\0".to_vec();
        no_data.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(sasl_initial_response(&Bytes::from(no_data)).unwrap().data, None);
        let mut short = b"SCRAM-SHA-256\0".to_vec();
        short.extend_from_slice(&10i32.to_be_bytes());
        short.extend_from_slice(b"abc");
        assert_eq!(
            sasl_initial_response(&Bytes::from(short)).unwrap_err().message,
            "insufficient data left in message"
        );
        let mut trailing = b"M\0".to_vec();
        trailing.extend_from_slice(&1i32.to_be_bytes());
        trailing.extend_from_slice(b"ab");
        assert_eq!(
            sasl_initial_response(&Bytes::from(trailing)).unwrap_err().message,
            "invalid message format"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), large in 0usize..64) {
            let mut codec = FrontendCodec::new(large);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let body = Bytes::from(data);
            let _ = password(&body);
            let _ = sasl_initial_response(&body);
        }

        #[test]
        fn chunking_does_not_change_messages(queries in proptest::collection::vec("[ -~]{0,40}", 1..6), cut in 1usize..13) {
            let mut wire = BytesMut::new();
            for q in &queries {
                frontend::query(q, &mut wire).unwrap();
            }
            let mut codec = FrontendCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(Frontend::Query(q)) = codec.decode(&mut buf).unwrap() {
                    got.push(String::from_utf8(q.to_vec()).unwrap());
                }
            }
            prop_assert_eq!(got, queries);
        }
    }
}
