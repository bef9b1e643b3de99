//! Configuration: command-line flags and an optional TOML file, flags winning.
//!
//! Every value is parsed by one function here, used for both sources, so that a bad value gets
//! the same one-line message whether it came from `--ports` or from `ports = ...` in the file.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

/// The mail ports watched by default, with the service name each one reports as.
pub const DEFAULT_PORTS: &str = "25=smtp,110=pop3,143=imap,465=submissions,587=submission,674=acap,993=imaps,995=pop3s,4190=sieve";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_IPV4_PREFIX: u8 = 24;
pub const DEFAULT_IPV6_PREFIX: u8 = 48;
pub const DEFAULT_MAX_PATHS: usize = 500;
pub const DEFAULT_MIN_IDLE_GAP: Duration =
    Duration::from_nanos(idlecut_ebpf::defaults::MIN_IDLE_GAP_NS);
pub const DEFAULT_MAX_CONNECTIONS: u32 = idlecut_ebpf::defaults::MAX_CONNECTIONS;
pub const DEFAULT_RING_BUFFER_BYTES: u32 = idlecut_ebpf::defaults::RING_BUFFER_BYTES;
/// RFC 5382 REQ-5: a NAT must not cut an established connection idle for less than 2h04m.
pub const DEFAULT_REQ5_THRESHOLD: Duration = Duration::from_secs(7440);
pub const DEFAULT_MIN_CUTS: usize = 2;
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// Port -> service name, e.g. 143 -> "imap".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMap(BTreeMap<u16, String>);

impl PortMap {
    pub fn service(&self, port: u16) -> Option<&str> {
        self.0.get(&port).map(String::as_str)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.keys().copied()
    }
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (port, name) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{port}={name}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Which kinds of kernel hook the probes may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hooks {
    /// BTF tracepoints where the kernel has BTF (cheaper, no tracefs needed), classic
    /// tracepoints for any probe whose BTF tracepoint does not load.
    #[default]
    Auto,
    /// Classic tracepoints only (the fallback; needs tracefs).
    Classic,
}

/// The agent's settings once flags, file and defaults are merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub ports: PortMap,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_paths: usize,
    pub log_format: LogFormat,
    pub hooks: Hooks,
    pub min_idle_gap: Duration,
    pub max_connections: u32,
    pub ring_buffer_bytes: u32,
    pub req5_threshold: Duration,
    pub min_cuts: usize,
    pub scan_interval: Duration,
    /// TLS and authentication of the HTTP side (see `http::web_config`); None: plain HTTP,
    /// `/api/v1/*` for loopback clients only.
    pub web_config: Option<std::path::PathBuf>,
}

/// What may come from the command line; `None` means "not given".
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// TOML file with any of the settings below (keys spelled with underscores:
    /// `max_paths = 200`); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Address the HTTP server (/metrics, /healthz) listens on [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Watched ports and the service each one is, as PORT=NAME,... [default: 25=smtp,110=pop3,
    /// 143=imap,465=submissions,587=submission,674=acap,993=imaps,995=pop3s,4190=sieve]
    #[arg(long, value_name = "PORT=NAME,...", value_parser = parse_ports)]
    pub ports: Option<PortMap>,
    /// Length of the IPv4 prefix that groups remote addresses into paths [default: 24]
    #[arg(long, value_name = "BITS", value_parser = parse_ipv4_prefix)]
    pub ipv4_prefix: Option<u8>,
    /// Length of the IPv6 prefix that groups remote addresses into paths [default: 48]
    #[arg(long, value_name = "BITS", value_parser = parse_ipv6_prefix)]
    pub ipv6_prefix: Option<u8>,
    /// Most paths reported one by one; connections on further paths count under path="other"
    /// [default: 500]
    #[arg(long, value_name = "N", value_parser = parse_max_paths)]
    pub max_paths: Option<usize>,
    /// Log format on stderr [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Kernel hooks the probes use: `auto` (BTF tracepoints where the kernel has BTF, classic
    /// tracepoints otherwise, per probe) or `classic` (classic tracepoints only) [default: auto]
    #[arg(long, value_name = "KIND")]
    pub hooks: Option<Hooks>,
    /// Shortest silence from the peer that counts as an idle gap, e.g. 10s, 2m [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_min_idle_gap)]
    pub min_idle_gap: Option<Duration>,
    /// Connections the kernel tracks at once (LRU map size; about 100 bytes each)
    /// [default: 65536]
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_connections: Option<u32>,
    /// Size of the kernel-to-agent ring buffer in bytes: a power of two, at least 4096
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_buffer_bytes)]
    pub ring_buffer_size: Option<u32>,
    /// Idle time below which a cut breaks RFC 5382 REQ-5 [default: 2h4m]
    #[arg(long, value_name = "DURATION", value_parser = parse_req5_threshold)]
    pub req5_threshold: Option<Duration>,
    /// Cuts below --req5-threshold on a path before it is reported as violating REQ-5
    /// [default: 2]
    #[arg(long, value_name = "N", value_parser = parse_min_cuts)]
    pub min_cuts: Option<usize>,
    /// How often the kernel's socket tables are read (in every network namespace) for
    /// keepalive settings, owners, and connections the probes missed [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_scan_interval)]
    pub scan_interval: Option<Duration>,
    /// TOML file with the HTTP side's TLS certificate, client CA, bearer token file and
    /// basic-auth users (see README, "Who may read what"); reloaded when it changes
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<std::path::PathBuf>,
}

