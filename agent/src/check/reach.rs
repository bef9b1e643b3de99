//! Reaching the server: a TCP connect whose failure says what the path did with the SYN (a RST,
//! silence, or an ICMP error), and the socket options that make a cut connection fail fast and
//! tell how it was cut.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};

use crate::{own::Registrar, vocabulary::Signature};

/// Why a connect failed, as far as the errno tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ConnectFailure {
    /// A RST answered the SYN.
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
            Self::Refused => "refused: a RST answered the SYN".to_owned(),
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
/// it instead of after ~15 minutes of retransmissions. With `own`, the connection is
/// registered as the agent's before it starts.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    user_timeout: Duration,
    own: Option<&Registrar>,
) -> Result<TcpStream, ConnectFailure> {
    let other = |err: io::Error| ConnectFailure::Other(err.to_string());
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(other)?;
    set_user_timeout(&socket, user_timeout).map_err(other)?;
    if let Some(own) = own {
        own.bind(&socket, addr).map_err(other)?;
    }
    // The ICMP error that refused a SYN, if one did, waits on the socket's error queue; a
    // second descriptor keeps the socket (and its queue) once a failed connect drops the first.
    enable_error_queue(&socket, addr.is_ipv6()).map_err(other)?;
    // SAFETY: dup of a descriptor this function owns; the result is checked and then owned.
    let queue = unsafe { libc::dup(socket.as_raw_fd()) };
    if queue < 0 {
        return Err(other(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor from dup, owned from here on.
    let queue = unsafe { OwnedFd::from_raw_fd(queue) };
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(ConnectFailure::NoAnswer),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(match (err.raw_os_error(), queued_icmp(&queue)) {
            (_, Some(icmp)) => ConnectFailure::Unreachable(icmp),
            (Some(libc::ECONNREFUSED), None) => ConnectFailure::Refused,
            (Some(libc::ETIMEDOUT), None) => ConnectFailure::NoAnswer,
            (Some(_), None) if icmp_errno(&err) => ConnectFailure::Unreachable(err.to_string()),
            _ => ConnectFailure::Other(err.to_string()),
        }),
    }
}

fn enable_error_queue(socket: &TcpSocket, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::SOL_IP, libc::IP_RECVERR)
    };
    setsockopt(socket.as_raw_fd(), level, option, 1)
}

/// The ICMP error queued on a socket (IP_RECVERR), described: type, code and what they mean.
fn queued_icmp(fd: &OwnedFd) -> Option<String> {
    let mut data = [0u8; 256];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = size_of_val(&control);
    // SAFETY: a valid descriptor and a message whose buffers outlive the call.
    let rc = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &raw mut message,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return None;
    }
    // SAFETY: walking the control messages recvmsg just filled, within msg_controllen.
    let mut header = unsafe { libc::CMSG_FIRSTHDR(&raw const message) };
    while !header.is_null() {
        // SAFETY: a non-null header inside the control buffer.
        let (level, kind) = unsafe { ((*header).cmsg_level, (*header).cmsg_type) };
        if (level, kind) == (libc::SOL_IP, libc::IP_RECVERR)
            || (level, kind) == (libc::SOL_IPV6, libc::IPV6_RECVERR)
        {
            // SAFETY: IP_RECVERR data starts with a sock_extended_err; it may be unaligned.
            let error: libc::sock_extended_err =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(header).cast()) };
            if error.ee_origin == libc::SO_EE_ORIGIN_ICMP
                || error.ee_origin == libc::SO_EE_ORIGIN_ICMP6
            {
                return Some(icmp_words(
                    error.ee_origin == libc::SO_EE_ORIGIN_ICMP6,
                    error.ee_type,
                    error.ee_code,
                ));
            }
        }
        // SAFETY: as above.
        header = unsafe { libc::CMSG_NXTHDR(&raw const message, header) };
    }
    None
}

/// "ICMP type 3 code 13 (communication administratively prohibited)".
fn icmp_words(ipv6: bool, kind: u8, code: u8) -> String {
    let meaning = match (ipv6, kind, code) {
        (false, 3, 0) => "network unreachable",
        (false, 3, 1) => "host unreachable",
        (false, 3, 3) | (true, 1, 4) => "port unreachable",
        (false, 3, 9 | 10 | 13) | (true, 1, 1) => "communication administratively prohibited",
        (true, 1, 0) => "no route to destination",
        (true, 1, 3) => "address unreachable",
        _ => "destination unreachable",
    };
    let version = if ipv6 { "ICMPv6" } else { "ICMP" };
    format!("{version} type {kind} code {code} ({meaning})")
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

    #[test]
    fn icmp_errors_are_named() {
        assert_eq!(
            icmp_words(false, 3, 13),
            "ICMP type 3 code 13 (communication administratively prohibited)"
        );
        assert_eq!(
            icmp_words(true, 1, 4),
            "ICMPv6 type 1 code 4 (port unreachable)"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_an_open_one_connects() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let second = Duration::from_secs(1);
        assert!(connect(open, second, second, None).await.is_ok());
        drop(listener);
        assert_eq!(
            connect(open, second, second, None).await.unwrap_err(),
            ConnectFailure::Refused
        );
    }
}
