//! SCRAM-SHA-256 authentication, server side (RFC 5802 and RFC 7677), as PostgreSQL's auth-scram.c does it.
//!
//! A user's secret is a [`Verifier`] (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the form
//! of `pg_authid.rolpassword`), parsed from configuration or built from a plaintext password with a random
//! 16-byte salt and 4096 iterations, as PostgreSQL builds one. The exchange ([`ScramServer`]):
//!
//! 1. client-first (`n,,n=,r=<client nonce>`): the gs2 header must be `n` (no channel binding) or `y`
//!    (the client could bind but believes the server cannot — true: walkeeper offers no
//!    SCRAM-SHA-256-PLUS, so `p=` is refused); no authorization identity, no mandatory extension. The
//!    user name inside SCRAM is ignored: the startup packet's counts, as in PostgreSQL.
//! 2. server-first: `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
//! 3. client-final: the channel binding echo (`c=biws` or `c=eSws`), the combined nonce and the proof,
//!    checked in constant time; server-final `v=<ServerSignature>` proves the server knew the verifier.
//!
//! A user without a verifier gets the same exchange with a salt derived from its name and a per-process
//! secret, and fails at the end exactly like a wrong password (`FATAL 28P01 password authentication failed
//! for user "…"`), so a client cannot probe which users exist. Malformed messages get PostgreSQL's FATAL
//! "malformed SCRAM message" errors with the same details.
//!
//! Passwords are prepared with SASLprep as PostgreSQL does: ASCII passwords as they are; others normalised
//! by RFC 4013 (the `stringprep` crate), and used as raw bytes when they are not UTF-8, contain a
//! prohibited character or map to nothing. (PostgreSQL checks prohibited characters before NFKC rather
//! than after, and carries its own Unicode tables; exotic passwords that differ on those points may not
//! verify against a verifier PostgreSQL built. Configure such users with PostgreSQL's verifier.)

use crate::protocol::server::errors;
use crate::protocol::ServerError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// PostgreSQL's SCRAM_RAW_NONCE_LEN: 18 random bytes, 24 base64 characters.
const RAW_NONCE_LEN: usize = 18;
const KEY_LEN: usize = 32;
const PREFIX: &str = "SCRAM-SHA-256$";

/// A stored SCRAM-SHA-256 secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

/// The keys stay out of logs.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier(SCRAM-SHA-256, {} iterations)", self.iterations)
    }
}

/// The `pg_authid.rolpassword` form, which [`Verifier::from_str`] reads back.
impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// Why a verifier text was refused (never quoting the text: it is a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SCRAM verifier ({0}): expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in pg_authid.rolpassword")]
pub struct VerifierError(&'static str);

impl FromStr for Verifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Verifier, VerifierError> {
        let rest = s.strip_prefix(PREFIX).ok_or(VerifierError("it does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError("no '$' before the keys"))?;
        let (iterations, salt) =
            params.split_once(':').ok_or(VerifierError("no ':' after the iteration count"))?;
        let (stored, server) = keys.split_once(':').ok_or(VerifierError("no ':' between the keys"))?;
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .filter(|n| i32::try_from(n.get()).is_ok())
            .ok_or(VerifierError("the iteration count is not a positive number"))?;
        let salt = BASE64.decode(salt).map_err(|_| VerifierError("the salt is not base64"))?;
        if salt.is_empty() {
            return Err(VerifierError("the salt is empty"));
        }
        let key = |k: &str, what| -> Result<[u8; KEY_LEN], VerifierError> {
            BASE64.decode(k).ok().and_then(|v| v.try_into().ok()).ok_or(VerifierError(what))
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored, "the StoredKey is not 32 bytes of base64")?,
            server_key: key(server, "the ServerKey is not 32 bytes of base64")?,
        })
    }
}

/// The randomness source failed (no usable getrandom/urandom).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not generate random bytes for SCRAM authentication")]
pub struct RandomError;

fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| RandomError)?;
    Ok(b)
}

impl Verifier {
    /// A verifier from a configured secret: a SCRAM verifier text is parsed (and must be valid — it is never
    /// taken for a password); anything else is a plaintext password, given a random salt.
    pub fn from_secret(secret: &str) -> Result<Verifier, String> {
        if secret.starts_with(PREFIX) {
            return secret.parse().map_err(|e: VerifierError| e.to_string());
        }
        Verifier::from_password(secret).map_err(|e| e.to_string())
    }