/// The TOML file: the same keys as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    ports: Option<PortsValue>,
    ipv4_prefix: Option<i64>,
    ipv6_prefix: Option<i64>,
    max_paths: Option<i64>,
    log_format: Option<LogFormat>,
    hooks: Option<Hooks>,
    min_idle_gap: Option<String>,
    max_connections: Option<i64>,
    ring_buffer_size: Option<i64>,
    req5_threshold: Option<String>,
    min_cuts: Option<i64>,
    scan_interval: Option<String>,
    web_config: Option<std::path::PathBuf>,
}

/// `ports = "143=imap,587=submission"` or a table `[ports]` with `143 = "imap"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortsValue {
    List(String),
    Table(BTreeMap<String, String>),
}

/// A configuration error: names the flag or key, says what is wrong and what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Merges flags over the file (if any) over the defaults.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let origin = |key: &str| match &flags.config {
            Some(path) => format!("{}: key `{key}`", path.display()),
            None => key.to_owned(),
        };
        fn at<T>(origin: String, value: Result<T, String>) -> Result<T, ConfigError> {
            value.map_err(|message| ConfigError(format!("{origin}: {message}")))
        }
        fn int<T: TryFrom<i64>>(value: i64) -> Result<T, String> {
            T::try_from(value).map_err(|_| format!("{value} is out of range"))
        }

        let listen = match (flags.listen, &file.listen) {
            (Some(listen), _) => listen,
            (None, Some(listen)) => at(origin("listen"), parse_listen(listen))?,
            (None, None) => parse_listen(DEFAULT_LISTEN).expect("the default parses"),
        };
        let ports = match (&flags.ports, file.ports) {
            (Some(ports), _) => ports.clone(),
            (None, Some(PortsValue::List(list))) => at(origin("ports"), parse_ports(&list))?,
            (None, Some(PortsValue::Table(table))) => {
                let list = table
                    .iter()
                    .map(|(port, name)| format!("{port}={name}"))
                    .collect::<Vec<_>>()
                    .join(",");
                at(origin("ports"), parse_ports(&list))?
            }
            (None, None) => parse_ports(DEFAULT_PORTS).expect("the default parses"),
        };
        let ipv4_prefix = match (flags.ipv4_prefix, file.ipv4_prefix) {
            (Some(bits), _) => bits,
            (None, Some(bits)) => at(
                origin("ipv4_prefix"),
                int::<u8>(bits).and_then(|bits| check_prefix(bits, 32)),
            )?,
            (None, None) => DEFAULT_IPV4_PREFIX,
        };
        let ipv6_prefix = match (flags.ipv6_prefix, file.ipv6_prefix) {
            (Some(bits), _) => bits,
            (None, Some(bits)) => at(
                origin("ipv6_prefix"),
                int::<u8>(bits).and_then(|bits| check_prefix(bits, 128)),
            )?,
            (None, None) => DEFAULT_IPV6_PREFIX,
        };
        let max_paths = match (flags.max_paths, file.max_paths) {
            (Some(n), _) => n,
            (None, Some(n)) => at(
                origin("max_paths"),
                int::<usize>(n).and_then(|n| parse_max_paths(&n.to_string())),
            )?,
            (None, None) => DEFAULT_MAX_PATHS,
        };
        let min_idle_gap = match (flags.min_idle_gap, &file.min_idle_gap) {
            (Some(gap), _) => gap,
            (None, Some(gap)) => at(origin("min_idle_gap"), parse_min_idle_gap(gap))?,
            (None, None) => DEFAULT_MIN_IDLE_GAP,
        };
        let max_connections = match (flags.max_connections, file.max_connections) {
            (Some(n), _) => n,
            (None, Some(n)) => at(
                origin("max_connections"),
                int::<u32>(n).and_then(|n| parse_max_connections(&n.to_string())),
            )?,
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        };
        let ring_buffer_bytes = match (flags.ring_buffer_size, file.ring_buffer_size) {
            (Some(n), _) => n,
            (None, Some(n)) => at(
                origin("ring_buffer_size"),
                int::<u32>(n).and_then(|n| parse_ring_buffer_bytes(&n.to_string())),
            )?,
            (None, None) => DEFAULT_RING_BUFFER_BYTES,
        };
        let req5_threshold = match (flags.req5_threshold, &file.req5_threshold) {
            (Some(threshold), _) => threshold,
            (None, Some(threshold)) => {
                at(origin("req5_threshold"), parse_req5_threshold(threshold))?
            }
            (None, None) => DEFAULT_REQ5_THRESHOLD,
        };
        let min_cuts = match (flags.min_cuts, file.min_cuts) {
            (Some(n), _) => n,
            (None, Some(n)) => at(
                origin("min_cuts"),
                int::<usize>(n).and_then(|n| parse_min_cuts(&n.to_string())),
            )?,
            (None, None) => DEFAULT_MIN_CUTS,
        };
        let scan_interval = match (flags.scan_interval, &file.scan_interval) {
            (Some(interval), _) => interval,
            (None, Some(interval)) => at(origin("scan_interval"), parse_scan_interval(interval))?,
            (None, None) => DEFAULT_SCAN_INTERVAL,
        };
        Ok(Self {
            listen,
            ports,
            ipv4_prefix,
            ipv6_prefix,
            max_paths,
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            hooks: flags.hooks.or(file.hooks).unwrap_or_default(),
            min_idle_gap,
            max_connections,
            ring_buffer_bytes,
            req5_threshold,
            min_cuts,
            scan_interval,
            web_config: flags.web_config.clone().or(file.web_config),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError(format!("cannot read config file {}: {err}", path.display())))?;
    toml::from_str(&text).map_err(|err| {
        let at = err
            .span()
            .map(|span| {
                let line = text[..span.start].lines().count().max(1);
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError(format!(
            "config file {}{at}: {}",
            path.display(),
            err.message().trim()
        ))
    })
}

pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("`{value}` is not an address and port, such as 127.0.0.1:9464 or [::1]:9464")
    })
}

