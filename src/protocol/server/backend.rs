//! Encoders for the backend messages a walsender sends, appended to a `BytesMut` (no I/O): authentication
//! requests, ParameterStatus, BackendKeyData, ReadyForQuery, ErrorResponse/NoticeResponse, text-format result
//! sets (RowDescription, DataRow, CommandComplete), the COPY messages and NegotiateProtocolVersion.
//!
//! Every message is a type byte, a 4-byte big-endian length that counts itself, and a body. An encoder that
//! fails (a string with a NUL byte, a body over the protocol's limit) leaves the buffer as it found it.

use crate::protocol::ServerError;
use bytes::{BufMut, BytesMut};

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {what}: {reason}")]
pub struct EncodeError {
    pub what: &'static str,
    pub reason: &'static str,
}

/// Authentication request codes (the Int32 after 'R').
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Cancel keys: exactly 4 bytes in protocol 3.0, 4 to 256 bytes from 3.2 on.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// Type OIDs of the columns replication results use (pg_type.dat).
pub const BYTEA_OID: u32 = 17;
pub const INT8_OID: u32 = 20;
pub const INT4_OID: u32 = 23;
pub const TEXT_OID: u32 = 25;

/// A column of a text-format result set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    pub type_oid: u32,
    /// `pg_type.typlen`: -1 for varlena types such as text, 8 for int8.
    pub type_len: i16,
    /// -1 (none), as PostgreSQL describes built-in columns; some older replies were written by hand with 0.
    pub type_mod: i32,
}

