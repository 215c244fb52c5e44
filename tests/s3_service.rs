//! `walkeeper service` with `upload = "s3://…"`, against a real PostgreSQL and a real SeaweedFS: completed
//! segments go up, the metrics and /status show them; with the S3 gateway killed the source keeps streaming
//! (/health stays 200), the backlog and the failures show in the metrics and /status says the store is
//! failing; with the gateway back everything goes up and a SIGTERM stops the service with nothing pending.
//! A source without `upload` has no upload series and a null `upload` in /status.
//!
//! With no `AWS_*` variable in the service's environment, `[s3]` and `[source.s3]` alone reach the store
//! (the secret from `secret_access_key_file`); a wrong secret fails that source's uploads visibly while it
//! receives on, and a reload that changes a secret file restarts only the source using it. No secret shows
//! in the log, /status, /metrics or `--check`.

#[path = "s3_common/mod.rs"]
mod s3_common;
mod service_support;
mod support;

use s3_common::{complete_segments, run_s3, spool_names, wait_for, Bucket, Rig, WAIT};
use service_support::{create_slot, source_toml, walsender_pid, Service};
use std::fs;
use std::path::Path;
use support::s3::{ACCESS_KEY, REGION, SECRET_KEY};

/// `walkeeper_uploads_total{source,result}`; panics when the series is absent.
fn uploads(svc: &Service, source: &str, result: &str) -> u64 {
    let series = format!("walkeeper_uploads_total{{source=\"{source}\",result=\"{result}\"}}");
    let metrics = svc.metrics();
    let v = metrics.get(&series).unwrap_or_else(|| panic!("no {series} in {metrics:?}"));
    v.parse::<f64>().unwrap() as u64
}

/// The byte position just past segment file `name` (segments of `size` bytes).
fn segment_end(name: &str, size: u64) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    (log << 32) + (seg + 1) * size
}

