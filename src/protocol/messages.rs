//! Backend messages a replication client meets, decoded from frames, and the server's error and notice
//! reports as a typed `ServerError` (severity, SQLSTATE, message, detail, hint).

use crate::protocol::codec::{type_byte, Frame};
use crate::protocol::sqlstate;
use bytes::{Buf, Bytes};
use std::fmt;

/// A decoded backend message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Authentication(AuthRequest),
    ParameterStatus { name: String, value: String },
    BackendKeyData { process_id: i32, secret_key: Bytes },
    ReadyForQuery { status: u8 },
    RowDescription { columns: Vec<String> },
    DataRow { values: Vec<Option<Bytes>> },
    CommandComplete { tag: String },
    EmptyQueryResponse,
    Error(ServerError),
    Notice(ServerError),
    CopyBothResponse,
    CopyOutResponse,
    CopyInResponse,
    CopyData(Bytes),
    CopyDone,
    NegotiateProtocolVersion { newest_minor: i32, unsupported: Vec<String> },
    NotificationResponse,
}

/// How messages name a backend message: its protocol name, and for a few the detail that tells them apart
/// (`CommandComplete "COPY 0"`). Never a dump of its contents.
impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Authentication(_) => f.write_str("authentication request"),
            Backend::ParameterStatus { name, .. } => write!(f, "ParameterStatus {}", quoted(name)),
            Backend::BackendKeyData { .. } => f.write_str("BackendKeyData"),
            Backend::ReadyForQuery { .. } => f.write_str("ReadyForQuery"),
            Backend::RowDescription { columns } => write!(f, "RowDescription ({} columns)", columns.len()),
            Backend::DataRow { values } => write!(f, "DataRow ({} columns)", values.len()),
            Backend::CommandComplete { tag } => write!(f, "CommandComplete {}", quoted(tag)),
            Backend::EmptyQueryResponse => f.write_str("EmptyQueryResponse"),
            Backend::Error(e) => write!(f, "ErrorResponse ({e})"),
            Backend::Notice(_) => f.write_str("NoticeResponse"),
            Backend::CopyBothResponse => f.write_str("CopyBothResponse"),
            Backend::CopyOutResponse => f.write_str("CopyOutResponse"),
            Backend::CopyInResponse => f.write_str("CopyInResponse"),
            Backend::CopyData(d) => write!(f, "CopyData ({} bytes)", d.len()),
            Backend::CopyDone => f.write_str("CopyDone"),
            Backend::NegotiateProtocolVersion { .. } => f.write_str("NegotiateProtocolVersion"),
            Backend::NotificationResponse => f.write_str("NotificationResponse"),
        }
    }
}

/// Text from the server (or another untrusted source) inside one of our messages: in double quotes, with
/// control characters and quotes escaped, so that the message stays on one line whatever the text holds.
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", text.escape_debug())
}

/// What the server asks for during authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSSAPI, SSPI: not supported by walkeeper.
    Unsupported {
        code: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} message (type {}) from server: {reason}", type_byte(*tag))]
pub struct MalformedMessage {
    pub what: &'static str,
    pub tag: u8,
    pub reason: &'static str,
}

/// An ErrorResponse or NoticeResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`V`) when present (9.6+), else the localized one (`S`).
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// SQLSTATE class 28: invalid_password, invalid_authorization_specification.
    pub fn is_auth_failure(&self) -> bool {
        self.code.starts_with(sqlstate::CLASS_INVALID_AUTHORIZATION)
    }

    /// The error carries this SQLSTATE (one of [`sqlstate`]'s constants).
    pub fn has_code(&self, code: &str) -> bool {
        self.code == code
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:  {}", self.severity, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " DETAIL:  {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " HINT:  {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// A cursor over a message body with checked reads.
struct Reader {
    what: &'static str,
    tag: u8,
    buf: Bytes,
}

impl Reader {
    fn bad(&self, reason: &'static str) -> MalformedMessage {
        MalformedMessage { what: self.what, tag: self.tag, reason }
    }

    fn i16(&mut self) -> Result<i16, MalformedMessage> {
        if self.buf.remaining() < 2 {
            return Err(self.bad("truncated"));
        }
        Ok(self.buf.get_i16())
    }

    fn i32(&mut self) -> Result<i32, MalformedMessage> {
        if self.buf.remaining() < 4 {
            return Err(self.bad("truncated"));
        }
        Ok(self.buf.get_i32())
    }

    fn u8(&mut self) -> Result<u8, MalformedMessage> {
        if self.buf.remaining() < 1 {
            return Err(self.bad("truncated"));
        }
        Ok(self.buf.get_u8())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, MalformedMessage> {
        if self.buf.remaining() < n {
            return Err(self.bad("truncated"));
        }
        Ok(self.buf.split_to(n))
    }

    /// A NUL-terminated string (lossy UTF-8: server messages may be in another encoding).
    fn cstr(&mut self) -> Result<String, MalformedMessage> {
        let end =
            self.buf.iter().position(|&b| b == 0).ok_or_else(|| self.bad("missing string terminator"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 1);
        Ok(s)
    }

    fn rest(self) -> Bytes {
        self.buf
    }
}

/// Decode one frame. Unknown message types are an error (the protocol gives us no way to skip them safely
/// in the middle of a replication session).
pub fn decode(frame: Frame) -> Result<Backend, MalformedMessage> {
    let what = message_name(frame.tag);
    let tag = frame.tag;
    let mut r = Reader { what, tag, buf: frame.body };
    let msg = match frame.tag {
        b'R' => Backend::Authentication(decode_auth(&mut r)?),
        b'S' => Backend::ParameterStatus { name: r.cstr()?, value: r.cstr()? },
        b'K' => Backend::BackendKeyData { process_id: r.i32()?, secret_key: r.rest() },
        b'Z' => Backend::ReadyForQuery { status: r.u8()? },
        b'T' => {
            let n = r.i16()?;
            let n = usize::try_from(n).map_err(|_| r.bad("negative column count"))?;
            let mut columns = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                columns.push(r.cstr()?);
                r.bytes(18)?; // table oid, attnum, type oid, typlen, typmod, format
            }
            Backend::RowDescription { columns }
        }
        b'D' => {
            let n = r.i16()?;
            let n = usize::try_from(n).map_err(|_| r.bad("negative column count"))?;
            let mut values = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let len = r.i32()?;
                values.push(match len {
                    -1 => None,
                    l if l < 0 => return Err(r.bad("negative value length")),
                    l => Some(r.bytes(l as usize)?),
                });
            }
            Backend::DataRow { values }
        }
        b'C' => Backend::CommandComplete { tag: r.cstr()? },
        b'I' => Backend::EmptyQueryResponse,
        b'E' => Backend::Error(decode_fields(&mut r)?),
        b'N' => Backend::Notice(decode_fields(&mut r)?),
        b'W' => Backend::CopyBothResponse,
        b'H' => Backend::CopyOutResponse,
        b'G' => Backend::CopyInResponse,
        b'd' => Backend::CopyData(r.rest()),
        b'c' => Backend::CopyDone,
        b'v' => {
            let newest_minor = r.i32()?;
            let n = r.i32()?;
            let n = usize::try_from(n).map_err(|_| r.bad("negative option count"))?;
            let mut unsupported = Vec::new();
            for _ in 0..n {
                unsupported.push(r.cstr()?);
            }
            Backend::NegotiateProtocolVersion { newest_minor, unsupported }
        }
        b'A' => Backend::NotificationResponse,
        _ => return Err(MalformedMessage { what, tag, reason: "unexpected message type" }),
    };
    Ok(msg)
}

fn decode_auth(r: &mut Reader) -> Result<AuthRequest, MalformedMessage> {
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5Password { salt: [s[0], s[1], s[2], s[3]] }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(std::mem::take(&mut r.buf)),
        12 => AuthRequest::SaslFinal(std::mem::take(&mut r.buf)),
        code => AuthRequest::Unsupported { code },
    })
}

