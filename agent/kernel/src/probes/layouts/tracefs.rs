//! Tracepoint record layouts, read from tracefs at start-up.
//!
//! Field offsets of tracepoints change between kernel versions. Reading them from
//! `events/<category>/<name>/format` (rather than compiling them in) is what lets one binary
//! run on many kernels; this module is the one place that knows about those differences.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use idlecut_ebpf::FieldOffsets;

/// Where tracefs is mounted and readable, if it is.
pub fn locate() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.join("events").is_dir())
        .map(Path::to_owned)
}

/// Where tracefs is, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
pub fn locate_or_mount() -> anyhow::Result<PathBuf> {
    if let Some(path) = locate() {
        return Ok(path);
    }
    let target = Path::new("/sys/kernel/tracing");
    // Mounted, but this user may not look inside (tracefs is root's, mode 0700, by default).
    if let Err(err) = std::fs::read_dir(target)
        && err.kind() == std::io::ErrorKind::PermissionDenied
    {
        bail!(
            "tracefs at {} is not readable by this user ({err}): classic tracepoints read their \
             record layouts there. Run the agent as root, grant read access to \
             {}/events/{{sock,tcp}}/*/format, or use --hooks auto on a kernel with BTF \
             (/sys/kernel/btf/vmlinux), whose BTF tracepoints need no tracefs",
            target.display(),
            target.display()
        );
    }
    let source = c"tracefs";
    let fstype = c"tracefs";
    let target_c = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {} failed: {err} \
             (run as root, or mount it: mount -t tracefs tracefs /sys/kernel/tracing)",
            target.display()
        );
    }
    Ok(target.to_owned())
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// The fields of one tracepoint, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> anyhow::Result<Self> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses lines such as
    /// `field:__u8 saddr_v6[16];<TAB>offset:40;<TAB>size:16;<TAB>signed:0;`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut fields = HashMap::new();
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let declaration = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(value) = part.strip_prefix("offset:") {
                    offset = value.parse::<u16>().ok();
                } else if let Some(value) = part.strip_prefix("size:") {
                    size = value.parse::<u16>().ok();
                }
            }
            let name = declaration
                .split(|c: char| c.is_whitespace() || c == '*')
                .rfind(|word| !word.is_empty())
                .map(|word| word.split('[').next().unwrap_or(word));
            match (name, offset, size) {
                (Some(name), Some(offset), Some(size)) if !name.is_empty() => {
                    fields.insert(name.to_owned(), Field { offset, size });
                }
                _ => bail!("malformed field line: {line}"),
            }
        }
        if fields.is_empty() {
            bail!("no fields found");
        }
        Ok(Self { fields })
    }

    /// The offset of `name` if it exists with `size` bytes.
    fn offset(&self, name: &str, size: u16) -> Result<u16, String> {
        match self.fields.get(name) {
            Some(field) if field.size == size => Ok(field.offset),
            Some(field) => Err(format!(
                "field `{name}` is {} bytes, expected {size}",
                field.size
            )),
            None => Err(format!("no field `{name}`")),
        }
    }
}

/// Which fields a program needs from its tracepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// sock:inet_sock_set_state
    StateChange,
    /// Socket pointer and host-order ports (tcp_receive_reset, tcp_retransmit_skb).
    SocketAndPorts,
    /// Socket pointer, ports and the segment, when the record has it (tcp_probe: the segment's
    /// TTL and RST flag; tcp_retransmit_skb: its size, and `err`, whether it was sent; without
    /// them they go unread, the rest works).
    SocketPortsAndSegment,
    /// Socket pointer and ports, which may only exist inside `sockaddr` fields
    /// (tcp:tcp_send_reset since Linux 6.10).
    SocketAndAnyPorts,
    /// sock:inet_sk_error_report
    ErrorReport,
    /// sock:sock_send_length: socket (`sk`), protocol and bytes sent (`ret`).
    SendLength,
    /// Socket pointer, ports and addresses (tcp:tcp_destroy_sock).
    SocketPortsAndAddresses,
}

