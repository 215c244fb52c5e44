//! Opening a TCP connection the way libpq does (`PQconnectPoll` in fe-connect.c): the socket options are set
//! before `connect()` — TCP_NODELAY always, then, unless `keepalives=0`, SO_KEEPALIVE with
//! `keepalives_idle` (TCP_KEEPIDLE), `keepalives_interval` (TCP_KEEPINTVL), `keepalives_count` (TCP_KEEPCNT)
//! and `tcp_user_timeout` (TCP_USER_TIMEOUT) where given. As in libpq, `keepalives=0` skips
//! `tcp_user_timeout` too, a setting the kernel refuses (say `keepalives_idle=0`) fails this address with
//! libpq's `setsockopt(TCP_KEEPIDLE) failed: …`, and Unix-domain sockets get none of this.

use crate::conn::params::ConnParams;
use crate::protocol::codec::os_error;
use socket2::{SockRef, TcpKeepalive};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpSocket, TcpStream};

/// Why a TCP connection could not be opened, in libpq's words.
#[derive(Debug)]
pub enum TcpError {
    /// `socket()` failed.
    Socket(io::Error),
    /// A socket option was refused: which one (libpq's name for it) and why.
    Option { name: &'static str, error: io::Error },
    /// `connect()` failed (refused, unreachable, ...).
    Connect(io::Error),
}

impl fmt::Display for TcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpError::Socket(e) => write!(f, "could not create socket: {}", os_error(e)),
            TcpError::Option { name: "TCP_NODELAY", error } => {
                write!(f, "could not set socket to TCP no delay mode: {}", os_error(error))
            }
            TcpError::Option { name, error } => write!(f, "setsockopt({name}) failed: {}", os_error(error)),
            TcpError::Connect(e) => f.write_str(&os_error(e)),
        }
    }
}

/// A connected TCP stream to `addr` carrying the options of `params`.
pub async fn connect(addr: SocketAddr, params: &ConnParams) -> Result<TcpStream, TcpError> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(TcpError::Socket)?;
    apply_options(SockRef::from(&socket), params)?;
    socket.connect(addr).await.map_err(TcpError::Connect)
}

/// libpq's order and rules (see the module header).
fn apply_options(socket: SockRef<'_>, params: &ConnParams) -> Result<(), TcpError> {
    let option = |name: &'static str| move |error| TcpError::Option { name, error };
    socket.set_tcp_nodelay(true).map_err(option("TCP_NODELAY"))?;
    if !params.keepalives {
        return Ok(());
    }
    socket.set_keepalive(true).map_err(option("SO_KEEPALIVE"))?;
    // One option per call, so that a refusal names the option as libpq's message does.
    if let Some(idle) = params.keepalives_idle {
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle)).map_err(option("TCP_KEEPIDLE"))?;
    }
    if let Some(interval) = params.keepalives_interval {
        socket
            .set_tcp_keepalive(&TcpKeepalive::new().with_interval(interval))
            .map_err(option("TCP_KEEPINTVL"))?;
    }
    if let Some(count) = params.keepalives_count {
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_retries(count)).map_err(option("TCP_KEEPCNT"))?;
    }
    if let Some(timeout) = params.tcp_user_timeout {
        // Zero means the system default, as for libpq (socket2 maps Some(0) to 0).
        socket.set_tcp_user_timeout(Some(timeout)).map_err(option("TCP_USER_TIMEOUT"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn params(set: impl FnOnce(&mut ConnParams)) -> ConnParams {
        let mut p = ConnParams::default();
        set(&mut p);
        p
    }

    /// Connect to a local listener with `p` and read the options back from the connected socket.
    fn connected(p: &ConnParams) -> Result<TcpStream, TcpError> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { connect(addr, p).await })
    }

    #[test]
    fn libpq_defaults_turn_keepalive_on_and_tune_nothing() {
        let s = connected(&ConnParams::default()).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap(), "libpq's keepalives=1 default sets SO_KEEPALIVE");
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
        // The kernel's own idle time stays (net.ipv4.tcp_keepalive_time, 7200 s by default).
        let fresh = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let system = fresh.tcp_keepalive_time().unwrap();
        assert_eq!(sock.tcp_keepalive_time().unwrap(), system);
    }

    #[test]
    fn every_setting_reaches_the_socket() {
        let p = params(|p| {
            p.keepalives_idle = Some(Duration::from_secs(11));
            p.keepalives_interval = Some(Duration::from_secs(3));
            p.keepalives_count = Some(4);
            p.tcp_user_timeout = Some(Duration::from_millis(1500));
        });
        let s = connected(&p).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn keepalives_off_skips_the_tuning_and_the_user_timeout_as_libpq_does() {
        let p = params(|p| {
            p.keepalives = false;
            p.keepalives_idle = Some(Duration::from_secs(11));
            p.tcp_user_timeout = Some(Duration::from_millis(1500));
        });
        let s = connected(&p).unwrap();
        let sock = SockRef::from(&s);
        assert!(!sock.keepalive().unwrap());
        assert_ne!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
        assert!(sock.tcp_nodelay().unwrap());
    }

    #[test]
    fn a_setting_the_kernel_refuses_is_named_as_libpq_names_it() {
        // libpq clamps negative values to 0 (conninfo does too) and Linux refuses 0 for these three.
        for (name, p) in [
            ("TCP_KEEPIDLE", params(|p| p.keepalives_idle = Some(Duration::ZERO))),
            ("TCP_KEEPINTVL", params(|p| p.keepalives_interval = Some(Duration::ZERO))),
            ("TCP_KEEPCNT", params(|p| p.keepalives_count = Some(0))),
        ] {
            let e = connected(&p).unwrap_err();
            assert_eq!(e.to_string(), format!("setsockopt({name}) failed: Invalid argument"));
        }
        // tcp_user_timeout=0 means the system default.
        let s = connected(&params(|p| p.tcp_user_timeout = Some(Duration::ZERO))).unwrap();
        assert_eq!(SockRef::from(&s).tcp_user_timeout().unwrap(), None);
    }
}
