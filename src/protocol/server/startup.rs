//! The untagged startup phase, as PostgreSQL's postmaster reads it (backend_startup.c): a 4-byte length
//! (counting itself, at most 10000 bytes), then a 4-byte code that is either a protocol version or one of
//! the special requests (SSLRequest, GSSENCRequest, CancelRequest).
//!
//! A StartupMessage carries `name\0value\0` pairs and a final NUL. Protocol 3.0 and 3.2 are spoken (3.2,
//! new in PostgreSQL 18, only lengthens the cancel key); libpq 18 asks for 3.2 only when
//! `max_protocol_version` says so, and a request for a newer minor or for `_pq_.` protocol options is
//! answered with NegotiateProtocolVersion naming the version the server will speak, as PostgreSQL 18 does.
//!
//! The answers to SSLRequest and GSSENCRequest are single bytes, not messages: [`TLS_ACCEPTED`] (then the
//! TLS handshake) or [`ENCRYPTION_REFUSED`]; the client then sends the next startup packet.

use super::errors;
use crate::protocol::ServerError;
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// The special request codes (1234 in the high half, 5678/5679/5680 in the low one).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// The one-byte answers to SSLRequest / GSSENCRequest.
pub const TLS_ACCEPTED: u8 = b'S';
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer user and database names are truncated.
const MAX_IDENTIFIER: usize = 63;

/// A protocol version as the startup packet carries it: major in the high 16 bits, minor in the low.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion(pub u32);

impl ProtocolVersion {
    pub const V3_0: ProtocolVersion = ProtocolVersion(3 << 16);
    pub const V3_2: ProtocolVersion = ProtocolVersion(3 << 16 | 2);
    /// The newest version walkeeper speaks, as PostgreSQL 18.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V3_2;

    pub fn major(self) -> u32 {
        self.0 >> 16
    }

    pub fn minor(self) -> u32 {
        self.0 & 0xffff
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// One packet of the startup phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// Cancel the query of the backend with this process id, if the key matches. Nothing is ever answered.
    Cancel {
        process_id: i32,
        secret_key: Bytes,
    },
    Startup(Startup),
}

/// The `replication` startup parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationMode {
    /// Absent or false: a normal SQL session.
    Off,
    /// `true`/`on`/`1`/…: a physical replication connection (a walreceiver, pg_receivewal, pg_basebackup).
    Physical,
    /// `database`: a logical replication connection to the named database.
    Logical,
}

/// A StartupMessage, checked as PostgreSQL checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    /// The version the client asked for (3.x).
    pub requested: ProtocolVersion,
    /// At most 63 bytes, as PostgreSQL truncates it.
    pub user: String,
    /// Defaults to the user name; empty for a physical replication connection, as in PostgreSQL.
    pub database: String,
    pub replication: ReplicationMode,
    pub application_name: Option<String>,
    /// The `options` parameter (command-line style `-c name=value` settings), unparsed.
    pub options: Option<String>,
    /// Every other parameter (settings such as `client_encoding`), in the order sent.
    pub parameters: Vec<(String, String)>,
    /// Names of `_pq_.` protocol options, none of which walkeeper (or PostgreSQL 18) knows.
    pub protocol_options: Vec<String>,
}

impl Startup {
    /// The version this session speaks: the one asked for, or the newest walkeeper knows if that is older.
    pub fn version(&self) -> ProtocolVersion {
        self.requested.min(ProtocolVersion::LATEST)
    }

    /// When the server must answer with NegotiateProtocolVersion before anything else: the version it will
    /// speak and the protocol options it ignores. `None` when the request is granted as is.
    pub fn negotiation(&self) -> Option<(ProtocolVersion, &[String])> {
        let newer = self.requested.minor() > ProtocolVersion::LATEST.minor();
        (newer || !self.protocol_options.is_empty()).then_some((self.version(), &self.protocol_options[..]))
    }

    /// The cancel key length to send in BackendKeyData: 4 bytes before protocol 3.2, 32 from it on (the
    /// length PostgreSQL 18 uses; the protocol allows up to 256).
    pub fn cancel_key_len(&self) -> usize {
        if self.version() >= ProtocolVersion::V3_2 {
            32
        } else {
            4
        }
    }
}

/// Why the startup phase ends. [`StartupError::report`] says what to send the client first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet ({0} bytes)")]
    InvalidLength(i64),
    #[error("invalid length of cancel key in cancel request packet ({0} bytes)")]
    InvalidCancelKey(usize),
    #[error("incomplete startup packet")]
    Incomplete,
    /// The client began a TLS handshake without an SSLRequest (libpq 17+ `sslnegotiation=direct`).
    #[error("the client started TLS without an SSLRequest (sslnegotiation=direct), which walkeeper does not support")]
    DirectTls,
    #[error("{}", .0.message)]
    Refused(ServerError),
    #[error("could not read the startup packet: {0}")]
    Io(String),
}

