//! Telling a path MTU black hole from an idle cut. Where a path's MTU shrinks and the ICMP
//! errors that would say so ("fragmentation needed", "packet too big") are filtered, full-size
//! segments vanish and small ones pass: after a silence, the first large answer stalls, and
//! the connection dies as one cut after idle would. The kernel tells them apart: the segments
//! retransmitted in vain are full-size, and the peer selectively acknowledges later data sent
//! after them (smaller segments reach it). A path that forgot an idle connection passes
//! nothing after the silence, so nothing sent after it is acknowledged.

use crate::events::RetransmittedSegment;

/// A segment within this many bytes of the MSS is full-size: the MSS the socket caches leaves
/// room for the TCP options it expects, which a given segment may not carry.
const FULL_SIZE_SLACK: u32 = 64;

/// What the retransmissions of a connection's current stall said of its path's MTU; cleared
/// when the stall ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmtuClues {
    /// The largest segment retransmitted in the stall, in payload bytes, and the MSS then
    /// (16 bits each, saturated: an MSS is, and this rides in every connection's transient
    /// facts while it retransmits).
    pub largest: u16,
    pub mss: u16,
    /// Every retransmission of the stall was a full-size segment.
    pub full_size_only: bool,
    /// The peer acknowledged later data during the stall.
    pub peer_sacked: bool,
}

impl PmtuClues {
    pub fn new(segment: RetransmittedSegment) -> Self {
        Self {
            largest: saturate(segment.bytes),
            mss: saturate(segment.mss),
            full_size_only: is_full_size(segment),
            peer_sacked: segment.peer_sacked,
        }
    }

    /// Takes in one more retransmission of the same stall.
    pub fn add(&mut self, segment: RetransmittedSegment) {
        if saturate(segment.bytes) >= self.largest {
            self.largest = saturate(segment.bytes);
            self.mss = saturate(segment.mss);
        }
        self.full_size_only &= is_full_size(segment);
        self.peer_sacked |= segment.peer_sacked;
    }

    /// Only full-size segments were lost, while later data reached the peer: the path drops
    /// segments for their size, not the connection for its silence. (A stall the kernel's MTU
    /// probing ended by lowering the MSS recovers, and is no cut at all; one that stayed fatal
    /// after probing lowered the MSS lost the small segments too: not this.)
    pub fn black_hole(&self) -> bool {
        self.full_size_only && self.peer_sacked
    }
}

fn saturate(value: u32) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

fn is_full_size(segment: RetransmittedSegment) -> bool {
    segment.mss > 0 && segment.bytes.saturating_add(FULL_SIZE_SLACK) >= segment.mss
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(bytes: u32, peer_sacked: bool) -> RetransmittedSegment {
        RetransmittedSegment {
            bytes,
            mss: 1448,
            peer_sacked,
        }
    }

    #[test]
    fn full_size_segments_lost_while_later_data_arrives_are_a_black_hole() {
        let mut clues = PmtuClues::new(segment(1448, false));
        assert!(!clues.black_hole(), "nothing has reached the peer yet");
        clues.add(segment(1448, true));
        assert!(clues.black_hole());
        assert_eq!((clues.largest, clues.mss), (1448, 1448));
    }

    #[test]
    fn a_small_segment_lost_too_is_not_a_black_hole_of_the_mtu() {
        let mut clues = PmtuClues::new(segment(1448, true));
        clues.add(segment(120, true));
        assert!(!clues.black_hole());
        // The first small retransmission of an idle cut (an IMAP line after the silence).
        let clues = PmtuClues::new(segment(45, true));
        assert!(!clues.black_hole());
    }

    #[test]
    fn nothing_acknowledged_is_no_evidence_whatever_the_size() {
        let mut clues = PmtuClues::new(segment(1448, false));
        clues.add(segment(1448, false));
        assert!(!clues.black_hole());
    }

    #[test]
    fn segments_within_the_options_slack_of_the_mss_are_full_size() {
        assert!(is_full_size(segment(1448 - 40, false)));
        assert!(!is_full_size(segment(1448 - 65, false)));
        assert!(!is_full_size(RetransmittedSegment {
            bytes: 0,
            mss: 0,
            peer_sacked: false
        }));
    }
}