impl<'a> Column<'a> {
    pub const fn text(name: &'a str) -> Column<'a> {
        Column { name, type_oid: TEXT_OID, type_len: -1, type_mod: -1 }
    }

    pub const fn bytea(name: &'a str) -> Column<'a> {
        Column { name, type_oid: BYTEA_OID, type_len: -1, type_mod: -1 }
    }

    pub const fn int8(name: &'a str) -> Column<'a> {
        Column { name, type_oid: INT8_OID, type_len: 8, type_mod: -1 }
    }

    pub const fn int4(name: &'a str) -> Column<'a> {
        Column { name, type_oid: INT4_OID, type_len: 4, type_mod: -1 }
    }

    pub const fn with_type_mod(self, type_mod: i32) -> Column<'a> {
        Column { type_mod, ..self }
    }
}

/// Writes one message: type byte, length placeholder, body, then the real length. On error the buffer is
/// truncated back to where it was.
fn message(
    buf: &mut BytesMut,
    tag: u8,
    what: &'static str,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    let result = body(buf).and_then(|()| {
        i32::try_from(buf.len() - start - 1)
            .map_err(|_| EncodeError { what, reason: "the message is longer than the protocol allows" })
    });
    match result {
        Ok(len) => {
            buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// A fixed-size message whose body cannot fail.
fn fixed(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.reserve(5 + body.len());
    buf.put_u8(tag);
    // Bodies here are a few bytes, so the length always fits.
    buf.put_i32(4 + body.len() as i32);
    buf.put_slice(body);
}

/// A NUL-terminated string; an embedded NUL would cut the string short on the other side, so it is refused.
fn cstr(buf: &mut BytesMut, s: &[u8], what: &'static str) -> Result<(), EncodeError> {
    if s.contains(&0) {
        return Err(EncodeError { what, reason: "a string contains a NUL byte" });
    }
    buf.put_slice(s);
    buf.put_u8(0);
    Ok(())
}

fn auth(buf: &mut BytesMut, code: i32, data: &[u8], what: &'static str) -> Result<(), EncodeError> {
    message(buf, b'R', what, |b| {
        b.put_i32(code);
        b.put_slice(data);
        Ok(())
    })
}

pub fn authentication_ok(buf: &mut BytesMut) {
    fixed(buf, b'R', &AUTH_OK.to_be_bytes());
}

pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    fixed(buf, b'R', &AUTH_CLEARTEXT_PASSWORD.to_be_bytes());
}

/// AuthenticationSASL: the mechanisms offered, each NUL-terminated, then an empty one.
pub fn authentication_sasl(mechanisms: &[&str], buf: &mut BytesMut) -> Result<(), EncodeError> {
    const WHAT: &str = "AuthenticationSASL";
    message(buf, b'R', WHAT, |b| {
        b.put_i32(AUTH_SASL);
        for m in mechanisms {
            if m.is_empty() {
                return Err(EncodeError { what: WHAT, reason: "a mechanism name is empty" });
            }
            cstr(b, m.as_bytes(), WHAT)?;
        }
        b.put_u8(0);
        Ok(())
    })
}

pub fn authentication_sasl_continue(data: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    auth(buf, AUTH_SASL_CONTINUE, data, "AuthenticationSASLContinue")
}

pub fn authentication_sasl_final(data: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    auth(buf, AUTH_SASL_FINAL, data, "AuthenticationSASLFinal")
}

pub fn parameter_status(name: &str, value: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    const WHAT: &str = "ParameterStatus";
    message(buf, b'S', WHAT, |b| {
        cstr(b, name.as_bytes(), WHAT)?;
        cstr(b, value.as_bytes(), WHAT)
    })
}

/// BackendKeyData: the process id and cancel key (4 bytes in protocol 3.0, up to 256 from 3.2 on; see
/// [`super::startup::Startup::cancel_key_len`]).
pub fn backend_key_data(process_id: i32, secret_key: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    const WHAT: &str = "BackendKeyData";
    if secret_key.len() < 4 || secret_key.len() > MAX_CANCEL_KEY_LEN {
        return Err(EncodeError { what: WHAT, reason: "a cancel key has 4 to 256 bytes" });
    }
    message(buf, b'K', WHAT, |b| {
        b.put_i32(process_id);
        b.put_slice(secret_key);
        Ok(())
    })
}

/// ReadyForQuery, transaction status idle: a walsender runs no SQL, so it is never in a transaction block.
pub fn ready_for_query(buf: &mut BytesMut) {
    fixed(buf, b'Z', b"I");
}

fn fields(report: &ServerError, tag: u8, what: &'static str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    message(buf, tag, what, |b| {
        let mut field = |code: u8, value: &str| {
            b.put_u8(code);
            cstr(b, value.as_bytes(), what)
        };
        // S is the localized severity, V (9.6+) the untranslated one; walkeeper speaks English only.
        field(b'S', &report.severity)?;
        field(b'V', &report.severity)?;
        field(b'C', &report.code)?;
        field(b'M', &report.message)?;
        if let Some(d) = &report.detail {
            field(b'D', d)?;
        }
        if let Some(h) = &report.hint {
            field(b'H', h)?;
        }
        b.put_u8(0);
        Ok(())
    })
}

/// ErrorResponse: severity (S and V), SQLSTATE (C), message (M), and detail (D) and hint (H) when present.
pub fn error_response(report: &ServerError, buf: &mut BytesMut) -> Result<(), EncodeError> {
    fields(report, b'E', "ErrorResponse", buf)
}

pub fn notice_response(report: &ServerError, buf: &mut BytesMut) -> Result<(), EncodeError> {
    fields(report, b'N', "NoticeResponse", buf)
}

/// RowDescription for a text-format result (table OID 0, column number 0, format 0: as a walsender
/// describes its results).
pub fn row_description(columns: &[Column<'_>], buf: &mut BytesMut) -> Result<(), EncodeError> {
    const WHAT: &str = "RowDescription";
    let n =
        i16::try_from(columns.len()).map_err(|_| EncodeError { what: WHAT, reason: "too many columns" })?;
    message(buf, b'T', WHAT, |b| {
        b.put_i16(n);
        for c in columns {
            cstr(b, c.name.as_bytes(), WHAT)?;
            b.put_u32(0); // table OID
            b.put_i16(0); // column number
            b.put_u32(c.type_oid);
            b.put_i16(c.type_len);
            b.put_i32(c.type_mod);
            b.put_i16(0); // text format
        }
        Ok(())
    })
}

/// DataRow: each value as text bytes, or NULL.
pub fn data_row(values: &[Option<&[u8]>], buf: &mut BytesMut) -> Result<(), EncodeError> {
    const WHAT: &str = "DataRow";
    let n =
        i16::try_from(values.len()).map_err(|_| EncodeError { what: WHAT, reason: "too many columns" })?;
    message(buf, b'D', WHAT, |b| {
        b.put_i16(n);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    let len = i32::try_from(v.len())
                        .map_err(|_| EncodeError { what: WHAT, reason: "a value is longer than 2 GiB" })?;
                    b.put_i32(len);
                    b.put_slice(v);
                }
            }
        }
        Ok(())
    })
}

