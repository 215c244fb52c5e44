//! The service's configuration file (TOML), read and validated whole before anything touches the file
//! system: every key of every source is checked, connection strings are resolved the way `walkeeper
//! receive` resolves `-d` (libpq's rules and environment; passwords from a passfile or `PGPASSFILE`, never
//! a prompt), directories must exist and no two sources may share one (compared as canonical paths).
//! Unknown keys are refused. An error is one line naming the file, the line when the parser knows it, the
//! source, the key and what is wrong ([`ConfigError`]); it never shows a secret. The S3 store settings
//! (`[s3]`, `[source.s3]`) are resolved here per source, secret files read (`s3`), so that a reload can
//! tell which sources they changed.
//!
//! Defaults are those of `walkeeper receive` without options. docs/service.md is the reference.

mod s3;

use crate::archive::retention::{parse_age, Policy};
use crate::archive::store::S3Options;
use crate::archive::upload::{self, UploadSettings};
use crate::cli::compress::parse_compress;
use crate::conn::conninfo::{self, Sources};
use crate::conn::tls::key_mode_too_open;
use crate::conn::{ConnectOptions, PasswordPrompt};
use crate::protocol::codec::os_error;
use crate::protocol::replication::validate_slot_name;
use crate::serve::{ServeConfig, ServeSection};
use crate::stream::feedback::ApplyReport;
use crate::stream::liveness::DEFAULT_RECEIVE_TIMEOUT;
use crate::stream::ReceiveConfig;
use s3::S3Table;
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
    /// What is accepted but should be fixed (a file holding a secret that others may read): one line each,
    /// for the caller to log.
    pub warnings: Vec<String>,
}

impl ServiceConfig {
    /// Log the [`warnings`](ServiceConfig::warnings) (at start, at a reload, on `--check`).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }
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

    /// Same settings, same directory and the same store settings (`[s3]` and a secret file's contents
    /// included): a reload keeps it running untouched.
    pub fn unchanged(&self, other: &Source) -> bool {
        let s3 = |s: &Source| s.upload.as_ref().map(|u| u.s3.clone());
        self.settings == other.settings
            && self.receive.directory == other.receive.directory
            && s3(self) == s3(other)
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
    /// `[s3]`: for every source's `upload = "s3://…"`.
    s3: Option<S3Table>,
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
    /// `[source.s3]`: its set keys win over `[s3]`'s.
    s3: Option<S3Table>,
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
    let s3_error = |key: Option<&str>, message: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        place: Some("[s3]".into()),
        key: key.map(str::to_string),
        message,
    };
    let s3 = match &settings.s3 {
        Some(table) => table.options(base).map_err(|(key, message)| s3_error(Some(key), message))?,
        None => S3Options::default(),
    };
    let warnings = secret_warning(file, &settings).into_iter().collect();
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
        let own_s3 = match &s.s3 {
            Some(table) => {
                table.options(base).map_err(|(key, message)| err(&format!("s3.{key}"), message))?
            }
            None => S3Options::default(),
        };
        let source = source(s, base, env, own_s3.or(&s3)).map_err(|(key, message)| err(key, message))?;
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
    let uploads_to_s3 = |s: &Source| s.upload.as_ref().is_some_and(|u| u.location.starts_with("s3://"));
    if settings.s3.is_some() && !sources.iter().any(uploads_to_s3) {
        return Err(s3_error(None, "applies to sources with upload = \"s3://…\", and there is none".into()));
    }
    Ok(ServiceConfig { file: file.to_path_buf(), listen, sources, warnings })
}

/// libpq's warning for a password file, for a configuration file that holds a secret itself; the modes
/// allowed are libpq's for a key file (as `tls_key`'s), so the packaged root-owned `0640` file passes.
fn secret_warning(file: &Path, settings: &FileSettings) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let tables = settings.s3.iter().chain(settings.source.iter().filter_map(|s| s.s3.as_ref()));
    let inline = tables.into_iter().any(S3Table::holds_secret);
    let meta = std::fs::metadata(file).ok()?;
    (inline && key_mode_too_open(meta.uid(), meta.mode())).then(|| {
        format!(
            "configuration file \"{}\" holds an S3 secret and has group or world access; permissions should \
             be u=rw (0600) or less (u=rw,g=r (0640) if owned by root), or keep the secret in \
             secret_access_key_file",
            file.display()
        )
    })
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
        // The message names an unknown key itself; the key shown is then the table holding it, if nested.
        let key = match e.inner().message().starts_with("unknown field") {
            true => key.and_then(|k| k.rsplit_once('.').map(|(table, _)| table.to_string())),
            false => key,
        };
        let secret = key
            .as_deref()
            .is_some_and(|k| k.starts_with("serve.users.") || s3::SECRET_KEYS.iter().any(|s| k.ends_with(s)));
        let mut error = located(e.inner(), place, key);
        if secret {
            // "invalid type: integer `1234`, expected a string" would print the secret (or password).
            error.message = "invalid type: expected a string (the value is a secret: not shown)".into();
        }
        error
    })
}

