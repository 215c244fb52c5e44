//! `walkeeper service` refusing configurations at start: one error line naming file, source and key, exit
//! 1, and nothing created in any directory (not even a lock file). Also `--check`, `--health-check` and the
//! usage errors, and SIGINT. No server is needed: these sources never get as far as streaming.

mod service_support;
mod support;

use service_support::free_addr;
use std::path::Path;
use support::{walkeeper, Run, LOCK_FILE};
use walkeeper::archive::lock::ArchiveLock;

/// A config with `[service]` and sources `a` and `b` on directories of `root`, plus `extra`.
fn config(root: &Path, listen: &str, extra: &str) -> std::path::PathBuf {
    for d in ["a", "b"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let text = format!(
        "[service]\nlisten = \"{listen}\"\n\n\
         [[source]]\nname = \"a\"\nconninfo = \"host=127.0.0.1 port=1 user=rep\"\ndirectory = \"a\"\n\n\
         [[source]]\nname = \"b\"\nconninfo = \"host=127.0.0.1 port=1 user=rep\"\ndirectory = \"b\"\n{extra}"
    );
    let file = root.join("walkeeper.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn run_service(file: &Path) -> Run {
    Run::within(walkeeper().arg("service").arg("--config").arg(file), std::time::Duration::from_secs(60))
}

/// Nothing in either source directory: not even a lock file.
fn untouched(root: &Path) {
    for d in ["a", "b"] {
        assert!(support::names(&root.join(d)).is_empty(), "{d}: {:?}", support::names(&root.join(d)));
        assert!(!root.join(d).join(LOCK_FILE).exists(), "{d}: a lock file was created");
    }
}

#[test]
fn bad_configurations_are_one_line_and_create_nothing() {
    let addr = free_addr().to_string();
    let cases = [
        ("bogus = 1\n", "line 13: source \"b\": unknown key `bogus`, expected one of"),
        (
            "[[source]]\nname = \"a\"\nconninfo = \"\"\ndirectory = \"c\"\n",
            "source \"a\": key \"name\": \"a\" is also the name of an earlier source",
        ),
        ("[[source]]\nname = \"c\"\nconninfo = \"\"\ndirectory = \"b/\"\n", "key \"directory\": \""),
        (
            "synchronous = \"yes\"\n",
            "line 13: source \"b\": key \"synchronous\": invalid type: string \"yes\", expected a boolean",
        ),
        ("create_slot = true\n", "source \"b\": key \"create_slot\": needs a slot: set \"slot\" too"),
        (
            "keep_min_age = \"7d\"\n",
            "source \"b\": key \"keep_min_age\": applies to keep_backups, which is not set",
        ),
        (
            "compression = \"zstd:99\"\n",
            "source \"b\": key \"compression\": invalid compression specification",
        ),
    ];
    for (extra, expected) in cases {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("c")).unwrap();
        let file = config(root.path(), &addr, extra);
        let r = run_service(&file);
        assert_eq!(r.code, Some(1), "{extra}: {r}");
        let line = r.error_line();
        let prefix = format!("walkeeper: error: {}: ", file.display());
        assert!(line.starts_with(&prefix) && line.contains(expected), "{line}\nexpected: {expected}");
        untouched(root.path());
    }
    // The shared directory is named, canonical.
    let root = tempfile::tempdir().unwrap();
    let file = config(root.path(), &addr, "[[source]]\nname = \"c\"\nconninfo = \"\"\ndirectory = \"b/\"\n");
    let canonical = root.path().join("b").canonicalize().unwrap();
    assert!(run_service(&file).error_line().ends_with(&format!(
        "source \"c\": key \"directory\": \"{}\" is also the directory of source \"b\": one archive has one writer",
        canonical.display()
    )));
}

#[test]
fn a_directory_another_walkeeper_writes_is_refused_before_any_lock_is_taken() {
    let root = tempfile::tempdir().unwrap();
    let file = config(root.path(), &free_addr().to_string(), "");
    // This test process plays the other walkeeper, on b.
    let held = ArchiveLock::acquire(&root.path().join("b")).unwrap();
    let r = run_service(&file);
    assert_eq!(r.code, Some(1), "{r}");
    assert_eq!(
        r.error_line(),
        format!(
            "walkeeper: error: {}: source \"b\": key \"directory\": archive \"{}\" is in use by another walkeeper (pid {}: {})",
            file.display(),
            root.path().join("b").canonicalize().unwrap().display(),
            std::process::id(),
            std::fs::read_to_string(root.path().join("b").join(LOCK_FILE)).unwrap().lines().nth(1).unwrap()
        )
    );
    assert!(!root.path().join("a").join(LOCK_FILE).exists(), "a was locked before b was checked");
    drop(held);
}

#[test]
fn an_address_in_use_is_refused_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let file = config(root.path(), &addr, "");
    let r = run_service(&file);
    assert_eq!(r.code, Some(1), "{r}");
    assert_eq!(
        r.error_line(),
        format!("walkeeper: error: {}: [service]: key \"listen\": could not listen on {addr}: Address already in use", file.display())
    );
    untouched(root.path());
}

