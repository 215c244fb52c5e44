//! libpq-compatible connection settings: parsing `key=value` connection strings and `postgresql://` URIs
//! (fe-connect.c `conninfo_parse`, `conninfo_uri_parse`), and merging a connection string, pg_receivewal's
//! `-h/-p/-U` options, the `PG*` environment and libpq's defaults into [`ConnParams`] the way pg_receivewal's
//! `GetConnection` and libpq's `pqConnectOptions2` do. Error texts are libpq's where libpq has one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::{self, OsUserError, ENV_VARS, PGREQUIRESSL};
use super::params::{ChannelBinding, ConnParams, Endpoint, SslMode, TargetSessionAttrs};
use super::pgpass;

pub use super::env::process_env;

/// Every connection keyword libpq 18 accepts.
const KEYWORDS: &[&str] = &[
    "service",
    "servicefile",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslkeylogfile",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "min_protocol_version",
    "max_protocol_version",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "target_session_attrs",
    "load_balance_hosts",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// Keywords walkeeper accepts but cannot act on: any non-empty value is refused with the reason given.
/// (Keywords that are harmless to ignore — client_encoding, sslcompression, krbsrvname, gsslib, gssdelegation,
/// servicefile without service, replication — are accepted silently; value-dependent ones are checked in
/// [`resolve`].)
const REFUSED: &[(&str, &str)] = &[
    ("requirepeer", "checking the server process's user name is not implemented"),
    ("require_auth", "restricting the authentication methods is not implemented"),
    ("sslcrl", "certificate revocation lists are not supported"),
    ("sslcrldir", "certificate revocation lists are not supported"),
    ("sslkeylogfile", "TLS key logging is not supported"),
    ("oauth_issuer", "OAuth authentication is not supported"),
    ("oauth_client_id", "OAuth authentication is not supported"),
    ("oauth_client_secret", "OAuth authentication is not supported"),
    ("oauth_scope", "OAuth authentication is not supported"),
    ("scram_client_key", "SCRAM pass-through keys are not supported"),
    ("scram_server_key", "SCRAM pass-through keys are not supported"),
];

const DEFAULT_PORT: u16 = 5432;
/// Debian's libpq is built with this DEFAULT_PGSOCKET_DIR.
const DEBIAN_SOCKET_DIR: &str = "/var/run/postgresql";
const FALLBACK_SOCKET_DIR: &str = "/tmp";
/// libpq's compiled-in default for `ssl_min_protocol_version`.
const DEFAULT_SSL_MIN_PROTOCOL: &str = "TLSv1.2";

/// A connection setting that cannot be parsed or used; Display is one line, libpq's text where it has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    #[error("invalid connection option \"{0}\"")]
    InvalidOption(String),
    #[error("connection info string contains a NUL character")]
    NulCharacter,
    #[error("invalid URI query parameter: \"{0}\"")]
    InvalidUriQueryParameter(String),
    #[error("missing key/value separator \"=\" in URI query parameter: \"{0}\"")]
    MissingUriSeparator(String),
    #[error("extra key/value separator \"=\" in URI query parameter: \"{0}\"")]
    ExtraUriSeparator(String),
    #[error("invalid percent-encoded token: \"{0}\"")]
    InvalidPercentEncoding(String),
    #[error("forbidden value %00 in percent-encoded value: \"{0}\"")]
    PercentEncodedNul(String),
    #[error("percent-encoded value is not valid UTF-8: \"{0}\"")]
    PercentEncodedNotUtf8(String),
    #[error("end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{0}\"")]
    UnmatchedBracket(String),
    #[error("IPv6 host address may not be empty in URI: \"{0}\"")]
    EmptyIpv6Host(String),
    #[error(
        "unexpected character \"{ch}\" at position {position} in URI (expected \":\" or \"/\"): \"{uri}\""
    )]
    UnexpectedUriCharacter { ch: char, position: usize, uri: String },
    #[error("could not match {hosts} host names to {hostaddrs} hostaddr values")]
    HostCountMismatch { hosts: usize, hostaddrs: usize },
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    PortCountMismatch { ports: usize, hosts: usize },
    #[error("invalid integer value \"{value}\" for connection option \"{keyword}\"")]
    InvalidInteger { keyword: &'static str, value: String },
    #[error("invalid port number: \"{0}\"")]
    InvalidPort(String),
    #[error("invalid {keyword} value: \"{value}\"")]
    InvalidValue { keyword: &'static str, value: String },
    #[error("weak sslmode \"{0}\" may not be used with sslrootcert=system (use \"verify-full\")")]
    WeakSslModeForSystemRoot(String),
    #[error("invalid SSL protocol version range")]
    InvalidSslProtocolRange,
    #[error("gssencmode value \"require\" invalid when GSSAPI support is not compiled in")]
    GssEncryptionUnsupported,
    #[error("connection option \"{keyword}\" is not supported: {reason}")]
    UnsupportedOption { keyword: &'static str, reason: &'static str },
    #[error("connection option {keyword}=\"{value}\" is not supported: {reason}")]
    UnsupportedValue { keyword: &'static str, value: String, reason: &'static str },
    #[error(transparent)]
    OsUser(#[from] OsUserError),
}

/// Whether libpq 18 knows `keyword`.
pub fn is_keyword(keyword: &str) -> bool {
    canonical_keyword(keyword).is_some()
}

fn canonical_keyword(keyword: &str) -> Option<&'static str> {
    KEYWORDS.iter().copied().find(|k| *k == keyword)
}

/// Parses a connection string — a URI when it starts with `postgresql://` or `postgres://`, else `key=value`
/// pairs — as `PQconninfoParse` does: no defaults are added. Each keyword appears once, in the order it first
/// appeared, with the last value given (libpq's behaviour for repeated keywords). The legacy `requiressl`
/// keyword and the URI parameter `ssl=true` come back as `sslmode`.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let options = parse_options(s)?;
    Ok(options.0.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn parse_options(s: &str) -> Result<Options, ConnInfoError> {
    if s.contains('\0') {
        return Err(ConnInfoError::NulCharacter);
    }
    match uri_prefix_len(s) {
        Some(prefix) => parse_uri(s, prefix),
        None => parse_keyword_value(s),
    }
}

/// Keyword → value, in order of first appearance; a later value replaces an earlier one.
#[derive(Debug, Default)]
struct Options(Vec<(&'static str, String)>);

impl Options {
    fn get(&self, keyword: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == keyword).map(|(_, v)| v.as_str())
    }

    /// The value, treating the empty string as unset (libpq does so for most keywords).
    fn non_empty(&self, keyword: &str) -> Option<&str> {
        self.get(keyword).filter(|v| !v.is_empty())
    }

    fn set(&mut self, keyword: &'static str, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == keyword) {
            Some(slot) => slot.1 = value,
            None => self.0.push((keyword, value)),
        }
    }

    /// libpq's `conninfo_storeval`: translates `requiressl`, rejects unknown keywords.
    fn store(&mut self, keyword: &str, value: String) -> Result<(), ConnInfoError> {
        let (keyword, value) = if keyword == "requiressl" {
            let mode = if value.starts_with('1') { "require" } else { "prefer" };
            ("sslmode", mode.to_owned())
        } else {
            (keyword, value)
        };
        let keyword =
            canonical_keyword(keyword).ok_or_else(|| ConnInfoError::InvalidOption(keyword.to_owned()))?;
        self.set(keyword, value);
        Ok(())
    }
}

/// C `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r')
}

fn uri_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"].iter().find(|p| s.starts_with(**p)).map(|p| p.len())
}

// ---------------------------------------------------------------------------------------------------------
// key=value strings

fn parse_keyword_value(s: &str) -> Result<Options, ConnInfoError> {
    let mut options = Options::default();
    let mut chars = s.chars().peekable();
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            return Ok(options);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || is_c_space(c) {
                break;
            }
            name.push(c);
            chars.next();
        }
        skip_spaces(&mut chars);
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(name));
        }
        skip_spaces(&mut chars);
        let value = if chars.next_if_eq(&'\'').is_some() {
            quoted_value(&mut chars)?
        } else {
            unquoted_value(&mut chars)
        };
        options.store(&name, value)?;
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_spaces(chars: &mut Chars) {
    while chars.next_if(|c| is_c_space(*c)).is_some() {}
}

