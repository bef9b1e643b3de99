//! Ring buffer records decoded into typed [`Event`]s: the one place that reads `RawEvent`.
//!
//! Bytes from the ring buffer are untrusted input: a record of the wrong size or an unknown
//! kind is a [`DecodeError`], counted and skipped by the caller, never a panic.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use idlecut_ebpf::{AF_INET, AF_INET6, RawEvent, event_flags, event_kind, segment_size, tcp_state};

use idlecut_core::events::{Endpoints, Event, ResetTtls, RetransmittedSegment, Side, TcpState};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {expected}", expected = size_of::<RawEvent>())]
    WrongSize(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
}

/// A TCP state number of the kernel (`include/net/tcp_states.h`) as the typed state the rest of
/// the agent reads: the one place that knows the numbers, for the ring buffer and sock_diag.
pub fn tcp_state_of(raw: u8) -> TcpState {
    match raw {
        tcp_state::ESTABLISHED => TcpState::Established,
        tcp_state::SYN_SENT => TcpState::SynSent,
        tcp_state::SYN_RECV => TcpState::SynRecv,
        tcp_state::FIN_WAIT1 => TcpState::FinWait1,
        tcp_state::FIN_WAIT2 => TcpState::FinWait2,
        tcp_state::TIME_WAIT => TcpState::TimeWait,
        tcp_state::CLOSE => TcpState::Close,
        tcp_state::CLOSE_WAIT => TcpState::CloseWait,
        tcp_state::LAST_ACK => TcpState::LastAck,
        tcp_state::LISTEN => TcpState::Listen,
        tcp_state::CLOSING => TcpState::Closing,
        tcp_state::NEW_SYN_RECV => TcpState::NewSynRecv,
        _ => TcpState::Unknown,
    }
}

/// Reads a `RawEvent` out of a ring buffer record (which need not be aligned).
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != size_of::<RawEvent>() {
        return Err(DecodeError::WrongSize(bytes.len()));
    }
    // SAFETY: the length is checked above, `RawEvent` is plain old data for which any bit
    // pattern is valid, and `read_unaligned` copes with the record's alignment.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_raw(&raw)
}

pub fn from_raw(raw: &RawEvent) -> Result<Event, DecodeError> {
    let at = raw.timestamp_ns;
    let socket = raw.socket;
    let endpoints = || -> Result<Endpoints, DecodeError> {
        if raw.family != AF_INET && raw.family != AF_INET6 {
            return Err(DecodeError::UnknownFamily(raw.family));
        }
        Ok(Endpoints {
            local: SocketAddr::new(ip(raw.local_addr), raw.local_port),
            remote: SocketAddr::new(ip(raw.remote_addr), raw.remote_port),
        })
    };
    Ok(match raw.kind {
        event_kind::OPEN => Event::Open {
            at,
            socket,
            endpoints: endpoints()?,
            netns: raw.netns,
            initiated_by: match raw.old_state {
                tcp_state::SYN_SENT => Some(Side::Local),
                tcp_state::SYN_RECV => Some(Side::Remote),
                _ => None,
            },
        },
        event_kind::CLOSE => Event::Close {
            at,
            socket,
            endpoints: endpoints()?,
            netns: raw.netns,
            old_state: tcp_state_of(raw.old_state),
            opened_at: (raw.flags & event_flags::NO_STATE == 0 && raw.value_ns != 0)
                .then_some(raw.value_ns),
            retransmits: raw.count,
            first_fin: if raw.flags & event_flags::LOCAL_CLOSED_FIRST != 0 {
                Some(Side::Local)
            } else if raw.flags & event_flags::REMOTE_CLOSED_FIRST != 0 {
                Some(Side::Remote)
            } else {
                None
            },
            stalled_for: (raw.aux_ns != 0).then_some(raw.aux_ns),
            awaiting_answer: raw.flags & event_flags::AWAITING_ANSWER != 0,
        },
        event_kind::RESET_RECEIVED => Event::ResetReceived {
            at,
            socket,
            ttls: ResetTtls {
                peer: Some(raw.peer_ttl).filter(|&ttl| ttl != 0),
                reset: Some(raw.reset_ttl).filter(|&ttl| ttl != 0),
            },
        },
        event_kind::RESET_SENT => Event::ResetSent { at, socket },
        event_kind::RETRANSMIT => Event::Retransmit {
            at,
            socket,
            stalled_for: raw.value_ns,
            soft_error: (raw.error != 0).then_some(raw.error),
            segment: retransmitted_segment(raw),
        },
        event_kind::ERROR_REPORT => Event::ErrorReport {
            at,
            endpoints: endpoints()?,
            errno: raw.error,
        },
        event_kind::IDLE_GAP_END => Event::IdleGapEnd {
            at,
            socket,
            gap: raw.value_ns,
            first: if raw.flags & event_flags::LOCAL_SPOKE_FIRST != 0 {
                Side::Local
            } else {
                Side::Remote
            },
        },
        event_kind::GAP_ANSWERED => Event::GapAnswered {
            at,
            socket,
            delay: raw.aux_ns,
        },
        event_kind::STALL_RECOVERED => Event::StallRecovered {
            at,
            socket,
            stalled_for: raw.value_ns,
        },
        event_kind::ICMP_ERROR => {
            let [icmp_type, code] = raw.error.to_be_bytes();
            Event::IcmpError {
                at,
                endpoints: endpoints()?,
                icmp_type,
                code,
            }
        }
        event_kind::ADOPTED => Event::Adopted {
            at,
            socket,
            cookie: raw.value_ns,
        },
        kind => return Err(DecodeError::UnknownKind(kind)),
    })
}

