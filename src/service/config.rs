//! The service's configuration file (TOML), read and validated whole before anything touches the file
//! system: every key of every source is checked, connection strings are resolved the way `walkeeper
//! receive` resolves `-d` (libpq's rules and environment; passwords from a passfile or `PGPASSFILE`, never
//! a prompt), directories must exist and no two sources may share one (compared as canonical paths).
//! Unknown keys are refused. An error is one line naming the file, the line when the parser knows it, the
//! source, the key and what is wrong ([`ConfigError`]).
//!
//! Defaults are those of `walkeeper receive` without options. docs/service.md is the reference.

use crate::archive::retention::{parse_age, Policy};
use crate::archive::upload::{self, UploadSettings};
use crate::cli::compress::parse_compress;
use crate::conn::conninfo::{self, Sources};
use crate::conn::{ConnectOptions, PasswordPrompt};
use crate::protocol::codec::os_error;
use crate::protocol::replication::validate_slot_name;
use crate::serve::{ServeConfig, ServeSection};
use crate::stream::feedback::ApplyReport;
use crate::stream::liveness::DEFAULT_RECEIVE_TIMEOUT;
use crate::stream::ReceiveConfig;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the HTTP endpoints listen when `[service] listen` is not set.
const DEFAULT_LISTEN: &str = "127.0.0.1:9187";

/// A configuration file larger than this is refused (a few hundred sources take a few tens of kB).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// At most this many sources: each one is a thread and a connection.
const MAX_SOURCES: usize = 1000;

/// Source names: the `source` label of every metric and the prefix of their log lines.
const MAX_NAME_LEN: usize = 64;

/// pg_receivewal's bound for `-s`, used for every duration of the file.
const MAX_SECONDS: u64 = 2_147_483;

/// `status_interval` when not set: pg_receivewal's default.
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The file it was read from.
    pub file: PathBuf,
    pub listen: SocketAddr,
    /// In the file's order; names and directories are unique.
    pub sources: Vec<Source>,
}

/// One source: a server streamed into one archive directory.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    /// What the receive loop runs with; its directory is canonical.
    pub receive: ReceiveConfig,
    /// `keep_backups` (and `keep_min_age`), applied every `interval`; None without `keep_backups`.
    pub retention: Option<Retention>,
    /// `[source.serve]`: the walsender serving this archive to standbys.
    pub serve: Option<ServeConfig>,
    /// `upload` and its keys, as `receive --upload` and its options; None without `upload`.
    pub upload: Option<UploadSettings>,
    /// The settings as written, to tell a changed source from an untouched one on reload.
    settings: SourceSettings,
}

impl Source {
    /// The archive directory (canonical).
    pub fn directory(&self) -> &Path {
        &self.receive.directory
    }

    /// Same settings and same directory: a reload keeps it running untouched.
    pub fn unchanged(&self, other: &Source) -> bool {
        self.settings == other.settings && self.receive.directory == other.receive.directory
    }
}

/// Retention by base backups (`archive::retention`) for one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub policy: Policy,
    /// How often it runs.
    pub interval: Duration,
}

/// `retention_interval` when not set.
const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(600);

/// The file as written. Unknown keys are refused at every level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    #[serde(default)]
    service: ServiceSettings,
    #[serde(default)]
    source: Vec<SourceSettings>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServiceSettings {
    listen: Option<String>,
}

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct SourceSettings {
    name: String,
    conninfo: String,
    directory: PathBuf,
    slot: Option<String>,
    #[serde(default)]
    create_slot: bool,
    #[serde(default)]
    synchronous: bool,
    compression: Option<String>,
    #[serde(default)]
    failover: bool,
    keep_backups: Option<u32>,
    keep_min_age: Option<toml::Value>,
    retention_interval: Option<toml::Value>,
    status_interval: Option<toml::Value>,
    receive_timeout: Option<toml::Value>,
    serve: Option<ServeSection>,
    upload: Option<String>,
    upload_partial_interval: Option<toml::Value>,
    upload_wait: Option<toml::Value>,
    #[serde(default)]
    slot_follows_upload: bool,
    #[serde(default)]
    remove_uploaded: bool,
}

