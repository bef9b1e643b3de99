//! The elements of the nftables sets and maps that rules look ports up in (`tcp dport { 143,
//! 993 }` is a lookup in an anonymous set), and their keys as port ranges, so that a rule's
//! conditions can name the ports rather than the set.
//!
//! A plain set's elements are single keys. An interval set's are the starts of its intervals
//! and, flagged `NFT_SET_ELEM_INTERVAL_END`, the first key after each (the kernel dumps
//! `{ 1000-2000 }` as `0 [end]`, `1000`, `2001 [end]`); newer range sets give each element its
//! `key_end` instead.

use super::{
    netlink::{Attr, Malformed, after_header, attrs},
    nft_rules::{NFGENMSG_LEN, NFTA_DATA_VALUE, NFTA_LIST_ELEM, port},
};

// Set elements (enum nft_set_elem_list_attributes, nft_set_elem_attributes).
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_OBJREF: u16 = 9;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

/// One element of a set or map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) key: Vec<u8>,
    /// The end of the range that starts at `key` (sets of concatenations and newer range sets).
    pub(crate) key_end: Option<Vec<u8>>,
    /// An interval set's element that ends the interval before it (at `key` minus one).
    pub(crate) interval_end: bool,
    /// The object a map element gives.
    pub(crate) objref: Option<String>,
}

/// The elements in a `NEWSETELEM` message's payload (after the netlink header).
pub(crate) fn parse_set_elements(payload: &[u8]) -> Result<Vec<Element>, Malformed> {
    let mut elements = Vec::new();
    for attr in attrs(after_header(payload, NFGENMSG_LEN)?) {
        let attr = attr?;
        if attr.kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for elem in attr.nested() {
            let elem = elem?;
            if elem.kind != NFTA_LIST_ELEM {
                continue;
            }
            let mut element = Element::default();
            for field in elem.nested() {
                let field = field?;
                match field.kind {
                    NFTA_SET_ELEM_KEY => element.key = data_value(field)?,
                    NFTA_SET_ELEM_KEY_END => element.key_end = Some(data_value(field)?),
                    NFTA_SET_ELEM_FLAGS => {
                        element.interval_end = field.be32()? & NFT_SET_ELEM_INTERVAL_END != 0;
                    }
                    NFTA_SET_ELEM_OBJREF => element.objref = Some(field.string()?),
                    _ => {}
                }
            }
            elements.push(element);
        }
    }
    Ok(elements)
}

/// The bytes of an `nft_data` attribute's `NFTA_DATA_VALUE` (empty when it holds none).
fn data_value(attr: Attr<'_>) -> Result<Vec<u8>, Malformed> {
    for inner in attr.nested() {
        let inner = inner?;
        if inner.kind == NFTA_DATA_VALUE {
            return Ok(inner.payload.to_vec());
        }
    }
    Ok(Vec::new())
}

/// A set's elements as inclusive port ranges (with the object each gives, for a map), or None
/// when its keys are not ports.
pub(crate) fn port_ranges(elements: &[Element]) -> Option<Vec<(u16, u16, Option<String>)>> {
    let mut sorted = Vec::with_capacity(elements.len());
    for element in elements {
        let end = match &element.key_end {
            Some(end) => Some(port(end)?),
            None => None,
        };
        sorted.push((
            port(&element.key)?,
            !element.interval_end,
            end,
            &element.objref,
        ));
    }
    // Ends (false) before starts at the same key.
    sorted.sort_by_key(|&(key, start, _, _)| (key, start));
    let mut ranges = Vec::new();
    let mut open: Option<(u16, &Option<String>)> = None;
    for (key, start, end, objref) in sorted {
        match (start, end) {
            (true, Some(end)) => ranges.push((key, end, objref.clone())),
            (true, None) => {
                if let Some((from, objref)) = open.take() {
                    ranges.push((from, from, objref.clone()));
                }
                open = Some((key, objref));
            }
            (false, _) => {
                if let Some((from, objref)) = open.take()
                    && key > from
                {
                    ranges.push((from, key - 1, objref.clone()));
                }
            }
        }
    }
    if let Some((from, objref)) = open {
        // A plain set has no ends: each start is one port; an interval set's last open
        // interval runs to the last port.
        let interval = elements.iter().any(|e| e.interval_end);
        ranges.push((from, if interval { u16::MAX } else { from }, objref.clone()));
    }
    Some(ranges)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::timeouts::{
        netlink::tests::{nest, string},
        nft_rules::tests::{be32, data},
    };

    const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;

    pub(crate) fn key(port: u16) -> Element {
        Element {
            key: port.to_be_bytes().to_vec(),
            ..Element::default()
        }
    }

    pub(crate) fn end(port: u16) -> Element {
        Element {
            interval_end: true,
            ..key(port)
        }
    }

    #[test]
    fn set_elements_are_parsed() {
        let element = |port: u16, flags: u32, objref: Option<&str>| {
            let mut fields = vec![
                data(NFTA_SET_ELEM_KEY, &port.to_be_bytes()),
                be32(NFTA_SET_ELEM_FLAGS, flags),
            ];
            if let Some(name) = objref {
                fields.push(string(NFTA_SET_ELEM_OBJREF, name));
            }
            nest(NFTA_LIST_ELEM, &fields)
        };
        let payload = [
            vec![1, 0, 0, 9],
            string(NFTA_SET_ELEM_LIST_TABLE, "t"),
            nest(
                NFTA_SET_ELEM_LIST_ELEMENTS,
                &[
                    element(143, 0, None),
                    element(2001, NFT_SET_ELEM_INTERVAL_END, None),
                    element(465, 0, Some("long")),
                ],
            ),
        ]
        .concat();
        let elements = parse_set_elements(&payload).unwrap();
        assert_eq!(elements.len(), 3);
        assert_eq!(elements[0], key(143));
        assert_eq!(elements[1], end(2001));
        assert_eq!(elements[2].objref.as_deref(), Some("long"));
        for cut in 0..payload.len() {
            let _ = parse_set_elements(&payload[..cut]);
        }
    }

    #[test]
    fn keys_become_port_ranges() {
        let plain = port_ranges(&[key(993), key(143)]).unwrap();
        assert_eq!(plain, vec![(143, 143, None), (993, 993, None)]);
        // An interval set: the sentinel end at 0, two intervals, the last open-ended.
        let interval = port_ranges(&[end(0), key(1000), end(2001), key(3000)]).unwrap();
        assert_eq!(interval, vec![(1000, 2000, None), (3000, u16::MAX, None)]);
        // Ends without starts, and keys that are not ports.
        assert_eq!(port_ranges(&[end(5), end(9)]).unwrap(), vec![]);
        let wide = Element {
            key: vec![0; 4],
            ..Element::default()
        };
        assert_eq!(port_ranges(&[key(1), wide]), None);
        assert_eq!(port_ranges(&[]).unwrap(), vec![]);
    }
}
