//! Which flows an nftables `ct timeout` policy applies to, told from the rules that set it.
//!
//! A rule is a list of expressions working on registers: `tcp dport 143 ct timeout set
//! "mailshort"` is, as the kernel dumps it,
//!
//! ```text
//! [ meta load l4proto => reg 1 ]
//! [ cmp eq reg 1 0x00000006 ]
//! [ payload load 2b @ transport header + 2 => reg 1 ]
//! [ cmp eq reg 1 0x00008f00 ]
//! [ objref type 7 name mailshort ]
//! ```
//!
//! so the reader follows what each register holds (a TCP port, the layer 4 protocol, something
//! else), turns the comparisons of ports (`cmp`, `range`, `lookup` in a set) into text, and
//! counts every other comparison as "other conditions". It reads only the rule itself: when the
//! rule sits in a chain reached by a `jump`, the jumping rule's conditions also apply and are
//! not shown. A policy chosen through a map (`ct timeout set tcp dport map { 143 : "a" }`) is
//! followed when the map's elements could be read.

use std::collections::BTreeMap;

use super::{
    netlink::{Attr, Malformed, after_header, attrs},
    nft_sets::{Element, port_ranges},
};

// enum nft_rule_attributes, nft_list_attributes, nft_expr_attributes (linux/netfilter/nf_tables.h)
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// Per expression: payload, meta, cmp, range, lookup, objref.
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_OBJREF_IMM_TYPE: u16 = 1;
const NFTA_OBJREF_IMM_NAME: u16 = 2;
const NFTA_OBJREF_SET_SREG: u16 = 3;
const NFTA_OBJREF_SET_NAME: u16 = 4;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `NFT_OBJECT_CT_TIMEOUT`.
pub(crate) const OBJECT_CT_TIMEOUT: u32 = 7;
/// Length of `struct nfgenmsg`.
pub(crate) const NFGENMSG_LEN: usize = 4;

/// `enum nft_cmp_ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn from_u32(op: u32) -> Option<Self> {
        Some(match op {
            0 => Self::Eq,
            1 => Self::Neq,
            2 => Self::Lt,
            3 => Self::Lte,
            4 => Self::Gt,
            5 => Self::Gte,
            _ => return None,
        })
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Eq => "",
            Self::Neq => "!= ",
            Self::Lt => "< ",
            Self::Lte => "<= ",
            Self::Gt => "> ",
            Self::Gte => ">= ",
        }
    }
}

/// The expressions of a rule the reader understands; `Other` stands for the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Meta {
        dreg: u32,
        key: u32,
    },
    Cmp {
        sreg: u32,
        op: Option<CmpOp>,
        data: Vec<u8>,
    },
    Range {
        sreg: u32,
        op: Option<CmpOp>,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Lookup {
        sreg: u32,
        set: String,
        inverted: bool,
    },
    /// `objref type T name N`: applies object N of type T.
    Objref {
        kind: u32,
        name: String,
    },
    /// `objref sreg R set S`: applies the object the map S gives for register R's value.
    ObjrefMap {
        sreg: u32,
        set: String,
    },
    /// Any other expression (or a form of the above the reader does not follow, such as a
    /// `meta set`): it may load into registers, so what they held is forgotten.
    Other {
        name: String,
    },
}

/// One rule, as much as the policy reader needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) family: u8,
    pub(crate) table: String,
    pub(crate) chain: String,
    pub(crate) exprs: Vec<Expr>,
}

