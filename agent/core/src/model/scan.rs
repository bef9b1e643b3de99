//! Scan reconciliation: what a scan of the kernel's socket tables adds to the model (connections
//! older than the agent, inodes, owners, keepalive settings, idle clocks) and what it settles
//! (connections it should have found and did not).

use std::collections::{HashMap, HashSet};

use super::{
    ConnectionModel, Keepalive, Update,
    classify::Closing,
    table::{Connection, Key},
};
use crate::{
    events::{Endpoints, KernelSocket, Nanos, Seed, Side, TcpState},
    scan::KeepaliveObservation,
    scan::Scan,
    scan::Scanned,
};
use idlecut_api::vocabulary::KeepaliveSetting;

impl ConnectionModel {
    /// A scan of the socket tables starts: closes from now on are remembered until it is
    /// taken in (see `closes_during_scan`).
    pub fn scan_started(&mut self) {
        self.closes_during_scan = Some(HashMap::new());
    }

    /// Takes in a scan of the kernel's socket tables (made between `started` and `finished`,
    /// kernel time): connections it knows get their inode, owner and keepalive; connections it
    /// does not know were open before the agent (or their open was lost): they are tracked
    /// from now on, and returned as seeds for the kernel programs to adopt. Connections it
    /// should have found and did not are settled (see `settle_vanished`); their sockets are
    /// returned too, so that their leftover kernel state can be dropped.
    pub fn apply_scan(
        &mut self,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        kernel: &dyn Fn(u64) -> KernelSocket,
        out: &mut Vec<Update>,
    ) -> (Vec<Seed>, Vec<u64>) {
        let vanished = self.settle_vanished(scan, started, finished, kernel, out);
        let mut seeds = Vec::new();
        for scanned in &scan.connections {
            let clocks = (
                finished.saturating_sub(u64::from(scanned.last_received_ms()) * 1_000_000),
                finished.saturating_sub(u64::from(scanned.last_data_sent_ms) * 1_000_000),
            );
            let key = match self.table.find(&scanned.endpoints, scanned.netns) {
                Some(key) => key,
                None => {
                    if !self.track_scanned(scanned, started, finished, out) {
                        continue;
                    }
                    seeds.push(Seed {
                        cookie: scanned.cookie,
                        last_received: clocks.0,
                        last_sent: clocks.1,
                        first_fin: first_fin(scanned.state),
                    });
                    Key::Cookie(scanned.cookie)
                }
            };
            if self.table.get_mut(key).is_some_and(|c| c.netns() == 0) {
                self.table.set_netns(key, scanned.netns);
            }
            let owner = scan.owners.get(&scanned.inode).cloned();
            let Some(connection) = self.table.get_mut(key) else {
                continue;
            };
            connection.cookie = Some(scanned.cookie);
            if owner.is_some() {
                connection.owner = owner;
            }
            connection.scanned_clocks = Some(clocks);
            if let Some(observed) = keepalive(scanned.keepalive) {
                let previous = connection.keepalive.replace(observed);
                if previous.map(|k| k.setting) != Some(observed.setting) {
                    out.push(Update::KeepaliveChanged {
                        identity: connection.identity(&self.services),
                        from: previous.map(|k| k.setting),
                        to: observed.setting,
                    });
                }
            }
        }
        self.closes_during_scan = None;
        self.scanned_whole = (scan.complete.clone(), finished);
        (seeds, vanished)
    }

    /// Starts following a connection the scan found and the model did not know, unless it
    /// closed while the scan ran, is the agent's own, or is not on a watched port. Returns
    /// whether it did.
    fn track_scanned(
        &mut self,
        scanned: &Scanned,
        started: Nanos,
        finished: Nanos,
        out: &mut Vec<Update>,
    ) -> bool {
        let closed_meanwhile = self.closes_during_scan.as_ref().is_some_and(|closes| {
            [scanned.netns, 0].into_iter().any(|netns| {
                closes
                    .get(&(netns, scanned.endpoints))
                    .is_some_and(|&at| at >= started)
            })
        });
        let key = Key::Cookie(scanned.cookie);
        if closed_meanwhile
            || self.table.contains(key)
            || self.own.contains(&scanned.endpoints, finished)
        {
            return false;
        }
        let Some(kind) = self.services.kind(&scanned.endpoints) else {
            return false;
        };
        let connection = Connection::new(kind, &scanned.endpoints, scanned.netns, None, finished);
        let identity = connection.identity(&self.services);
        self.table.insert(key, connection);
        out.push(Update::Discovered(identity));
        true
    }