/// A RETRANSMIT's segment size, when the program could read it.
fn retransmitted_segment(raw: &RawEvent) -> Option<RetransmittedSegment> {
    segment_size::unpack(raw.aux_ns).map(|(bytes, mss)| RetransmittedSegment {
        bytes,
        mss,
        peer_sacked: raw.flags & event_flags::PEER_SACKED != 0,
    })
}

/// The kernel stores IPv4 addresses v4-mapped; paths group them as IPv4.
fn ip(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Encodes a `RawEvent` as the kernel would; for tests of the layers above.
#[cfg(test)]
pub fn raw_bytes(raw: &RawEvent) -> Vec<u8> {
    // SAFETY: plain old data without padding (pinned by the layout tests).
    unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(raw).cast::<u8>(), size_of::<RawEvent>())
    }
    .to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kernel_tcp_state_has_its_own_typed_state() {
        let typed: std::collections::HashSet<_> = (1..=12).map(super::tcp_state_of).collect();
        assert_eq!(typed.len(), 12);
        assert!(!typed.contains(&super::TcpState::Unknown));
        assert_eq!(super::tcp_state_of(0), super::TcpState::Unknown);
        assert_eq!(super::tcp_state_of(200), super::TcpState::Unknown);
    }

    use std::net::Ipv4Addr;

    use idlecut_ebpf::tcp_state;

    use super::*;

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        Ipv4Addr::from(v4).to_ipv6_mapped().octets()
    }

    fn open_v4() -> RawEvent {
        let mut raw = RawEvent::zeroed();
        raw.kind = event_kind::OPEN;
        raw.timestamp_ns = 5;
        raw.socket = 0xffff_8880_1234_5678;
        raw.family = AF_INET;
        raw.local_addr = mapped([10, 0, 2, 2]);
        raw.remote_addr = mapped([10, 0, 1, 2]);
        raw.local_port = 143;
        raw.remote_port = 50_000;
        raw.netns = 4026531840;
        raw
    }

    #[test]
    fn decodes_an_ipv4_open() {
        let event = decode(&raw_bytes(&open_v4())).unwrap();
        assert_eq!(
            event,
            Event::Open {
                at: 5,
                socket: 0xffff_8880_1234_5678,
                endpoints: Endpoints {
                    local: "10.0.2.2:143".parse().unwrap(),
                    remote: "10.0.1.2:50000".parse().unwrap(),
                },
                netns: 4026531840,
                initiated_by: None,
            }
        );
    }

    #[test]
    fn opens_say_which_side_connected() {
        let mut raw = open_v4();
        for (old_state, side) in [
            (tcp_state::SYN_SENT, Some(Side::Local)),
            (tcp_state::SYN_RECV, Some(Side::Remote)),
            (0, None),
        ] {
            raw.old_state = old_state;
            let Ok(Event::Open { initiated_by, .. }) = decode(&raw_bytes(&raw)) else {
                panic!("not an open");
            };
            assert_eq!(initiated_by, side);
        }
    }

    #[test]
    fn v4_mapped_addresses_on_ipv6_sockets_become_ipv4() {
        let mut raw = open_v4();
        raw.family = AF_INET6;
        let Event::Open { endpoints, .. } = decode(&raw_bytes(&raw)).unwrap() else {
            panic!("not an open");
        };
        assert_eq!(endpoints.remote, "10.0.1.2:50000".parse().unwrap());
    }

    #[test]
    fn ipv6_stays_ipv6() {
        let mut raw = open_v4();
        raw.family = AF_INET6;
        raw.remote_addr = "fd00:1:1::2".parse::<Ipv6Addr>().unwrap().octets();
        let Event::Open { endpoints, .. } = decode(&raw_bytes(&raw)).unwrap() else {
            panic!("not an open");
        };
        assert_eq!(endpoints.remote, "[fd00:1:1::2]:50000".parse().unwrap());
    }

    #[test]
    fn close_carries_kernel_state_unless_flagged_missing() {
        let mut raw = open_v4();
        raw.kind = event_kind::CLOSE;
        raw.old_state = tcp_state::LAST_ACK;
        raw.value_ns = 3;
        raw.count = 2;
        raw.flags = event_flags::REMOTE_CLOSED_FIRST | event_flags::AWAITING_ANSWER;
        raw.aux_ns = 7;
        let Event::Close {
            opened_at,
            retransmits,
            first_fin,
            old_state,
            stalled_for,
            awaiting_answer,
            ..
        } = decode(&raw_bytes(&raw)).unwrap()
        else {
            panic!("not a close");
        };
        assert_eq!(
            (opened_at, retransmits, first_fin, old_state),
            (Some(3), 2, Some(Side::Remote), TcpState::LastAck)
        );
        assert_eq!((stalled_for, awaiting_answer), (Some(7), true));
        raw.flags = event_flags::NO_STATE;
        let Event::Close { opened_at, .. } = decode(&raw_bytes(&raw)).unwrap() else {
            panic!("not a close");
        };
        assert_eq!(opened_at, None);
    }

    #[test]
    fn gap_ends_say_who_spoke_first() {
        let mut raw = open_v4();
        raw.kind = event_kind::IDLE_GAP_END;
        raw.value_ns = 400;
        raw.flags = event_flags::LOCAL_SPOKE_FIRST;
        assert!(matches!(
            decode(&raw_bytes(&raw)),
            Ok(Event::IdleGapEnd {
                gap: 400,
                first: Side::Local,
                ..
            })
        ));
        raw.flags = 0;
        assert!(matches!(
            decode(&raw_bytes(&raw)),
            Ok(Event::IdleGapEnd {
                first: Side::Remote,
                ..
            })
        ));
    }

    #[test]
    fn icmp_errors_carry_type_and_code() {
        let mut raw = open_v4();
        raw.kind = event_kind::ICMP_ERROR;
        raw.error = u16::from_be_bytes([3, 1]);
        assert!(matches!(
            decode(&raw_bytes(&raw)),
            Ok(Event::IcmpError {
                icmp_type: 3,
                code: 1,
                ..
            })
        ));
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::WrongSize(10)));
        let mut raw = open_v4();
        raw.kind = 200;
        assert_eq!(decode(&raw_bytes(&raw)), Err(DecodeError::UnknownKind(200)));
        let mut raw = open_v4();
        raw.family = 1;
        assert_eq!(decode(&raw_bytes(&raw)), Err(DecodeError::UnknownFamily(1)));
    }

    #[test]
    fn unaligned_records_decode() {
        let mut bytes = vec![0u8];
        bytes.extend(raw_bytes(&open_v4()));
        assert!(decode(&bytes[1..]).is_ok());
    }

    proptest::proptest! {
        /// Ring buffer records are untrusted: whatever the bytes, decoding answers, never
        /// panics, and a record of the wrong size is refused.
        #[test]
        fn any_record_decodes_or_is_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let decoded = decode(&bytes);
            if bytes.len() != size_of::<RawEvent>() {
                proptest::prop_assert_eq!(decoded, Err(DecodeError::WrongSize(bytes.len())));
            }
        }

        /// Every kind and family the kernel could write, with any payload.
        #[test]
        fn any_event_of_the_right_size_decodes_or_is_refused(
            kind in proptest::num::u8::ANY,
            family in proptest::num::u16::ANY,
            flags in proptest::num::u8::ANY,
            values in proptest::array::uniform4(proptest::num::u64::ANY),
            error in proptest::num::u16::ANY,
        ) {
            let mut raw = open_v4();
            raw.kind = kind;
            raw.family = family;
            raw.flags = flags;
            [raw.timestamp_ns, raw.value_ns, raw.aux_ns, raw.socket] = values;
            raw.error = error;
            let known = [
                event_kind::OPEN, event_kind::CLOSE, event_kind::RESET_RECEIVED,
                event_kind::RESET_SENT, event_kind::RETRANSMIT, event_kind::ERROR_REPORT,
                event_kind::IDLE_GAP_END, event_kind::GAP_ANSWERED, event_kind::STALL_RECOVERED,
                event_kind::ICMP_ERROR, event_kind::ADOPTED,
            ];
            let addressed = [
                event_kind::OPEN, event_kind::CLOSE, event_kind::ERROR_REPORT, event_kind::ICMP_ERROR,
            ];
            let family_known = family == AF_INET || family == AF_INET6;
            match decode(&raw_bytes(&raw)) {
                // Every event carries the kernel's time of the fact.
                Ok(event) => {
                    proptest::prop_assert!(known.contains(&kind), "kind {kind} decoded: {event:?}");
                    proptest::prop_assert!(family_known || !addressed.contains(&kind));
                }
                Err(DecodeError::UnknownKind(refused)) => {
                    proptest::prop_assert_eq!(refused, kind);
                    proptest::prop_assert!(!known.contains(&kind));
                }
                Err(DecodeError::UnknownFamily(refused)) => {
                    proptest::prop_assert_eq!(refused, family);
                    proptest::prop_assert!(!family_known && addressed.contains(&kind));
                }
                Err(DecodeError::WrongSize(size)) => {
                    proptest::prop_assert!(false, "a whole record refused as {size} bytes");
                }
            }
        }
    }
}
