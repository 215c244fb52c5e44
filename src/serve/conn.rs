//! One client connection of the walsender: the socket (plain TCP or TLS), reading tagged frontend messages
//! with their bounds (`protocol::server::frontend`), and writing what the pure encoders built.
//!
//! While WAL streams, reading and writing go separate ways ([`Conn::split`]): a task reads the standby's
//! messages and forwards them, so a reply is seen at once even while a large write waits for the standby to
//! read; the two halves come back together ([`Conn::unsplit`]) when streaming ends.

use crate::protocol::server::frontend::{Frontend, FrontendCodec, FrontendError};
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

/// A client socket, before or after the TLS handshake.
pub(crate) enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An authenticated client connection: tagged messages in, encoded bytes out.
pub(crate) struct Conn {
    sock: Socket,
    buf: BytesMut,
    codec: FrontendCodec,
    pub peer: SocketAddr,
}

/// A message from the client; `None` when it closed the connection between messages.
pub(crate) type Incoming = Result<Option<Frontend>, FrontendError>;

impl Conn {
    /// `buf` holds bytes already read past the startup phase (a pipelining client's first messages).
    pub fn new(sock: Socket, buf: BytesMut, peer: SocketAddr) -> Conn {
        Conn { sock, buf, codec: FrontendCodec::default(), peer }
    }

    /// The next message.
    pub async fn next(&mut self) -> Incoming {
        read_message(&mut self.sock, &mut self.buf, &mut self.codec).await
    }

    pub fn socket(&mut self) -> &mut Socket {
        &mut self.sock
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes).await?;
        self.sock.flush().await
    }

    /// Streaming: a task reads and forwards every message until CopyDone, Terminate or an error (each
    /// forwarded too); the write half stays with the caller.
    pub fn split(self) -> (Reader, WriteHalf<Socket>) {
        let (mut rd, wr) = tokio::io::split(self.sock);
        let (tx, rx) = mpsc::channel(64);
        let (mut buf, mut codec, peer) = (self.buf, self.codec, self.peer);
        let task = tokio::spawn(async move {
            loop {
                let msg = read_message(&mut rd, &mut buf, &mut codec).await;
                let last = !matches!(msg, Ok(Some(Frontend::CopyData(_))));
                if tx.send(msg).await.is_err() || last {
                    return (rd, buf, codec);
                }
            }
        });
        (Reader { rx, task, peer }, wr)
    }

    /// The connection again, once the reader task has stopped (after forwarding its last message). `None`
    /// when the task failed.
    pub async fn unsplit(reader: Reader, wr: WriteHalf<Socket>) -> Option<Conn> {
        let Reader { rx, task, peer } = reader;
        drop(rx);
        let (rd, buf, codec) = task.await.ok()?;
        Some(Conn { sock: rd.unsplit(wr), buf, codec, peer })
    }
}

/// The reading side while WAL streams.
pub(crate) struct Reader {
    pub rx: mpsc::Receiver<Incoming>,
    task: JoinHandle<(ReadHalf<Socket>, BytesMut, FrontendCodec)>,
    peer: SocketAddr,
}

/// One frontend message from `sock`, reading more as needed.
async fn read_message<R: AsyncRead + Unpin>(
    sock: &mut R,
    buf: &mut BytesMut,
    codec: &mut FrontendCodec,
) -> Incoming {
    loop {
        if let Some(m) = codec.decode(buf)? {
            return Ok(Some(m));
        }
        if sock.read_buf(buf).await? == 0 {
            return codec.decode_eof(buf);
        }
    }
}
