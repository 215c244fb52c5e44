//! An established connection: send frontend messages, receive decoded backend messages, run simple
//! queries (replication commands) and enter CopyBoth mode. Every error names the server it came from.

use crate::conn::params::Endpoint;
use crate::conn::stream::Socket;
use crate::protocol::codec::{os_error, BackendCodec, FrameError};
use crate::protocol::messages::{self, Backend, MalformedMessage, ServerError};
use crate::protocol::replication::{major_of, ResultSet};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::codec::Framed;

/// Read buffer size: large reads keep syscalls per megabyte of WAL low.
const READ_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{server}: {error}")]
    Server { server: String, error: ServerError },
    #[error("{server}: {error}")]
    Frame { server: String, error: FrameError },
    #[error("{server}: {error}")]
    Malformed { server: String, error: MalformedMessage },
    #[error("{server}: unexpected {got} {context}")]
    Unexpected { server: String, got: String, context: &'static str },
    #[error("{server}: server closed the connection unexpectedly")]
    Closed { server: String },
    #[error("{server}: could not receive data from server: {}", os_error(error))]
    Receive { server: String, error: std::io::Error },
    #[error("{server}: could not send data to server: {error}")]
    Send { server: String, error: FrameError },
    #[error("{server}: no reply from the server within {} seconds {context}", waited.as_secs())]
    Timeout { server: String, waited: Duration, context: &'static str },
}

impl ConnError {
    /// The server's own error report, if that is what this is.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ConnError::Server { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub struct Connection {
    framed: Framed<Socket, BackendCodec>,
    /// How messages name this server: `host:port` or the socket path.
    server: String,
    parameters: HashMap<String, String>,
    version_num: u32,
    /// How long a command's reply may keep us waiting between two messages (None: forever).
    reply_timeout: Option<Duration>,
    /// The host of the connection string this connection went to (set by `connect`).
    endpoint: Option<Endpoint>,
}

impl Connection {
    pub(crate) fn new(socket: Socket, server: String, max_message: usize) -> Connection {
        let framed = Framed::with_capacity(socket, BackendCodec::new(max_message), READ_BUFFER);
        Connection {
            framed,
            server,
            parameters: HashMap::new(),
            version_num: 0,
            reply_timeout: None,
            endpoint: None,
        }
    }

    /// Bound the wait for each message of a command's reply (`--receive-timeout`; the connection phase is
    /// bounded by `connect_timeout` instead, as in libpq). Streaming keeps its own watch (`stream::liveness`).
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.reply_timeout = timeout;
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The host of the connection string this connection went to: a second session to the same server
    /// connects there (with several hosts, `connect` alone might pick another).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    pub(crate) fn set_endpoint(&mut self, endpoint: Endpoint) {
        self.endpoint = Some(endpoint);
    }

    pub fn is_tls(&self) -> bool {
        self.framed.get_ref().is_tls()
    }

    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.framed.get_ref().peer_certificate()
    }

    /// A ParameterStatus value the server reported at startup (or later).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// `server_version_num`, e.g. 150018.
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    pub fn major(&self) -> u32 {
        major_of(self.version_num)
    }

    pub(crate) fn set_version_num(&mut self, v: u32) {
        self.version_num = v;
    }

    pub(crate) fn record_parameter(&mut self, name: String, value: String) {
        self.parameters.insert(name, value);
    }

    /// Send one pre-encoded frontend message (or several concatenated).
    pub async fn send(&mut self, buf: BytesMut) -> Result<(), ConnError> {
        self.framed.send(buf).await.map_err(|error| ConnError::Send { server: self.server.clone(), error })
    }

    /// The next backend message. Notices are logged and skipped; ParameterStatus updates are recorded.
    pub async fn recv(&mut self) -> Result<Backend, ConnError> {
        loop {
            let frame = match self.framed.next().await {
                Some(Ok(f)) => f,
                // An OS error, in libpq's words; a TLS error (an alert, say) reads as itself.
                Some(Err(FrameError::Io(error))) if error.raw_os_error().is_some() => {
                    return Err(ConnError::Receive { server: self.server.clone(), error })
                }
                Some(Err(error)) => return Err(ConnError::Frame { server: self.server.clone(), error }),
                None => return Err(ConnError::Closed { server: self.server.clone() }),
            };
            let msg = messages::decode(frame)
                .map_err(|error| ConnError::Malformed { server: self.server.clone(), error })?;
            match msg {
                Backend::Notice(n) => tracing::info!(server = %self.server, "{n}"),
                Backend::ParameterStatus { name, value } => self.record_parameter(name, value),
                Backend::NotificationResponse => {}
                other => return Ok(other),
            }
        }
    }

    /// The next message of a command's reply, within the reply timeout.
    async fn reply(&mut self, context: &'static str) -> Result<Backend, ConnError> {
        let Some(waited) = self.reply_timeout else { return self.recv().await };
        match tokio::time::timeout(waited, self.recv()).await {
            Ok(result) => result,
            Err(_) => Err(ConnError::Timeout { server: self.server.clone(), waited, context }),
        }
    }

    pub(crate) fn unexpected(&self, got: &Backend, context: &'static str) -> ConnError {
        let got = match got {
            Backend::Error(e) => return ConnError::Server { server: self.server.clone(), error: e.clone() },
            other => other.to_string(),
        };
        ConnError::Unexpected { server: self.server.clone(), got, context }
    }

    fn server_error(&self, error: ServerError) -> ConnError {
        ConnError::Server { server: self.server.clone(), error }
    }

    /// Wait for ReadyForQuery after an error, so the connection stays usable.
    async fn drain_until_ready(&mut self) -> Result<(), ConnError> {
        loop {
            if let Backend::ReadyForQuery { .. } = self.reply("after an error").await? {
                return Ok(());
            }
        }
    }

    /// Run one command with the simple query protocol and collect its (single) result set.
    pub async fn simple_query(&mut self, sql: &str) -> Result<ResultSet, ConnError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)
            .map_err(|e| ConnError::Send { server: self.server.clone(), error: FrameError::Io(e) })?;
        self.send(buf).await?;
        let mut rs = ResultSet::default();
        let mut failure = None;
        loop {
            match self.reply("to a command").await? {
                Backend::RowDescription { columns } => rs.columns = columns,
                Backend::DataRow { values } => rs.rows.push(values),
                Backend::CommandComplete { .. } | Backend::EmptyQueryResponse => {}
                Backend::Error(e) => failure = Some(e),
                Backend::ReadyForQuery { .. } => break,
                other => return Err(self.unexpected(&other, "in reply to a command")),
            }
        }
        match failure {
            Some(e) => Err(self.server_error(e)),
            None => Ok(rs),
        }
    }

    /// Send a command that enters CopyBoth mode (START_REPLICATION) and wait for CopyBothResponse.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), ConnError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)
            .map_err(|e| ConnError::Send { server: self.server.clone(), error: FrameError::Io(e) })?;
        self.send(buf).await?;
        match self.reply("to START_REPLICATION").await? {
            Backend::CopyBothResponse => Ok(()),
            Backend::Error(e) => {
                self.drain_until_ready().await?;
                Err(self.server_error(e))
            }
            other => Err(self.unexpected(&other, "in reply to START_REPLICATION")),
        }
    }

    /// Send a CopyData message (e.g. a standby status update).
    pub async fn send_copy_data(&mut self, data: Bytes) -> Result<(), ConnError> {
        let mut buf = BytesMut::with_capacity(data.len() + 5);
        frontend::CopyData::new(data)
            .map_err(|e| ConnError::Send { server: self.server.clone(), error: FrameError::Io(e) })?
            .write(&mut buf);
        self.send(buf).await
    }

    pub async fn send_copy_done(&mut self) -> Result<(), ConnError> {
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        self.send(buf).await
    }

    /// After CopyDone on both sides: read the optional result set (the next timeline) up to ReadyForQuery.
    pub async fn finish_copy(&mut self) -> Result<ResultSet, ConnError> {
        let mut rs = ResultSet::default();
        loop {
            match self.reply("after the end of streaming").await? {
                Backend::RowDescription { columns } => rs.columns = columns,
                Backend::DataRow { values } => rs.rows.push(values),
                Backend::CommandComplete { .. } | Backend::CopyData(_) => {}
                Backend::Error(e) => {
                    self.drain_until_ready().await?;
                    return Err(self.server_error(e));
                }
                Backend::ReadyForQuery { .. } => return Ok(rs),
                other => return Err(self.unexpected(&other, "after the end of streaming")),
            }
        }
    }

    /// Say goodbye politely (Terminate); errors are irrelevant at this point.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.send(buf).await;
    }
}
