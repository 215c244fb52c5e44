//! The CopyBoth sub-protocol from the walsender's side: XLogData ('w') and primary keepalive ('k') out,
//! standby status update ('r') and hot standby feedback ('h') in. Times are PostgreSQL timestamps
//! (microseconds since 2000-01-01); [`pg_now`] gives the current one.
//!
//! The client side of the same messages is [`crate::protocol::replication`].

use super::backend::EncodeError;
use super::errors;
use crate::protocol::replication::{now_unix_us, PG_EPOCH_OFFSET_US};
use crate::protocol::ServerError;
use crate::wal::Lsn;
use bytes::{Buf, BufMut, BytesMut};

/// PostgreSQL's MAX_SEND_SIZE: a walsender sends at most 128 kB of WAL per XLogData.
pub const MAX_SEND_SIZE: usize = 128 * 1024;

/// The current time as a PostgreSQL timestamp.
pub fn pg_now() -> i64 {
    now_unix_us().saturating_sub(PG_EPOCH_OFFSET_US)
}

/// One CopyData holding XLogData: WAL bytes `data` starting at `start`, the server's end of WAL, the send
/// time. Written header and data in one go (no intermediate copy). At most [`MAX_SEND_SIZE`] bytes of data.
pub fn xlog_data(
    start: Lsn,
    wal_end: Lsn,
    send_time: i64,
    data: &[u8],
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    const WHAT: &str = "XLogData";
    if data.len() > MAX_SEND_SIZE {
        return Err(EncodeError { what: WHAT, reason: "more than 128 kB of WAL in one message" });
    }
    if start.checked_add(data.len() as u64).is_none() {
        return Err(EncodeError { what: WHAT, reason: "the data runs past the end of the LSN space" });
    }
    let body = 1 + 8 + 8 + 8 + data.len();
    buf.reserve(5 + body);
    buf.put_u8(b'd');
    // At most 128 kB + 29 bytes: fits.
    buf.put_i32(4 + body as i32);
    buf.put_u8(b'w');
    buf.put_u64(start.0);
    buf.put_u64(wal_end.0);
    buf.put_i64(send_time);
    buf.put_slice(data);
    Ok(())
}

/// One CopyData holding a primary keepalive: the type byte, then exactly the 17 bytes walreceivers insist
/// on (end of WAL, send time, whether the standby should reply at once).
pub fn keepalive(wal_end: Lsn, send_time: i64, reply_requested: bool, buf: &mut BytesMut) {
    buf.reserve(5 + 18);
    buf.put_u8(b'd');
    buf.put_i32(4 + 18);
    buf.put_u8(b'k');
    buf.put_u64(wal_end.0);
    buf.put_i64(send_time);
    buf.put_u8(u8::from(reply_requested));
}

/// A CopyData payload from the standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyMessage {
    StatusUpdate(StatusUpdate),
    HotStandbyFeedback(HotStandbyFeedback),
}

/// 'r': how far the standby has written, flushed and replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub send_time: i64,
    pub reply_requested: bool,
}

/// 'h': the standby's oldest running transaction ids (0 when it has none to report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub send_time: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

