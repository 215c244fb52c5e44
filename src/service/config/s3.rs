//! The `[s3]` and `[source.s3]` tables: the endpoint and credentials of the sources' `upload = "s3://…"`.
//! A source's set keys win over the top-level table's, and those over the standard `AWS_*` environment
//! (which `archive::store` reads when the store is opened). A secret may be given inline or as a file
//! (`secret_access_key_file`, read here at every load, so a reload sees a rotated secret). Secrets are never
//! printed: not by `Debug`, not in an error.

use crate::archive::store::S3Options;
use crate::protocol::codec::os_error;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A secret file larger than this is refused (a secret access key is 40 characters).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// One `[s3]` or `[source.s3]` table as written. Unknown keys are refused.
#[derive(Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct S3Table {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    session_token: Option<String>,
    allow_http: Option<bool>,
}

/// Keys whose values are secrets: a type error in one of them does not show the value.
pub(super) const SECRET_KEYS: [&str; 2] = ["secret_access_key", "session_token"];

/// Secrets stay out of logs.
impl fmt::Debug for S3Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Table")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl S3Table {
    /// Whether the file itself holds a secret (`secret_access_key` or `session_token`).
    pub(super) fn holds_secret(&self) -> bool {
        self.secret_access_key.is_some() || self.session_token.is_some()
    }

    /// The settings this table sets, checked, its secret file read (a relative path is relative to `base`,
    /// the configuration file's directory). Err: the key and what is wrong, never a secret.
    pub(super) fn options(&self, base: &Path) -> Result<S3Options, (&'static str, String)> {
        for (key, value) in [
            ("endpoint", &self.endpoint),
            ("region", &self.region),
            ("access_key_id", &self.access_key_id),
            ("secret_access_key", &self.secret_access_key),
            ("session_token", &self.session_token),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err((key, "is empty".into()));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err((
                    "endpoint",
                    format!("\"{endpoint}\" is not a URL such as \"https://s3.example.net:9000\""),
                ));
            }
        }
        let secret_access_key = match (&self.secret_access_key, &self.secret_access_key_file) {
            (Some(_), Some(_)) => {
                return Err((
                    "secret_access_key_file",
                    "set secret_access_key or secret_access_key_file, not both".into(),
                ))
            }
            (_, Some(file)) => {
                Some(read_secret(&base.join(file)).map_err(|m| ("secret_access_key_file", m))?)
            }
            (inline, None) => inline.clone(),
        };
        Ok(S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key,
            session_token: self.session_token.clone(),
            allow_http: self.allow_http,
            ..S3Options::default()
        })
    }
}

/// The secret in `file`: its text without the trailing newline (as `systemd-creds`, a Kubernetes secret or
/// `echo` leave it).
fn read_secret(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let shown = file.display();
    let describe = |e: std::io::Error| format!("could not read \"{shown}\": {}", os_error(&e));
    let f = std::fs::File::open(file).map_err(describe)?;
    if !f.metadata().map_err(describe)?.is_file() {
        return Err(format!("\"{shown}\" is not a file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(describe)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!("\"{shown}\" is larger than {MAX_SECRET_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("\"{shown}\" is not valid UTF-8"))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("\"{shown}\" is empty"));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> S3Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_table_sets_what_it_names() {
        let t = table(
            "endpoint = \"http://127.0.0.1:8333\"\nregion = \"r\"\naccess_key_id = \"k\"\n\
             secret_access_key = \"s\"\nsession_token = \"t\"\nallow_http = true\n",
        );
        let o = t.options(Path::new("/")).unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!((o.region.as_deref(), o.access_key_id.as_deref()), (Some("r"), Some("k")));
        assert_eq!((o.secret_access_key.as_deref(), o.session_token.as_deref()), (Some("s"), Some("t")));
        assert_eq!(o.allow_http, Some(true));
        assert!(t.holds_secret());
        assert_eq!(table("").options(Path::new("/")).unwrap(), S3Options::default());
        assert!(!table("region = \"r\"").holds_secret());
    }

    #[test]
    fn the_secret_file_is_read_without_its_newline_relative_to_the_base() {
        let dir = tempfile::tempdir().unwrap();
        for (text, secret) in [("abc\n", "abc"), ("abc\r\n", "abc"), ("abc", "abc"), ("a b\nc\n\n", "a b\nc")]
        {
            std::fs::write(dir.path().join("secret"), text).unwrap();
            let o = table("secret_access_key_file = \"secret\"").options(dir.path()).unwrap();
            assert_eq!(o.secret_access_key.as_deref(), Some(secret), "{text:?}");
        }
        let t = table("secret_access_key_file = \"secret\"");
        assert!(!t.holds_secret());
        std::fs::write(dir.path().join("secret"), "\n").unwrap();
        let (key, e) = t.options(dir.path()).unwrap_err();
        assert_eq!(
            (key, e),
            ("secret_access_key_file", format!("\"{}\" is empty", dir.path().join("secret").display()))
        );
    }

    #[test]
    fn errors_name_the_key_and_never_the_secret() {
        let err = |text: &str| table(text).options(Path::new("/nonexistent")).unwrap_err();
        let (key, e) = err("secret_access_key_file = \"s\"");
        assert_eq!(key, "secret_access_key_file");
        assert_eq!(e, "could not read \"/nonexistent/s\": No such file or directory");
        let (key, e) = err("secret_access_key = \"hunter2\"\nsecret_access_key_file = \"/s\"");
        assert_eq!(key, "secret_access_key_file");
        assert!(e.contains("not both") && !e.contains("hunter2"), "{e}");
        assert_eq!(err("endpoint = \"s3.example.net\"").0, "endpoint");
        assert!(err("endpoint = \"s3.example.net\"").1.contains("is not a URL"));
        for key in ["endpoint", "region", "access_key_id", "secret_access_key", "session_token"] {
            assert_eq!(err(&format!("{key} = \"\"")), (key, "is empty".to_string()));
        }
        let dir = tempfile::tempdir().unwrap();
        let (key, e) = table("secret_access_key_file = \".\"").options(dir.path()).unwrap_err();
        assert_eq!((key, e.ends_with("is not a file")), ("secret_access_key_file", true), "{e}");
        std::fs::write(dir.path().join("big"), vec![b'x'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let (_, e) = table("secret_access_key_file = \"big\"").options(dir.path()).unwrap_err();
        assert!(e.contains("is larger than"), "{e}");
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let (_, e) = table("secret_access_key_file = \"bin\"").options(dir.path()).unwrap_err();
        assert!(e.ends_with("is not valid UTF-8"), "{e}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let t = table("secret_access_key = \"hunter2\"\nsession_token = \"t0ken\"\naccess_key_id = \"k\"");
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken") && shown.contains("\"k\""), "{shown}");
    }
}
