//! A `[[check]]` table of the agent's config file: what `idlecut check` would be given as
//! flags, read through the flags' own parsers and defaults (one way to say a check), plus how
//! often the agent runs it.
//!
//! ```toml
//! [[check]]
//! target = "mail.example.net:143"
//! every = "6h"
//! max_idle = "2h5m"
//! credentials = "/etc/idlecut/imap-checker"
//! ```

use std::{path::PathBuf, time::Duration};

use super::{
    args::{
        CheckArgs, DEFAULT_ANSWER_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IDLE,
        DEFAULT_REQ5_THRESHOLD, parse_answer_timeout, parse_at_least_100ms, parse_capability,
        parse_target,
    },
    login::Credentials,
    tls::Fingerprint,
};
use idlecut_core::{duration_text::with_seconds, settings};

/// Checks one agent may run: each adds a few series per port to the metrics, and an idle
/// search holds up to 8 connections open per port.
pub const MAX_CHECKS: usize = 32;
/// The shortest `every`: a check is an audit, not a probe to run in a loop.
const MIN_EVERY: Duration = Duration::from_secs(60);
const DEFAULT_EVERY: &str = "6h";

/// The keys a `[[check]]` table may have.
const KEYS: &[&str] = &[
    "target",
    "every",
    "ports",
    "max_idle",
    "precision",
    "expect_cert",
    "expect_greeting",
    "capabilities",
    "credentials",
    "known_certs",
    "connect_timeout",
    "answer_timeout",
];

/// One check the agent runs on a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledCheck {
    /// The target as written in the file: the `target` label of the check's metrics.
    pub label: String,
    /// How often it runs (from the start of one run to the start of the next).
    pub every: Duration,
    pub args: CheckArgs,
}

/// A key of a `[[check]]` table that is wrong, and why; the config reader says where.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl ScheduledCheck {
    /// Reads one table. The REQ-5 threshold is the agent's (`set_req5_threshold`).
    pub fn from_table(table: &toml::Table) -> Result<Self, KeyError> {
        let error = |key: &str, message: String| KeyError {
            key: key.to_owned(),
            message,
        };
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) {
                let message = if key.contains("password") || key == "user" {
                    "credentials never go in the config: name a file holding the user name and \
                     the password with `credentials`"
                        .to_owned()
                } else {
                    format!("unknown key; a [[check]] has {}", KEYS.join(", "))
                };
                return Err(error(key, message));
            }
        }
        // A key's text through `parse`, or the default's when the key is absent.
        let value = |key: &str| -> Result<Option<String>, KeyError> {
            table
                .get(key)
                .map(|value| text(value).map_err(|message| error(key, message)))
                .transpose()
        };
        let parsed = |key: &str, default: &str, parse: fn(&str) -> Result<Duration, String>| {
            let text = value(key)?.unwrap_or_else(|| default.to_owned());
            parse(&text).map_err(|message| error(key, message))
        };
        let label = value("target")?.ok_or_else(|| {
            error(
                "target",
                "missing: every [[check]] names its server, as HOST, HOST:PORT or [IPv6]:PORT"
                    .to_owned(),
            )
        })?;
        let target = parse_target(&label).map_err(|message| error("target", message))?;
        let max_idle = parsed("max_idle", DEFAULT_MAX_IDLE, settings::parse_duration)?;
        let every = parsed("every", DEFAULT_EVERY, settings::parse_duration)?;
        if every < MIN_EVERY {
            return Err(error(
                "every",
                format!("{} is too often (at least 1m)", with_seconds(secs(every))),
            ));
        }
        if every <= max_idle {
            return Err(error(
                "every",
                format!(
                    "{} is not longer than max_idle ({}): a run lasts as long as its longest \
                     silence",
                    with_seconds(secs(every)),
                    with_seconds(secs(max_idle))
                ),
            ));
        }
        let precision = value("precision")?
            .map(|text| parse_at_least_100ms(&text).map_err(|m| error("precision", m)))
            .transpose()?;
        let expect_cert = value("expect_cert")?
            .map(|text| Fingerprint::parse(&text).map_err(|m| error("expect_cert", m)))
            .transpose()?;
        let credentials = value("credentials")?.map(PathBuf::from);
        if let Some(file) = &credentials {
            // Read now, so that a missing or malformed file stops the agent at start-up
            // rather than failing every run; each run reads it again (it may be rotated).
            // The error never repeats the value: one who wrote `user:password` there must not
            // find the password in the log.
            Credentials::load(Some(file)).map_err(|err| {
                error(
                    "credentials",
                    format!(
                        "{err:#} (the value is the path of a file holding the user name and \
                         the password, never the credentials themselves)"
                    ),
                )
            })?;
        }
        let ports = list(table, "ports", |value| match value {
            toml::Value::Integer(port) => u16::try_from(*port)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("{port} is not a port (1-65535)")),
            other => Err(format!(
                "expected a port number, found {}",
                other.type_str()
            )),
        })
        .map_err(|message| error("ports", message))?;
        let capabilities = list(table, "capabilities", |value| {
            text(value).and_then(|name| parse_capability(&name))
        })
        .map_err(|message| error("capabilities", message))?;
        let args = CheckArgs {
            target,
            ports,
            max_idle,
            precision,
            expect_cert,
            credentials,
            known_certs: value("known_certs")?.map(PathBuf::from),
            expect_greeting: value("expect_greeting")?,
            capabilities,
            connect_timeout: parsed(
                "connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
                parse_at_least_100ms,
            )?,
            answer_timeout: parsed(
                "answer_timeout",
                DEFAULT_ANSWER_TIMEOUT,
                parse_answer_timeout,
            )?,
            req5_threshold: settings::parse_req5_threshold(DEFAULT_REQ5_THRESHOLD)
                .map_err(|message| error("req5_threshold", message))?,
            json: false,
        };
        Ok(Self { label, every, args })
    }

    /// The agent's `req5_threshold`, so that the check's verdict and the passive one use the
    /// same bar.
    pub fn set_req5_threshold(&mut self, threshold: Duration) {
        self.args.req5_threshold = threshold;
    }
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A string value as written.
fn text(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        other => Err(format!(
            "expected a string in quotes, found {}",
            other.type_str()
        )),
    }
}

