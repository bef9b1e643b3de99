//! TCP connections between the topology's namespaces, and the socket options tests set.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use crate::Netns;

/// A listener in the server namespace.
pub fn listen(ns: &Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("listen address");
    ns.run(move || TcpListener::bind(addr).unwrap_or_else(|err| panic!("bind {addr}: {err}")))
}

/// A connection from the client namespace, with the server's end accepted.
pub fn connect(ns: &Netns, listener: &TcpListener, addr: &str) -> (TcpStream, TcpStream) {
    let addr: SocketAddr = addr.parse().expect("connect address");
    let client = ns.run(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|err| panic!("connect {addr}: {err}"))
    });
    let (server, _) = listener.accept().expect("accept");
    for stream in [&client, &server] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
    }
    (client, server)
}

/// One request and one answer, like an IMAP command.
pub fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"a1 NOOP\r\n").expect("client write");
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).expect("server read");
    assert_eq!(&buf[..n], b"a1 NOOP\r\n");
    server
        .write_all(b"a1 OK NOOP completed\r\n")
        .expect("server write");
    let n = client.read(&mut buf).expect("client read");
    assert!(n > 0, "the server's answer did not arrive");
}

/// Closes both ends with FIN: the client first, the server once it has read the EOF.
pub fn close_gracefully(client: TcpStream, mut server: TcpStream) {
    drop(client);
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).expect("server read EOF"), 0);
    drop(server);
}

/// Closes a socket with a RST (SO_LINGER 0), as an aborting application does.
pub fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_socket_option(&stream, libc::SOL_SOCKET, libc::SO_LINGER, linger)
        .unwrap_or_else(|err| panic!("SO_LINGER: {err}"));
    drop(stream);
}

/// Turns TCP keepalive on with probes after `idle_s` seconds of silence (SO_KEEPALIVE and
/// TCP_KEEPIDLE).
pub fn set_keepalive(stream: &TcpStream, idle_s: i32) {
    set_socket_option(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1i32)
        .unwrap_or_else(|err| panic!("SO_KEEPALIVE: {err}"));
    set_socket_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s)
        .unwrap_or_else(|err| panic!("TCP_KEEPIDLE: {err}"));
}

/// Makes the kernel give up on unacknowledged data after `ms` (TCP_USER_TIMEOUT), so that a
/// black-holed connection dies in seconds instead of the default ~15 minutes.
pub fn set_user_timeout(stream: &TcpStream, ms: u32) {
    set_socket_option(stream, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
        .unwrap_or_else(|err| panic!("TCP_USER_TIMEOUT: {err}"));
}

/// `setsockopt(2)` with `value` as the option's buffer (an `int`, a `struct linger`...).
pub fn set_socket_option<T: Copy>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: T,
) -> std::io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid descriptor, and a buffer of `len` bytes that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
