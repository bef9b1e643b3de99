//! The model's lifecycle, driven by kernel events as the pipeline feeds them.

use idlecut_ebpf::tcp_state;

use super::{
    classify::{EHOSTUNREACH, ETIMEDOUT},
    *,
};
use crate::{
    config::parse_ports,
    events::{Event, ResetTtls, Side},
};

pub(super) const SOCK: u64 = 0xffff_0000_0000_1000;
pub(super) const NETNS: u32 = 4026532000;
pub(super) const SECOND: Nanos = 1_000_000_000;

pub(super) fn model() -> ConnectionModel {
    ConnectionModel::new(parse_ports("143=imap,587=submission").unwrap())
}

pub(super) fn server_side() -> Endpoints {
    Endpoints {
        local: "10.0.2.2:143".parse().unwrap(),
        remote: "10.0.1.2:40000".parse().unwrap(),
    }
}

pub(super) fn identity(service: &str, role: Role, remote: &str) -> Identity {
    Identity {
        service: Arc::from(service),
        role,
        remote: remote.parse().unwrap(),
    }
}

pub(super) fn open(at: Nanos) -> Event {
    Event::Open {
        at,
        socket: SOCK,
        endpoints: server_side(),
        netns: NETNS,
        initiated_by: Some(Side::Remote),
    }
}

pub(super) fn close(at: Nanos, old_state: u8, opened_at: Option<Nanos>) -> Event {
    Event::Close {
        at,
        socket: SOCK,
        endpoints: server_side(),
        netns: NETNS,
        old_state,
        opened_at,
        retransmits: 0,
        first_fin: None,
        stalled_for: None,
        awaiting_answer: false,
    }
}

pub(super) fn run(events: &[Event]) -> Vec<Update> {
    let mut model = model();
    let mut out = Vec::new();
    for event in events {
        model.apply(*event, &mut out);
    }
    model.expire(u64::MAX, &mut out);
    out
}

pub(super) fn ends(updates: &[Update]) -> Vec<End> {
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

/// Replays what the benchmark's churn saw (1 connection in 10k-40k uncounted): a client on
/// loopback whose ephemeral port happened to be 4190, a watched port (sieve). Judged by ports
/// alone, its end was `sieve` server; the kernel says which side connected, and that decides.
#[test]
fn a_client_whose_ephemeral_port_is_a_watched_one_stays_the_client() {
    let mut model = ConnectionModel::new(parse_ports("143=imap,4190=sieve").unwrap());
    let client_end = Endpoints {
        local: "127.0.0.1:4190".parse().unwrap(),
        remote: "127.0.0.1:143".parse().unwrap(),
    };
    let server_end = Endpoints {
        local: client_end.remote,
        remote: client_end.local,
    };
    let (client_socket, server_socket) = (SOCK, SOCK + 0x100);
    let event = |socket, endpoints, initiated_by| Event::Open {
        at: SECOND,
        socket,
        endpoints,
        netns: NETNS,
        initiated_by: Some(initiated_by),
    };
    let closed = |socket, endpoints, old_state| Event::Close {
        at: 2 * SECOND,
        socket,
        endpoints,
        netns: NETNS,
        old_state,
        opened_at: Some(SECOND),
        retransmits: 0,
        first_fin: None,
        stalled_for: None,
        awaiting_answer: false,
    };
    let mut out = Vec::new();
    for e in [
        event(client_socket, client_end, Side::Local),
        event(server_socket, server_end, Side::Remote),
        closed(client_socket, client_end, tcp_state::FIN_WAIT2),
        closed(server_socket, server_end, tcp_state::LAST_ACK),
    ] {
        model.apply(e, &mut out);
    }
    model.flush(&mut out);
    let imap = |role| identity("imap", role, "127.0.0.1");
    let opened: Vec<&Identity> = out
        .iter()
        .filter_map(|u| match u {
            Update::Opened(identity) => Some(identity),
            _ => None,
        })
        .collect();
    assert_eq!(opened, [&imap(Role::Client), &imap(Role::Server)]);
    let closed: Vec<&Identity> = out
        .iter()
        .filter_map(|u| match u {
            Update::Closed { identity, .. } => Some(identity),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 2, "{out:?}");
    assert!(
        closed.iter().all(|identity| &*identity.service == "imap"),
        "{out:?}"
    );
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
                keepalive: None,
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
            ttls: ResetTtls::default(),
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
        Direction::Sent,
        ResetVerdict::sent(),
    )));
}

