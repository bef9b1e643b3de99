//! Connections that were already open: the kernel's socket table, read over netlink sock_diag
//! (inet_diag) in every network namespace of the host, with the idle clocks and keepalive timer
//! of each connection and, where it can be found, the process that owns it.
//!
//! Runs on a thread of its own: entering a namespace (`setns`) changes the calling thread, which
//! must never be one that tokio reuses.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use idlecut_ebpf::tcp_state;

use crate::{config::PortMap, events::Endpoints};

/// A network namespace and a path that enters it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: PathBuf,
}

/// A connection in the kernel's socket table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    pub netns: u32,
    pub endpoints: Endpoints,
    pub state: u8,
    /// The socket cookie, which the kernel programs also read to adopt the connection.
    pub cookie: u64,
    pub inode: u32,
    pub keepalive: KeepaliveObservation,
    /// Milliseconds since this host last sent data, since data arrived, since an ACK arrived.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
}

impl Scanned {
    /// Milliseconds since the peer was last heard from (any segment).
    pub fn last_received_ms(&self) -> u32 {
        self.last_data_recv_ms.min(self.last_ack_recv_ms)
    }
}

/// What one look at a connection says about TCP keepalive.
///
/// sock_diag reports the socket's pending timer. On an established connection with nothing in
/// flight the only timer is the keepalive timer, pending exactly when SO_KEEPALIVE is on, and it
/// expires one keepalive time after the last segment received. So `expires + time since the
/// last ACK` is the keepalive time, whether it came from TCP_KEEPIDLE or from the namespace's
/// `tcp_keepalive_time`. With data in flight the retransmission timer hides it: unknown.
/// (Observing setsockopt instead would miss sockets configured before the agent started,
/// options inherited from a listener and the sysctl default, and would need each file
/// descriptor mapped to its socket.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveObservation {
    Off,
    On { interval_ms: u64 },
    Unknown,
}

/// One pass over every namespace.
#[derive(Debug, Default)]
pub struct Scan {
    pub connections: Vec<Scanned>,
    /// Socket inode -> owning process and its cgroup, for the watched connections found.
    pub owners: HashMap<u32, Owner>,
    /// Namespaces that could not be read, with why.
    pub failures: Vec<(Netns, String)>,
    pub namespaces: usize,
    /// Process namespaces that could not be looked at (permission denied).
    pub unreadable: usize,
    /// Inodes of the namespaces read completely: a connection of one of them that the scan
    /// did not find had ended.
    pub complete: HashSet<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub cgroup: Option<String>,
}

/// Every network namespace of the host: the agent's own, those named in /run/netns, and those
/// held by processes. Deduplicated by inode. Also says how many process namespaces could not be
/// looked at (without CAP_SYS_PTRACE, those of other users' processes).
pub fn namespaces() -> (Vec<Netns>, usize) {
    let mut candidates: Vec<PathBuf> = vec![PathBuf::from("/proc/self/ns/net")];
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        candidates.extend(entries.filter_map(Result::ok).map(|e| e.path()));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = HashSet::new();
    let mut namespaces = Vec::new();
    let mut unreadable = 0;
    for path in candidates {
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            // A process that exited, a namespace being deleted.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => {
                unreadable += 1;
                continue;
            }
        };
        let Ok(inode) = u32::try_from(meta.ino()) else {
            continue;
        };
        if seen.insert(inode) {
            namespaces.push(Netns { inode, path });
        }
    }
    (namespaces, unreadable)
}

