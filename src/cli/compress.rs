//! `-Z/--compress=METHOD[:DETAIL]` exactly as pg_receivewal parses it (a bare integer is a gzip level, 0 is
//! none), plus zstd which pg_receivewal lacks. DETAIL is a level (`gzip:5`) or `level=N`.

use crate::wal::segment::Compression;

/// A validated compression choice: the method and its level (None = the method's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressSpec {
    pub method: Compression,
    pub level: Option<i32>,
}

/// Parse the argument of `-Z`. Error texts follow pg_receivewal's.
pub fn parse_compress(option: &str) -> Result<CompressSpec, String> {
    if let Ok(n) = option.parse::<i64>() {
        if n == 0 {
            return Ok(CompressSpec { method: Compression::None, level: None });
        }
        return finish(Compression::Gzip, "gzip", Some(option));
    }
    let (name, detail) = match option.split_once(':') {
        Some((a, d)) => (a, Some(d)),
        None => (option, None),
    };
    let method = match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => return Err(format!("unrecognized compression algorithm: \"{name}\"")),
    };
    finish(method, name, detail)
}

fn finish(method: Compression, name: &str, detail: Option<&str>) -> Result<CompressSpec, String> {
    let level = match detail {
        None => None,
        Some(d) => Some(parse_level(name, d)?),
    };
    if let Some(l) = level {
        let (lo, hi) = match method {
            Compression::None => {
                return Err(format!(
                    "invalid compression specification: compression algorithm \"{name}\" does not accept a compression level"
                ))
            }
            Compression::Gzip => (1, 9),
            Compression::Lz4 => (1, 12),
            Compression::Zstd => (-131072, 22),
        };
        if !(lo..=hi).contains(&l) {
            return Err(format!(
                "invalid compression specification: compression algorithm \"{name}\" expects a compression level between {lo} and {hi} (got {l})"
            ));
        }
    }
    Ok(CompressSpec { method, level })
}

/// DETAIL: an integer, or comma-separated `key=value` items of which only `level` applies to WAL files.
fn parse_level(name: &str, detail: &str) -> Result<i32, String> {
    if let Ok(n) = detail.parse::<i32>() {
        return Ok(n);
    }
    let mut level = None;
    for item in detail.split(',') {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        match key.trim() {
            "level" => {
                level = Some(value.trim().parse::<i32>().map_err(|_| {
                    "invalid compression specification: value for compression option \"level\" must be an integer".to_string()
                })?)
            }
            "" => return Err("invalid compression specification: found empty string where a compression option was expected".into()),
            other => {
                return Err(format!(
                    "invalid compression specification: unrecognized compression option: \"{other}\" (for {name})"
                ))
            }
        }
    }
    level.ok_or_else(|| "invalid compression specification: no compression level given".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(method: Compression, level: Option<i32>) -> CompressSpec {
        CompressSpec { method, level }
    }

    #[test]
    fn like_pg_receivewal() {
        assert_eq!(parse_compress("0").unwrap(), spec(Compression::None, None));
        assert_eq!(parse_compress("5").unwrap(), spec(Compression::Gzip, Some(5)));
        assert_eq!(parse_compress("gzip").unwrap(), spec(Compression::Gzip, None));
        assert_eq!(parse_compress("gzip:1").unwrap(), spec(Compression::Gzip, Some(1)));
        assert_eq!(parse_compress("lz4:level=3").unwrap(), spec(Compression::Lz4, Some(3)));
        assert_eq!(parse_compress("zstd").unwrap(), spec(Compression::Zstd, None));
        assert_eq!(parse_compress("zstd:-5").unwrap(), spec(Compression::Zstd, Some(-5)));
        assert_eq!(parse_compress("none").unwrap(), spec(Compression::None, None));
    }

    #[test]
    fn refusals_match_pg_receivewal_text() {
        assert_eq!(
            parse_compress("none:1").unwrap_err(),
            "invalid compression specification: compression algorithm \"none\" does not accept a compression level"
        );
        assert_eq!(parse_compress("bogus").unwrap_err(), "unrecognized compression algorithm: \"bogus\"");
        assert_eq!(parse_compress("3x").unwrap_err(), "unrecognized compression algorithm: \"3x\"");
        assert!(parse_compress("10").unwrap_err().contains("between 1 and 9 (got 10)"));
        assert!(parse_compress("lz4:13").is_err());
        assert!(parse_compress("zstd:23").is_err());
        assert!(parse_compress("gzip:workers=2").unwrap_err().contains("unrecognized compression option"));
        assert!(parse_compress("gzip:level=x").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,30}") {
            let _ = parse_compress(&s);
        }
    }
}