#[test]
fn check_validates_without_starting() {
    let root = tempfile::tempdir().unwrap();
    let file = config(root.path(), "127.0.0.1:9187", "");
    let r = Run::of(walkeeper().args(["service", "--check", "--config"]).arg(&file));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout
            .starts_with(&format!("{}: valid; 2 source(s), listening on 127.0.0.1:9187\n", file.display())),
        "{r}"
    );
    untouched(root.path());
    std::fs::write(&file, "[[source]]\n").unwrap();
    let r = Run::of(walkeeper().args(["service", "--check", "-c"]).arg(&file));
    assert_eq!(
        (r.code, r.error_line()),
        (Some(1), &*format!("walkeeper: error: {}: line 1: source #1: missing key `name`", file.display()))
    );
}

#[test]
fn check_warns_about_a_secret_in_a_file_others_may_read_and_never_shows_it() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let extra =
        "upload = \"s3://wal/b\"\n[s3]\naccess_key_id = \"k\"\nsecret_access_key = \"hunter2-a8d3\"\n";
    let file = config(root.path(), "127.0.0.1:9187", extra);
    let check = |mode: u32| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = Run::of(walkeeper().args(["service", "--check", "--config"]).arg(&file));
        assert_eq!(r.code, Some(0), "{r}");
        assert!(!r.stdout.contains("hunter2") && !r.stderr.contains("hunter2"), "{r}");
        r
    };
    let r = check(0o644);
    assert_eq!(
        r.stderr,
        format!(
            "walkeeper: warning: configuration file \"{}\" holds an S3 secret and has group or world access; \
             permissions should be u=rw (0600) or less (u=rw,g=r (0640) if owned by root), or keep the secret \
             in secret_access_key_file\n",
            file.display()
        )
    );
    assert_eq!(check(0o600).stderr, "");
    // The secret wrong in type: refused, and not shown either.
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap().replace("\"hunter2-a8d3\"", "12345678"))
        .unwrap();
    let r = Run::of(walkeeper().args(["service", "--check", "--config"]).arg(&file));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        r.error_line().contains("[s3]: key \"secret_access_key\": ") && !r.stderr.contains("12345678"),
        "{r}"
    );
    untouched(root.path());
}

#[test]
fn health_check_exits_zero_only_on_200() {
    // Nothing listens there.
    let addr = free_addr();
    let r = Run::of(walkeeper().args(["service", "--health-check", &format!("http://{addr}/health")]));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.error_line().starts_with(&format!("walkeeper: error: http://{addr}/health: ")), "{r}");
    // A service whose sources cannot connect answers 503.
    let root = tempfile::tempdir().unwrap();
    let file = config(root.path(), &addr.to_string(), "");
    let mut child = walkeeper().args(["service", "-c"]).arg(&file).spawn().unwrap();
    let url = format!("http://{addr}/health");
    let mut last = None;
    let answered = support::wait_until(support::TIMEOUT, || {
        let r = Run::of(walkeeper().args(["service", "--health-check", &url]));
        let done = r.stderr.contains("answered");
        last = Some(r);
        done
    });
    // SIGINT stops it like SIGTERM: exit 0.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let mut status = None;
    support::wait_until(std::time::Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let last = last.unwrap();
    assert!(answered, "{last}");
    assert!(status.is_some_and(|s| s.success()), "SIGINT: {status:?}");
    assert_eq!((last.code, last.error_line()), (Some(1), &*format!("walkeeper: error: {url} answered 503")));
    let r = Run::of(walkeeper().args(["service", "--health-check", "ftp://x"]));
    assert_eq!(r.error_line(), "walkeeper: error: \"ftp://x\" is not an http:// URL");
}

#[test]
fn usage_errors() {
    let r = Run::of(walkeeper().arg("service"));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.starts_with("walkeeper: error: missing required argument: -c/--config FILE\n"), "{r}");
    assert!(
        r.stderr.contains("walkeeper: hint: Try \"walkeeper service --help\" for more information."),
        "{r}"
    );
    let r = Run::of(walkeeper().args(["service", "--health-check", "http://x/", "--config", "f"]));
    assert_eq!(r.code, Some(1), "{r}");
}

/// Without `-v`, a source's lines still name it (tests/s3_service.rs checks the upload thread's).
#[test]
fn a_sources_log_lines_name_it_at_the_default_verbosity() {
    let root = tempfile::tempdir().unwrap();
    let file = config(root.path(), &free_addr().to_string(), "");
    let log = root.path().join("stderr");
    let mut child = walkeeper()
        .args(["service", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wanted = ["walkeeper: [a] error: ", "walkeeper: [b] error: "];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if wanted.iter().all(|w| text.contains(w)) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    for w in wanted {
        assert!(text.contains(w), "no line starting {w:?}:\n{text}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("walkeeper: error: ") || l.starts_with("walkeeper: warning: ")),
        "{text}"
    );
}