#[test]
fn timeout_after_close_is_matched_by_endpoints() {
    let updates = run(&[
        open(0),
        Event::Retransmit {
            at: 1,
            socket: SOCK,
            stalled_for: 0,
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
                keepalive: None,
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
        keepalive: None,
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
            Event::ResetReceived {
                at: 1,
                socket: 7,
                ttls: ResetTtls::default(),
            },
            Event::Retransmit {
                at: 1,
                socket: 7,
                stalled_for: 0
            },
            Event::IdleGapEnd {
                at: 1,
                socket: 7,
                gap: 1,
                first: Side::Local,
            },
        ]),
        vec![]
    );
}

pub(super) fn imap_server() -> Identity {
    identity("imap", Role::Server, "10.0.1.2")
}

pub(super) fn gap_end(at: Nanos, gap: Nanos, first: Side) -> Event {
    Event::IdleGapEnd {
        at,
        socket: SOCK,
        gap,
        first,
    }
}

pub(super) fn retransmit(at: Nanos, stalled_for: Nanos) -> Event {
    Event::Retransmit {
        at,
        socket: SOCK,
        stalled_for,
    }
}

pub(super) fn timed_out(at: Nanos, stalled_for: Nanos) -> [Event; 2] {
    [
        Event::Close {
            at,
            socket: SOCK,
            endpoints: server_side(),
            netns: NETNS,
            old_state: tcp_state::ESTABLISHED,
            opened_at: Some(0),
            retransmits: 3,
            first_fin: None,
            stalled_for: Some(stalled_for),
            awaiting_answer: true,
        },
        Event::ErrorReport {
            at,
            endpoints: server_side(),
            errno: ETIMEDOUT,
        },
    ]
}

pub(super) fn cuts(updates: &[Update]) -> Vec<(Nanos, Signature)> {
    updates
        .iter()
        .filter_map(|update| match update {
            Update::Cut { gap, signature, .. } => Some((*gap, *signature)),
            _ => None,
        })
        .collect()
}

pub(super) fn survived(updates: &[Update]) -> Vec<Nanos> {
    updates
        .iter()
        .filter_map(|update| match update {
            Update::IdleGapSurvived(_, gap) => Some(*gap),
            _ => None,
        })
        .collect()
}

#[test]
fn a_gap_this_host_ended_and_the_peer_answered_is_survived() {
    let updates = run(&[
        open(0),
        gap_end(300 * SECOND, 290 * SECOND, Side::Local),
        Event::GapAnswered {
            at: 300 * SECOND + 1,
            socket: SOCK,
            delay: 1,
        },
    ]);
    assert_eq!(survived(&updates), vec![290 * SECOND]);
    assert!(cuts(&updates).is_empty());
}

#[test]
fn a_gap_this_host_ended_then_closed_with_a_fin_exchange_is_survived() {
    // IMAP LOGOUT after IDLE: the answer arrives while this host's FIN is out, where no probe
    // sees it; the completed FIN exchange acknowledged the bytes sent after the gap.
    for closed_from in [
        tcp_state::FIN_WAIT2,
        tcp_state::TIME_WAIT,
        tcp_state::LAST_ACK,
    ] {
        let updates = run(&[
            open(0),
            gap_end(300 * SECOND, 290 * SECOND, Side::Local),
            close(300 * SECOND + 2, closed_from, Some(0)),
        ]);
        assert_eq!(survived(&updates), vec![290 * SECOND], "from {closed_from}");
        assert!(cuts(&updates).is_empty());
    }
    // Closed before anything acknowledged the FIN: nobody knows whether the path carried it.
    let updates = run(&[
        open(0),
        gap_end(300 * SECOND, 290 * SECOND, Side::Local),
        close(300 * SECOND + 2, tcp_state::FIN_WAIT1, Some(0)),
    ]);
    assert!(survived(&updates).is_empty());
    assert!(cuts(&updates).is_empty());
}