    /// A verifier for a plaintext password: random salt, PostgreSQL's default iteration count.
    pub fn from_password(password: &str) -> Result<Verifier, RandomError> {
        let salt = random::<SALT_LEN>()?;
        let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN);
        Ok(Verifier::with_salt(password.as_bytes(), &salt, iterations))
    }

    /// The verifier PostgreSQL would store for `password` with this salt and iteration count.
    pub fn with_salt(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Verifier {
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, &saslprep(password), &mut salted);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(client_key.as_ref()),
            server_key: to_key(hmac::sign(&key, b"Server Key").as_ref()),
        }
    }

    pub fn iterations(&self) -> u32 {
        self.iterations.get()
    }
}

fn to_key(b: &[u8]) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&b[..KEY_LEN]);
    k
}

fn sha256(b: &[u8]) -> [u8; KEY_LEN] {
    to_key(digest::digest(&digest::SHA256, b).as_ref())
}

/// SASLprep as PostgreSQL's pg_saslprep applies it to passwords (see the module documentation).
pub fn saslprep(password: &[u8]) -> Cow<'_, [u8]> {
    if password.is_ascii() {
        return Cow::Borrowed(password);
    }
    let Ok(text) = std::str::from_utf8(password) else { return Cow::Borrowed(password) };
    match stringprep::saslprep(text) {
        Ok(prepared) if !prepared.is_empty() => Cow::Owned(prepared.into_owned().into_bytes()),
        _ => Cow::Borrowed(password),
    }
}

/// A failed exchange: the FATAL error for the client, and what to log beside it (never sent to the client,
/// which must not learn why a password check failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramError {
    pub error: Box<ServerError>,
    pub log_detail: Option<String>,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error.message)?;
        if let Some(d) = self.error.detail.as_deref().or(self.log_detail.as_deref()) {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScramError {}

fn failure(error: ServerError) -> ScramError {
    ScramError { error: Box::new(error), log_detail: None }
}

fn malformed(detail: impl Into<String>) -> ScramError {
    let mut e = errors::fatal(errors::PROTOCOL_VIOLATION, "malformed SCRAM message");
    e.detail = Some(detail.into());
    failure(e)
}

fn protocol(message: &str) -> ScramError {
    failure(errors::fatal(errors::PROTOCOL_VIOLATION, message))
}

fn unsupported(message: &str) -> ScramError {
    failure(errors::fatal(errors::FEATURE_NOT_SUPPORTED, message))
}

/// A byte for an error message: printable ASCII quoted, anything else in hex (end of input is 0x00).
fn sanitize_char(c: Option<u8>) -> String {
    match c.unwrap_or(0) {
        c @ 0x21..=0x7e => format!("'{}'", char::from(c)),
        c => format!("0x{c:02x}"),
    }
}

/// What the server sends next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// AuthenticationSASLContinue with this data; another SASLResponse follows.
    Continue(Vec<u8>),
    /// AuthenticationSASLFinal with this data, then AuthenticationOk.
    Success(Vec<u8>),
}

/// The server's side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    user: String,
    iterations: NonZeroU32,
    salt_b64: String,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// No verifier for this user: the exchange runs to the end and fails.
    doomed: Option<String>,
    state: State,
}

enum State {
    Init,
    SaltSent { client_first_bare: Vec<u8>, server_first: String, nonce: String, cbind_flag: u8 },
    Done,
}

/// The per-process secret mixed into mock salts (PostgreSQL uses the cluster's mock authentication nonce).
fn mock_nonce() -> Result<&'static [u8; 32], RandomError> {
    static NONCE: OnceLock<Result<[u8; 32], RandomError>> = OnceLock::new();
    NONCE.get_or_init(random::<32>).as_ref().map_err(Clone::clone)
}

