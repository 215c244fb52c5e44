//! WAL file names: segment names (`TTTTTTTTXXXXXXXXYYYYYYYY`), their `.partial` and compressed forms,
//! timeline history names (`TTTTTTTT.history`) and backup history names, all as PostgreSQL spells them.

use crate::wal::Lsn;
use std::fmt;

/// A timeline identifier.
pub type TimeLineId = u32;

/// Smallest and largest WAL segment sizes PostgreSQL accepts (`initdb --wal-segsize`).
pub const MIN_SEGMENT_SIZE: u32 = 1 << 20;
pub const MAX_SEGMENT_SIZE: u32 = 1 << 30;

/// True when `size` is a segment size PostgreSQL can run with: a power of two from 1 MiB to 1 GiB.
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (u64::from(MIN_SEGMENT_SIZE)..=u64::from(MAX_SEGMENT_SIZE)).contains(&size)
}

/// Segments per "xlogid" (the middle 8 hex digits of a name count these).
fn segments_per_id(segment_size: u32) -> u64 {
    0x1_0000_0000 / u64::from(segment_size)
}

/// One WAL segment: a timeline and a segment number, for a given segment size.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentId {
    pub timeline: TimeLineId,
    pub number: u64,
}

impl SegmentId {
    pub fn containing(timeline: TimeLineId, lsn: Lsn, segment_size: u32) -> SegmentId {
        SegmentId { timeline, number: lsn.segment_number(segment_size) }
    }

    /// LSN of the first byte of this segment; `None` on overflow (a name from untrusted input).
    pub fn start_lsn(self, segment_size: u32) -> Option<Lsn> {
        self.number.checked_mul(u64::from(segment_size)).map(Lsn)
    }

    /// LSN just past the last byte of this segment.
    pub fn end_lsn(self, segment_size: u32) -> Option<Lsn> {
        self.number.checked_add(1)?.checked_mul(u64::from(segment_size)).map(Lsn)
    }

    /// The 24-character file name, as `XLogFileName` writes it.
    pub fn file_name(self, segment_size: u32) -> String {
        let per = segments_per_id(segment_size);
        format!("{:08X}{:08X}{:08X}", self.timeline, self.number / per, self.number % per)
    }

    /// Parse a bare 24-hex-digit segment name. `None` if it is not one, or if its low part is
    /// impossible for this segment size.
    pub fn parse_name(name: &str, segment_size: u32) -> Option<SegmentId> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let id = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = segments_per_id(segment_size);
        if seg >= per {
            return None;
        }
        Some(SegmentId { timeline, number: id * per + seg })
    }
}

/// How a segment file is stored, from its suffix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Lz4 => ".lz4",
            Compression::Zstd => ".zst",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a file in a WAL directory is, judged by its name alone.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum WalFileName {
    /// A segment: complete (`partial == false`) or still open (`.partial`), maybe compressed.
    Segment { name: String, compression: Compression, partial: bool },
    /// `TTTTTTTT.history`
    History { timeline: TimeLineId },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`
    BackupHistory { segment: String, offset: u32 },
}

impl WalFileName {
    /// Classify a directory entry name; `None` for anything that is not a WAL archive file.
    pub fn parse(file: &str) -> Option<WalFileName> {
        let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(tli) = file.strip_suffix(".history") {
            if is_hex(tli, 8) {
                return Some(WalFileName::History { timeline: u32::from_str_radix(tli, 16).ok()? });
            }
            return None;
        }
        if let Some(rest) = file.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.')?;
            if is_hex(seg, 24) && is_hex(off, 8) {
                return Some(WalFileName::BackupHistory {
                    segment: seg.to_string(),
                    offset: u32::from_str_radix(off, 16).ok()?,
                });
            }
            return None;
        }
        let (rest, partial) = match file.strip_suffix(".partial") {
            Some(r) => (r, true),
            None => (file, false),
        };
        let (name, compression) =
            [(".gz", Compression::Gzip), (".lz4", Compression::Lz4), (".zst", Compression::Zstd)]
                .iter()
                .find_map(|(sfx, c)| rest.strip_suffix(sfx).map(|n| (n, *c)))
                .unwrap_or((rest, Compression::None));
        if is_hex(name, 24) {
            Some(WalFileName::Segment { name: name.to_string(), compression, partial })
        } else {
            None
        }
    }
}

/// `TTTTTTTT.history`
pub fn history_file_name(timeline: TimeLineId) -> String {
    format!("{timeline:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEG: u32 = 16 * 1024 * 1024;

    #[test]
    fn names_like_postgres() {
        let s = SegmentId::containing(1, Lsn(0x1_0300_0028), SEG);
        assert_eq!(s.file_name(SEG), "000000010000000100000003");
        assert_eq!(s.start_lsn(SEG), Some(Lsn(0x1_0300_0000)));
        assert_eq!(s.end_lsn(SEG), Some(Lsn(0x1_0400_0000)));
        assert_eq!(SegmentId::parse_name("000000010000000100000003", SEG), Some(s));
        // 1 GiB segments: only 4 per xlogid.
        let g = 1 << 30;
        assert_eq!(SegmentId::containing(2, Lsn(0x5_C000_0000), g).file_name(g), "000000020000000500000003");
        assert_eq!(SegmentId::parse_name("000000020000000500000004", g), None);
    }

    #[test]
    fn classifies_files() {
        use WalFileName::*;
        assert_eq!(
            WalFileName::parse("000000010000000000000002.gz.partial"),
            Some(Segment {
                name: "000000010000000000000002".into(),
                compression: Compression::Gzip,
                partial: true
            })
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.zst"),
            Some(Segment {
                name: "000000010000000000000002".into(),
                compression: Compression::Zstd,
                partial: false
            })
        );
        assert_eq!(WalFileName::parse("0000000A.history"), Some(History { timeline: 10 }));
        assert_eq!(
            WalFileName::parse("000000010000000000000002.00000028.backup"),
            Some(BackupHistory { segment: "000000010000000000000002".into(), offset: 0x28 })
        );
        for bad in [
            "",
            "x.history",
            "00000001000000000000002",
            "000000010000000000000002.bz2",
            "../00000001.history",
        ] {
            assert_eq!(WalFileName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(valid_segment_size(16 << 20));
        assert!(valid_segment_size(1 << 20));
        assert!(valid_segment_size(1 << 30));
        assert!(!valid_segment_size(3 << 20));
        assert!(!valid_segment_size(1 << 31));
        assert!(!valid_segment_size(0));
    }

    proptest! {
        #[test]
        fn name_roundtrip(tli in 1u32.., number: u64, shift in 20u32..=30) {
            let size = 1u32 << shift;
            let number = number % (1u64 << (64 - shift));
            let s = SegmentId { timeline: tli, number };
            prop_assert_eq!(SegmentId::parse_name(&s.file_name(size), size), Some(s));
        }

        #[test]
        fn parse_never_panics(s in ".{0,60}") {
            let _ = WalFileName::parse(&s);
            let _ = SegmentId::parse_name(&s, SEG);
        }
    }
}