/// Reads a standby's CopyData payload as walsender.c does: short messages are protocol violations, bytes
/// after the known fields are ignored, an unknown type ends the connection (PostgreSQL logs it and exits
/// without a reply; the error here says what to log).
pub fn parse_standby_message(mut body: &[u8]) -> Result<StandbyMessage, ServerError> {
    let short = || errors::error(errors::PROTOCOL_VIOLATION, "insufficient data left in message");
    match body.first().copied() {
        Some(b'r') if body.len() >= 34 => {
            body.advance(1);
            Ok(StandbyMessage::StatusUpdate(StatusUpdate {
                write: Lsn(body.get_u64()),
                flush: Lsn(body.get_u64()),
                apply: Lsn(body.get_u64()),
                send_time: body.get_i64(),
                reply_requested: body.get_u8() != 0,
            }))
        }
        Some(b'h') if body.len() >= 25 => {
            body.advance(1);
            Ok(StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
                send_time: body.get_i64(),
                xmin: body.get_u32(),
                xmin_epoch: body.get_u32(),
                catalog_xmin: body.get_u32(),
                catalog_xmin_epoch: body.get_u32(),
            }))
        }
        Some(b'r' | b'h') => Err(short()),
        Some(t) => Err(errors::fatal(
            errors::PROTOCOL_VIOLATION,
            format!("unexpected message type \"{}\"", char::from(t).escape_default()),
        )),
        None => Err(short()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::BackendCodec;
    use crate::protocol::messages::{self, Backend};
    use crate::protocol::replication::{parse_stream_message, standby_status_update, StreamMessage};
    use bytes::Bytes;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    fn copy_payload(mut buf: BytesMut) -> Bytes {
        let frame = BackendCodec::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        match messages::decode(frame).unwrap() {
            Backend::CopyData(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xlog_data_and_keepalive_read_back_on_the_client_side() {
        let mut b = BytesMut::new();
        xlog_data(Lsn(0x1000), Lsn(0x2000), 42, b"wal bytes", &mut b).unwrap();
        assert_eq!(
            parse_stream_message(copy_payload(b)).unwrap(),
            StreamMessage::XLogData {
                start: Lsn(0x1000),
                wal_end: Lsn(0x2000),
                send_time: 42,
                data: Bytes::from_static(b"wal bytes")
            }
        );
        let mut b = BytesMut::new();
        keepalive(Lsn(0x3000), 7, true, &mut b);
        let payload = copy_payload(b);
        // Walreceivers insist on exactly 17 bytes after the type byte.
        assert_eq!(payload.len(), 1 + 17);
        assert_eq!(
            parse_stream_message(payload).unwrap(),
            StreamMessage::Keepalive { wal_end: Lsn(0x3000), send_time: 7, reply_requested: true }
        );
        let mut b = BytesMut::new();
        assert!(xlog_data(Lsn(0), Lsn(0), 0, &vec![0; MAX_SEND_SIZE + 1], &mut b).is_err());
        assert!(xlog_data(Lsn(u64::MAX), Lsn(0), 0, b"x", &mut b).is_err());
        assert!(b.is_empty());
        xlog_data(Lsn(0), Lsn(0), 0, &vec![0; MAX_SEND_SIZE], &mut b).unwrap();
    }

    #[test]
    fn standby_messages() {
        let r = standby_status_update(Lsn(1), Lsn(2), Lsn(3), PG_EPOCH_OFFSET_US + 9, true);
        assert_eq!(
            parse_standby_message(&r).unwrap(),
            StandbyMessage::StatusUpdate(StatusUpdate {
                write: Lsn(1),
                flush: Lsn(2),
                apply: Lsn(3),
                send_time: 9,
                reply_requested: true
            })
        );
        let mut h = vec![b'h'];
        h.extend_from_slice(&5i64.to_be_bytes());
        for v in [100u32, 1, 90, 1] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            parse_standby_message(&h).unwrap(),
            StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
                send_time: 5,
                xmin: 100,
                xmin_epoch: 1,
                catalog_xmin: 90,
                catalog_xmin_epoch: 1
            })
        );
        assert_eq!(parse_standby_message(&h[..24]).unwrap_err().message, "insufficient data left in message");
        assert_eq!(parse_standby_message(b"").unwrap_err().code, "08P01");
        let e = parse_standby_message(b"x123").unwrap_err();
        assert_eq!((e.severity.as_str(), e.message.as_str()), ("FATAL", "unexpected message type \"x\""));
        assert!(pg_now() > 0);
    }

    proptest! {
        #[test]
        fn arbitrary_standby_messages_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_standby_message(&body);
        }
    }
}
