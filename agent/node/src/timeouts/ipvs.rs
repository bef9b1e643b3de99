//! IPVS's own idle timeouts in the calling thread's network namespace (`ipvsadm --set tcp
//! tcpfin udp`), read over generic netlink: family `IPVS`, command `IPVS_CMD_GET_CONFIG`.
//!
//! IPVS keeps its own connection table, apart from conntrack's, and forgets an idle TCP
//! connection after its `tcp` timeout: 900 s by default, far below RFC 5382's two hours, which
//! makes it a usual cutter of idle connections to Kubernetes services under kube-proxy's IPVS
//! mode.
//!
//! Whether IPVS is there is told by `/proc/thread-self/net/ip_vs`, not `/proc/net/ip_vs`:
//! `/proc/net` is `/proc/self/net`, the network namespace of the process's main thread, not of
//! the scan thread that entered another one (checked on Linux 6.18: after `setns`,
//! `/proc/net/dev` still lists the process's interfaces, `/proc/thread-self/net/dev` the
//! namespace's). Without it (module not loaded) there is no IPVS to cut anything: `Ok(None)`.
//! An unknown generic netlink family (the module went away in between) says the same.
//!
//! Untested against a live IPVS: the kernel this was written on has no IPVS (neither built in
//! nor as a module), so only the request encoding and the parsing of hand-built answers are
//! tested (below), against the layouts of `linux/ip_vs.h`, `linux/genetlink.h` and the
//! kernel's `ip_vs_genl_get_cmd` (host-order `u32` seconds).

use std::path::Path;

use netlink_sys::protocols::NETLINK_GENERIC;

use super::{
    TimeoutError,
    netlink::{Channel, Malformed, NLM_F_ACK, Reply, Request, after_header, attrs},
};

/// `GENL_ID_CTRL`: the generic netlink controller, which names families' IDs.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// Length of `struct genlmsghdr`.
const GENLMSG_LEN: usize = 4;
const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;
const IPVS_CMD_GET_CONFIG: u8 = 13;
const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const IPVS_CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const IPVS_CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const WHAT_FAMILY: &str = "generic netlink family IPVS";
const WHAT_CONFIG: &str = "IPVS config";

/// IPVS's timeouts, in seconds; each None when the kernel was built without that protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpvsTimeouts {
    /// An established TCP connection's idle timeout (`ipvsadm --set`'s first value).
    pub tcp: Option<u64>,
    /// After a FIN (`tcpfin`).
    pub tcp_fin: Option<u64>,
    /// A UDP flow's (`udp`), for completeness: not a TCP cutter.
    pub udp: Option<u64>,
}

/// Whether IPVS is loaded, seen from the calling thread's network namespace (`proc` is
/// normally `/proc`).
pub fn present(proc: &Path) -> bool {
    proc.join("thread-self/net/ip_vs").exists()
}