    /// Connections the scan should have found and did not: they ended while their close went
    /// unseen (the kernel skips a program run when another BPF program is running on that CPU,
    /// or the ring buffer was full). They are settled like any close, from what was seen of
    /// them: one that was stalled (`stall_of` says since when, from the kernel's leftover state)
    /// timed out; otherwise how it ended is unknown. Returns the sockets settled.
    fn settle_vanished(
        &mut self,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        kernel: &dyn Fn(u64) -> KernelSocket,
        out: &mut Vec<Update>,
    ) -> Vec<u64> {
        let found: HashSet<(u32, Endpoints)> = scan
            .connections
            .iter()
            .map(|c| (c.netns, c.endpoints))
            .collect();
        // A deleted namespace is in no scan, so none can tell its connections ended; those
        // whose end the kernel could not report (a ring buffer and its overflow both full)
        // would stay open for ever. In a namespace two scans in a row did not see (by then any
        // end the kernel did report has been taken in), a connection has ended when the kernel
        // programs no longer hold its socket. One no program has met (found by a scan, its
        // adoption not reported) cannot be asked: it is taken as ended too, as a socket that
        // outlives its namespace's deletion is rare (held by a process in another namespace);
        // one the programs still hold stays open.
        let seen: HashSet<u32> = scan
            .complete
            .iter()
            .copied()
            .chain(scan.failures.iter().map(|(ns, _)| ns.inode))
            .chain(scan.connections.iter().map(|c| c.netns))
            .collect();
        let absent: HashSet<u32> = self
            .table
            .iter()
            .map(|(_, c)| c.netns())
            .filter(|&netns| netns != 0 && !seen.contains(&netns))
            .collect();
        let absent_twice =
            |netns: u32| absent.contains(&netns) && self.absent_namespaces.contains(&netns);
        let vanished: Vec<Key> = self
            .table
            .iter()
            .filter(|(key, c)| {
                c.netns() != 0
                    && c.known_since < started
                    && !found.contains(&(c.netns(), c.endpoints()))
                    && (scan.complete.contains(&c.netns())
                        || (absent_twice(c.netns())
                            && match key {
                                Key::Socket(socket) => kernel(*socket) == KernelSocket::Gone,
                                Key::Cookie(_) => true,
                            }))
            })
            .map(|(key, _)| key)
            .collect();
        self.absent_namespaces = absent;
        let mut sockets = Vec::new();
        for key in vanished {
            let Some(connection) = self.table.remove(key) else {
                continue;
            };
            let stalled_for = match key {
                Key::Socket(socket) => {
                    sockets.push(socket);
                    match kernel(socket) {
                        KernelSocket::Followed {
                            stalled_since: Some(since),
                        } => Some(finished.saturating_sub(since)),
                        _ => None,
                    }
                }
                // Never met by a program: no kernel state to tell.
                Key::Cookie(_) => None,
            };
            self.settle(
                Closing {
                    connection,
                    closed_at: finished,
                    old_state: TcpState::Established,
                    stalled_for,
                },
                out,
            );
        }
        sockets
    }
}

/// Who had sent the first FIN, from the state the scan saw the connection in.
fn first_fin(state: TcpState) -> Option<Side> {
    match state {
        TcpState::CloseWait | TcpState::LastAck => Some(Side::Remote),
        TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing => Some(Side::Local),
        _ => None,
    }
}