/// A configuration error: one line, `FILE: [line N: ][source "NAME": ][key "KEY": ]what is wrong`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based, when the TOML parser pointed at it.
    pub line: Option<usize>,
    /// `source "NAME"`, or `source #N` for one without a usable name.
    pub place: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(place) = &self.place {
            write!(f, "{place}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key \"{key}\": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Read and validate `file`. `env` looks up environment variables (libpq's `PG*` defaults).
pub fn load(file: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<ServiceConfig, ConfigError> {
    let error = |message: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        place: None,
        key: None,
        message,
    };
    let text = read_bounded(file).map_err(error)?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, file, &base, env)
}

fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let describe = |e: std::io::Error| format!("could not read configuration file: {}", os_error(&e));
    let f = std::fs::File::open(file).map_err(describe)?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(describe)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("configuration file is larger than {MAX_FILE_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "configuration file is not valid UTF-8".to_string())
}

/// Validate the text of a configuration file; relative directories are taken from `base` (the file's
/// directory).
fn parse(
    text: &str,
    file: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServiceConfig, ConfigError> {
    let settings = deserialize(text, file)?;
    let listen_text = settings.service.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().map_err(|_| ConfigError {
        file: file.to_path_buf(),
        line: None,
        place: Some("[service]".into()),
        key: Some("listen".into()),
        message: format!("\"{listen_text}\" is not an address and port such as \"127.0.0.1:9187\""),
    })?;
    let whole = |message: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        place: None,
        key: None,
        message,
    };
    if settings.source.is_empty() {
        return Err(whole("no [[source]] is defined: the service needs at least one".into()));
    }
    if settings.source.len() > MAX_SOURCES {
        return Err(whole(format!(
            "{} sources defined; at most {MAX_SOURCES} are supported",
            settings.source.len()
        )));
    }
    let mut sources: Vec<Source> = Vec::with_capacity(settings.source.len());
    for (index, s) in settings.source.into_iter().enumerate() {
        let place = if valid_name(&s.name) {
            format!("source \"{}\"", s.name)
        } else {
            format!("source #{}", index + 1)
        };
        let err = |key: &str, message: String| ConfigError {
            file: file.to_path_buf(),
            line: None,
            place: Some(place.clone()),
            key: Some(key.to_string()),
            message,
        };
        let source = source(s, base, env).map_err(|(key, message)| err(key, message))?;
        if let Some(other) = sources.iter().find(|o| o.name == source.name) {
            return Err(err("name", format!("\"{}\" is also the name of an earlier source", other.name)));
        }
        let listen = |s: &Source| s.serve.as_ref().map(|c| c.listen.clone());
        if let Some(other) = sources.iter().find(|o| listen(o).is_some() && listen(o) == listen(&source)) {
            return Err(err(
                "serve",
                format!(
                    "listen = \"{}\" is also where source \"{}\" serves",
                    listen(&source).unwrap_or_default(),
                    other.name
                ),
            ));
        }
        let same_upload = |o: &Source| match (&o.upload, &source.upload) {
            (Some(a), Some(b)) => a.location == b.location,
            _ => false,
        };
        if let Some(other) = sources.iter().find(|o| same_upload(o)) {
            return Err(err(
                "upload",
                format!(
                    "\"{}\" is also the upload location of source \"{}\": their objects would conflict",
                    source.upload.as_ref().map_or("", |u| u.location.as_str()),
                    other.name
                ),
            ));
        }
        if let Some(other) = sources.iter().find(|o| o.directory() == source.directory()) {
            return Err(err(
                "directory",
                format!(
                    "\"{}\" is also the directory of source \"{}\": one archive has one writer",
                    source.directory().display(),
                    other.name
                ),
            ));
        }
        sources.push(source);
    }
    Ok(ServiceConfig { file: file.to_path_buf(), listen, sources })
}

/// TOML → settings; syntax and type errors carry the line, the source and the key.
fn deserialize(text: &str, file: &Path) -> Result<FileSettings, ConfigError> {
    let located = |e: &toml::de::Error, place, key| ConfigError {
        file: file.to_path_buf(),
        line: e.span().map(|s| line_of(text, s.start)),
        place,
        key,
        message: e.message().replace("unknown field", "unknown key").replace("missing field", "missing key"),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| located(&e, None, None))?;
    serde_path_to_error::deserialize::<_, FileSettings>(de).map_err(|e| {
        let (place, key) = place_of(text, e.path());
        let key = key.filter(|_| !e.inner().message().starts_with("unknown field"));
        located(e.inner(), place, key)
    })
}

/// `source[1].keep_backups` → (`source "b"`, `keep_backups`), naming the source by its `name` when it has a
/// valid one; `service.listen` → (`[service]`, `listen`).
fn place_of(text: &str, path: &serde_path_to_error::Path) -> (Option<String>, Option<String>) {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    match segments.as_slice() {
        [Segment::Map { key }, Segment::Seq { index }, rest @ ..] if key == "source" => {
            let name = toml::from_str::<toml::Table>(text).ok().and_then(|t| {
                let s = t.get("source")?.as_array()?.get(*index)?;
                s.get("name")?.as_str().filter(|n| valid_name(n)).map(str::to_string)
            });
            let place = match name {
                Some(n) => format!("source \"{n}\""),
                None => format!("source #{}", index + 1),
            };
            (Some(place), key_of(rest))
        }
        [Segment::Map { key }, rest @ ..] if key == "service" => (Some("[service]".into()), key_of(rest)),
        _ => (None, None),
    }
}

fn key_of(rest: &[&serde_path_to_error::Segment]) -> Option<String> {
    match rest.first() {
        Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
        _ => None,
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One source's settings checked and turned into a receive configuration; Err names the key.
fn source(
    s: SourceSettings,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Source, (&'static str, String)> {
    if !valid_name(&s.name) {
        return Err((
            "name",
            format!(
                "\"{}\" is not a valid source name: 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.'",
                s.name.escape_debug()
            ),
        ));
    }
    let sources = Sources {
        conninfo: Some(&s.conninfo),
        fallback_application_name: Some("walkeeper"),
        ..Sources::default()
    };
    // Under failover the primary is the server to follow: libpq's target_session_attrs defaults to
    // read-write (a conninfo or PGTARGETSESSIONATTRS that says otherwise wins), as for `receive --failover`.
    let conn = if s.failover {
        conninfo::resolve(&sources, &conninfo::with_default_target_session_attrs(env, "read-write"))
    } else {
        conninfo::resolve(&sources, env)
    }
    .map_err(|e| ("conninfo", e.to_string()))?;
    let directory = directory(&s.directory, base).map_err(|m| ("directory", m))?;
    if let Some(slot) = &s.slot {
        validate_slot_name(slot).map_err(|e| ("slot", e.to_string()))?;
    }
    if s.create_slot && s.slot.is_none() {
        return Err(("create_slot", "needs a slot: set \"slot\" too".into()));
    }
    let compress =
        parse_compress(s.compression.as_deref().unwrap_or("none")).map_err(|e| ("compression", e))?;
    let retention = match s.keep_backups {
        Some(0) => return Err(("keep_backups", "must be at least 1".into())),
        Some(keep_backups) => {
            let age = s.keep_min_age.as_ref().map(duration).transpose().map_err(|m| ("keep_min_age", m))?;
            let interval = match &s.retention_interval {
                None => DEFAULT_RETENTION_INTERVAL,
                Some(v) => bounded(duration(v)).map_err(|m| ("retention_interval", m))?,
            };
            if interval.is_zero() {
                return Err(("retention_interval", "must be at least 1 second".into()));
            }
            let policy = Policy { keep_backups, keep_min_age: age.unwrap_or_default(), floor: None };
            Some(Retention { policy, interval })
        }
        None => {
            for (key, set) in [
                ("keep_min_age", s.keep_min_age.is_some()),
                ("retention_interval", s.retention_interval.is_some()),
            ] {
                if set {
                    return Err((key, "applies to keep_backups, which is not set".into()));
                }
            }
            None
        }
    };
    let optional = |value: &Option<toml::Value>, key: &'static str, default: Duration| match value {
        None => Ok(Some(default)),
        Some(v) => match bounded(duration(v)).map_err(|m| (key, m))? {
            Duration::ZERO => Ok(None),
            d => Ok(Some(d)),
        },
    };
    let status_interval = optional(&s.status_interval, "status_interval", DEFAULT_STATUS_INTERVAL)?;
    let receive_timeout = optional(&s.receive_timeout, "receive_timeout", DEFAULT_RECEIVE_TIMEOUT)?;
    let upload = upload_settings(&s, &directory, base)?;
    let receive = ReceiveConfig {
        conn,
        connect: ConnectOptions { prompt: PasswordPrompt::Never, ..ConnectOptions::default() },
        directory,
        slot: s.slot.clone(),
        endpos: None,
        status_interval,
        receive_timeout,
        synchronous: s.synchronous,
        fsync: true,
        compression: compress.method,
        compression_level: compress.level,
        no_loop: false,
        validate: true,
        apply_report: ApplyReport::Invalid,
        live_readers: Default::default(),
        failover: s.failover,
        create_slot: s.create_slot,
        upload: None,
    };
    let serve =
        s.serve.as_ref().map(ServeConfig::from_section).transpose().map_err(|e| ("serve", e.to_string()))?;
    Ok(Source { name: s.name.clone(), receive, retention, serve, upload, settings: s })
}

/// `upload` and the keys that go with it, with `receive --upload`'s meanings and defaults. The location is
/// checked without a request: a store that is down at start is an outage like any other.
fn upload_settings(
    s: &SourceSettings,
    directory: &Path,
    base: &Path,
) -> Result<Option<UploadSettings>, (&'static str, String)> {
    let Some(location) = &s.upload else {
        for (key, set) in [
            ("upload_partial_interval", s.upload_partial_interval.is_some()),
            ("upload_wait", s.upload_wait.is_some()),
            ("slot_follows_upload", s.slot_follows_upload),
            ("remove_uploaded", s.remove_uploaded),
        ] {
            if set {
                return Err((key, "applies to upload, which is not set".into()));
            }
        }
        return Ok(None);
    };
    // A directory given relative is relative to the configuration file's, as `directory` is.
    let location = if location.contains("://") || location.is_empty() {
        location.clone()
    } else {
        base.join(location).to_string_lossy().into_owned()
    };
    let mut settings = UploadSettings::new(&location);
    upload::check_location(&settings, directory).map_err(|m| ("upload", m))?;
    if let Some(v) = &s.upload_partial_interval {
        let every = bounded(duration(v)).map_err(|m| ("upload_partial_interval", m))?;
        settings.partial_interval = (!every.is_zero()).then_some(every);
    }
    if let Some(v) = &s.upload_wait {
        settings.wait = bounded(duration(v)).map_err(|m| ("upload_wait", m))?;
    }
    if s.slot_follows_upload && s.slot.is_none() && !s.synchronous {
        return Err((
            "slot_follows_upload",
            "needs a slot or synchronous: without either no flush position is reported".into(),
        ));
    }
    settings.slot_follows = s.slot_follows_upload;
    settings.remove_uploaded = s.remove_uploaded;
    Ok(Some(settings))
}

/// The canonical path of an existing directory we can list (`receive` checks the same before connecting).
fn directory(given: &Path, base: &Path) -> Result<PathBuf, String> {
    if given.as_os_str().is_empty() {
        return Err("is empty".into());
    }
    let path = base.join(given);
    let shown = path.display();
    let canonical = std::fs::canonicalize(&path)
        .map_err(|e| format!("could not open directory \"{shown}\": {}", os_error(&e)))?;
    if !canonical.is_dir() {
        return Err(format!("\"{shown}\" is not a directory"));
    }
    std::fs::read_dir(&canonical)
        .map_err(|e| format!("could not open directory \"{shown}\": {}", os_error(&e)))?;
    Ok(canonical)
}

/// A duration: a number of seconds, or a string such as `"90s"`, `"15m"`, `"12h"`, `"7d"`, `"2w"` (the
/// ages `cleanup --keep-min-age` takes).
fn duration(value: &toml::Value) -> Result<Duration, String> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).map(Duration::from_secs).map_err(|_| {
            format!("expected a duration (a number of seconds, or a string such as \"7d\"), got {n}")
        }),
        toml::Value::String(s) => parse_age(s),
        other => Err(format!(
            "expected a duration (a number of seconds, or a string such as \"7d\"), got a {}",
            other.type_str()
        )),
    }
}

