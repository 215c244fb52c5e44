//! The password file (`~/.pgpass`, `passfile`, PGPASSFILE) with libpq's exact rules (fe-connect.c
//! `passwordFromFile`): `host:port:database:username:password` lines, `*` wildcards, `\` escapes, `#` comments,
//! first match wins; a file that is not a plain file or that group or others can access is ignored with a
//! warning.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::conninfo::{default_socket_dir, is_unix_socket_path};
use super::env;

/// A password file that exists and is safe to use could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PgpassError {
    #[error("could not read password file \"{path}\": {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("password file \"{path}\" line {line}: the password is not valid UTF-8")]
    NotUtf8 { path: PathBuf, line: usize },
}

/// The password for the first line of `path` matching the connection, or None (also when the file is missing,
/// unreadable, not a plain file, or too permissive — libpq ignores such files). `host` is the host name, the
/// hostaddr when no name was given, or the socket directory; an empty host and the default socket directory
/// match the entry `localhost`. pg_receivewal passes `replication` as the database.
pub fn lookup(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Result<Option<String>, PgpassError> {
    if dbname.is_empty() || user.is_empty() || !usable_file(path) {
        return Ok(None);
    }
    let contents = match std::fs::read(path) {
        Ok(contents) => contents,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied || e.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(source) => return Err(PgpassError::Read { path: path.to_owned(), source }),
    };
    let host = host_key(host);
    let port = port.to_string();
    let wanted = [host.as_bytes(), port.as_bytes(), dbname.as_bytes(), user.as_bytes()];
    for (index, line) in contents.split(|b| *b == b'\n').enumerate() {
        if let Some(password) = match_line(line, &wanted) {
            return String::from_utf8(password)
                .map(Some)
                .map_err(|_| PgpassError::NotUtf8 { path: path.to_owned(), line: index + 1 });
        }
    }
    Ok(None)
}

/// `PGPASSFILE` if set and non-empty, else `.pgpass` in the home directory (`$HOME`, else the passwd entry
/// of the effective uid). A `passfile` connection keyword takes precedence over this; `resolve` handles that.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(path) = env("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = match env("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home),
        None => env::effective_user().ok()?.home,
    };
    Some(home.join(".pgpass"))
}

/// libpq's checks before opening: the file exists, is a plain file, and has no group or other permissions.
fn usable_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", path.display());
        return false;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return false;
    }
    true
}

/// The host as it is matched against the file: `localhost` for no host or the default socket directory.
fn host_key(host: &str) -> String {
    let is_default_socket = is_unix_socket_path(host) && Path::new(host) == default_socket_dir();
    if host.is_empty() || is_default_socket {
        "localhost".to_owned()
    } else {
        host.to_owned()
    }
}

/// The de-escaped password if `line` matches the four `wanted` fields.
fn match_line(line: &[u8], wanted: &[&[u8]; 4]) -> Option<Vec<u8>> {
    let line = strip_line_end(line);
    if line.is_empty() || line[0] == b'#' {
        return None;
    }
    let mut rest = line;
    for token in wanted {
        rest = match_field(rest, token)?;
    }
    Some(unescape_password(rest))
}

/// libpq's `pg_strip_crlf`: drops every trailing `\r` and `\n`.
fn strip_line_end(mut line: &[u8]) -> &[u8] {
    while let [head @ .., b'\r' | b'\n'] = line {
        line = head;
    }
    line
}

/// libpq's `pwdfMatchesString`: if the next field is `*` or equals `token` (with `\` escaping the next byte),
/// the remainder after its `:`.
fn match_field<'a>(field: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = field.strip_prefix(b"*:") {
        return Some(rest);
    }
    let (mut i, mut matched) = (0, 0);
    while i < field.len() {
        let escaped = field[i] == b'\\';
        if escaped {
            i += 1;
        }
        let byte = field.get(i);
        if byte == Some(&b':') && !escaped && matched == token.len() {
            return Some(&field[i + 1..]);
        }
        if byte.is_none() || byte != token.get(matched) {
            return None;
        }
        i += 1;
        matched += 1;
    }
    None
}

