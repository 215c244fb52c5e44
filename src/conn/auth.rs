//! Authentication after the startup packet: trust, cleartext password, MD5 and SCRAM-SHA-256[-PLUS] with
//! libpq's channel_binding rules. Passwords come from the caller's `PasswordSource` only when asked for.

use crate::conn::connection::{ConnError, Connection};
use crate::conn::params::ChannelBinding;
use crate::conn::tls::tls_server_end_point;
use crate::protocol::codec::FrameError;
use crate::protocol::messages::{AuthRequest, Backend};
use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Conn(Box<ConnError>),
    /// libpq: "fe_sendauth: no password supplied".
    #[error("fe_sendauth: no password supplied")]
    NoPassword,
    #[error("{0}")]
    Refused(String),
}

impl From<ConnError> for AuthError {
    fn from(e: ConnError) -> Self {
        AuthError::Conn(Box::new(e))
    }
}

/// Produces the password on demand (explicit, .pgpass, or a prompt), at most once per connection.
pub trait PasswordSource {
    fn password(&mut self) -> Option<String>;
}

impl<F: FnMut() -> Option<String>> PasswordSource for F {
    fn password(&mut self) -> Option<String> {
        self()
    }
}

fn io_err(conn: &Connection, e: std::io::Error) -> AuthError {
    ConnError::Send { server: conn.server().to_string(), error: FrameError::Io(e) }.into()
}

/// Run the authentication exchange up to AuthenticationOk.
pub async fn authenticate(
    conn: &mut Connection,
    user: &str,
    channel_binding: ChannelBinding,
    passwords: &mut dyn PasswordSource,
) -> Result<(), AuthError> {
    let mut used_sasl_plus = false;
    let get_password = |passwords: &mut dyn PasswordSource| passwords.password().ok_or(AuthError::NoPassword);
    loop {
        let request = match conn.recv().await? {
            Backend::Authentication(r) => r,
            other => return Err(conn.unexpected(&other, "during authentication").into()),
        };
        let mut buf = BytesMut::new();
        match request {
            AuthRequest::Ok => {
                if channel_binding == ChannelBinding::Require && !used_sasl_plus {
                    return Err(AuthError::Refused(
                        "channel binding required, but server authenticated client without channel binding"
                            .into(),
                    ));
                }
                return Ok(());
            }
            AuthRequest::CleartextPassword | AuthRequest::Md5Password { .. }
                if channel_binding == ChannelBinding::Require =>
            {
                return Err(AuthError::Refused(
                    "channel binding required but not supported by server's authentication request".into(),
                ));
            }
            AuthRequest::CleartextPassword => {
                let pw = get_password(passwords)?;
                frontend::password_message(pw.as_bytes(), &mut buf).map_err(|e| io_err(conn, e))?;
                conn.send(buf).await?;
            }
            AuthRequest::Md5Password { salt } => {
                let pw = get_password(passwords)?;
                let hashed = md5_hash(user.as_bytes(), pw.as_bytes(), salt);
                frontend::password_message(hashed.as_bytes(), &mut buf).map_err(|e| io_err(conn, e))?;
                conn.send(buf).await?;
            }
            AuthRequest::Sasl { mechanisms } => {
                let pw = get_password(passwords)?;
                used_sasl_plus = scram_exchange(conn, &mechanisms, channel_binding, &pw).await?;
            }
            AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
                return Err(AuthError::Refused("server sent a SASL message out of order".into()));
            }
            AuthRequest::Unsupported { code } => {
                return Err(AuthError::Refused(format!(
                    "authentication method requested by the server (code {code}) is not supported; use scram-sha-256, md5, password or trust"
                )));
            }
        }
    }
}

/// The SCRAM exchange; returns whether channel binding (SCRAM-SHA-256-PLUS) was used.
async fn scram_exchange(
    conn: &mut Connection,
    mechanisms: &[String],
    channel_binding: ChannelBinding,
    password: &str,
) -> Result<bool, AuthError> {
    let offers = |m: &str| mechanisms.iter().any(|x| x == m);
    let cert = if channel_binding != ChannelBinding::Disable { conn.peer_certificate() } else { None };
    let (mechanism, binding) = match cert {
        Some(der) if offers(SCRAM_PLUS) => {
            let hash = tls_server_end_point(&der).map_err(|e| AuthError::Refused(e.to_string()))?;
            (SCRAM_PLUS, sasl::ChannelBinding::tls_server_end_point(hash))
        }
        _ if channel_binding == ChannelBinding::Require => {
            return Err(AuthError::Refused(
                "channel binding is required, but server did not offer an authentication method that supports channel binding".into(),
            ));
        }
        Some(_) => (SCRAM, sasl::ChannelBinding::unrequested()),
        None => (SCRAM, sasl::ChannelBinding::unsupported()),
    };
    if !offers(SCRAM) && mechanism == SCRAM {
        return Err(AuthError::Refused(format!(
            "none of the server's SASL authentication mechanisms are supported (offered: {})",
            mechanisms.join(", ")
        )));
    }
    let mut scram = ScramSha256::new(password.as_bytes(), binding);
    let mut buf = BytesMut::new();
    frontend::sasl_initial_response(mechanism, scram.message(), &mut buf).map_err(|e| io_err(conn, e))?;
    conn.send(buf).await?;
    let server_first = match conn.recv().await? {
        Backend::Authentication(AuthRequest::SaslContinue(d)) => d,
        other => return Err(conn.unexpected(&other, "during SCRAM authentication").into()),
    };
    scram.update(&server_first).map_err(|e| AuthError::Refused(format!("SCRAM: {e}")))?;
    let mut buf = BytesMut::new();
    frontend::sasl_response(scram.message(), &mut buf).map_err(|e| io_err(conn, e))?;
    conn.send(buf).await?;
    let server_final = match conn.recv().await? {
        Backend::Authentication(AuthRequest::SaslFinal(d)) => d,
        other => return Err(conn.unexpected(&other, "during SCRAM authentication").into()),
    };
    scram
        .finish(&server_final)
        .map_err(|e| AuthError::Refused(format!("SCRAM: server signature does not verify: {e}")))?;
    Ok(mechanism == SCRAM_PLUS)
}
