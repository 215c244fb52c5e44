//! Which database system a WAL directory belongs to: the system identifier in the long page header at the
//! start of its newest segment. Streaming a different cluster's WAL into it would silently mix histories.

use crate::archive::compress;
use crate::wal::segment::{SegmentId, WalFileName};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Offset of `xlp_sysid` in the long page header.
const SYSID_OFFSET: usize = 24;
use crate::wal::decoder::SIZE_OF_LONG_PHD as LONG_HEADER;

/// The system identifier recorded in the newest segment of `dir`, and that file; None for an empty
/// directory or when the newest segment has no header yet (a fresh `.partial`).
pub fn directory_system_id(dir: &Path, segment_size: u32) -> std::io::Result<Option<(u64, PathBuf)>> {
    let mut newest: Option<(SegmentId, PathBuf, crate::wal::segment::Compression)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(WalFileName::Segment { name: seg, compression, .. }) =
            WalFileName::parse(&name.to_string_lossy())
        else {
            continue;
        };
        let Some(id) = SegmentId::parse_name(&seg, segment_size) else { continue };
        let key = (id.number, id.timeline);
        if newest.as_ref().is_none_or(|(n, _, _)| (n.number, n.timeline) < key) {
            newest = Some((id, entry.path(), compression));
        }
    }
    let Some((_, path, compression)) = newest else { return Ok(None) };
    let file = std::fs::File::open(&path)?;
    let mut header = [0u8; LONG_HEADER];
    let mut reader = compress::decoder(compression, file)?;
    let mut filled = 0;
    while filled < LONG_HEADER {
        match reader.read(&mut header[filled..]) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(_) => return Ok(None), // a cut-off compressed partial: nothing to compare
        }
    }
    let magic = u16::from_le_bytes([header[0], header[1]]);
    if magic == 0 {
        return Ok(None);
    }
    let sysid = u64::from_le_bytes(header[SYSID_OFFSET..SYSID_OFFSET + 8].try_into().expect("8 bytes"));
    Ok(Some((sysid, path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with_sysid(sysid: u64) -> Vec<u8> {
        let mut v = vec![0u8; 8192];
        v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        v[SYSID_OFFSET..SYSID_OFFSET + 8].copy_from_slice(&sysid.to_le_bytes());
        v
    }

    #[test]
    fn reads_newest_segment_header() {
        let dir = tempfile::tempdir().unwrap();
        let seg = 1 << 20;
        assert_eq!(directory_system_id(dir.path(), seg).unwrap(), None);
        std::fs::write(dir.path().join("000000010000000000000001"), segment_with_sysid(1)).unwrap();
        std::fs::write(dir.path().join("000000010000000000000002.partial"), segment_with_sysid(2)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let (id, path) = directory_system_id(dir.path(), seg).unwrap().unwrap();
        assert_eq!(id, 2);
        assert!(path.ends_with("000000010000000000000002.partial"));
        // A fresh, zero-filled partial has no header yet.
        std::fs::write(dir.path().join("000000010000000000000003.partial"), vec![0u8; 8192]).unwrap();
        assert_eq!(directory_system_id(dir.path(), seg).unwrap(), None);
    }

    #[test]
    fn reads_compressed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let data = zstd::encode_all(&segment_with_sysid(77)[..], 3).unwrap();
        std::fs::write(dir.path().join("000000020000000000000005.zst"), data).unwrap();
        assert_eq!(directory_system_id(dir.path(), 1 << 20).unwrap().unwrap().0, 77);
    }
}
