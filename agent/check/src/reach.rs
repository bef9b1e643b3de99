//! Reaching the server: a TCP connect whose failure says what the path did with the SYN (a RST,
//! silence, or an ICMP error), and the socket options that make a cut connection fail fast and
//! tell how it was cut.

use std::{
    io::{self, IoSliceMut},
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
    time::Duration,
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use serde::Serialize;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::registrar::Registrar;
use idlecut_api::vocabulary::Signature;

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
                idlecut_core::duration_text::with_seconds(timeout.as_secs_f64())
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
    // Abandoned if dropped before the connect succeeds, however this function ends.
    let registration = own
        .map(|own| own.bind(&socket, addr))
        .transpose()
        .map_err(other)?;
    // The ICMP error that refused a SYN, if one did, waits on the socket's error queue; a
    // second descriptor keeps the socket (and its queue) once a failed connect drops the first.
    enable_error_queue(&socket, addr.is_ipv6()).map_err(other)?;
    let queue = socket.as_fd().try_clone_to_owned().map_err(other)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(ConnectFailure::NoAnswer),
        Ok(Ok(stream)) => {
            if let Some(registration) = registration {
                registration.connected();
            }
            Ok(stream)
        }
        Ok(Err(err)) => Err(match (err.raw_os_error(), queued_icmp(&queue)) {
            (_, Some(icmp)) => ConnectFailure::Unreachable(icmp),
            (Some(libc::ECONNREFUSED), None) => ConnectFailure::Refused,
            (Some(libc::ETIMEDOUT), None) => ConnectFailure::NoAnswer,
            (Some(_), None) if icmp_errno(&err) => ConnectFailure::Unreachable(err.to_string()),
            _ => ConnectFailure::Other(err.to_string()),
        }),
    }
}

fn enable_error_queue(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
    } else {
        setsockopt(socket, sockopt::Ipv4RecvErr, &true)?;
    }
    Ok(())
}

/// The ICMP error queued on a socket (IP_RECVERR), described: type, code and what they mean.
fn queued_icmp(fd: &OwnedFd) -> Option<String> {
    let mut data = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let message = recvmsg::<SockaddrStorage>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    message.cmsgs().ok()?.find_map(|cmsg| {
        let (ControlMessageOwned::Ipv4RecvErr(error, _)
        | ControlMessageOwned::Ipv6RecvErr(error, _)) = cmsg
        else {
            return None;
        };
        // The origin says which ICMP the type and code are, whatever the socket's family.
        match error.ee_origin {
            libc::SO_EE_ORIGIN_ICMP => Some(icmp_words(false, error.ee_type, error.ee_code)),
            libc::SO_EE_ORIGIN_ICMP6 => Some(icmp_words(true, error.ee_type, error.ee_code)),
            _ => None,
        }
    })
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

/// The kernel takes an int of milliseconds and refuses a negative one (EINVAL): `--answer-timeout`
/// is bounded below that (`args::MAX_ANSWER_TIMEOUT`), and this never sends more (socket2 clamps
/// only to an unsigned int, which the kernel would refuse).
fn set_user_timeout(socket: &TcpSocket, timeout: Duration) -> io::Result<()> {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .min(u64::from(i32::MAX.unsigned_abs()));
    SockRef::from(socket).set_tcp_user_timeout(Some(Duration::from_millis(ms)))
}

/// Turns TCP keepalive on: a probe after `interval` of silence, then every `interval`, 4 of them.
/// `interval` is at most what TCP takes (`idle::MAX_KEEPALIVE_SECONDS`, the recommendation's
/// cap): the kernel refuses a longer one.
pub fn set_keepalive(stream: &TcpStream, interval: Duration) -> io::Result<()> {
    let seconds = Duration::from_secs(interval.as_secs().max(1));
    let keepalive = TcpKeepalive::new()
        .with_time(seconds)
        .with_interval(seconds)
        .with_retries(4);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Data sent but not yet acknowledged by the peer: non-zero when the path swallows segments.
/// Neither socket2 nor nix reads TCP_INFO, hence the one `getsockopt` of this crate.
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

    /// The bound of `--answer-timeout` is one the kernel takes: 2^31 ms is refused (EINVAL,
    /// issue 21's healthy server "unreachable" at `--answer-timeout 25d`), the longest answer
    /// timeout is not.
    #[tokio::test]
    async fn the_longest_answer_timeout_is_a_user_timeout_the_kernel_takes() {
        let socket = TcpSocket::new_v4().unwrap();
        let refused =
            SockRef::from(&socket).set_tcp_user_timeout(Some(Duration::from_millis(1 << 31)));
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        set_user_timeout(&socket, crate::args::MAX_ANSWER_TIMEOUT).unwrap();
        let set = || SockRef::from(&socket).tcp_user_timeout().unwrap();
        assert_eq!(set(), Some(crate::args::MAX_ANSWER_TIMEOUT));
        set_user_timeout(&socket, Duration::from_secs(400 * 86_400)).unwrap();
        assert_eq!(
            set(),
            Some(Duration::from_millis(i32::MAX.unsigned_abs().into()))
        );
    }

    /// SO_KEEPALIVE, and the first probe, the interval and the count the kernel then uses.
    #[tokio::test]
    async fn keepalive_probes_every_interval_four_times() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        set_keepalive(&stream, Duration::from_millis(90_500)).unwrap();
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        set_keepalive(&stream, Duration::ZERO).unwrap();
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
    }

    /// The error queue as the connect reads it, on a real socket without root: a datagram to a
    /// closed loopback port comes back as an ICMP port unreachable, queued on the sender.
    #[test]
    fn a_queued_icmp_error_is_read_and_named() {
        let cases = [
            (
                "127.0.0.1:0",
                false,
                "ICMP type 3 code 3 (port unreachable)",
            ),
            ("[::1]:0", true, "ICMPv6 type 1 code 4 (port unreachable)"),
        ];
        for (local, ipv6, expected) in cases {
            let closed = std::net::UdpSocket::bind(local).unwrap();
            let target = closed.local_addr().unwrap();
            drop(closed);
            let socket = std::net::UdpSocket::bind(local).unwrap();
            enable_error_queue(&socket, ipv6).unwrap();
            let queue = socket.as_fd().try_clone_to_owned().unwrap();
            socket.send_to(b"a1 NOOP\r\n", target).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            let words = loop {
                if let Some(words) = queued_icmp(&queue) {
                    break words;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no ICMP error queued for {target}"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(words, expected);
        }
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