#[test]
fn a_gap_the_peer_ended_is_survived_after_the_grace_period() {
    let mut model = model();
    let mut out = Vec::new();
    model.apply(open(0), &mut out);
    model.apply(gap_end(100 * SECOND, 60 * SECOND, Side::Remote), &mut out);
    model.expire(100 * SECOND + 1, &mut out);
    assert!(
        survived(&out).is_empty(),
        "settled before its grace period ended"
    );
    model.expire(100 * SECOND + CLOSE_GRACE_NS, &mut out);
    assert_eq!(survived(&out), vec![60 * SECOND]);
}

#[test]
fn a_rst_that_ends_the_silence_is_a_cut_not_a_survived_gap() {
    // Azure's "TCP reset on idle": the middlebox's RST is what the host hears first.
    let updates = run(&[
        open(0),
        gap_end(240 * SECOND, 240 * SECOND, Side::Remote),
        Event::ResetReceived {
            at: 240 * SECOND,
            socket: SOCK,
            ttls: ResetTtls::default(),
        },
        close(240 * SECOND, tcp_state::ESTABLISHED, Some(0)),
    ]);
    assert_eq!(cuts(&updates), vec![(240 * SECOND, Signature::Reset)]);
    assert!(survived(&updates).is_empty());
    assert_eq!(ends(&updates), vec![End::ResetReceived]);
    assert!(
        !updates
            .iter()
            .any(|u| matches!(u, Update::DiedWhileActive { .. })),
        "a cut after idle is not an age limit"
    );
}

#[test]
fn a_rst_in_answer_to_the_first_segment_after_the_gap_is_a_reset_cut() {
    // AWS NAT gateway: 350 s idle, then the next segment from inside gets a RST.
    let updates = run(&[
        open(0),
        gap_end(400 * SECOND, 360 * SECOND, Side::Local),
        Event::ResetReceived {
            at: 400 * SECOND + 1,
            socket: SOCK,
            ttls: ResetTtls::default(),
        },
        close(400 * SECOND + 2, tcp_state::ESTABLISHED, Some(0)),
    ]);
    assert_eq!(cuts(&updates), vec![(360 * SECOND, Signature::Reset)]);
}

#[test]
fn retransmissions_into_nothing_after_a_gap_are_a_blackhole_cut() {
    let mut events = vec![
        open(0),
        gap_end(700 * SECOND, 600 * SECOND, Side::Local),
        retransmit(700 * SECOND + 1, 0),
        retransmit(701 * SECOND, SECOND),
    ];
    events.extend(timed_out(715 * SECOND, 15 * SECOND));
    let updates = run(&events);
    assert_eq!(cuts(&updates), vec![(600 * SECOND, Signature::Blackhole)]);
    assert_eq!(ends(&updates), vec![End::Timeout]);
    assert!(updates.contains(&Update::Stall {
        identity: imap_server(),
        duration: 15 * SECOND,
        outcome: StallOutcome::Fatal,
    }));
}

