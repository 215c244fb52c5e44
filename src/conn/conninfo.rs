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
    for (var, keyword) in ENV_VARS {
        if options.get(keyword).is_none() {
            if let Some(value) = env(var) {
                let keyword = canonical_keyword(keyword).expect("ENV_VARS names libpq keywords");
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