/// Up to the next whitespace; a backslash takes the next character literally.
fn unquoted_value(chars: &mut Chars) -> String {
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            c if is_c_space(c) => break,
            '\\' => value.extend(chars.next()),
            c => value.push(c),
        }
    }
    value
}

/// After the opening quote, up to the closing one; a backslash takes the next character literally.
fn quoted_value(chars: &mut Chars) -> Result<String, ConnInfoError> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(ConnInfoError::UnterminatedQuote),
            Some('\'') => return Ok(value),
            Some('\\') => value.extend(chars.next()),
            Some(c) => value.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// URIs: postgresql://[user[:password]@][netloc][:port][,...][/dbname][?param1=value1&...]

fn parse_uri(uri: &str, prefix_len: usize) -> Result<Options, ConnInfoError> {
    let mut options = Options::default();
    let mut pos = parse_uri_credentials(uri, prefix_len, &mut options)?;

    let (hosts, ports, after_netlocs) = parse_uri_netlocs(uri, &mut pos)?;
    if !hosts.is_empty() {
        options.store("host", uri_decode(&hosts)?)?;
    }
    if !ports.is_empty() {
        options.store("port", uri_decode(&ports)?)?;
    }

    let mut terminator = after_netlocs;
    if terminator == Some(b'/') {
        let start = pos + 1;
        pos = find_byte(uri, start, b"?");
        let dbname = &uri[start..pos];
        // An empty dbname is left unset so that defaults still apply (libpq does the same).
        if !dbname.is_empty() {
            options.store("dbname", uri_decode(dbname)?)?;
        }
        terminator = uri.as_bytes().get(pos).copied();
    }
    if terminator.is_some() {
        parse_uri_params(&uri[pos + 1..], &mut options)?;
    }
    Ok(options)
}

/// Index of the first byte at or after `from` that is one of `stops`, else the length of `s`.
fn find_byte(s: &str, from: usize, stops: &[u8]) -> usize {
    s.as_bytes()[from..].iter().position(|b| stops.contains(b)).map_or(s.len(), |i| from + i)
}

/// Stores `user` and `password` if the URI has a `...@` part before the first `/`; returns where the
/// netloc list starts.
fn parse_uri_credentials(uri: &str, start: usize, options: &mut Options) -> Result<usize, ConnInfoError> {
    let at = find_byte(uri, start, b"@/");
    if uri.as_bytes().get(at) != Some(&b'@') {
        return Ok(start);
    }
    let user_end = find_byte(uri, start, b":@");
    let user = &uri[start..user_end];
    if !user.is_empty() {
        options.store("user", uri_decode(user)?)?;
    }
    if user_end < at {
        let password = &uri[user_end + 1..at];
        if !password.is_empty() {
            options.store("password", uri_decode(password)?)?;
        }
    }
    Ok(at + 1)
}

/// Reads `netloc[:port][,netloc[:port]...]` from `*pos`, leaving `*pos` at the terminator; returns the still
/// percent-encoded comma-separated host and port lists and the terminator (`/`, `?` or end).
fn parse_uri_netlocs(uri: &str, pos: &mut usize) -> Result<(String, String, Option<u8>), ConnInfoError> {
    let bytes = uri.as_bytes();
    let (mut hosts, mut ports) = (String::new(), String::new());
    loop {
        if bytes.get(*pos) == Some(&b'[') {
            let start = *pos + 1;
            let close = find_byte(uri, start, b"]");
            if close == uri.len() {
                return Err(ConnInfoError::UnmatchedBracket(uri.to_owned()));
            }
            if close == start {
                return Err(ConnInfoError::EmptyIpv6Host(uri.to_owned()));
            }
            hosts.push_str(&uri[start..close]);
            *pos = close + 1;
            if let Some(ch) = uri[*pos..].chars().next().filter(|c| !":/?,".contains(*c)) {
                return Err(ConnInfoError::UnexpectedUriCharacter {
                    ch,
                    position: *pos + 1,
                    uri: uri.to_owned(),
                });
            }
        } else {
            let start = *pos;
            *pos = find_byte(uri, start, b":/?,");
            hosts.push_str(&uri[start..*pos]);
        }
        let mut terminator = bytes.get(*pos).copied();
        if terminator == Some(b':') {
            let start = *pos + 1;
            *pos = find_byte(uri, start, b"/?,");
            ports.push_str(&uri[start..*pos]);
            terminator = bytes.get(*pos).copied();
        }
        if terminator != Some(b',') {
            return Ok((hosts, ports, terminator));
        }
        *pos += 1;
        hosts.push(',');
        ports.push(',');
    }
}

/// `key=value&...`; keys and values are percent-decoded; unknown keys are an error.
fn parse_uri_params(params: &str, options: &mut Options) -> Result<(), ConnInfoError> {
    let mut rest = params;
    while !rest.is_empty() {
        let (param, next) = rest.split_once('&').unwrap_or((rest, ""));
        rest = next;
        let Some((keyword, value)) = param.split_once('=') else {
            return Err(ConnInfoError::MissingUriSeparator(param.to_owned()));
        };
        if value.contains('=') {
            return Err(ConnInfoError::ExtraUriSeparator(keyword.to_owned()));
        }
        let (keyword, value) = (uri_decode(keyword)?, uri_decode(value)?);
        // JDBC compatibility, as in libpq.
        let (keyword, value) = if keyword == "ssl" && value == "true" {
            ("sslmode".to_owned(), "require".to_owned())
        } else {
            (keyword, value)
        };
        options.store(&keyword, value).map_err(|e| match e {
            ConnInfoError::InvalidOption(keyword) => ConnInfoError::InvalidUriQueryParameter(keyword),
            other => other,
        })?;
    }
    Ok(())
}

/// Replaces `%xy` triplets (hex digits, either case) with the byte they encode.
fn uri_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(ConnInfoError::InvalidPercentEncoding(s.to_owned()));
        };
        let byte = (hi * 16 + lo) as u8;
        if byte == 0 {
            return Err(ConnInfoError::PercentEncodedNul(s.to_owned()));
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::PercentEncodedNotUtf8(s.to_owned()))
}

// ---------------------------------------------------------------------------------------------------------
// Resolving: connection string + options + environment + defaults → ConnParams

/// Where pg_receivewal's connection settings come from, before the environment and defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sources<'a> {
    /// `-d` / `--dbname`: a connection string (always parsed as one, as pg_receivewal does).
    pub conninfo: Option<&'a str>,
    /// `-h` / `--host`
    pub host: Option<&'a str>,
    /// `-p` / `--port`
    pub port: Option<&'a str>,
    /// `-U` / `--username`
    pub user: Option<&'a str>,
    /// The program name; like pg_receivewal's progname it overrides the connection string's value.
    pub fallback_application_name: Option<&'a str>,
}

/// Merges the sources as pg_receivewal's `GetConnection` does (`dbname=replication`, then the connection
/// string's non-empty values, then `replication=true`, fallback_application_name, `-h`, `-U`, `-p`), fills
/// unset keywords from the environment (`env` looks a variable up; pass [`process_env`] in production), then
/// applies and validates libpq's defaults. Every value is checked here, before any connection attempt.
pub fn resolve(src: &Sources, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnParams, ConnInfoError> {
    let mut options = Options::default();
    options.set("dbname", "replication".to_owned());
    if let Some(conninfo) = src.conninfo {
        for (keyword, value) in parse_options(conninfo)?.0 {
            if !value.is_empty() {
                options.set(keyword, value);
            }
        }
    }
    options.set("replication", "true".to_owned());
    let overrides = [
        ("fallback_application_name", src.fallback_application_name),
        ("host", src.host),
        ("user", src.user),
        ("port", src.port),
    ];
    for (keyword, value) in overrides {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            options.set(keyword, value.to_owned());
        }
    }
    add_environment(&mut options, env);
    build(&options, env)
}

