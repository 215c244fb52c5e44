//! How an S3 store is named and reached: the `s3://BUCKET/PREFIX` location, the settings (the standard AWS
//! environment, overridden by explicit values), and the timeouts and retries every request gets. Pure apart
//! from building the object_store client (which does no I/O).

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The longest object name (the part after the prefix) this store accepts.
const MAX_NAME_LEN: usize = 255;

/// S3 keys are at most 1024 bytes; the prefix leaves room for a name and its `/`.
const MAX_PREFIX_LEN: usize = 1024 - MAX_NAME_LEN - 1;

/// `s3://BUCKET/PREFIX`: the bucket and the key prefix (no leading or trailing `/`; empty for the bucket's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET`, `s3://BUCKET/` or `s3://BUCKET/PREFIX[/]`.
    pub fn parse(url: &str) -> Result<S3Location, String> {
        let rest = url.strip_prefix("s3://").ok_or("an S3 location starts with s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("no bucket name after s3://".into());
        }
        if bucket.len() > 255 || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("\"{bucket}\" is not a bucket name (letters, digits, '.', '-', '_')"));
        }
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(format!("the prefix is longer than {MAX_PREFIX_LEN} bytes"));
        }
        if !prefix.is_empty() {
            if let Some(bad) = prefix.split('/').find(|part| check_part(part).is_err()) {
                return Err(format!(
                    "\"{bad}\" is not allowed in a prefix: {}",
                    check_part(bad).unwrap_err()
                ));
            }
        }
        Ok(S3Location { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// The location as written by a user: `s3://bucket/prefix`, or `s3://bucket` for the root.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The key prefix as an object_store path (the root when empty).
    pub fn prefix_path(&self) -> Path {
        // Parsed and checked in `parse`: no empty segment, no "." or "..", no control character.
        Path::parse(&self.prefix).unwrap_or_default()
    }

    /// The key of `name`: `PREFIX/name` exactly (no encoding), so other tools find it under the same name.
    pub fn key(&self, name: &str) -> Result<Path, String> {
        check_part(name)?;
        if name.len() > MAX_NAME_LEN {
            return Err(format!("the name is longer than {MAX_NAME_LEN} bytes"));
        }
        let key = if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) };
        Path::parse(key).map_err(|e| e.to_string())
    }
}

/// One segment of a key: not empty, not `.` or `..`, no `/`, no control character.
fn check_part(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("empty name".into());
    }
    if part == "." || part == ".." {
        return Err("\".\" and \"..\" are not names".into());
    }
    if let Some(c) = part.chars().find(|c| *c == '/' || c.is_control()) {
        return Err(format!("it contains {c:?}"));
    }
    Ok(())
}

/// How long requests may take and how often they are retried. A dead store must not hang a restore_command:
/// with the defaults, "connection refused" fails within about a second, an unreachable host within about
/// 20 seconds, and a store that accepts connections but never answers a read within 30 seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection.
    pub connect: Duration,
    /// One whole read request (HEAD, a ranged GET of one chunk, a LIST page, DELETE).
    pub read: Duration,
    /// One whole PUT, body included: a 1 GiB segment needs about 3.5 MiB/s to fit in the default.
    pub write: Duration,
    /// Retries of a failed request (connection errors, timeouts, 5xx, throttling), with exponential backoff
    /// from 100 ms to 5 s ...
    pub max_retries: usize,
    /// ... and none started after this much time since the first attempt.
    pub retry_for: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(30),
            write: Duration::from_secs(300),
            max_retries: 3,
            retry_for: Duration::from_secs(30),
        }
    }
}

/// Settings of an S3 store. Every `None` falls back to the standard AWS environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_ALLOW_HTTP`, and the others object_store reads), then to object_store's defaults (AWS itself,
/// credentials from the instance or container role).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow `http://` endpoints (no TLS).
    pub allow_http: Option<bool>,
    pub timeouts: Timeouts,
}

