//! Reading WAL out of the archive's segment files, in order, for one stream: the file serving each segment
//! is found in the catalog (a complete segment in any compression, else a `.partial` of its timeline's
//! trailing run), read at increasing offsets — plain files by ranges, compressed ones through one
//! decompressor kept open between reads — and looked up again when it has been renamed meanwhile (the
//! receiver completes a `.partial` while it is being served).
//!
//! Synchronous, like every store read: the walsender calls it off the async threads. What the bytes are
//! worth is the caller's business (the walsender's own decoder checks every byte it sends).

use crate::archive::catalog::{Catalog, SegFile, SegmentSize};
use crate::archive::contents;
use crate::archive::store::{Store, StoreError};
use crate::wal::segment::{Compression, SegmentId, TimeLineId};
use crate::wal::Lsn;
use std::io::Read;
use std::sync::Arc;

/// Why WAL could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No file of the archive serves this segment (never archived, or removed since).
    #[error("no file of the archive holds segment {0}")]
    Missing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One segment file being read.
pub(crate) struct SegmentFile {
    file: SegFile,
    /// A compressed file's decompressor, positioned at `pos` (decompressed bytes already read).
    stream: Option<Box<dyn Read + Send>>,
    pos: u64,
}

impl SegmentFile {
    pub(crate) fn new(file: SegFile) -> SegmentFile {
        SegmentFile { file, stream: None, pos: 0 }
    }

    /// Up to `buf.len()` bytes at decompressed offset `offset`; fewer where the file's contents end (an
    /// open compressed `.partial` ends where its last flush did).
    pub(crate) fn read_at(
        &mut self,
        store: &dyn Store,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, StoreError> {
        let f = &self.file;
        if f.compression == Compression::None {
            let data = store.read_range(&f.file, offset, buf.len())?;
            buf[..data.len()].copy_from_slice(&data);
            return Ok(data.len());
        }
        if self.stream.is_none() || offset < self.pos {
            self.stream = Some(contents::open(store, &f.file, f.compression)?);
            self.pos = 0;
        }
        let Some(stream) = self.stream.as_mut() else { return Ok(0) };
        // Skip forward to `offset` (only after a re-open: reads are sequential).
        let mut scratch = vec![0u8; contents::CHUNK.min(1 << 20)];
        while self.pos < offset {
            let want = usize::try_from(offset - self.pos).unwrap_or(usize::MAX).min(scratch.len());
            let (n, err) = contents::fill(stream, &mut scratch[..want]);
            self.pos += n as u64;
            if let Some(e) = err {
                return self.end_or_fail(store, e).map(|()| 0);
            }
            if n < want {
                self.stream = None;
                return Ok(0);
            }
        }
        let (n, err) = contents::fill(stream, buf);
        self.pos += n as u64;
        match err {
            Some(e) => self.end_or_fail(store, e).map(|()| n),
            None => {
                if n < buf.len() {
                    // The end of the stream: read again from a fresh decompressor next time.
                    self.stream = None;
                }
                Ok(n)
            }
        }
    }

    /// A read error: the open end of a compressed `.partial` is where its data stops for now (the
    /// decompressor cannot go on from there: the next read opens the file again); anything else fails.
    fn end_or_fail(&mut self, store: &dyn Store, e: std::io::Error) -> Result<(), StoreError> {
        self.stream = None;
        if contents::is_open_end(self.file.partial, self.file.compression, &e) {
            return Ok(());
        }
        Err(contents::read_error(store, &self.file.file, self.file.compression, e))
    }
}

/// Reads the WAL of one stream, segment after segment.
pub struct WalReader {
    store: Arc<dyn Store>,
    segment_size: u32,
    catalog: Option<Catalog>,
    open: Option<SegmentFile>,
}

impl WalReader {
    pub fn new(store: Arc<dyn Store>, segment_size: u32) -> WalReader {
        WalReader { store, segment_size, catalog: None, open: None }
    }

