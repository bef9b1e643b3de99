//! The nftables `ct timeout` policies of the calling thread's network namespace, read over
//! netlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`), and which flows the rules
//! that set them match.
//!
//! A `ct timeout` policy gives the flows a rule assigns it its own conntrack timeouts, in place
//! of the namespace's sysctls: `ct timeout mailshort { protocol tcp; policy = { established: 5 }
//! }` with `tcp dport 143 ct timeout set "mailshort"` forgets idle IMAP connections after 5 s,
//! whatever `nf_conntrack_tcp_timeout_established` says.
//!
//! Three dumps: the objects of type `NFT_OBJECT_CT_TIMEOUT` (`NFT_MSG_GETOBJ`), then, when
//! there are TCP policies, every rule (`NFT_MSG_GETRULE`, see `nft_rules` for how a rule is
//! read) and the elements of the sets those rules look ports up in (`NFT_MSG_GETSETELEM`). A
//! change of the ruleset between them (its generation differs) or during one (the kernel flags
//! the dump) reads again, up to three times. nfnetlink answers only a caller with
//! CAP_NET_ADMIN in the namespace's user namespace: anything else is
//! [`TimeoutError::PermissionDenied`].
//!
//! The kernel dumps a policy's timeout for every TCP state, the ones it was not given filled
//! with the namespace's defaults of the time it was made: which states a policy really set
//! cannot be told from the dump alone (`timeouts::read_current_namespace` compares them with
//! the sysctls).

use std::collections::{BTreeMap, BTreeSet};

use idlecut_api::vocabulary::TcpTimeoutState;
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::{
    TimeoutError,
    netlink::{Channel, Malformed, NLM_F_DUMP, Reply, Request, after_header, attrs},
    nft_rules::{NFGENMSG_LEN, OBJECT_CT_TIMEOUT, parse_rule},
    nft_sets::{Element, parse_set_elements},
};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
// enum nf_tables_msg_types
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;
// enum nft_object_attributes
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
// enum nft_ct_timeout_timeout_attributes
const NFTA_CT_TIMEOUT_L3PROTO: u16 = 1;
const NFTA_CT_TIMEOUT_L4PROTO: u16 = 2;
const NFTA_CT_TIMEOUT_DATA: u16 = 3;
// enum nft_set_elem_list_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
// enum ctattr_timeout_tcp (linux/netfilter/nfnetlink_cttimeout.h): seconds, big-endian.
const CTA_TIMEOUT_TCP_ESTABLISHED: u16 = 3;
const CTA_TIMEOUT_TCP_CLOSE_WAIT: u16 = 5;
const CTA_TIMEOUT_TCP_RETRANS: u16 = 10;
const CTA_TIMEOUT_TCP_UNACK: u16 = 11;
const IPPROTO_TCP: u8 = 6;
const NFPROTO_UNSPEC: u8 = 0;
const NFNETLINK_V0: u8 = 0;

const WHAT_OBJECTS: &str = "nftables ct timeout policies";
const WHAT_RULES: &str = "nftables rules";
const WHAT_SETS: &str = "nftables set elements";
/// Reads of a ruleset that keeps changing before giving up.
const ATTEMPTS: usize = 3;

/// Which rules apply a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleUse {
    /// The rules could not be read (see [`NftablesTimeouts::rules_error`]).
    NotRead,
    /// No rule applies it: it cuts nothing.
    Unused,
    /// What each rule that applies it matches, in words (`tcp dport 143`).
    Matches(Vec<String>),
}

/// One TCP `ct timeout` policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtTimeoutPolicy {
    /// The table's family: `inet`, `ip`, `ip6`, ... (a number when unknown).
    pub family: String,
    /// The table it belongs to (its name is the table's own).
    pub table: String,
    /// Its name, as rules name it (`ct timeout set "mailshort"`).
    pub name: String,
    /// `l3proto` (an `NFPROTO_*` number: 2 ip, 10 ip6, 1 inet).
    pub l3proto: Option<u16>,
    /// The timeouts (seconds) of the states an idle flow meets, as the kernel dumps them.
    pub timeouts: Vec<(TcpTimeoutState, u64)>,
    /// The rules that apply it.
    pub rules: RuleUse,
}