impl S3Options {
    /// These settings, with each unset one taken from `fallback` (the timeouts are this one's).
    pub fn or(self, fallback: &S3Options) -> S3Options {
        S3Options {
            endpoint: self.endpoint.or_else(|| fallback.endpoint.clone()),
            region: self.region.or_else(|| fallback.region.clone()),
            access_key_id: self.access_key_id.or_else(|| fallback.access_key_id.clone()),
            secret_access_key: self.secret_access_key.or_else(|| fallback.secret_access_key.clone()),
            session_token: self.session_token.or_else(|| fallback.session_token.clone()),
            allow_http: self.allow_http.or(fallback.allow_http),
            timeouts: self.timeouts,
        }
    }
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("allow_http", &self.allow_http)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// The clients of a store (reads and writes differ only in their request timeout) and the endpoint they talk
/// to, for messages. The write client is built at the first write: building a client costs milliseconds (it
/// loads the system's certificates for TLS), and restore — one process per segment — verify and status
/// never write.
pub(super) struct Clients {
    pub reads: AmazonS3,
    pub writes: LazyClient,
    pub endpoint: String,
}

/// A client built on first use.
pub(super) struct LazyClient {
    builder: AmazonS3Builder,
    client: OnceLock<Result<Arc<AmazonS3>, String>>,
}

impl LazyClient {
    pub fn get(&self) -> Result<Arc<AmazonS3>, String> {
        self.client
            .get_or_init(|| self.builder.clone().build().map(Arc::new).map_err(|e| super::one_line(&e)))
            .clone()
    }
}

/// Builds the clients for `location` from `env` (the process environment, as `(name, value)` pairs) and
/// `options` (which win).
pub(super) fn clients(
    location: &S3Location,
    env: impl IntoIterator<Item = (String, String)>,
    options: &S3Options,
) -> Result<Clients, String> {
    // reqwest is built with rustls but no bundled crypto provider (object_store's `aws` feature would pull in
    // aws-lc-rs, a C build, beside the ring that the rest of walkeeper uses): install ring as the process
    // default. Failing means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = builder(location, env, options);
    let endpoint = endpoint_of(&builder);
    if endpoint.starts_with("http://") {
        // object_store would refuse every request with "URL scheme is not allowed": say what to set instead.
        let allowed = builder.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp));
        if !allowed.is_some_and(|v| ["1", "true", "on", "yes", "y"].contains(&&*v.to_ascii_lowercase())) {
            return Err(format!(
                "the endpoint {endpoint} has no TLS: set AWS_ALLOW_HTTP=true (in the service: allow_http = true) \
                 to allow http://, or use https://"
            ));
        }
        // No TLS to this endpoint: skip loading the system's certificates.
        builder =
            builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::NoSystemCertificates), "true");
    }
    let with_timeout = |timeout: Duration| {
        builder.clone().with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), millis(timeout))
    };
    let reads = with_timeout(options.timeouts.read).build().map_err(|e| super::one_line(&e))?;
    let writes = LazyClient { builder: with_timeout(options.timeouts.write), client: OnceLock::new() };
    Ok(Clients { reads, writes, endpoint })
}

fn builder(
    location: &S3Location,
    env: impl IntoIterator<Item = (String, String)>,
    options: &S3Options,
) -> AmazonS3Builder {
    // What AmazonS3Builder::from_env does, over the given variables.
    let mut builder = AmazonS3Builder::new();
    for (name, value) in env {
        if name.starts_with("AWS_") {
            if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
    }
    let explicit = [
        (AmazonS3ConfigKey::Endpoint, options.endpoint.clone()),
        (AmazonS3ConfigKey::Region, options.region.clone()),
        (AmazonS3ConfigKey::AccessKeyId, options.access_key_id.clone()),
        (AmazonS3ConfigKey::SecretAccessKey, options.secret_access_key.clone()),
        (AmazonS3ConfigKey::Token, options.session_token.clone()),
        (AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp), options.allow_http.map(|on| on.to_string())),
    ];
    for (key, value) in explicit {
        if let Some(value) = value {
            builder = builder.with_config(key, value);
        }
    }
    let t = &options.timeouts;
    builder
        .with_bucket_name(&location.bucket)
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), millis(t.connect))
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: t.max_retries,
            retry_timeout: t.retry_for,
        })
}

