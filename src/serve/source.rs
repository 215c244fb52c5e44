//! The archive as the walsender serves it: which database system and major it holds, its newest timeline,
//! and how far its WAL may be served.
//!
//! How far (invariant 5: only durable, validated WAL goes downstream):
//! - while the source's receive loop streams the newest timeline, exactly up to `SourceState.flushed` —
//!   durable and validated by the receiver; bytes it has written past that are never read;
//! - otherwise (the upstream is down, walkeeper has just started, or no receiver runs at all) the files are
//!   at rest: complete segments were validated before they got their names, and of the trailing run of
//!   `.partial` files only the prefix a WAL decoder accepts counts (the last valid record's end). The
//!   receiver synced everything it reported before leaving those files. The decoded end is cached until the
//!   run's files change.
//!
//! Reads go through the store and are blocking: call from `spawn_blocking`.

use super::commands::Facts;
use super::reader::SegmentFile;
use crate::archive::catalog::{Catalog, SegFile, SegmentSize};
use crate::archive::store::{Store, StoreError};
use crate::stream::state::{LiveReaders, Phase, SourceState};
use crate::wal::at_rest::Feed;
use crate::wal::decoder::{major_for_page_magic, page_magic_for_major, DecoderConfig, WalDecoder};
use crate::wal::segment::TimeLineId;
use crate::wal::timeline::parse_history_of;
use crate::wal::Lsn;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// What never changes for an archive: its database system, segment size and WAL format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub system_id: u64,
    pub segment_size: u32,
    pub page_magic: u16,
    pub major: u32,
}

/// The WAL a walsender serves: an archive's store and, when a receive loop fills it, that loop's state.
#[derive(Debug)]
pub struct WalSource {
    store: Arc<dyn Store>,
    state: Option<watch::Receiver<SourceState>>,
    live_readers: LiveReaders,
    identity: Mutex<Option<Identity>>,
    at_rest: Mutex<Option<AtRest>>,
}

/// The decoded end of a trailing run, and the files it was decoded from.
#[derive(Debug)]
struct AtRest {
    files: Vec<(String, u64, Option<SystemTime>)>,
    end: Lsn,
}

impl WalSource {
    /// Serve `store`; `state` is the receive loop's channel when one fills the archive.
    pub fn new(store: Arc<dyn Store>, state: Option<watch::Receiver<SourceState>>) -> WalSource {
        WalSource {
            store,
            state,
            live_readers: LiveReaders::default(),
            identity: Mutex::new(None),
            at_rest: Mutex::new(None),
        }
    }

    /// Share `readers` with the receive loop (its `ReceiveConfig::live_readers`): each streaming standby
    /// counts in it, and the loop then makes WAL durable batch by batch.
    pub fn with_live_readers(mut self, readers: LiveReaders) -> WalSource {
        self.live_readers = readers;
        self
    }

    /// Count a standby streaming live until the guard drops.
    pub fn live_reader(&self) -> crate::stream::state::LiveReader {
        self.live_readers.join()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The receive loop's state channel, if there is one.
    pub fn state(&self) -> Option<watch::Receiver<SourceState>> {
        self.state.clone()
    }

    fn state_now(&self) -> Option<SourceState> {
        self.state.as_ref().map(|s| s.borrow().clone())
    }

    /// The archive's identity, from the first long page header found (newest files first), completed by
    /// the receive loop's view; `None` while neither knows (an empty archive, no server reached yet).
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        if let Some(id) = *lock(&self.identity) {
            return Ok(Some(id));
        }
        let state = self.state_now().unwrap_or_default();
        let size = state.segment_size.map_or(SegmentSize::FromHeaders, SegmentSize::Known);
        let catalog = Catalog::read(self.store.as_ref(), size)?;
        let header = match catalog.system_id(self.store.as_ref())? {
            Some((_, f)) => {
                crate::archive::contents::read_header(self.store.as_ref(), &f.file, f.compression, f.partial)?
                    .ok()
            }
            None => None,
        };
        let id = match header {
            Some(h) => major_for_page_magic(h.magic).map(|major| Identity {
                system_id: h.system_id,
                segment_size: h.segment_size,
                page_magic: h.magic,
                major,
            }),
            None => {
                let major = state.server_version.as_deref().and_then(major_of_version);
                match (
                    state.system_id,
                    state.segment_size,
                    major.and_then(|m| page_magic_for_major(m).map(|p| (m, p))),
                ) {
                    (Some(system_id), Some(segment_size), Some((major, page_magic))) => {
                        Some(Identity { system_id, segment_size, page_magic, major })
                    }
                    _ => None,
                }
            }
        };
        if id.is_some() {
            *lock(&self.identity) = id;
        }
        Ok(id)
    }

