//! What to tell the server in standby status updates. Three positions move independently:
//! `received` (written to the file), `synced` (fsynced) and `validated` (passed the WAL decoder).
//! The flush position reported is the smallest of `synced` and `validated` — never beyond what is both
//! durable and checked (DESIGN.md invariants 1 and 5) — and, with `--slot-follows-upload`, never beyond
//! what is off-site: the uploader's `uploaded_through` caps it ([`Positions::set_offsite`]).

use crate::wal::Lsn;

/// What the apply position in status updates means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApplyReport {
    /// As pg_receivewal: invalid (0). A primary with `synchronous_commit = remote_apply` then waits forever.
    #[default]
    Invalid,
    /// Report the flush position as applied, so `remote_apply` commits return once WAL is durable here.
    Flush,
}

/// What bounds the reported flush position besides durability and validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offsite {
    /// No upload to wait for.
    Ignored,
    /// `--slot-follows-upload`: the uploader has not said yet how far the store's copy reaches.
    Unknown,
    /// `--slot-follows-upload`: everything below is off-site.
    Through(Lsn),
}

#[derive(Clone, Debug)]
pub struct Positions {
    /// Where this session started streaming.
    start: Lsn,
    received: Lsn,
    synced: Lsn,
    validated: Option<Lsn>,
    /// pg_receivewal reports a flush position only with a slot or `--synchronous`.
    report_flush: bool,
    apply: ApplyReport,
    offsite: Offsite,
}

/// The three LSNs of one status update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
}

impl Positions {
    /// Streaming starts at `start`; nothing beyond it is received, synced or validated yet.
    /// `validate` says whether a decoder gates the flush position.
    pub fn new(start: Lsn, validate: bool, report_flush: bool, apply: ApplyReport) -> Positions {
        Positions {
            start,
            received: start,
            synced: start,
            validated: validate.then_some(start),
            report_flush,
            apply,
            offsite: Offsite::Ignored,
        }
    }

    pub fn received(&self) -> Lsn {
        self.received
    }

    pub fn synced(&self) -> Lsn {
        self.synced
    }

    pub fn set_received(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// Bytes up to `lsn` are durable. Never beyond what was received.
    pub fn set_synced(&mut self, lsn: Lsn) {
        self.synced = self.synced.max(lsn.min(self.received));
    }

    pub fn set_validated(&mut self, lsn: Lsn) {
        if let Some(v) = &mut self.validated {
            *v = (*v).max(lsn.min(self.received));
        }
    }

    /// Durable and validated: the position a server may rely on.
    pub fn safe(&self) -> Lsn {
        match self.validated {
            Some(v) => self.synced.min(v),
            None => self.synced,
        }
    }

    pub fn needs_sync(&self) -> bool {
        self.received > self.synced
    }

    /// `--slot-follows-upload`: everything below `through` is off-site (`None`: not known yet). From the first
    /// call on, the flush position reported never passes it; while the store's copy is behind where this
    /// session started, none is reported at all (the server's slot stays where it is, never moved back).
    pub fn set_offsite(&mut self, through: Option<Lsn>) {
        self.offsite = through.map_or(Offsite::Unknown, Offsite::Through);
    }

    /// The flush position to report: durable, validated and, when asked, off-site.
    fn flush(&self) -> Lsn {
        let safe = self.safe();
        match self.offsite {
            Offsite::Ignored => safe,
            Offsite::Unknown => Lsn::INVALID,
            Offsite::Through(through) if through.min(safe) >= self.start => through.min(safe),
            Offsite::Through(_) => Lsn::INVALID,
        }
    }

    pub fn report(&self) -> Report {
        let flush = if self.report_flush { self.flush() } else { Lsn::INVALID };
        let apply = match self.apply {
            ApplyReport::Invalid => Lsn::INVALID,
            ApplyReport::Flush => flush,
        };
        Report { write: self.received, flush, apply }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flush_is_min_of_synced_and_validated() {
        let mut p = Positions::new(Lsn(100), true, true, ApplyReport::Invalid);
        p.set_received(Lsn(500));
        assert!(p.needs_sync());
        p.set_validated(Lsn(400));
        assert_eq!(p.report(), Report { write: Lsn(500), flush: Lsn(100), apply: Lsn(0) });
        p.set_synced(Lsn(500));
        assert_eq!(p.report().flush, Lsn(400));
        p.set_validated(Lsn(500));
        assert_eq!(p.report().flush, Lsn(500));
        assert!(!p.needs_sync());
    }

    #[test]
    fn never_reports_beyond_received_or_backwards() {
        let mut p = Positions::new(Lsn(100), false, true, ApplyReport::Flush);
        p.set_synced(Lsn(900));
        assert_eq!(p.report().flush, Lsn(100));
        p.set_received(Lsn(300));
        p.set_synced(Lsn(300));
        p.set_synced(Lsn(200));
        p.set_received(Lsn(250));
        assert_eq!(p.report(), Report { write: Lsn(300), flush: Lsn(300), apply: Lsn(300) });
    }

    #[test]
    fn flush_hidden_without_slot_or_synchronous() {
        let mut p = Positions::new(Lsn(0), false, false, ApplyReport::Invalid);
        p.set_received(Lsn(10));
        p.set_synced(Lsn(10));
        assert_eq!(p.report(), Report { write: Lsn(10), flush: Lsn(0), apply: Lsn(0) });
    }

    #[test]
    fn offsite_caps_the_flush_and_never_reports_below_the_start() {
        let mut p = Positions::new(Lsn(100), false, true, ApplyReport::Flush);
        p.set_received(Lsn(500));
        p.set_synced(Lsn(500));
        assert_eq!(p.report().flush, Lsn(500));
        p.set_offsite(None);
        assert_eq!(p.report(), Report { write: Lsn(500), flush: Lsn(0), apply: Lsn(0) }, "not known yet");
        p.set_offsite(Some(Lsn(50)));
        assert_eq!(p.report().flush, Lsn(0), "behind the session's start: the slot is left alone");
        p.set_offsite(Some(Lsn(100)));
        assert_eq!(p.report().flush, Lsn(100));
        p.set_offsite(Some(Lsn(300)));
        assert_eq!(p.report(), Report { write: Lsn(500), flush: Lsn(300), apply: Lsn(300) });
        p.set_offsite(Some(Lsn(900)));
        assert_eq!(p.report().flush, Lsn(500), "never beyond what is durable");
    }

    proptest! {
        #[test]
        fn flush_never_exceeds_synced_validated_received_or_offsite(ops in proptest::collection::vec((0u8..4, 0u64..1000), 0..50)) {
            let mut p = Positions::new(Lsn(0), true, true, ApplyReport::Invalid);
            let (mut max_synced, mut max_validated) = (0, 0);
            let mut offsite = None;
            for (op, v) in ops {
                match op {
                    0 => p.set_received(Lsn(v)),
                    1 => { p.set_synced(Lsn(v)); max_synced = max_synced.max(v) }
                    2 => { p.set_validated(Lsn(v)); max_validated = max_validated.max(v) }
                    _ => { p.set_offsite(Some(Lsn(v))); offsite = Some(v) }
                }
                let r = p.report();
                prop_assert!(r.flush <= r.write);
                prop_assert!(r.flush.0 <= max_synced && r.flush.0 <= max_validated);
                prop_assert!(offsite.is_none_or(|o| r.flush.0 <= o));
            }
        }
    }
}