/// A `NEWRULE` message's payload (after the netlink header) into a [`Rule`].
pub(crate) fn parse_rule(payload: &[u8]) -> Result<Rule, Malformed> {
    let family = *payload
        .first()
        .ok_or_else(|| Malformed::new("empty rule"))?;
    let mut rule = Rule {
        family,
        table: String::new(),
        chain: String::new(),
        exprs: Vec::new(),
    };
    for attr in attrs(after_header(payload, NFGENMSG_LEN)?) {
        let attr = attr?;
        match attr.kind {
            NFTA_RULE_TABLE => rule.table = attr.string()?,
            NFTA_RULE_CHAIN => rule.chain = attr.string()?,
            NFTA_RULE_EXPRESSIONS => {
                for elem in attr.nested() {
                    let elem = elem?;
                    if elem.kind == NFTA_LIST_ELEM {
                        rule.exprs.push(parse_expr(elem)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(rule)
}

fn parse_expr(elem: Attr<'_>) -> Result<Expr, Malformed> {
    let mut name = String::new();
    let mut data = None;
    for attr in elem.nested() {
        let attr = attr?;
        match attr.kind {
            NFTA_EXPR_NAME => name = attr.string()?,
            NFTA_EXPR_DATA => data = Some(attr),
            _ => {}
        }
    }
    let mut fields: BTreeMap<u16, Attr<'_>> = BTreeMap::new();
    if let Some(data) = data {
        for attr in data.nested() {
            let attr = attr?;
            fields.insert(attr.kind, attr);
        }
    }
    let be32 = |kind| fields.get(&kind).map(Attr::be32).transpose();
    let string = |kind| fields.get(&kind).map(Attr::string).transpose();
    let value = |kind| -> Result<Option<Vec<u8>>, Malformed> {
        let Some(attr) = fields.get(&kind) else {
            return Ok(None);
        };
        for inner in attr.nested() {
            let inner = inner?;
            if inner.kind == NFTA_DATA_VALUE {
                return Ok(Some(inner.payload.to_vec()));
            }
        }
        Ok(None)
    };
    let other = || Expr::Other { name: name.clone() };
    Ok(match name.as_str() {
        "payload" => match (
            be32(NFTA_PAYLOAD_DREG)?,
            be32(NFTA_PAYLOAD_BASE)?,
            be32(NFTA_PAYLOAD_OFFSET)?,
            be32(NFTA_PAYLOAD_LEN)?,
        ) {
            (Some(dreg), Some(base), Some(offset), Some(len)) => Expr::Payload {
                dreg,
                base,
                offset,
                len,
            },
            _ => other(),
        },
        "meta" => match (be32(NFTA_META_DREG)?, be32(NFTA_META_KEY)?) {
            (Some(dreg), Some(key)) => Expr::Meta { dreg, key },
            _ => other(),
        },
        "cmp" => match (be32(NFTA_CMP_SREG)?, value(NFTA_CMP_DATA)?) {
            (Some(sreg), Some(data)) => Expr::Cmp {
                sreg,
                op: be32(NFTA_CMP_OP)?.and_then(CmpOp::from_u32),
                data,
            },
            _ => other(),
        },
        "range" => match (
            be32(NFTA_RANGE_SREG)?,
            value(NFTA_RANGE_FROM_DATA)?,
            value(NFTA_RANGE_TO_DATA)?,
        ) {
            (Some(sreg), Some(from), Some(to)) => Expr::Range {
                sreg,
                op: be32(NFTA_RANGE_OP)?.and_then(CmpOp::from_u32),
                from,
                to,
            },
            _ => other(),
        },
        "lookup" => match (be32(NFTA_LOOKUP_SREG)?, string(NFTA_LOOKUP_SET)?) {
            (Some(sreg), Some(set)) => Expr::Lookup {
                sreg,
                set,
                inverted: be32(NFTA_LOOKUP_FLAGS)?.unwrap_or(0) & NFT_LOOKUP_F_INV != 0,
            },
            _ => other(),
        },
        "objref" => match (
            be32(NFTA_OBJREF_IMM_TYPE)?,
            string(NFTA_OBJREF_IMM_NAME)?,
            be32(NFTA_OBJREF_SET_SREG)?,
            string(NFTA_OBJREF_SET_NAME)?,
        ) {
            (Some(kind), Some(name), _, _) => Expr::Objref { kind, name },
            (_, _, Some(sreg), Some(set)) => Expr::ObjrefMap { sreg, set },
            _ => other(),
        },
        _ => other(),
    })
}

impl Rule {
    /// Whether the rule applies a `ct timeout` object, or may (through a map of objects).
    pub(crate) fn may_apply_ct_timeout(&self) -> bool {
        self.exprs.iter().any(|expr| match expr {
            Expr::Objref { kind, .. } => *kind == OBJECT_CT_TIMEOUT,
            Expr::ObjrefMap { .. } => true,
            _ => false,
        })
    }

    /// The sets and maps the rule looks up, whose elements [`Rule::uses`] wants, when the rule
    /// applies a `ct timeout` object at all.
    pub(crate) fn sets_wanted(&self) -> Vec<String> {
        if !self.may_apply_ct_timeout() {
            return Vec::new();
        }
        self.exprs
            .iter()
            .filter_map(|expr| match expr {
                Expr::Lookup { set, .. } | Expr::ObjrefMap { set, .. } => Some(set.clone()),
                _ => None,
            })
            .collect()
    }

    /// The `ct timeout` objects (by name, in the rule's table) the rule applies, each with the
    /// flows it applies it to, in words. `elements` gives a set's elements when they were read.
    pub(crate) fn uses<'a>(
        &self,
        elements: impl Fn(&str) -> Option<&'a [Element]>,
    ) -> Vec<(String, String)> {
        let mut regs: BTreeMap<u32, Loaded> = BTreeMap::new();
        let mut proto: Option<u8> = None;
        let mut conditions: Vec<Condition> = Vec::new();
        let mut uses = Vec::new();
        let loaded = |regs: &BTreeMap<u32, Loaded>, reg: u32| {
            slot(reg)
                .and_then(|s| regs.get(&s).copied())
                .unwrap_or(Loaded::Unknown)
        };
        for expr in &self.exprs {
            match expr {
                Expr::Payload {
                    dreg,
                    base,
                    offset,
                    len,
                } => {
                    let what = match (*base, *offset, *len) {
                        (NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2) => Loaded::Port("sport"),
                        (NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2) => Loaded::Port("dport"),
                        (NFT_PAYLOAD_NETWORK_HEADER, 9, 1) if self.family == NFPROTO_IPV4 => {
                            Loaded::L4Proto
                        }
                        (NFT_PAYLOAD_NETWORK_HEADER, 6, 1) if self.family == NFPROTO_IPV6 => {
                            Loaded::L4Proto
                        }
                        _ => Loaded::Unknown,
                    };
                    load(&mut regs, *dreg, *len, what);
                }
                Expr::Meta { dreg, key } => {
                    let what = if *key == NFT_META_L4PROTO {
                        Loaded::L4Proto
                    } else {
                        Loaded::Unknown
                    };
                    load(&mut regs, *dreg, 4, what);
                }
                Expr::Cmp { sreg, op, data } => match (loaded(&regs, *sreg), op, port(data)) {
                    (Loaded::L4Proto, Some(CmpOp::Eq), _) if data.len() == 1 => {
                        proto = data.first().copied();
                    }
                    (Loaded::Port(field), Some(op), Some(value)) => {
                        push_port_test(&mut conditions, field, *op, value);
                    }
                    _ => conditions.push(Condition::Other),
                },
                Expr::Range { sreg, op, from, to } => {
                    match (loaded(&regs, *sreg), op, port(from), port(to)) {
                        (
                            Loaded::Port(field),
                            Some(op @ (CmpOp::Eq | CmpOp::Neq)),
                            Some(a),
                            Some(b),
                        ) => {
                            conditions.push(Condition::Port {
                                field,
                                test: PortTest::Ranges(vec![(a, b)], *op == CmpOp::Neq),
                            });
                        }
                        _ => conditions.push(Condition::Other),
                    }
                }
                Expr::Lookup {
                    sreg,
                    set,
                    inverted,
                } => match loaded(&regs, *sreg) {
                    Loaded::Port(field) => {
                        let test = match elements(set).and_then(port_ranges) {
                            Some(ranges) => PortTest::Ranges(
                                ranges.into_iter().map(|(a, b, _)| (a, b)).collect(),
                                *inverted,
                            ),
                            None => PortTest::Set(set.clone(), *inverted),
                        };
                        conditions.push(Condition::Port { field, test });
                    }
                    _ => conditions.push(Condition::Other),
                },
                Expr::Objref { kind, name } => {
                    if *kind == OBJECT_CT_TIMEOUT {
                        uses.push((name.clone(), describe(proto, &conditions)));
                    }
                }
                Expr::ObjrefMap { sreg, set } => {
                    let Some(map) = elements(set) else { continue };
                    let field = match loaded(&regs, *sreg) {
                        Loaded::Port(field) => Some(field),
                        _ => None,
                    };
                    let ranges = field.and_then(|_| port_ranges(map));
                    let mut names: Vec<&str> =
                        map.iter().filter_map(|e| e.objref.as_deref()).collect();
                    names.sort_unstable();
                    names.dedup();
                    for name in names {
                        let mut these = conditions.clone();
                        match (field, &ranges) {
                            (Some(field), Some(ranges)) => these.push(Condition::Port {
                                field,
                                test: PortTest::Ranges(
                                    ranges
                                        .iter()
                                        .filter(|(_, _, o)| o.as_deref() == Some(name))
                                        .map(|&(a, b, _)| (a, b))
                                        .collect(),
                                    false,
                                ),
                            }),
                            _ => these.push(Condition::Other),
                        }
                        uses.push((name.to_owned(), describe(proto, &these)));
                    }
                }
                Expr::Other { name } => {
                    regs.clear();
                    if !NOT_CONDITIONS.contains(&name.as_str()) {
                        conditions.push(Condition::Other);
                    }
                }
            }
        }
        uses
    }
}

/// Expressions that load, count or log but decide nothing by themselves (the comparison that
/// follows a load does).
const NOT_CONDITIONS: [&str; 13] = [
    "counter",
    "log",
    "immediate",
    "ct",
    "bitwise",
    "byteorder",
    "exthdr",
    "fib",
    "rt",
    "socket",
    "hash",
    "numgen",
    "notrack",
];

/// What a register holds, as far as the reader follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loaded {
    /// A TCP/UDP port: `sport` or `dport`.
    Port(&'static str),
    /// The layer 4 protocol number.
    L4Proto,
    Unknown,
}

/// A register as an index of 32-bit slots: `NFT_REG_1..4` (16 bytes each) and
/// `NFT_REG32_00..15` (4 bytes each) name the same storage.
fn slot(reg: u32) -> Option<u32> {
    match reg {
        1..=4 => Some(reg * 4),
        8..=23 => Some(reg - 8 + 4),
        _ => None,
    }
}

fn load(regs: &mut BTreeMap<u32, Loaded>, dreg: u32, len: u32, what: Loaded) {
    let Some(first) = slot(dreg) else { return };
    for extra in 1..len.div_ceil(4).clamp(1, 16) {
        regs.remove(&(first + extra));
    }
    regs.insert(first, what);
}

/// A 2-byte value in network order as a port.
pub(crate) fn port(data: &[u8]) -> Option<u16> {
    <[u8; 2]>::try_from(data).ok().map(u16::from_be_bytes)
}

/// How a rule compares a port.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortTest {
    Cmp(CmpOp, u16),
    /// In (or, if true, not in) these inclusive ranges.
    Ranges(Vec<(u16, u16)>, bool),
    /// In (or not in) a set whose elements could not be read.
    Set(String, bool),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Condition {
    Port { field: &'static str, test: PortTest },
    Other,
}

fn push_port_test(conditions: &mut Vec<Condition>, field: &'static str, op: CmpOp, value: u16) {
    // `tcp dport 1000-2000` is dumped as `>= 1000` then `<= 2000`.
    if op == CmpOp::Lte
        && let Some(Condition::Port {
            field: last_field,
            test: PortTest::Cmp(CmpOp::Gte, from),
        }) = conditions.last()
        && *last_field == field
    {
        let from = *from;
        conditions.pop();
        conditions.push(Condition::Port {
            field,
            test: PortTest::Ranges(vec![(from, value)], false),
        });
        return;
    }
    conditions.push(Condition::Port {
        field,
        test: PortTest::Cmp(op, value),
    });
}

/// The conditions of a rule in words: `tcp dport 143`, `tcp dport { 143, 993 } and other
/// conditions`, `all tcp` when it has none.
fn describe(proto: Option<u8>, conditions: &[Condition]) -> String {
    let proto = match proto {
        None | Some(6) => "tcp".to_owned(),
        Some(17) => "udp".to_owned(),
        Some(other) => format!("l4proto {other}"),
    };
    let mut parts: Vec<String> = conditions
        .iter()
        .filter_map(|condition| match condition {
            Condition::Port { field, test } => Some(format!("{proto} {field} {}", render(test))),
            Condition::Other => None,
        })
        .collect();
    if conditions.contains(&Condition::Other) {
        parts.push("other conditions".to_owned());
    }
    if parts.is_empty() {
        return format!("all {proto}");
    }
    parts.join(" and ")
}

fn render(test: &PortTest) -> String {
    let not = |negated: bool| if negated { "!= " } else { "" };
    match test {
        PortTest::Cmp(op, value) => format!("{}{value}", op.prefix()),
        PortTest::Ranges(ranges, negated) => {
            let items: Vec<String> = ranges
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            match items.as_slice() {
                [one] => format!("{}{one}", not(*negated)),
                _ => format!("{}{{ {} }}", not(*negated), items.join(", ")),
            }
        }
        PortTest::Set(name, negated) => format!("{}@{name}", not(*negated)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::timeouts::{
        netlink::tests::{attr, nest, string},
        nft_sets::tests::{end, key},
    };

    pub(crate) fn be32(kind: u16, value: u32) -> Vec<u8> {
        attr(kind, &value.to_be_bytes())
    }

    pub(crate) fn data(kind: u16, bytes: &[u8]) -> Vec<u8> {
        nest(kind, &[attr(NFTA_DATA_VALUE, bytes)])
    }

    fn expr(name: &str, fields: &[Vec<u8>]) -> Vec<u8> {
        nest(
            NFTA_LIST_ELEM,
            &[string(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, fields)],
        )
    }

    pub(crate) fn meta_l4proto() -> Vec<u8> {
        expr(
            "meta",
            &[
                be32(NFTA_META_KEY, NFT_META_L4PROTO),
                be32(NFTA_META_DREG, 1),
            ],
        )
    }

    pub(crate) fn payload(base: u32, offset: u32, len: u32) -> Vec<u8> {
        expr(
            "payload",
            &[
                be32(NFTA_PAYLOAD_DREG, 1),
                be32(NFTA_PAYLOAD_BASE, base),
                be32(NFTA_PAYLOAD_OFFSET, offset),
                be32(NFTA_PAYLOAD_LEN, len),
            ],
        )
    }

    pub(crate) fn dport() -> Vec<u8> {
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
    }

    pub(crate) fn cmp(op: u32, bytes: &[u8]) -> Vec<u8> {
        expr(
            "cmp",
            &[
                be32(NFTA_CMP_SREG, 1),
                be32(NFTA_CMP_OP, op),
                data(NFTA_CMP_DATA, bytes),
            ],
        )
    }

    pub(crate) fn objref(name: &str) -> Vec<u8> {
        expr(
            "objref",
            &[
                be32(NFTA_OBJREF_IMM_TYPE, OBJECT_CT_TIMEOUT),
                string(NFTA_OBJREF_IMM_NAME, name),
            ],
        )
    }

    fn lookup(set: &str, flags: u32) -> Vec<u8> {
        expr(
            "lookup",
            &[
                string(NFTA_LOOKUP_SET, set),
                be32(NFTA_LOOKUP_SREG, 1),
                be32(NFTA_LOOKUP_FLAGS, flags),
            ],
        )
    }

    /// A `NEWRULE` payload: nfgenmsg, table, chain, the expressions.
    pub(crate) fn rule(family: u8, exprs: &[Vec<u8>]) -> Vec<u8> {
        [
            vec![family, 0, 0, 9],
            string(NFTA_RULE_TABLE, "t"),
            string(NFTA_RULE_CHAIN, "pre"),
            be32(3, 0x1234), // NFTA_RULE_HANDLE is be64 in reality; unknown sizes are skipped
            nest(NFTA_RULE_EXPRESSIONS, exprs),
        ]
        .concat()
    }

    fn uses_of(payload: &[u8], sets: &[(&str, Vec<Element>)]) -> Vec<(String, String)> {
        let rule = parse_rule(payload).unwrap();
        assert_eq!((rule.table.as_str(), rule.chain.as_str()), ("t", "pre"));
        rule.uses(|name| {
            sets.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, elements)| elements.as_slice())
        })
    }

    fn one(name: &str, text: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), text.to_owned())]
    }

    #[test]
    fn a_port_match_is_told() {
        let mailshort = rule(
            1,
            &[
                meta_l4proto(),
                cmp(0, &[6]),
                dport(),
                cmp(0, &143u16.to_be_bytes()),
                objref("mailshort"),
            ],
        );
        assert_eq!(uses_of(&mailshort, &[]), one("mailshort", "tcp dport 143"));
        let parsed = parse_rule(&mailshort).unwrap();
        assert!(parsed.may_apply_ct_timeout());
        assert!(parsed.sets_wanted().is_empty());
        // `th dport 587`: no protocol test; the policy is TCP's anyway.
        let th = rule(1, &[dport(), cmp(0, &587u16.to_be_bytes()), objref("p")]);
        assert_eq!(uses_of(&th, &[]), one("p", "tcp dport 587"));
        // No condition at all.
        assert_eq!(uses_of(&rule(1, &[objref("p")]), &[]), one("p", "all tcp"));
        // `tcp dport != 110`, and the IPv4 header's protocol field as the protocol test.
        let ne = rule(
            2,
            &[
                payload(NFT_PAYLOAD_NETWORK_HEADER, 9, 1),
                cmp(0, &[6]),
                dport(),
                cmp(1, &110u16.to_be_bytes()),
                objref("p"),
            ],
        );
        assert_eq!(uses_of(&ne, &[]), one("p", "tcp dport != 110"));
        // A rule without a ct timeout object applies none.
        let counter = rule(
            1,
            &[dport(), cmp(0, &143u16.to_be_bytes()), expr("counter", &[])],
        );
        assert!(uses_of(&counter, &[]).is_empty());
        assert!(!parse_rule(&counter).unwrap().may_apply_ct_timeout());
    }

    #[test]
    fn ranges_sources_and_other_conditions_are_told() {
        let range = rule(
            1,
            &[
                meta_l4proto(),
                cmp(0, &[6]),
                dport(),
                cmp(5, &1000u16.to_be_bytes()),
                cmp(3, &2000u16.to_be_bytes()),
                objref("p"),
            ],
        );
        assert_eq!(uses_of(&range, &[]), one("p", "tcp dport 1000-2000"));
        let sport_and_saddr = rule(
            2,
            &[
                meta_l4proto(),
                cmp(0, &[6]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2),
                cmp(0, &25u16.to_be_bytes()),
                payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 1),
                cmp(0, &[10]),
                objref("p"),
            ],
        );
        assert_eq!(
            uses_of(&sport_and_saddr, &[]),
            one("p", "tcp sport 25 and other conditions")
        );
        // An unknown expression forgets what the registers held, and `limit` decides by itself.
        let clobbered = rule(
            1,
            &[
                dport(),
                expr("limit", &[]),
                cmp(0, &143u16.to_be_bytes()),
                objref("p"),
            ],
        );
        assert_eq!(uses_of(&clobbered, &[]), one("p", "other conditions"));
        let udp = rule(
            1,
            &[
                meta_l4proto(),
                cmp(0, &[17]),
                dport(),
                cmp(0, &53u16.to_be_bytes()),
                objref("p"),
            ],
        );
        assert_eq!(uses_of(&udp, &[]), one("p", "udp dport 53"));
    }

    #[test]
    fn set_lookups_are_told_by_their_elements() {
        let in_set = rule(
            1,
            &[
                meta_l4proto(),
                cmp(0, &[6]),
                dport(),
                lookup("__set0", 0),
                objref("long"),
            ],
        );
        let parsed = parse_rule(&in_set).unwrap();
        assert_eq!(parsed.sets_wanted(), vec!["__set0".to_owned()]);
        assert_eq!(
            uses_of(&in_set, &[("__set0", vec![key(993), key(143)])]),
            one("long", "tcp dport { 143, 993 }")
        );
        assert_eq!(uses_of(&in_set, &[]), one("long", "tcp dport @__set0"));
        let interval = vec![end(0), key(1000), end(2001), key(3000)];
        assert_eq!(
            uses_of(&in_set, &[("__set0", interval)]),
            one("long", "tcp dport { 1000-2000, 3000-65535 }")
        );
        let ranged = vec![Element {
            key_end: Some(2000u16.to_be_bytes().to_vec()),
            ..key(1000)
        }];
        assert_eq!(
            uses_of(&in_set, &[("__set0", ranged)]),
            one("long", "tcp dport 1000-2000")
        );
        let not_in = rule(
            1,
            &[dport(), lookup("ports", NFT_LOOKUP_F_INV), objref("p")],
        );
        assert_eq!(
            uses_of(&not_in, &[("ports", vec![key(25)])]),
            one("p", "tcp dport != 25")
        );
        // Keys that are not ports (a concatenation) leave the set by name.
        let wide = vec![Element {
            key: vec![0; 8],
            ..Element::default()
        }];
        assert_eq!(
            uses_of(&not_in, &[("ports", wide)]),
            one("p", "tcp dport != @ports")
        );
    }

    #[test]
    fn a_map_of_policies_is_followed() {
        let map = rule(
            1,
            &[
                meta_l4proto(),
                cmp(0, &[6]),
                dport(),
                expr(
                    "objref",
                    &[
                        be32(NFTA_OBJREF_SET_SREG, 1),
                        string(NFTA_OBJREF_SET_NAME, "__objmap0"),
                    ],
                ),
            ],
        );
        assert_eq!(
            parse_rule(&map).unwrap().sets_wanted(),
            vec!["__objmap0".to_owned()]
        );
        let with = |port, name: &str| Element {
            objref: Some(name.to_owned()),
            ..key(port)
        };
        let elements = vec![with(465, "long"), with(143, "short"), with(993, "short")];
        assert_eq!(
            uses_of(&map, &[("__objmap0", elements)]),
            vec![
                ("long".to_owned(), "tcp dport 465".to_owned()),
                ("short".to_owned(), "tcp dport { 143, 993 }".to_owned()),
            ]
        );
        assert!(
            uses_of(&map, &[]).is_empty(),
            "an unread map names no policy"
        );
    }

    #[test]
    fn a_truncated_or_garbled_rule_is_an_error_not_a_panic() {
        let full = rule(
            1,
            &[
                meta_l4proto(),
                cmp(0, &[6]),
                dport(),
                lookup("s", 0),
                objref("mailshort"),
            ],
        );
        for cut in 0..full.len() {
            if let Ok(rule) = parse_rule(&full[..cut]) {
                let _ = rule.uses(|_| None);
            }
        }
        for index in 4..full.len() {
            let mut garbled = full.clone();
            garbled[index] = 0xff;
            if let Ok(rule) = parse_rule(&garbled) {
                let _ = rule.uses(|_| Some(&[]));
            }
        }
        assert!(parse_rule(&[]).is_err());
        assert!(parse_rule(&[1, 0]).is_err());
        // A register number out of range is no register.
        let wild = rule(
            1,
            &[
                expr(
                    "payload",
                    &[
                        be32(NFTA_PAYLOAD_DREG, 99),
                        be32(NFTA_PAYLOAD_BASE, 2),
                        be32(NFTA_PAYLOAD_OFFSET, 2),
                        be32(NFTA_PAYLOAD_LEN, 2),
                    ],
                ),
                objref("p"),
            ],
        );
        assert_eq!(uses_of(&wild, &[]), one("p", "all tcp"));
    }
}