/// The kernel skipped the programs of the softirq that timed the connection out (its CLOSE and
/// its error report); tcp_destroy_sock reported the end later, from no known state.
#[test]
fn a_stalled_connection_whose_error_report_was_lost_timed_out() {
    let events = [
        open(0),
        gap_end(700 * SECOND, 600 * SECOND, Side::Local),
        retransmit(700 * SECOND + 1, 0),
        Event::Close {
            at: 715 * SECOND,
            socket: SOCK,
            endpoints: server_side(),
            netns: NETNS,
            old_state: 0,
            opened_at: Some(0),
            retransmits: 3,
            first_fin: None,
            stalled_for: Some(15 * SECOND),
            awaiting_answer: true,
        },
    ];
    let updates = run(&events);
    assert_eq!(ends(&updates), vec![End::Timeout]);
    assert_eq!(cuts(&updates), vec![(600 * SECOND, Signature::Blackhole)]);
    assert!(updates.contains(&Update::Stall {
        identity: imap_server(),
        duration: 15 * SECOND,
        outcome: StallOutcome::Fatal,
    }));
    // Not stalled: nothing says how it ended.
    let unstalled = run(&[open(0), close(SECOND, 0, Some(0))]);
    assert_eq!(ends(&unstalled), vec![End::Unknown]);
}

#[test]
fn icmp_errors_after_a_gap_are_an_icmp_cut() {
    let updates = run(&[
        open(0),
        gap_end(300 * SECOND, 250 * SECOND, Side::Local),
        Event::IcmpError {
            at: 300 * SECOND + 1,
            endpoints: server_side(),
            icmp_type: 3,
            code: 1,
        },
        retransmit(300 * SECOND + 2, 0),
        close(310 * SECOND, tcp_state::ESTABLISHED, Some(0)),
        Event::ErrorReport {
            at: 310 * SECOND,
            endpoints: server_side(),
            errno: EHOSTUNREACH,
        },
    ]);
    assert_eq!(cuts(&updates), vec![(250 * SECOND, Signature::Icmp)]);
    assert_eq!(ends(&updates), vec![End::Error]);
    assert!(updates.contains(&Update::IcmpError {
        identity: imap_server(),
        icmp_type: 3,
        code: 1
    }));
}

#[test]
fn the_soft_error_left_by_icmp_marks_an_icmp_cut_without_the_icmp_probe() {
    let updates = run(&[
        open(0),
        gap_end(300 * SECOND, 250 * SECOND, Side::Local),
        retransmit(300 * SECOND + 2, 0),
        close(310 * SECOND, tcp_state::ESTABLISHED, Some(0)),
        Event::ErrorReport {
            at: 310 * SECOND,
            endpoints: server_side(),
            errno: EHOSTUNREACH,
        },
    ]);
    assert_eq!(cuts(&updates), vec![(250 * SECOND, Signature::Icmp)]);
}

#[test]
fn an_active_connection_that_dies_counts_toward_an_age_limit() {
    let mut events = vec![
        open(0),
        retransmit(3600 * SECOND, 0),
        retransmit(3601 * SECOND, SECOND),
    ];
    events.extend(timed_out(3620 * SECOND, 20 * SECOND));
    let updates = run(&events);
    assert!(cuts(&updates).is_empty());
    assert!(updates.contains(&Update::DiedWhileActive {
        identity: imap_server(),
        age: 3600 * SECOND,
    }));
}

#[test]
fn a_stall_the_peer_ends_is_recovered() {
    let updates = run(&[
        open(0),
        retransmit(10 * SECOND, 0),
        Event::StallRecovered {
            at: 12 * SECOND,
            socket: SOCK,
            stalled_for: 2 * SECOND,
        },
        close(20 * SECOND, tcp_state::LAST_ACK, Some(0)),
    ]);
    assert!(updates.contains(&Update::Stall {
        identity: imap_server(),
        duration: 2 * SECOND,
        outcome: StallOutcome::Recovered,
    }));
    assert_eq!(ends(&updates), vec![End::Fin]);
}

#[test]
fn recently_closed_connections_are_kept_for_the_view() {
    let mut model = model();
    let mut out = Vec::new();
    model.apply(open(0), &mut out);
    model.apply(close(SECOND, tcp_state::LAST_ACK, Some(0)), &mut out);
    model.expire(u64::MAX, &mut out);
    let closed: Vec<&ClosedRecord> = model.recently_closed().collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].end, End::Fin);
}
