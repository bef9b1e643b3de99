//! Configuration: command-line flags and an optional TOML file, flags winning, then defaults.
//!
//! Each setting is declared once, in [`settings!`]'s list below: its type, its parser (shared
//! by the flag and the file key), its default and its help. The macro derives the flags, the
//! file's serde type (whose spans place an error on its line) and the merged [`Config`] from
//! that one line, so a new setting is one line.

mod check_tables;
mod values;

use std::path::{Path, PathBuf};

use idlecut_check::ScheduledCheck;
use idlecut_core::duration_text;
// The settings' parsers, each in the crate that knows its rules.
pub use idlecut_core::settings::*;
pub use idlecut_kernel::settings::{
    Hooks, NodeTimeoutSources, OptionalPath, parse_cri_socket, parse_hooks, parse_kubelet_logs,
    parse_max_connections, parse_node_netns, parse_node_timeouts, parse_ring_buffer_bytes,
};
use idlecut_kernel::{probes::ProbeSettings, settings::defaults as kernel_defaults};
pub use idlecut_web::{DEFAULT_LISTEN, parse_listen};

pub use self::values::*;

/// Declares the settings: `name: Type, parser, default, "VALUE NAME", "help";`.
macro_rules! settings {
    ($( $name:ident : $ty:ty, $parse:path, $default:expr, $value_name:literal, $help:literal; )*) => {
        /// What may come from the command line; `None` means "not given".
        #[derive(Clone, Debug, Default, clap::Args)]
        pub struct Flags {
            /// TOML file with any of the settings below (keys spelled with underscores:
            /// `max_paths = 200`), and [[check]] tables: checks of mail servers the agent runs
            /// on a schedule (README); flags given on the command line win.
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                // Hyphen values go to the parser (`--min-idle-gap -5s` is a bad duration, not
                // an unknown flag `-5`).
                #[arg(
                    long,
                    value_name = $value_name,
                    value_parser = $parse,
                    allow_hyphen_values = true,
                    help = with_default($help, &$default.to_string())
                )]
                pub $name: Option<$ty>,
            )*
        }

        /// The agent's settings once flags, file and defaults are merged.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct Config {
            $( pub $name: $ty, )*
            /// The file's `[[check]]` tables (no flag: `idlecut check` is the command line's).
            pub checks: Vec<idlecut_check::ScheduledCheck>,
        }

        /// Every key the file may have, in the order of `--help`.
        const KEYS: &[&str] = &[$( stringify!($name) ),*];

        /// The file as written: each setting's value with its place in the text (for the line
        /// of an error), and the `[[check]]` tables. serde refuses any other key.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileSettings {
            $( $name: Option<toml::Spanned<toml::Value>>, )*
            check: Option<toml::Spanned<check_tables::Node>>,
        }

        impl FileSettings {
            /// The settings read through the same parsers as the flags, and the checks.
            fn read(
                self,
                path: &Path,
                text: &str,
            ) -> Result<(Flags, Vec<ScheduledCheck>), ConfigError> {
                let flags = Flags {
                    config: None,
                    $(
                        $name: self
                            .$name
                            .map(|value| {
                                value_text(stringify!($name), value.get_ref())
                                    .and_then(|written| $parse(&written))
                                    .map_err(|message| {
                                        file_error(
                                            path,
                                            text,
                                            Some(value.span().start),
                                            format!("key `{}`: {message}", stringify!($name)),
                                        )
                                    })
                            })
                            .transpose()?,
                    )*
                };
                let checks = match self.check {
                    Some(tables) => check_tables::read(path, text, tables)?,
                    None => Vec::new(),
                };
                Ok((flags, checks))
            }
        }

        impl Flags {
            /// These flags over `file`, over the defaults.
            fn over(self, file: Flags) -> Config {
                Config {
                    $(
                        $name: self.$name.or(file.$name).unwrap_or_else(|| {
                            $parse(&$default.to_string())
                                .expect(concat!("the default of ", stringify!($name), " parses"))
                        }),
                    )*
                    checks: Vec::new(),
                }
            }
        }

        /// Every default, as text, for the test that they all parse.
        #[cfg(test)]
        fn defaults() -> Vec<(&'static str, Result<(), String>)> {
            vec![$( (stringify!($name), $parse(&$default.to_string()).map(|_| ())) ),*]
        }
    };
}