impl CtTimeoutPolicy {
    /// `family/table/name`, as `HostTimeout::name` gives it: a policy's name is its table's.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}/{}", self.family, self.table, self.name)
    }

    /// One state's timeout, when the kernel dumped it.
    pub fn seconds(&self, state: TcpTimeoutState) -> Option<u64> {
        self.timeouts
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, seconds)| *seconds)
    }

    /// What `HostTimeout::applies_to` says: the rules' matches joined with `or`.
    pub fn applies_to(&self) -> Option<String> {
        match &self.rules {
            RuleUse::NotRead => None,
            RuleUse::Unused => Some("no rule applies it".to_owned()),
            RuleUse::Matches(matches) => Some(matches.join(" or ")),
        }
    }
}

/// What the nftables reader found.
#[derive(Debug)]
pub struct NftablesTimeouts {
    /// The TCP `ct timeout` policies, in the kernel's order.
    pub policies: Vec<CtTimeoutPolicy>,
    /// Why the rules (or their sets) could not be read, when they could not: the policies are
    /// still good, their `rules` are [`RuleUse::NotRead`].
    pub rules_error: Option<TimeoutError>,
}

/// Reads the TCP `ct timeout` policies of the calling thread's network namespace, and which
/// rules apply them. Needs CAP_NET_ADMIN there (else [`TimeoutError::PermissionDenied`]); must
/// run on the thread that entered the namespace.
///
/// A kernel without nftables (no `nfnetlink` or no `nf_tables`) has no policies: an empty
/// answer, not an error.
pub fn read_ct_timeout_policies() -> Result<NftablesTimeouts, TimeoutError> {
    let none = || NftablesTimeouts {
        policies: Vec::new(),
        rules_error: None,
    };
    let mut channel = match Channel::open(NETLINK_NETFILTER, WHAT_OBJECTS) {
        Ok(channel) => channel,
        Err(TimeoutError::Io { source, .. })
            if source.raw_os_error() == Some(libc::EPROTONOSUPPORT) =>
        {
            return Ok(none());
        }
        Err(error) => return Err(error),
    };
    let mut attempt = 1;
    loop {
        match read_once(&mut channel) {
            Err(TimeoutError::Interrupted { .. }) if attempt < ATTEMPTS => attempt += 1,
            // nfnetlink answers so for a subsystem that is not there.
            Err(TimeoutError::Kernel {
                what: WHAT_OBJECTS,
                errno: libc::EOPNOTSUPP,
            }) => return Ok(none()),
            outcome => return outcome,
        }
    }
}

fn read_once(channel: &mut Channel) -> Result<NftablesTimeouts, TimeoutError> {
    let request = Request::new(nft_type(NFT_MSG_GETOBJ), NLM_F_DUMP)
        .header(&nfgenmsg(NFPROTO_UNSPEC))
        .attr(NFTA_OBJ_TYPE, &OBJECT_CT_TIMEOUT.to_be_bytes())
        .map_err(|m| m.into_error(WHAT_OBJECTS))?;
    let replies = channel.exchange(WHAT_OBJECTS, request)?;
    let mut generations = Generations::default();
    let mut policies = Vec::new();
    for reply in replies
        .iter()
        .filter(|r| r.kind == nft_type(NFT_MSG_NEWOBJ))
    {
        generations.see(reply, WHAT_OBJECTS)?;
        if let Some(policy) =
            parse_policy(&reply.payload).map_err(|m| m.into_error(WHAT_OBJECTS))?
        {
            policies.push(policy);
        }
    }
    if policies.is_empty() {
        return Ok(NftablesTimeouts {
            policies,
            rules_error: None,
        });
    }
    let tables = policies
        .iter()
        .map(|p| (p.family.clone(), p.table.clone()))
        .collect();
    let rules_error = match read_rules(channel, &mut generations, &tables) {
        Ok(uses) => {
            for policy in &mut policies {
                let key = (
                    policy.family.clone(),
                    policy.table.clone(),
                    policy.name.clone(),
                );
                policy.rules = match uses.get(&key) {
                    Some(matches) => RuleUse::Matches(matches.clone()),
                    None => RuleUse::Unused,
                };
            }
            None
        }
        Err(error @ TimeoutError::Interrupted { .. }) => return Err(error),
        Err(error) => Some(error),
    };
    Ok(NftablesTimeouts {
        policies,
        rules_error,
    })
}