pub fn parse_ports(value: &str) -> Result<PortMap, String> {
    let mut ports = BTreeMap::new();
    for entry in value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (port, name) = match entry.split_once('=') {
            Some((port, name)) => (port.trim(), name.trim()),
            None => (entry, entry),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("`{port}` is not a port number (1-65535) in `{entry}`"))?;
        let valid_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "`{name}` is not a service name (letters, digits, - and _, at most 32) in `{entry}`"
            ));
        }
        if ports.insert(port, name.to_owned()).is_some() {
            return Err(format!("port {port} is given twice"));
        }
    }
    if ports.is_empty() {
        return Err(
            "no ports given: expected PORT=NAME,... such as 143=imap,587=submission".into(),
        );
    }
    Ok(PortMap(ports))
}

fn check_prefix(bits: u8, max: u8) -> Result<u8, String> {
    if bits <= max {
        Ok(bits)
    } else {
        Err(format!("{bits} is not a prefix length (0-{max})"))
    }
}

fn parse_prefix(value: &str, max: u8) -> Result<u8, String> {
    let bits = value
        .parse::<u8>()
        .map_err(|_| format!("`{value}` is not a prefix length (0-{max})"))?;
    check_prefix(bits, max)
}

pub fn parse_ipv4_prefix(value: &str) -> Result<u8, String> {
    parse_prefix(value, 32)
}

pub fn parse_ipv6_prefix(value: &str) -> Result<u8, String> {
    parse_prefix(value, 128)
}

pub fn parse_max_paths(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err(format!("`{value}` is not a number of paths (1-100000)")),
    }
}

pub fn parse_max_connections(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (64..=16_777_216).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{value}` is not a number of connections (64-16777216)"
        )),
    }
}

pub fn parse_ring_buffer_bytes(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err(format!(
            "`{value}` is not a ring buffer size: a power of two of at least 4096 bytes"
        )),
    }
}

pub fn parse_req5_threshold(value: &str) -> Result<Duration, String> {
    let threshold = parse_duration(value)?;
    if threshold.is_zero() {
        return Err(format!(
            "`{value}` is not a threshold: it must be longer than 0s"
        ));
    }
    Ok(threshold)
}

pub fn parse_scan_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value)?;
    if interval < Duration::from_secs(1) {
        return Err(format!(
            "`{value}` is too short for a scan interval (at least 1s)"
        ));
    }
    Ok(interval)
}

pub fn parse_min_cuts(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{value}` is not a number of cuts (1-1000)")),
    }
}