/// pg_receivewal's bound on `-s`, for the intervals and timeouts of a source.
fn bounded(d: Result<Duration, String>) -> Result<Duration, String> {
    let d = d?;
    if d.as_secs() > MAX_SECONDS {
        return Err(format!("{} seconds is more than the maximum of {MAX_SECONDS}", d.as_secs()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::params::TargetSessionAttrs;

    fn env(_: &str) -> Option<String> {
        None
    }

    /// A directory with subdirectories `a`, `b` and `c`, and a config file in it with `text`.
    fn setup(text: &str) -> (tempfile::TempDir, Result<ServiceConfig, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let file = dir.path().join("walkeeper.toml");
        std::fs::write(&file, text).unwrap();
        let result = load(&file, &env);
        (dir, result)
    }

    fn error(text: &str) -> String {
        let (dir, result) = setup(text);
        let e = result.expect_err("config should be refused").to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        let prefix = format!("{}: ", dir.path().join("walkeeper.toml").display());
        e.strip_prefix(&prefix).unwrap_or_else(|| panic!("names the file: {e}")).to_string()
    }

    const TWO: &str = r#"
[service]
listen = "127.0.0.1:9999"

[[source]]
name = "main"
conninfo = "host=db1 user=replicator"
directory = "a"

[[source]]
name = "other.db-2"
conninfo = "postgresql://rep@db2:5433/x"
slot = "walkeeper"
directory = "b"
synchronous = true
compression = "zstd:9"
status_interval = "1m"
receive_timeout = 0
"#;

    #[test]
    fn defaults_are_receive_s_without_options() {
        let (dir, result) = setup(TWO);
        let cfg = result.unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(cfg.sources.len(), 2);
        let main = &cfg.sources[0];
        assert_eq!(main.name, "main");
        assert_eq!(main.directory(), dir.path().join("a").canonicalize().unwrap());
        let r = &main.receive;
        assert_eq!(
            (r.slot.as_deref(), r.synchronous, r.fsync, r.validate, r.no_loop),
            (None, false, true, true, false)
        );
        assert_eq!(r.compression, crate::wal::segment::Compression::None);
        assert_eq!(r.status_interval, Some(Duration::from_secs(10)));
        assert_eq!(r.receive_timeout, Some(DEFAULT_RECEIVE_TIMEOUT));
        assert_eq!(r.connect.prompt, PasswordPrompt::Never);
        assert_eq!(r.conn.user, "replicator");
        assert_eq!(r.conn.dbname.as_deref(), Some("replication"));
        let other = &cfg.sources[1].receive;
        assert_eq!(other.slot.as_deref(), Some("walkeeper"));
        assert!(other.synchronous);
        assert_eq!(
            (other.compression, other.compression_level),
            (crate::wal::segment::Compression::Zstd, Some(9))
        );
        assert_eq!(other.status_interval, Some(Duration::from_secs(60)));
        assert_eq!(other.receive_timeout, None);
        assert_eq!(other.conn.user, "rep");
    }

    #[test]
    fn failover_follows_the_primary_and_creates_the_slot() {
        let base = "[[source]]\nname = \"x\"\ndirectory = \"a\"\nslot = \"arch\"\n";
        let (_dir, result) =
            setup(&format!("{base}conninfo = \"host=p,s\"\nfailover = true\ncreate_slot = true\n"));
        let r = &result.unwrap().sources[0].receive;
        assert!(r.failover && r.create_slot);
        assert_eq!(r.conn.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(r.conn.endpoints.len(), 2);
        // The conninfo's own choice wins; without failover libpq's default (any) stays.
        let (_dir, result) = setup(&format!(
            "{base}conninfo = \"host=p,s target_session_attrs=prefer-standby\"\nfailover = true\n"
        ));
        let r = &result.unwrap().sources[0].receive;
        assert_eq!((r.failover, r.create_slot), (true, false));
        assert_eq!(r.conn.target_session_attrs, TargetSessionAttrs::PreferStandby);
        let (_dir, result) = setup(&format!("{base}conninfo = \"host=p,s\"\n"));
        assert_eq!(result.unwrap().sources[0].receive.conn.target_session_attrs, TargetSessionAttrs::Any);
    }

    /// The TOML a user copies: the packaged and container configurations and every example in the docs.
    const SHIPPED: [(&str, &str); 5] = [
        ("packaging/walkeeper.toml", include_str!("../../packaging/walkeeper.toml")),
        ("docker/walkeeper.toml", include_str!("../../docker/walkeeper.toml")),
        ("docs/service.md", include_str!("../../docs/service.md")),
        ("docs/s3.md", include_str!("../../docs/s3.md")),
        ("docs/dr-standby.md", include_str!("../../docs/dr-standby.md")),
    ];

    /// A markdown file's ```toml blocks, or a TOML file whole.
    fn examples(file: &str, text: &str) -> Vec<String> {
        if file.ends_with(".toml") {
            return vec![text.to_string()];
        }
        text.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap().to_string()).collect()
    }

    #[test]
    fn shipped_examples_are_accepted_as_written() {
        let mut checked = 0;
        for (file, text) in SHIPPED {
            for example in examples(file, text) {
                deserialize(&example, Path::new(file)).unwrap_or_else(|e| panic!("{file}: {e}\n{example}"));
                checked += 1;
            }
        }
        assert_eq!(checked, 6, "every example was found");
        // The full example, with its directories made real, passes every check `--check` makes.
        let example = &examples("docs/service.md", SHIPPED[2].1)[0];
        let dir = tempfile::tempdir().unwrap();
        let mut text = example.clone();
        for name in ["main", "billing"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            let real = dir.path().join(name).display().to_string();
            text = text.replace(&format!("/var/lib/walkeeper/{name}"), &real);
        }
        let file = dir.path().join("walkeeper.toml");
        std::fs::write(&file, text).unwrap();
        let cfg = load(&file, &env).unwrap();
        assert_eq!(cfg.sources.len(), 2);
    }

    #[test]
    fn the_listen_address_has_a_default() {
        let (_dir, result) = setup("[[source]]\nname = \"x\"\nconninfo = \"\"\ndirectory = \"a\"\n");
        assert_eq!(result.unwrap().listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn unknown_keys_are_refused_naming_source_and_line() {
        let e = error("[[source]]\nname = \"main\"\nconninfo = \"\"\ndirectory = \"a\"\nslots = \"x\"\n");
        assert!(e.starts_with("line 5: source \"main\": unknown key `slots`, expected one of"), "{e}");
        let e = error("[servic]\n");
        assert!(e.starts_with("line 1: unknown key `servic`"), "{e}");
        let e = error("[service]\nlisten = \"127.0.0.1:1\"\nport = 3\n");
        assert!(e.starts_with("line 3: [service]: unknown key `port`"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e =
            error("[[source]]\nname = \"main\"\nconninfo = \"\"\ndirectory = \"a\"\nsynchronous = \"yes\"\n");
        assert_eq!(
            e,
            "line 5: source \"main\": key \"synchronous\": invalid type: string \"yes\", expected a boolean"
        );
        let e = error("[[source]]\nconninfo = \"\"\ndirectory = \"a\"\n");
        assert_eq!(e, "line 1: source #1: missing key `name`");
        let e = error("x = [\n");
        assert!(e.starts_with("line 1: "), "{e}");
    }

    #[test]
    fn duplicate_names_and_shared_directories_are_refused() {
        let e = error(
            "[[source]]\nname = \"a\"\nconninfo = \"\"\ndirectory = \"a\"\n\
             [[source]]\nname = \"a\"\nconninfo = \"\"\ndirectory = \"b\"\n",
        );
        assert_eq!(e, "source \"a\": key \"name\": \"a\" is also the name of an earlier source");
        // The same directory spelled another way (a trailing slash, a symbolic link) is the same archive.
        let (dir, _) = setup("");
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).unwrap();
        let file = dir.path().join("walkeeper.toml");
        std::fs::write(
            &file,
            "[[source]]\nname = \"one\"\nconninfo = \"\"\ndirectory = \"a/\"\n\
             [[source]]\nname = \"two\"\nconninfo = \"\"\ndirectory = \"link\"\n",
        )
        .unwrap();
        let e = load(&file, &env).unwrap_err().to_string();
        let canonical = dir.path().join("a").canonicalize().unwrap();
        assert!(
            e.ends_with(&format!(
                "source \"two\": key \"directory\": \"{}\" is also the directory of source \"one\": one archive has one writer",
                canonical.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn values_are_checked() {
        let one = |extra: &str| {
            error(&format!("[[source]]\nname = \"s\"\nconninfo = \"host=h\"\ndirectory = \"a\"\n{extra}\n"))
        };
        assert!(one("compression = \"brotli\"")
            .starts_with("source \"s\": key \"compression\": unrecognized compression algorithm"));
        assert!(one("slot = \"Bad-Name\"").starts_with("source \"s\": key \"slot\": "));
        assert!(one("create_slot = true").contains("key \"create_slot\": needs a slot"));
        assert!(one("keep_min_age = \"7d\"").contains("key \"keep_min_age\": applies to keep_backups"));
        assert!(one("keep_backups = 0").contains("key \"keep_backups\": must be at least 1"));
        assert!(one("status_interval = \"5 parsecs\"").contains("key \"status_interval\": invalid age"));
        assert!(
            one("retention_interval = 60").contains("key \"retention_interval\": applies to keep_backups")
        );
        assert!(one("keep_backups = 1\nretention_interval = 0").contains("must be at least 1 second"));
        assert!(
            one("keep_backups = 1\nkeep_min_age = \"7 days\"").contains("key \"keep_min_age\": invalid age")
        );
        assert!(one("receive_timeout = -1").contains("key \"receive_timeout\": expected a duration"));
        assert!(one("receive_timeout = 99999999").contains("more than the maximum"));
        let e = error("[[source]]\nname = \"s\"\nconninfo = \"host=h bogus=1\"\ndirectory = \"a\"\n");
        assert_eq!(e, "source \"s\": key \"conninfo\": invalid connection option \"bogus\"");
        let e = error("[[source]]\nname = \"s p\"\nconninfo = \"\"\ndirectory = \"a\"\n");
        assert!(e.starts_with("source #1: key \"name\": \"s p\" is not a valid source name"), "{e}");
        let e = error("[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"missing\"\n");
        assert!(e.starts_with("source \"s\": key \"directory\": could not open directory \""), "{e}");
        assert!(e.ends_with("missing\": No such file or directory"), "{e}");
        let e = error("[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"walkeeper.toml\"\n");
        assert!(e.ends_with("walkeeper.toml\" is not a directory"), "{e}");
        assert_eq!(
            error("[service]\nlisten = \"localhost\"\n"),
            "[service]: key \"listen\": \"localhost\" is not an address and port such as \"127.0.0.1:9187\""
        );
        assert_eq!(error(""), "no [[source]] is defined: the service needs at least one");
    }

    #[test]
    fn unreadable_files_are_one_line() {
        let e = load(Path::new("/nonexistent/walkeeper.toml"), &env).unwrap_err().to_string();
        assert_eq!(
            e,
            "/nonexistent/walkeeper.toml: could not read configuration file: No such file or directory"
        );
    }

    #[test]
    fn retention_keys() {
        let (_dir, result) = setup(
            "[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"a\"\nkeep_backups = 2\nkeep_min_age = \"7d\"\n\
             [[source]]\nname = \"t\"\nconninfo = \"\"\ndirectory = \"b\"\nkeep_backups = 1\nretention_interval = \"1m\"\n\
             [[source]]\nname = \"u\"\nconninfo = \"\"\ndirectory = \"c\"\n",
        );
        let cfg = result.unwrap();
        let r = cfg.sources[0].retention.unwrap();
        assert_eq!(
            r.policy,
            Policy { keep_backups: 2, keep_min_age: Duration::from_secs(604_800), floor: None }
        );
        assert_eq!(r.interval, DEFAULT_RETENTION_INTERVAL);
        let r = cfg.sources[1].retention.unwrap();
        assert_eq!((r.policy.keep_min_age, r.interval), (Duration::ZERO, Duration::from_secs(60)));
        assert_eq!(cfg.sources[2].retention, None);
    }

    #[test]
    fn upload_keys_mean_what_receive_s_options_mean() {
        let base = "[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"a\"\nslot = \"arch\"\n";
        let (_dir, result) = setup(&format!("{base}upload = \"s3://wal/prod/main\"\n"));
        let u = result.unwrap().sources[0].upload.clone().unwrap();
        assert_eq!(u.location, "s3://wal/prod/main");
        assert_eq!(
            (u.partial_interval, u.wait),
            (Some(upload::DEFAULT_PARTIAL_INTERVAL), upload::DEFAULT_WAIT)
        );
        assert!(!u.slot_follows && !u.remove_uploaded);
        let (_dir, result) = setup(&format!(
            "{base}upload = \"s3://wal/x\"\nupload_partial_interval = 0\nupload_wait = \"2m\"\n\
             slot_follows_upload = true\nremove_uploaded = true\n"
        ));
        let u = result.unwrap().sources[0].upload.clone().unwrap();
        assert_eq!((u.partial_interval, u.wait), (None, Duration::from_secs(120)));
        assert!(u.slot_follows && u.remove_uploaded);
        // A directory given relative is the configuration file's neighbour, as `directory` is.
        let (dir, result) = setup(&format!("{base}upload = \"b\"\n"));
        assert_eq!(
            result.unwrap().sources[0].upload.clone().unwrap().location,
            dir.path().join("b").to_string_lossy()
        );
        let (_dir, result) = setup(base);
        assert!(result.unwrap().sources[0].upload.is_none());
    }

    #[test]
    fn upload_keys_are_checked() {
        let one = |extra: &str| {
            error(&format!("[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"a\"\n{extra}\n"))
        };
        assert_eq!(
            one("upload = \"s3://\""),
            "source \"s\": key \"upload\": could not open \"s3://\": no bucket name after s3://"
        );
        assert!(one("upload = \"s3://b c/x\"").starts_with("source \"s\": key \"upload\": "));
        assert!(
            one("upload = \"gs://b/x\"").contains("key \"upload\": "),
            "{}",
            one("upload = \"gs://b/x\"")
        );
        assert!(one("upload = \"\"").ends_with("key \"upload\": the upload location is empty"));
        assert!(one("upload = \"a/\"").ends_with("is the receive directory itself"));
        assert!(one("upload = 3").contains("key \"upload\": invalid type"));
        for key in [
            "upload_wait = 5",
            "upload_partial_interval = 5",
            "slot_follows_upload = true",
            "remove_uploaded = true",
        ] {
            assert!(one(key).ends_with("applies to upload, which is not set"), "{key}: {}", one(key));
        }
        assert!(one("upload = \"s3://b/x\"\nslot_follows_upload = true")
            .contains("key \"slot_follows_upload\": needs a slot or synchronous"));
        assert!(one("upload = \"s3://b/x\"\nupload_wait = \"forever\"")
            .contains("key \"upload_wait\": invalid age"));
        assert!(one("upload = \"s3://b/x\"\nupload_partial_interval = -1")
            .contains("key \"upload_partial_interval\": expected a duration"));
        let e = error(
            "[[source]]\nname = \"a\"\nconninfo = \"\"\ndirectory = \"a\"\nupload = \"s3://b/x\"\n\
             [[source]]\nname = \"b\"\nconninfo = \"\"\ndirectory = \"b\"\nupload = \"s3://b/x\"\n",
        );
        assert_eq!(
            e,
            "source \"b\": key \"upload\": \"s3://b/x\" is also the upload location of source \"a\": their objects would conflict"
        );
    }

    #[test]
    fn durations() {
        let d = |v: toml::Value| duration(&v);
        assert_eq!(d(toml::Value::Integer(90)), Ok(Duration::from_secs(90)));
        assert_eq!(d(toml::Value::String("15m".into())), Ok(Duration::from_secs(900)));
        assert!(d(toml::Value::Integer(-1)).is_err());
        assert!(d(toml::Value::Boolean(true)).unwrap_err().ends_with("got a boolean"));
        assert!(bounded(Ok(Duration::from_secs(MAX_SECONDS + 1))).is_err());
        assert!(bounded(Ok(Duration::from_secs(MAX_SECONDS))).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_an_error_or_a_config_never_a_panic(text in "\\PC{0,200}") {
            let _ = parse(&text, Path::new("f.toml"), Path::new("/nonexistent"), &env);
        }

        #[test]
        fn toml_shaped_text_never_panics(
            key in "[a-z_]{1,12}",
            value in "(\"[^\"\\\\]{0,10}\"|-?[0-9]{1,25}|true|\\[\\]|\\{\\})",
        ) {
            let text = format!("[[source]]\nname = \"n\"\nconninfo = \"\"\ndirectory = \"/\"\n{key} = {value}\n");
            let _ = parse(&text, Path::new("f.toml"), Path::new("/"), &env);
        }
    }
}