impl ScramServer {
    /// The mechanisms to offer in AuthenticationSASL.
    pub const MECHANISMS: &'static [&'static str] = &[SCRAM_SHA_256];

    /// Starts an exchange for `user` (from the startup packet) with the mechanism the client chose in its
    /// SASLInitialResponse. `verifier` is `None` for an unknown user: the exchange then fails at its end.
    pub fn begin(
        user: &str,
        verifier: Option<&Verifier>,
        mechanism: &str,
    ) -> Result<ScramServer, ScramError> {
        if mechanism != SCRAM_SHA_256 {
            return Err(protocol("client selected an invalid SASL authentication mechanism"));
        }
        let random_failed = |e: RandomError| failure(errors::fatal(errors::INTERNAL_ERROR, e.to_string()));
        let (iterations, salt, stored_key, server_key, doomed) = match verifier {
            Some(v) => (v.iterations, v.salt.clone(), v.stored_key, v.server_key, None),
            None => {
                let mut input = user.as_bytes().to_vec();
                input.extend_from_slice(mock_nonce().map_err(random_failed)?);
                let salt = sha256(&input)[..SALT_LEN].to_vec();
                let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN);
                (
                    iterations,
                    salt,
                    [0; KEY_LEN],
                    [0; KEY_LEN],
                    Some(format!("Role \"{user}\" does not exist.")),
                )
            }
        };
        Ok(ScramServer {
            user: user.to_string(),
            iterations,
            salt_b64: BASE64.encode(salt),
            stored_key,
            server_key,
            doomed,
            state: State::Init,
        })
    }

    /// Feeds the next client message: the SASLInitialResponse's data (`None` when the client sent none:
    /// the server then asks with an empty challenge), then each SASLResponse.
    pub fn exchange(&mut self, input: Option<&[u8]>) -> Result<Step, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let Some(input) = input else {
            return match state {
                State::Init => {
                    self.state = State::Init;
                    Ok(Step::Continue(Vec::new()))
                }
                _ => Err(protocol("malformed SCRAM message")),
            };
        };
        if input.is_empty() {
            return Err(malformed("The message is empty."));
        }
        if input.contains(&0) {
            return Err(malformed("Message length does not match input length."));
        }
        match state {
            State::Init => {
                let nonce = random::<RAW_NONCE_LEN>()
                    .map_err(|e| failure(errors::fatal(errors::INTERNAL_ERROR, e.to_string())))?;
                self.client_first(input, &BASE64.encode(nonce))
            }
            State::SaltSent { client_first_bare, server_first, nonce, cbind_flag } => {
                self.client_final(input, &client_first_bare, &server_first, &nonce, cbind_flag)
            }
            State::Done => Err(protocol("invalid SCRAM exchange state")),
        }
    }

    fn client_first(&mut self, input: &[u8], server_nonce: &str) -> Result<Step, ScramError> {
        let mut c = Cursor { input, pos: 0 };
        let cbind_flag = c.peek().unwrap_or(0);
        match cbind_flag {
            b'n' | b'y' => {
                c.pos += 1;
                if c.peek() != Some(b',') {
                    return Err(malformed(format!(
                        "Comma expected, but found character \"{}\".",
                        sanitize_char(c.peek())
                    )));
                }
                c.pos += 1;
            }
            b'p' => {
                return Err(malformed(
                    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
                ))
            }
            _ => {
                return Err(malformed(format!(
                    "Unexpected channel-binding flag \"{}\".",
                    sanitize_char(c.peek())
                )))
            }
        }
        match c.peek() {
            Some(b'a') => {
                return Err(unsupported("client uses authorization identity, but it is not supported"))
            }
            Some(b',') => c.pos += 1,
            other => {
                return Err(malformed(format!(
                    "Unexpected attribute \"{}\" in client-first-message.",
                    sanitize_char(other)
                )))
            }
        }
        let client_first_bare = input[c.pos..].to_vec();
        if c.peek() == Some(b'm') {
            return Err(unsupported("client requires an unsupported SCRAM extension"));
        }
        c.attr_value(b'n')?; // the user name: ignored, the startup packet's counts
        let client_nonce = c.attr_value(b'r')?;
        if client_nonce.iter().any(|&b| !(0x21..=0x7e).contains(&b) || b == b',') {
            return Err(protocol("non-printable characters in SCRAM nonce"));
        }
        while !c.at_end() {
            c.any_attr()?; // optional extensions, ignored
        }
        // The nonce is printable ASCII, so this is text.
        let nonce = format!("{}{server_nonce}", String::from_utf8_lossy(client_nonce));
        let server_first = format!("r={nonce},s={},i={}", self.salt_b64, self.iterations);
        self.state =
            State::SaltSent { client_first_bare, server_first: server_first.clone(), nonce, cbind_flag };
        Ok(Step::Continue(server_first.into_bytes()))
    }

    fn client_final(
        &mut self,
        input: &[u8],
        client_first_bare: &[u8],
        server_first: &str,
        nonce: &str,
        cbind_flag: u8,
    ) -> Result<Step, ScramError> {
        let mut c = Cursor { input, pos: 0 };
        let binding = c.attr_value(b'c')?;
        let echo_ok =
            (binding == b"biws" && cbind_flag == b'n') || (binding == b"eSws" && cbind_flag == b'y');
        if !echo_ok {
            return Err(protocol("unexpected SCRAM channel-binding attribute in client-final-message"));
        }
        let final_nonce = c.attr_value(b'r')?;
        let (without_proof_end, proof) = loop {
            let attr_start = c.pos;
            let (attr, value) = c.any_attr()?;
            if attr == b'p' {
                break (attr_start - 1, value);
            }
        };
        let proof: [u8; KEY_LEN] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| malformed("Malformed proof in client-final-message."))?;
        if !c.at_end() {
            return Err(malformed("Garbage found at the end of client-final-message."));
        }
        if final_nonce != nonce.as_bytes() {
            let mut e = errors::fatal(errors::PROTOCOL_VIOLATION, "invalid SCRAM response");
            e.detail = Some("Nonce does not match.".into());
            return Err(failure(e));
        }
        let mut auth_message = client_first_bare.to_vec();
        auth_message.push(b',');
        auth_message.extend_from_slice(server_first.as_bytes());
        auth_message.push(b',');
        auth_message.extend_from_slice(&input[..without_proof_end]);
        // The proof is checked even when doomed, so timing does not tell whether the user exists.
        let stored = hmac::Key::new(hmac::HMAC_SHA256, &self.stored_key);
        let client_signature = hmac::sign(&stored, &auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature.as_ref()) {
            *k ^= s;
        }
        let proof_ok: bool = sha256(&client_key).ct_eq(&self.stored_key).into();
        if !proof_ok || self.doomed.is_some() {
            return Err(ScramError {
                error: Box::new(errors::password_authentication_failed(&self.user)),
                log_detail: Some(
                    self.doomed
                        .clone()
                        .unwrap_or_else(|| "The SCRAM proof does not match the stored verifier.".into()),
                ),
            });
        }
        let server = hmac::Key::new(hmac::HMAC_SHA256, &self.server_key);
        let signature = BASE64.encode(hmac::sign(&server, &auth_message));
        Ok(Step::Success(format!("v={signature}").into_bytes()))
    }
}