impl StartupError {
    /// The FATAL error to send before closing; `None` where PostgreSQL closes without a word (a packet so
    /// broken that the client may not even speak the protocol).
    pub fn report(&self) -> Option<&ServerError> {
        match self {
            StartupError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

/// Decodes one startup packet from the front of `buf`; `Ok(None)` until it is complete.
pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    // A TLS record starts with 0x16 (handshake), then the version 0x03 0x0N: never a plausible length.
    if buf.first() == Some(&0x16) {
        return Err(StartupError::DirectTls);
    }
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i64::from(i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
    // The length counts itself and must leave room for the 4-byte code.
    let body_len = match usize::try_from(len - 4) {
        Ok(n) if (4..=MAX_STARTUP_PACKET).contains(&n) => n,
        _ => return Err(StartupError::InvalidLength(len)),
    };
    if buf.len() < 4 + body_len {
        buf.reserve(4 + body_len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(body_len).freeze();
    let code = body.get_u32();
    Ok(Some(match code {
        CANCEL_REQUEST_CODE => {
            if body.len() < 4 {
                return Err(StartupError::InvalidCancelKey(0));
            }
            let process_id = body.get_i32();
            if body.is_empty() || body.len() > super::backend::MAX_CANCEL_KEY_LEN {
                return Err(StartupError::InvalidCancelKey(body.len()));
            }
            StartupPacket::Cancel { process_id, secret_key: body }
        }
        SSL_REQUEST_CODE => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
        version => StartupPacket::Startup(startup(ProtocolVersion(version), &body)?),
    }))
}

/// The body of a StartupMessage after its version.
fn startup(requested: ProtocolVersion, body: &[u8]) -> Result<Startup, StartupError> {
    let refuse = |e: ServerError| StartupError::Refused(e);
    if requested.major() != 3 {
        return Err(refuse(errors::unsupported_protocol(requested.major(), requested.minor())));
    }
    let mut s = Startup {
        requested,
        user: String::new(),
        database: String::new(),
        replication: ReplicationMode::Off,
        application_name: None,
        options: None,
        parameters: Vec::new(),
        protocol_options: Vec::new(),
    };
    let mut rest = body;
    loop {
        let (name, after) = split_cstr(rest).ok_or_else(|| refuse(errors::startup_layout()))?;
        if name.is_empty() {
            // The terminator must be the packet's last byte.
            if !after.is_empty() {
                return Err(refuse(errors::startup_layout()));
            }
            break;
        }
        let (value, after) = split_cstr(after).ok_or_else(|| refuse(errors::startup_layout()))?;
        rest = after;
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        match name.as_str() {
            "user" => s.user = value,
            "database" => s.database = value,
            "options" => s.options = Some(value),
            "replication" => {
                s.replication = if value == "database" {
                    ReplicationMode::Logical
                } else {
                    match parse_bool(&value) {
                        Some(true) => ReplicationMode::Physical,
                        Some(false) => ReplicationMode::Off,
                        None => return Err(refuse(errors::invalid_replication_parameter(&value))),
                    }
                };
            }
            n if n.starts_with("_pq_.") => s.protocol_options.push(name),
            _ => {
                if name == "application_name" {
                    s.application_name = Some(value.clone());
                }
                s.parameters.push((name, value));
            }
        }
    }
    if s.user.is_empty() {
        return Err(refuse(errors::no_user_name()));
    }
    if s.database.is_empty() {
        s.database = s.user.clone();
    }
    truncate_identifier(&mut s.user);
    truncate_identifier(&mut s.database);
    if s.replication == ReplicationMode::Physical {
        s.database.clear();
    }
    Ok(s)
}

/// Splits a NUL-terminated string off the front; `None` if there is no terminator.
fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

/// PostgreSQL cuts names at NAMEDATALEN - 1 bytes; here at the last character boundary within them.
fn truncate_identifier(s: &mut String) {
    if s.len() > MAX_IDENTIFIER {
        let mut end = MAX_IDENTIFIER;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// PostgreSQL's parse_bool: case-insensitive prefixes of true/false/yes/no, "on"/"off" (at least two
/// letters), "1"/"0".
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    match v.as_bytes().first()? {
        b't' if prefix_of("true", 1) => Some(true),
        b'f' if prefix_of("false", 1) => Some(false),
        b'y' if prefix_of("yes", 1) => Some(true),
        b'n' if prefix_of("no", 1) => Some(false),
        b'o' if prefix_of("on", 2) => Some(true),
        b'o' if prefix_of("off", 2) => Some(false),
        b'1' if v.len() == 1 => Some(true),
        b'0' if v.len() == 1 => Some(false),
        _ => None,
    }
}

/// tokio-util adapter over [`decode`], for reading the startup phase from a socket. Leave it (with
/// `Framed::into_parts`) before a TLS handshake: no byte may be buffered past an SSLRequest.
#[derive(Debug, Default, Clone)]
pub struct StartupCodec;

impl Decoder for StartupCodec {
    type Item = StartupPacket;
    type Error = StartupError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
        decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
        match decode(src)? {
            Some(p) => Ok(Some(p)),
            None if src.is_empty() => Ok(None),
            None => Err(StartupError::Incomplete),
        }
    }
}

/// Lets the codec sit in a `Framed` over a socket.
impl From<std::io::Error> for StartupError {
    fn from(e: std::io::Error) -> StartupError {
        StartupError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use postgres_protocol::message::frontend;
    use proptest::prelude::*;

    fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut b).unwrap();
        b
    }

    fn decode_one(mut b: BytesMut) -> Result<StartupPacket, StartupError> {
        let p = decode(&mut b).map(|p| p.expect("complete packet"));
        assert!(p.is_err() || b.is_empty());
        p
    }

    fn packet(code: u32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8 + rest.len() as i32);
        b.put_u32(code);
        b.put_slice(rest);
        b
    }

    #[test]
    fn walreceiver_startup() {
        // What libpq sends for a standby's primary_conninfo (libpqwalreceiver adds replication=true and
        // dbname=replication).
        let p = decode_one(startup_bytes(&[
            ("user", "standby"),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", "walreceiver"),
            ("client_encoding", "UTF8"),
        ]))
        .unwrap();
        let StartupPacket::Startup(s) = p else { panic!("{p:?}") };
        assert_eq!(s.requested, ProtocolVersion::V3_0);
        assert_eq!(s.user, "standby");
        assert_eq!(s.database, "", "a physical walsender has no database");
        assert_eq!(s.replication, ReplicationMode::Physical);
        assert_eq!(s.application_name.as_deref(), Some("walreceiver"));
        assert_eq!(s.parameters.len(), 2);
        assert_eq!(s.negotiation(), None);
        assert_eq!(s.cancel_key_len(), 4);
    }

    #[test]
    fn special_requests() {
        assert_eq!(decode_one(packet(SSL_REQUEST_CODE, b"")).unwrap(), StartupPacket::SslRequest);
        assert_eq!(decode_one(packet(GSSENC_REQUEST_CODE, b"")).unwrap(), StartupPacket::GssEncRequest);
        let mut cancel = 77i32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[9, 9, 9, 9]);
        assert_eq!(
            decode_one(packet(CANCEL_REQUEST_CODE, &cancel)).unwrap(),
            StartupPacket::Cancel { process_id: 77, secret_key: Bytes::from_static(&[9, 9, 9, 9]) }
        );
        assert_eq!(
            decode_one(packet(CANCEL_REQUEST_CODE, &77i32.to_be_bytes())).unwrap_err(),
            StartupError::InvalidCancelKey(0)
        );
    }

    #[test]
    fn protocol_negotiation() {
        let with_version = |v: u32, extra: &[(&str, &str)]| {
            let mut body = BytesMut::new();
            body.put_u32(v);
            for (k, val) in [("user", "u")].iter().chain(extra) {
                body.put_slice(k.as_bytes());
                body.put_u8(0);
                body.put_slice(val.as_bytes());
                body.put_u8(0);
            }
            body.put_u8(0);
            let mut b = BytesMut::new();
            b.put_i32(body.len() as i32 + 4);
            b.put_slice(&body);
            match decode_one(b) {
                Ok(StartupPacket::Startup(s)) => Ok(s),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        // libpq 18 with max_protocol_version=3.2: granted, with a long cancel key.
        let s = with_version(ProtocolVersion::V3_2.0, &[]).unwrap();
        assert_eq!((s.version(), s.negotiation(), s.cancel_key_len()), (ProtocolVersion::V3_2, None, 32));
        // A future 3.5: negotiated down to 3.2.
        let s = with_version(3 << 16 | 5, &[]).unwrap();
        assert_eq!(s.negotiation(), Some((ProtocolVersion::V3_2, &[][..])));
        // Protocol options are listed back as unrecognised, at the version asked for.
        let s = with_version(ProtocolVersion::V3_0.0, &[("_pq_.compression", "on")]).unwrap();
        assert_eq!(s.negotiation(), Some((ProtocolVersion::V3_0, &["_pq_.compression".to_string()][..])));
        assert!(s.parameters.is_empty());
        // Another major: FATAL with PostgreSQL 18's words.
        let e = with_version(2 << 16, &[]).unwrap_err();
        assert_eq!(
            e.report().unwrap().message,
            "unsupported frontend protocol 2.0: server supports 3.0 to 3.2"
        );
        // A second SSLRequest after TLS is, to PostgreSQL, protocol 1234.5679.
        let e = errors::unsupported_protocol(SSL_REQUEST_CODE >> 16, SSL_REQUEST_CODE & 0xffff);
        assert_eq!(e.message, "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.2");
    }

    #[test]
    fn refusals_as_postgresql_words_them() {
        let e = decode_one(startup_bytes(&[("database", "x")])).unwrap_err();
        assert_eq!(e.report().unwrap().message, "no PostgreSQL user name specified in startup packet");
        let e = decode_one(startup_bytes(&[("user", "u"), ("replication", "maybe")])).unwrap_err();
        let r = e.report().unwrap();
        assert_eq!(r.message, "invalid value for parameter \"replication\": \"maybe\"");
        assert_eq!(r.code, "22023");
        // No terminator at the very end.
        let mut b = startup_bytes(&[("user", "u")]);
        let n = b.len();
        b[n - 1] = b'x';
        assert_eq!(decode_one(b).unwrap_err().report().unwrap().message, errors::startup_layout().message);
        assert_eq!(
            decode_one(packet(196608, b"user\0u\0\0junk")).unwrap_err(),
            StartupError::Refused(errors::startup_layout())
        );
        // Lengths PostgreSQL refuses without a word.
        let mut b = BytesMut::from(&[0u8, 0, 0, 7, 0, 0, 0][..]);
        assert_eq!(decode(&mut b).unwrap_err(), StartupError::InvalidLength(7));
        let mut b = BytesMut::from(&[0u8, 0, 0x27, 0x15][..]);
        assert_eq!(decode(&mut b).unwrap_err(), StartupError::InvalidLength(10005));
        assert!(decode(&mut BytesMut::from(&[0x16u8, 3, 1][..])).unwrap_err().report().is_none());
    }

    #[test]
    fn names_and_modes() {
        let s = |params: &[(&str, &str)]| match decode_one(startup_bytes(params)).unwrap() {
            StartupPacket::Startup(s) => s,
            other => panic!("{other:?}"),
        };
        let long = "u".repeat(70);
        let got = s(&[("user", &long)]);
        assert_eq!(got.user.len(), 63);
        assert_eq!(got.database, got.user, "the database defaults to the user name");
        assert_eq!(got.replication, ReplicationMode::Off);
        assert_eq!(s(&[("user", "u"), ("replication", "database")]).replication, ReplicationMode::Logical);
        assert_eq!(s(&[("user", "u"), ("replication", "database"), ("database", "db")]).database, "db");
        assert_eq!(s(&[("user", "u"), ("replication", "off")]).replication, ReplicationMode::Off);
        assert_eq!(s(&[("user", "é".repeat(40).as_str())]).user.len(), 62, "cut at a character boundary");
    }

    #[test]
    fn bools_as_postgresql_parses_them() {
        for t in ["true", "t", "TRU", "yes", "y", "on", "On", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "F", "no", "n", "off", "of", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "o", "2", "truex", "10", " true", "database"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn split_packets_wait_for_the_rest() {
        let whole = startup_bytes(&[("user", "u"), ("replication", "1")]);
        let mut b = BytesMut::new();
        for chunk in whole.chunks(3) {
            assert!(matches!(decode(&mut b), Ok(None)));
            b.extend_from_slice(chunk);
        }
        assert!(matches!(decode(&mut b), Ok(Some(StartupPacket::Startup(_)))));
        let mut codec = StartupCodec;
        let mut partial = BytesMut::from(&whole[..6]);
        assert_eq!(codec.decode_eof(&mut partial).unwrap_err(), StartupError::Incomplete);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = BytesMut::from(&data[..]);
            let _ = decode(&mut b);
        }

        #[test]
        fn arbitrary_bodies_never_panic(code in prop_oneof![Just(196608u32), Just(196610u32), Just(CANCEL_REQUEST_CODE), any::<u32>()],
                                        body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..200)) {
            let _ = decode(&mut packet(code, &body));
        }
    }
}
