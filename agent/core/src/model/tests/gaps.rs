//! Idle gaps: survived (the peer answered, a FIN exchange acknowledged them, the peer ended
//! them) or cut (reset, black hole, ICMP), stalls, deaths while active.

use super::*;
use crate::{
    events::{Event, ResetTtls, Side},
    model::classify::{EHOSTUNREACH, ENETUNREACH},
};

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
    for closed_from in [TcpState::FinWait2, TcpState::TimeWait, TcpState::LastAck] {
        let updates = run(&[
            open(0),
            gap_end(300 * SECOND, 290 * SECOND, Side::Local),
            close(300 * SECOND + 2, closed_from, Some(0)),
        ]);
        assert_eq!(
            survived(&updates),
            vec![290 * SECOND],
            "from {closed_from:?}"
        );
        assert!(cuts(&updates).is_empty());
    }
    // Closed before anything acknowledged the FIN: nobody knows whether the path carried it.
    let updates = run(&[
        open(0),
        gap_end(300 * SECOND, 290 * SECOND, Side::Local),
        close(300 * SECOND + 2, TcpState::FinWait1, Some(0)),
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
        close(240 * SECOND, TcpState::Established, Some(0)),
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
        close(400 * SECOND + 2, TcpState::Established, Some(0)),
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
            old_state: TcpState::Unknown,
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
    let unstalled = run(&[open(0), close(SECOND, TcpState::Unknown, Some(0))]);
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
        close(310 * SECOND, TcpState::Established, Some(0)),
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
        close(310 * SECOND, TcpState::Established, Some(0)),
        Event::ErrorReport {
            at: 310 * SECOND,
            endpoints: server_side(),
            errno: EHOSTUNREACH,
        },
    ]);
    assert_eq!(cuts(&updates), vec![(250 * SECOND, Signature::Icmp)]);
}

/// No program on the ICMP path (fentry refused): the soft error an ICMP host unreachable
/// left on the socket shows at the next retransmission, counted once, in the connection's
/// view while TCP retransmits through it, and makes the cut an ICMP one although TCP gave up
/// with ETIMEDOUT.
#[test]
fn a_soft_error_seen_at_a_retransmission_is_an_icmp_error_before_tcp_gives_up() {
    let mut model = model();
    let mut out = Vec::new();
    for event in [
        open(0),
        gap_end(300 * SECOND, 250 * SECOND, Side::Local),
        retransmit(300 * SECOND + 2, 0),
        retransmit_after_icmp(301 * SECOND, SECOND, EHOSTUNREACH),
        retransmit_after_icmp(303 * SECOND, 3 * SECOND, EHOSTUNREACH),
    ] {
        model.apply(event, &mut out);
    }
    let soft: Vec<_> = out
        .iter()
        .filter_map(|u| match u {
            Update::SoftIcmpError { errno, .. } => Some(*errno),
            _ => None,
        })
        .collect();
    assert_eq!(
        soft,
        vec![EHOSTUNREACH],
        "once, not at every retransmission"
    );
    let open: Vec<_> = model.connections().collect();
    assert_eq!(open.len(), 1);
    assert_eq!(
        open[0].soft_error,
        Some(EHOSTUNREACH),
        "in the view, still open"
    );
    out.clear();
    for event in timed_out(310 * SECOND, 10 * SECOND) {
        model.apply(event, &mut out);
    }
    model.expire(u64::MAX, &mut out);
    assert_eq!(cuts(&out), vec![(250 * SECOND, Signature::Icmp)]);
}

/// A short outage with ICMP errors that the connection survives: counted, not a cut.
#[test]
fn a_soft_error_on_a_connection_that_recovers_is_no_cut() {
    let updates = run(&[
        open(0),
        gap_end(300 * SECOND, 250 * SECOND, Side::Local),
        retransmit_after_icmp(301 * SECOND, SECOND, ENETUNREACH),
        Event::GapAnswered {
            at: 302 * SECOND,
            socket: SOCK,
            delay: SECOND,
        },
        close(400 * SECOND, TcpState::FinWait2, Some(0)),
    ]);
    assert!(cuts(&updates).is_empty(), "{updates:#?}");
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::SoftIcmpError { errno, .. } if *errno == ENETUNREACH))
    );
    assert!(survived(&updates).contains(&(250 * SECOND)));
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
        close(20 * SECOND, TcpState::LastAck, Some(0)),
    ]);
    assert!(updates.contains(&Update::Stall {
        identity: imap_server(),
        duration: 2 * SECOND,
        outcome: StallOutcome::Recovered,
    }));
    assert_eq!(ends(&updates), vec![End::Fin]);
}

#[test]
fn survived_gaps_make_the_connections_cadence() {
    // Dovecot's "* OK Still here" every 3 s during IDLE: the peer ends each gap (each settled
    // when the next comes, the last by its grace period), then this host's DONE after 1.5 s,
    // answered, then a FIN exchange after another 3 s of silence.
    let mut model = model();
    let mut out = Vec::new();
    model.apply(open(0), &mut out);
    let mut at = 0;
    for _ in 0..3 {
        at += 3 * SECOND;
        model.apply(gap_end(at, 3 * SECOND, Side::Remote), &mut out);
    }
    model.expire(at + CLOSE_GRACE_NS, &mut out);
    at += 1_500_000_000;
    model.apply(gap_end(at, 1_500_000_000, Side::Local), &mut out);
    model.apply(
        Event::GapAnswered {
            at: at + 1,
            socket: SOCK,
            delay: 1,
        },
        &mut out,
    );
    assert!(cadences(&out).is_empty(), "three gaps of 3 s: {out:?}");
    at += 3 * SECOND;
    model.apply(gap_end(at, 3 * SECOND, Side::Local), &mut out);
    model.apply(close(at + 2, TcpState::TimeWait, Some(0)), &mut out);
    model.expire(u64::MAX, &mut out);
    let three = Cadence {
        interval: 3 * SECOND,
        gaps: 4,
    };
    assert_eq!(cadences(&out), vec![(None, three)]);
    // It follows the survived gap that made it, for the same connection.
    let at = out
        .iter()
        .position(|u| matches!(u, Update::CadenceChanged { .. }))
        .unwrap();
    assert_eq!(
        out[at - 1],
        Update::IdleGapSurvived(imap_server(), 3 * SECOND)
    );
    assert_eq!(out[at].identity(), Some(&imap_server()));
    // The view still shows it once the connection closed.
    let closed: Vec<&ClosedRecord> = model.recently_closed().collect();
    assert_eq!(closed[0].info.cadence, Some(three));
}
