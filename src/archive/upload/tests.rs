//! The uploader's thread against a directory store (the same `Store` contract as a bucket; the bucket itself
//! is exercised by tests/s3_upload.rs): uploads, resume, conflicts, outages, `--remove-uploaded`, the wait
//! at exit.

use super::*;
use crate::wal::segment::SegmentId;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

const SEG: u32 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

fn seg(n: u64) -> String {
    SegmentId { timeline: 1, number: n }.file_name(SEG)
}

fn lsn(n: u64) -> Lsn {
    Lsn(n * u64::from(SEG))
}

struct Setup {
    _tmp: tempfile::TempDir,
    spool: PathBuf,
    target: PathBuf,
    source: watch::Sender<SourceState>,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, target) = (tmp.path().join("spool"), tmp.path().join("target"));
        fs::create_dir(&spool).unwrap();
        fs::create_dir(&target).unwrap();
        let state = SourceState { segment_size: Some(SEG), flushed: Some(lsn(1)), ..SourceState::default() };
        Setup { _tmp: tmp, spool, target, source: watch::Sender::new(state) }
    }

    fn settings(&self) -> UploadSettings {
        UploadSettings::new(self.target.to_str().unwrap())
    }

    fn start(&self, settings: &UploadSettings) -> Uploader {
        Uploader::start(settings, &self.spool, self.source.subscribe()).unwrap()
    }

    /// A file in the spool; a complete segment is announced as the receive loop does.
    fn put(&self, name: &str, data: &[u8]) {
        fs::write(self.spool.join(name), data).unwrap();
        self.source.send_modify(|s| s.segments_completed += 1);
    }

    fn target_names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.target) else { return Vec::new() };
        let mut v: Vec<String> = entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    fn wait_for(&self, up: &Uploader, what: &str, ok: impl Fn(&UploadState, &[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if ok(&up.state().borrow(), &self.target_names()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}: {:?}, target {:?}", up.state().borrow(), self.target_names());
    }
}

#[test]
fn uploads_each_file_once_and_a_restart_changes_no_object() {
    let s = Setup::new();
    s.put(&seg(1), b"one");
    s.put(&seg(2), b"two");
    s.put("00000002.history", b"1\t0/2000000\tno recovery target specified\n");
    s.put(&format!("{}.partial", seg(3)), b"three so far");
    s.source.send_modify(|st| st.flushed = Some(Lsn(lsn(3).0 + 100)));
    let up = s.start(&s.settings());
    let partial = format!("{}.partial", seg(3));
    s.wait_for(&up, "everything", |st, names| {
        names.len() == 4 && st.uploads_ok == 3 && st.partial_uploads == 1
    });
    assert_eq!(up.state().borrow().uploaded_through, Some(Lsn(lsn(3).0 + 100)));
    assert_eq!(fs::read(s.target.join(&partial)).unwrap(), b"three so far");

    // Segment 3 completes: uploaded, and its .partial object goes.
    fs::remove_file(s.spool.join(&partial)).unwrap();
    s.put(&seg(3), b"three");
    s.wait_for(&up, "segment 3", |_, names| names.contains(&seg(3)) && !names.contains(&partial));
    let finished = up.finish(WAIT);
    assert_eq!(finished, Finished { location: s.target.display().to_string(), ..Finished::default() });

    // A restart (as after kill -9): the same objects, untouched.
    let identities = || -> Vec<(u64, i64)> {
        let meta = |n: &String| fs::metadata(s.target.join(n)).unwrap();
        s.target_names().iter().map(meta).map(|m| (m.ino(), m.mtime_nsec())).collect()
    };
    let before = identities();
    let up = s.start(&s.settings());
    s.wait_for(&up, "the restart's check", |st, _| st.uploads_ok == 4 && st.backlog_files == 0);
    assert_eq!(before, identities());
    assert_eq!(up.finish(WAIT).pending_files, 0);
}

#[test]
fn a_conflict_is_reported_kept_and_never_retried() {
    let s = Setup::new();
    fs::write(s.target.join(seg(2)), b"someone else's").unwrap();
    s.put(&seg(1), b"one");
    s.put(&seg(2), b"two");
    s.put(&seg(3), b"three");
    s.source.send_modify(|st| st.flushed = Some(lsn(4)));
    let up = s.start(&s.settings());
    s.wait_for(&up, "the conflict", |st, _| st.conflicts == 1 && st.uploads_ok == 2);
    let st = up.state().borrow().clone();
    assert_eq!(st.conflicted, [s.target.join(seg(2)).display().to_string()]);
    assert_eq!(st.uploaded_through, Some(lsn(2)), "the conflicting segment is not off-site");
    assert_eq!(fs::read(s.target.join(seg(2))).unwrap(), b"someone else's");
    assert_eq!(fs::read(s.spool.join(seg(2))).unwrap(), b"two");
    s.put(&seg(4), b"four");
    s.wait_for(&up, "segment 4", |st, _| st.uploads_ok == 3);
    assert_eq!(up.state().borrow().conflicts, 1, "never retried");
    let finished = up.finish(WAIT);
    assert_eq!(finished.conflicts, [s.target.join(seg(2)).display().to_string()]);
    assert_eq!(finished.pending_files, 0);
}

#[test]
fn an_outage_grows_the_backlog_and_everything_goes_up_after() {
    let s = Setup::new();
    fs::remove_dir(&s.target).unwrap();
    let up = s.start(&s.settings());
    s.put(&seg(1), b"one");
    s.put(&seg(2), b"two");
    // The store cannot even be listed: each failed round counts as a failed attempt.
    s.wait_for(&up, "the failures", |st, _| {
        st.last_error.is_some() && st.backlog_files == 2 && st.uploads_failed >= 1
    });
    assert_eq!(up.state().borrow().uploaded_through, None, "nothing is known about the store yet");
    fs::create_dir(&s.target).unwrap();
    s.put(&seg(3), b"three");
    s.wait_for(&up, "the catch-up", |st, names| {
        names.len() == 3 && st.last_error.is_none() && st.backlog_files == 0
    });
    assert_eq!(up.finish(WAIT).pending_files, 0);
}

#[test]
fn finish_reports_what_could_not_go_up_in_time() {
    let s = Setup::new();
    fs::remove_dir(&s.target).unwrap();
    let up = s.start(&s.settings());
    s.put(&seg(1), b"one");
    s.wait_for(&up, "a failure with the file waiting", |st, _| {
        st.last_error.is_some() && st.backlog_files == 1
    });
    let finished = up.finish(Duration::from_millis(300));
    assert_eq!((finished.pending_files, finished.pending_bytes), (1, 3));
    assert!(finished.partial_pending);
}

#[test]
fn remove_uploaded_keeps_the_newest_segment_file() {
    let s = Setup::new();
    let settings = UploadSettings { remove_uploaded: true, partial_interval: None, ..s.settings() };
    s.put(&seg(1), b"one");
    s.put(&seg(2), b"two");
    s.put("00000002.history", b"1\t0/2000000\tx\n");
    let up = s.start(&settings);
    s.wait_for(&up, "the uploads", |st, _| st.uploads_ok == 3);
    let spool = || {
        let mut v: Vec<String> =
            fs::read_dir(&s.spool).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + WAIT;
    while spool().contains(&seg(1)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(spool(), [seg(2), "00000002.history".to_string()]);
    s.put(&format!("{}.partial", seg(3)), b"");
    s.wait_for(&up, "another round", |_, _| !spool().contains(&seg(2)));
    assert!(s.target_names().iter().all(|n| !n.ends_with(".partial")), "--upload-partial-interval 0");
    up.finish(WAIT);
}

#[test]
fn the_spool_itself_is_no_upload_location() {
    let s = Setup::new();
    let same = UploadSettings::new(s.spool.to_str().unwrap());
    let err = check_location(&same, &s.spool).unwrap_err();
    assert!(err.contains("is the receive directory itself"), "{err}");
    assert!(check_location(&UploadSettings::new(""), &s.spool).unwrap_err().contains("empty"));
    assert!(check_location(&s.settings(), &s.spool).is_ok());
    assert!(check_location(&UploadSettings::new("gs://b/x"), &s.spool).is_err());
}

#[test]
fn the_upload_threads_run_below_the_receive_loop() {
    let s = Setup::new();
    let up = s.start(&s.settings());
    let nice_of = |comm: &str| -> Vec<i64> {
        fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                (fs::read_to_string(t.join("comm")).ok()?.trim() == comm).then_some(t)
            })
            .map(|t| {
                let stat = fs::read_to_string(t.join("stat")).unwrap();
                // Fields after the command name (which is in parentheses); nice is field 19.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(16).unwrap().parse().unwrap()
            })
            .collect()
    };
    // Thread names are cut to 15 bytes. (Other tests' uploaders may be running too.)
    let nice = nice_of("walkeeper-uploa");
    assert!(!nice.is_empty() && nice.iter().all(|&n| n == i64::from(UPLOAD_NICE)), "{nice:?}");
    up.finish(WAIT);
}

/// A source state streaming with the server `behind` bytes ahead of what was received.
fn streaming(behind: u64) -> SourceState {
    SourceState {
        phase: Phase::Streaming,
        segment_size: Some(SEG),
        received: Some(lsn(10)),
        flushed: Some(lsn(10)),
        server_end: Some(Lsn(lsn(10).0 + behind)),
        ..SourceState::default()
    }
}

#[test]
fn catching_up_means_streaming_with_more_than_four_segments_to_go() {
    let four = 4 * u64::from(SEG);
    assert_eq!(catch_up_backlog(&streaming(0)), None);
    assert_eq!(catch_up_backlog(&streaming(four)), None);
    assert_eq!(catch_up_backlog(&streaming(four + 1)), Some(four + 1));
    // Only while streaming, and only with every position known.
    assert_eq!(catch_up_backlog(&SourceState { phase: Phase::Retrying, ..streaming(four + 1) }), None);
    assert_eq!(catch_up_backlog(&SourceState { phase: Phase::Stopped, ..streaming(four + 1) }), None);
    assert_eq!(catch_up_backlog(&SourceState { server_end: None, ..streaming(four + 1) }), None);
    assert_eq!(catch_up_backlog(&SourceState { segment_size: None, ..streaming(four + 1) }), None);
    // The server behind what was received (a stale report): no catch-up, no underflow.
    assert_eq!(catch_up_backlog(&SourceState { server_end: Some(Lsn(0)), ..streaming(0) }), None);
}

#[test]
fn uploads_wait_for_a_catch_up_at_most_a_minute_and_never_when_something_waits_on_them() {
    let t0 = Instant::now();
    let behind = streaming(100 * u64::from(SEG));
    let mut y = Yield::default();
    assert!(y.wait_now(&behind, false, false, t0));
    assert!(y.wait_now(&behind, false, false, t0 + MAX_CATCH_UP_WAIT - Duration::from_millis(1)));
    assert!(!y.wait_now(&behind, false, false, t0 + MAX_CATCH_UP_WAIT), "a catch-up that does not end");
    // Caught up: the next catch-up waits again, its own minute.
    assert!(!y.wait_now(&streaming(0), false, false, t0 + MAX_CATCH_UP_WAIT));
    let t1 = t0 + MAX_CATCH_UP_WAIT * 2;
    assert!(y.wait_now(&behind, false, false, t1));
    // A draining exit and --slot-follows-upload never wait.
    assert!(!y.wait_now(&behind, true, false, t1));
    assert!(!Yield::default().wait_now(&behind, false, true, t1));
}

#[test]
fn nothing_goes_up_while_receiving_catches_up_and_everything_after() {
    let s = Setup::new();
    s.source.send_replace(streaming(100 * u64::from(SEG)));
    let up = s.start(&s.settings());
    s.put(&seg(1), b"one");
    s.put(&seg(2), b"two");
    // Counted while waiting (the metrics show the backlog), not uploaded; the thread looks every 200 ms and
    // at each completed segment: give it several looks.
    s.wait_for(&up, "the backlog counted", |st, _| st.backlog_files == 2 && st.backlog_bytes == 6);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.target_names(), Vec::<String>::new(), "{:?}", up.state().borrow());
    s.source.send_modify(|st| st.server_end = st.received);
    s.wait_for(&up, "the uploads after the catch-up", |st, names| names.len() == 2 && st.backlog_files == 0);
    assert_eq!(up.finish(WAIT).pending_files, 0);

    // `--upload-wait 0` in the middle of a catch-up: nothing went up, and the exit says exactly what waits.
    let s = Setup::new();
    s.source.send_replace(streaming(100 * u64::from(SEG)));
    let up = s.start(&s.settings());
    s.put(&seg(1), b"one");
    s.put(&seg(2), b"two");
    let finished = up.finish(Duration::ZERO);
    assert_eq!((finished.pending_files, finished.pending_bytes), (2, 6), "{finished:?}");
    assert_eq!(s.target_names(), Vec::<String>::new());

    // A clean exit in the middle of a catch-up does not wait for it: it uploads what is pending.
    let s = Setup::new();
    s.source.send_replace(streaming(100 * u64::from(SEG)));
    let up = s.start(&s.settings());
    s.put(&seg(1), b"one");
    assert_eq!(up.finish(WAIT).pending_files, 0);
    assert_eq!(s.target_names(), [seg(1)]);

    // With --slot-follows-upload the server waits on the uploads: they never wait.
    let s = Setup::new();
    s.source.send_replace(streaming(100 * u64::from(SEG)));
    let up = s.start(&UploadSettings { slot_follows: true, ..s.settings() });
    s.put(&seg(1), b"one");
    s.wait_for(&up, "the upload during the catch-up", |_, names| names.len() == 1);
    assert_eq!(up.finish(WAIT).pending_files, 0);
}
