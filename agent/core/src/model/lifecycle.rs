//! Kernel events applied to the model: opens, adoptions, closes, and what happens to an open
//! connection in between (resets, retransmissions, idle gaps and their answers, stalls, ICMP
//! errors and socket errors). A closed connection waits for its grace period in `closing`, then
//! is settled by `classify`.

use super::{
    CLOSE_GRACE_NS, CLOSES_DURING_SCAN_MAX, ConnectionModel, PmtuClues, ResetVerdict, Services,
    Update,
    classify::Closing,
    gap_survived,
    table::{Connection, Key, UnansweredGap},
};
use crate::events::{Endpoints, Event, Nanos, Side, TcpState};
use idlecut_api::vocabulary::{Direction, End, Role, Signature, StallOutcome};

/// What a close event says, as the model uses it.
struct Close {
    at: Nanos,
    socket: u64,
    endpoints: Endpoints,
    netns: u32,
    old_state: TcpState,
    /// When the kernel saw it established, if it still had state for it.
    kernel_opened_at: Option<Nanos>,
    stalled_for: Option<Nanos>,
}

impl ConnectionModel {
    pub fn apply(&mut self, event: Event, out: &mut Vec<Update>) {
        match event {
            Event::Open {
                at,
                socket,
                endpoints,
                netns,
                initiated_by,
            } => {
                let role = initiated_by.map(|side| match side {
                    Side::Local => Role::Client,
                    Side::Remote => Role::Server,
                });
                self.open(socket, endpoints, netns, Some(at), role, out);
            }
            Event::Adopted { socket, cookie, .. } => self.adopt(socket, cookie),
            Event::Close {
                at,
                socket,
                endpoints,
                netns,
                old_state,
                opened_at,
                stalled_for,
                awaiting_answer: _,
                retransmits: _,
                first_fin: _,
            } => self.close(
                Close {
                    at,
                    socket,
                    endpoints,
                    netns,
                    old_state,
                    kernel_opened_at: opened_at,
                    stalled_for,
                },
                out,
            ),
            Event::ResetReceived { at, socket, ttls } => {
                let verdict = ResetVerdict::received(ttls);
                self.reset(socket, Direction::Received, verdict, out);
                self.cut_by_reset(socket, at, out);
            }
            Event::ResetSent { socket, .. } => {
                self.reset(socket, Direction::Sent, ResetVerdict::sent(), out);
            }
            Event::Retransmit {
                socket,
                soft_error,
                segment,
                ..
            } => {
                if let Some((connection, services)) = self.find_mut(socket) {
                    connection.retransmits = connection.retransmits.saturating_add(1);
                    // An ICMP error since the peer last acknowledged anything: the first gap's
                    // segment it answered makes the gap's cut an ICMP one, whatever the end
                    // reports (fentry on tcp_v4_err is not needed to see it).
                    let new_soft_error = connection.edit_transient(|t| {
                        if let Some(unanswered) = &mut t.unanswered {
                            unanswered.retransmitted = true;
                            unanswered.icmp |= soft_error.is_some();
                        }
                        let new = soft_error.filter(|&errno| t.soft_error != Some(errno));
                        t.soft_error = soft_error;
                        if let Some(segment) = segment {
                            match &mut t.pmtu {
                                Some(clues) => clues.add(segment),
                                None => t.pmtu = Some(PmtuClues::new(segment)),
                            }
                        }
                        new
                    });
                    let identity = connection.identity(services);
                    if let Some(errno) = new_soft_error {
                        out.push(Update::SoftIcmpError {
                            identity: identity.clone(),
                            errno,
                        });
                    }
                    out.push(Update::Retransmit(identity));
                }
            }
            Event::ErrorReport {
                at,
                endpoints,
                errno,
            } => self.error_report(endpoints, at, errno),
            Event::IdleGapEnd {
                at,
                socket,
                gap,
                first,
            } => self.idle_gap_end(socket, at, gap, first, out),
            Event::GapAnswered { socket, .. } => {
                if let Some(connection) = self.table.get_mut(Key::Socket(socket))
                    && let Some(unanswered) = connection.edit_transient(|t| t.unanswered.take())
                {
                    let identity = connection.identity(&self.services);
                    gap_survived(connection, identity, unanswered.gap, out);
                }
            }
            Event::StallRecovered {
                socket,
                stalled_for,
                ..
            } => {
                if let Some(connection) = self.table.get_mut(Key::Socket(socket)) {
                    // The peer was heard: what this stall's sizes said is told now, or never.
                    let clues = connection.edit_transient(|t| t.pmtu.take());
                    let identity = connection.identity(&self.services);
                    if let Some((from, to)) = clues.and_then(|clues| clues.mss_lowered()) {
                        out.push(Update::MssLowered {
                            identity: identity.clone(),
                            from,
                            to,
                        });
                    }
                    out.push(Update::Stall {
                        identity,
                        duration: stalled_for,
                        outcome: StallOutcome::Recovered,
                    });
                }
            }
            Event::IcmpError {
                endpoints,
                icmp_type,
                code,
                ..
            } => {
                let Some(key) = self.table.find(&endpoints, 0) else {
                    return;
                };
                if let Some(connection) = self.table.get_mut(key) {
                    connection.edit_transient(|t| {
                        if let Some(unanswered) = &mut t.unanswered {
                            unanswered.icmp = true;
                        }
                    });
                    out.push(Update::IcmpError {
                        identity: connection.identity(&self.services),
                        icmp_type,
                        code,
                    });
                }
            }
        }
    }