/// Reads IPVS's timeouts in the calling thread's network namespace: `Ok(None)` when IPVS is not
/// loaded. Needs CAP_NET_ADMIN there (else [`TimeoutError::PermissionDenied`]); must run on the
/// thread that entered the namespace.
pub fn read_ipvs_timeouts(proc: &Path) -> Result<Option<IpvsTimeouts>, TimeoutError> {
    if !present(proc) {
        return Ok(None);
    }
    let mut channel = Channel::open(NETLINK_GENERIC, WHAT_FAMILY)?;
    let replies = match channel.exchange(WHAT_FAMILY, family_request()?) {
        Ok(replies) => replies,
        Err(TimeoutError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(family) = family_id(&replies).map_err(|m| m.into_error(WHAT_FAMILY))? else {
        return Err(
            Malformed::new("no family ID in the controller's answer").into_error(WHAT_FAMILY)
        );
    };
    let replies = channel.exchange(WHAT_CONFIG, config_request(family)?)?;
    let Some(reply) = replies.iter().find(|r| r.kind == family) else {
        return Err(Malformed::new("no config in the answer").into_error(WHAT_CONFIG));
    };
    parse_config(&reply.payload)
        .map(Some)
        .map_err(|m| m.into_error(WHAT_CONFIG))
}

/// The controller request for the `IPVS` family's ID.
fn family_request() -> Result<Request, TimeoutError> {
    Request::new(GENL_ID_CTRL, NLM_F_ACK)
        .header(&[CTRL_CMD_GETFAMILY, 1, 0, 0])
        .attr_str(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME)
        .map_err(|m| m.into_error(WHAT_FAMILY))
}

/// The `IPVS_CMD_GET_CONFIG` request to family `family`.
fn config_request(family: u16) -> Result<Request, TimeoutError> {
    Ok(Request::new(family, NLM_F_ACK).header(&[IPVS_CMD_GET_CONFIG, IPVS_GENL_VERSION, 0, 0]))
}

/// The family ID in the controller's answer.
fn family_id(replies: &[Reply]) -> Result<Option<u16>, Malformed> {
    for reply in replies.iter().filter(|r| r.kind == GENL_ID_CTRL) {
        for attr in attrs(after_header(&reply.payload, GENLMSG_LEN)?) {
            let attr = attr?;
            if attr.kind == CTRL_ATTR_FAMILY_ID {
                return attr.ne16().map(Some);
            }
        }
    }
    Ok(None)
}

/// The timeouts in an `IPVS_CMD_SET_CONFIG` answer's payload (after the netlink header).
fn parse_config(payload: &[u8]) -> Result<IpvsTimeouts, Malformed> {
    let mut timeouts = IpvsTimeouts::default();
    for attr in attrs(after_header(payload, GENLMSG_LEN)?) {
        let attr = attr?;
        let field = match attr.kind {
            IPVS_CMD_ATTR_TIMEOUT_TCP => &mut timeouts.tcp,
            IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => &mut timeouts.tcp_fin,
            IPVS_CMD_ATTR_TIMEOUT_UDP => &mut timeouts.udp,
            _ => continue,
        };
        *field = Some(u64::from(attr.ne32()?));
    }
    Ok(timeouts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeouts::netlink::{
        messages,
        tests::{attr, message, string},
    };

    #[test]
    fn the_family_request_asks_the_controller_for_ipvs() {
        let bytes = family_request().unwrap().bytes(3).unwrap();
        let parsed: Vec<_> = messages(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kind, GENL_ID_CTRL);
        assert_eq!(parsed[0].flags, 0x1 | NLM_F_ACK);
        assert_eq!(parsed[0].seq, 3);
        assert_eq!(
            &parsed[0].payload[..GENLMSG_LEN],
            &[CTRL_CMD_GETFAMILY, 1, 0, 0]
        );
        assert_eq!(
            &parsed[0].payload[GENLMSG_LEN..],
            string(CTRL_ATTR_FAMILY_NAME, "IPVS").as_slice()
        );
    }

    #[test]
    fn the_config_request_is_get_config_to_the_family() {
        let bytes = config_request(0x23).unwrap().bytes(4).unwrap();
        assert_eq!(bytes.len(), 20);
        let parsed = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(parsed.kind, 0x23);
        assert_eq!(
            parsed.payload,
            &[IPVS_CMD_GET_CONFIG, IPVS_GENL_VERSION, 0, 0]
        );
    }

    fn reply(kind: u16, payload: Vec<u8>) -> Reply {
        Reply { kind, payload }
    }

    #[test]
    fn the_family_id_is_read_from_the_controller_answer() {
        let answer = [
            vec![1, 2, 0, 0],
            string(CTRL_ATTR_FAMILY_NAME, "IPVS"),
            attr(CTRL_ATTR_FAMILY_ID, &0x23u16.to_ne_bytes()),
        ]
        .concat();
        assert_eq!(family_id(&[reply(GENL_ID_CTRL, answer)]), Ok(Some(0x23)));
        assert_eq!(family_id(&[]), Ok(None));
        let wrong_size = [vec![1, 2, 0, 0], attr(CTRL_ATTR_FAMILY_ID, &[0x23])].concat();
        assert!(family_id(&[reply(GENL_ID_CTRL, wrong_size)]).is_err());
        assert!(family_id(&[reply(GENL_ID_CTRL, vec![1, 2])]).is_err());
    }

    #[test]
    fn the_config_answer_gives_the_timeouts() {
        let answer = [
            vec![12, 1, 0, 0],
            attr(IPVS_CMD_ATTR_TIMEOUT_TCP, &900u32.to_ne_bytes()),
            attr(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, &120u32.to_ne_bytes()),
            attr(IPVS_CMD_ATTR_TIMEOUT_UDP, &300u32.to_ne_bytes()),
        ]
        .concat();
        assert_eq!(
            parse_config(&answer),
            Ok(IpvsTimeouts {
                tcp: Some(900),
                tcp_fin: Some(120),
                udp: Some(300),
            })
        );
        // Every truncation is an error or fewer timeouts, never a panic.
        for cut in 0..answer.len() {
            if let Ok(timeouts) = parse_config(&answer[..cut]) {
                assert_eq!(timeouts.udp, None, "cut at {cut}");
            }
        }
        // Through the message layer, as the socket gives it.
        let datagram = message(0x23, 0, 5, &answer);
        let parsed = messages(&datagram).next().unwrap().unwrap();
        assert_eq!(parse_config(parsed.payload).unwrap().tcp, Some(900));
    }

    #[test]
    fn no_ipvs_is_none_without_a_socket() {
        let nowhere = std::env::temp_dir().join("idlecut-no-proc-here");
        assert!(!present(&nowhere));
        assert!(matches!(read_ipvs_timeouts(&nowhere), Ok(None)));
    }
}
