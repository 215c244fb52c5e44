//! A TCP proxy between a client and a real server that hands every server message to a hook, which may
//! change it or end the connection: a server that misbehaves in one precise way, where only a fake can.
//! The client must use `sslmode=disable`, so that every server message is framed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

/// One backend message: type byte and body (the length is recomputed when it is sent on).
pub struct Frame {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// The WAL bytes of an XLogData message (CopyData `w`: start, end, send time, then WAL).
    pub fn wal_len(&self) -> Option<usize> {
        (self.tag == b'd' && self.body.first() == Some(&b'w')).then(|| self.body.len().saturating_sub(25))
    }
}

/// What the proxy does after passing a message on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Continue,
    /// Close both sides, as a server that died.
    Cut,
}

/// Listens on a free loopback port and relays each connection to `upstream`; returns the port. For every
/// connection `hook()` makes a fresh message handler.
pub fn start<H>(upstream: u16, hook: impl Fn() -> H + Send + 'static) -> u16
where
    H: FnMut(&mut Frame) -> Then + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(Shutdown::Write);
            });
            let handler = hook();
            thread::spawn(move || relay(server, client, handler));
        }
    });
    port
}

/// Server to client, message by message through `handler`.
fn relay(mut from: TcpStream, mut to: TcpStream, mut handler: impl FnMut(&mut Frame) -> Then) {
    loop {
        let mut header = [0u8; 5];
        if from.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut frame = Frame { tag: header[0], body: vec![0u8; len.saturating_sub(4)] };
        if from.read_exact(&mut frame.body).is_err() {
            break;
        }
        let then = handler(&mut frame);
        let len = u32::try_from(frame.body.len() + 4).unwrap();
        let sent = to
            .write_all(&[frame.tag])
            .and_then(|()| to.write_all(&len.to_be_bytes()))
            .and_then(|()| to.write_all(&frame.body));
        if sent.is_err() || then == Then::Cut {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