/// Scans every namespace for connections on the watched ports. Blocking; call it from a thread
/// of its own (see the module documentation).
pub fn scan(ports: &PortMap) -> Scan {
    let (namespaces, unreadable) = namespaces();
    let mut scan = Scan {
        namespaces: namespaces.len(),
        unreadable,
        ..Scan::default()
    };
    // Enter each namespace on this thread in turn, then come back.
    let home = File::open("/proc/thread-self/ns/net");
    for ns in namespaces {
        match enter(&ns.path).and_then(|()| dump_tcp(ns.inode, ports)) {
            Ok(found) => {
                scan.complete.insert(ns.inode);
                scan.connections.extend(found);
            }
            Err(err) => scan.failures.push((ns, err.to_string())),
        }
    }
    if let Ok(home) = home {
        let _ = setns(&home);
    }
    let wanted: HashSet<u32> = scan
        .connections
        .iter()
        .map(|c| c.inode)
        .filter(|&i| i != 0)
        .collect();
    scan.owners = owners(&wanted);
    scan
}

/// Whether the agent holds CAP_SYS_PTRACE (needed to look at other users' processes'
/// namespaces), from its effective capability set.
pub fn has_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

fn enter(path: &Path) -> io::Result<()> {
    setns(&File::open(path)?)
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: a valid namespace file descriptor; only this thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// Netlink and inet_diag constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const NLMSG_HDR_LEN: usize = 16;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
/// Keepalive timer, as `idiag_timer` reports it.
const TIMER_KEEPALIVE: u8 = 2;
const TIMER_NONE: u8 = 0;

/// The states worth reporting: those of an established connection.
fn state_mask() -> u32 {
    [
        tcp_state::ESTABLISHED,
        tcp_state::FIN_WAIT1,
        tcp_state::FIN_WAIT2,
        tcp_state::CLOSE_WAIT,
        tcp_state::CLOSING,
        tcp_state::LAST_ACK,
    ]
    .iter()
    .fold(0, |mask, &state| mask | (1 << state))
}

/// Dumps the TCP sockets (IPv4 and IPv6) of the current namespace on the watched ports.
fn dump_tcp(netns: u32, ports: &PortMap) -> io::Result<Vec<Scanned>> {
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut found = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        send_all(&socket, &dump_request(family))?;
        let mut buf = vec![0u8; 64 * 1024];
        'receive: loop {
            // SAFETY: valid descriptor and buffer of the given length.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                break;
            }
            for message in NetlinkMessages::new(&buf[..n]) {
                match message {
                    Message::Done => break 'receive,
                    Message::Error(errno) => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Message::Diag(payload) => {
                        if let Some(scanned) = parse_diag(payload, netns)
                            && (ports.service(scanned.endpoints.local.port()).is_some()
                                || ports.service(scanned.endpoints.remote.port()).is_some())
                        {
                            found.push(scanned);
                        }
                    }
                    Message::Other => {}
                }
            }
        }
    }
    Ok(found)
}

fn send_all(socket: &OwnedFd, request: &[u8]) -> io::Result<()> {
    // SAFETY: valid descriptor and buffer.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if usize::try_from(n).ok() == Some(request.len()) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An `inet_diag_req_v2` dump request for TCP sockets of `family`, asking for tcp_info.
fn dump_request(family: u8) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    request.push(family);
    request.push(libc::IPPROTO_TCP as u8);
    request.push(1 << (INET_DIAG_INFO - 1)); // idiag_ext: tcp_info
    request.push(0);
    request.extend_from_slice(&state_mask().to_ne_bytes());
    request.resize(len, 0); // inet_diag_sockid: all zero, match everything
    request
}

enum Message<'a> {
    Diag(&'a [u8]),
    Error(i32),
    Done,
    Other,
}

/// Walks the netlink messages in a receive buffer, stopping at the first malformed one.
struct NetlinkMessages<'a> {
    rest: &'a [u8],
}

impl<'a> NetlinkMessages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }
}