fn decode_fields(r: &mut Reader) -> Result<ServerError, MalformedMessage> {
    let mut e = ServerError::default();
    let mut localized_severity = String::new();
    loop {
        let field = r.u8()?;
        if field == 0 {
            break;
        }
        let value = r.cstr()?;
        match field {
            b'S' => localized_severity = value,
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    Ok(e)
}

fn message_name(tag: u8) -> &'static str {
    match tag {
        b'R' => "authentication",
        b'S' => "ParameterStatus",
        b'K' => "BackendKeyData",
        b'Z' => "ReadyForQuery",
        b'T' => "RowDescription",
        b'D' => "DataRow",
        b'C' => "CommandComplete",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        b'v' => "NegotiateProtocolVersion",
        _ => "backend",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(tag: u8, body: &[u8]) -> Frame {
        Frame { tag, body: Bytes::copy_from_slice(body) }
    }

    #[test]
    fn decodes_error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0Dsome detail\0Htry again\0Rauth\0\0";
        let Backend::Error(e) = decode(f(b'E', body)).unwrap() else { panic!() };
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "28P01");
        assert!(e.is_auth_failure());
        assert_eq!(e.detail.as_deref(), Some("some detail"));
        assert_eq!(e.hint.as_deref(), Some("try again"));
        assert_eq!(
            e.to_string(),
            "FATAL:  password authentication failed for user \"x\" DETAIL:  some detail HINT:  try again"
        );
    }

    #[test]
    fn decodes_rows_and_auth() {
        let mut body = vec![0, 2];
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(b"abcd");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            decode(f(b'D', &body)).unwrap(),
            Backend::DataRow { values: vec![Some(Bytes::from_static(b"abcd")), None] }
        );
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            decode(f(b'R', &sasl)).unwrap(),
            Backend::Authentication(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            })
        );
        let mut md5 = 5i32.to_be_bytes().to_vec();
        md5.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            decode(f(b'R', &md5)).unwrap(),
            Backend::Authentication(AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
        );
    }

    #[test]
    fn rejects_truncated_and_unknown() {
        assert!(decode(f(b'D', &[0, 1, 0, 0, 0, 9, b'x'])).is_err());
        assert!(decode(f(b'D', &[0, 1, 0xff, 0xff, 0xff, 0xf0])).is_err());
        assert!(decode(f(b'S', b"no terminator")).is_err());
        assert!(decode(f(b'?', b"")).is_err());
        assert!(decode(f(b'E', b"Mmsg")).is_err());
    }

    #[test]
    fn messages_name_backend_messages_without_dumping_them() {
        assert_eq!(
            Backend::CommandComplete { tag: "COPY 0".into() }.to_string(),
            "CommandComplete \"COPY 0\""
        );
        assert_eq!(Backend::CopyData(Bytes::from_static(b"wal")).to_string(), "CopyData (3 bytes)");
        assert_eq!(Backend::ReadyForQuery { status: b'I' }.to_string(), "ReadyForQuery");
        // Untrusted text stays on one line.
        assert_eq!(quoted("a\nb\"c"), "\"a\\nb\\\"c\"");
        assert_eq!(
            decode(f(0x01, b"")).unwrap_err().to_string(),
            "malformed backend message (type 0x01) from server: unexpected message type"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(f(tag, &body));
        }
    }
}
