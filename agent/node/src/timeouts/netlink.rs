//! Netlink by hand, for the few requests the timeout readers make (nftables objects, rules and
//! set elements over `NETLINK_NETFILTER`; the IPVS config over generic netlink): building a
//! request, reading the answers of one request off a `netlink_sys::Socket`, and walking
//! messages and attributes with every length checked against the bytes that are there, so that
//! a short or malformed answer is an error, never a panic or a read past the end.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, for its
//! whole life: `Channel::open` must run on the thread that entered the namespace, after `setns`.

use std::{io, time::Duration};

use netlink_sys::{Socket, SocketAddr};
use socket2::SockRef;

use super::TimeoutError;

/// Length of `struct nlmsghdr`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nlattr`'s header.
const NLA_HDRLEN: usize = 4;
/// The flags in `nla_type` (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`) above the type itself.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// The kernel's dump saw the table change under it: its answer may be inconsistent.
const NLM_F_DUMP_INTR: u16 = 0x10;

/// How long a reader waits for the kernel before giving up (the scan thread must not hang).
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: the kernel sizes a dump's datagrams after the reader's buffer, up to 32 KiB.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Rounds a length up to netlink's 4-byte alignment.
const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// What was wrong with an answer's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

impl Malformed {
    pub(crate) fn new(detail: impl Into<String>) -> Self {
        Self(detail.into())
    }

    /// The reader-facing error, naming what was being read.
    pub(crate) fn into_error(self, what: &'static str) -> TimeoutError {
        TimeoutError::Malformed {
            what,
            detail: self.0,
        }
    }
}

/// A request under construction: a netlink header, a fixed family header, attributes.
pub(crate) struct Request {
    buf: Vec<u8>,
}

impl Request {
    /// A message of `kind` with `flags` (`NLM_F_REQUEST` is added); its sequence number is set
    /// when it is sent.
    pub(crate) fn new(kind: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `bytes`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence number
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port ID: the kernel fills it in
        Self { buf }
    }

    /// Appends the family's fixed header (`nfgenmsg`, `genlmsghdr`), padded to alignment.
    pub(crate) fn header(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends an attribute; fails if it does not fit in an attribute's 16-bit length.
    pub(crate) fn attr(mut self, kind: u16, payload: &[u8]) -> Result<Self, Malformed> {
        let len = u16::try_from(NLA_HDRLEN + payload.len())
            .map_err(|_| Malformed::new(format!("attribute {kind} too long to send")))?;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        Ok(self)
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn attr_str(self, kind: u16, text: &str) -> Result<Self, Malformed> {
        let mut payload = Vec::with_capacity(text.len() + 1);
        payload.extend_from_slice(text.as_bytes());
        payload.push(0);
        self.attr(kind, &payload)
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// The bytes to send, with the length and sequence number filled in.
    pub(crate) fn bytes(mut self, seq: u32) -> Result<Vec<u8>, Malformed> {
        let len = u32::try_from(self.buf.len())
            .map_err(|_| Malformed::new("request too long to send"))?;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(self.buf)
    }
}

/// One netlink message of an answer, borrowed from the datagram it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// What follows the netlink header (the family header, then attributes).
    pub(crate) payload: &'a [u8],
}

/// The messages of one datagram, each checked to lie within it.
pub(crate) fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

/// Iterator of [`messages`]; stops after the first malformed one.
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some((len, kind, flags, seq)) = self.rest.get(..NLMSG_HDRLEN).map(|h| {
            (
                u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize,
                u16::from_ne_bytes([h[4], h[5]]),
                u16::from_ne_bytes([h[6], h[7]]),
                u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            )
        }) else {
            let left = self.rest.len();
            self.rest = &[];
            return Some(Err(Malformed::new(format!(
                "{left} bytes left, short of a netlink header"
            ))));
        };
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            let left = self.rest.len();
            self.rest = &[];
            return Some(Err(Malformed::new(format!(
                "message length {len} with {left} bytes left"
            ))));
        }
        let payload = &self.rest[NLMSG_HDRLEN..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(Message {
            kind,
            flags,
            seq,
            payload,
        }))
    }
}

/// One attribute, its type without the flag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attr<'a> {
    pub(crate) kind: u16,
    pub(crate) payload: &'a [u8],
}

/// The attributes in `bytes`, each checked to lie within them.
pub(crate) fn attrs(bytes: &[u8]) -> Attrs<'_> {
    Attrs { rest: bytes }
}

