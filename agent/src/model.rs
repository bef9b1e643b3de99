//! The connection model: turns kernel facts into connection lifecycles.
//!
//! It follows each connection on a watched port from open to close and decides how it ended.
//! Some facts about an ending arrive after the kernel's state change to CLOSE (the RST an abort
//! sends, the errno reported to the application), so a closed connection waits a short grace
//! period before its ending is classified. Everything here is plain data and unit-tested; the
//! only clock is the kernel's, passed in.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use idlecut_ebpf::tcp_state;
use serde::Serialize;

use crate::{
    config::PortMap,
    events::{Endpoints, Event, Nanos},
};

/// How long a closed connection waits for late facts about its end (RST sent, errno).
/// The kernel emits them microseconds after the close; this leaves room for a slow reader.
pub const CLOSE_GRACE_NS: Nanos = 100_000_000;

const ETIMEDOUT: u16 = 110;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The local port is the service port: this host serves mail.
    Server,
    /// The remote port is the service port: this host is a mail client (or proxy).
    Client,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// How a connection ended. The label values are part of the metrics contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Both sides closed with FIN.
    Fin,
    /// The peer (or a middlebox on the path) sent a RST.
    ResetReceived,
    /// This host sent a RST (application abort, SO_LINGER 0, unread data, keepalive failure).
    ResetSent,
    /// The kernel gave up: retransmissions or keepalive probes unanswered (ETIMEDOUT).
    Timeout,
    /// The kernel reported another error (EHOSTUNREACH after ICMP errors, ...).
    Error,
    /// None of the above could be established.
    Unknown,
}

impl End {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::ResetReceived => "reset_received",
            Self::ResetSent => "reset_sent",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Received,
    Sent,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Sent => "sent",
        }
    }
}

/// What the aggregation layer needs to know about a connection: which path it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub service: Arc<str>,
    pub role: Role,
    pub remote: IpAddr,
}

/// What the model tells the layers after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    Opened(Identity),
    Reset(Identity, Direction),
    Retransmit(Identity),
    /// The peer spoke again after a silence of `gap` nanoseconds: the path survived it.
    IdleGapSurvived(Identity, Nanos),
    Closed {
        identity: Identity,
        end: End,
        /// None when the connection's start was not seen.
        duration: Option<Nanos>,
    },
    /// A connection closed that was opened before the agent started: nothing to attribute.
    UntrackedClose,
    /// The kernel had lost a connection's state (LRU map full); user space still had it.
    KernelStateEvicted,
}

#[derive(Clone, Debug)]
struct Connection {
    identity: Identity,
    endpoints: Endpoints,
    opened_at: Option<Nanos>,
    reset_received: bool,
    reset_sent: bool,
    /// An error reported while the connection was still open, with when.
    error: Option<(Nanos, u16)>,
}

#[derive(Clone, Debug)]
struct Closing {
    connection: Connection,
    closed_at: Nanos,
    old_state: u8,
}

/// Open connections by kernel socket address, and recently closed ones in their grace period.
#[derive(Debug)]
pub struct ConnectionModel {
    ports: PortMap,
    open: HashMap<u64, Connection>,
    by_endpoints: HashMap<Endpoints, u64>,
    closing: HashMap<u64, Closing>,
}

impl ConnectionModel {
    pub fn new(ports: PortMap) -> Self {
        Self {
            ports,
            open: HashMap::new(),
            by_endpoints: HashMap::new(),
            closing: HashMap::new(),
        }
    }

    /// Open connections (those in their close grace period excluded).
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Which service a connection is and in which role, or None if neither port is watched.
    pub fn identify(&self, endpoints: &Endpoints) -> Option<Identity> {
        let (service, role) = if let Some(service) = self.ports.service(endpoints.local.port()) {
            (service, Role::Server)
        } else {
            (self.ports.service(endpoints.remote.port())?, Role::Client)
        };
        Some(Identity {
            service: Arc::from(service),
            role,
            remote: endpoints.remote.ip(),
        })
    }

    pub fn apply(&mut self, event: Event, out: &mut Vec<Update>) {
        match event {
            Event::Open {
                at,
                socket,
                endpoints,
            } => self.open(socket, endpoints, Some(at), out),
            Event::Close {
                at,
                socket,
                endpoints,
                old_state,
                opened_at,
                retransmits: _,
                first_fin: _,
            } => self.close(socket, endpoints, at, old_state, opened_at, out),
            Event::ResetReceived { socket, .. } => self.reset(socket, Direction::Received, out),
            Event::ResetSent { socket, .. } => self.reset(socket, Direction::Sent, out),
            Event::Retransmit { socket, .. } => {
                if let Some(connection) = self.find_mut(socket) {
                    out.push(Update::Retransmit(connection.identity.clone()));
                }
            }
            Event::ErrorReport {
                at,
                endpoints,
                errno,
            } => self.error_report(endpoints, at, errno),
            Event::IdleGapEnd { socket, gap, .. } => {
                if let Some(connection) = self.open.get(&socket) {
                    out.push(Update::IdleGapSurvived(connection.identity.clone(), gap));
                }
            }
        }
    }