    /// What the archive holds now, for the replication commands; `None` while it holds no WAL.
    pub fn facts(&self) -> Result<Option<Facts>, StoreError> {
        let Some(id) = self.identity()? else { return Ok(None) };
        let before = self.state_now();
        let catalog = Catalog::read(self.store.as_ref(), SegmentSize::Known(id.segment_size))?;
        let live = before.as_ref().and_then(|s| Some((s.timeline?, s.flushed?)));
        let newest_file = catalog.segments().last().map(|s| s.id.timeline);
        let Some(timeline) = live.map(|(t, _)| t).max(newest_file) else { return Ok(None) };
        let live_end = live.filter(|(t, _)| *t == timeline).map(|(_, f)| f);
        let end = if streaming(before.as_ref(), timeline) {
            // Complete segments are durable and validated whatever `flushed` says (it is published at
            // syncs, which without status updates come only for live readers).
            live_end.max(complete_end(&catalog, timeline, id.segment_size))
        } else {
            let rest = self.at_rest_end(&catalog, timeline, &id)?;
            // The receive loop may have begun writing while the files were read: then only its own
            // durable position counts.
            let after = self.state_now();
            let same = before.as_ref().map(|s| (s.phase, s.phase_since))
                == after.as_ref().map(|s| (s.phase, s.phase_since));
            if same {
                live_end.max(rest)
            } else {
                after
                    .as_ref()
                    .and_then(|s| (s.timeline == Some(timeline)).then_some(s.flushed).flatten())
                    .max(live_end)
            }
        };
        let Some(flush) = end else { return Ok(None) };
        let mut histories = BTreeMap::new();
        for (&tli, entry) in catalog.histories() {
            histories.insert(tli, Bytes::from(self.store.read_all(&entry.name)?));
        }
        let history = if timeline == 1 {
            Some(Vec::new())
        } else {
            histories
                .get(&timeline)
                .and_then(|c| parse_history_of(timeline, &String::from_utf8_lossy(c)).ok())
        };
        Ok(Some(Facts {
            major: id.major,
            system_id: id.system_id,
            segment_size: id.segment_size,
            timeline,
            flush,
            history,
            histories,
        }))
    }

    /// How far timeline `timeline`'s files hold valid WAL: the end of its newest complete segment, or of
    /// the valid prefix of its trailing run of `.partial` files.
    fn at_rest_end(
        &self,
        catalog: &Catalog,
        timeline: TimeLineId,
        id: &Identity,
    ) -> Result<Option<Lsn>, StoreError> {
        let size = id.segment_size;
        let complete_end = complete_end(catalog, timeline, size);
        let run = catalog.trailing_partials(timeline);
        let Some(first) = run.first() else { return Ok(complete_end) };
        let key: Vec<_> = run.iter().map(|f| (f.file.clone(), f.len, f.modified)).collect();
        if let Some(cached) = lock(&self.at_rest).as_ref().filter(|c| c.files == key) {
            return Ok(complete_end.max(Some(cached.end)));
        }
        let Some(start) = first.id.start_lsn(size) else { return Ok(complete_end) };
        let cfg = DecoderConfig {
            segment_size: size,
            page_magic: id.page_magic,
            system_id: Some(id.system_id),
            timeline,
        };
        let mut decoder = WalDecoder::new(cfg, start);
        decode_run(self.store.as_ref(), &run, &mut decoder)?;
        let end = decoder.validated_up_to();
        *lock(&self.at_rest) = Some(AtRest { files: key, end });
        Ok(complete_end.max(Some(end)))
    }
}

/// The end of timeline `timeline`'s newest complete segment file.
fn complete_end(catalog: &Catalog, timeline: TimeLineId, size: u32) -> Option<Lsn> {
    let files = catalog.timelines().get(&timeline).copied().unwrap_or_default();
    files.iter().filter(|s| !s.partial).filter_map(|s| s.id.end_lsn(size)).max()
}

/// True while the receive loop writes `timeline`: its files are then not at rest.
pub fn streaming(state: Option<&SourceState>, timeline: TimeLineId) -> bool {
    state.is_some_and(|s| s.phase == Phase::Streaming && s.timeline == Some(timeline))
}

/// Feed the files of a trailing run to `decoder`, each held back from its zero padding, until the first
/// invalid byte (the decoder then keeps where the valid WAL ended).
fn decode_run(store: &dyn Store, run: &[&SegFile], decoder: &mut WalDecoder) -> Result<(), StoreError> {
    let mut buf = vec![0u8; crate::archive::contents::CHUNK];
    for f in run {
        let mut file = SegmentFile::new((*f).clone());
        let mut feed = Feed::new(true);
        let mut offset = 0u64;
        loop {
            let n = file.read_at(store, offset, &mut buf)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            if feed.push(decoder, &buf[..n], &mut |_| {}).is_err() {
                return Ok(());
            }
        }
        feed.finish(decoder);
        if decoder.error().is_some() {
            return Ok(());
        }
    }
    Ok(())
}

