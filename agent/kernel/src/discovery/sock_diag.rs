//! The kernel's socket table of the current network namespace, over netlink sock_diag
//! (inet_diag): every TCP connection in an established state, with its pending timer and its
//! `tcp_info`.
//!
//! Messages are built and parsed by `netlink-packet-sock-diag` (with its `rich_nlas` feature,
//! so `tcp_info` comes out as a typed struct, not bytes at offsets) and sent over a
//! `netlink-sys` socket: the rust-netlink crates, maintained and used by the netlink tooling
//! of the Rust ecosystem. They replace a hand-written client of the same size as this module;
//! the dump is the same request on the wire, and a scan costs the same (one dump per family).

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage, TCP_ESTABLISHED,
    inet::{
        ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer, nlas::Nla,
        nlas::TcpInfo,
    },
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use idlecut_core::scan::{KeepaliveObservation, Scanned};
use idlecut_core::{events::Endpoints, settings::PortMap};

/// Room for one datagram of a dump (the kernel fills at most a few pages per datagram).
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Dumps the TCP sockets (IPv4 and IPv6) of the current namespace on the watched ports.
pub fn dump_tcp(netns: u32, ports: &PortMap) -> io::Result<Vec<Scanned>> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let watched = |scanned: &Scanned| {
        ports.service(scanned.endpoints.local.port()).is_some()
            || ports.service(scanned.endpoints.remote.port()).is_some()
    };
    let mut found = Vec::new();
    let mut buf = Vec::with_capacity(RECEIVE_BUFFER);
    for family in [AF_INET, AF_INET6] {
        socket.send(&request(family), 0)?;
        'receive: loop {
            buf.clear();
            match socket.recv(&mut buf, 0) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            for message in Messages::new(&buf) {
                match message {
                    Reply::Done => break 'receive,
                    Reply::Error(err) => return Err(err),
                    Reply::Socket(response) => {
                        if let Some(scanned) = scanned(&response, netns)
                            && watched(&scanned)
                        {
                            found.push(scanned);
                        }
                    }
                    Reply::Other => {}
                }
            }
        }
    }
    Ok(found)
}

/// The states worth reporting: those of an established connection.
fn established_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::CLOSING
        | StateFlags::LAST_ACK
}

/// A dump request for the TCP sockets of `family`, asking for `tcp_info`.
fn request(family: u8) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: established_states(),
            // All zero: match every socket.
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// One message of a dump, as far as a scan cares.
enum Reply {
    Socket(Box<InetResponse>),
    Error(io::Error),
    Done,
    /// An acknowledgement, another kind of message, or one that did not parse (skipped).
    Other,
}

/// Walks the netlink messages of one datagram, stopping where the framing is broken.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(datagram: &'a [u8]) -> Self {
        Self { rest: datagram }
    }
}

impl Iterator for Messages<'_> {
    type Item = Reply;

    fn next(&mut self) -> Option<Reply> {
        // A header that claims more than the datagram holds (or less than itself) leaves the
        // rest of the datagram unreadable.
        let Ok(framing) = NetlinkBuffer::new_checked(self.rest) else {
            self.rest = &[];
            return None;
        };
        let len = usize::try_from(framing.length()).ok()?;
        let message = &self.rest[..len];
        self.rest = &self.rest[len.next_multiple_of(4).min(self.rest.len())..];
        Some(
            match NetlinkMessage::<SockDiagMessage>::deserialize(message) {
                Ok(message) => match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        Reply::Socket(response)
                    }
                    NetlinkPayload::Done(_) => Reply::Done,
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        Reply::Error(error.to_io())
                    }
                    _ => Reply::Other,
                },
                Err(_) => Reply::Other,
            },
        )
    }
}

/// What a scan keeps of one socket; None without `tcp_info` (the idle clocks come from it).
fn scanned(response: &InetResponse, netns: u32) -> Option<Scanned> {
    let info: &TcpInfo = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(info) => Some(info),
        _ => None,
    })?;
    let header = &response.header;
    let id = &header.socket_id;
    let keepalive = match (header.state, &header.timer) {
        (TCP_ESTABLISHED, Some(Timer::KeepAlive(expires))) => KeepaliveObservation::On {
            interval_ms: u64::try_from(expires.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(u64::from(info.last_ack_recv)),
        },
        (TCP_ESTABLISHED, None) => KeepaliveObservation::Off,
        _ => KeepaliveObservation::Unknown,
    };
    Some(Scanned {
        netns,
        endpoints: Endpoints {
            local: SocketAddr::new(unmapped(id.source_address), id.source_port),
            remote: SocketAddr::new(unmapped(id.destination_address), id.destination_port),
        },
        state: crate::probes::tcp_state_of(header.state),
        cookie: cookie(id.cookie),
        inode: header.inode,
        keepalive,
        last_data_sent_ms: info.last_data_sent,
        last_data_recv_ms: info.last_data_recv,
        last_ack_recv_ms: info.last_ack_recv,
    })
}