/// libpq's `conninfo_add_defaults`, environment part: a variable fills its keyword when the keyword is unset,
/// even when the variable is empty.
fn add_environment(options: &mut Options, env: &dyn Fn(&str) -> Option<String>) {
    for &(var, keyword) in ENV_VARS {
        if options.get(keyword).is_none() {
            if let Some(value) = env(var) {
                options.set(keyword, value);
            }
        }
    }
    if options.get("sslmode").is_none() && env(PGREQUIRESSL).is_some_and(|v| v.starts_with('1')) {
        options.set("sslmode", "require".to_owned());
    }
}

fn build(options: &Options, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnParams, ConnInfoError> {
    if options.get("service").is_some() {
        return Err(ConnInfoError::UnsupportedOption {
            keyword: "service",
            reason: "connection service files are not read; give the settings directly",
        });
    }
    let endpoints = endpoints(options)?;
    let user = match options.non_empty("user") {
        Some(user) => user.to_owned(),
        None => env::effective_user()?.name,
    };
    let dbname = options.non_empty("dbname").unwrap_or(&user).to_owned();
    let channel_binding =
        choose(options.get("channel_binding"), "channel_binding", CHANNEL_BINDINGS, ChannelBinding::Prefer)?;
    let sslmode = sslmode(options)?;
    check_tls_protocol_versions(options)?;
    check_value_dependent_options(options)?;
    let target_session_attrs = choose(
        options.get("target_session_attrs"),
        "target_session_attrs",
        TARGET_SESSION_ATTRS,
        TargetSessionAttrs::Any,
    )?;
    check_refused(options)?;

    let owned = |keyword| options.non_empty(keyword).map(str::to_owned);
    let path = |keyword| options.non_empty(keyword).map(PathBuf::from);
    Ok(ConnParams {
        endpoints,
        user,
        dbname: Some(dbname),
        password: owned("password"),
        passfile: path("passfile").or_else(|| pgpass::default_path(env)),
        application_name: owned("application_name"),
        fallback_application_name: owned("fallback_application_name"),
        options: owned("options"),
        sslmode,
        sslrootcert: path("sslrootcert"),
        sslcert: path("sslcert"),
        sslkey: path("sslkey"),
        sslpassword: owned("sslpassword"),
        connect_timeout: connect_timeout(options)?,
        channel_binding,
        target_session_attrs,
        keepalives: int_option(options, "keepalives")?.is_none_or(|v| v != 0),
        keepalives_idle: seconds(int_option(options, "keepalives_idle")?),
        keepalives_interval: seconds(int_option(options, "keepalives_interval")?),
        keepalives_count: int_option(options, "keepalives_count")?.map(|n| n.max(0).unsigned_abs()),
        tcp_user_timeout: int_option(options, "tcp_user_timeout")?
            .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs().into())),
    })
}

/// The directory used when no host is given: Debian's DEFAULT_PGSOCKET_DIR, or `/tmp` (upstream's default)
/// when that directory does not exist.
pub fn default_socket_dir() -> PathBuf {
    if Path::new(DEBIAN_SOCKET_DIR).is_dir() {
        PathBuf::from(DEBIAN_SOCKET_DIR)
    } else {
        PathBuf::from(FALLBACK_SOCKET_DIR)
    }
}

/// libpq's `is_unixsock_path`: an absolute path, or `@name` for Linux's abstract socket namespace.
pub fn is_unix_socket_path(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// One endpoint per `hostaddr` (if given) or `host` element, with the matching port (libpq's
/// `pqConnectOptions2`, plus the port checks libpq makes per host when connecting).
fn endpoints(options: &Options) -> Result<Vec<Endpoint>, ConnInfoError> {
    let hostaddrs: Option<Vec<&str>> = options.non_empty("hostaddr").map(|v| v.split(',').collect());
    let hosts: Option<Vec<&str>> = options.non_empty("host").map(|v| v.split(',').collect());
    let count = match (&hostaddrs, &hosts) {
        (Some(addrs), Some(hosts)) if hosts.len() != addrs.len() => {
            return Err(ConnInfoError::HostCountMismatch { hosts: hosts.len(), hostaddrs: addrs.len() })
        }
        (Some(list), _) | (None, Some(list)) => list.len(),
        (None, None) => 1,
    };
    let ports = ports(options.non_empty("port"), count)?;
    let endpoints = (0..count).map(|i| {
        let host = hosts.as_ref().map_or("", |h| h[i]);
        let hostaddr = hostaddrs.as_ref().map(|a| a[i]).filter(|a| !a.is_empty());
        endpoint(host, hostaddr, ports[i])
    });
    Ok(endpoints.collect())
}

fn endpoint(host: &str, hostaddr: Option<&str>, port: u16) -> Endpoint {
    match hostaddr {
        Some(addr) => Endpoint::Tcp { host: host.to_owned(), hostaddr: Some(addr.to_owned()), port },
        None if host.is_empty() => Endpoint::Unix { dir: default_socket_dir(), port },
        None if is_unix_socket_path(host) => Endpoint::Unix { dir: PathBuf::from(host), port },
        None => Endpoint::Tcp { host: host.to_owned(), hostaddr: None, port },
    }
}

/// One port per host: a single port applies to all; an empty element means the default port.
fn ports(list: Option<&str>, hosts: usize) -> Result<Vec<u16>, ConnInfoError> {
    let Some(list) = list else {
        return Ok(vec![DEFAULT_PORT; hosts]);
    };
    let items: Vec<&str> = list.split(',').collect();
    if items.len() != 1 && items.len() != hosts {
        return Err(ConnInfoError::PortCountMismatch { ports: items.len(), hosts });
    }
    let parsed = items.iter().map(|item| port(item)).collect::<Result<Vec<u16>, _>>()?;
    Ok(if parsed.len() == hosts { parsed } else { vec![parsed[0]; hosts] })
}

fn port(item: &str) -> Result<u16, ConnInfoError> {
    if item.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    let number = parse_int("port", item)?;
    u16::try_from(number).ok().filter(|p| *p != 0).ok_or_else(|| ConnInfoError::InvalidPort(item.to_owned()))
}

/// libpq's `pqParseIntParam`: optional surrounding whitespace, optional sign, decimal digits, fits an int.
fn parse_int(keyword: &'static str, value: &str) -> Result<i32, ConnInfoError> {
    value
        .trim_matches(is_c_space)
        .parse::<i32>()
        .map_err(|_| ConnInfoError::InvalidInteger { keyword, value: value.to_owned() })
}

fn int_option(options: &Options, keyword: &'static str) -> Result<Option<i32>, ConnInfoError> {
    options.get(keyword).map(|v| parse_int(keyword, v)).transpose()
}

/// Negative means zero, as libpq clamps these before `setsockopt`.
fn seconds(value: Option<i32>) -> Option<Duration> {
    value.map(|s| Duration::from_secs(s.max(0).unsigned_abs().into()))
}

/// Zero or negative means no timeout; libpq waits at least two seconds.
fn connect_timeout(options: &Options) -> Result<Option<Duration>, ConnInfoError> {
    let secs = int_option(options, "connect_timeout")?.unwrap_or(0);
    Ok((secs > 0).then(|| Duration::from_secs(secs.max(2).unsigned_abs().into())))
}

const SSL_MODES: &[(&str, SslMode)] = &[
    ("disable", SslMode::Disable),
    ("allow", SslMode::Allow),
    ("prefer", SslMode::Prefer),
    ("require", SslMode::Require),
    ("verify-ca", SslMode::VerifyCa),
    ("verify-full", SslMode::VerifyFull),
];

const CHANNEL_BINDINGS: &[(&str, ChannelBinding)] = &[
    ("disable", ChannelBinding::Disable),
    ("prefer", ChannelBinding::Prefer),
    ("require", ChannelBinding::Require),
];

const TARGET_SESSION_ATTRS: &[(&str, TargetSessionAttrs)] = &[
    ("any", TargetSessionAttrs::Any),
    ("read-write", TargetSessionAttrs::ReadWrite),
    ("read-only", TargetSessionAttrs::ReadOnly),
    ("primary", TargetSessionAttrs::Primary),
    ("standby", TargetSessionAttrs::Standby),
    ("prefer-standby", TargetSessionAttrs::PreferStandby),
];

/// `env` with `PGTARGETSESSIONATTRS` reading as `value` when it is not set: resolved with it, a connection
/// string that does not say `target_session_attrs` gets `value` (`receive --failover`: read-write).
pub fn with_default_target_session_attrs<'a>(
    env: &'a dyn Fn(&str) -> Option<String>,
    value: &'a str,
) -> impl Fn(&str) -> Option<String> + 'a {
    move |var: &str| env(var).or_else(|| (var == "PGTARGETSESSIONATTRS").then(|| value.to_string()))
}