pub fn parse_min_idle_gap(value: &str) -> Result<Duration, String> {
    let gap = parse_duration(value)?;
    if gap < Duration::from_millis(100) {
        return Err(format!(
            "`{value}` is too short for an idle gap (at least 100ms)"
        ));
    }
    Ok(gap)
}

/// Parses durations written like `90s`, `2h4m`, `1h 30m`, `500ms`, `1d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{value}` is not a duration: write a number and a unit (ms, s, m, h, d), such as 90s or 2h4m"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = value.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h4m"), Ok(Duration::from_secs(7440)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "90", "s", "1x", "-1s", "1.5s", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn default_ports_parse_to_the_nine_mail_services() {
        let ports = parse_ports(DEFAULT_PORTS).unwrap();
        assert_eq!(ports.ports().count(), 9);
        assert_eq!(ports.service(143), Some("imap"));
        assert_eq!(ports.service(587), Some("submission"));
        assert_eq!(ports.service(80), None);
        assert_eq!(
            ports.to_string(),
            DEFAULT_PORTS.split(',').collect::<Vec<_>>().join(",")
        );
    }

    #[test]
    fn port_errors_say_what_is_wrong() {
        assert!(parse_ports("").unwrap_err().contains("no ports"));
        assert!(
            parse_ports("0=x")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            parse_ports("70000=x")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            parse_ports("143=im ap")
                .unwrap_err()
                .contains("not a service name")
        );
        assert!(parse_ports("143=a,143=b").unwrap_err().contains("twice"));
        assert_eq!(parse_ports("8143").unwrap().service(8143), Some("8143"));
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let config = Config::load(&Flags::default()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9464");
        assert_eq!((config.ipv4_prefix, config.ipv6_prefix), (24, 48));
        assert_eq!(config.max_paths, 500);
        assert_eq!(config.min_idle_gap, Duration::from_secs(10));
        assert_eq!(config.req5_threshold, Duration::from_secs(7440));
        assert_eq!(config.min_cuts, 2);
    }

    fn file_with(contents: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with_contents(contents)
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = file_with(
            "listen = \"0.0.0.0:9000\"\nmax_paths = 7\nports = \"143=imap\"\nmin_idle_gap = \"1s\"\n",
        );
        let flags = Flags {
            config: Some(file.path().into()),
            max_paths: Some(9),
            ..Flags::default()
        };
        let config = Config::load(&flags).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.max_paths, 9);
        assert_eq!(config.ports.to_string(), "143=imap");
        assert_eq!(config.min_idle_gap, Duration::from_secs(1));
    }

    #[test]
    fn file_ports_may_be_a_table() {
        let file = file_with("[ports]\n143 = \"imap\"\n587 = \"submission\"\n");
        let flags = Flags {
            config: Some(file.path().into()),
            ..Flags::default()
        };
        assert_eq!(
            Config::load(&flags).unwrap().ports.to_string(),
            "143=imap,587=submission"
        );
    }

    #[test]
    fn file_errors_name_the_key_on_one_line() {
        for (contents, expected) in [
            ("max_paths = 0\n", "key `max_paths`"),
            ("ipv4_prefix = 33\n", "key `ipv4_prefix`"),
            ("min_idle_gap = \"ten\"\n", "key `min_idle_gap`"),
            ("ports = \"x=y\"\n", "key `ports`"),
            ("no_such_key = 1\n", "unknown field `no_such_key`"),
            ("max_paths = \"many\"\n", "line 1"),
        ] {
            let file = file_with(contents);
            let flags = Flags {
                config: Some(file.path().into()),
                ..Flags::default()
            };
            let message = Config::load(&flags).unwrap_err().to_string();
            assert!(message.contains(expected), "{contents:?} gave {message:?}");
            assert!(!message.contains('\n'), "{message:?} spans lines");
        }
    }

    /// A file in the temp dir, removed on drop (enough for these tests, no extra crate).
    mod tempfile_path {
        use std::path::{Path, PathBuf};

        pub struct TempPath(PathBuf);

        impl TempPath {
            pub fn with_contents(contents: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "idlecut-config-test-{}-{}.toml",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, contents).unwrap();
                Self(path)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
