//! Roles, and how connections end: FIN, resets, timeouts, errors, lost opens and closes,
//! evicted or reused kernel state; what the view keeps of them.

use super::*;
use crate::events::{Event, ResetTtls, Side};

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
        closed(client_socket, client_end, TcpState::FinWait2),
        closed(server_socket, server_end, TcpState::LastAck),
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
        close(91 * SECOND, TcpState::LastAck, Some(SECOND)),
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
    model.apply(close(2, TcpState::Established, Some(0)), &mut out);
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
    model.apply(close(SECOND, TcpState::Established, Some(0)), &mut out);
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
            soft_error: None,
            segment: None,
        },
        close(2, TcpState::Established, Some(0)),
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
        close(2, TcpState::FinWait2, Some(0)),
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
    let updates = run(&[close(10 * SECOND, TcpState::LastAck, Some(4 * SECOND))]);
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
        run(&[close(1, TcpState::LastAck, None)]),
        vec![Update::UntrackedClose]
    );
}

#[test]
fn eviction_from_the_kernel_map_keeps_the_user_space_start() {
    let updates = run(&[open(SECOND), close(3 * SECOND, TcpState::LastAck, None)]);
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
    model.apply(close(5, TcpState::LastAck, Some(0)), &mut out);
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
                stalled_for: 0,
                soft_error: None,
                segment: None,
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

#[test]
fn recently_closed_connections_are_kept_for_the_view() {
    let mut model = model();
    let mut out = Vec::new();
    model.apply(open(0), &mut out);
    model.apply(close(SECOND, TcpState::LastAck, Some(0)), &mut out);
    model.expire(u64::MAX, &mut out);
    let closed: Vec<&ClosedRecord> = model.recently_closed().collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].end, End::Fin);
}