settings! {
    listen: std::net::SocketAddr, parse_listen, DEFAULT_LISTEN, "ADDR:PORT",
        "Address the HTTP server (/metrics, /healthz) listens on";
    ports: PortMap, parse_ports, DEFAULT_PORTS, "PORT=NAME,...",
        "Watched ports and the service each one is, as PORT=NAME,...";
    ipv4_prefix: u8, parse_ipv4_prefix, 24, "BITS",
        "Length of the IPv4 prefix that groups remote addresses into paths";
    ipv6_prefix: u8, parse_ipv6_prefix, 48, "BITS",
        "Length of the IPv6 prefix that groups remote addresses into paths";
    max_paths: usize, parse_max_paths, 500, "N",
        "Most paths reported one by one; connections on further paths count under path=\"other\"";
    log_format: LogFormat, parse_log_format, "text", "FORMAT",
        "Log format on stderr: text or json (level from IDLECUT_LOG)";
    hooks: Hooks, parse_hooks, "auto", "KIND",
        "Kernel hooks the probes use: auto (BTF tracepoints where the kernel has BTF, classic tracepoints otherwise, per probe) or classic (classic tracepoints only)";
    min_idle_gap: std::time::Duration, parse_min_idle_gap,
        duration_text::compact(kernel_defaults::MIN_IDLE_GAP_NS as f64 / 1e9), "DURATION",
        "Shortest silence from the peer that counts as an idle gap, e.g. 10s, 2m";
    max_connections: u32, parse_max_connections, kernel_defaults::MAX_CONNECTIONS, "N",
        "Connections the kernel tracks at once (LRU map size; about 100 bytes each)";
    ring_buffer_size: u32, parse_ring_buffer_bytes, kernel_defaults::RING_BUFFER_BYTES, "BYTES",
        "Size of the kernel-to-agent ring buffer in bytes: a power of two, at least 4096";
    req5_threshold: std::time::Duration, parse_req5_threshold, REQ5_THRESHOLD, "DURATION",
        "Idle time below which a cut breaks RFC 5382 REQ-5";
    min_cuts: usize, parse_min_cuts, 2, "N",
        "Cuts below --req5-threshold on a path before it is reported as violating REQ-5";
    recent_cuts: usize, parse_recent_cuts, 1000, "N",
        "Cuts the log of recent cuts keeps (/api/v1/cuts, idlecut cuts), each with its connection, process and origin; 0 keeps none";
    scan_interval: std::time::Duration, parse_scan_interval, "30s", "DURATION",
        "How often the kernel's socket tables are read (in every network namespace) for keepalive settings, owners, and connections the probes missed";
    kubelet_logs: OptionalPath, parse_kubelet_logs, "/var/log", "DIR",
        "Directory holding the kubelet's pods/ and containers/ log directories, which name the pod and container of each process (mount them read-only in a DaemonSet); none: pods are known by their UID only";
    cri_socket: OptionalPath, parse_cri_socket, "none", "SOCKET",
        "The container runtime's CRI socket (containerd: /run/containerd/containerd.sock), asked for each pod's names, labels and owning workload before the kubelet's directories; its holder can run containers, so it is off unless named here";
    node_netns: std::path::PathBuf, parse_node_netns, "/proc/1/ns/net", "PATH",
        "The node's own network namespace, whose conntrack, nftables and IPVS timeouts a path's connections traverse (PID 1's: the host's, with hostPID)";
    node_timeouts: NodeTimeoutSources, parse_node_timeouts, "conntrack", "SOURCES",
        "Which of this host's idle timeouts to read in each network namespace: conntrack (its sysctls, always read), nftables (ct timeout policies), ipvs; the last two need CAP_NET_ADMIN";
    web_config: WebConfigPath, parse_web_config, "none", "FILE",
        "TOML file with the HTTP side's TLS certificate, client CA, bearer token file and basic-auth users (README, \"Who may read what\"); reloaded when it changes. Without it: plain HTTP, /api/v1 for loopback clients only";
}

fn with_default(help: &str, default: &str) -> String {
    format!("{help} [default: {default}]")
}