/// Iterator of [`attrs`]; stops after the first malformed one.
#[derive(Clone)]
pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some((len, kind)) = self.rest.get(..NLA_HDRLEN).map(|h| {
            (
                usize::from(u16::from_ne_bytes([h[0], h[1]])),
                u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK,
            )
        }) else {
            let left = self.rest.len();
            self.rest = &[];
            return Some(Err(Malformed::new(format!(
                "{left} bytes left, short of an attribute header"
            ))));
        };
        if len < NLA_HDRLEN || len > self.rest.len() {
            let left = self.rest.len();
            self.rest = &[];
            return Some(Err(Malformed::new(format!(
                "attribute {kind} of length {len} with {left} bytes left"
            ))));
        }
        let payload = &self.rest[NLA_HDRLEN..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(Attr { kind, payload }))
    }
}

impl<'a> Attr<'a> {
    fn exact<const N: usize>(&self) -> Result<[u8; N], Malformed> {
        self.payload.try_into().map_err(|_| {
            Malformed::new(format!(
                "attribute {} has {} bytes, not {N}",
                self.kind,
                self.payload.len()
            ))
        })
    }

    /// A big-endian (network order) `u32`, as nftables writes its numbers.
    pub(crate) fn be32(&self) -> Result<u32, Malformed> {
        self.exact::<4>().map(u32::from_be_bytes)
    }

    /// A big-endian `u16`.
    pub(crate) fn be16(&self) -> Result<u16, Malformed> {
        self.exact::<2>().map(u16::from_be_bytes)
    }

    /// A host-order `u32`, as generic netlink families (IPVS) write theirs.
    pub(crate) fn ne32(&self) -> Result<u32, Malformed> {
        self.exact::<4>().map(u32::from_ne_bytes)
    }

    /// A host-order `u16`.
    pub(crate) fn ne16(&self) -> Result<u16, Malformed> {
        self.exact::<2>().map(u16::from_ne_bytes)
    }

    /// A `u8`.
    pub(crate) fn u8(&self) -> Result<u8, Malformed> {
        self.exact::<1>().map(|[byte]| byte)
    }

    /// A string, up to its first NUL (the kernel's are NUL-terminated).
    pub(crate) fn string(&self) -> Result<String, Malformed> {
        let text = self
            .payload
            .split(|&byte| byte == 0)
            .next()
            .unwrap_or_default();
        std::str::from_utf8(text)
            .map(str::to_owned)
            .map_err(|_| Malformed::new(format!("attribute {} is not UTF-8", self.kind)))
    }

    /// The attributes nested in this one.
    pub(crate) fn nested(&self) -> Attrs<'a> {
        attrs(self.payload)
    }
}

/// The payload of a message past its family's fixed header of `len` bytes.
pub(crate) fn after_header(payload: &[u8], len: usize) -> Result<&[u8], Malformed> {
    payload.get(align4(len)..).ok_or_else(|| {
        Malformed::new(format!(
            "message of {} bytes, short of its {len}-byte header",
            payload.len()
        ))
    })
}

/// An answer message, copied out of the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) kind: u16,
    pub(crate) payload: Vec<u8>,
}

/// How an exchange ended, told from one message.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Keep reading.
    More,
    /// The answer is complete.
    Done,
}

/// Reads one message of the answer to request `seq`: keeps it in `replies`, or says the
/// answer is complete, or turns a kernel error into its [`TimeoutError`].
fn take(
    what: &'static str,
    seq: u32,
    message: Message<'_>,
    replies: &mut Vec<Reply>,
) -> Result<Step, TimeoutError> {
    if message.seq != seq {
        return Ok(Step::More); // a late answer to an earlier request
    }
    if message.flags & NLM_F_DUMP_INTR != 0 {
        return Err(TimeoutError::Interrupted { what });
    }
    match message.kind {
        NLMSG_NOOP => Ok(Step::More),
        NLMSG_ERROR | NLMSG_DONE => {
            // NLMSG_ERROR carries `int error` then the request's header; NLMSG_DONE of a dump
            // carries `int error` too (0, or the error that ended the dump).
            let error = match message.payload.get(..4) {
                Some(bytes) => i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                None if message.kind == NLMSG_DONE => 0,
                None => {
                    return Err(Malformed::new("error message without its code").into_error(what));
                }
            };
            match error {
                0 => Ok(Step::Done),
                error => Err(kernel_error(what, error.saturating_neg())),
            }
        }
        NLMSG_OVERRUN => Err(TimeoutError::Io {
            what: what.to_owned(),
            source: io::Error::other("netlink overrun"),
        }),
        kind => {
            replies.push(Reply {
                kind,
                payload: message.payload.to_vec(),
            });
            Ok(Step::More)
        }
    }
}