/// The password runs to the first unescaped `:` or the end; `\x` means `x` (a trailing `\` stays).
fn unescape_password(field: &[u8]) -> Vec<u8> {
    let mut password = Vec::new();
    let mut bytes = field.iter().peekable();
    while let Some(&b) = bytes.next() {
        match b {
            b':' => break,
            b'\\' => password.push(bytes.next().copied().unwrap_or(b'\\')),
            b => password.push(b),
        }
    }
    password
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn pgpass(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".pgpass");
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    fn find(contents: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
        let (_dir, path) = pgpass(contents, 0o600);
        lookup(&path, host, port, db, user).unwrap()
    }

    #[test]
    fn exact_match_and_first_match_wins() {
        let file = "db1:5432:replication:alice:first\ndb1:5432:replication:alice:second\n";
        assert_eq!(find(file, "db1", 5432, "replication", "alice").as_deref(), Some("first"));
        assert_eq!(find(file, "db1", 5433, "replication", "alice"), None);
        assert_eq!(find(file, "db2", 5432, "replication", "alice"), None);
        assert_eq!(find(file, "db1", 5432, "postgres", "alice"), None);
        assert_eq!(find(file, "db1", 5432, "replication", "bob"), None);
    }

    #[test]
    fn wildcards_match_anything_but_only_as_a_whole_field() {
        let file = "*:*:*:alice:any\n*x:5432:replication:bob:literal\n";
        assert_eq!(find(file, "h", 1, "d", "alice").as_deref(), Some("any"));
        assert_eq!(find(file, "h", 5432, "replication", "bob"), None);
        assert_eq!(find(file, "*x", 5432, "replication", "bob").as_deref(), Some("literal"));
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let file = r"we\:ird\\host:5432:*:u:pa\:ss\\word\
";
        assert_eq!(find(file, r"we:ird\host", 5432, "x", "u").as_deref(), Some(r"pa:ss\word\"));
        // The password ends at the first unescaped colon.
        assert_eq!(find("h:1:d:u:secret:trailing", "h", 1, "d", "u").as_deref(), Some("secret"));
    }

    #[test]
    fn a_field_must_be_followed_by_a_colon() {
        assert_eq!(find("h:1:d:u", "h", 1, "d", "u"), None);
        assert_eq!(find("h:1:d:u:", "h", 1, "d", "u").as_deref(), Some(""));
        assert_eq!(find("hh:1:d:u:p", "h", 1, "d", "u"), None);
        assert_eq!(find("h:1:d:u:p", "hh", 1, "d", "u"), None);
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let file = "#h:1:d:u:commented\n\n  \r\nh:1:d:u:crlf\r\n";
        assert_eq!(find(file, "h", 1, "d", "u").as_deref(), Some("crlf"));
        assert_eq!(find("h:1:d:u:no-newline", "h", 1, "d", "u").as_deref(), Some("no-newline"));
    }

    #[test]
    fn localhost_entry_matches_empty_host_and_default_socket_dir_only() {
        let file = "localhost:5432:replication:u:local\n";
        let default_dir = default_socket_dir();
        assert_eq!(find(file, "", 5432, "replication", "u").as_deref(), Some("local"));
        assert_eq!(
            find(file, default_dir.to_str().unwrap(), 5432, "replication", "u").as_deref(),
            Some("local")
        );
        assert_eq!(find(file, "localhost", 5432, "replication", "u").as_deref(), Some("local"));
        assert_eq!(find(file, "/some/other/dir", 5432, "replication", "u"), None);
        let socket_entry = "/some/other/dir:5432:replication:u:sock\n";
        assert_eq!(find(socket_entry, "/some/other/dir", 5432, "replication", "u").as_deref(), Some("sock"));
    }

    #[test]
    fn empty_database_or_user_never_matches() {
        assert_eq!(find("*:*:*:*:p\n", "h", 1, "", "u"), None);
        assert_eq!(find("*:*:*:*:p\n", "h", 1, "d", ""), None);
    }

    #[test]
    fn insecure_or_odd_files_are_ignored() {
        for mode in [0o640, 0o604, 0o610, 0o601] {
            let (_dir, path) = pgpass("*:*:*:*:p\n", mode);
            assert_eq!(lookup(&path, "h", 1, "d", "u").unwrap(), None, "mode {mode:o}");
        }
        for mode in [0o600, 0o400] {
            let (_dir, path) = pgpass("*:*:*:*:p\n", mode);
            assert_eq!(lookup(&path, "h", 1, "d", "u").unwrap().as_deref(), Some("p"), "mode {mode:o}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lookup(dir.path(), "h", 1, "d", "u").unwrap(), None);
        assert_eq!(lookup(&dir.path().join("missing"), "h", 1, "d", "u").unwrap(), None);
    }

    #[test]
    fn non_utf8_password_is_an_error_not_a_mangled_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        fs::write(&path, b"h:1:d:u:\xff\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = lookup(&path, "h", 1, "d", "u").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn default_path_prefers_pgpassfile_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let both = env(&[("PGPASSFILE", "/etc/pw"), ("HOME", "/home/a")]);
        assert_eq!(default_path(&both), Some(PathBuf::from("/etc/pw")));
        let home = env(&[("PGPASSFILE", ""), ("HOME", "/home/a")]);
        assert_eq!(default_path(&home), Some(PathBuf::from("/home/a/.pgpass")));
        let passwd = env(&[]);
        let expected = env::effective_user().unwrap().home.join(".pgpass");
        assert_eq!(default_path(&passwd), Some(expected));
    }

    #[test]
    fn match_field_never_reads_past_a_trailing_backslash() {
        assert_eq!(match_field(b"ab\\", b"ab"), None);
        assert_eq!(match_field(b"\\", b""), None);
        assert_eq!(match_field(b":", b""), Some(&b""[..]));
    }
}
