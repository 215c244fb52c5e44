//! Retention that knows the base backups: keep the WAL the newest `keep_backups` base backups need, remove
//! what is older. A pure [`plan`] over a [`Catalog`] and the backups found in it ([`backups::find`]), and a
//! thin [`run`] that reads, plans and removes — over any [`Store`], so a directory and a bucket are the same.
//!
//! The rule: a segment file is removed only when all of these hold —
//! - it is complete (a `.partial` is never removed: it may be the open segment, or the received end of a
//!   timeline that `restore --partial` serves);
//! - its segment number is below that of the *keep point*: the start of the oldest of the `keep_backups`
//!   newest restorable backups (by end LSN; several overlapping backups all stay restorable). As in
//!   pg_archivecleanup, only the segment number is compared, ignoring the timeline: every segment recovery
//!   reads from such a backup on — on its timeline, a parent's up to a switch point, a child's — has a
//!   number at or above the keep point's, so none of them goes;
//! - its segment number is below that of the floor, when one is given (the oldest LSN a connected standby
//!   still needs: nothing at or after it is removed);
//! - it is older than `keep_min_age` by its modification time (a file's mtime, an object's last-modified;
//!   one whose time is unknown is kept).
//!
//! Nothing is removed when fewer than `keep_backups` restorable backups are known — in particular when none
//! is: the archive may hold the only copy of WAL that a backup invisible here (taken from a standby) needs.
//! Only WAL segment files are ever removed: history files (the newest timeline's included), backup history
//! files, and anything that is not WAL stay.

use super::backups::{self, Backup, Found};
use super::catalog::{Catalog, SegmentSize};
use super::cleanup::{self, CleanupError};
use super::store::Store;
use crate::wal::segment::SegmentId;
use crate::wal::Lsn;
use std::time::{Duration, SystemTime};

/// What to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Keep the WAL of this many of the newest restorable base backups (at least 1).
    pub keep_backups: u32,
    /// Keep every segment file younger than this.
    pub keep_min_age: Duration,
    /// Keep every segment at or after this LSN (what connected standbys still need).
    pub floor: Option<Lsn>,
}

/// Where the kept WAL begins, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepPoint {
    /// Segments with a lower number (on any timeline) are removed.
    pub segment: String,
    /// The backup whose start decides it: the oldest start of the newest `keep_backups` restorable backups.
    pub backup: Backup,
    /// True when the floor, not the backup, decides.
    pub by_floor: bool,
}

/// What retention removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Names in the store, sorted.
    pub remove: Vec<String>,
    /// `None` when nothing may be removed (see `reason`).
    pub keep_point: Option<KeepPoint>,
    /// Restorable backups known.
    pub restorable_backups: usize,
    /// Segment files before the keep point kept only because they are younger than `keep_min_age` (or of
    /// unknown age).
    pub kept_young: usize,
    /// Why nothing may be removed, when that is so.
    pub reason: Option<String>,
}

impl Plan {
    /// One line saying what the plan does and why.
    pub fn summary(&self) -> String {
        let Some(k) = &self.keep_point else {
            return format!("nothing removed: {}", self.reason.as_deref().unwrap_or("nothing to remove"));
        };
        let b = &k.backup;
        let decides = match k.by_floor {
            true => "the oldest WAL a connected standby still needs".to_string(),
            false => format!(
                "the start of the base backup started at {} (timeline {}, ended at {}{})",
                b.start,
                b.timeline,
                b.end,
                b.checkpoint.map(|c| format!(", checkpoint at {}", c.time)).unwrap_or_default()
            ),
        };
        let young = match self.kept_young {
            0 => String::new(),
            n => format!("; {n} older file(s) kept for keep_min_age"),
        };
        format!(
            "keeping WAL from segment {} on ({decides}; {} restorable base backup(s) known): {} file(s) to remove{young}",
            k.segment,
            self.restorable_backups,
            self.remove.len()
        )
    }
}

/// What `catalog` loses under `policy`, given its `backups` (from [`backups::find`]) and the time `now`.
pub fn plan(catalog: &Catalog, backups: &[Backup], policy: &Policy, now: SystemTime) -> Plan {
    let mut restorable: Vec<&Backup> = backups.iter().filter(|b| b.restorable()).collect();
    restorable.sort_by_key(|b| std::cmp::Reverse((b.end, b.start)));
    let mut out = Plan {
        remove: Vec::new(),
        keep_point: None,
        restorable_backups: restorable.len(),
        kept_young: 0,
        reason: None,
    };
    let wanted = policy.keep_backups.max(1) as usize;
    if restorable.len() < wanted {
        let seen = match backups.len() - restorable.len() {
            0 => String::new(),
            n => format!(" ({n} more found, not restorable from this archive)"),
        };
        out.reason = Some(match restorable.len() {
            0 => format!("no restorable base backup found in the WAL{seen}"),
            n => format!(
                "{n} restorable base backup(s) found in the WAL{seen}, fewer than the {wanted} to keep"
            ),
        });
        return out;
    }
    let oldest_kept = restorable[..wanted].iter().min_by_key(|b| (b.start, b.end)).expect("wanted >= 1");
    let seg = catalog.segment_size();
    let mut keep_from = oldest_kept.start.segment_number(seg);
    let floor = policy.floor.map(|f| f.segment_number(seg)).filter(|&f| f < keep_from);
    keep_from = floor.unwrap_or(keep_from);
    out.keep_point = Some(KeepPoint {
        segment: SegmentId { timeline: oldest_kept.timeline, number: keep_from }.file_name(seg),
        backup: (*oldest_kept).clone(),
        by_floor: floor.is_some(),
    });
    for f in catalog.segments().iter().filter(|f| !f.partial && f.id.number < keep_from) {
        let old_enough = policy.keep_min_age.is_zero()
            || f.modified
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= policy.keep_min_age);
        if old_enough {
            out.remove.push(f.file.clone());
        } else {
            out.kept_young += 1;
        }
    }
    out.remove.sort();
    out
}

/// What a retention run found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub found: Found,
    pub plan: Plan,
    /// False for a dry run: nothing was removed.
    pub removed: bool,
}

/// Apply `policy` to the archive in `store` once: list it, find its backups (updating the backup index),
/// plan, and remove what the plan says unless `dry_run`. The caller holds the archive's lock (a directory
/// has one writer; see `archive::lock`). Errors name the file or the store.
pub fn run(
    store: &dyn Store,
    policy: &Policy,
    dry_run: bool,
    now: SystemTime,
) -> Result<Outcome, CleanupError> {
    if let Some(dir) = store.local_dir() {
        if !dir.is_dir() {
            return Err(CleanupError::NoArchive(store.location()));
        }
    }
    let catalog = Catalog::read(store, SegmentSize::FromHeaders)?;
    let found = backups::find(store, &catalog)?;
    let plan = plan(&catalog, &found.backups, policy, now);
    if !dry_run {
        cleanup::remove(store, &cleanup::Plan { files: plan.remove.clone(), warnings: Vec::new() })?;
    }
    Ok(Outcome { found, plan, removed: !dry_run })
}

/// An age such as `7d`: a whole number with a unit s, m, h, d or w (none: seconds).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid age \"{}\": expected a whole number with a unit s, m, h, d or w, like 7d or 12h",
            text.escape_debug()
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