    /// Classifies connections whose grace period is over at kernel time `now`.
    pub fn expire(&mut self, now: Nanos, out: &mut Vec<Update>) {
        let due: Vec<u64> = self
            .closing
            .iter()
            .filter(|(_, closing)| now >= closing.closed_at.saturating_add(CLOSE_GRACE_NS))
            .map(|(&socket, _)| socket)
            .collect();
        for socket in due {
            self.finish(socket, out);
        }
    }

    fn open(
        &mut self,
        socket: u64,
        endpoints: Endpoints,
        opened_at: Option<Nanos>,
        out: &mut Vec<Update>,
    ) {
        // A socket address is reused only after its previous connection closed: settle that
        // one first so that late facts are not attributed to the new connection.
        if self.closing.contains_key(&socket) {
            self.finish(socket, out);
        }
        let Some(identity) = self.identify(&endpoints) else {
            return;
        };
        let connection = Connection {
            identity: identity.clone(),
            endpoints,
            opened_at,
            reset_received: false,
            reset_sent: false,
            error: None,
        };
        if let Some(previous) = self.open.insert(socket, connection) {
            // Its close was lost: it ended, we cannot say how.
            self.by_endpoints.remove(&previous.endpoints);
            out.push(Update::Closed {
                identity: previous.identity,
                end: End::Unknown,
                duration: None,
            });
        }
        self.by_endpoints.insert(endpoints, socket);
        out.push(Update::Opened(identity));
    }

    fn close(
        &mut self,
        socket: u64,
        endpoints: Endpoints,
        at: Nanos,
        old_state: u8,
        kernel_opened_at: Option<Nanos>,
        out: &mut Vec<Update>,
    ) {
        let connection = match self.open.remove(&socket) {
            Some(mut connection) => {
                self.by_endpoints.remove(&connection.endpoints);
                if kernel_opened_at.is_none() {
                    out.push(Update::KernelStateEvicted);
                }
                connection.opened_at = connection.opened_at.or(kernel_opened_at);
                connection
            }
            // The kernel saw it open but its OPEN event was lost: count it now, whole.
            None if kernel_opened_at.is_some() => {
                self.open(socket, endpoints, kernel_opened_at, out);
                let Some(connection) = self.open.remove(&socket) else {
                    return;
                };
                self.by_endpoints.remove(&connection.endpoints);
                connection
            }
            None => {
                out.push(Update::UntrackedClose);
                return;
            }
        };
        let reset_received = connection.reset_received;
        self.closing.insert(
            socket,
            Closing {
                connection,
                closed_at: at,
                old_state,
            },
        );
        // Nothing that comes later can change a received reset: classify at once.
        if reset_received {
            self.finish(socket, out);
        }
    }

    fn find_mut(&mut self, socket: u64) -> Option<&mut Connection> {
        match self.open.get_mut(&socket) {
            Some(connection) => Some(connection),
            None => self
                .closing
                .get_mut(&socket)
                .map(|closing| &mut closing.connection),
        }
    }

    fn reset(&mut self, socket: u64, direction: Direction, out: &mut Vec<Update>) {
        let Some(connection) = self.find_mut(socket) else {
            return;
        };
        let already = match direction {
            Direction::Received => std::mem::replace(&mut connection.reset_received, true),
            Direction::Sent => std::mem::replace(&mut connection.reset_sent, true),
        };
        if !already {
            out.push(Update::Reset(connection.identity.clone(), direction));
        }
    }

    fn error_report(&mut self, endpoints: Endpoints, at: Nanos, errno: u16) {
        let closing = self
            .closing
            .values_mut()
            .find(|closing| closing.connection.endpoints == endpoints);
        let connection = match closing {
            Some(closing) => &mut closing.connection,
            None => match self.by_endpoints.get(&endpoints) {
                Some(socket) => match self.open.get_mut(socket) {
                    Some(connection) => connection,
                    None => return,
                },
                None => return,
            },
        };
        connection.error = Some((at, errno));
    }

    fn finish(&mut self, socket: u64, out: &mut Vec<Update>) {
        let Some(Closing {
            connection,
            closed_at,
            old_state,
        }) = self.closing.remove(&socket)
        else {
            return;
        };
        let errno = connection.error.map(|(_, errno)| errno);
        let end = classify_end(
            connection.reset_received,
            connection.reset_sent,
            errno,
            old_state,
        );
        out.push(Update::Closed {
            identity: connection.identity,
            end,
            duration: connection
                .opened_at
                .map(|opened_at| closed_at.saturating_sub(opened_at)),
        });
    }

