//! What a check is asked to do: `idlecut check`'s flags (`CheckArgs`, which a `[[check]]`
//! table of the agent's config fills through the same parsers and defaults), who runs it, and
//! where its progress goes.

use std::time::Duration;

use idlecut_core::settings;

use super::tls::Fingerprint;

/// The ports RFC 5383 §3 says MUST be reachable: IMAP and Message Submission.
pub(crate) const DEFAULT_PORTS: [u16; 2] = [143, 587];
/// Idle connections one port's search may use, and how many are silent at once.
pub(crate) const IDLE_BUDGET: usize = 32;
pub(crate) const IDLE_PARALLEL: usize = 8;
/// Defaults shared by the flags and the `[[check]]` tables of the agent's config.
pub(crate) const DEFAULT_MAX_IDLE: &str = "2h5m";
pub(crate) const DEFAULT_CONNECT_TIMEOUT: &str = "10s";
pub(crate) const DEFAULT_ANSWER_TIMEOUT: &str = "15s";
pub(crate) const DEFAULT_REQ5_THRESHOLD: &str = settings::REQ5_THRESHOLD;
/// The longest `--answer-timeout`: it is also the connections' TCP_USER_TIMEOUT, which the
/// kernel takes as milliseconds in an int and refuses above 2^31-1 ms (24d20h31m23.647s).
pub(crate) const MAX_ANSWER_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);
const MAX_ANSWER_TIMEOUT_TEXT: &str = "24d";

/// Audit the path to a mail server now: reachability of IMAP (143) and Submission (587),
/// the server's identity, STARTTLS and the capability lists, and where the path cuts idle
/// connections. Exits 0 when nothing failed, 1 when a check failed, 2 on a usage error
// (Not a doc comment: clap shows those in --help.) The same settings come from a `[[check]]`
// table of the agent's config (`check::table`), through the same parsers and defaults.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct CheckArgs {
    /// The mail server: HOST, HOST:PORT, IP or [IPv6]:PORT (not a URL). Without a port, 143
    /// and 587
    #[arg(value_name = "TARGET[:PORT]", value_parser = parse_target)]
    pub(crate) target: Target,
    /// Also check this port (repeatable); the protocol is told from the greeting
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) ports: Vec<u16>,
    /// The longest silence the path must allow; 0s skips the idle and keepalive checks
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_MAX_IDLE, value_parser = settings::parse_duration)]
    pub(crate) max_idle: Duration,
    /// How narrow the reported cut-off interval should be [default: --max-idle / 60, at least 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_at_least_100ms)]
    pub(crate) precision: Option<Duration>,
    /// The SHA-256 fingerprint of the server's certificate: any other one is interception
    #[arg(long, value_name = "SHA256", value_parser = Fingerprint::parse)]
    pub(crate) expect_cert: Option<Fingerprint>,
    /// A file with an IMAP user name (first line) and password (second), so that idle IMAP
    /// sessions log in and may stay silent longer; or set IDLECUT_CHECK_USER and
    /// IDLECUT_CHECK_PASSWORD
    #[arg(long, value_name = "FILE")]
    pub(crate) credentials: Option<std::path::PathBuf>,
    /// A file of the certificates earlier runs saw (JSON): a new target's is recorded, a
    /// different one later is interception (trust on first use). Replaced atomically through
    /// a new temporary file in its directory (never through a planted file or symlink)
    #[arg(long, value_name = "FILE")]
    pub(crate) known_certs: Option<std::path::PathBuf>,
    /// Text the greeting must contain (such as the server's name): any other is interception
    #[arg(long, value_name = "TEXT")]
    pub(crate) expect_greeting: Option<String>,
    /// A capability that must be offered, like IDLE or imap:IDLE, smtp:PIPELINING (repeatable)
    #[arg(long = "capability", value_name = "NAME", value_parser = parse_capability)]
    pub(crate) capabilities: Vec<String>,
    /// How long to wait for a connection to be accepted
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_at_least_100ms)]
    pub(crate) connect_timeout: Duration,
    /// How long to wait for an answer (and for the path to acknowledge what was sent: the
    /// connections' TCP_USER_TIMEOUT); at most 24d
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_ANSWER_TIMEOUT, value_parser = parse_answer_timeout)]
    pub(crate) answer_timeout: Duration,
    /// The idle time RFC 5382 REQ-5 requires
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REQ5_THRESHOLD, value_parser = settings::parse_req5_threshold)]
    pub(crate) req5_threshold: Duration,
    /// Print the report as JSON (progress still goes to stderr)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