    /// Settles what waited for its grace period to end at kernel time `now`: closed
    /// connections are classified, peer-ended gaps without a RST count as survived.
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
        let (table, services) = (&mut self.table, &self.services);
        self.peer_ended_gaps.retain(|&socket| {
            let Some(connection) = table.get_mut(Key::Socket(socket)) else {
                return false;
            };
            match connection.transient().peer_ended_gap {
                Some((at, gap)) if now >= at.saturating_add(CLOSE_GRACE_NS) => {
                    connection.edit_transient(|t| t.peer_ended_gap = None);
                    let identity = connection.identity(services);
                    gap_survived(connection, identity, gap, out);
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
    }

    fn open(
        &mut self,
        socket: u64,
        endpoints: Endpoints,
        netns: u32,
        opened_at: Option<Nanos>,
        role: Option<Role>,
        out: &mut Vec<Update>,
    ) {
        // A socket address is reused only after its previous connection closed: settle that
        // one first so that late facts are not attributed to the new connection.
        self.finish(socket, out);
        // A lost OPEN met at its close has no time: the registration's own bounds apply.
        if self.own.contains(&endpoints, opened_at.unwrap_or(0)) {
            return;
        }
        let Some(kind) = self.services.kind_as(&endpoints, role) else {
            return;
        };
        let connection =
            Connection::new(kind, &endpoints, netns, opened_at, opened_at.unwrap_or(0));
        let identity = connection.identity(&self.services);
        if let Some(previous) = self.table.insert(Key::Socket(socket), connection) {
            // Its close was lost and nothing is known of when: it ended, we cannot say how.
            out.push(Update::Closed {
                identity: previous.identity(&self.services),
                end: End::Unknown,
                duration: None,
                keepalive: previous.keepalive.map(|k| k.setting),
            });
        }
        out.push(Update::Opened(identity));
    }

    /// A kernel program met a scanned connection: from now on it is known by its socket.
    fn adopt(&mut self, socket: u64, cookie: u64) {
        if let Some(connection) = self.table.remove(Key::Cookie(cookie)) {
            self.table.insert(Key::Socket(socket), connection);
        }
    }

    fn close(&mut self, close: Close, out: &mut Vec<Update>) {
        let Close {
            at,
            socket,
            endpoints,
            netns,
            old_state,
            kernel_opened_at,
            stalled_for,
        } = close;
        self.note_close_during_scan(at, netns, endpoints);
        if self.own.closed(&endpoints, at) {
            return;
        }
        let connection = match self.table.remove(Key::Socket(socket)) {
            Some(mut connection) => {
                // A gap the peer ended just before the close is settled by the close itself.
                if let Some((_, gap)) = connection.edit_transient(|t| t.peer_ended_gap.take()) {
                    let identity = connection.identity(&self.services);
                    gap_survived(&mut connection, identity, gap, out);
                }
                // A seen start with no kernel state left: the LRU map evicted it. (Scanned
                // connections have no start and may legitimately have no state.)
                if kernel_opened_at.is_none() && connection.opened_at.is_some() {
                    out.push(Update::KernelStateEvicted);
                }
                connection.opened_at = connection.opened_at.or(kernel_opened_at);
                connection
            }
            None => match self.table.find(&endpoints, netns) {
                // Found by a scan and not met by a program: no BTF to adopt it, or its seed
                // not adopted yet. If the kernel saw it open (its OPEN event was lost), it is
                // still the scan's connection, not a second one (counted twice, and the scan's
                // left open in a namespace that may be gone before any scan settles it).
                Some(key @ Key::Cookie(_)) => {
                    let Some(mut connection) = self.table.remove(key) else {
                        return;
                    };
                    connection.opened_at = connection.opened_at.or(kernel_opened_at);
                    connection
                }
                // The kernel saw it open but its OPEN event was lost: count it now, whole.
                _ if kernel_opened_at.is_some() => {
                    self.open(socket, endpoints, netns, kernel_opened_at, None, out);
                    let Some(connection) = self.table.remove(Key::Socket(socket)) else {
                        return;
                    };
                    connection
                }
                _ => match self.found_at_its_close(&endpoints, netns, at) {
                    Some(connection) => {
                        out.push(Update::Discovered(connection.identity(&self.services)));
                        connection
                    }
                    None => {
                        out.push(Update::UntrackedClose);
                        return;
                    }
                },
            },
        };
        let reset_received = connection.reset_received;
        self.closing.insert(
            socket,
            Closing {
                connection,
                closed_at: at,
                old_state,
                stalled_for,
            },
        );
        // Nothing that comes later can change a received reset: classify at once.
        if reset_received {
            self.finish(socket, out);
        }
    }

    /// A connection that closes unknown to the model and to the kernel programs (no state):
    /// older than the agent, or opened while the kernel skipped the program run on its open
    /// (another run of the same program was under way on that CPU). It is the latter when a
    /// scan read its namespace whole before the close: had it been open then, the scan would
    /// have found it. Such a connection is counted like one a scan finds, whole, from what its
    /// close says; one older than the agent stays untracked (`None`).
    fn found_at_its_close(
        &self,
        endpoints: &Endpoints,
        netns: u32,
        at: Nanos,
    ) -> Option<Connection> {
        // A namespace unknown to the programs (0) is never among the scanned ones.
        let (namespaces, finished) = &self.scanned_whole;
        if !namespaces.contains(&netns) || at < *finished {
            return None;
        }
        let kind = self.services.kind(endpoints)?;
        Some(Connection::new(kind, endpoints, netns, None, at))
    }

    /// Every close while a scan is under way, tracked or not (see `closes_during_scan`).
    fn note_close_during_scan(&mut self, at: Nanos, netns: u32, endpoints: Endpoints) {
        if let Some(closes) = &mut self.closes_during_scan
            && closes.len() < CLOSES_DURING_SCAN_MAX
        {
            closes.insert((netns, endpoints), at);
        }
    }

    /// A RST right after the silence ended, or in answer to this host's first segments after
    /// it: the path cut the connection for being idle.
    fn cut_by_reset(&mut self, socket: u64, at: Nanos, out: &mut Vec<Update>) {
        let Some(connection) = self.table.get_mut(Key::Socket(socket)) else {
            return;
        };
        let gap =
            match connection.edit_transient(|t| (t.peer_ended_gap.take(), t.unanswered.take())) {
                (Some((_, gap)), _) | (None, Some(UnansweredGap { gap, .. })) => gap,
                (None, None) => return,
            };
        connection.cut_after_idle = true;
        out.push(Update::Cut {
            identity: connection.identity(&self.services),
            gap,
            signature: Signature::Reset,
            context: connection.cut_context(at, Signature::Reset),
        });
    }

    fn idle_gap_end(
        &mut self,
        socket: u64,
        at: Nanos,
        gap: Nanos,
        first: Side,
        out: &mut Vec<Update>,
    ) {
        let Some(connection) = self.table.get_mut(Key::Socket(socket)) else {
            return;
        };
        match first {
            Side::Remote => {
                // An earlier one still in its grace period is settled first.
                if let Some((_, earlier)) =
                    connection.edit_transient(|t| t.peer_ended_gap.replace((at, gap)))
                {
                    let identity = connection.identity(&self.services);
                    gap_survived(connection, identity, earlier, out);
                } else {
                    self.peer_ended_gaps.push(socket);
                }
            }
            // The first silence this host broke and that is still unanswered is the one that
            // tells when the path gave up.
            Side::Local => {
                connection.edit_transient(|t| {
                    t.unanswered.get_or_insert(UnansweredGap {
                        gap,
                        retransmitted: false,
                        icmp: false,
                    });
                });
            }
        }
    }

    /// An open connection, or one in its close grace period, by socket. (Scanned connections
    /// are adopted before any event refers to their socket.) With the services, to tell its
    /// identity.
    fn find_mut(&mut self, socket: u64) -> Option<(&mut Connection, &Services)> {
        let connection = match self.table.get_mut(Key::Socket(socket)) {
            Some(connection) => connection,
            None => &mut self.closing.get_mut(&socket)?.connection,
        };
        Some((connection, &self.services))
    }

    fn reset(
        &mut self,
        socket: u64,
        direction: Direction,
        verdict: ResetVerdict,
        out: &mut Vec<Update>,
    ) {
        let Some((connection, services)) = self.find_mut(socket) else {
            return;
        };
        let already = match direction {
            Direction::Received => std::mem::replace(&mut connection.reset_received, true),
            Direction::Sent => std::mem::replace(&mut connection.reset_sent, true),
        };
        if !already {
            if direction == Direction::Received {
                connection.edit_transient(|t| t.reset = Some(verdict));
            }
            out.push(Update::Reset(
                connection.identity(services),
                direction,
                verdict,
            ));
        }
    }

    fn error_report(&mut self, endpoints: Endpoints, at: Nanos, errno: u16) {
        if let Some(closing) = self
            .closing
            .values_mut()
            .find(|closing| closing.connection.endpoints() == endpoints)
        {
            closing
                .connection
                .edit_transient(|t| t.error = Some((at, errno)));
        } else if let Some(key) = self.table.find(&endpoints, 0)
            && let Some(connection) = self.table.get_mut(key)
        {
            connection.edit_transient(|t| t.error = Some((at, errno)));
        }
    }
}