/// Reads `attr=value` fields separated by commas.
struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    /// The value up to the next comma (consumed) or the end.
    fn value(&mut self) -> &'a [u8] {
        let rest = &self.input[self.pos.min(self.input.len())..];
        let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        self.pos += end + usize::from(end < rest.len());
        &rest[..end]
    }

    fn attr_value(&mut self, attr: u8) -> Result<&'a [u8], ScramError> {
        if self.peek() != Some(attr) {
            return Err(malformed(format!(
                "Expected attribute \"{}\" but found \"{}\".",
                char::from(attr),
                sanitize_char(self.peek())
            )));
        }
        self.rest_of_attr(attr)
    }

    fn any_attr(&mut self) -> Result<(u8, &'a [u8]), ScramError> {
        let attr = match self.peek() {
            None => return Err(malformed("Attribute expected, but found end of string.")),
            Some(a) if a.is_ascii_alphabetic() => a,
            other => {
                return Err(malformed(format!(
                    "Attribute expected, but found invalid character \"{}\".",
                    sanitize_char(other)
                )))
            }
        };
        Ok((attr, self.rest_of_attr(attr)?))
    }

    /// Past the attribute letter under the cursor: the `=` and the value.
    fn rest_of_attr(&mut self, attr: u8) -> Result<&'a [u8], ScramError> {
        self.pos += 1;
        if self.peek() != Some(b'=') {
            return Err(malformed(format!(
                "Expected character \"=\" for attribute \"{}\".",
                char::from(attr)
            )));
        }
        self.pos += 1;
        Ok(self.value())
    }
}

#[cfg(test)]
#[path = "scram_server_tests.rs"]
mod tests;