/// HOST, HOST:PORT, IPv4[:PORT], IPv6 or [IPv6]:PORT. A URL (`imap://host:143`) is refused
/// rather than guessed at: its scheme may not match its port, and the check tells the
/// protocol from the greeting anyway. An error never repeats what stands before an `@`
/// (a URL's user name and password).
pub(crate) fn parse_target(text: &str) -> Result<Target, String> {
    if let Some((_, rest)) = text.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let server = authority
            .rsplit_once('@')
            .map_or(authority, |(_, server)| server);
        return Err(format!(
            "a target is HOST:PORT, not a URL: write `{}` (IMAP's port is 143, Submission's \
             587); the protocol is told from the greeting",
            if server.is_empty() {
                "HOST:PORT"
            } else {
                server
            }
        ));
    }
    if text.contains('@') {
        let message = "a target is HOST:PORT, with no user name or password: credentials go \
                       in a file (--credentials, or a [[check]]'s `credentials`)";
        return Err(message.to_owned());
    }
    let bad_port = |port: &str| format!("`{port}` in `{text}` is not a port (1-65535)");
    let port = |port: &str| match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad_port(port)),
        Ok(port) => Ok(port),
    };
    // Within brackets, or with more than one colon, only an IPv6 address.
    let (host, port, ipv6) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: a `[` without its `]`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(port(p)?), true),
            None if after.is_empty() => (host, None, true),
            None => return Err(format!("`{text}`: write [IPv6]:PORT")),
        }
    } else if text.matches(':').count() == 1 {
        let (host, p) = text.split_once(':').unwrap_or((text, ""));
        (host, Some(port(p)?), false)
    } else {
        // No colon, or a bare IPv6 address.
        (text, None, text.contains(':'))
    };
    let valid = if ipv6 {
        is_ipv6(host)
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid {
        return Err(format!(
            "`{text}` is not a host name or address: write HOST, HOST:PORT or [IPv6]:PORT"
        ));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
    })
}

/// An IPv6 address, with or without a zone (`fe80::1%eth0`).
fn is_ipv6(host: &str) -> bool {
    let address = host.split_once('%').map_or(host, |(address, _)| address);
    address.parse::<std::net::Ipv6Addr>().is_ok()
}

/// `--capability`: NAME, or imap:NAME / smtp:NAME for one protocol only.
pub(crate) fn parse_capability(text: &str) -> Result<String, String> {
    let name = match text.split_once(':') {
        Some((scope, name)) => {
            if !["imap", "smtp"].contains(&scope.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "`{text}`: before the `:` comes the protocol, imap or smtp"
                ));
            }
            name
        }
        None => text,
    };
    if name.trim().is_empty() {
        let what = if text.trim().is_empty() {
            "an empty capability".to_owned()
        } else {
            format!("`{text}` names no capability")
        };
        return Err(format!(
            "{what}: write one such as IDLE, imap:IDLE or smtp:PIPELINING"
        ));
    }
    if name.trim() != name || name.contains(char::is_control) {
        return Err(format!(
            "`{text}`: a capability has no spaces around it and no control characters"
        ));
    }
    Ok(text.to_owned())
}

/// `--answer-timeout`: at least 100ms, at most what TCP_USER_TIMEOUT takes.
pub(crate) fn parse_answer_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_at_least_100ms(text)?;
    if duration > MAX_ANSWER_TIMEOUT {
        return Err(format!(
            "`{text}` is too long (at most {MAX_ANSWER_TIMEOUT_TEXT}: it is also the \
             connections' TCP_USER_TIMEOUT, which the kernel bounds)"
        ));
    }
    Ok(duration)
}

pub(crate) fn parse_at_least_100ms(text: &str) -> Result<Duration, String> {
    let duration = settings::parse_duration(text)?;
    if duration < Duration::from_millis(100) {
        return Err(format!("`{text}` is too short (at least 100ms)"));
    }
    Ok(duration)
}

impl CheckArgs {
    /// The ports to check: the target's, or IMAP and Submission, then any `--port`.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = match self.target.port {
            Some(port) => vec![port],
            None => DEFAULT_PORTS.to_vec(),
        };
        for &port in &self.ports {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    /// The server's name or address, as given.
    #[cfg(test)]
    pub fn host(&self) -> &str {
        &self.target.host
    }

    /// The idle time below which a cut breaks RFC 5382 REQ-5.
    pub fn req5_threshold(&self) -> Duration {
        self.req5_threshold
    }
}

/// Who runs a check: a person at the command line, or the agent's schedule (`[[check]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `idlecut check`: progress on stderr; IMAP credentials may come from the environment.
    Command,
    /// The agent: progress in its log at debug level; credentials only from the entry's
    /// `credentials` file (the agent's environment is no place for a password meant for one
    /// server, which every scheduled check would otherwise send to its own).
    Schedule,
}