impl TargetSessionAttrs {
    /// The value as a connection string spells it.
    pub fn name(self) -> &'static str {
        TARGET_SESSION_ATTRS.iter().find(|(_, a)| *a == self).map_or("any", |(name, _)| name)
    }
}

/// The choice named by `value` (exact, case-sensitive, as libpq compares), `default` when unset.
fn choose<T: Copy>(
    value: Option<&str>,
    keyword: &'static str,
    choices: &[(&str, T)],
    default: T,
) -> Result<T, ConnInfoError> {
    let Some(value) = value else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| ConnInfoError::InvalidValue { keyword, value: value.to_owned() })
}

/// `sslmode`, defaulting to `prefer`, or to `verify-full` with `sslrootcert=system` (libpq 16+), which also
/// forbids any weaker explicit mode.
fn sslmode(options: &Options) -> Result<SslMode, ConnInfoError> {
    let system_root = options.get("sslrootcert") == Some("system");
    let default = if system_root { SslMode::VerifyFull } else { SslMode::Prefer };
    let mode = choose(options.get("sslmode"), "sslmode", SSL_MODES, default)?;
    if system_root && mode != SslMode::VerifyFull {
        let name = SSL_MODES.iter().find(|(_, m)| *m == mode).map_or("", |(name, _)| name);
        return Err(ConnInfoError::WeakSslModeForSystemRoot(name.to_owned()));
    }
    Ok(mode)
}

/// Rank of a TLS version name as libpq spells it (case-insensitive).
fn tls_version_rank(name: &str) -> Option<u8> {
    ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
        .iter()
        .position(|v| v.eq_ignore_ascii_case(name))
        .map(|i| i as u8)
}

const TLS_1_3: u8 = 3;

/// libpq's checks on `ssl_min/max_protocol_version`, then what our TLS stack (TLS 1.2 and 1.3) can honour:
/// a minimum up to TLS 1.2 is always met, but a minimum of 1.3 or a maximum below 1.3 cannot be enforced.
fn check_tls_protocol_versions(options: &Options) -> Result<(), ConnInfoError> {
    let min = options.get("ssl_min_protocol_version").unwrap_or(DEFAULT_SSL_MIN_PROTOCOL);
    let max = options.get("ssl_max_protocol_version").unwrap_or("");
    let rank = |keyword: &'static str, value: &str| match value {
        "" => Ok(None),
        v => tls_version_rank(v)
            .map(Some)
            .ok_or_else(|| ConnInfoError::InvalidValue { keyword, value: v.to_owned() }),
    };
    let min_rank = rank("ssl_min_protocol_version", min)?;
    let max_rank = rank("ssl_max_protocol_version", max)?;
    if let (Some(lo), Some(hi)) = (min_rank, max_rank) {
        if lo > hi {
            return Err(ConnInfoError::InvalidSslProtocolRange);
        }
    }
    let refuse = |keyword, value: &str| ConnInfoError::UnsupportedValue {
        keyword,
        value: value.to_owned(),
        reason: "only TLS 1.2 and 1.3 are implemented and the version cannot be pinned",
    };
    if min_rank == Some(TLS_1_3) {
        return Err(refuse("ssl_min_protocol_version", min));
    }
    if max_rank.is_some_and(|r| r < TLS_1_3) {
        return Err(refuse("ssl_max_protocol_version", max));
    }
    Ok(())
}

/// Keywords whose libpq default we implement but whose other values we cannot honour.
fn check_value_dependent_options(options: &Options) -> Result<(), ConnInfoError> {
    let refuse = |keyword: &'static str, reason| {
        let value = options.get(keyword).unwrap_or_default().to_owned();
        Err(ConnInfoError::UnsupportedValue { keyword, value, reason })
    };
    let cert_modes = &[("disable", false), ("allow", true), ("require", false)];
    if !choose(options.get("sslcertmode"), "sslcertmode", cert_modes, true)? {
        return refuse("sslcertmode", "only \"allow\" is implemented");
    }
    let gss_modes = &[("disable", false), ("prefer", false), ("require", true)];
    if choose(options.get("gssencmode"), "gssencmode", gss_modes, false)? {
        return Err(ConnInfoError::GssEncryptionUnsupported);
    }
    let negotiations = &[("postgres", false), ("direct", true)];
    if choose(options.get("sslnegotiation"), "sslnegotiation", negotiations, false)? {
        return refuse("sslnegotiation", "direct TLS negotiation is not implemented");
    }
    let balancing = &[("disable", false), ("random", true)];
    if choose(options.get("load_balance_hosts"), "load_balance_hosts", balancing, false)? {
        return refuse("load_balance_hosts", "hosts are always tried in the order given");
    }
    if options.get("sslsni").is_some_and(|v| !v.starts_with('1')) {
        return refuse("sslsni", "TLS server name indication cannot be turned off");
    }
    // true: newer than 3.0, the only protocol version implemented.
    let versions = &[("3.0", false), ("3.2", true), ("latest", true)];
    if choose(options.non_empty("min_protocol_version"), "min_protocol_version", versions, false)? {
        return refuse("min_protocol_version", "only protocol version 3.0 is implemented");
    }
    choose(options.non_empty("max_protocol_version"), "max_protocol_version", versions, false)?;
    Ok(())
}