/// An IPv4 peer of an IPv6 socket as IPv4, the way the kernel programs report it.
fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// The socket cookie from `idiag_cookie`: two host-order 32-bit halves, low one first.
fn cookie(bytes: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let high = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    u64::from(low) | (u64::from(high) << 32)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use netlink_packet_sock_diag::{SOCK_DIAG_BY_FAMILY, inet::InetResponseHeader};

    use super::*;

    fn tcp_info(last_sent: u32, last_recv: u32, last_ack: u32) -> TcpInfo {
        // Parsed from zeros: the kernel's struct, every field 0.
        let mut info = TcpInfo::parse(&[0; 512]).unwrap();
        info.last_data_sent = last_sent;
        info.last_data_recv = last_recv;
        info.last_ack_recv = last_ack;
        info
    }

    fn response(timer: Option<Timer>, info: Option<TcpInfo>) -> InetResponse {
        let mut cookie = [0; 8];
        cookie[..4].copy_from_slice(&7u32.to_ne_bytes());
        cookie[4..].copy_from_slice(&1u32.to_ne_bytes());
        InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: TCP_ESTABLISHED,
                timer,
                socket_id: SocketId {
                    source_port: 143,
                    destination_port: 50_000,
                    source_address: "10.0.2.2".parse().unwrap(),
                    destination_address: "10.0.1.2".parse().unwrap(),
                    interface_id: 0,
                    cookie,
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 0,
                inode: 4242,
            },
            nlas: info.map(Nla::TcpInfo).into_iter().collect(),
        }
    }

    /// The response as the kernel sends it: one netlink datagram.
    fn datagram(response: InetResponse) -> Vec<u8> {
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            SockDiagMessage::InetResponse(Box::new(response)).into(),
        );
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn parse(datagram: &[u8]) -> Vec<Scanned> {
        Messages::new(datagram)
            .filter_map(|reply| match reply {
                Reply::Socket(response) => scanned(&response, 77),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_an_ipv4_connection_with_keepalive() {
        let bytes = datagram(response(
            Some(Timer::KeepAlive(Duration::from_millis(59_000))),
            Some(tcp_info(3000, 1000, 1000)),
        ));
        let [scanned] = parse(&bytes).try_into().unwrap();
        assert_eq!(scanned.endpoints.local, "10.0.2.2:143".parse().unwrap());
        assert_eq!(scanned.endpoints.remote, "10.0.1.2:50000".parse().unwrap());
        assert_eq!((scanned.netns, scanned.inode), (77, 4242));
        assert_eq!(scanned.cookie, (1 << 32) | 7);
        assert_eq!(
            scanned.keepalive,
            KeepaliveObservation::On {
                interval_ms: 60_000
            }
        );
        assert_eq!(scanned.last_received_ms(), 1000);
        assert_eq!(scanned.last_data_sent_ms, 3000);
    }

    #[test]
    fn no_timer_means_keepalive_off_and_a_retransmit_timer_means_unknown() {
        let off = scanned(&response(None, Some(tcp_info(0, 0, 0))), 1).unwrap();
        assert_eq!(off.keepalive, KeepaliveObservation::Off);
        let retransmitting = Timer::Retransmit(Duration::from_millis(200), 1);
        let busy = scanned(&response(Some(retransmitting), Some(tcp_info(0, 0, 0))), 1).unwrap();
        assert_eq!(busy.keepalive, KeepaliveObservation::Unknown);
    }

    #[test]
    fn v4_mapped_ipv6_sockets_report_ipv4() {
        let mut response = response(None, Some(tcp_info(0, 0, 0)));
        response.header.family = AF_INET6;
        let mapped = Ipv4Addr::new(10, 0, 1, 2).to_ipv6_mapped();
        response.header.socket_id.destination_address = IpAddr::V6(mapped);
        response.header.socket_id.source_address =
            IpAddr::V6(Ipv4Addr::new(10, 0, 2, 2).to_ipv6_mapped());
        let [scanned] = parse(&datagram(response)).try_into().unwrap();
        assert_eq!(
            scanned.endpoints.remote.ip(),
            "10.0.1.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn malformed_messages_are_rejected_not_trusted() {
        // No tcp_info attribute.
        assert!(parse(&datagram(response(None, None))).is_empty());
        // An attribute that claims more than there is: that message is skipped, not the next.
        let good = datagram(response(None, Some(tcp_info(0, 0, 0))));
        let mut bad = good.clone();
        // The tcp_info attribute is the last one: its 4-byte header, then its value.
        let nla_at = good.len() - tcp_info_len().next_multiple_of(4) - 4;
        bad[nla_at..nla_at + 2].copy_from_slice(&9000u16.to_ne_bytes());
        assert!(parse(&bad).is_empty());
        assert_eq!(parse(&[bad, good].concat()).len(), 1);
        // A netlink header that claims more than the datagram holds.
        let mut buf = vec![0u8; 32];
        buf[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(Messages::new(&buf).count(), 0);
    }

    fn tcp_info_len() -> usize {
        use netlink_packet_core::Nla as _;
        Nla::TcpInfo(tcp_info(0, 0, 0)).value_len()
    }

    #[test]
    fn the_dump_request_asks_for_tcp_info_of_established_states() {
        use netlink_packet_core::Parseable as _;
        let bytes = request(AF_INET);
        let framing = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(usize::try_from(framing.length()).unwrap(), bytes.len());
        assert_eq!(framing.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(framing.message_type(), SOCK_DIAG_BY_FAMILY);
        // (The crate reads every message of this type as a response: parse the body itself.)
        let request = InetRequest::parse(framing.payload()).unwrap();
        assert_eq!(request.protocol, IPPROTO_TCP);
        assert_eq!(request.extensions, ExtensionFlags::INFO);
        assert!(
            request
                .states
                .contains(StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT)
        );
        assert!(
            !request
                .states
                .intersects(StateFlags::LISTEN | StateFlags::TIME_WAIT)
        );
    }

    /// The real kernel: a listening-then-connected pair on loopback shows up in the dump.
    #[test]
    fn dumps_a_real_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let ports = idlecut_core::settings::parse_ports(&format!("{port}=test")).unwrap();
        let found = dump_tcp(0, &ports).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|c| c.cookie != 0 && c.inode != 0));
        assert!(
            found
                .iter()
                .all(|c| c.keepalive == KeepaliveObservation::Off)
        );
    }
}
