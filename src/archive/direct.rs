//! Sequential writes that bypass the page cache (`O_DIRECT`). Bytes are staged in a block-aligned buffer
//! and written from it in whole blocks; the last, partial block is written padded with zeros (what a
//! freshly preallocated segment holds past its data anyway) or, in a file that already had contents,
//! padded with those contents, and rewritten in place as it fills. Where the file system refuses
//! `O_DIRECT`, the same staged writes go through the page cache instead.
//!
//! Why: a WAL archive is written once and read rarely. Through the page cache every 4 kB of WAL costs a
//! newly allocated page, a copy into it and a writeback later (and pushes the database's own pages out of
//! the host's cache); written directly, it costs one copy into this buffer and the device transfer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Alignment of file offsets, lengths and memory for `O_DIRECT`: the page size, which covers disks
/// with 512-byte and 4 kB logical blocks. A device that needs more makes the first write fail with
/// `EINVAL`, and the writer falls back to the page cache.
const BLOCK: usize = 4096;

/// A zeroed heap buffer whose usable part starts on a [`BLOCK`] boundary (no `unsafe`: a little
/// over-allocation, then the aligned window).
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` usable bytes; `len` is rounded up to a whole number of blocks.
    fn zeroed(len: usize) -> AlignedBuf {
        let len = len.max(1).next_multiple_of(BLOCK);
        let storage = vec![0u8; len + BLOCK];
        let start = (BLOCK - storage.as_ptr() as usize % BLOCK) % BLOCK;
        AlignedBuf { storage, start, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Turn `O_DIRECT` on or off for an open file. Fails with `EINVAL` where the file system does not
/// support it.
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if wanted != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stages sequential writes to one file and writes them in whole aligned blocks.
///
/// Invariant: `base` is a multiple of `BLOCK`; `buf[..len]` holds the file's bytes from `base` on as
/// they must end up (only the first block of it can already be in the file: the partial block kept by
/// the last flush); `dirty` says some of it is not. Bytes of the file past `base + len` are never
/// changed, except to zeros in a file that was all zeros there.
pub struct StagedWriter {
    buf: AlignedBuf,
    base: u64,
    len: usize,
    dirty: bool,
    direct: bool,
    /// The file had contents before (an old `.partial` being rewritten): the padding of a partial block
    /// is read from the file, so that old bytes past the new data stay as they were until overwritten.
    preserve_tail: bool,
    /// `buf[len..padding_known]` already holds what the file must keep past the data (the padding of
    /// the last flush), so flushing again inside the same block neither reads nor zeroes it again.
    padding_known: usize,
}

impl StagedWriter {
    /// Stage writes to `file` starting at offset 0, through a buffer of `capacity` bytes (rounded up to
    /// whole blocks). Turns `O_DIRECT` on for `file` if the file system allows it. `preserve_tail`: the
    /// file may hold data that must survive past what is written (else it is zeros there).
    pub fn new(file: &File, capacity: usize, preserve_tail: bool) -> StagedWriter {
        let direct = set_direct(file, true).is_ok();
        StagedWriter {
            buf: AlignedBuf::zeroed(capacity),
            base: 0,
            len: 0,
            dirty: false,
            direct,
            preserve_tail,
            padding_known: 0,
        }
    }

    /// Whether writes currently bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// True when every staged byte is in the file.
    fn is_clean(&self) -> bool {
        !self.dirty
    }

    /// Append `data` after the bytes staged so far. Writes to the file only when the buffer is full. On
    /// error returns how many bytes of `data` were staged before it; the rest can be appended again.
    pub fn append(&mut self, file: &File, mut data: &[u8]) -> Result<(), (usize, io::Error)> {
        let mut taken = 0;
        while !data.is_empty() {
            if self.len == self.buf.len() {
                self.write_full_buffer(file).map_err(|e| (taken, e))?;
            }
            let n = (self.buf.len() - self.len).min(data.len());
            self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            self.dirty |= n > 0;
            taken += n;
            data = &data[n..];
        }
        Ok(())
    }

    /// Write every staged byte to the file (the partial last block padded with zeros) and keep that
    /// partial block staged, so the next bytes complete it in place. On error nothing moves: the call
    /// can be repeated.
    pub fn flush(&mut self, file: &File) -> io::Result<()> {
        if self.is_clean() {
            return Ok(());
        }
        let padded = self.len.next_multiple_of(BLOCK);
        self.pad_last_block(file, padded)?;
        self.write_blocks(file, padded)?;
        // Keep the partial block, with its padding, at the front.
        let keep_from = self.len - self.len % BLOCK;
        self.buf.copy_within(keep_from..padded, 0);
        self.base += keep_from as u64;
        self.len -= keep_from;
        self.dirty = false;
        self.padding_known = padded - keep_from;
        Ok(())
    }

    /// Fill `buf[len..padded]`, the rest of the partial last block, with what the file must keep there.
    fn pad_last_block(&mut self, file: &File, padded: usize) -> io::Result<()> {
        if padded <= self.padding_known.max(self.len) {
            return Ok(());
        }
        if !self.preserve_tail {
            self.buf[self.len..padded].fill(0);
            return Ok(());
        }
        // Read the whole block (direct reads need alignment too) and take its tail. The file is as long
        // as the segment, so the block is all there.
        let block_start = padded - BLOCK;
        let at = self.base + block_start as u64;
        let mut block = AlignedBuf::zeroed(BLOCK);
        if let Err(e) = file.read_exact_at(&mut block, at) {
            // Refused, or a short direct read left an unaligned rest: read it through the cache.
            if !(self.direct && e.raw_os_error() == Some(libc::EINVAL)) {
                return Err(e);
            }
            self.fall_back(file, &e)?;
            file.read_exact_at(&mut block, at)?;
        }
        let from = self.len - block_start;
        self.buf[self.len..padded].copy_from_slice(&block[from..]);
        Ok(())
    }

    /// The buffer is full (a whole number of blocks): write it and start over empty right after it.
    fn write_full_buffer(&mut self, file: &File) -> io::Result<()> {
        self.write_blocks(file, self.len)?;
        self.base += self.len as u64;
        self.len = 0;
        self.dirty = false;
        self.padding_known = 0;
        Ok(())
    }

    /// Write `buf[..to]` (`to` a block multiple) at its place in the file, retrying short writes. The
    /// first block is rewritten even when it is already there: it is the partial block of the last flush.
    fn write_blocks(&mut self, file: &File, to: usize) -> io::Result<()> {
        let mut done = 0;
        while done < to {
            match file.write_at(&self.buf[done..to], self.base + done as u64) {
                Ok(n) => {
                    // A short direct write still ends on a block boundary; if it somehow did not,
                    // rewrite from the last whole block.
                    let step = if n == to - done || !self.direct { n } else { n - n % BLOCK };
                    if step == 0 {
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress"));
                    }
                    done += step;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.fall_back(file, &e)?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `O_DIRECT` was accepted when set but a transfer was refused (`EINVAL`: the device needs a larger
    /// alignment): go on through the page cache, with the same staged bytes.
    fn fall_back(&mut self, file: &File, refused: &io::Error) -> io::Result<()> {
        set_direct(file, false)?;
        self.direct = false;
        tracing::warn!("direct I/O refused ({refused}); writing through the page cache");
        Ok(())
    }
}

/// Whether the file system under `dir` takes O_DIRECT, asked with open(2) itself (for tests).
#[cfg(test)]
pub(crate) fn supports_o_direct(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("o_direct_probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
    }

    fn file_in(dir: &tempfile::TempDir, len: u64) -> (File, std::path::PathBuf) {
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        (file, path)
    }

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for len in [1, 4096, 4097, 1 << 20] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_ptr() as usize % BLOCK, 0);
            assert_eq!(buf.len(), len.next_multiple_of(BLOCK));
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn flush_writes_the_partial_block_and_later_bytes_complete_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, path) = file_in(&dir, 64 * 1024);
        let mut w = StagedWriter::new(&file, 8192, false);
        let bytes = pattern(20_000, 3);
        w.append(&file, &bytes[..100]).unwrap();
        assert!(!w.is_clean());
        // Staged only: nothing in the file yet.
        assert!(std::fs::read(&path).unwrap()[..100].iter().all(|&b| b == 0));
        w.flush(&file).unwrap();
        assert!(w.is_clean());
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..100], &bytes[..100]);
        assert!(on_disk[100..].iter().all(|&b| b == 0));
        w.flush(&file).unwrap(); // nothing new: no write
        w.append(&file, &bytes[100..]).unwrap();
        w.flush(&file).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..20_000], &bytes[..]);
        assert!(on_disk[20_000..].iter().all(|&b| b == 0));
        assert_eq!(on_disk.len(), 64 * 1024, "the file keeps its preallocated size");
    }

    fn has_o_direct(file: &File) -> bool {
        // SAFETY: F_GETFL on our own descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        flags & libc::O_DIRECT != 0
    }

    #[test]
    fn direct_io_is_turned_on_where_the_file_system_has_it_and_off_on_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (file, path) = file_in(&dir, 64 * 1024);
        assert!(!has_o_direct(&file));
        let mut w = StagedWriter::new(&file, 8192, false);
        let supported = supports_o_direct(dir.path());
        assert_eq!(w.is_direct(), supported);
        assert_eq!(has_o_direct(&file), supported);
        // A refusal at transfer time switches the same writer to the page cache, staged bytes intact.
        let bytes = pattern(10_000, 4);
        w.append(&file, &bytes).unwrap();
        w.fall_back(&file, &io::Error::from_raw_os_error(libc::EINVAL)).unwrap();
        assert!(!w.is_direct());
        assert!(!has_o_direct(&file));
        w.flush(&file).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..10_000], &bytes[..]);
    }

    #[test]
    fn a_failed_write_keeps_the_staged_bytes_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (file, path) = file_in(&dir, 32 * 1024);
        let mut w = StagedWriter::new(&file, 8192, false);
        let bytes = pattern(12_000, 9);
        w.append(&file, &bytes[..5000]).unwrap();
        // A read-only handle makes every write fail (EBADF).
        let read_only = File::open(&path).unwrap();
        assert!(w.flush(&read_only).is_err());
        let (taken, err) = w.append(&read_only, &bytes[5000..]).unwrap_err();
        assert_eq!(taken, 8192 - 5000, "the buffer filled, then writing it failed: {err}");
        w.append(&file, &bytes[5000 + taken..]).unwrap();
        w.flush(&file).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..12_000], &bytes[..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Any mix of appends and flushes leaves the file equal to the bytes appended, zeros after.
        #[test]
        fn appends_and_flushes_equal_the_concatenation(
            chunks in prop::collection::vec((1usize..20_000, any::<bool>()), 0..40),
            capacity_blocks in 1usize..6,
            preserve: bool,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let total: usize = chunks.iter().map(|c| c.0).sum();
            let (file, path) = file_in(&dir, (total + BLOCK) as u64);
            // With `preserve`, the file starts with old contents that must show past the new data.
            let old = if preserve { pattern(total + BLOCK, 77) } else { vec![0; total + BLOCK] };
            file.write_all_at(&old, 0).unwrap();
            let bytes = pattern(total, 5);
            let mut w = StagedWriter::new(&file, capacity_blocks * BLOCK, preserve);
            let mut at = 0;
            for (len, flush) in chunks {
                w.append(&file, &bytes[at..at + len]).unwrap();
                at += len;
                if flush {
                    w.flush(&file).unwrap();
                    let on_disk = std::fs::read(&path).unwrap();
                    prop_assert_eq!(&on_disk[..at], &bytes[..at]);
                    prop_assert_eq!(&on_disk[at..], &old[at..]);
                }
            }
            w.flush(&file).unwrap();
            prop_assert!(w.is_clean());
            let on_disk = std::fs::read(&path).unwrap();
            prop_assert_eq!(&on_disk[..total], &bytes[..]);
            prop_assert_eq!(&on_disk[total..], &old[total..]);
        }
    }
}