#[test]
fn a_source_with_upload_uploads_shows_an_outage_in_its_metrics_and_catches_up() {
    let Some(Rig { mut s3, bucket, primary, spool, url, dir }) = Rig::start("up") else { return };
    create_slot(&primary, "plain");
    let plain = dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let sources = source_toml(
        "up",
        &primary,
        &spool,
        &format!("upload = \"{url}\"\nupload_partial_interval = 1\nupload_wait = 60\n"),
    ) + &source_toml("plain", &primary, &plain, "");
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut svc = Service::start_with(&sources, &env);

    // The upload series exist from the start, for the source with `upload` only.
    let metrics = svc.metrics();
    assert!(metrics.contains_key("walkeeper_upload_backlog_segments{source=\"up\"}"), "{metrics:?}");
    assert!(metrics.contains_key("walkeeper_uploaded_lsn_bytes{source=\"up\"}"), "{metrics:?}");
    assert!(
        !metrics.keys().any(|k| k.starts_with("walkeeper_upload") && k.contains("\"plain\"")),
        "{metrics:?}"
    );
    assert_eq!(svc.status("plain")["upload"], serde_json::Value::Null);
    assert_eq!(svc.status("up")["upload"]["location"], url.as_str());
    wait_for("both sources to stream", || svc.failing().is_empty(), || svc.log());

    // Completed segments go up; the metrics show them.
    primary.generate_wal(2);
    let first = primary.switch_wal();
    wait_for("the first segment in the bucket", || bucket.names("wal").contains(&first), || svc.log());
    wait_for(
        "the metrics to show it uploaded",
        || {
            uploads(&svc, "up", "ok") >= 1
                && svc.metric("walkeeper_upload_backlog_segments", "up") == 0
                && svc.metric("walkeeper_uploaded_lsn_bytes", "up") >= segment_end(&first, 1 << 20)
        },
        || format!("{:?}\n{}", svc.metrics(), svc.log()),
    );
    assert_eq!(uploads(&svc, "up", "conflict"), 0);
    assert_eq!(svc.status("up")["upload"]["failing"], false);

    // The gateway goes away: receiving goes on, /health stays 200, the backlog and the failures show.
    s3.kill_gateway();
    let failed_before = uploads(&svc, "up", "failed");
    for _ in 0..3 {
        primary.generate_wal(1);
    }
    let last = primary.switch_wal();
    wait_for("the spool to receive everything", || spool.join(&last).is_file(), || svc.log());
    // The segment file is in place a moment before the flush position reaches its end (the metrics follow).
    wait_for(
        "the backlog, the failures, the failing store and the flush position to show",
        || {
            svc.metric("walkeeper_upload_backlog_segments", "up") >= 2
                && uploads(&svc, "up", "failed") > failed_before
                && svc.status("up")["upload"]["failing"] == true
                && svc.metric("walkeeper_flushed_lsn_bytes", "up") >= segment_end(&last, 1 << 20)
        },
        || format!("{:?}\n{}\n{}", svc.metrics(), svc.status("up"), svc.log()),
    );
    let (code, health) = svc.health();
    assert_eq!(code, 200, "a store outage is not a receiving outage: {health}");
    let status = svc.status("up");
    assert!(status["upload"]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    assert!(status["upload"]["failing_since_unix"].is_number(), "{status}");
    assert_eq!(status["phase"], "streaming", "{status}");
    assert!(svc.metric("walkeeper_uploaded_lsn_bytes", "up") < segment_end(&last, 1 << 20));

    // The gateway is back: the backlog drains.
    s3.restart_gateway();
    wait_for(
        "the uploads to catch up",
        || {
            bucket.names("wal").contains(&last)
                && svc.metric("walkeeper_upload_backlog_segments", "up") == 0
                && svc.status("up")["upload"]["failing"] == false
                && svc.metric("walkeeper_uploaded_lsn_bytes", "up") >= segment_end(&last, 1 << 20)
        },
        || format!("{:?}\n{}\n{}", svc.metrics(), svc.status("up"), svc.log()),
    );
    assert_eq!(svc.health().0, 200);
    assert_eq!(uploads(&svc, "up", "conflict"), 0);

    // A clean stop leaves nothing pending; the bucket mirrors the spool and verifies whole.
    svc.signal(libc::SIGTERM);
    let status = svc.wait_exit(WAIT).expect("the service exits");
    assert_eq!(status.code(), Some(0), "{}", svc.log());
    let log = svc.log();
    assert!(log.contains(&format!("uploads to \"{url}\" are complete")), "{log}");
    // The upload thread's lines name their source, as the receive loop's do.
    assert!(log.contains(&format!("walkeeper: [up] warning: upload to \"{url}\" failed: ")), "{log}");
    let in_spool = complete_segments(&spool_names(&spool));
    assert_eq!(complete_segments(&bucket.names("wal")), in_spool, "no gap, nothing extra");
    for name in &in_spool {
        assert_eq!(bucket.get("wal", name), fs::read(spool.join(name)).unwrap(), "object {name}");
    }
    let r = run_s3(&s3, &["verify", "-D", &url]);
    assert_eq!(r.code, Some(0), "{r}");
}

/// Every complete segment of `spool` is in the bucket under `prefix`, byte for byte, and nothing else is.
fn mirrors(bucket: &Bucket, prefix: &str, spool: &Path) {
    let in_spool = complete_segments(&spool_names(spool));
    assert!(!in_spool.is_empty(), "{} holds no complete segment", spool.display());
    assert_eq!(complete_segments(&bucket.names(prefix)), in_spool, "{prefix}: no gap, nothing extra");
    for name in &in_spool {
        assert_eq!(bucket.get(prefix, name), fs::read(spool.join(name)).unwrap(), "object {prefix}/{name}");
    }
}

#[test]
fn store_settings_from_the_configuration_alone_and_a_reload_that_changes_a_secret() {
    let Some(Rig { s3, bucket, primary, spool, url: _, dir }) = Rig::start("a") else { return };
    create_slot(&primary, "b");
    let spool_b = dir.path().join("b");
    fs::create_dir(&spool_b).unwrap();
    // Secrets in files of their own, as systemd's LoadCredential= or a Kubernetes secret leave them.
    let (top_secret, a_secret) = (dir.path().join("top.secret"), dir.path().join("a.secret"));
    fs::write(&top_secret, format!("{SECRET_KEY}\n")).unwrap();
    fs::write(&a_secret, format!("{SECRET_KEY}\n")).unwrap();
    let wrong = "not-the-secret-4f1c9";
    // `a` takes its secret from its own table, everything else from [s3]; `b` takes all from [s3] (and its
    // stop with the wrong secret, at the second reload, waits 2 s for uploads that cannot succeed).
    let config = format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"{REGION}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key_file = \"{}\"\nallow_http = true\n\n{}{}",
        s3.endpoint(),
        top_secret.display(),
        source_toml(
            "a",
            &primary,
            &spool,
            &format!(
                "upload = \"{}\"\n[source.s3]\nsecret_access_key_file = \"{}\"\n",
                s3.url("a"),
                a_secret.display()
            ),
        ),
        source_toml("b", &primary, &spool_b, &format!("upload = \"{}\"\nupload_wait = 2\n", s3.url("b"))),
    );
    let mut svc = Service::start_without_aws(&config);
    wait_for("both sources to stream", || svc.failing().is_empty(), || svc.log());

    // Both upload with what the file says.
    primary.generate_wal(1);
    let first = primary.switch_wal();
    wait_for(
        "the first segment in both prefixes",
        || bucket.names("a").contains(&first) && bucket.names("b").contains(&first),
        || svc.log(),
    );

    // b's secret goes wrong: the reload restarts b only (a keeps its connection).
    fs::write(&top_secret, format!("{wrong}\n")).unwrap();
    let a_pid = walsender_pid(&primary, "a");
    let line = svc.reload();
    assert!(line.ends_with("2 source(s): started [], stopped [], restarted [b], 1 unchanged"), "{line}");
    assert_eq!(walsender_pid(&primary, "a"), a_pid, "a kept its connection");
    wait_for("b to stream again", || svc.failing().is_empty(), || svc.log());
    let (ok_before, failed_before) = (uploads(&svc, "b", "ok"), uploads(&svc, "b", "failed"));
    primary.generate_wal(1);
    let second = primary.switch_wal();
    wait_for(
        "b to receive the segment and fail to upload it",
        || {
            spool_b.join(&second).is_file()
                && svc.metric("walkeeper_upload_backlog_segments", "b") >= 1
                && uploads(&svc, "b", "failed") > failed_before
                && svc.status("b")["upload"]["failing"] == true
        },
        || format!("{}\n{}", svc.status("b"), svc.log()),
    );
    wait_for("a to upload it", || bucket.names("a").contains(&second), || svc.log());
    let status = svc.status("b");
    assert_eq!(status["phase"], "streaming", "receiving goes on: {status}");
    assert!(status["upload"]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    assert_eq!(uploads(&svc, "b", "ok"), ok_before);
    assert!(!bucket.names("b").contains(&second));
    assert_eq!(svc.health().0, 200, "a store refusing b's secret is not a receiving outage");
    // The upload thread's lines name their source too.
    let failed = format!("walkeeper: [b] warning: upload to \"{}\" failed: ", s3.url("b"));
    assert!(svc.log().contains(&failed), "{}", svc.log());

    // The secret is right again: b restarts and catches up.
    fs::write(&top_secret, SECRET_KEY).unwrap();
    let line = svc.reload();
    assert!(line.ends_with("restarted [b], 1 unchanged"), "{line}");
    wait_for(
        "b to catch up",
        || bucket.names("b").contains(&second) && svc.status("b")["upload"]["failing"] == false,
        || format!("{}\n{}", svc.status("b"), svc.log()),
    );

    // No secret anywhere an operator looks.
    let check = support::run_walkeeper(&["service", "--check", "--config", svc.config.to_str().unwrap()]);
    assert_eq!(check.code, Some(0), "{check}");
    let shown = [svc.get("/status").1, svc.get("/metrics").1, svc.get("/health").1, check.to_string()];
    svc.signal(libc::SIGTERM);
    let status = svc.wait_exit(WAIT).expect("the service exits");
    assert_eq!(status.code(), Some(0), "{}", svc.log());
    for text in shown.iter().chain([&svc.log()]) {
        assert!(!text.contains(SECRET_KEY) && !text.contains(wrong), "a secret is shown:\n{text}");
    }
    mirrors(&bucket, "a", &spool);
    mirrors(&bucket, "b", &spool_b);
}