/// The error for a kernel's errno answer: permission apart, so that the caller can say once
/// that the agent lacks CAP_NET_ADMIN there.
pub(crate) fn kernel_error(what: &'static str, errno: i32) -> TimeoutError {
    if errno == libc::EPERM || errno == libc::EACCES {
        TimeoutError::PermissionDenied { what }
    } else {
        TimeoutError::Kernel { what, errno }
    }
}

/// A netlink socket of the calling thread's network namespace, with the sequence numbers of
/// its requests.
pub(crate) struct Channel {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Channel {
    /// Opens a socket of `protocol` (`NETLINK_NETFILTER`, `NETLINK_GENERIC`) in the calling
    /// thread's network namespace.
    pub(crate) fn open(protocol: isize, what: &'static str) -> Result<Self, TimeoutError> {
        let io_error = |source: io::Error| match source.raw_os_error() {
            Some(errno) if errno == libc::EPERM || errno == libc::EACCES => {
                TimeoutError::PermissionDenied { what }
            }
            _ => TimeoutError::Io {
                what: what.to_owned(),
                source,
            },
        };
        let mut socket = Socket::new(protocol).map_err(io_error)?;
        socket.bind_auto().map_err(io_error)?;
        SockRef::from(&socket)
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(io_error)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECEIVE_BUFFER),
        })
    }

    /// Sends `request` and reads its whole answer: every message up to the end of the dump (or
    /// the acknowledgement; the request must ask for a dump or an ack, or this waits for the
    /// receive timeout).
    pub(crate) fn exchange(
        &mut self,
        what: &'static str,
        request: Request,
    ) -> Result<Vec<Reply>, TimeoutError> {
        let io_error = |source: io::Error| TimeoutError::Io {
            what: what.to_owned(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = request.bytes(seq).map_err(|m| m.into_error(what))?;
        self.socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| match source.raw_os_error() {
                Some(errno) => kernel_error(what, errno),
                None => io_error(source),
            })?;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let len = match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(len) => len,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(io_error(source)),
            };
            if len > self.buf.len() {
                return Err(Malformed::new(format!(
                    "a datagram of {len} bytes overflowed the {}-byte buffer",
                    self.buf.len()
                ))
                .into_error(what));
            }
            for message in messages(&self.buf) {
                let message = message.map_err(|m| m.into_error(what))?;
                if take(what, seq, message, &mut replies)? == Step::Done {
                    return Ok(replies);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A netlink message as the kernel would send it, for the parsers' tests.
    pub(crate) fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        bytes.extend_from_slice(&len.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&1234u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(align4(bytes.len()), 0);
        bytes
    }

    /// An attribute as the kernel would write it (padded).
    pub(crate) fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(align4(bytes.len()), 0);
        bytes
    }

    /// A nested attribute (with `NLA_F_NESTED`, as the kernel sets it).
    pub(crate) fn nest(kind: u16, children: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &children.concat())
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn string(kind: u16, text: &str) -> Vec<u8> {
        attr(kind, &[text.as_bytes(), &[0]].concat())
    }

    /// Opening a netlink socket needs no privilege; its answers are awaited RECEIVE_TIMEOUT.
    #[test]
    fn a_channel_waits_the_receive_timeout_for_answers() {
        let channel = Channel::open(netlink_sys::protocols::NETLINK_NETFILTER, "test")
            .unwrap_or_else(|err| panic!("opening a netlink socket: {err}"));
        let timeout = SockRef::from(&channel.socket).read_timeout().unwrap();
        assert_eq!(timeout, Some(RECEIVE_TIMEOUT));
    }

    #[test]
    fn a_request_is_laid_out_as_the_kernel_reads_it() {
        let bytes = Request::new(0x0a13, NLM_F_DUMP)
            .header(&[2, 0, 0, 0])
            .attr_str(1, "t")
            .unwrap()
            .attr(3, &7u32.to_be_bytes())
            .unwrap()
            .bytes(9)
            .unwrap();
        let expected = [
            &36u32.to_ne_bytes()[..],
            &0x0a13u16.to_ne_bytes(),
            &(NLM_F_DUMP | NLM_F_REQUEST).to_ne_bytes(),
            &9u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &[2, 0, 0, 0],
            &6u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            b"t\0\0\0",
            &8u16.to_ne_bytes(),
            &3u16.to_ne_bytes(),
            &[0, 0, 0, 7],
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert!(Request::new(1, 0).attr(1, &vec![0; 70_000]).is_err());
    }

    #[test]
    fn messages_and_attributes_are_walked_within_their_bounds() {
        let payload = [attr(1, &[1, 2, 3]), nest(2, &[attr(3, &[0, 0, 0, 5])])].concat();
        let datagram = [message(16, 2, 1, &payload), message(3, 2, 1, &[0; 4])].concat();
        let parsed: Vec<_> = messages(&datagram).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].kind, 16);
        assert_eq!(parsed[1].kind, NLMSG_DONE);
        let attributes: Vec<_> = attrs(parsed[0].payload).collect::<Result<_, _>>().unwrap();
        assert_eq!(attributes[0].payload, &[1, 2, 3]);
        assert_eq!(attributes[1].kind, 2, "the nested flag is masked off");
        let inner: Vec<_> = attributes[1].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].be32(), Ok(5));
        assert!(inner[0].be16().is_err());
        assert!(attributes[0].u8().is_err());
    }

    #[test]
    fn every_truncation_of_a_datagram_is_an_error_not_a_panic() {
        let payload = [attr(1, &[1, 2, 3]), nest(2, &[attr(3, &[0, 0, 0, 5])])].concat();
        let datagram = message(16, 2, 1, &payload);
        for cut in 0..datagram.len() {
            let short = &datagram[..cut];
            let outcome: Result<Vec<_>, _> = messages(short).collect();
            if cut == 0 {
                assert_eq!(outcome, Ok(vec![]));
            } else {
                assert!(outcome.is_err(), "cut at {cut}");
            }
            // The attributes of a cut payload, however it is cut.
            let cut_payload = &payload[..cut.min(payload.len())];
            for attribute in attrs(cut_payload).flatten() {
                let _ = attribute.nested().count();
            }
        }
        // A length below the header's, and an attribute claiming more than is there.
        let mut bad = message(16, 0, 1, &[]);
        bad[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(messages(&bad).next().is_some_and(|m| m.is_err()));
        let bad_attr = [&200u16.to_ne_bytes()[..], &1u16.to_ne_bytes(), &[0; 8]].concat();
        assert!(attrs(&bad_attr).next().is_some_and(|a| a.is_err()));
        let tiny_attr = [&2u16.to_ne_bytes()[..], &1u16.to_ne_bytes()].concat();
        assert!(attrs(&tiny_attr).next().is_some_and(|a| a.is_err()));
    }

    #[test]
    fn answers_end_at_done_or_ack_and_errors_are_typed() {
        let mut replies = Vec::new();
        let data = message(0x0a12, 2, 7, &[1, 0, 0, 0]);
        let data = messages(&data).next().unwrap().unwrap();
        assert_eq!(take("x", 7, data, &mut replies).unwrap(), Step::More);
        assert_eq!(replies.len(), 1);
        // Another request's answer is skipped.
        assert_eq!(take("x", 8, data, &mut replies).unwrap(), Step::More);
        assert_eq!(replies.len(), 1);

        let done = message(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes());
        let done = messages(&done).next().unwrap().unwrap();
        assert_eq!(take("x", 7, done, &mut replies).unwrap(), Step::Done);

        let eperm = message(NLMSG_ERROR, 0, 7, &(-libc::EPERM).to_ne_bytes());
        let eperm = messages(&eperm).next().unwrap().unwrap();
        assert!(matches!(
            take("x", 7, eperm, &mut replies),
            Err(TimeoutError::PermissionDenied { what: "x" })
        ));
        let enoent = message(NLMSG_ERROR, 0, 7, &(-libc::ENOENT).to_ne_bytes());
        let enoent = messages(&enoent).next().unwrap().unwrap();
        assert!(matches!(
            take("x", 7, enoent, &mut replies),
            Err(TimeoutError::Kernel {
                errno: libc::ENOENT,
                ..
            })
        ));
        let short_error = message(NLMSG_ERROR, 0, 7, &[0, 0]);
        let short_error = messages(&short_error).next().unwrap().unwrap();
        assert!(matches!(
            take("x", 7, short_error, &mut replies),
            Err(TimeoutError::Malformed { .. })
        ));
        let interrupted = message(0x0a12, 2 | NLM_F_DUMP_INTR, 7, &[]);
        let interrupted = messages(&interrupted).next().unwrap().unwrap();
        assert!(matches!(
            take("x", 7, interrupted, &mut replies),
            Err(TimeoutError::Interrupted { .. })
        ));
    }
}