/// The major of a `server_version` text ("15.18 (Debian …)", "18beta1", "15 (walkeeper …)").
fn major_of_version(v: &str) -> Option<u32> {
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves only a cache behind: use it anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::LocalStore;
    use crate::wal::encoder::WalEncoder;

    const SEG: u32 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_009;

    /// Segments 1..=3 of timeline 1, WAL ending inside segment 3; records of several sizes.
    fn wal() -> WalEncoder {
        let mut e = WalEncoder::new(0xD116, SEG, SYSID, 1, u64::from(SEG));
        let mut i = 0u32;
        while e.pos() < 3 * u64::from(SEG) + 300_000 {
            e.main_data_record(10, 0, i, &vec![i as u8 | 1; [100usize, 3000, 20_000][i as usize % 3]]);
            i += 1;
        }
        e
    }

    fn segment(e: &WalEncoder, n: u64) -> Vec<u8> {
        let off = e.offset(n * u64::from(SEG));
        let mut s = e.bytes()[off..(off + SEG as usize).min(e.bytes().len())].to_vec();
        s.resize(SEG as usize, 0);
        s
    }

    #[test]
    fn facts_at_rest_end_at_the_last_valid_record() {
        let e = wal();
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path()));
        let src = WalSource::new(store.clone(), None);
        assert_eq!(src.facts().unwrap(), None, "an empty archive has nothing to serve");
        std::fs::write(tmp.path().join("000000010000000000000001"), segment(&e, 1)).unwrap();
        let f = src.facts().unwrap().unwrap();
        assert_eq!((f.major, f.system_id, f.segment_size, f.timeline), (17, SYSID, SEG, 1));
        assert_eq!(f.flush, Lsn(2 * u64::from(SEG)));
        assert_eq!(f.history, Some(vec![]));
        // A trailing run: its valid prefix, which ends at the last complete record.
        std::fs::write(tmp.path().join("000000010000000000000002.partial"), segment(&e, 2)).unwrap();
        std::fs::write(tmp.path().join("000000010000000000000003.partial"), segment(&e, 3)).unwrap();
        let last = *e.records.last().unwrap();
        let end = src.facts().unwrap().unwrap().flush;
        assert!(end > Lsn(3 * u64::from(SEG)) && end.0 <= e.pos(), "{end} vs {last:X}");
        // A damaged byte in the last file: the end moves back before it.
        let mut bad = segment(&e, 3);
        bad[200_000] ^= 0x40;
        std::fs::write(tmp.path().join("000000010000000000000003.partial"), &bad).unwrap();
        let damaged = src.facts().unwrap().unwrap().flush;
        assert!(damaged < end && damaged.0 <= 3 * u64::from(SEG) + 200_000, "{damaged}");
    }

    #[test]
    fn a_streaming_receiver_decides_the_end() {
        let e = wal();
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(tmp.path()));
        std::fs::write(tmp.path().join("000000010000000000000001"), segment(&e, 1)).unwrap();
        std::fs::write(tmp.path().join("000000010000000000000002.partial"), segment(&e, 2)).unwrap();
        let (tx, rx) = watch::channel(SourceState {
            phase: Phase::Streaming,
            timeline: Some(1),
            flushed: Some(Lsn(2 * u64::from(SEG) + 4096)),
            system_id: Some(SYSID),
            segment_size: Some(SEG),
            ..SourceState::default()
        });
        let src = WalSource::new(store, Some(rx));
        assert_eq!(
            src.facts().unwrap().unwrap().flush,
            Lsn(2 * u64::from(SEG) + 4096),
            "the open .partial: never past flushed"
        );
        // Complete segments count whatever flushed says (it is published at syncs only).
        tx.send_modify(|s| s.flushed = Some(Lsn(u64::from(SEG))));
        assert_eq!(src.facts().unwrap().unwrap().flush, Lsn(2 * u64::from(SEG)));
        tx.send_modify(|s| s.flushed = Some(Lsn(2 * u64::from(SEG) + 4096)));
        // Upstream gone: the files are at rest again, and their valid WAL is served.
        tx.send_modify(|s| s.phase = Phase::Retrying);
        assert!(src.facts().unwrap().unwrap().flush > Lsn(2 * u64::from(SEG)));
        // The receiver moves to a new timeline: it is the newest.
        tx.send_modify(|s| {
            s.phase = Phase::Streaming;
            s.timeline = Some(2);
            s.flushed = Some(Lsn(3 * u64::from(SEG)));
        });
        let f = src.facts().unwrap().unwrap();
        assert_eq!((f.timeline, f.flush, f.history), (2, Lsn(3 * u64::from(SEG)), None));
        assert_eq!(major_of_version("15.18 (Debian 15.18-1)"), Some(15));
        assert_eq!(major_of_version("18beta1"), Some(18));
    }
}