impl<'a> Iterator for NetlinkMessages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        if self.rest.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = usize::try_from(u32_at(self.rest, 0)?).ok()?;
        if len < NLMSG_HDR_LEN || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let kind = u16_at(self.rest, 4)?;
        let payload = &self.rest[NLMSG_HDR_LEN..len];
        self.rest = &self.rest[align4(len).min(self.rest.len())..];
        Some(match kind {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                if errno == 0 {
                    Message::Other // an acknowledgement
                } else {
                    Message::Error(-errno)
                }
            }
            SOCK_DIAG_BY_FAMILY => Message::Diag(payload),
            _ => Message::Other,
        })
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..at + 2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses one `inet_diag_msg` and its attributes; None when it is malformed.
fn parse_diag(payload: &[u8], netns: u32) -> Option<Scanned> {
    if payload.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = u16::from(payload[0]);
    let state = payload[1];
    let timer = payload[2];
    let id = &payload[4..52];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let address = |bytes: &[u8]| -> Option<IpAddr> {
        let octets: [u8; 16] = bytes.try_into().ok()?;
        Some(if family == libc::AF_INET as u16 {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        } else {
            let v6 = Ipv6Addr::from(octets);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        })
    };
    let local = address(&id[4..20])?;
    let remote = address(&id[20..36])?;
    let cookie = u64::from(u32_at(id, 40)?) | (u64::from(u32_at(id, 44)?) << 32);
    let expires_ms = u32_at(payload, 52)?;
    let inode = u32_at(payload, 68)?;

    let mut info = None;
    let mut attributes = &payload[INET_DIAG_MSG_LEN..];
    while attributes.len() >= 4 {
        let len = usize::from(u16_at(attributes, 0)?);
        let kind = u16_at(attributes, 2)?;
        if len < 4 || len > attributes.len() {
            break;
        }
        if kind == INET_DIAG_INFO {
            info = Some(&attributes[4..len]);
        }
        attributes = &attributes[align4(len).min(attributes.len())..];
    }
    // struct tcp_info: tcpi_last_data_sent at 44, tcpi_last_data_recv at 52,
    // tcpi_last_ack_recv at 56 (stable ABI).
    let info = info?;
    let last_data_sent_ms = u32_at(info, 44)?;
    let last_data_recv_ms = u32_at(info, 52)?;
    let last_ack_recv_ms = u32_at(info, 56)?;
    let keepalive = match (state, timer) {
        (tcp_state::ESTABLISHED, TIMER_KEEPALIVE) => KeepaliveObservation::On {
            interval_ms: u64::from(expires_ms) + u64::from(last_ack_recv_ms),
        },
        (tcp_state::ESTABLISHED, TIMER_NONE) => KeepaliveObservation::Off,
        _ => KeepaliveObservation::Unknown,
    };
    Some(Scanned {
        netns,
        endpoints: Endpoints {
            local: SocketAddr::new(local, sport),
            remote: SocketAddr::new(remote, dport),
        },
        state,
        cookie,
        inode,
        keepalive,
        last_data_sent_ms,
        last_data_recv_ms,
        last_ack_recv_ms,
    })
}

/// Finds the processes that hold the given socket inodes, and their cgroups, by reading
/// /proc/*/fd. Sockets nobody holds (already closed by their application) are left out.
fn owners(wanted: &HashSet<u32>) -> HashMap<u32, Owner> {
    let mut owners = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for process in processes.filter_map(Result::ok) {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            if wanted.contains(&inode) && !owners.contains_key(&inode) {
                owners.insert(
                    inode,
                    Owner {
                        pid,
                        cgroup: cgroup_of(pid),
                    },
                );
            }
        }
        if owners.len() == wanted.len() {
            break;
        }
    }
    owners
}

