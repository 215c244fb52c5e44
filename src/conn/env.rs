//! The parts of the process environment libpq consults: the `PG*` environment variables that supply defaults
//! for connection keywords (libpq's `PQconninfoOptions` envvar column), and the operating-system user of the
//! effective uid (default user name, home directory for `~/.pgpass`).

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Environment variable → the connection keyword it supplies when the keyword is not set otherwise
/// (libpq 18's table; variables are read even when set to the empty string, as libpq does).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PGSERVICE", "service"),
    ("PGSERVICEFILE", "servicefile"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGDATABASE", "dbname"),
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGSSLCOMPRESSION", "sslcompression"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLCERTMODE", "sslcertmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCRL", "sslcrl"),
    ("PGSSLCRLDIR", "sslcrldir"),
    ("PGSSLSNI", "sslsni"),
    ("PGREQUIREPEER", "requirepeer"),
    ("PGREQUIREAUTH", "require_auth"),
    ("PGMINPROTOCOLVERSION", "min_protocol_version"),
    ("PGMAXPROTOCOLVERSION", "max_protocol_version"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version"),
    ("PGGSSENCMODE", "gssencmode"),
    ("PGKRBSRVNAME", "krbsrvname"),
    ("PGGSSLIB", "gsslib"),
    ("PGGSSDELEGATION", "gssdelegation"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
];

/// Deprecated: a value starting with `1` means `sslmode=require` when neither `sslmode` nor PGSSLMODE is set.
pub const PGREQUIRESSL: &str = "PGREQUIRESSL";

/// Reads the real process environment (for production; tests inject their own lookup function).
/// A variable whose value is not valid UTF-8 is treated as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The password-database entry of the effective uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub home: PathBuf,
}

/// Why the effective uid's user could not be determined (libpq's `pg_fe_getauthname` wording).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OsUserError {
    #[error("could not look up local user ID {uid}: {reason}")]
    Lookup { uid: u32, reason: String },
    #[error("local user with ID {uid} does not exist")]
    NoSuchUser { uid: u32 },
}

/// Looks up the effective uid with `getpwuid_r`, as libpq does for the default user name and home directory.
pub fn effective_user() -> Result<OsUser, OsUserError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids) that getpwuid_r overwrites.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call and `buf.len()` is the buffer's size.
        let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            let reason = std::io::Error::from_raw_os_error(rc).to_string();
            return Err(OsUserError::Lookup { uid, reason });
        }
        if found.is_null() {
            return Err(OsUserError::NoSuchUser { uid });
        }
        // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings inside `buf`, which is alive.
        let (name, home) = unsafe { (CStr::from_ptr(entry.pw_name), CStr::from_ptr(entry.pw_dir)) };
        return Ok(OsUser {
            name: name.to_string_lossy().into_owned(),
            home: PathBuf::from(OsStr::from_bytes(home.to_bytes())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_names_a_distinct_keyword() {
        for (i, (var, kw)) in ENV_VARS.iter().enumerate() {
            assert!(var.starts_with("PG"), "{var}");
            assert!(ENV_VARS[i + 1..].iter().all(|(v, k)| v != var && k != kw), "{var} / {kw} listed twice");
            assert!(crate::conn::conninfo::is_keyword(kw), "{kw} is not a libpq keyword");
        }
    }

    #[test]
    fn effective_user_matches_the_process_uid() {
        let user = effective_user().expect("the test runner's uid has a passwd entry");
        assert!(!user.name.is_empty());
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(user.name, "root");
        }
    }
}