/// `source[1].keep_backups` → (`source "b"`, `keep_backups`), naming the source by its `name` when it has a
/// valid one; `service.listen` → (`[service]`, `listen`); `s3.region` → (`[s3]`, `region`).
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
        [Segment::Map { key }, rest @ ..] if key == "service" || key == "s3" => {
            (Some(format!("[{key}]")), key_of(rest))
        }
        _ => (None, None),
    }
}

/// The key a path leads to, a table's key prefixed with the table's (`s3.allow_http`).
fn key_of(rest: &[&serde_path_to_error::Segment]) -> Option<String> {
    let keys: Vec<&str> = rest
        .iter()
        .map_while(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    (!keys.is_empty()).then(|| keys.join("."))
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

/// One source's settings checked and turned into a receive configuration, `s3` being its store settings
/// (`[source.s3]` over `[s3]`); Err names the key.
fn source(
    s: SourceSettings,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    s3: S3Options,
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
    let upload = upload_settings(&s, &directory, base, s3)?;
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

/// `upload` and the keys that go with it, with `receive --upload`'s meanings and defaults; `s3` are the
/// store settings of an `s3://` location. The location is checked without a request: a store that is down
/// at start is an outage like any other.
fn upload_settings(
    s: &SourceSettings,
    directory: &Path,
    base: &Path,
    s3: S3Options,
) -> Result<Option<UploadSettings>, (&'static str, String)> {
    let Some(location) = &s.upload else {
        for (key, set) in [
            ("upload_partial_interval", s.upload_partial_interval.is_some()),
            ("upload_wait", s.upload_wait.is_some()),
            ("slot_follows_upload", s.slot_follows_upload),
            ("remove_uploaded", s.remove_uploaded),
            ("s3", s.s3.is_some()),
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
    if location.starts_with("s3://") {
        settings.s3 = s3;
    } else if s.s3.is_some() {
        return Err((
            "s3",
            format!("applies to an upload to s3://, and upload is the directory \"{location}\""),
        ));
    }
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

    /// `example` with its directories and secret files made real (empty directories, a secret file) in a
    /// directory of its own, loaded as `--check` loads it.
    fn load_made_real(example: &str) -> Result<ServiceConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut text = example.to_string();
        for (n, line) in example.lines().enumerate() {
            for key in ["directory", "secret_access_key_file"] {
                let value = line.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix("= \""));
                let Some(given) = value.and_then(|v| v.split('"').next()) else { continue };
                let real = dir.path().join(format!("{key}-{n}"));
                match key {
                    "directory" => std::fs::create_dir(&real).unwrap(),
                    _ => std::fs::write(&real, "secret\n").unwrap(),
                }
                text = text.replace(&format!("\"{given}\""), &format!("\"{}\"", real.display()));
            }
        }
        let file = dir.path().join("walkeeper.toml");
        std::fs::write(&file, text).unwrap();
        load(&file, &env)
    }

    #[test]
    fn shipped_examples_are_accepted_as_written() {
        let mut checked = 0;
        let mut with_s3 = 0;
        for (file, text) in SHIPPED {
            for example in examples(file, text) {
                deserialize(&example, Path::new(file)).unwrap_or_else(|e| panic!("{file}: {e}\n{example}"));
                checked += 1;
                // An example with the store's settings passes every check `--check` makes.
                if example.starts_with("[s3]") || example.contains("\n[s3]") {
                    load_made_real(&example).unwrap_or_else(|e| panic!("{file}: {e}\n{example}"));
                    with_s3 += 1;
                }
            }
        }
        assert_eq!((checked, with_s3), (7, 2), "every example was found");
        // So does the full example.
        let cfg = load_made_real(&examples("docs/service.md", SHIPPED[2].1)[0]).unwrap();
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

    /// Two sources uploading to S3 (`a`, `b`) and one to a directory (`c`), after `top` and with `extra_a`
    /// in `a`'s table.
    fn s3_sources(top: &str, extra_a: &str) -> String {
        format!(
            "{top}\n[[source]]\nname = \"a\"\nconninfo = \"\"\ndirectory = \"a\"\nupload = \"s3://wal/a\"\n{extra_a}\n\
             [[source]]\nname = \"b\"\nconninfo = \"\"\ndirectory = \"b\"\nupload = \"s3://wal/b\"\n\
             [[source]]\nname = \"c\"\nconninfo = \"\"\ndirectory = \"c\"\nupload = \"a\"\n"
        )
    }

    fn s3_of(cfg: &ServiceConfig, source: usize) -> S3Options {
        cfg.sources[source].upload.as_ref().unwrap().s3.clone()
    }

    #[test]
    fn a_source_s_s3_keys_win_over_the_top_level_s_which_win_over_the_environment() {
        let top = "[s3]\nendpoint = \"https://s3.example.net\"\nregion = \"eu-1\"\naccess_key_id = \"top\"\n\
                   secret_access_key = \"top-secret\"\nallow_http = false\n";
        let own = "[source.s3]\nendpoint = \"http://minio:9000\"\naccess_key_id = \"mine\"\n\
                   secret_access_key_file = \"mine.secret\"\nallow_http = true\n";
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("mine.secret"), "my-secret\n").unwrap();
        let file = dir.path().join("walkeeper.toml");
        std::fs::write(&file, s3_sources(top, own)).unwrap();
        let cfg = load(&file, &env).unwrap();
        let a = s3_of(&cfg, 0);
        assert_eq!(a.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(a.region.as_deref(), Some("eu-1"), "unset in [source.s3]: [s3]'s");
        assert_eq!(a.access_key_id.as_deref(), Some("mine"));
        assert_eq!(a.secret_access_key.as_deref(), Some("my-secret"), "the file (relative to the config's)");
        assert_eq!(a.allow_http, Some(true));
        assert_eq!(a.session_token, None, "unset in both: the environment's (archive::store)");
        let b = s3_of(&cfg, 1);
        assert_eq!(b.endpoint.as_deref(), Some("https://s3.example.net"));
        assert_eq!(b.secret_access_key.as_deref(), Some("top-secret"));
        assert_eq!(b.allow_http, Some(false));
        assert_eq!(cfg.sources[2].upload.as_ref().unwrap().s3, S3Options::default(), "a directory");
        // A secret file in [s3] and an inline secret in [source.s3]: the source's wins.
        std::fs::write(dir.path().join("top.secret"), "from-file").unwrap();
        std::fs::write(
            &file,
            s3_sources(
                "[s3]\naccess_key_id = \"k\"\nsecret_access_key_file = \"top.secret\"\n",
                "[source.s3]\nsecret_access_key = \"x\"",
            ),
        )
        .unwrap();
        let cfg = load(&file, &env).unwrap();
        assert_eq!(s3_of(&cfg, 0).secret_access_key.as_deref(), Some("x"));
        assert_eq!(s3_of(&cfg, 1).secret_access_key.as_deref(), Some("from-file"));
        // Without any table every setting comes from the environment.
        let (_dir, result) = setup(&s3_sources("", ""));
        assert_eq!(s3_of(&result.unwrap(), 0), S3Options::default());
    }

    #[test]
    fn s3_keys_are_checked_naming_the_table_and_the_key() {
        let e = error(&s3_sources("[s3]\nregion = \"r\"\nsecret = \"x\"\n", ""));
        assert!(e.starts_with("line 3: [s3]: unknown key `secret`, expected one of `endpoint`"), "{e}");
        let e = error(&s3_sources("", "[source.s3]\nendpont = \"x\"\n"));
        assert!(
            e.starts_with("line 8: source \"a\": key \"s3\": unknown key `endpont`, expected one of"),
            "{e}"
        );
        let e = error(&s3_sources("", "[source.s3]\nallow_http = \"yes\"\n"));
        assert_eq!(
            e,
            "line 8: source \"a\": key \"s3.allow_http\": invalid type: string \"yes\", expected a boolean"
        );
        let e = error(&s3_sources("[s3]\nallow_http = 1\n", ""));
        assert_eq!(e, "line 2: [s3]: key \"allow_http\": invalid type: integer `1`, expected a boolean");
        // A secret of the wrong type is not shown.
        for (top, own, key) in [
            ("[s3]\nsecret_access_key = 123456789\n", "", "[s3]: key \"secret_access_key\""),
            ("", "[source.s3]\nsession_token = 987654321\n", "source \"a\": key \"s3.session_token\""),
        ] {
            let e = error(&s3_sources(top, own));
            assert!(e.contains(key) && e.contains("not shown"), "{e}");
            assert!(!e.contains("123456789") && !e.contains("987654321"), "{e}");
        }
        let e = error(
            "[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"a\"\n\
             [source.serve]\nlisten = \"h:1\"\nusers = { u = 24680 }\n",
        );
        assert!(
            e.contains("key \"serve.users.u\"") && e.contains("not shown") && !e.contains("24680"),
            "{e}"
        );
        let e =
            error(&s3_sources("[s3]\nsecret_access_key = \"hunter2\"\nsecret_access_key_file = \"s\"\n", ""));
        assert_eq!(
            e,
            "[s3]: key \"secret_access_key_file\": set secret_access_key or secret_access_key_file, not both"
        );
        let (dir, result) = setup(&s3_sources("", "[source.s3]\nsecret_access_key_file = \"missing\"\n"));
        assert_eq!(
            result.unwrap_err().to_string(),
            format!(
                "{}: source \"a\": key \"s3.secret_access_key_file\": could not read \"{}\": No such file or directory",
                dir.path().join("walkeeper.toml").display(),
                dir.path().join("missing").display()
            )
        );
        let e = error(&s3_sources("[s3]\nendpoint = \"minio:9000\"\n", ""));
        assert_eq!(
            e,
            "[s3]: key \"endpoint\": \"minio:9000\" is not a URL such as \"https://s3.example.net:9000\""
        );
        let e = error(&s3_sources("", "[source.s3]\nregion = \"\"\n"));
        assert_eq!(e, "source \"a\": key \"s3.region\": is empty");
    }

    #[test]
    fn s3_tables_that_apply_to_nothing_are_refused() {
        let base = "[[source]]\nname = \"s\"\nconninfo = \"\"\ndirectory = \"a\"\n";
        let e = error(&format!("{base}[source.s3]\nregion = \"r\"\n"));
        assert_eq!(e, "source \"s\": key \"s3\": applies to upload, which is not set");
        let e = error(&format!("{base}upload = \"b\"\n[source.s3]\nregion = \"r\"\n"));
        assert!(
            e.starts_with(
                "source \"s\": key \"s3\": applies to an upload to s3://, and upload is the directory \""
            ),
            "{e}"
        );
        let e = error(&format!("[s3]\nregion = \"r\"\n{base}upload = \"b\"\n"));
        assert_eq!(e, "[s3]: applies to sources with upload = \"s3://…\", and there is none");
        let e = error(&format!("[s3]\n{base}"));
        assert_eq!(e, "[s3]: applies to sources with upload = \"s3://…\", and there is none");
    }

    #[test]
    fn a_reload_restarts_the_sources_whose_store_settings_changed() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let file = dir.path().join("walkeeper.toml");
        let secret = dir.path().join("secret");
        let own = "[source.s3]\nsecret_access_key = \"own\"\n";
        let key = "[s3]\naccess_key_id = \"k\"\n";
        let loaded = |top: &str, secret_text: &str| {
            std::fs::write(&secret, secret_text).unwrap();
            std::fs::write(&file, s3_sources(top, own)).unwrap();
            load(&file, &env).unwrap()
        };
        let unchanged = |old: &ServiceConfig, new: &ServiceConfig| -> Vec<bool> {
            old.sources.iter().zip(&new.sources).map(|(o, n)| o.unchanged(n)).collect()
        };
        let top = &format!("{key}endpoint = \"https://one\"\nsecret_access_key_file = \"secret\"\n");
        let first = loaded(top, "s1\n");
        assert_eq!(unchanged(&first, &loaded(top, "s1")), [true, true, true], "the same secret");
        // The secret file's contents changed: only b uses it (a has its own secret).
        assert_eq!(unchanged(&first, &loaded(top, "s2")), [true, false, true]);
        // The endpoint changed: both S3 sources use it.
        let moved = &format!("{key}endpoint = \"https://two\"\nsecret_access_key_file = \"secret\"\n");
        assert_eq!(unchanged(&first, &loaded(moved, "s1")), [false, false, true]);
    }

    #[test]
    fn a_secret_in_a_file_others_may_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let inline = s3_sources("[s3]\naccess_key_id = \"k\"\nsecret_access_key = \"hunter2\"\n", "");
        let (dir, result) = setup(&inline);
        let file = dir.path().join("walkeeper.toml");
        let mode = |m: u32| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o644);
        let warnings = load(&file, &env).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "configuration file \"{}\" holds an S3 secret and has group or world access",
                file.display()
            )),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("hunter2"));
        drop(result);
        mode(0o600);
        assert!(load(&file, &env).unwrap().warnings.is_empty());
        // A secret in a file of its own (or none at all): nothing to warn about.
        std::fs::write(dir.path().join("s"), "x").unwrap();
        std::fs::write(
            &file,
            s3_sources("[s3]\naccess_key_id = \"k\"\nsecret_access_key_file = \"s\"\n", ""),
        )
        .unwrap();
        mode(0o644);
        assert!(load(&file, &env).unwrap().warnings.is_empty());
        let (_dir, result) = setup(TWO);
        assert!(result.unwrap().warnings.is_empty());
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