/// An array of values (or a single one), each read by `item`.
fn list<T>(
    table: &toml::Table,
    key: &str,
    item: impl Fn(&toml::Value) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    match table.get(key) {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(values)) => values.iter().map(item).collect(),
        Some(value) => Ok(vec![item(value)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ScheduledCheck, KeyError> {
        ScheduledCheck::from_table(&toml::from_str(text).unwrap())
    }

    #[test]
    fn a_table_gets_the_flags_defaults() {
        let check = read("target = \"mail.example.net\"").unwrap();
        assert_eq!(check.label, "mail.example.net");
        assert_eq!(check.every, Duration::from_secs(6 * 3600));
        assert_eq!(check.args.ports(), [143, 587]);
        let flags = <CheckArgs as clap::FromArgMatches>::from_arg_matches(
            &<CheckArgs as clap::Args>::augment_args(clap::Command::new("check"))
                .get_matches_from(["check", "mail.example.net"]),
        )
        .unwrap();
        assert_eq!(
            check.args, flags,
            "the same settings as `idlecut check TARGET`"
        );
    }

    #[test]
    fn every_key_is_read_through_its_flag_parser() {
        let short = read("target = \"h\"\nexpect_cert = \"ab12\"").unwrap_err();
        assert_eq!(
            short.key, "expect_cert",
            "a truncated fingerprint: {short:?}"
        );
        let pin = "ab".repeat(32);
        let check = read(&format!(
            "target = \"[2001:db8::7]:143\"\nevery = \"1h\"\nports = [993, 4190]\n\
             max_idle = \"20m\"\nprecision = \"30s\"\nexpect_cert = \"{pin}\"\n\
             expect_greeting = \"mail\"\ncapabilities = [\"IDLE\", \"smtp:PIPELINING\"]\n\
             connect_timeout = \"2s\"\nanswer_timeout = \"3s\"\nknown_certs = \"/var/lib/k.json\"\n"
        ))
        .unwrap();
        assert_eq!(check.every, Duration::from_secs(3600));
        assert_eq!(check.args.ports(), [143, 993, 4190]);
        assert_eq!(check.args.max_idle, Duration::from_secs(1200));
        assert_eq!(check.args.precision, Some(Duration::from_secs(30)));
        assert_eq!(check.args.expect_cert.map(|f| f.to_string()), Some(pin));
        assert_eq!(check.args.capabilities, ["IDLE", "smtp:PIPELINING"]);
        assert_eq!(check.args.connect_timeout, Duration::from_secs(2));
        assert_eq!(check.args.target.host, "2001:db8::7");
    }

    #[test]
    fn bad_entries_name_their_key() {
        for (text, key, words) in [
            ("every = \"1h\"", "target", "missing"),
            ("target = \"host:0\"", "target", "not a port"),
            ("target = 7", "target", "expected a string"),
            ("target = \"h\"\nevery = \"30s\"", "every", "too often"),
            (
                "target = \"h\"\nevery = \"2h\"",
                "every",
                "not longer than max_idle (2h5m",
            ),
            (
                "target = \"h\"\nmax_idle = \"ten\"",
                "max_idle",
                "not a duration",
            ),
            (
                "target = \"h\"\nprecision = \"10ms\"",
                "precision",
                "too short",
            ),
            ("target = \"h\"\nports = [0]", "ports", "not a port"),
            (
                "target = \"h\"\nports = [\"imap\"]",
                "ports",
                "expected a port",
            ),
            (
                "target = \"h\"\npassword = \"x\"",
                "password",
                "never go in the config",
            ),
            ("target = \"h\"\nport = 143", "port", "unknown key"),
            (
                "target = \"h\"\ncredentials = \"/nonexistent/idlecut-creds\"",
                "credentials",
                "cannot read the file",
            ),
            (
                "target = \"h\"\nanswer_timeout = \"25d\"",
                "answer_timeout",
                "at most 24d",
            ),
            (
                "target = \"h\"\ncapabilities = [\"IDLE\", \"\"]",
                "capabilities",
                "an empty capability",
            ),
            (
                "target = \"imap://mail.example.net:143\"",
                "target",
                "write `mail.example.net:143`",
            ),
        ] {
            let err = read(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err:?}");
            assert!(err.message.contains(words), "{text}: {err:?}");
        }
    }

    /// Issue 21: `credentials = "bob:hunter2"` stopped the agent with an error that held the
    /// password (the path it could not read). Errors about a secret-bearing key name the key,
    /// never its value.
    #[test]
    fn a_credentials_value_is_never_repeated_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let one_line = dir.path().join("hunter2-one-line");
        std::fs::write(&one_line, "bob\n").unwrap();
        for value in [
            "bob:hunter2".to_owned(),
            "hunter2".to_owned(),
            one_line.display().to_string(),
        ] {
            let err = read(&format!("target = \"h\"\ncredentials = \"{value}\"")).unwrap_err();
            assert_eq!(err.key, "credentials", "{err:?}");
            assert!(!err.message.contains("hunter2"), "{err:?}");
        }
        // Nor is a value of the wrong type.
        let err = read("target = \"h\"\ncredentials = 1234567").unwrap_err();
        assert_eq!(err.key, "credentials", "{err:?}");
        assert!(!err.message.contains("1234567"), "{err:?}");
    }
}
