//! Settling a connection that ended: how it ended, whether the path cut it after an idle gap
//! and how, whether it died in a stall or at an age that may be a limit. Every ended connection
//! goes through [`Closing::settle`], whether its close was seen or a scan found it gone.

use super::{
    ClosedRecord, Services, Update, gap_survived, table::Connection, table::UnansweredGap,
};
use crate::events::{Nanos, TcpState};
use idlecut_api::vocabulary::{End, Signature, StallOutcome};

pub const ETIMEDOUT: u16 = 110;
pub const ENETUNREACH: u16 = 101;
pub const EHOSTUNREACH: u16 = 113;
pub const EACCES: u16 = 13;

/// The name of an errno an ICMP error can leave on a TCP socket (the kernel's
/// `icmp_err_convert` and `icmpv6_err_convert`): unreachable networks and hosts, IPv4
/// administrative filters (EHOSTUNREACH), IPv6 ones (EACCES), and the rarer kinds.
pub fn icmp_errno_name(errno: u16) -> String {
    match errno {
        EACCES => "EACCES".into(),
        64 => "ENONET".into(),
        90 => "EMSGSIZE".into(),
        92 => "ENOPROTOOPT".into(),
        95 => "EOPNOTSUPP".into(),
        ENETUNREACH => "ENETUNREACH".into(),
        111 => "ECONNREFUSED".into(),
        112 => "EHOSTDOWN".into(),
        EHOSTUNREACH => "EHOSTUNREACH".into(),
        other => format!("errno {other}"),
    }
}

/// A connection that ended, with what was known when it did.
#[derive(Clone, Debug)]
pub struct Closing {
    pub connection: Connection,
    pub closed_at: Nanos,
    /// The TCP state it closed from.
    pub old_state: TcpState,
    /// How long it had been retransmitting without hearing from the peer, if it was.
    pub stalled_for: Option<Nanos>,
}

impl Closing {
    /// Classifies the connection: pushes what its end says about its path, then `Closed`;
    /// returns its record for the per-connection view.
    pub fn settle(self, services: &Services, out: &mut Vec<Update>) -> ClosedRecord {
        let Self {
            mut connection,
            closed_at,
            old_state,
            stalled_for,
        } = self;
        let transient = connection.transient();
        let errno = transient.error.map(|(_, errno)| errno);
        let end = classify_end(
            connection.reset_received,
            connection.reset_sent,
            errno,
            old_state,
            stalled_for.is_some(),
        );
        let abnormal = end != End::Fin;
        let identity = connection.identity(services);
        // Died in a stall that lost only full-size segments while later data got through.
        let black_hole = stalled_for.is_some() && transient.pmtu.is_some_and(|p| p.black_hole());
        let cut = match transient.unanswered.filter(|_| abnormal) {
            Some(unanswered) => cut_signature(unanswered, end, errno, black_hole)
                .map(|signature| (unanswered.gap, signature)),
            // Nothing was unanswered: the peer had been heard since the last silence, and what
            // broke the connection was the size of what it was sent, right then.
            None => (abnormal && black_hole).then_some((0, Signature::Pmtu)),
        };
        if let Some((gap, signature)) = cut {
            out.push(Update::Cut {
                identity: identity.clone(),
                gap,
                signature,
                context: connection.cut_context(closed_at, signature),
            });
        }
        // This host broke a silence, then closed before the answer showed: the answer came
        // while its FIN was out, where no probe sees segments (an IMAP client's LOGOUT after
        // IDLE). A FIN exchange that completed acknowledged that FIN, and with it every byte
        // sent before it: the path carried the connection past the gap.
        if end == End::Fin
            && let Some(unanswered) = transient.unanswered
        {
            gap_survived(&mut connection, identity.clone(), unanswered.gap, out);
        }
        if let Some(duration) = stalled_for.filter(|_| abnormal) {
            out.push(Update::Stall {
                identity: identity.clone(),
                duration,
                outcome: StallOutcome::Fatal,
            });
        }
        let died = matches!(end, End::ResetReceived | End::Timeout | End::Error);
        if died
            && cut.is_none()
            && !connection.cut_after_idle
            && let Some(opened_at) = connection.opened_at
        {
            // When it was stalled, the trouble began with the stall, not at the close.
            let trouble_at = closed_at.saturating_sub(stalled_for.unwrap_or(0));
            out.push(Update::DiedWhileActive {
                identity: identity.clone(),
                age: trouble_at.saturating_sub(opened_at),
            });
        }
        out.push(Update::Closed {
            identity: identity.clone(),
            end,
            duration: connection
                .opened_at
                .map(|opened_at| closed_at.saturating_sub(opened_at)),
            keepalive: connection.keepalive.map(|k| k.setting),
        });
        ClosedRecord {
            info: connection.info(services, None),
            closed_at,
            end,
        }
    }
}