/// Per `(family, table, policy)`: what each rule applying it matches, in the rules' order,
/// each once.
type Uses = BTreeMap<(String, String, String), Vec<String>>;

/// Reads the rules of the tables in `tables` (`(family, table)`) that apply a `ct timeout`
/// policy, and the sets they look up, into what they apply each policy to.
fn read_rules(
    channel: &mut Channel,
    generations: &mut Generations,
    tables: &BTreeSet<(String, String)>,
) -> Result<Uses, TimeoutError> {
    let request =
        Request::new(nft_type(NFT_MSG_GETRULE), NLM_F_DUMP).header(&nfgenmsg(NFPROTO_UNSPEC));
    let mut rules = Vec::new();
    for reply in channel.exchange(WHAT_RULES, request)? {
        if reply.kind != nft_type(NFT_MSG_NEWRULE) {
            continue;
        }
        generations.see(&reply, WHAT_RULES)?;
        let rule = parse_rule(&reply.payload).map_err(|m| m.into_error(WHAT_RULES))?;
        let table = (family_name(rule.family), rule.table.clone());
        if rule.may_apply_ct_timeout() && tables.contains(&table) {
            rules.push(rule);
        }
    }
    // The elements of the sets those rules look up, each read once.
    let mut sets: BTreeMap<(u8, String, String), Vec<Element>> = BTreeMap::new();
    for rule in &rules {
        for set in rule.sets_wanted() {
            let key = (rule.family, rule.table.clone(), set);
            if sets.contains_key(&key) {
                continue;
            }
            let elements = read_set(channel, generations, &key)?;
            sets.insert(key, elements);
        }
    }
    let mut uses = Uses::new();
    for rule in &rules {
        let elements = |set: &str| {
            sets.get(&(rule.family, rule.table.clone(), set.to_owned()))
                .map(Vec::as_slice)
        };
        for (name, matches) in rule.uses(elements) {
            let these = uses
                .entry((family_name(rule.family), rule.table.clone(), name))
                .or_default();
            if !these.contains(&matches) {
                these.push(matches);
            }
        }
    }
    Ok(uses)
}

fn read_set(
    channel: &mut Channel,
    generations: &mut Generations,
    (family, table, set): &(u8, String, String),
) -> Result<Vec<Element>, TimeoutError> {
    let request = Request::new(nft_type(NFT_MSG_GETSETELEM), NLM_F_DUMP)
        .header(&nfgenmsg(*family))
        .attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        .and_then(|r| r.attr_str(NFTA_SET_ELEM_LIST_SET, set))
        .map_err(|m| m.into_error(WHAT_SETS))?;
    let mut elements = Vec::new();
    for reply in channel.exchange(WHAT_SETS, request)? {
        if reply.kind != nft_type(NFT_MSG_NEWSETELEM) {
            continue;
        }
        generations.see(&reply, WHAT_SETS)?;
        elements.extend(parse_set_elements(&reply.payload).map_err(|m| m.into_error(WHAT_SETS))?);
    }
    Ok(elements)
}

/// The ruleset generations the answers came from (`nfgenmsg.res_id`): all must be the same, or
/// the ruleset changed between dumps and the answers may not fit together.
#[derive(Default)]
struct Generations(Option<u16>);

impl Generations {
    fn see(&mut self, reply: &Reply, what: &'static str) -> Result<(), TimeoutError> {
        let Some(bytes) = reply.payload.get(2..4) else {
            return Err(Malformed::new("message without its nfgenmsg").into_error(what));
        };
        let generation = u16::from_be_bytes([bytes[0], bytes[1]]);
        match self.0 {
            Some(seen) if seen != generation => Err(TimeoutError::Interrupted { what }),
            _ => {
                self.0 = Some(generation);
                Ok(())
            }
        }
    }
}

