//! Framing of backend messages: a one-byte tag and a 4-byte big-endian length (which counts itself),
//! bounded by a maximum message size so a hostile or broken server cannot make us allocate without limit.
//! Also passes pre-encoded frontend messages through unchanged on the write side.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default bound on one backend message. The walsender sends at most 128 KiB of WAL per message and
/// replication command results are small; 64 MiB leaves room for large history files and error texts.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// One backend message: its type byte and its body (without tag and length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A message type byte as messages show it: `'R'`, or `0x01` when it is not a printable character.
pub fn type_byte(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("{tag:#04x}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("server sent a message of {len} bytes (type {}), more than the limit of {max} bytes", type_byte(*tag))]
    TooLarge { tag: u8, len: u64, max: usize },
    #[error("server sent a message with an invalid length {len} (type {})", type_byte(*tag))]
    BadLength { tag: u8, len: i32 },
    #[error("connection closed by the server in the middle of a message")]
    Truncated,
    #[error("{}", os_error(.0))]
    Io(#[from] std::io::Error),
}

/// An OS error's text without Rust's " (os error N)" suffix, as libpq and PostgreSQL's tools print it.
pub fn os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// tokio-util codec for backend frames.
#[derive(Debug, Clone)]
pub struct BackendCodec {
    max_message: usize,
}

impl BackendCodec {
    pub fn new(max_message: usize) -> Self {
        BackendCodec { max_message }
    }
}

impl Default for BackendCodec {
    fn default() -> Self {
        BackendCodec::new(DEFAULT_MAX_MESSAGE)
    }
}

impl Decoder for BackendCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 5 {
            return Ok(None);
        }
        let tag = src[0];
        let len = i32::from_be_bytes([src[1], src[2], src[3], src[4]]);
        if len < 4 {
            return Err(FrameError::BadLength { tag, len });
        }
        // len ≥ 4 here, so the cast is lossless.
        let body_len = len as usize - 4;
        if body_len > self.max_message {
            return Err(FrameError::TooLarge { tag, len: len as u64, max: self.max_message });
        }
        let total = 5 + body_len;
        if src.len() < total {
            // Reserve what the rest of this message needs (bounded above), so reads fill it in few calls.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(5);
        let body = src.split_to(body_len).freeze();
        Ok(Some(Frame { tag, body }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

/// Frontend messages are built with `postgres_protocol::message::frontend` into a buffer; this sends it as is.
impl Encoder<BytesMut> for BackendCodec {
    type Error = FrameError;

    fn encode(&mut self, item: BytesMut, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_whole_and_split_messages() {
        let mut codec = BackendCodec::default();
        let mut buf = BytesMut::new();
        let wire = [frame(b'Z', b"I"), frame(b'd', b"hello")].concat();
        buf.extend_from_slice(&wire[..3]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&wire[3..8]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame { tag: b'Z', body: Bytes::from_static(b"I") })
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&wire[8..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().body, Bytes::from_static(b"hello"));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut codec = BackendCodec::new(10);
        let mut buf = BytesMut::from(&[b'E', 0, 0, 0, 3][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::BadLength { len: 3, .. })));
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(err.to_string().contains("more than the limit of 10 bytes"), "{err}");
    }

    #[test]
    fn eof_mid_message_is_an_error() {
        let mut codec = BackendCodec::default();
        let mut buf = BytesMut::from(&frame(b'd', b"abc")[..5]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(FrameError::Truncated)));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
            let mut codec = BackendCodec::new(max);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn chunking_does_not_change_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut in 1usize..17,
        ) {
            let wire: Vec<u8> = bodies.iter().flat_map(|b| frame(b'd', b)).collect();
            let mut codec = BackendCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    got.push(f.body.to_vec());
                }
            }
            prop_assert_eq!(got, bodies);
        }
    }
}