/// Builds the offsets a program reads, or says which field this kernel lacks.
pub fn offsets_for(format: &Format, needs: Needs) -> Result<FieldOffsets, String> {
    let mut off = FieldOffsets::absent();
    let ports = |off: &mut FieldOffsets| -> Result<(), String> {
        off.local_port = format.offset("sport", 2)?;
        off.remote_port = format.offset("dport", 2)?;
        Ok(())
    };
    let addresses = |off: &mut FieldOffsets| -> Result<(), String> {
        off.family = format.offset("family", 2)?;
        off.local_addr_v6 = format.offset("saddr_v6", 16)?;
        off.remote_addr_v6 = format.offset("daddr_v6", 16)?;
        Ok(())
    };
    match needs {
        Needs::StateChange => {
            off.skaddr = format.offset("skaddr", 8)?;
            off.old_state = format.offset("oldstate", 4)?;
            off.new_state = format.offset("newstate", 4)?;
            off.protocol = format.offset("protocol", 2)?;
            ports(&mut off)?;
            addresses(&mut off)?;
        }
        Needs::SocketAndPorts => {
            off.skaddr = format.offset("skaddr", 8)?;
            ports(&mut off)?;
        }
        Needs::SocketPortsAndSegment => {
            off.skaddr = format.offset("skaddr", 8)?;
            ports(&mut off)?;
            off.skbaddr = format.offset("skbaddr", 8).unwrap_or(FieldOffsets::ABSENT);
            // Newer kernels also report the retransmissions they could not send.
            off.error = format.offset("err", 4).unwrap_or(FieldOffsets::ABSENT);
        }
        Needs::SocketAndAnyPorts => {
            off.skaddr = format.offset("skaddr", 8)?;
            if ports(&mut off).is_err() {
                // sockaddr_in6 is 28 bytes; the port sits at the same place in sockaddr_in.
                off.local_port = format.offset("saddr", 28)?;
                off.remote_port = format.offset("daddr", 28)?;
                off.ports_in_sockaddr = 1;
            }
        }
        Needs::ErrorReport => {
            off.error = format.offset("error", 4)?;
            off.protocol = format.offset("protocol", 2)?;
            ports(&mut off)?;
            addresses(&mut off)?;
        }
        Needs::SocketPortsAndAddresses => {
            off.skaddr = format.offset("skaddr", 8)?;
            ports(&mut off)?;
            addresses(&mut off)?;
        }
        Needs::SendLength => {
            off.skaddr = format.offset("sk", 8)?;
            off.protocol = format.offset("protocol", 2)?;
            off.ret = format.offset("ret", 4)?;
        }
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE_6_18: &str = "name: inet_sock_set_state
ID: 1588
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s\", REC->family, REC->protocol
";

    const SEND_RESET_6_18: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";

    /// Linux 5.x: tcp_send_reset still had host-order ports.
    const SEND_RESET_5_15: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
";

    #[test]
    fn parses_fields_with_pointers_arrays_and_enums() {
        let format = Format::parse(SET_STATE_6_18).unwrap();
        assert_eq!(format.fields["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(
            format.fields["saddr_v6"],
            Field {
                offset: 40,
                size: 16
            }
        );
        assert_eq!(format.fields["common_pid"], Field { offset: 4, size: 4 });
        let reset = Format::parse(SEND_RESET_6_18).unwrap();
        assert_eq!(
            reset.fields["reason"],
            Field {
                offset: 28,
                size: 4
            }
        );
    }

    #[test]
    fn state_change_offsets() {
        let format = Format::parse(SET_STATE_6_18).unwrap();
        let off = offsets_for(&format, Needs::StateChange).unwrap();
        assert_eq!(
            (
                off.skaddr,
                off.old_state,
                off.new_state,
                off.local_port,
                off.remote_port
            ),
            (8, 16, 20, 24, 26)
        );
        assert_eq!((off.family, off.protocol), (28, 30));
        assert_eq!((off.local_addr_v6, off.remote_addr_v6), (40, 56));
        assert_eq!(off.error, FieldOffsets::ABSENT);
    }

    #[test]
    fn send_reset_ports_come_from_sockaddr_on_new_kernels_and_fields_on_old_ones() {
        let new = offsets_for(
            &Format::parse(SEND_RESET_6_18).unwrap(),
            Needs::SocketAndAnyPorts,
        )
        .unwrap();
        assert_eq!((new.skaddr, new.local_port, new.remote_port), (16, 32, 60));
        assert_eq!(new.ports_in_sockaddr, 1);
        let old = offsets_for(
            &Format::parse(SEND_RESET_5_15).unwrap(),
            Needs::SocketAndAnyPorts,
        )
        .unwrap();
        assert_eq!(
            (old.local_port, old.remote_port, old.ports_in_sockaddr),
            (28, 30, 0)
        );
    }

    #[test]
    fn a_retransmission_tells_whether_it_was_sent_where_the_record_has_err() {
        let fields = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
";
        // Linux 6.18's record ends with `int err`; older ones have none.
        let new = format!("{fields}\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n");
        let new = offsets_for(&Format::parse(&new).unwrap(), Needs::SocketPortsAndSegment);
        assert_eq!(new.unwrap().error, 76);
        let old = offsets_for(
            &Format::parse(fields).unwrap(),
            Needs::SocketPortsAndSegment,
        );
        let old = old.unwrap();
        assert_eq!((old.error, old.skbaddr), (FieldOffsets::ABSENT, 8));
    }

    #[test]
    fn send_length_offsets() {
        let format = Format::parse(
            "\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;",
        )
        .unwrap();
        let off = offsets_for(&format, Needs::SendLength).unwrap();
        assert_eq!((off.skaddr, off.protocol, off.ret), (8, 18, 20));
        assert_eq!(off.local_port, FieldOffsets::ABSENT);
    }

    #[test]
    fn missing_or_resized_fields_are_named() {
        let format = Format::parse(SEND_RESET_5_15).unwrap();
        assert_eq!(
            offsets_for(&format, Needs::ErrorReport).unwrap_err(),
            "no field `error`"
        );
        let resized = Format::parse("\tfield:int skaddr;\toffset:8;\tsize:4;\tsigned:1;").unwrap();
        assert_eq!(
            offsets_for(&resized, Needs::SocketAndPorts).unwrap_err(),
            "field `skaddr` is 4 bytes, expected 8"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Format::parse("").is_err());
        assert!(Format::parse("field:int x;\toffset:zz;\tsize:4;").is_err());
        assert!(Format::parse("field:;offset:1;size:1;").is_err());
    }
}
