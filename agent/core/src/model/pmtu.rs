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
/// when the stall ends. Sizes in 16 bits, saturated (an MSS is 16 bits): this rides in the
/// transient facts of every connection while it retransmits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmtuClues {
    /// The largest segment retransmitted in the stall, in payload bytes.
    pub largest: u16,
    /// The MSS at the stall's first retransmission.
    pub mss: u16,
    /// The lowest MSS of its retransmissions: below `mss` when the kernel's MTU probing
    /// (`net.ipv4.tcp_mtu_probing`) took a black hole for one and lowered it.
    pub lowest_mss: u16,
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
            lowest_mss: saturate(segment.mss),
            full_size_only: is_full_size(segment),
            peer_sacked: segment.peer_sacked,
        }
    }

    /// Takes in one more retransmission of the same stall.
    pub fn add(&mut self, segment: RetransmittedSegment) {
        self.largest = self.largest.max(saturate(segment.bytes));
        self.lowest_mss = self.lowest_mss.min(saturate(segment.mss));
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

    /// The MSS the stall began with and the one the kernel lowered it to, when its MTU
    /// probing did: a stall that then recovered got through a black hole of the path's MTU
    /// only with smaller segments.
    pub fn mss_lowered(&self) -> Option<(u16, u16)> {
        (self.lowest_mss < self.mss).then_some((self.mss, self.lowest_mss))
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
    fn the_mss_the_kernel_falls_back_to_is_kept() {
        let mut clues = PmtuClues::new(segment(1448, false));
        assert_eq!(clues.mss_lowered(), None);
        clues.add(RetransmittedSegment {
            bytes: 1024,
            mss: 1024,
            peer_sacked: false,
        });
        assert_eq!(clues.mss_lowered(), Some((1448, 1024)));
        assert_eq!(clues.largest, 1448);
        // Full-size at each MSS it was sent with.
        assert!(clues.full_size_only);
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