    /// Up to `buf.len()` bytes of WAL from `from`, within its segment, read from the file of the first of
    /// `timelines` that has one for that segment (the walsender serves the segment holding a switch point
    /// from the new timeline's file, as PostgreSQL does, and falls back to the old timeline's copy). Fewer
    /// bytes where the file ends; 0 when it holds nothing at `from` yet.
    pub fn read(&mut self, timelines: &[TimeLineId], from: Lsn, buf: &mut [u8]) -> Result<usize, ReadError> {
        let room = u64::from(self.segment_size) - from.segment_offset(self.segment_size);
        let len = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let number = from.segment_number(self.segment_size);
        let offset = from.segment_offset(self.segment_size);
        for attempt in 0..2 {
            let file = self.file_for(timelines, number, attempt > 0)?;
            if self.open.as_ref().is_none_or(|o| o.file.file != file.file) {
                self.open = Some(SegmentFile::new(file));
            }
            let Some(open) = self.open.as_mut() else { continue };
            match open.read_at(self.store.as_ref(), offset, &mut buf[..len]) {
                Ok(n) => return Ok(n),
                // Renamed since the catalog was read (a `.partial` completed): look again, once.
                Err(e) if e.is_not_found() && attempt == 0 => self.open = None,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ReadError::Missing(SegmentId { timeline: timelines[0], number }.file_name(self.segment_size)))
    }

    /// The file serving segment `number` on the first of `timelines` that has one; the catalog is read
    /// again when it has none (or when `fresh` asks for it).
    fn file_for(&mut self, timelines: &[TimeLineId], number: u64, fresh: bool) -> Result<SegFile, ReadError> {
        if let Some(open) = &self.open {
            let id = open.file.id;
            // Keep reading the file already open while it serves this segment.
            if !fresh && id.number == number && timelines.contains(&id.timeline) {
                return Ok(open.file.clone());
            }
        }
        for reread in [fresh, true] {
            if reread || self.catalog.is_none() {
                self.catalog =
                    Some(Catalog::read(self.store.as_ref(), SegmentSize::Known(self.segment_size))?);
            }
            let catalog = self.catalog.as_ref().expect("read above");
            let found =
                timelines.iter().find_map(|&timeline| catalog.find(SegmentId { timeline, number }, true));
            if let Some(f) = found {
                return Ok(f.clone());
            }
            if reread {
                break;
            }
        }
        let first = timelines.first().copied().unwrap_or(1);
        Err(ReadError::Missing(SegmentId { timeline: first, number }.file_name(self.segment_size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::Compressor;
    use crate::archive::store::LocalStore;

    const SEG: u32 = 1 << 20;

    fn data(seed: u8) -> Vec<u8> {
        (0..SEG).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn reads_plain_and_compressed_files_at_increasing_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path()));
        let one = data(1);
        let two = data(2);
        std::fs::write(tmp.path().join("000000010000000000000001"), &one).unwrap();
        let mut c = Compressor::new(Compression::Zstd, None).unwrap().unwrap();
        c.write(&two).unwrap();
        std::fs::write(tmp.path().join("000000010000000000000002.zst"), c.finish().unwrap()).unwrap();
        let mut r = WalReader::new(store, SEG);
        let mut buf = vec![0u8; 300_000];
        let n = r.read(&[1], Lsn(u64::from(SEG) + 1000), &mut buf).unwrap();
        assert_eq!(&buf[..n], &one[1000..301_000]);
        // The end of the segment bounds a read.
        let n = r.read(&[1], Lsn(2 * u64::from(SEG) - 10), &mut buf).unwrap();
        assert_eq!(&buf[..n], &one[one.len() - 10..]);
        for at in [0usize, 300_000, 600_000, 100] {
            let n = r.read(&[1], Lsn(2 * u64::from(SEG) + at as u64), &mut buf).unwrap();
            assert_eq!(&buf[..n], &two[at..at + n], "at {at}");
            assert_eq!(n, buf.len().min(two.len() - at));
        }
        let err = r.read(&[1], Lsn(3 * u64::from(SEG)), &mut buf).unwrap_err();
        assert_eq!(err.to_string(), "no file of the archive holds segment 000000010000000000000003");
    }

    #[test]
    fn prefers_the_first_timeline_and_follows_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path()));
        std::fs::write(tmp.path().join("000000010000000000000003.partial"), data(1)).unwrap();
        let mut r = WalReader::new(store, SEG);
        let mut buf = vec![0u8; 16];
        let at = Lsn(3 * u64::from(SEG));
        r.read(&[2, 1], at, &mut buf).unwrap();
        assert_eq!(buf[..], data(1)[..16], "the old timeline's copy while the new one has none");
        std::fs::write(tmp.path().join("000000020000000000000003"), data(2)).unwrap();
        let mut r2 = WalReader::new(r.store.clone(), SEG);
        r2.read(&[2, 1], at, &mut buf).unwrap();
        assert_eq!(buf[..], data(2)[..16], "the new timeline's file first");
        // The .partial being read gets its final name: found again.
        std::fs::rename(
            tmp.path().join("000000010000000000000003.partial"),
            tmp.path().join("000000010000000000000003"),
        )
        .unwrap();
        r.read(&[1], Lsn(at.0 + 16), &mut buf).unwrap();
        assert_eq!(buf[..], data(1)[16..32]);
    }

    #[test]
    fn an_open_compressed_partial_ends_where_it_was_flushed() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path()));
        let wal = data(3);
        let name = tmp.path().join("000000010000000000000001.lz4.partial");
        let mut c = Compressor::new(Compression::Lz4, None).unwrap().unwrap();
        c.write(&wal[..5000]).unwrap();
        c.sync_flush().unwrap();
        std::fs::write(&name, c.output()).unwrap();
        let mut r = WalReader::new(store, SEG);
        let mut buf = vec![0u8; 8000];
        let at = Lsn(u64::from(SEG));
        assert_eq!(r.read(&[1], at, &mut buf).unwrap(), 5000);
        assert_eq!(buf[..5000], wal[..5000]);
        assert_eq!(r.read(&[1], Lsn(at.0 + 5000), &mut buf).unwrap(), 0, "nothing more yet");
        // More is written and flushed: the next read goes on from there.
        c.write(&wal[5000..9000]).unwrap();
        c.sync_flush().unwrap();
        std::fs::write(&name, c.output()).unwrap();
        assert_eq!(r.read(&[1], Lsn(at.0 + 5000), &mut buf).unwrap(), 4000);
        assert_eq!(buf[..4000], wal[5000..9000]);
    }
}
