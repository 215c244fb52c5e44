//! Compression of WAL segments (gzip, lz4 frame, zstd) into memory, with sync flushes that make
//! everything written so far decodable; and whole-file decompression for scan, restore and verify.
//!
//! The compressor never touches a file: its output accumulates in memory until the caller writes it
//! out. That keeps a failed file write (a full disk) from losing or duplicating compressed bytes: the
//! caller keeps what did not reach the file and retries it.
//!
//! Every method checks the content of a complete file: gzip's CRC32 trailer, and a content checksum in
//! the zstd frame (its checksum flag) and the lz4 frame (`content_checksum`), so a flipped bit in a
//! stored block is refused on decompression instead of being served as WAL. The checksum sits at the
//! end of the stream: an open `.partial` (sync flushes, no end yet) decodes as before, unchecked, and is
//! protected by the WAL records' own CRCs. Files written without a checksum still decode.

use super::error::{Result, WalDirError};
use crate::wal::segment::Compression;
use flate2::write::GzEncoder;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// Default levels, as pg_receivewal uses them (zlib's 6, zstd's 3).
const GZIP_DEFAULT_LEVEL: u32 = 6;

/// Read buffer for decompression.
const READ_CHUNK: usize = 128 * 1024;

enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Lz4(lz4_flex::frame::FrameEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// A streaming compressor whose output collects in memory (see [`Compressor::output`]).
pub struct Compressor {
    encoder: Encoder,
}

impl Compressor {
    /// A compressor for `method` at `level` (the method's default when `None`); `None` for
    /// [`Compression::None`]. lz4 has a single level here (lz4_flex), so its level is not used.
    pub fn new(method: Compression, level: Option<i32>) -> Result<Option<Compressor>> {
        let encoder = match method {
            Compression::None => return Ok(None),
            Compression::Gzip => Encoder::Gzip(GzEncoder::new(Vec::new(), gzip_level(level)?)),
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
                Encoder::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new()))
            }
            Compression::Zstd => {
                let start = |e| WalDirError::io("start zstd compression for", Path::new("(memory)"), e);
                let mut encoder =
                    zstd::stream::write::Encoder::new(Vec::new(), zstd_level(level)?).map_err(start)?;
                encoder.include_checksum(true).map_err(start)?;
                Encoder::Zstd(encoder)
            }
        };
        Ok(Some(Compressor { encoder }))
    }

    /// Compress `data`. Writing into memory cannot fail for lack of space; an error here is a bug
    /// in a codec and is reported as such.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Lz4(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Emit everything compressed so far so that a decoder reading the output up to here gets back
    /// every byte written: a zlib sync flush, an lz4 block boundary, a zstd flush. The stream stays
    /// open (no trailer).
    pub fn sync_flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Compressed bytes produced and not yet taken by the caller. The caller writes them to the file
    /// and removes what reached it.
    pub fn output(&mut self) -> &mut Vec<u8> {
        match &mut self.encoder {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Lz4(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// End the stream (trailer, end mark) and return all output not yet taken.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self.encoder {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(io::Error::from),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

fn gzip_level(level: Option<i32>) -> Result<flate2::Compression> {
    match level {
        None => Ok(flate2::Compression::new(GZIP_DEFAULT_LEVEL)),
        Some(l @ 1..=9) => Ok(flate2::Compression::new(l.unsigned_abs())),
        Some(level) => Err(WalDirError::InvalidCompressionLevel {
            method: Compression::Gzip,
            level,
            allowed: "must be from 1 to 9",
        }),
    }
}

fn zstd_level(level: Option<i32>) -> Result<i32> {
    match level {
        None => Ok(zstd::DEFAULT_COMPRESSION_LEVEL),
        Some(l) if zstd::compression_level_range().contains(&l) => Ok(l),
        Some(level) => Err(WalDirError::InvalidCompressionLevel {
            method: Compression::Zstd,
            level,
            allowed: "outside the range zstd supports",
        }),
    }
}

/// A reader that yields the decompressed contents of `reader` (the bytes as they are for
/// [`Compression::None`]). Concatenated gzip members and zstd/lz4 frames are all decoded.
pub fn decoder<'a, R: Read + Send + 'a>(
    method: Compression,
    reader: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match method {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// How to treat a stream that ends before its end mark.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Truncated {
    /// A complete file: a cut-off stream is an error.
    Reject,
    /// A `.partial` still being written: stop at the cut and keep what decoded.
    Accept,
}

/// Decompress the whole file `path` into `out`; returns the number of bytes written. The stream
/// must be complete; lz4_flex cannot tell an lz4 frame cut at a block boundary from a finished one,
/// so callers compare the length with the segment size as well.
pub fn decompress_to<W: Write + ?Sized>(path: &Path, method: Compression, out: &mut W) -> Result<u64> {
    decode_file(path, method, Truncated::Reject, &mut |chunk| {
        out.write_all(chunk).map_err(|e| WalDirError::io("write decompressed contents of", path, e))
    })
}

/// Decompress the whole file `path` into memory. The stream must be complete.
pub fn decompress_file(path: &Path, method: Compression) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_to(path, method, &mut out)?;
    Ok(out)
}

/// Decompress what can be decoded of `path`, a file that may still be written (a `.partial`):
/// everything up to its last sync flush, without requiring the stream's end.
pub fn decompress_available(path: &Path, method: Compression) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decode_file(path, method, Truncated::Accept, &mut |chunk| {
        out.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(out)
}

/// Uncompressed length of the complete file `path` (decodes it all, keeping nothing).
pub fn decompressed_len(path: &Path, method: Compression) -> Result<u64> {
    decode_file(path, method, Truncated::Reject, &mut |_| Ok(()))
}

/// Decode `path`, handing chunks to `sink`; returns the decoded length.
fn decode_file(
    path: &Path,
    method: Compression,
    truncated: Truncated,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let file = File::open(path).map_err(|e| WalDirError::io("open", path, e))?;
    let mut reader =
        decoder(method, BufReader::new(file)).map_err(|e| WalDirError::io("decompress", path, e))?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if truncated == Truncated::Accept && is_truncation(&e) => break,
            Err(e) => return Err(WalDirError::io("decompress", path, e)),
        };
        sink(&buf[..n])?;
        total = total.saturating_add(n as u64);
    }
    Ok(total)
}

/// True when a decoder error means "the input ended early" rather than "the input is corrupt".
pub fn is_truncation(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return true;
    }
    // The zstd decoder reports a frame cut at its end as a plain error with this text.
    e.to_string().contains("incomplete frame")
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: [Compression; 3] = [Compression::Gzip, Compression::Lz4, Compression::Zstd];

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half compressible text, half noise.
                if (i / 4096) % 2 == 0 {
                    b"walkeeper "[i % 10]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn compress_all(method: Compression, chunks: &[&[u8]], flush_each: bool) -> (Vec<u8>, Compressor) {
        let mut c = Compressor::new(method, None).unwrap().unwrap();
        let mut out = Vec::new();
        for chunk in chunks {
            c.write(chunk).unwrap();
            if flush_each {
                c.sync_flush().unwrap();
            }
            out.append(c.output());
        }
        (out, c)
    }

    #[test]
    fn none_has_no_compressor() {
        assert!(Compressor::new(Compression::None, None).unwrap().is_none());
    }

    #[test]
    fn roundtrip_every_method() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(300_000);
        for method in METHODS {
            let (mut out, c) = compress_all(method, &[&data[..1000], &data[1000..]], false);
            out.extend(c.finish().unwrap());
            let path = dir.path().join(format!("f{}", method.suffix()));
            std::fs::write(&path, &out).unwrap();
            assert_eq!(decompress_file(&path, method).unwrap(), data, "{method}");
            assert_eq!(decompressed_len(&path, method).unwrap(), data.len() as u64);
        }
    }

    #[test]
    fn sync_flush_makes_every_byte_decodable() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(200_000);
        for method in METHODS {
            let path = dir.path().join(format!("p{}", method.suffix()));
            let (out, _open) = compress_all(method, &[&data[..77], &data[77..150_001]], true);
            std::fs::write(&path, &out).unwrap();
            assert_eq!(decompress_available(&path, method).unwrap(), &data[..150_001], "{method}");
            // A complete-file read refuses the unfinished stream (lz4_flex takes a frame cut at a
            // block boundary for a finished one: callers check the decoded length).
            if method != Compression::Lz4 {
                assert!(decompress_file(&path, method).is_err(), "{method}");
            }
        }
    }

    #[test]
    fn corrupt_input_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for method in METHODS {
            let path = dir.path().join(format!("bad{}", method.suffix()));
            std::fs::write(&path, b"this is not compressed at all").unwrap();
            let err = decompress_available(&path, method).unwrap_err().to_string();
            assert!(err.starts_with(&format!("could not decompress \"{}\"", path.display())), "{err}");
        }
    }

    #[test]
    fn uncompressed_passes_through_and_missing_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(decompress_file(&path, Compression::None).unwrap(), b"abc");
        let err = decompress_file(&dir.path().join("nope"), Compression::Gzip).unwrap_err().to_string();
        assert!(err.starts_with("could not open"), "{err}");
    }

    /// Finding 2 of issue 11: one flipped bit anywhere in a complete compressed segment is either
    /// refused on decompression or decodes to the original bytes (a flip in a field that does not change
    /// the content) — never to different WAL. gzip has its CRC32 trailer; zstd and lz4 carry a content
    /// checksum. Flips land all over the file, including inside stored (incompressible) blocks, which no
    /// decoder notices without a checksum.
    #[test]
    fn a_flipped_bit_never_decodes_to_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(200_000);
        for method in METHODS {
            let (mut out, c) = compress_all(method, &[&data[..50_000], &data[50_000..]], true);
            out.extend(c.finish().unwrap());
            let path = dir.path().join(format!("flip{}", method.suffix()));
            let mut refused = 0;
            for (n, at) in (0..out.len()).step_by(89).enumerate() {
                let mut bad = out.clone();
                bad[at] ^= 1 << (n % 8);
                std::fs::write(&path, &bad).unwrap();
                match decompress_file(&path, method) {
                    Err(_) => refused += 1,
                    Ok(content) => {
                        assert!(content == data, "{method}: flip at byte {at} decoded to other content")
                    }
                }
            }
            assert!(refused > 0, "{method}");
        }
    }

    #[test]
    fn levels_are_checked() {
        assert!(Compressor::new(Compression::Gzip, Some(9)).is_ok());
        let err = Compressor::new(Compression::Gzip, Some(12)).err().unwrap().to_string();
        assert_eq!(err, "invalid gzip compression level 12: must be from 1 to 9");
        assert!(Compressor::new(Compression::Zstd, Some(19)).is_ok());
        assert!(Compressor::new(Compression::Zstd, Some(1000)).is_err());
        assert!(Compressor::new(Compression::Lz4, Some(5)).is_ok());
    }
}
