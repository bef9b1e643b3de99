//! The model's lifecycle, driven by kernel events as the pipeline feeds them: shared fixtures
//! here, the tests by what they are about in `ends` (roles, how connections end, kernel state
//! lost or reused), `gaps` (idle gaps survived or cut, stalls) and `pmtu` (black holes of the
//! path's MTU, which are not idle cuts).

mod ends;
mod gaps;
mod pmtu;

use super::classify::ETIMEDOUT;
use super::*;
use crate::{
    events::{Event, Side, TcpState},
    settings::parse_ports,
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

pub(super) fn close(at: Nanos, old_state: TcpState, opened_at: Option<Nanos>) -> Event {
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
        soft_error: None,
        segment: None,
    }
}

/// A retransmission through the soft error an ICMP error left on the socket.
pub(super) fn retransmit_after_icmp(at: Nanos, stalled_for: Nanos, errno: u16) -> Event {
    Event::Retransmit {
        at,
        socket: SOCK,
        stalled_for,
        soft_error: Some(errno),
        segment: None,
    }
}

pub(super) fn timed_out(at: Nanos, stalled_for: Nanos) -> [Event; 2] {
    [
        Event::Close {
            at,
            socket: SOCK,
            endpoints: server_side(),
            netns: NETNS,
            old_state: TcpState::Established,
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

pub(super) fn cadences(updates: &[Update]) -> Vec<(Option<Cadence>, Cadence)> {
    updates
        .iter()
        .filter_map(|update| match update {
            Update::CadenceChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}
