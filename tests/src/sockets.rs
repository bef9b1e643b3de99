//! TCP connections between the topology's namespaces, and the socket options tests set
//! (through socket2).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use socket2::{SockRef, TcpKeepalive};

use crate::topology::{Netns, Topology};

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
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap_or_else(|err| panic!("SO_LINGER: {err}"));
    drop(stream);
}

/// Turns TCP keepalive on with probes after `idle_s` seconds of silence (SO_KEEPALIVE and
/// TCP_KEEPIDLE).
pub fn set_keepalive(stream: &TcpStream, idle_s: u32) {
    let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(idle_s.into()));
    SockRef::from(stream)
        .set_tcp_keepalive(&keepalive)
        .unwrap_or_else(|err| panic!("SO_KEEPALIVE, TCP_KEEPIDLE: {err}"));
}

/// Makes the kernel give up on unacknowledged data after `ms` (TCP_USER_TIMEOUT), so that a
/// black-holed connection dies in seconds instead of the default ~15 minutes.
pub fn set_user_timeout(stream: &TcpStream, ms: u32) {
    SockRef::from(stream)
        .set_tcp_user_timeout(Some(Duration::from_millis(ms.into())))
        .unwrap_or_else(|err| panic!("TCP_USER_TIMEOUT: {err}"));
}

/// The next connection to `listener`, or a failure after `timeout` (the pod's process may
/// have failed to start). The stream it returns blocks, with a 10 s read timeout.
pub fn accept_within(listener: &std::net::TcpListener, timeout: Duration) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                listener.set_nonblocking(false).expect("blocking listener");
                stream.set_nonblocking(false).expect("blocking stream");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("read timeout");
                return stream;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the pod's process did not connect within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
}

/// An IMAP connection from the client namespace to the server's, after one request and its
/// answer: (client, server).
pub fn imap_after_an_exchange(net: &Topology) -> (TcpStream, TcpStream) {
    let imap = listen(&net.server, "0.0.0.0:143");
    let (mut client, mut server) = connect(&net.client, &imap, &format!("{}:143", net.server_v4()));
    exchange(&mut client, &mut server);
    (client, server)
}