/// How the path cut a connection that ended abnormally while this host's first segments after
/// an idle gap were unanswered. ICMP unreachable errors (seen, or left behind as the socket's
/// soft error) say the most; then a RST; then full-size segments lost while later data got
/// through (`black_hole`: the MTU, not the silence); then retransmissions into nothing.
fn cut_signature(
    unanswered: UnansweredGap,
    end: End,
    errno: Option<u16>,
    black_hole: bool,
) -> Option<Signature> {
    if unanswered.icmp || matches!(errno, Some(EHOSTUNREACH | ENETUNREACH)) {
        Some(Signature::Icmp)
    } else if end == End::ResetReceived {
        Some(Signature::Reset)
    } else if black_hole {
        Some(Signature::Pmtu)
    } else if unanswered.retransmitted || end == End::Timeout {
        Some(Signature::Blackhole)
    } else {
        None
    }
}

/// How a connection ended, from what was seen of it. A received RST explains everything after
/// it; ETIMEDOUT (which a keepalive failure reports along with the RST it sends) is more telling
/// than the RST; an error stands on its own; a FIN exchange shows in the state it closed from.
/// Last, a connection that was `stalled` (retransmitting without hearing from the peer) and
/// ended with none of these timed out: only the kernel giving up ends it so. Its error report
/// can be missing: an orphaned socket sends none, the kernel may skip the program run (a
/// classic tracepoint in a softirq that interrupted another BPF program, or a map syscall), or
/// a scan found the connection gone.
pub fn classify_end(
    reset_received: bool,
    reset_sent: bool,
    errno: Option<u16>,
    old_state: TcpState,
    stalled: bool,
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
        TcpState::FinWait2 | TcpState::TimeWait | TcpState::Closing | TcpState::LastAck
    ) {
        End::Fin
    } else if stalled {
        End::Timeout
    } else {
        End::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_classification_priorities() {
        use TcpState::{Closing, Established, FinWait1, FinWait2, LastAck, TimeWait};
        assert_eq!(
            classify_end(true, true, Some(ETIMEDOUT), LastAck, false),
            End::ResetReceived
        );
        assert_eq!(
            classify_end(false, true, Some(ETIMEDOUT), Established, false),
            End::Timeout
        );
        assert_eq!(
            classify_end(false, true, Some(104), Established, false),
            End::ResetSent
        );
        assert_eq!(
            classify_end(false, false, Some(113), Established, false),
            End::Error
        );
        for state in [FinWait2, TimeWait, Closing, LastAck] {
            assert_eq!(classify_end(false, false, None, state, false), End::Fin);
        }
        assert_eq!(
            classify_end(false, false, None, FinWait1, false),
            End::Unknown
        );
        assert_eq!(
            classify_end(false, false, None, Established, false),
            End::Unknown
        );
        // Stalled, and nothing else said how it ended: it timed out.
        assert_eq!(
            classify_end(false, false, None, Established, true),
            End::Timeout
        );
        assert_eq!(
            classify_end(false, false, None, TcpState::Unknown, true),
            End::Timeout
        );
        // A FIN exchange, a RST or an error still say more.
        assert_eq!(classify_end(false, false, None, LastAck, true), End::Fin);
        assert_eq!(
            classify_end(false, true, None, Established, true),
            End::ResetSent
        );
        assert_eq!(
            classify_end(false, false, Some(113), Established, true),
            End::Error
        );
    }

    #[test]
    fn cut_signatures_prefer_icmp_then_reset_then_pmtu_then_blackhole() {
        let gap = |retransmitted, icmp| UnansweredGap {
            gap: 1,
            retransmitted,
            icmp,
        };
        assert_eq!(
            cut_signature(gap(true, true), End::ResetReceived, None, true),
            Some(Signature::Icmp)
        );
        assert_eq!(
            cut_signature(gap(true, false), End::Error, Some(EHOSTUNREACH), true),
            Some(Signature::Icmp)
        );
        assert_eq!(
            cut_signature(gap(true, false), End::ResetReceived, None, true),
            Some(Signature::Reset)
        );
        assert_eq!(
            cut_signature(gap(false, false), End::Timeout, Some(ETIMEDOUT), false),
            Some(Signature::Blackhole)
        );
        assert_eq!(
            cut_signature(gap(true, false), End::Timeout, Some(ETIMEDOUT), true),
            Some(Signature::Pmtu)
        );
        assert_eq!(
            cut_signature(gap(false, false), End::ResetSent, None, false),
            None
        );
    }
}