/// The endpoint requests go to, as the user would recognise it.
fn endpoint_of(builder: &AmazonS3Builder) -> String {
    let configured = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
        .iter()
        .find_map(|key| builder.get_config_value(key).filter(|v| !v.is_empty()));
    configured.unwrap_or_else(|| {
        let region =
            builder.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        format!("https://s3.{region}.amazonaws.com")
    })
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(bucket: &str, prefix: &str) -> S3Location {
        S3Location { bucket: bucket.into(), prefix: prefix.into() }
    }

    #[test]
    fn parses_locations() {
        assert_eq!(S3Location::parse("s3://b").unwrap(), loc("b", ""));
        assert_eq!(S3Location::parse("s3://b/").unwrap(), loc("b", ""));
        assert_eq!(S3Location::parse("s3://my-bucket.1/wal/main").unwrap(), loc("my-bucket.1", "wal/main"));
        assert_eq!(S3Location::parse("s3://b/wal/").unwrap(), loc("b", "wal"));
        assert_eq!(loc("b", "wal/main").url(), "s3://b/wal/main");
        assert_eq!(loc("b", "").url(), "s3://b");
    }

    #[test]
    fn refuses_bad_locations() {
        for (url, why) in [
            ("/archive", "starts with s3://"),
            ("s3:/b", "starts with s3://"),
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://b c/x", "not a bucket name"),
            ("s3://b?x=1", "not a bucket name"),
            ("s3://b//x", "empty name"),
            ("s3://b/x//", "empty name"),
            ("s3://b/a/../c", "\"..\""),
            ("s3://b/a/./c", "\".\""),
            ("s3://b/a\nb", "contains '\\n'"),
        ] {
            let err = S3Location::parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
        assert!(S3Location::parse(&format!("s3://b/{}", "p".repeat(MAX_PREFIX_LEN))).is_ok());
        assert!(S3Location::parse(&format!("s3://b/{}", "p".repeat(MAX_PREFIX_LEN + 1))).is_err());
    }

    #[test]
    fn keys_are_prefix_slash_name_exactly() {
        assert_eq!(
            loc("b", "wal/main").key("000000010000000A000000FF.zst").unwrap().as_ref(),
            "wal/main/000000010000000A000000FF.zst"
        );
        assert_eq!(loc("b", "").key("00000002.history").unwrap().as_ref(), "00000002.history");
        // Characters object_store would percent-encode in a path part stay as they are.
        assert_eq!(loc("b", "p").key("a%b~c").unwrap().as_ref(), "p/a%b~c");
        for bad in ["", ".", "..", "a/b", "/a", "a\u{0}b"] {
            assert!(loc("b", "p").key(bad).is_err(), "{bad:?}");
        }
        assert!(loc("b", "p").key(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_http_endpoint_without_allow_http_is_refused_saying_what_to_set() {
        let http = env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")]);
        let err = clients(&loc("bkt", "p"), http.clone(), &S3Options::default()).err().expect("refused");
        assert_eq!(
            err,
            "the endpoint http://127.0.0.1:9000 has no TLS: set AWS_ALLOW_HTTP=true (in the service: \
             allow_http = true) to allow http://, or use https://"
        );
        let no = S3Options { allow_http: Some(false), ..S3Options::default() };
        let allowed = [http.clone(), env(&[("AWS_ALLOW_HTTP", "true")])].concat();
        assert!(clients(&loc("bkt", "p"), allowed, &no).is_err(), "the service's allow_http = false wins");
        for on in ["true", "TRUE", "1", "yes"] {
            let vars = [http.clone(), env(&[("AWS_ALLOW_HTTP", on)])].concat();
            assert!(clients(&loc("bkt", "p"), vars, &S3Options::default()).is_ok(), "{on}");
        }
        let yes = S3Options { allow_http: Some(true), ..S3Options::default() };
        assert!(clients(&loc("bkt", "p"), http, &yes).is_ok());
        let https = env(&[("AWS_ENDPOINT_URL", "https://s3.example.net")]);
        assert!(clients(&loc("bkt", "p"), https, &S3Options::default()).is_ok());
    }

    #[test]
    fn settings_come_from_the_environment_and_explicit_values_win() {
        let vars = env(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "env-key"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_NOT_A_SETTING", "ignored"),
            ("HOME", "/root"),
        ]);
        let b = builder(&loc("bkt", "p"), vars.clone(), &S3Options::default());
        let get = |b: &AmazonS3Builder, k: AmazonS3ConfigKey| b.get_config_value(&k);
        assert_eq!(get(&b, AmazonS3ConfigKey::Endpoint).as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(get(&b, AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-3"));
        assert_eq!(get(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(), Some("env-key"));
        assert_eq!(get(&b, AmazonS3ConfigKey::Bucket).as_deref(), Some("bkt"));
        assert_eq!(get(&b, AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
        assert_eq!(endpoint_of(&b), "http://127.0.0.1:9000");

        let options = S3Options {
            endpoint: Some("https://s3.example.net".into()),
            access_key_id: Some("mine".into()),
            allow_http: Some(false),
            ..S3Options::default()
        };
        let b = builder(&loc("bkt", "p"), vars, &options);
        assert_eq!(get(&b, AmazonS3ConfigKey::Endpoint).as_deref(), Some("https://s3.example.net"));
        assert_eq!(get(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(), Some("mine"));
        assert_eq!(get(&b, AmazonS3ConfigKey::SecretAccessKey).as_deref(), Some("env-secret"));
        assert_eq!(get(&b, AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(), Some("false"));

        // Without an endpoint: AWS itself, in the configured region.
        let b = builder(&loc("bkt", ""), env(&[("AWS_REGION", "ap-south-1")]), &S3Options::default());
        assert_eq!(endpoint_of(&b), "https://s3.ap-south-1.amazonaws.com");
    }

    #[test]
    fn set_options_win_over_the_fallback_s() {
        let fallback = S3Options {
            endpoint: Some("https://a".into()),
            region: Some("r".into()),
            secret_access_key: Some("s".into()),
            allow_http: Some(true),
            ..S3Options::default()
        };
        let mine = S3Options {
            endpoint: Some("https://b".into()),
            allow_http: Some(false),
            session_token: Some("t".into()),
            ..S3Options::default()
        };
        let merged = mine.or(&fallback);
        assert_eq!(merged.endpoint.as_deref(), Some("https://b"));
        assert_eq!(merged.region.as_deref(), Some("r"));
        assert_eq!(merged.access_key_id, None);
        assert_eq!(merged.secret_access_key.as_deref(), Some("s"));
        assert_eq!(merged.session_token.as_deref(), Some("t"));
        assert_eq!(merged.allow_http, Some(false));
        assert_eq!(S3Options::default().or(&fallback), fallback);
    }

    #[test]
    fn options_never_print_secrets() {
        let options = S3Options {
            secret_access_key: Some("hunter2".into()),
            session_token: Some("t0ken".into()),
            ..S3Options::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken"), "{shown}");
    }
}
