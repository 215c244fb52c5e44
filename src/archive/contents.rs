//! Reading what a segment file holds, from any [`Store`]: its decompressed contents as a stream, the bytes
//! at its start (where the long page header is), its decoded length. The one read-until-full loop of the
//! archive's readers lives here too.
//!
//! Errors are [`StoreError`]s naming the file: "could not read" for the store, "could not decompress" for a
//! compressed stream that does not decode. A compressed `.partial` is an open stream: ending before its end
//! mark is expected and gives what decoded so far.

use super::compress;
use super::store::{Entry, Store, StoreError};
use crate::wal::page::{self, LongHeader, PageError};
use crate::wal::segment::Compression;
use std::io::{self, BufReader, Read};

/// Bytes read per step from a segment: a multiple of the page size, large enough that per-call costs vanish.
pub const CHUNK: usize = 4 << 20;

/// Read from `r` until `buf` is full or the input ends: the bytes read, and the error that stopped it.
pub fn fill(r: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// The decompressed contents of `file`, as a stream.
pub fn open(
    store: &dyn Store,
    file: &str,
    compression: Compression,
) -> Result<Box<dyn Read + Send>, StoreError> {
    decode(store, file, compression, store.open(file)?)
}

/// [`open`], with the store's entry of `file` as the read found it ([`Store::open_entry`]).
pub fn open_entry(
    store: &dyn Store,
    file: &str,
    compression: Compression,
) -> Result<(Entry, Box<dyn Read + Send>), StoreError> {
    let (entry, raw) = store.open_entry(file)?;
    Ok((entry, decode(store, file, compression, raw)?))
}

/// The decompressed stream of `raw`, the contents of `file`.
fn decode(
    store: &dyn Store,
    file: &str,
    compression: Compression,
    raw: Box<dyn Read + Send>,
) -> Result<Box<dyn Read + Send>, StoreError> {
    if compression == Compression::None {
        return Ok(raw);
    }
    compress::decoder(compression, BufReader::with_capacity(256 * 1024, raw))
        .map_err(|e| read_error(store, file, compression, e))
}

/// A failed read of `file`: a store error for a plain file, a decompression error for a compressed one.
pub fn read_error(store: &dyn Store, file: &str, compression: Compression, e: io::Error) -> StoreError {
    let op = if compression == Compression::None { "read" } else { "decompress" };
    StoreError::Io { op, location: store.location_of(file), source: e.into() }
}

/// True when a read error of a `.partial` (`partial`) only means that its open compressed stream ends here.
pub fn is_open_end(partial: bool, compression: Compression, e: &io::Error) -> bool {
    partial && compression != Compression::None && compress::is_truncation(e)
}

/// Up to `len` first bytes of the decompressed contents (fewer when there are fewer).
pub fn read_head(
    store: &dyn Store,
    file: &str,
    compression: Compression,
    partial: bool,
    len: usize,
) -> Result<Vec<u8>, StoreError> {
    if compression == Compression::None {
        return store.read_range(file, 0, len);
    }
    let mut reader = open(store, file, compression)?;
    let mut head = vec![0u8; len];
    let (n, err) = fill(&mut reader, &mut head);
    match err {
        Some(e) if !is_open_end(partial, compression, &e) => Err(read_error(store, file, compression, e)),
        _ => {
            head.truncate(n);
            Ok(head)
        }
    }
}

/// The long page header at the start of `file`: `Ok(Err(_))` when the file holds none (a fresh `.partial`
/// holds zeros), `Err(_)` when the file cannot be read.
pub fn read_header(
    store: &dyn Store,
    file: &str,
    compression: Compression,
    partial: bool,
) -> Result<Result<LongHeader, PageError>, StoreError> {
    Ok(page::parse(&read_head(store, file, compression, partial, page::LEN)?))
}

/// The length of the decompressed contents (decodes them all, keeping nothing).
pub fn decoded_len(
    store: &dyn Store,
    file: &str,
    compression: Compression,
    partial: bool,
) -> Result<u64, StoreError> {
    let mut reader = open(store, file, compression)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let (n, err) = fill(&mut reader, &mut buf);
        total = total.saturating_add(n as u64);
        match err {
            Some(e) if is_open_end(partial, compression, &e) => return Ok(total),
            Some(e) => return Err(read_error(store, file, compression, e)),
            None if n < buf.len() => return Ok(total),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::Compressor;
    use crate::archive::store::LocalStore;

    #[test]
    fn heads_and_lengths_of_every_form() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        store.put_replace("plain", &data).unwrap();
        assert_eq!(read_head(&store, "plain", Compression::None, false, 40).unwrap(), data[..40]);
        assert_eq!(decoded_len(&store, "plain", Compression::None, false).unwrap(), 300_000);
        for method in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            // The first 1000 bytes as an open stream (what a .partial holds), then the whole stream.
            let mut c = Compressor::new(method, None).unwrap().unwrap();
            c.write(&data[..1000]).unwrap();
            c.sync_flush().unwrap();
            store.put_replace("open", c.output()).unwrap();
            c.write(&data[1000..]).unwrap();
            store.put_replace("whole", &c.finish().unwrap()).unwrap();
            assert_eq!(read_head(&store, "whole", method, false, 40).unwrap(), data[..40], "{method}");
            assert_eq!(decoded_len(&store, "whole", method, false).unwrap(), 300_000, "{method}");
            // An open stream: complete only as a .partial.
            assert_eq!(decoded_len(&store, "open", method, true).unwrap(), 1000, "{method}");
            assert_eq!(read_head(&store, "open", method, true, 5000).unwrap(), data[..1000], "{method}");
            // Not compressed at all.
            store.put_replace("junk", b"certainly not compressed data").unwrap();
            let err = decoded_len(&store, "junk", method, true).unwrap_err().to_string();
            assert!(err.starts_with("could not decompress \""), "{method}: {err}");
        }
        let err = read_head(&store, "missing", Compression::Zstd, false, 40).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}