/// A `NEWOBJ` message's payload into a TCP policy: None for another object type or another
/// protocol's policy.
pub(crate) fn parse_policy(payload: &[u8]) -> Result<Option<CtTimeoutPolicy>, Malformed> {
    let family = *payload
        .first()
        .ok_or_else(|| Malformed::new("empty object"))?;
    let mut table = None;
    let mut name = None;
    let mut kind = None;
    let mut data = None;
    for attr in attrs(after_header(payload, NFGENMSG_LEN)?) {
        let attr = attr?;
        match attr.kind {
            NFTA_OBJ_TABLE => table = Some(attr.string()?),
            NFTA_OBJ_NAME => name = Some(attr.string()?),
            NFTA_OBJ_TYPE => kind = Some(attr.be32()?),
            NFTA_OBJ_DATA => data = Some(attr),
            _ => {}
        }
    }
    if kind != Some(OBJECT_CT_TIMEOUT) {
        return Ok(None);
    }
    let (Some(table), Some(name), Some(data)) = (table, name, data) else {
        return Err(Malformed::new(
            "ct timeout object without its table, name or data",
        ));
    };
    let mut l3proto = None;
    let mut l4proto = None;
    let mut timeouts = Vec::new();
    for attr in data.nested() {
        let attr = attr?;
        match attr.kind {
            NFTA_CT_TIMEOUT_L3PROTO => l3proto = Some(attr.be16()?),
            NFTA_CT_TIMEOUT_L4PROTO => l4proto = Some(attr.u8()?),
            NFTA_CT_TIMEOUT_DATA => {
                for timeout in attr.nested() {
                    let timeout = timeout?;
                    let state = match timeout.kind {
                        CTA_TIMEOUT_TCP_ESTABLISHED => TcpTimeoutState::Established,
                        CTA_TIMEOUT_TCP_CLOSE_WAIT => TcpTimeoutState::CloseWait,
                        CTA_TIMEOUT_TCP_UNACK => TcpTimeoutState::Unacknowledged,
                        CTA_TIMEOUT_TCP_RETRANS => TcpTimeoutState::Retransmitting,
                        _ => continue,
                    };
                    timeouts.push((state, u64::from(timeout.be32()?)));
                }
            }
            _ => {}
        }
    }
    if l4proto != Some(IPPROTO_TCP) {
        return Ok(None);
    }
    Ok(Some(CtTimeoutPolicy {
        family: family_name(family),
        table,
        name,
        l3proto,
        timeouts,
        rules: RuleUse::NotRead,
    }))
}

/// An nftables message type: the subsystem in the high byte.
const fn nft_type(message: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | message
}

/// `struct nfgenmsg` of a request: family, version, `res_id` 0.
const fn nfgenmsg(family: u8) -> [u8; NFGENMSG_LEN] {
    [family, NFNETLINK_V0, 0, 0]
}