    /// Drops everything in its grace period at once (at shutdown), classifying it.
    pub fn flush(&mut self, out: &mut Vec<Update>) {
        let sockets: Vec<u64> = self.closing.keys().copied().collect();
        for socket in sockets {
            self.finish(socket, out);
        }
    }
}

/// How a connection ended, from what was seen of it. A received RST explains everything after
/// it; ETIMEDOUT (which a keepalive failure reports along with the RST it sends) is more telling
/// than the RST; an error stands on its own; a FIN exchange shows in the state it closed from.
pub fn classify_end(
    reset_received: bool,
    reset_sent: bool,
    errno: Option<u16>,
    old_state: u8,
) -> End {
    if reset_received {
        End::ResetReceived
    } else if errno == Some(ETIMEDOUT) {
        End::Timeout
    } else if reset_sent {
        End::ResetSent
    } else if errno.is_some() {
        End::Error
    } else if matches!(
        old_state,
        tcp_state::FIN_WAIT2 | tcp_state::TIME_WAIT | tcp_state::CLOSING | tcp_state::LAST_ACK
    ) {
        End::Fin
    } else {
        End::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_ports;

    const SOCK: u64 = 0xffff_0000_0000_1000;
    const SECOND: Nanos = 1_000_000_000;

    fn model() -> ConnectionModel {
        ConnectionModel::new(parse_ports("143=imap,587=submission").unwrap())
    }

    fn server_side() -> Endpoints {
        Endpoints {
            local: "10.0.2.2:143".parse().unwrap(),
            remote: "10.0.1.2:40000".parse().unwrap(),
        }
    }

    fn identity(service: &str, role: Role, remote: &str) -> Identity {
        Identity {
            service: Arc::from(service),
            role,
            remote: remote.parse().unwrap(),
        }
    }

    fn open(at: Nanos) -> Event {
        Event::Open {
            at,
            socket: SOCK,
            endpoints: server_side(),
        }
    }

    fn close(at: Nanos, old_state: u8, opened_at: Option<Nanos>) -> Event {
        Event::Close {
            at,
            socket: SOCK,
            endpoints: server_side(),
            old_state,
            opened_at,
            retransmits: 0,
            first_fin: None,
        }
    }

    fn run(events: &[Event]) -> Vec<Update> {
        let mut model = model();
        let mut out = Vec::new();
        for event in events {
            model.apply(*event, &mut out);
        }
        model.expire(u64::MAX, &mut out);
        out
    }

    fn ends(updates: &[Update]) -> Vec<End> {
        updates
            .iter()
            .filter_map(|update| match update {
                Update::Closed { end, .. } => Some(*end),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn role_follows_the_service_port() {
        let model = model();
        assert_eq!(
            model.identify(&server_side()),
            Some(identity("imap", Role::Server, "10.0.1.2"))
        );
        let client = Endpoints {
            local: "10.0.1.2:40000".parse().unwrap(),
            remote: "10.0.2.2:587".parse().unwrap(),
        };
        assert_eq!(
            model.identify(&client),
            Some(identity("submission", Role::Client, "10.0.2.2"))
        );
        let neither = Endpoints {
            local: "10.0.1.2:40000".parse().unwrap(),
            remote: "10.0.2.2:8143".parse().unwrap(),
        };
        assert_eq!(model.identify(&neither), None);
    }

    #[test]
    fn fin_close_with_duration() {
        let updates = run(&[
            open(SECOND),
            close(91 * SECOND, tcp_state::LAST_ACK, Some(SECOND)),
        ]);
        assert_eq!(
            updates,
            vec![
                Update::Opened(identity("imap", Role::Server, "10.0.1.2")),
                Update::Closed {
                    identity: identity("imap", Role::Server, "10.0.1.2"),
                    end: End::Fin,
                    duration: Some(90 * SECOND),
                },
            ]
        );
    }

    #[test]
    fn reset_received_before_close_is_classified_at_once() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(
            Event::ResetReceived {
                at: 1,
                socket: SOCK,
            },
            &mut out,
        );
        model.apply(close(2, tcp_state::ESTABLISHED, Some(0)), &mut out);
        assert_eq!(ends(&out), vec![End::ResetReceived]);
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn abort_reset_sent_after_close_is_waited_for() {
        // SO_LINGER 0: the kernel moves to CLOSE first, then sends the RST, then reports
        // ECONNRESET.
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(close(SECOND, tcp_state::ESTABLISHED, Some(0)), &mut out);
        model.expire(SECOND + 1, &mut out);
        assert_eq!(
            ends(&out),
            vec![],
            "classified before its grace period ended"
        );
        model.apply(
            Event::ResetSent {
                at: SECOND + 2,
                socket: SOCK,
            },
            &mut out,
        );
        model.apply(
            Event::ErrorReport {
                at: SECOND + 3,
                endpoints: server_side(),
                errno: 104,
            },
            &mut out,
        );
        model.expire(SECOND + CLOSE_GRACE_NS, &mut out);
        assert_eq!(ends(&out), vec![End::ResetSent]);
        assert!(out.contains(&Update::Reset(
            identity("imap", Role::Server, "10.0.1.2"),
            Direction::Sent
        )));
    }

    #[test]
    fn timeout_after_close_is_matched_by_endpoints() {
        let updates = run(&[
            open(0),
            Event::Retransmit {
                at: 1,
                socket: SOCK,
            },
            close(2, tcp_state::ESTABLISHED, Some(0)),
            Event::ErrorReport {
                at: 3,
                endpoints: server_side(),
                errno: ETIMEDOUT,
            },
        ]);
        assert_eq!(ends(&updates), vec![End::Timeout]);
        assert!(updates.contains(&Update::Retransmit(identity(
            "imap",
            Role::Server,
            "10.0.1.2"
        ))));
    }

    #[test]
    fn error_reported_for_another_connection_is_not_attributed() {
        let other = Endpoints {
            local: "10.0.2.2:143".parse().unwrap(),
            remote: "10.0.1.2:40001".parse().unwrap(),
        };
        let updates = run(&[
            open(0),
            close(2, tcp_state::FIN_WAIT2, Some(0)),
            Event::ErrorReport {
                at: 3,
                endpoints: other,
                errno: ETIMEDOUT,
            },
        ]);
        assert_eq!(ends(&updates), vec![End::Fin]);
    }

    #[test]
    fn end_classification_priorities() {
        use tcp_state::*;
        assert_eq!(
            classify_end(true, true, Some(ETIMEDOUT), LAST_ACK),
            End::ResetReceived
        );
        assert_eq!(
            classify_end(false, true, Some(ETIMEDOUT), ESTABLISHED),
            End::Timeout
        );
        assert_eq!(
            classify_end(false, true, Some(104), ESTABLISHED),
            End::ResetSent
        );
        assert_eq!(
            classify_end(false, false, Some(113), ESTABLISHED),
            End::Error
        );
        for state in [FIN_WAIT2, TIME_WAIT, CLOSING, LAST_ACK] {
            assert_eq!(classify_end(false, false, None, state), End::Fin);
        }
        assert_eq!(classify_end(false, false, None, FIN_WAIT1), End::Unknown);
        assert_eq!(classify_end(false, false, None, ESTABLISHED), End::Unknown);
    }

    #[test]
    fn lost_open_is_recovered_from_the_kernel_state() {
        let updates = run(&[close(10 * SECOND, tcp_state::LAST_ACK, Some(4 * SECOND))]);
        assert_eq!(
            updates,
            vec![
                Update::Opened(identity("imap", Role::Server, "10.0.1.2")),
                Update::Closed {
                    identity: identity("imap", Role::Server, "10.0.1.2"),
                    end: End::Fin,
                    duration: Some(6 * SECOND),
                },
            ]
        );
    }

    #[test]
    fn close_of_a_connection_older_than_the_agent_is_untracked() {
        assert_eq!(
            run(&[close(1, tcp_state::LAST_ACK, None)]),
            vec![Update::UntrackedClose]
        );
    }

    #[test]
    fn eviction_from_the_kernel_map_keeps_the_user_space_start() {
        let updates = run(&[open(SECOND), close(3 * SECOND, tcp_state::LAST_ACK, None)]);
        assert!(updates.contains(&Update::KernelStateEvicted));
        assert!(updates.contains(&Update::Closed {
            identity: identity("imap", Role::Server, "10.0.1.2"),
            end: End::Fin,
            duration: Some(2 * SECOND),
        }));
    }

    #[test]
    fn reused_socket_address_settles_the_previous_connection_first() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(close(5, tcp_state::LAST_ACK, Some(0)), &mut out);
        model.apply(open(6), &mut out);
        model.apply(
            Event::ResetSent {
                at: 7,
                socket: SOCK,
            },
            &mut out,
        );
        assert_eq!(
            ends(&out),
            vec![End::Fin],
            "the RST belongs to the new connection"
        );
        assert_eq!(model.open_count(), 1);
    }

    #[test]
    fn events_for_unknown_sockets_are_ignored() {
        assert_eq!(
            run(&[
                Event::ResetReceived { at: 1, socket: 7 },
                Event::Retransmit { at: 1, socket: 7 },
                Event::IdleGapEnd {
                    at: 1,
                    socket: 7,
                    gap: 1
                },
            ]),
            vec![]
        );
    }
}