fn keepalive(observation: KeepaliveObservation) -> Option<Keepalive> {
    match observation {
        KeepaliveObservation::Off => Some(Keepalive {
            setting: KeepaliveSetting::Off,
            interval_ms: None,
        }),
        KeepaliveObservation::On { interval_ms } => Some(Keepalive {
            setting: KeepaliveSetting::from_interval_ms(interval_ms),
            interval_ms: Some(interval_ms),
        }),
        KeepaliveObservation::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Event, ResetTtls},
        model::{ConnectionInfo, tests::*},
    };
    use idlecut_api::vocabulary::{End, Signature};

    const FOLLOWED: KernelSocket = KernelSocket::Followed {
        stalled_since: None,
    };

    fn scanned(keepalive: KeepaliveObservation) -> crate::scan::Scanned {
        crate::scan::Scanned {
            netns: NETNS,
            endpoints: server_side(),
            state: TcpState::Established,
            cookie: 77,
            inode: 5000,
            keepalive,
            last_data_sent_ms: 4000,
            last_data_recv_ms: 3000,
            last_ack_recv_ms: 2000,
        }
    }

    fn scan_into(
        model: &mut ConnectionModel,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        out: &mut Vec<Update>,
    ) -> Vec<Seed> {
        model
            .apply_scan(scan, started, finished, &|_| FOLLOWED, out)
            .0
    }

    fn scan_of(connections: Vec<crate::scan::Scanned>) -> Scan {
        Scan {
            connections,
            ..Scan::default()
        }
    }

    /// A scheduled check's connection: neither its open, nor a scan, nor its close shows.
    #[test]
    fn the_agents_own_connections_are_left_out() {
        let mut model = model();
        let mut out = Vec::new();
        let own = crate::own::OwnConnection {
            local_port: server_side().local.port(),
            remote: server_side().remote,
        };
        model.leave_out(crate::own::OwnNotice::Connecting(own), 0);
        model.apply(open(SECOND), &mut out);
        let scan = scan_of(vec![scanned(KeepaliveObservation::Off)]);
        let seeds = scan_into(&mut model, &scan, 2 * SECOND, 3 * SECOND, &mut out);
        assert!(seeds.is_empty());
        assert_eq!(model.open_count(), 0);
        // A scan that read it before it closed does not bring it back.
        model.scan_started();
        model.apply(
            close(4 * SECOND, TcpState::FinWait2, Some(SECOND)),
            &mut out,
        );
        scan_into(&mut model, &scan, 3 * SECOND, 5 * SECOND, &mut out);
        model.expire(u64::MAX, &mut out);
        assert_eq!(out, vec![], "nothing at all");
        // Once closed it is forgotten: a user's connection on the same addresses later counts.
        model.apply(open(6 * SECOND), &mut out);
        assert_eq!(model.open_count(), 1);
    }

    /// A burst overflowed the ring buffer: a connection's OPEN was lost, a scan found it (by
    /// cookie), and its close came before a program adopted the seed. One connection, closed:
    /// neither counted twice nor left open (its namespace may be deleted next, and then no
    /// scan would ever settle it).
    #[test]
    fn a_scanned_connection_whose_open_was_lost_closes_once() {
        let mut model = model();
        let mut out = Vec::new();
        let scan = scan_of(vec![scanned(KeepaliveObservation::Off)]);
        scan_into(&mut model, &scan, 2 * SECOND, 3 * SECOND, &mut out);
        assert_eq!(model.open_count(), 1);
        model.apply(
            close(4 * SECOND, TcpState::Established, Some(SECOND)),
            &mut out,
        );
        model.expire(u64::MAX, &mut out);
        assert_eq!(model.open_count(), 0);
        let opened = out
            .iter()
            .filter(|u| matches!(u, Update::Opened(_) | Update::Discovered(_)))
            .count();
        let closed = out
            .iter()
            .filter(|u| matches!(u, Update::Closed { .. }))
            .count();
        assert_eq!((opened, closed), (1, 1), "{out:#?}");
    }

    #[test]
    fn a_scan_finds_connections_older_than_the_agent_and_seeds_them() {
        let mut model = model();
        let mut out = Vec::new();
        let scan = scan_of(vec![scanned(KeepaliveObservation::On {
            interval_ms: 60_000,
        })]);
        let seeds = scan_into(&mut model, &scan, 90 * SECOND, 100 * SECOND, &mut out);
        assert_eq!(
            seeds,
            vec![Seed {
                cookie: 77,
                last_received: 98 * SECOND,
                last_sent: 96 * SECOND,
                first_fin: None,
            }]
        );
        assert_eq!(
            out,
            vec![
                Update::Discovered(imap_server()),
                Update::KeepaliveChanged {
                    identity: imap_server(),
                    from: None,
                    to: KeepaliveSetting::Below2h,
                },
            ]
        );
        assert_eq!((model.open_count(), model.pending_adoptions()), (1, 1));
        // Scanned again: nothing new.
        out.clear();
        assert!(scan_into(&mut model, &scan, 200 * SECOND, 200 * SECOND, &mut out).is_empty());
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn an_adopted_connection_is_followed_by_socket_and_its_cut_measured() {
        let mut model = model();
        let mut out = Vec::new();
        let scan = scan_of(vec![scanned(KeepaliveObservation::Off)]);
        scan_into(&mut model, &scan, 0, 100 * SECOND, &mut out);
        out.clear();
        model.apply(
            Event::Adopted {
                at: 400 * SECOND,
                socket: SOCK,
                cookie: 77,
            },
            &mut out,
        );
        assert_eq!(model.pending_adoptions(), 0);
        model.apply(gap_end(400 * SECOND, 302 * SECOND, Side::Local), &mut out);
        model.apply(
            Event::ResetReceived {
                at: 400 * SECOND,
                socket: SOCK,
                ttls: ResetTtls::default(),
            },
            &mut out,
        );
        model.apply(close(400 * SECOND, TcpState::Established, None), &mut out);
        assert_eq!(cuts(&out), vec![(302 * SECOND, Signature::Reset)]);
        assert!(out.contains(&Update::Closed {
            identity: imap_server(),
            end: End::ResetReceived,
            duration: None,
            keepalive: Some(KeepaliveSetting::Off),
        }));
        assert!(!out.contains(&Update::KernelStateEvicted), "{out:?}");
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn a_scanned_connection_never_adopted_is_closed_by_its_endpoints() {
        let mut model = model();
        let mut out = Vec::new();
        scan_into(
            &mut model,
            &scan_of(vec![scanned(KeepaliveObservation::Unknown)]),
            0,
            SECOND,
            &mut out,
        );
        out.clear();
        let updates = {
            model.apply(close(5 * SECOND, TcpState::LastAck, None), &mut out);
            model.expire(u64::MAX, &mut out);
            out
        };
        assert_eq!(ends(&updates), vec![End::Fin]);
        assert!(!updates.contains(&Update::UntrackedClose));
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn a_scanned_connection_that_vanishes_is_settled_like_any_close() {
        let mut model = model();
        let mut out = Vec::new();
        let mut scan = scan_of(vec![scanned(KeepaliveObservation::Off)]);
        scan_into(&mut model, &scan, 0, SECOND, &mut out);
        out.clear();
        scan.connections.clear();
        scan.complete.insert(NETNS);
        let (_, sockets) = model.apply_scan(&scan, 2 * SECOND, 3 * SECOND, &|_| FOLLOWED, &mut out);
        assert!(sockets.is_empty(), "no kernel state to drop");
        assert_eq!(
            out,
            vec![Update::Closed {
                identity: imap_server(),
                end: End::Unknown,
                duration: None,
                keepalive: Some(KeepaliveSetting::Off),
            }]
        );
        assert_eq!(model.open_count(), 0);
        let closed: Vec<_> = model.recently_closed().collect();
        assert_eq!(closed.len(), 1, "shown in the view as ended");
        assert_eq!(closed[0].info.cookie, Some(77));
    }

    #[test]
    fn a_connection_seen_opening_is_not_discovered_again() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        out.clear();
        let seeds = scan_into(
            &mut model,
            &scan_of(vec![scanned(KeepaliveObservation::On {
                interval_ms: 7_200_000,
            })]),
            0,
            2 * SECOND,
            &mut out,
        );
        assert!(seeds.is_empty());
        assert_eq!(
            out,
            vec![Update::KeepaliveChanged {
                identity: imap_server(),
                from: None,
                to: KeepaliveSetting::TwoHoursOrMore,
            }]
        );
        let info: Vec<ConnectionInfo> = model.connections().collect();
        assert_eq!(info.len(), 1);
        assert_eq!((info[0].socket, info[0].cookie), (Some(SOCK), Some(77)));
    }

    /// Seen opening or not (older than the agent): the bench's soak found 81 of 631,540
    /// connections counted closed twice when only closes of unknown connections were kept. A
    /// scan read them open; they closed before it was taken in; it brought them back.
    #[test]
    fn a_connection_that_closed_during_the_scan_is_not_brought_back() {
        for seen_opening in [true, false] {
            let mut model = model();
            let mut out = Vec::new();
            if seen_opening {
                model.apply(open(SECOND), &mut out);
            }
            model.scan_started();
            // The scan reads it open at 4 s; it closes at 5 s; the scan is taken in at 6 s.
            model.apply(close(5 * SECOND, TcpState::LastAck, Some(SECOND)), &mut out);
            model.expire(u64::MAX, &mut out);
            let scan = scan_of(vec![scanned(KeepaliveObservation::Off)]);
            let seeds = scan_into(&mut model, &scan, 4 * SECOND, 6 * SECOND, &mut out);
            assert!(seeds.is_empty(), "seen opening: {seen_opening}");
            assert_eq!(model.open_count(), 0);
            assert!(
                !out.iter().any(|u| matches!(u, Update::Discovered(_))),
                "seen opening: {seen_opening}: {out:?}"
            );
            // The next scan, started after the close, finds a connection on the same
            // addresses: a new one.
            model.scan_started();
            scan_into(&mut model, &scan, 7 * SECOND, 8 * SECOND, &mut out);
            assert_eq!(model.open_count(), 1);
        }
    }

    #[test]
    fn a_connection_whose_close_was_lost_is_settled_by_the_next_scan() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        out.clear();
        let mut scan = scan_of(vec![]);
        // Its namespace was not read completely: nothing can be concluded.
        scan_into(&mut model, &scan, 5 * SECOND, 6 * SECOND, &mut out);
        assert_eq!(model.open_count(), 1);
        scan.complete.insert(NETNS);
        scan_into(&mut model, &scan, 5 * SECOND, 6 * SECOND, &mut out);
        assert_eq!(model.open_count(), 0);
        assert_eq!(
            out,
            vec![Update::Closed {
                identity: imap_server(),
                end: End::Unknown,
                duration: Some(5 * SECOND),
                keepalive: None,
            }]
        );
    }

    #[test]
    fn a_lost_close_in_a_stall_after_a_gap_is_still_a_blackhole_cut() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        model.apply(gap_end(100 * SECOND, 90 * SECOND, Side::Local), &mut out);
        model.apply(retransmit(100 * SECOND + 1, 0), &mut out);
        out.clear();
        let mut scan = scan_of(vec![]);
        scan.complete.insert(NETNS);
        let (_, vanished) = model.apply_scan(
            &scan,
            110 * SECOND,
            120 * SECOND,
            &|_| KernelSocket::Followed {
                stalled_since: Some(100 * SECOND),
            },
            &mut out,
        );
        assert_eq!(vanished, vec![SOCK]);
        assert_eq!(cuts(&out), vec![(90 * SECOND, Signature::Blackhole)]);
        assert_eq!(ends(&out), vec![End::Timeout]);
    }

    /// Its end lost for good (a ring buffer and its overflow both full), then its namespace
    /// deleted: no scan can read it. Once two scans in a row have not seen the namespace and
    /// the kernel holds no state for the socket, it has ended; while the socket lives (held
    /// open, keeping the deleted namespace alive) it stays open.
    #[test]
    fn a_connection_in_a_deleted_namespace_ends_once_its_socket_is_gone() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        out.clear();
        let elsewhere = scan_of(vec![]);
        let alive = |_| FOLLOWED;
        let gone = |_| KernelSocket::Gone;
        model.apply_scan(&elsewhere, 10 * SECOND, 11 * SECOND, &gone, &mut out);
        assert_eq!(
            model.open_count(),
            1,
            "one scan without the namespace is not enough"
        );
        model.apply_scan(&elsewhere, 20 * SECOND, 21 * SECOND, &alive, &mut out);
        model.apply_scan(&elsewhere, 30 * SECOND, 31 * SECOND, &alive, &mut out);
        assert_eq!(model.open_count(), 1, "its socket still lives");
        let (_, vanished) = model.apply_scan(&elsewhere, 40 * SECOND, 41 * SECOND, &gone, &mut out);
        assert_eq!(vanished, vec![SOCK]);
        assert_eq!(model.open_count(), 0);
        assert_eq!(ends(&out), vec![End::Unknown]);
        // Found by a scan and never met by a program: no kernel state to ask; its namespace
        // gone for two scans, it has ended.
        let mut model_3 = self::model();
        scan_into(
            &mut model_3,
            &scan_of(vec![scanned(KeepaliveObservation::Off)]),
            0,
            SECOND,
            &mut out,
        );
        assert_eq!(model_3.open_count(), 1);
        for at in [10, 20] {
            model_3.apply_scan(&elsewhere, at * SECOND, (at + 1) * SECOND, &alive, &mut out);
        }
        assert_eq!(model_3.open_count(), 0);
        // A namespace the scan saw but could not read is not absent.
        let mut model_2 = self::model();
        model_2.apply(open(SECOND), &mut out);
        let mut unreadable = scan_of(vec![]);
        unreadable.failures.push((
            crate::scan::Netns {
                inode: NETNS,
                path: "/proc/1/ns/net".into(),
            },
            "permission denied".into(),
        ));
        for at in [10, 20, 30] {
            model_2.apply_scan(&unreadable, at * SECOND, (at + 1) * SECOND, &gone, &mut out);
        }
        assert_eq!(model_2.open_count(), 1);
    }

    #[test]
    fn a_connection_opened_during_the_scan_is_not_settled() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(5 * SECOND), &mut out);
        let mut scan = scan_of(vec![]);
        scan.complete.insert(NETNS);
        scan_into(&mut model, &scan, 4 * SECOND, 6 * SECOND, &mut out);
        assert_eq!(model.open_count(), 1);
    }

    /// The kernel skipped the program run on a connection's open (no OPEN, no kernel state)
    /// and it closed before the next scan: after a scan that read its namespace whole, it
    /// cannot be older than the agent, and is counted whole, like a connection a scan finds.
    #[test]
    fn a_close_whose_open_the_kernel_skipped_is_counted_whole() {
        let mut model = model();
        let mut out = Vec::new();
        let mut scan = scan_of(vec![]);
        scan.complete.insert(NETNS);
        scan_into(&mut model, &scan, SECOND, 2 * SECOND, &mut out);
        model.apply(close(5 * SECOND, TcpState::LastAck, None), &mut out);
        model.expire(u64::MAX, &mut out);
        assert_eq!(
            out,
            vec![
                Update::Discovered(imap_server()),
                Update::Closed {
                    identity: imap_server(),
                    end: End::Fin,
                    duration: None,
                    keepalive: None,
                },
            ]
        );
        assert_eq!(model.open_count(), 0);
    }

    /// Without a whole scan of its namespace before it, a close with no known open may be of a
    /// connection older than the agent: untracked, as before the first scan.
    #[test]
    fn a_close_before_its_namespace_was_read_whole_stays_untracked() {
        for (complete, close_at) in [(false, 5 * SECOND), (true, SECOND + SECOND / 2)] {
            let mut model = model();
            let mut out = Vec::new();
            let mut scan = scan_of(vec![]);
            if complete {
                scan.complete.insert(NETNS);
            }
            scan_into(&mut model, &scan, SECOND, 2 * SECOND, &mut out);
            model.apply(close(close_at, TcpState::LastAck, None), &mut out);
            model.expire(u64::MAX, &mut out);
            assert_eq!(out, vec![Update::UntrackedClose], "complete: {complete}");
        }
    }
}