/// The cgroup v2 path of a process (the `0::` line), or its first v1 hierarchy.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag_message(family: u8, timer: u8, expires_ms: u32, info: Option<&[u8]>) -> Vec<u8> {
        let mut msg = vec![0u8; INET_DIAG_MSG_LEN];
        msg[0] = family;
        msg[1] = tcp_state::ESTABLISHED;
        msg[2] = timer;
        msg[4..6].copy_from_slice(&143u16.to_be_bytes());
        msg[6..8].copy_from_slice(&50_000u16.to_be_bytes());
        msg[8..12].copy_from_slice(&[10, 0, 2, 2]);
        msg[24..28].copy_from_slice(&[10, 0, 1, 2]);
        msg[44..48].copy_from_slice(&7u32.to_ne_bytes()); // cookie low
        msg[48..52].copy_from_slice(&1u32.to_ne_bytes()); // cookie high
        msg[52..56].copy_from_slice(&expires_ms.to_ne_bytes());
        msg[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        if let Some(info) = info {
            let len = u16::try_from(4 + info.len()).unwrap();
            msg.extend_from_slice(&len.to_ne_bytes());
            msg.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
            msg.extend_from_slice(info);
            msg.resize(align4(msg.len()), 0);
        }
        msg
    }

    fn tcp_info(last_sent: u32, last_recv: u32, last_ack: u32) -> Vec<u8> {
        let mut info = vec![0u8; 104];
        info[44..48].copy_from_slice(&last_sent.to_ne_bytes());
        info[52..56].copy_from_slice(&last_recv.to_ne_bytes());
        info[56..60].copy_from_slice(&last_ack.to_ne_bytes());
        info
    }

    #[test]
    fn parses_an_ipv4_connection_with_keepalive() {
        let msg = diag_message(
            libc::AF_INET as u8,
            TIMER_KEEPALIVE,
            59_000,
            Some(&tcp_info(3000, 1000, 1000)),
        );
        let scanned = parse_diag(&msg, 77).unwrap();
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
        let info = tcp_info(0, 0, 0);
        let off = parse_diag(
            &diag_message(libc::AF_INET as u8, TIMER_NONE, 0, Some(&info)),
            1,
        )
        .unwrap();
        assert_eq!(off.keepalive, KeepaliveObservation::Off);
        let busy = parse_diag(&diag_message(libc::AF_INET as u8, 1, 200, Some(&info)), 1).unwrap();
        assert_eq!(busy.keepalive, KeepaliveObservation::Unknown);
    }

    #[test]
    fn v4_mapped_ipv6_sockets_report_ipv4() {
        let mut msg = diag_message(
            libc::AF_INET6 as u8,
            TIMER_NONE,
            0,
            Some(&tcp_info(0, 0, 0)),
        );
        let mapped = Ipv4Addr::new(10, 0, 1, 2).to_ipv6_mapped().octets();
        msg[24..40].copy_from_slice(&mapped);
        let scanned = parse_diag(&msg, 1).unwrap();
        assert_eq!(
            scanned.endpoints.remote.ip(),
            "10.0.1.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn malformed_messages_are_rejected_not_trusted() {
        assert_eq!(parse_diag(&[0; 10], 1), None);
        // No tcp_info attribute.
        assert_eq!(
            parse_diag(&diag_message(libc::AF_INET as u8, 0, 0, None), 1),
            None
        );
        // An attribute that claims more than there is.
        let mut msg = diag_message(libc::AF_INET as u8, 0, 0, Some(&tcp_info(0, 0, 0)));
        msg[INET_DIAG_MSG_LEN..INET_DIAG_MSG_LEN + 2].copy_from_slice(&9000u16.to_ne_bytes());
        assert_eq!(parse_diag(&msg, 1), None);
        // A netlink header that claims more than the buffer holds.
        let mut buf = vec![0u8; 32];
        buf[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(NetlinkMessages::new(&buf).count(), 0);
    }

    #[test]
    fn the_dump_request_asks_for_tcp_info_of_established_states() {
        let request = dump_request(libc::AF_INET as u8);
        assert_eq!(request.len(), 72);
        assert_eq!(u16_at(&request, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(request[17], libc::IPPROTO_TCP as u8);
        assert_eq!(request[18], 2);
        assert_eq!(u32_at(&request, 20), Some(state_mask()));
    }

    /// The real kernel: a listening-then-connected pair on loopback shows up in the dump.
    #[test]
    fn dumps_a_real_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let ports = crate::config::parse_ports(&format!("{port}=test")).unwrap();
        let found = dump_tcp(0, &ports).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|c| c.cookie != 0 && c.inode != 0));
    }
}