/// Progress while the idle search runs.
pub struct Progress {
    pub(crate) prefix: String,
    pub(crate) caller: Caller,
}

impl Progress {
    pub fn note(&self, message: &str) {
        match self.caller {
            Caller::Command => eprintln!("{}{message}", self.prefix),
            Caller::Schedule => tracing::debug!("{}{message}", self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> (String, Option<u16>) {
        let target = parse_target(text).unwrap();
        (target.host, target.port)
    }

    #[test]
    fn targets_with_and_without_ports() {
        assert_eq!(
            target("mail.example.net"),
            ("mail.example.net".into(), None)
        );
        assert_eq!(
            target("mail.example.net:587"),
            ("mail.example.net".into(), Some(587))
        );
        assert_eq!(target("192.0.2.7:143"), ("192.0.2.7".into(), Some(143)));
        assert_eq!(target("2001:db8::7"), ("2001:db8::7".into(), None));
        assert_eq!(
            target("[2001:db8::7]:143"),
            ("2001:db8::7".into(), Some(143))
        );
        assert_eq!(target("[2001:db8::7]"), ("2001:db8::7".into(), None));
        assert_eq!(target("fe80::1%eth0"), ("fe80::1%eth0".into(), None));
        for bad in [
            "host:0",
            "host:imap",
            "[2001:db8::7",
            "[::1]143",
            "",
            ":143",
            "a b",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    /// Issue 21: `imap://host:143` passed as a bare IPv6 address and failed later as a name
    /// that does not resolve. A URL is refused, saying what to write, and never repeats its
    /// user name or password.
    #[test]
    fn a_url_or_a_mangled_host_is_refused_saying_what_to_write() {
        for (bad, words) in [
            (
                "imap://mail.example.net:143",
                "write `mail.example.net:143`",
            ),
            ("smtp://mail.example.net", "write `mail.example.net`"),
            (
                "imaps://[2001:db8::7]:993/INBOX",
                "write `[2001:db8::7]:993`",
            ),
            (
                "imap://bob:hunter2@mail.example.net:143",
                "write `mail.example.net:143`",
            ),
            ("bob:hunter2@mail.example.net", "no user name or password"),
            ("mail.example.net:143:7", "[IPv6]:PORT"),
            ("[mail.example.net]:143", "not a host name or address"),
            ("mail/example", "not a host name or address"),
        ] {
            let err = parse_target(bad).unwrap_err();
            assert!(err.contains(words), "{bad}: {err}");
            assert!(
                !err.contains("hunter2") && !err.contains("bob"),
                "{bad}: {err}"
            );
        }
    }

    fn flags(args: &[&str]) -> Result<CheckArgs, clap::Error> {
        let command = <CheckArgs as clap::Args>::augment_args(clap::Command::new("check"));
        let matches =
            command.try_get_matches_from(std::iter::once("check").chain(args.iter().copied()))?;
        <CheckArgs as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// Issue 21: `--answer-timeout 25d` overflowed TCP_USER_TIMEOUT (EINVAL at every
    /// connect) and a healthy server read as unreachable; `--capability ''` could never pass.
    #[test]
    fn out_of_range_timeouts_and_empty_capabilities_are_usage_errors() {
        for (args, words) in [
            (&["h", "--answer-timeout", "25d"][..], "at most 24d"),
            (&["h", "--answer-timeout", "24d1s"][..], "at most 24d"),
            (&["h", "--capability", ""][..], "an empty capability"),
            (&["h", "--capability", "imap:"][..], "names no capability"),
            (&["h", "--capability", "pop3:TOP"][..], "imap or smtp"),
            (&["h", "--capability", " IDLE"][..], "no spaces around it"),
            (&["imap://h:143"][..], "not a URL"),
        ] {
            let err = flags(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            let message = err.to_string();
            assert!(message.contains(words), "{args:?}: {message}");
            let flag = args[1..].first().copied().unwrap_or("TARGET");
            assert!(
                message.contains(flag),
                "{args:?} does not name {flag}: {message}"
            );
        }
        let longest =
            flags(&["h", "--answer-timeout", "24d", "--capability", "smtp:SIZE"]).unwrap();
        assert_eq!(longest.answer_timeout, MAX_ANSWER_TIMEOUT);
        assert_eq!(longest.capabilities, ["smtp:SIZE"]);
        assert!(
            MAX_ANSWER_TIMEOUT.as_millis() <= i32::MAX as u128,
            "TCP_USER_TIMEOUT takes an int of milliseconds"
        );
    }
}