/// A configuration error: names the flag or key, says what is wrong and what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// What loading the kernel programs needs of these settings.
    pub fn probe_settings(&self) -> ProbeSettings {
        ProbeSettings {
            ports: self.ports.clone(),
            hooks: self.hooks,
            min_idle_gap: self.min_idle_gap,
            ring_buffer_size: self.ring_buffer_size,
            max_connections: self.max_connections,
        }
    }

    /// Merges flags over the file (if any) over the defaults.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let (file, checks) = match &flags.config {
            Some(path) => read_file(path)?,
            None => (Flags::default(), Vec::new()),
        };
        let mut config = flags.clone().over(file);
        config.checks = checks;
        for check in &mut config.checks {
            check.set_req5_threshold(config.req5_threshold);
        }
        Ok(config)
    }
}

/// Reads the file's keys through the same parsers as the flags. An error names the file, the
/// line and the key, on one line.
fn read_file(path: &Path) -> Result<(Flags, Vec<ScheduledCheck>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError(format!("cannot read config file {}: {err}", path.display())))?;
    parse_file(path, &text)
}

/// The settings in a file's text (`path` only names it in errors).
fn parse_file(path: &Path, text: &str) -> Result<(Flags, Vec<ScheduledCheck>), ConfigError> {
    let file: FileSettings = toml::from_str(text).map_err(|err| {
        let at = err.span().map(|span| span.start);
        let message = err.message().trim();
        // serde refuses a key no field has as "unknown field `KEY`, expected one of ...": say
        // it in the words of the other key errors, with the keys as the file spells them.
        let message = match message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once("`, expected"))
        {
            // Escaped: a quoted key may hold a line break.
            Some((key, _)) => format!(
                "key `{}`: unknown key; the keys are {} and [[check]] tables",
                key.escape_debug(),
                KEYS.join(", ")
            ),
            None => message.to_owned(),
        };
        file_error(path, text, at, message)
    })?;
    file.read(path, text)
}

/// An error in the file: names it and, if known, the line of the byte offset `at`.
fn file_error(
    path: &Path,
    text: &str,
    at: Option<usize>,
    message: impl std::fmt::Display,
) -> ConfigError {
    let at = at
        .map(|offset| format!(" (line {})", line_of(text, offset)))
        .unwrap_or_default();
    ConfigError(format!("config file {}{at}: {message}", path.display()))
}

