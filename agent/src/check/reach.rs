//! Reaching the server: a TCP connect whose failure says what the path did with the SYN (a RST,
//! silence, or an ICMP error), and the socket options that make a cut connection fail fast and
//! tell how it was cut.

use std::{io, net::SocketAddr, os::fd::AsRawFd as _, time::Duration};

use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};

use crate::model::Signature;

/// Why a connect failed, as far as the errno tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ConnectFailure {
    /// A RST answered the SYN (or an ICMP port unreachable, which Linux reports the same way).
    Refused,
    /// Nothing answered the SYN within the connect timeout: a firewall drops it.
    NoAnswer,
    /// An ICMP unreachable error (host, network, administratively prohibited).
    Unreachable(String),
    /// Anything else (no route on this host, out of sockets...).
    Other(String),
}

impl ConnectFailure {
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Self::Refused => {
                "refused: a RST (or an ICMP port unreachable) answered the SYN".to_owned()
            }
            Self::NoAnswer => format!(
                "no answer to the SYN within {}: the path drops it silently",
                crate::duration_text::with_seconds(timeout.as_secs_f64())
            ),
            Self::Unreachable(what) => format!("an ICMP error answered the SYN: {what}"),
            Self::Other(what) => format!("cannot connect: {what}"),
        }
    }
}

/// Connects within `timeout`. `user_timeout` bounds how long sent data may stay unacknowledged
/// before the kernel gives up (TCP_USER_TIMEOUT): a black-holed connection then fails within
/// it instead of after ~15 minutes of retransmissions.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    user_timeout: Duration,
) -> Result<TcpStream, ConnectFailure> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|err| ConnectFailure::Other(err.to_string()))?;
    set_user_timeout(&socket, user_timeout)
        .map_err(|err| ConnectFailure::Other(err.to_string()))?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(ConnectFailure::NoAnswer),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
            Some(libc::ETIMEDOUT) => ConnectFailure::NoAnswer,
            Some(_) if icmp_errno(&err) => ConnectFailure::Unreachable(err.to_string()),
            _ => ConnectFailure::Other(err.to_string()),
        }),
    }
}

/// Errors the kernel derives from ICMP destination unreachable messages.
fn icmp_errno(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::ENOPROTOOPT
                | libc::EACCES
                | libc::EPERM
        )
    )
}

/// How an established connection was cut, from the error its socket returned, if the error is
/// one a cut produces.
pub fn cut_signature(err: &io::Error) -> Option<Signature> {
    match err.raw_os_error() {
        Some(libc::ECONNRESET | libc::EPIPE) => Some(Signature::Reset),
        Some(libc::ETIMEDOUT) => Some(Signature::Blackhole),
        // On an established connection a RST reads as ECONNRESET: a refusal here is an ICMP
        // port unreachable.
        Some(libc::ECONNREFUSED) => Some(Signature::Icmp),
        Some(_) if icmp_errno(err) => Some(Signature::Icmp),
        _ => None,
    }
}

fn set_user_timeout(socket: &TcpSocket, timeout: Duration) -> io::Result<()> {
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    setsockopt(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        ms,
    )
}

/// Turns TCP keepalive on: a probe after `interval` of silence, then every `interval`.
pub fn set_keepalive(stream: &TcpStream, interval: Duration) -> io::Result<()> {
    let seconds = u32::try_from(interval.as_secs().max(1)).unwrap_or(u32::MAX);
    let fd = stream.as_raw_fd();
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, seconds)?;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, seconds)?;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4)
}

/// Data sent but not yet acknowledged by the peer: non-zero when the path swallows segments.
pub fn unacknowledged_segments(stream: &TcpStream) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).unwrap_or(0);
    // SAFETY: valid socket, buffer and length of the buffer's size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

fn setsockopt(fd: i32, level: i32, option: i32, value: u32) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<u32>()).unwrap_or(4);
    // SAFETY: valid socket and an option buffer of the given size.
    let rc = unsafe { libc::setsockopt(fd, level, option, std::ptr::from_ref(&value).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_a_cut_connection_give_its_signature() {
        let errno = io::Error::from_raw_os_error;
        assert_eq!(
            cut_signature(&errno(libc::ECONNRESET)),
            Some(Signature::Reset)
        );
        assert_eq!(
            cut_signature(&errno(libc::ETIMEDOUT)),
            Some(Signature::Blackhole)
        );
        assert_eq!(
            cut_signature(&errno(libc::EHOSTUNREACH)),
            Some(Signature::Icmp)
        );
        assert_eq!(cut_signature(&errno(libc::EBADF)), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_an_open_one_connects() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let second = Duration::from_secs(1);
        assert!(connect(open, second, second).await.is_ok());
        drop(listener);
        assert_eq!(
            connect(open, second, second).await.unwrap_err(),
            ConnectFailure::Refused
        );
    }
}
