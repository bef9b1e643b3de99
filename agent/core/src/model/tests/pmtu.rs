//! PMTU black holes: full-size segments lost while later data reaches the peer are no idle
//! cut, whatever silence came before them.

use super::*;
use crate::events::{Event, RetransmittedSegment, Side};

const MSS: u32 = 1448;

fn retransmit_of(at: Nanos, stalled_for: Nanos, bytes: u32, peer_sacked: bool) -> Event {
    Event::Retransmit {
        at,
        socket: SOCK,
        stalled_for,
        soft_error: None,
        segment: Some(RetransmittedSegment {
            bytes,
            mss: MSS,
            peer_sacked,
        }),
    }
}

fn answered(at: Nanos) -> Event {
    Event::GapAnswered {
        at,
        socket: SOCK,
        delay: 1_000_000,
    }
}

fn pmtu_of_cuts(updates: &[Update]) -> Vec<Option<PmtuClues>> {
    updates
        .iter()
        .filter_map(|update| match update {
            Update::Cut { context, .. } => Some(context.pmtu),
            _ => None,
        })
        .collect()
}

/// An IMAP server's large answer after 30 s of silence: the small tail of the write got
/// through (the client's SACK answered the gap), the full-size segments before it never do.
#[test]
fn a_large_answer_lost_after_a_silence_the_path_passed_is_a_pmtu_black_hole() {
    let mut events = vec![
        open(0),
        gap_end(40 * SECOND, 30 * SECOND, Side::Local),
        answered(40 * SECOND + 1_000_000),
        retransmit_of(40 * SECOND + 300_000_000, 0, MSS, true),
        retransmit_of(41 * SECOND, 700_000_000, MSS, true),
        retransmit_of(42 * SECOND, 1_700_000_000, MSS, true),
    ];
    events.extend(timed_out(46 * SECOND, 6 * SECOND));
    let updates = run(&events);
    // Not cut for its silence: the silence was survived, and the cut has none before it.
    assert_eq!(survived(&updates), vec![30 * SECOND]);
    assert_eq!(cuts(&updates), vec![(0, Signature::Pmtu)]);
    let clues = pmtu_of_cuts(&updates)[0].expect("the lost segments");
    assert_eq!((clues.largest, clues.mss), (1448, 1448));
    // Not an age limit either.
    assert!(
        !updates
            .iter()
            .any(|u| matches!(u, Update::DiedWhileActive { .. })),
        "{updates:#?}"
    );
    assert_eq!(ends(&updates), vec![End::Timeout]);
}

/// When nothing sent after the silence reached the peer, no fact tells a black hole of the MTU
/// from one of the path that forgot the connection: it stays a blackhole cut.
#[test]
fn full_size_segments_with_nothing_acknowledged_stay_a_blackhole_cut() {
    let mut events = vec![
        open(0),
        gap_end(700 * SECOND, 600 * SECOND, Side::Local),
        retransmit_of(700 * SECOND + 1, 0, MSS, false),
        retransmit_of(701 * SECOND, SECOND, MSS, false),
    ];
    events.extend(timed_out(715 * SECOND, 15 * SECOND));
    let updates = run(&events);
    assert_eq!(cuts(&updates), vec![(600 * SECOND, Signature::Blackhole)]);
    assert_eq!(pmtu_of_cuts(&updates), vec![None]);
}

/// Later data acknowledged but a small segment lost: loss, not the MTU.
#[test]
fn a_small_segment_lost_among_them_is_not_the_mtu() {
    let mut events = vec![
        open(0),
        gap_end(40 * SECOND, 30 * SECOND, Side::Local),
        retransmit_of(40 * SECOND + 1, 0, 60, true),
        retransmit_of(41 * SECOND, SECOND, MSS, true),
    ];
    events.extend(timed_out(46 * SECOND, 6 * SECOND));
    let updates = run(&events);
    assert_eq!(cuts(&updates), vec![(30 * SECOND, Signature::Blackhole)]);
}

/// A stall the peer ended says nothing of the next one.
#[test]
fn a_recovered_stall_leaves_no_clue_for_the_next() {
    let mut events = vec![
        open(0),
        retransmit_of(10 * SECOND, 0, MSS, true),
        Event::StallRecovered {
            at: 11 * SECOND,
            socket: SOCK,
            stalled_for: SECOND,
        },
        retransmit_of(3600 * SECOND, 0, MSS, false),
    ];
    events.extend(timed_out(3620 * SECOND, 20 * SECOND));
    let updates = run(&events);
    assert!(cuts(&updates).is_empty());
    assert!(updates.contains(&Update::DiedWhileActive {
        identity: imap_server(),
        age: 3600 * SECOND,
    }));
}

/// With `net.ipv4.tcp_mtu_probing`, the kernel takes a black hole for one after a few timeouts
/// and lowers the MSS; the smaller segments get through and the stall recovers: no cut, and the
/// MSS it fell back to is told.
#[test]
fn a_stall_the_kernel_ends_by_lowering_the_mss_is_survived_and_told() {
    let lowered = |at| Event::Retransmit {
        at,
        socket: SOCK,
        stalled_for: at - 40 * SECOND,
        soft_error: None,
        segment: Some(RetransmittedSegment {
            bytes: 1024,
            mss: 1024,
            peer_sacked: false,
        }),
    };
    let updates = run(&[
        open(0),
        gap_end(40 * SECOND, 30 * SECOND, Side::Local),
        retransmit_of(40 * SECOND, 0, MSS, false),
        retransmit_of(41 * SECOND, SECOND, MSS, false),
        retransmit_of(43 * SECOND, 3 * SECOND, MSS, false),
        lowered(44 * SECOND),
        Event::StallRecovered {
            at: 44 * SECOND + 1_000_000,
            socket: SOCK,
            stalled_for: 4 * SECOND,
        },
        close(60 * SECOND, TcpState::LastAck, Some(0)),
    ]);
    assert!(cuts(&updates).is_empty(), "{updates:#?}");
    assert!(updates.contains(&Update::MssLowered {
        identity: imap_server(),
        from: 1448,
        to: 1024,
    }));
    assert_eq!(ends(&updates), vec![End::Fin]);
}