/// A value as the parsers read it: strings as written, numbers and booleans as text, and the
/// `[ports]` table as `PORT=NAME,...`.
fn value_text(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Table(table) if key == "ports" => table
            .iter()
            .map(|(port, name)| match name {
                toml::Value::String(name) => Ok(format!("{port}={name}")),
                other => Err(format!(
                    "port {port}: expected a service name in quotes, found {}",
                    other.type_str()
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|entries| entries.join(",")),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

/// The 1-based line of a byte offset. An offset past the last non-blank character (toml
/// places "unterminated string" at the end of the file) is on the last line written, not on
/// the empty one after the final newline.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.trim_end().len());
    text[..offset].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_default_parses() {
        for (name, parsed) in defaults() {
            assert_eq!(parsed, Ok(()), "default of {name}");
        }
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
        assert_eq!(config.hooks, Hooks::Auto);
        assert_eq!(config.max_connections, kernel_defaults::MAX_CONNECTIONS);
        assert_eq!(config.ring_buffer_size, kernel_defaults::RING_BUFFER_BYTES);
    }

    fn file_with(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
        file
    }

    fn load_file(contents: &str) -> Result<Config, ConfigError> {
        let file = file_with(contents);
        Config::load(&Flags {
            config: Some(file.path().into()),
            ..Flags::default()
        })
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
        let config = load_file("[ports]\n143 = \"imap\"\n587 = \"submission\"\n").unwrap();
        assert_eq!(config.ports.to_string(), "143=imap,587=submission");
    }

    #[test]
    fn file_errors_name_the_key_and_its_line_on_one_line() {
        for (contents, expected) in [
            ("max_paths = 0\n", "(line 1): key `max_paths`"),
            (
                "# comment\nipv4_prefix = 33\n",
                "(line 2): key `ipv4_prefix`",
            ),
            ("min_idle_gap = \"ten\"\n", "key `min_idle_gap`"),
            ("ports = \"x=y\"\n", "key `ports`"),
            ("no_such_key = 1\n", "key `no_such_key`: unknown key"),
            (
                "max_paths = \"many\"\n",
                "(line 1): key `max_paths`: `many` is not a number",
            ),
            (
                "\n\nmax_paths = [1]\n",
                "(line 3): key `max_paths`: expected a string or a number",
            ),
            ("max_paths = \n", "(line 1)"),
            ("ring_buffer_size = 2147483648\n", "key `ring_buffer_size`"),
            (
                "hooks = \"fast\"\n",
                "key `hooks`: `fast` is not a kind of hooks",
            ),
        ] {
            let message = load_file(contents).unwrap_err().to_string();
            assert!(message.contains(expected), "{contents:?} gave {message:?}");
            assert!(!message.contains('\n'), "{message:?} spans lines");
        }
    }

    /// A key's line is where it is set, not where its words appear first: in a comment, or in
    /// a string (which the text search the spans replaced took for the key).
    #[test]
    fn a_key_error_names_the_line_of_the_key_not_of_its_words() {
        for (contents, expected) in [
            (
                "# max_paths = 3 was too small\nmax_paths = 0\n",
                "(line 2): key `max_paths`",
            ),
            (
                "web_config = \"\"\"\nmax_paths = 3\n\"\"\"\nmax_paths = 0\n",
                "(line 4): key `max_paths`",
            ),
            (
                "# [ports] below\n\n[ports]\n143 = 7\n",
                "(line 3): key `ports`: port 143",
            ),
            ("ports.143 = 7\n", "(line 1): key `ports`: port 143"),
            (
                "# no_such_key = 2\n\n  no_such_key = 1\n",
                "config file idlecut.toml (line 3): key `no_such_key`: unknown key; the keys are \
                 listen, ports,",
            ),
            (
                "[no_such_table]\n",
                "(line 1): key `no_such_table`: unknown key",
            ),
            (
                "max_paths = 7\n\"two\\nlines\" = 1\n",
                "(line 2): key `two\\nlines`: unknown key",
            ),
        ] {
            let message = parse_file(Path::new("idlecut.toml"), contents)
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{contents:?} gave {message:?}");
            assert!(!message.contains('\n'), "{message:?} spans lines");
        }
        let message = parse_file(Path::new("idlecut.toml"), "x = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            message.ends_with(&format!("{} and [[check]] tables", KEYS.join(", "))),
            "every key is listed: {message}"
        );
    }

    #[test]
    fn an_error_at_the_end_of_the_file_is_on_its_last_line() {
        // An unterminated multi-line string: toml places the error at the end of the text.
        let message = load_file("listen = \"\"\"\n").unwrap_err().to_string();
        assert!(message.contains("(line 1)"), "{message}");
        let message = load_file("max_paths = 3\n\nlisten = \"\"\"\n\n\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("(line 3)"), "{message}");
    }

    proptest::proptest! {
        /// Whatever a config file holds, reading it answers with settings or a one-line error
        /// naming the file, never a panic.
        #[test]
        fn any_file_text_gives_settings_or_a_one_line_error(text in "(?s).{0,200}") {
            if let Err(err) = parse_file(Path::new("idlecut.toml"), &text) {
                let message = err.to_string();
                proptest::prop_assert!(message.starts_with("config file idlecut.toml"), "{}", message);
                proptest::prop_assert!(!message.contains('\n'), "{}", message);
            }
        }

        /// Lines of `key = value` with real keys and arbitrary values, the likelier mistakes.
        #[test]
        fn any_value_of_a_real_key_parses_or_names_the_key(
            key in proptest::sample::select(KEYS),
            value in "[ -~]{0,40}",
        ) {
            let text = format!("{key} = {value}\n");
            if let Err(err) = parse_file(Path::new("idlecut.toml"), &text) {
                let err = err.to_string();
                proptest::prop_assert!(!err.contains('\n'), "{}", err);
                // A value TOML reads is judged by the key's parser, which the error names; one
                // it cannot read is placed by its line.
                proptest::prop_assert!(
                    err.contains(&format!("key `{key}`")) || err.contains("(line 1)"),
                    "{}", err
                );
                // The key named is placed on its line.
                proptest::prop_assert!(
                    !err.contains(&format!("key `{key}`"))
                        || err.contains(&format!("(line 1): key `{key}`")),
                    "{}", err
                );
            }
        }
    }
}