/// CommandComplete with its tag (for replication commands, the command's name: "IDENTIFY_SYSTEM").
pub fn command_complete(tag: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    message(buf, b'C', "CommandComplete", |b| cstr(b, tag.as_bytes(), "CommandComplete"))
}

pub fn empty_query_response(buf: &mut BytesMut) {
    fixed(buf, b'I', &[]);
}

/// CopyBothResponse as a walsender sends it for START_REPLICATION: overall text format, no columns.
pub fn copy_both_response(buf: &mut BytesMut) {
    fixed(buf, b'W', &[0, 0, 0]);
}

/// CopyOutResponse (overall text format, no columns).
pub fn copy_out_response(buf: &mut BytesMut) {
    fixed(buf, b'H', &[0, 0, 0]);
}

/// CopyData around `data`. For WAL, [`super::stream::xlog_data`] writes the header and data in one go.
pub fn copy_data(data: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    message(buf, b'd', "CopyData", |b| {
        b.put_slice(data);
        Ok(())
    })
}

pub fn copy_done(buf: &mut BytesMut) {
    fixed(buf, b'c', &[]);
}

/// NegotiateProtocolVersion: the version the server will speak (as PostgreSQL sends it: the full
/// `major << 16 | minor` number) and the `_pq_.` options it did not recognise.
pub fn negotiate_protocol_version(
    version: u32,
    unrecognized: &[String],
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    const WHAT: &str = "NegotiateProtocolVersion";
    let n = i32::try_from(unrecognized.len())
        .map_err(|_| EncodeError { what: WHAT, reason: "too many options" })?;
    message(buf, b'v', WHAT, |b| {
        b.put_u32(version);
        b.put_i32(n);
        for o in unrecognized {
            cstr(b, o.as_bytes(), WHAT)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::BackendCodec;
    use crate::protocol::messages::{self, AuthRequest, Backend};
    use bytes::Bytes;
    use tokio_util::codec::Decoder;

    /// Decodes everything in `buf` with the client side's codec and decoder.
    fn client_view(mut buf: BytesMut) -> Vec<Backend> {
        let mut codec = BackendCodec::default();
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            out.push(messages::decode(frame).unwrap());
        }
        assert!(buf.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn authentication_messages_round_trip() {
        let mut b = BytesMut::new();
        authentication_sasl(&["SCRAM-SHA-256"], &mut b).unwrap();
        authentication_sasl_continue(b"r=abc,s=c2FsdA==,i=4096", &mut b).unwrap();
        authentication_sasl_final(b"v=sig", &mut b).unwrap();
        authentication_ok(&mut b);
        authentication_cleartext_password(&mut b);
        assert_eq!(
            client_view(b),
            vec![
                Backend::Authentication(AuthRequest::Sasl { mechanisms: vec!["SCRAM-SHA-256".into()] }),
                Backend::Authentication(AuthRequest::SaslContinue(Bytes::from_static(
                    b"r=abc,s=c2FsdA==,i=4096"
                ))),
                Backend::Authentication(AuthRequest::SaslFinal(Bytes::from_static(b"v=sig"))),
                Backend::Authentication(AuthRequest::Ok),
                Backend::Authentication(AuthRequest::CleartextPassword),
            ]
        );
    }

    #[test]
    fn session_messages_round_trip() {
        let mut b = BytesMut::new();
        parameter_status("server_version", "17.4", &mut b).unwrap();
        backend_key_data(4242, &[1, 2, 3, 4], &mut b).unwrap();
        ready_for_query(&mut b);
        let report = ServerError {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"x\"".into(),
            detail: Some("d".into()),
            hint: None,
        };
        error_response(&report, &mut b).unwrap();
        notice_response(&ServerError { severity: "NOTICE".into(), ..report.clone() }, &mut b).unwrap();
        negotiate_protocol_version(0x0003_0000, &["_pq_.x".to_string()], &mut b).unwrap();
        assert_eq!(
            client_view(b),
            vec![
                Backend::ParameterStatus { name: "server_version".into(), value: "17.4".into() },
                Backend::BackendKeyData { process_id: 4242, secret_key: Bytes::from_static(&[1, 2, 3, 4]) },
                Backend::ReadyForQuery { status: b'I' },
                Backend::Error(report.clone()),
                Backend::Notice(ServerError { severity: "NOTICE".into(), ..report }),
                Backend::NegotiateProtocolVersion {
                    newest_minor: 0x0003_0000,
                    unsupported: vec!["_pq_.x".into()]
                },
            ]
        );
    }

    #[test]
    fn result_and_copy_messages_round_trip() {
        let mut b = BytesMut::new();
        row_description(&[Column::text("systemid"), Column::int8("timeline")], &mut b).unwrap();
        data_row(&[Some(b"7312"), None], &mut b).unwrap();
        command_complete("IDENTIFY_SYSTEM", &mut b).unwrap();
        empty_query_response(&mut b);
        copy_both_response(&mut b);
        copy_out_response(&mut b);
        copy_data(b"payload", &mut b).unwrap();
        copy_done(&mut b);
        assert_eq!(
            client_view(b),
            vec![
                Backend::RowDescription { columns: vec!["systemid".into(), "timeline".into()] },
                Backend::DataRow { values: vec![Some(Bytes::from_static(b"7312")), None] },
                Backend::CommandComplete { tag: "IDENTIFY_SYSTEM".into() },
                Backend::EmptyQueryResponse,
                Backend::CopyBothResponse,
                Backend::CopyOutResponse,
                Backend::CopyData(Bytes::from_static(b"payload")),
                Backend::CopyDone,
            ]
        );
    }

    #[test]
    fn exact_bytes_of_fixed_layouts() {
        let mut b = BytesMut::new();
        row_description(&[Column::int8("next_tli")], &mut b).unwrap();
        let mut want = vec![b'T', 0, 0, 0, 33, 0, 1];
        want.extend_from_slice(b"next_tli\0");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 8, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(&b[..], &want[..]);
        let mut b = BytesMut::new();
        copy_both_response(&mut b);
        ready_for_query(&mut b);
        assert_eq!(&b[..], b"W\0\0\0\x07\0\0\0Z\0\0\0\x05I");
    }

    #[test]
    fn refusals_leave_the_buffer_untouched() {
        let mut b = BytesMut::from(&b"keep"[..]);
        assert!(parameter_status("a\0b", "v", &mut b).is_err());
        assert!(command_complete("x\0", &mut b).is_err());
        assert!(backend_key_data(1, &[1, 2, 3], &mut b).is_err());
        assert!(backend_key_data(1, &[0; 257], &mut b).is_err());
        assert!(authentication_sasl(&[""], &mut b).is_err());
        let bad = ServerError { message: "nul\0".into(), ..Default::default() };
        let err = error_response(&bad, &mut b).unwrap_err();
        assert_eq!(err.to_string(), "cannot encode ErrorResponse: a string contains a NUL byte");
        assert_eq!(&b[..], b"keep");
        backend_key_data(1, &[7; 32], &mut b).unwrap();
        assert_eq!(b.len(), 4 + 1 + 4 + 4 + 32);
    }
}
