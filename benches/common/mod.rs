//! What every end-to-end bench needs: its knobs from the environment, the release binary next to it, and
//! medians. (Each bench uses some of these.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A knob: the environment variable `name` as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The release `walkeeper` binary: benches build in release, and it sits in the bench executable's parent
/// directory.
pub fn walkeeper_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("walkeeper");
    assert!(bin.exists(), "{} not built: run `cargo build --release` first", bin.display());
    bin
}

/// The median; NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