/// A table family as `nft` names it.
fn family_name(family: u8) -> String {
    match family {
        1 => "inet".to_owned(),
        2 => "ip".to_owned(),
        3 => "arp".to_owned(),
        5 => "netdev".to_owned(),
        7 => "bridge".to_owned(),
        10 => "ip6".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeouts::netlink::tests::{attr, nest, string};

    fn be32(kind: u16, value: u32) -> Vec<u8> {
        attr(kind, &value.to_be_bytes())
    }

    /// A `NEWOBJ` payload of a ct timeout policy, as the kernel dumps it.
    fn policy_object(family: u8, kind: u32, l4proto: u8) -> Vec<u8> {
        [
            vec![family, 0, 0, 7],
            string(NFTA_OBJ_TABLE, "t"),
            string(NFTA_OBJ_NAME, "mailshort"),
            be32(NFTA_OBJ_TYPE, kind),
            nest(
                NFTA_OBJ_DATA,
                &[
                    attr(NFTA_CT_TIMEOUT_L3PROTO, &2u16.to_be_bytes()),
                    attr(NFTA_CT_TIMEOUT_L4PROTO, &[l4proto]),
                    nest(
                        NFTA_CT_TIMEOUT_DATA,
                        &[
                            be32(1, 120), // SYN_SENT: not a state an idle flow meets
                            be32(CTA_TIMEOUT_TCP_ESTABLISHED, 5),
                            be32(CTA_TIMEOUT_TCP_CLOSE_WAIT, 5),
                            be32(CTA_TIMEOUT_TCP_RETRANS, 300),
                            be32(CTA_TIMEOUT_TCP_UNACK, 300),
                        ],
                    ),
                ],
            ),
            be32(5, 1), // NFTA_OBJ_USE
        ]
        .concat()
    }

    #[test]
    fn a_tcp_policy_is_parsed() {
        let policy = parse_policy(&policy_object(1, OBJECT_CT_TIMEOUT, IPPROTO_TCP))
            .unwrap()
            .unwrap();
        assert_eq!(policy.qualified_name(), "inet/t/mailshort");
        assert_eq!(policy.l3proto, Some(2));
        assert_eq!(policy.seconds(TcpTimeoutState::Established), Some(5));
        assert_eq!(policy.seconds(TcpTimeoutState::CloseWait), Some(5));
        assert_eq!(policy.seconds(TcpTimeoutState::Unacknowledged), Some(300));
        assert_eq!(policy.seconds(TcpTimeoutState::Retransmitting), Some(300));
        assert_eq!(policy.timeouts.len(), 4);
        assert_eq!(policy.rules, RuleUse::NotRead);
        assert_eq!(policy.applies_to(), None);
    }

    #[test]
    fn other_objects_and_protocols_are_skipped() {
        assert_eq!(parse_policy(&policy_object(1, 1, IPPROTO_TCP)), Ok(None));
        assert_eq!(
            parse_policy(&policy_object(2, OBJECT_CT_TIMEOUT, 17)),
            Ok(None)
        );
        let policy = parse_policy(&policy_object(10, OBJECT_CT_TIMEOUT, IPPROTO_TCP));
        assert_eq!(policy.unwrap().unwrap().family, "ip6");
    }

    #[test]
    fn a_truncated_policy_is_an_error_or_nothing_never_a_panic() {
        let full = policy_object(1, OBJECT_CT_TIMEOUT, IPPROTO_TCP);
        let mut good_cuts = 0;
        for cut in 0..full.len() {
            if let Ok(Some(_)) = parse_policy(&full[..cut]) {
                good_cuts += 1;
            }
        }
        // Only the cut that drops the trailing NFTA_OBJ_USE leaves a whole policy.
        assert_eq!(good_cuts, 1);
        // A wrong-sized timeout is an error, not a guess.
        let mut wrong = full.clone();
        let at = full
            .windows(4)
            .position(|w| w == [8, 0, CTA_TIMEOUT_TCP_ESTABLISHED as u8, 0])
            .unwrap();
        wrong[at] = 6;
        assert!(parse_policy(&wrong).is_err());
        assert!(parse_policy(&[]).is_err());
    }

    #[test]
    fn applies_to_joins_the_rules() {
        let mut policy = parse_policy(&policy_object(1, OBJECT_CT_TIMEOUT, IPPROTO_TCP))
            .unwrap()
            .unwrap();
        policy.rules =
            RuleUse::Matches(vec!["tcp dport 143".to_owned(), "tcp dport 993".to_owned()]);
        assert_eq!(
            policy.applies_to().as_deref(),
            Some("tcp dport 143 or tcp dport 993")
        );
        policy.rules = RuleUse::Unused;
        assert_eq!(policy.applies_to().as_deref(), Some("no rule applies it"));
    }

    #[test]
    fn generations_must_agree() {
        let mut generations = Generations::default();
        let reply = |generation: u16| Reply {
            kind: nft_type(NFT_MSG_NEWOBJ),
            payload: [vec![1, 0], generation.to_be_bytes().to_vec()].concat(),
        };
        assert!(generations.see(&reply(7), "x").is_ok());
        assert!(generations.see(&reply(7), "x").is_ok());
        assert!(matches!(
            generations.see(&reply(8), "x"),
            Err(TimeoutError::Interrupted { .. })
        ));
        let short = Reply {
            kind: 0,
            payload: vec![1],
        };
        assert!(matches!(
            generations.see(&short, "x"),
            Err(TimeoutError::Malformed { .. })
        ));
    }
}