fn check_refused(options: &Options) -> Result<(), ConnInfoError> {
    match REFUSED.iter().find(|(keyword, _)| options.non_empty(keyword).is_some()) {
        Some((keyword, reason)) => Err(ConnInfoError::UnsupportedOption { keyword, reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keyword/value pairs, or the error message.
    type Expected = Result<&'static [(&'static str, &'static str)], &'static str>;

    /// Generated by running libpq 15's PQconninfoParse on each input (keywords new since 15 are tested below).
    #[rustfmt::skip]
    const LIBPQ_PARSE_CASES: &[(&str, Expected)] = &[
        ("host=a port = 5 dbname='x y\\'z' user=a\\ b", Ok(&[("user", "a b"), ("dbname", "x y'z"), ("host", "a"), ("port", "5")])),
        ("host=db.example.com port=5433 user=rep password=secret sslmode=verify-full", Ok(&[("user", "rep"), ("password", "secret"), ("host", "db.example.com"), ("port", "5433"), ("sslmode", "verify-full")])),
        ("\thost=a\nport=1 ", Ok(&[("host", "a"), ("port", "1")])),
        ("host=a,b,c port=1,,3", Ok(&[("host", "a,b,c"), ("port", "1,,3")])),
        ("options='-c wal_sender_timeout=0' application_name=''", Ok(&[("options", "-c wal_sender_timeout=0"), ("application_name", "")])),
        ("password='it''s'", Err("missing \"=\" after \"'s'\" in connection info string")),
        ("password='a\\\\b'", Ok(&[("password", "a\\b")])),
        ("password=a\\", Ok(&[("password", "a")])),
        ("password='a\\", Err("unterminated quoted string in connection info string")),
        ("host='a b'x=1", Err("invalid connection option \"x\"")),
        ("a='x'b=1", Err("invalid connection option \"a\"")),
        ("host=a foo", Err("missing \"=\" after \"foo\" in connection info string")),
        ("host", Err("missing \"=\" after \"host\" in connection info string")),
        ("host =", Ok(&[("host", "")])),
        ("host=a port", Err("missing \"=\" after \"port\" in connection info string")),
        ("=x", Err("invalid connection option \"\"")),
        ("host='abc", Err("unterminated quoted string in connection info string")),
        ("bogus=1", Err("invalid connection option \"bogus\"")),
        ("HOST=a", Err("invalid connection option \"HOST\"")),
        ("host=a host=b", Ok(&[("host", "b")])),
        ("host=", Ok(&[("host", "")])),
        ("", Ok(&[])),
        ("   ", Ok(&[])),
        ("requiressl=1", Ok(&[("sslmode", "require")])),
        ("requiressl=0", Ok(&[("sslmode", "prefer")])),
        ("requiressl=yes", Ok(&[("sslmode", "prefer")])),
        ("keepalives=0 keepalives_idle=10 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=1000 connect_timeout=7", Ok(&[("connect_timeout", "7"), ("keepalives", "0"), ("keepalives_idle", "10"), ("keepalives_interval", "5"), ("keepalives_count", "3"), ("tcp_user_timeout", "1000")])),
        ("replication=database fallback_application_name=x client_encoding=UTF8 sslcompression=1 krbsrvname=k gsslib=gssapi", Ok(&[("client_encoding", "UTF8"), ("fallback_application_name", "x"), ("sslcompression", "1"), ("krbsrvname", "k"), ("gsslib", "gssapi"), ("replication", "database")])),
        ("postgresql://", Ok(&[])),
        ("postgres://", Ok(&[])),
        ("postgresql://u%40:p%3A@h1:1,[::1]:2,h3/db%20x?sslmode=require&application_name=a%26b", Ok(&[("user", "u@"), ("password", "p:"), ("dbname", "db x"), ("host", "h1,::1,h3"), ("port", "1,2,"), ("application_name", "a&b"), ("sslmode", "require")])),
        ("postgresql://%2Fvar%2Frun/db", Ok(&[("dbname", "db"), ("host", "/var/run")])),
        ("postgresql://%2Fvar%2Frun%2Fpostgresql:5433/replication", Ok(&[("dbname", "replication"), ("host", "/var/run/postgresql"), ("port", "5433")])),
        ("postgresql://u@", Ok(&[("user", "u")])),
        ("postgresql://:pw@h", Ok(&[("password", "pw"), ("host", "h")])),
        ("postgresql://u:@h", Ok(&[("user", "u"), ("host", "h")])),
        ("postgresql://@h", Ok(&[("host", "h")])),
        ("postgresql://h?ssl=true", Ok(&[("host", "h"), ("sslmode", "require")])),
        ("postgresql://h?ssl=false", Err("invalid URI query parameter: \"ssl\"")),
        ("postgresql://h/?requiressl=1", Ok(&[("host", "h"), ("sslmode", "require")])),
        ("postgresql://h:/d", Ok(&[("dbname", "d"), ("host", "h")])),
        ("postgresql://,/d", Ok(&[("dbname", "d"), ("host", ","), ("port", ",")])),
        ("postgresql://h1,h2:2/d", Ok(&[("dbname", "d"), ("host", "h1,h2"), ("port", ",2")])),
        ("postgresql:///?host=/tmp&port=5", Ok(&[("host", "/tmp"), ("port", "5")])),
        ("postgresql://h/?", Ok(&[("host", "h")])),
        ("postgresql://h/", Ok(&[("host", "h")])),
        ("postgresql://h", Ok(&[("host", "h")])),
        ("postgresql://h/?a=1&", Err("invalid URI query parameter: \"a\"")),
        ("postgresql://h/?&a=1", Err("missing key/value separator \"=\" in URI query parameter: \"\"")),
        ("postgresql://h/?host=a&", Ok(&[("host", "a")])),
        ("postgresql://h/?x", Err("missing key/value separator \"=\" in URI query parameter: \"x\"")),
        ("postgresql://h/?a=1=2", Err("extra key/value separator \"=\" in URI query parameter: \"a\"")),
        ("postgresql://h/?%zz=1", Err("invalid percent-encoded token: \"%zz\"")),
        ("postgresql://h/?host=%zz", Err("invalid percent-encoded token: \"%zz\"")),
        ("postgresql://h/?host%3Dx=1", Err("invalid URI query parameter: \"host=x\"")),
        ("postgresql://[::1]:5432?dbname=x", Ok(&[("dbname", "x"), ("host", "::1"), ("port", "5432")])),
        ("postgresql://[::1", Err("end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"postgresql://[::1\"")),
        ("postgresql://[]/", Err("IPv6 host address may not be empty in URI: \"postgresql://[]/\"")),
        ("postgresql://[::1]x", Err("unexpected character \"x\" at position 19 in URI (expected \":\" or \"/\"): \"postgresql://[::1]x\"")),
        ("postgresql://[::1]]", Err("unexpected character \"]\" at position 19 in URI (expected \":\" or \"/\"): \"postgresql://[::1]]\"")),
        ("postgresql://[fe80::1%25eth0]/", Ok(&[("host", "fe80::1%eth0")])),
        ("postgresql://user@host@x/db", Ok(&[("user", "user"), ("dbname", "db"), ("host", "host@x")])),
        ("postgresql://h/d%C3%A9", Ok(&[("dbname", "dé"), ("host", "h")])),
        ("postgresql://h/d%00", Err("forbidden value %00 in percent-encoded value: \"d%00\"")),
        ("postgresql://%zz@h", Err("invalid percent-encoded token: \"%zz\"")),
        ("postgresql://u:%4@h", Err("invalid percent-encoded token: \"%4\"")),
        ("postgresql://h/%", Err("invalid percent-encoded token: \"%\"")),
        ("postgresql://h/d?dbname=e", Ok(&[("dbname", "e"), ("host", "h")])),
        ("postgresql://h:5432,h2:x/d", Ok(&[("dbname", "d"), ("host", "h,h2"), ("port", "5432,x")])),
        ("postgresql://h/d/e", Ok(&[("dbname", "d/e"), ("host", "h")])),
        ("postgresql://h/?port=5&port=6", Ok(&[("host", "h"), ("port", "6")])),
        ("postgresql://a%2Cb/", Ok(&[("host", "a,b")])),
        ("postgresql://h/?options=-c%20x%3Dy", Ok(&[("host", "h"), ("options", "-c x=y")])),
        ("postgresql://h/?application_name=", Ok(&[("host", "h"), ("application_name", "")])),
        ("postgres://h/?bogus=1", Err("invalid URI query parameter: \"bogus\"")),
        ("postgresql:/h", Err("missing \"=\" after \"postgresql:/h\" in connection info string")),
        ("postgresql:h=1", Err("invalid connection option \"postgresql:h\"")),
    ];

    #[test]
    fn parse_agrees_with_libpq() {
        for (input, expected) in LIBPQ_PARSE_CASES {
            let got = parse(input).map(|mut pairs| {
                pairs.sort();
                pairs
            });
            let expected = expected.map(|pairs| {
                let mut pairs: Vec<(String, String)> =
                    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                pairs.sort();
                pairs
            });
            assert_eq!(got.map_err(|e| e.to_string()), expected.map_err(str::to_owned), "input: {input:?}");
        }
    }

    #[test]
    fn parse_keeps_first_appearance_order() {
        let pairs = parse("port=1 host=a port=2").unwrap();
        assert_eq!(pairs, [("port".to_owned(), "2".to_owned()), ("host".to_owned(), "a".to_owned())]);
    }

    #[test]
    fn parse_accepts_every_libpq_18_keyword() {
        for keyword in KEYWORDS {
            assert_eq!(parse(&format!("{keyword}=v")).unwrap(), [(keyword.to_string(), "v".to_owned())]);
            let uri = format!("postgresql://h/?{keyword}=v");
            assert!(parse(&uri).unwrap().contains(&(keyword.to_string(), "v".to_owned())), "{uri}");
        }
    }

    #[test]
    fn parse_errors_on_nul_and_non_utf8_percent_encoding() {
        assert_eq!(parse("host=a\0b"), Err(ConnInfoError::NulCharacter));
        let err = parse("postgresql://h/%e9").unwrap_err();
        assert_eq!(err.to_string(), "percent-encoded value is not valid UTF-8: \"%e9\"");
    }

    #[test]
    fn parse_treats_vertical_tab_and_form_feed_as_whitespace() {
        let pairs = parse("host=a\u{0B}port=1\u{0C}").unwrap();
        assert_eq!(pairs.len(), 2);
    }

    #[test]
    fn unexpected_uri_character_reports_whole_multibyte_character() {
        let err = parse("postgresql://[::1]é").unwrap_err();
        assert!(err.to_string().starts_with("unexpected character \"é\" at position 19"), "{err}");
    }

    // ---- resolve ----

    fn env_of(vars: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let vars = vars.to_vec();
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn conninfo(s: &str) -> Sources<'_> {
        Sources { conninfo: Some(s), ..Sources::default() }
    }

    fn resolve_with(
        src: &Sources,
        vars: &[(&'static str, &'static str)],
    ) -> Result<ConnParams, ConnInfoError> {
        resolve(src, &env_of(vars))
    }

    fn resolve_err(s: &str) -> String {
        resolve(&conninfo(s), &no_env).unwrap_err().to_string()
    }

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.to_owned(), hostaddr: None, port }
    }

    fn unix(dir: &str, port: u16) -> Endpoint {
        Endpoint::Unix { dir: PathBuf::from(dir), port }
    }

    #[test]
    fn defaults_with_nothing_given() {
        let params = resolve(&Sources::default(), &env_of(&[("HOME", "/home/x")])).unwrap();
        let expected = ConnParams {
            endpoints: vec![Endpoint::Unix { dir: default_socket_dir(), port: 5432 }],
            user: env::effective_user().unwrap().name,
            dbname: Some("replication".to_owned()),
            password: None,
            passfile: Some(PathBuf::from("/home/x/.pgpass")),
            application_name: None,
            fallback_application_name: None,
            options: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            sslpassword: None,
            connect_timeout: None,
            channel_binding: ChannelBinding::Prefer,
            target_session_attrs: TargetSessionAttrs::Any,
            keepalives: true,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            tcp_user_timeout: None,
        };
        assert_eq!(params, expected);
    }

    #[test]
    fn default_socket_dir_is_debians_when_present() {
        let expected = if Path::new("/var/run/postgresql").is_dir() { "/var/run/postgresql" } else { "/tmp" };
        assert_eq!(default_socket_dir(), PathBuf::from(expected));
    }

    #[test]
    fn everything_from_a_connection_string() {
        let s = "host=db port=5433 user=rep password=pw dbname=x application_name=app options='-c a=b' \
                 sslmode=verify-ca sslrootcert=/ca sslcert=/c sslkey=/k sslpassword=kp passfile=/pw \
                 channel_binding=require target_session_attrs=read-write connect_timeout=10 keepalives=0 \
                 keepalives_idle=60 keepalives_interval=5 keepalives_count=-3 tcp_user_timeout=1500";
        let p = resolve(&conninfo(s), &no_env).unwrap();
        assert_eq!(p.endpoints, [tcp("db", 5433)]);
        assert_eq!(p.user, "rep");
        assert_eq!(p.dbname.as_deref(), Some("x"));
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.passfile, Some(PathBuf::from("/pw")));
        assert_eq!(p.application_name.as_deref(), Some("app"));
        assert_eq!(p.options.as_deref(), Some("-c a=b"));
        assert_eq!(p.sslmode, SslMode::VerifyCa);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca")));
        assert_eq!(p.sslcert, Some(PathBuf::from("/c")));
        assert_eq!(p.sslkey, Some(PathBuf::from("/k")));
        assert_eq!(p.sslpassword.as_deref(), Some("kp"));
        assert_eq!(p.channel_binding, ChannelBinding::Require);
        assert_eq!(p.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(10)));
        assert!(!p.keepalives);
        assert_eq!(p.keepalives_idle, Some(Duration::from_secs(60)));
        assert_eq!(p.keepalives_interval, Some(Duration::from_secs(5)));
        assert_eq!(p.keepalives_count, Some(0));
        assert_eq!(p.tcp_user_timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn options_override_the_connection_string_and_env_fills_the_rest() {
        let src = Sources {
            conninfo: Some("host=a port=1 user=u1 application_name=app"),
            host: Some("b"),
            port: Some("2"),
            user: Some("u2"),
            fallback_application_name: Some("pg_receivewal"),
        };
        let env = [
            ("PGHOST", "envhost"),
            ("PGAPPNAME", "envapp"),
            ("PGPASSWORD", "envpw"),
            ("PGOPTIONS", "-c x=y"),
        ];
        let p = resolve_with(&src, &env).unwrap();
        assert_eq!(p.endpoints, [tcp("b", 2)]);
        assert_eq!(p.user, "u2");
        assert_eq!(p.application_name.as_deref(), Some("app"));
        assert_eq!(p.fallback_application_name.as_deref(), Some("pg_receivewal"));
        assert_eq!(p.password.as_deref(), Some("envpw"));
        assert_eq!(p.options.as_deref(), Some("-c x=y"));
    }

    #[test]
    fn fallback_application_name_from_sources_beats_the_connection_string() {
        let src = Sources {
            fallback_application_name: Some("walkeeper"),
            ..conninfo("fallback_application_name=x")
        };
        assert_eq!(resolve(&src, &no_env).unwrap().fallback_application_name.as_deref(), Some("walkeeper"));
        let p = resolve(&conninfo("fallback_application_name=x"), &no_env).unwrap();
        assert_eq!(p.fallback_application_name.as_deref(), Some("x"));
    }

    #[test]
    fn empty_values_in_the_connection_string_and_options_count_as_unset() {
        // pg_receivewal drops empty values, so the environment still applies.
        let src = Sources { host: Some(""), port: Some(""), ..conninfo("host='' user='' port=''") };
        let p = resolve_with(&src, &[("PGHOST", "envhost"), ("PGPORT", "7"), ("PGUSER", "envuser")]).unwrap();
        assert_eq!(p.endpoints, [tcp("envhost", 7)]);
        assert_eq!(p.user, "envuser");
    }

    #[test]
    fn empty_environment_values_count_as_set_like_libpq() {
        let err = resolve_with(&Sources::default(), &[("PGSSLMODE", "")]).unwrap_err();
        assert_eq!(err.to_string(), "invalid sslmode value: \"\"");
        let err = resolve_with(&Sources::default(), &[("PGCONNECT_TIMEOUT", "")]).unwrap_err();
        assert_eq!(err.to_string(), "invalid integer value \"\" for connection option \"connect_timeout\"");
        // Empty host, port and user fall back to the defaults.
        let p = resolve_with(&Sources::default(), &[("PGHOST", ""), ("PGPORT", ""), ("PGUSER", "")]).unwrap();
        assert_eq!(p.endpoints, [Endpoint::Unix { dir: default_socket_dir(), port: 5432 }]);
        assert_eq!(p.user, env::effective_user().unwrap().name);
    }

    #[test]
    fn connection_string_beats_environment() {
        let src = conninfo("host=a sslmode=disable password=pw target_session_attrs=standby");
        let env = [
            ("PGHOST", "b"),
            ("PGSSLMODE", "require"),
            ("PGPASSWORD", "x"),
            ("PGTARGETSESSIONATTRS", "primary"),
        ];
        let p = resolve_with(&src, &env).unwrap();
        assert_eq!(p.endpoints, [tcp("a", 5432)]);
        assert_eq!(p.sslmode, SslMode::Disable);
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.target_session_attrs, TargetSessionAttrs::Standby);
    }

    #[test]
    fn every_environment_variable_feeds_its_keyword() {
        let env = [
            ("PGHOST", "h1,h2"),
            ("PGHOSTADDR", "10.0.0.1,10.0.0.2"),
            ("PGPORT", "6000"),
            ("PGUSER", "u"),
            ("PGPASSWORD", "p"),
            ("PGPASSFILE", "/pf"),
            ("PGAPPNAME", "a"),
            ("PGOPTIONS", "-c x=1"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/r"),
            ("PGSSLCERT", "/c"),
            ("PGSSLKEY", "/k"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGCHANNELBINDING", "disable"),
            ("PGTARGETSESSIONATTRS", "prefer-standby"),
        ];
        let p = resolve_with(&Sources::default(), &env).unwrap();
        let hostaddr =
            |h: &str, a: &str| Endpoint::Tcp { host: h.to_owned(), hostaddr: Some(a.to_owned()), port: 6000 };
        assert_eq!(p.endpoints, [hostaddr("h1", "10.0.0.1"), hostaddr("h2", "10.0.0.2")]);
        assert_eq!((p.user.as_str(), p.password.as_deref()), ("u", Some("p")));
        assert_eq!(p.passfile, Some(PathBuf::from("/pf")));
        assert_eq!(p.application_name.as_deref(), Some("a"));
        assert_eq!(p.options.as_deref(), Some("-c x=1"));
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(
            (p.sslrootcert, p.sslcert, p.sslkey),
            (Some("/r".into()), Some("/c".into()), Some("/k".into()))
        );
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.channel_binding, ChannelBinding::Disable);
        assert_eq!(p.target_session_attrs, TargetSessionAttrs::PreferStandby);
    }

    #[test]
    fn dbname_is_replication_unless_given_and_pgdatabase_is_ignored() {
        let env = [("PGDATABASE", "fromenv")];
        assert_eq!(resolve_with(&Sources::default(), &env).unwrap().dbname.as_deref(), Some("replication"));
        assert_eq!(resolve_with(&conninfo("dbname=x"), &env).unwrap().dbname.as_deref(), Some("x"));
        let uri = conninfo("postgresql://h/mydb");
        assert_eq!(resolve(&uri, &no_env).unwrap().dbname.as_deref(), Some("mydb"));
    }

    #[test]
    fn replication_keyword_is_accepted_and_overridden() {
        assert!(resolve(&conninfo("replication=database"), &no_env).is_ok());
    }

    #[test]
    fn pg_receivewal_style_dbname_is_still_a_connection_string() {
        assert_eq!(resolve_err("mydb"), "missing \"=\" after \"mydb\" in connection info string");
    }

    #[test]
    fn multiple_hosts_and_ports() {
        let p = resolve(&conninfo("host=a,b,c port=1,2,3"), &no_env).unwrap();
        assert_eq!(p.endpoints, [tcp("a", 1), tcp("b", 2), tcp("c", 3)]);
        let p = resolve(&conninfo("host=a,b port=7"), &no_env).unwrap();
        assert_eq!(p.endpoints, [tcp("a", 7), tcp("b", 7)]);
        let p = resolve(&conninfo("host=a,b port=7,"), &no_env).unwrap();
        assert_eq!(p.endpoints, [tcp("a", 7), tcp("b", 5432)]);
        let p = resolve(&conninfo("postgresql://a:1,[::1],b:3/"), &no_env).unwrap();
        assert_eq!(p.endpoints, [tcp("a", 1), tcp("::1", 5432), tcp("b", 3)]);
        assert_eq!(resolve_err("host=a,b,c port=1,2"), "could not match 2 port numbers to 3 hosts");
        assert_eq!(resolve_err("host=a port=1,2"), "could not match 2 port numbers to 1 hosts");
        assert_eq!(resolve_err("port=1,2"), "could not match 2 port numbers to 1 hosts");
    }

    #[test]
    fn socket_directories_and_empty_hosts() {
        let default = default_socket_dir();
        let default = default.to_str().unwrap();
        let p = resolve(&conninfo("host=/tmp,,@abstract,db port=1"), &no_env).unwrap();
        assert_eq!(p.endpoints, [unix("/tmp", 1), unix(default, 1), unix("@abstract", 1), tcp("db", 1)]);
        let p = resolve(&conninfo("postgresql://%2Fvar%2Flib%2Fpg:5433/"), &no_env).unwrap();
        assert_eq!(p.endpoints, [unix("/var/lib/pg", 5433)]);
    }

    #[test]
    fn hostaddr_lists() {
        let with = |host: &str, addr: &str, port| Endpoint::Tcp {
            host: host.to_owned(),
            hostaddr: Some(addr.to_owned()),
            port,
        };
        let p = resolve(&conninfo("hostaddr=127.0.0.1"), &no_env).unwrap();
        assert_eq!(p.endpoints, [with("", "127.0.0.1", 5432)]);
        let p = resolve(&conninfo("host=a,/tmp hostaddr=10.0.0.1, port=1,2"), &no_env).unwrap();
        assert_eq!(p.endpoints, [with("a", "10.0.0.1", 1), unix("/tmp", 2)]);
        assert_eq!(p.endpoints[0].host_for_display(), "a");
        assert_eq!(
            resolve_err("hostaddr=1.2.3.4,1.2.3.5 host=a"),
            "could not match 1 host names to 2 hostaddr values"
        );
        assert_eq!(
            resolve_err("hostaddr=1.2.3.4 host=a,b"),
            "could not match 2 host names to 1 hostaddr values"
        );
        assert_eq!(
            resolve_err("hostaddr=1.2.3.4,1.2.3.5 port=1,2,3"),
            "could not match 3 port numbers to 2 hosts"
        );
    }

    #[test]
    fn port_numbers() {
        for (port, expected) in [("1", 1), ("65535", 65535), (" 5433 ", 5433), ("+5434", 5434), ("\t7\n", 7)]
        {
            let p = resolve(&Sources { port: Some(port), ..Sources::default() }, &no_env).unwrap();
            assert_eq!(p.endpoints[0].port(), expected, "{port:?}");
        }
        for (port, message) in [
            ("0", "invalid port number: \"0\""),
            ("65536", "invalid port number: \"65536\""),
            ("-1", "invalid port number: \"-1\""),
            ("99999999999", "invalid integer value \"99999999999\" for connection option \"port\""),
            ("x", "invalid integer value \"x\" for connection option \"port\""),
            ("54 32", "invalid integer value \"54 32\" for connection option \"port\""),
            ("0x10", "invalid integer value \"0x10\" for connection option \"port\""),
        ] {
            let src = Sources { port: Some(port), ..Sources::default() };
            assert_eq!(resolve(&src, &no_env).unwrap_err().to_string(), message, "{port:?}");
        }
        assert_eq!(
            resolve_err("host=a,b port=1,x"),
            "invalid integer value \"x\" for connection option \"port\""
        );
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        for (value, expected) in
            [("0", None), ("-3", None), ("1", Some(2)), ("2", Some(2)), (" 30 ", Some(30))]
        {
            let p = resolve(&conninfo(&format!("connect_timeout='{value}'")), &no_env).unwrap();
            assert_eq!(p.connect_timeout, expected.map(Duration::from_secs), "{value:?}");
        }
        assert_eq!(
            resolve_err("connect_timeout=2s"),
            "invalid integer value \"2s\" for connection option \"connect_timeout\""
        );
    }

    #[test]
    fn keepalive_settings_are_integers() {
        assert!(resolve(&conninfo("keepalives=1"), &no_env).unwrap().keepalives);
        assert!(resolve(&conninfo("keepalives=7"), &no_env).unwrap().keepalives);
        assert!(!resolve(&conninfo("keepalives=0"), &no_env).unwrap().keepalives);
        assert_eq!(
            resolve_err("keepalives=x"),
            "invalid integer value \"x\" for connection option \"keepalives\""
        );
        assert_eq!(
            resolve_err("tcp_user_timeout=1.5"),
            "invalid integer value \"1.5\" for connection option \"tcp_user_timeout\""
        );
        let p = resolve(&conninfo("keepalives_idle=-1"), &no_env).unwrap();
        assert_eq!(p.keepalives_idle, Some(Duration::ZERO));
    }

    #[test]
    fn enumerated_values() {
        for (name, mode) in SSL_MODES {
            assert_eq!(resolve(&conninfo(&format!("sslmode={name}")), &no_env).unwrap().sslmode, *mode);
        }
        for (name, binding) in CHANNEL_BINDINGS {
            let p = resolve(&conninfo(&format!("channel_binding={name}")), &no_env).unwrap();
            assert_eq!(p.channel_binding, *binding);
        }
        for (name, attrs) in TARGET_SESSION_ATTRS {
            let p = resolve(&conninfo(&format!("target_session_attrs={name}")), &no_env).unwrap();
            assert_eq!(p.target_session_attrs, *attrs);
        }
        assert_eq!(resolve_err("sslmode=x"), "invalid sslmode value: \"x\"");
        assert_eq!(resolve_err("sslmode=REQUIRE"), "invalid sslmode value: \"REQUIRE\"");
        assert_eq!(resolve_err("channel_binding=x"), "invalid channel_binding value: \"x\"");
        assert_eq!(resolve_err("target_session_attrs=x"), "invalid target_session_attrs value: \"x\"");
        assert_eq!(resolve_err("gssencmode=x"), "invalid gssencmode value: \"x\"");
        assert_eq!(resolve_err("sslcertmode=x"), "invalid sslcertmode value: \"x\"");
        assert_eq!(resolve_err("sslnegotiation=x"), "invalid sslnegotiation value: \"x\"");
        assert_eq!(resolve_err("load_balance_hosts=x"), "invalid load_balance_hosts value: \"x\"");
        assert_eq!(resolve_err("min_protocol_version=3.1"), "invalid min_protocol_version value: \"3.1\"");
        assert_eq!(resolve_err("max_protocol_version=4"), "invalid max_protocol_version value: \"4\"");
    }

    #[test]
    fn legacy_requiressl() {
        assert_eq!(resolve(&conninfo("requiressl=1"), &no_env).unwrap().sslmode, SslMode::Require);
        let p = resolve_with(&Sources::default(), &[("PGREQUIRESSL", "1")]).unwrap();
        assert_eq!(p.sslmode, SslMode::Require);
        let p = resolve_with(&Sources::default(), &[("PGREQUIRESSL", "1"), ("PGSSLMODE", "allow")]).unwrap();
        assert_eq!(p.sslmode, SslMode::Allow);
        let p = resolve_with(&Sources::default(), &[("PGREQUIRESSL", "0")]).unwrap();
        assert_eq!(p.sslmode, SslMode::Prefer);
    }

    #[test]
    fn system_root_certificates_require_verify_full() {
        let p = resolve(&conninfo("sslrootcert=system"), &no_env).unwrap();
        assert_eq!((p.sslmode, p.sslrootcert), (SslMode::VerifyFull, Some(PathBuf::from("system"))));
        assert_eq!(
            resolve_err("sslrootcert=system sslmode=require"),
            "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
        );
    }

    #[test]
    fn tls_protocol_versions() {
        assert!(resolve(
            &conninfo("ssl_min_protocol_version=tlsv1 ssl_max_protocol_version=TLSv1.3"),
            &no_env
        )
        .is_ok());
        assert!(resolve(&conninfo("ssl_min_protocol_version=TLSv1.2"), &no_env).is_ok());
        assert_eq!(
            resolve_err("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2"),
            "invalid SSL protocol version range"
        );
        assert_eq!(
            resolve_err("ssl_min_protocol_version=SSLv3"),
            "invalid ssl_min_protocol_version value: \"SSLv3\""
        );
        assert!(resolve_err("ssl_min_protocol_version=TLSv1.3").contains("is not supported"));
        assert!(resolve_err("ssl_max_protocol_version=TLSv1.2").contains("is not supported"));
        // The compiled-in minimum (TLSv1.2) makes a lower maximum an invalid range, as in libpq.
        assert_eq!(resolve_err("ssl_max_protocol_version=TLSv1.1"), "invalid SSL protocol version range");
    }

    #[test]
    fn settings_we_cannot_honour_are_refused() {
        for setting in [
            "requirepeer=postgres",
            "require_auth=scram-sha-256",
            "sslcrl=/crl",
            "sslcrldir=/crls",
            "sslkeylogfile=/keys",
            "oauth_issuer=https://x",
            "oauth_client_id=x",
            "oauth_client_secret=x",
            "oauth_scope=x",
            "scram_client_key=x",
            "scram_server_key=x",
            "sslcertmode=require",
            "sslcertmode=disable",
            "sslnegotiation=direct",
            "load_balance_hosts=random",
            "sslsni=0",
            "min_protocol_version=3.2",
            "min_protocol_version=latest",
        ] {
            let err = resolve_err(setting);
            let keyword = setting.split('=').next().unwrap();
            assert!(err.contains("is not supported") && err.contains(keyword), "{setting}: {err}");
        }
        assert_eq!(
            resolve_err("gssencmode=require"),
            "gssencmode value \"require\" invalid when GSSAPI support is not compiled in"
        );
        let err = resolve_err("service=mydb");
        assert!(err.starts_with("connection option \"service\" is not supported"), "{err}");
        let err = resolve_with(&Sources::default(), &[("PGSERVICE", "mydb")]).unwrap_err();
        assert!(err.to_string().contains("\"service\""), "{err}");
        let err = resolve_with(&Sources::default(), &[("PGREQUIREPEER", "postgres")]).unwrap_err();
        assert!(err.to_string().contains("requirepeer"), "{err}");
    }

    #[test]
    fn secrets_are_not_echoed_in_refusals() {
        assert!(!resolve_err("oauth_client_secret=hunter2").contains("hunter2"));
        assert!(!resolve_err("scram_client_key=hunter2").contains("hunter2"));
    }

    #[test]
    fn harmless_settings_are_accepted() {
        let s = "client_encoding=UTF8 sslcompression=1 krbsrvname=k gsslib=gssapi gssdelegation=1 \
                 gssencmode=prefer sslcertmode=allow sslnegotiation=postgres load_balance_hosts=disable \
                 sslsni=1 min_protocol_version=3.0 max_protocol_version=latest servicefile=/x \
                 ssl_min_protocol_version=TLSv1.2 requirepeer='' require_auth=''";
        resolve(&conninfo(s), &no_env).unwrap();
        assert!(resolve(&conninfo("gssencmode=disable"), &no_env).is_ok());
    }

    #[test]
    fn passfile_precedence() {
        let env = [("PGPASSFILE", "/env"), ("HOME", "/home/h")];
        assert_eq!(resolve_with(&conninfo("passfile=/ci"), &env).unwrap().passfile, Some("/ci".into()));
        assert_eq!(resolve_with(&Sources::default(), &env).unwrap().passfile, Some("/env".into()));
        let home_only = [("HOME", "/home/h")];
        let p = resolve_with(&Sources::default(), &home_only).unwrap();
        assert_eq!(p.passfile, Some("/home/h/.pgpass".into()));
    }

    #[test]
    fn uri_credentials_are_percent_decoded() {
        let p = resolve(&conninfo("postgresql://us%3Aer:p%40ss@h/"), &no_env).unwrap();
        assert_eq!((p.user.as_str(), p.password.as_deref()), ("us:er", Some("p@ss")));
    }

    #[test]
    fn error_messages_are_one_line() {
        for input in ["host='x", "postgresql://[::1", "sslmode=x", "port=x", "requirepeer=x", "host=a b"] {
            let err = resolve_err(input);
            assert!(!err.contains('\n') && !err.is_empty(), "{input}: {err:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_uris(s in "[a-z%@:/\\[\\],?=&0-9A-F'\\\\ é.-]{0,40}") {
            let _ = parse(&format!("postgresql://{s}"));
            let _ = parse(&s);
        }

        #[test]
        fn resolve_never_panics(
            s in "[a-z_ =',/@\\[\\]0-9:.?&%-]{0,60}",
            host in proptest::option::of("[a-z/,@0-9]{0,10}"),
            port in proptest::option::of("[0-9, +-]{0,8}"),
            env_value in "[a-z0-9,/ -]{0,8}",
        ) {
            let src = Sources { conninfo: Some(&s), host: host.as_deref(), port: port.as_deref(), ..Sources::default() };
            let _ = resolve(&src, &no_env);
            let uri = format!("postgresql://{s}");
            let _ = resolve(&conninfo(&uri), &no_env);
            let env = |_: &str| Some(env_value.clone());
            let _ = resolve(&Sources::default(), &env);
        }

        #[test]
        fn quoting_round_trips(value in any::<String>().prop_filter("no NUL", |v| !v.contains('\0'))) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            let pairs = parse(&format!("password='{quoted}'")).unwrap();
            prop_assert_eq!(pairs, vec![("password".to_owned(), value)]);
        }

        #[test]
        fn percent_encoding_round_trips(value in "[^\0]{1,20}") {
            let encoded: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
            let pairs = parse(&format!("postgresql://h/?application_name={encoded}")).unwrap();
            prop_assert!(pairs.contains(&("application_name".to_owned(), value)));
        }
    }
}
