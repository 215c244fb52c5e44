//! Log sequence numbers: parsing (`%X/%X`), display (`%X/%08X`, as PostgreSQL 16+ prints), arithmetic.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log: a byte offset into the infinite WAL stream.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, segment_size: u32) -> u64 {
        self.0 % u64::from(segment_size)
    }

    /// Number of the segment that holds this position.
    pub fn segment_number(self, segment_size: u32) -> u64 {
        self.0 / u64::from(segment_size)
    }

    /// Start of the segment that holds this position.
    pub fn segment_start(self, segment_size: u32) -> Lsn {
        Lsn(self.0 - self.segment_offset(segment_size))
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:08X}", self.0 >> 32, self.0 as u32)
    }
}

/// As text (`%X/%08X`): JSON readers would lose digits of numbers above 2^53.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// The text was not an LSN of the form `X/X` (hexadecimal, each half at most 8 digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN \"{}\": expected two hexadecimal numbers separated by '/', like 0/16B3740", .0.escape_debug())]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(h, 16).ok()
            }
        };
        let hi = half(hi).ok_or_else(err)?;
        let lo = half(lo).ok_or_else(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_spellings() {
        assert_eq!("0/16B3740".parse::<Lsn>().unwrap(), Lsn(0x16B3740));
        assert_eq!("0/016B3740".parse::<Lsn>().unwrap(), Lsn(0x16B3740));
        assert_eq!("1A/FF".parse::<Lsn>().unwrap(), Lsn(0x1A_0000_00FF));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "/", "0/", "/0", "0x1/2", "1/2/3", "g/0", "123456789/0", "-1/0", "1 /2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x16B3740).to_string(), "0/016B3740");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/00000000");
    }

    #[test]
    fn segment_math() {
        let seg = 16 * 1024 * 1024;
        let l = Lsn(0x3_0100_0010);
        assert_eq!(l.segment_offset(seg), 0x10);
        assert_eq!(l.segment_start(seg), Lsn(0x3_0100_0000));
        assert_eq!(l.segment_number(seg), 0x3_0100_0000 / u64::from(seg));
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(v: u64) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Lsn>();
        }
    }
}
