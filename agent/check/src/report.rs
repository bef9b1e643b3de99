//! What `idlecut check` found: one row per check and port (pass, fail or could not tell, and
//! why), printed as a table for people or as JSON for scripts, and the exit status.

use std::{fmt::Write as _, net::SocketAddr};

use serde::Serialize;

use super::{probe::Probe, tls::Certificate};
use idlecut_api::vocabulary::{CheckName, CheckStatus, IdleSession, MailProtocol, Signature};
use idlecut_core::duration_text::with_seconds;
use idlecut_core::inference::Verdict;

/// What the idle search found on one port.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    pub cutoff_lower_seconds: Option<f64>,
    pub cutoff_upper_seconds: Option<f64>,
    /// The most frequent signature among the cuts.
    pub signature: Option<Signature>,
    pub verdict: Verdict,
    /// The sentence `/api/v1/paths` gives for the same evidence.
    pub explanation: String,
    pub recommended_keepalive_seconds: Option<f64>,
    /// The longest silence the server itself allows, when it ended one.
    pub server_idle_limit_seconds: Option<f64>,
    /// Whether the idle sessions were only greeted, or logged in.
    pub session: IdleSession,
    /// Connections the search opened (the keepalive confirmation's not included).
    pub connections: usize,
    /// The probes that finished (not those dropped at a round's first cut), shortest first.
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub check: CheckName,
    pub status: CheckStatus,
    /// Why, for a person: one or more sentences.
    pub detail: String,
}

impl Row {
    pub fn new(check: CheckName, status: CheckStatus, detail: impl Into<String>) -> Self {
        Self {
            check,
            status,
            detail: detail.into(),
        }
    }
}

/// Everything learned about one port.
#[derive(Clone, Debug, Serialize)]
pub struct PortReport {
    pub port: u16,
    pub address: SocketAddr,
    pub protocol: Option<MailProtocol>,
    pub greeting: Option<String>,
    pub certificate: Option<Certificate>,
    /// The capability list before TLS (IMAP CAPABILITY, SMTP EHLO keywords).
    pub capabilities: Vec<String>,
    /// The same list over TLS, after STARTTLS.
    pub capabilities_tls: Vec<String>,
    pub idle: Option<IdleReport>,
    pub rows: Vec<Row>,
}

impl PortReport {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            port: address.port(),
            address,
            protocol: None,
            greeting: None,
            certificate: None,
            capabilities: Vec::new(),
            capabilities_tls: Vec::new(),
            idle: None,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, check: CheckName, status: CheckStatus, detail: impl Into<String>) {
        self.rows.push(Row::new(check, status, detail));
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub max_idle_seconds: f64,
    pub precision_seconds: f64,
    pub ports: Vec<PortReport>,
    /// Fail if any row failed, else could-not-tell if any row could not tell, else pass.
    pub result: CheckStatus,
}

impl Report {
    pub fn new(
        target: String,
        max_idle_seconds: f64,
        precision_seconds: f64,
        ports: Vec<PortReport>,
    ) -> Self {
        let statuses = || {
            ports
                .iter()
                .flat_map(|port| &port.rows)
                .map(|row| row.status)
        };
        let result = if statuses().any(|s| s == CheckStatus::Fail) {
            CheckStatus::Fail
        } else if statuses().any(|s| s == CheckStatus::CouldNotTell) {
            CheckStatus::CouldNotTell
        } else {
            CheckStatus::Pass
        };
        Self {
            target,
            max_idle_seconds,
            precision_seconds,
            ports,
            result,
        }
    }

    /// 0 when nothing failed, 1 when something did. A check that could not tell is not a
    /// failure of the path (the table says why it could not).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.result == CheckStatus::Fail)
    }

    /// The table: one row per check and port; long details continue on indented lines.
    pub fn render(&self) -> String {
        const PORT: usize = 6;
        const CHECK: usize = 14;
        const RESULT: usize = 16;
        let mut out = String::new();
        let idle = if self.max_idle_seconds > 0.0 {
            format!(
                "idle up to {}, precision {}",
                with_seconds(self.max_idle_seconds),
                with_seconds(self.precision_seconds)
            )
        } else {
            "idle checks skipped".to_owned()
        };
        let _ = writeln!(out, "idlecut check {} ({idle})", self.target);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<PORT$}{:<CHECK$}{:<RESULT$}DETAIL",
            "PORT", "CHECK", "RESULT"
        );
        let indent = " ".repeat(PORT + CHECK + RESULT);
        for port in &self.ports {
            for row in &port.rows {
                let mut lines = wrap(&row.detail, 76).into_iter();
                let _ = writeln!(
                    out,
                    "{:<PORT$}{:<CHECK$}{:<RESULT$}{}",
                    port.port,
                    row.check.name(),
                    row.status.word(),
                    lines.next().unwrap_or_default()
                );
                for line in lines {
                    let _ = writeln!(out, "{indent}{line}");
                }
            }
        }
        let count = |status| {
            self.ports
                .iter()
                .flat_map(|port| &port.rows)
                .filter(|row| row.status == status)
                .count()
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} passed, {} failed, {} could not tell",
            count(CheckStatus::Pass),
            count(CheckStatus::Fail),
            count(CheckStatus::CouldNotTell)
        );
        out
    }
}

/// Splits text into lines of at most `width` characters at spaces (a longer word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[CheckStatus]) -> Report {
        let mut port = PortReport::new("192.0.2.1:143".parse().unwrap());
        for &status in statuses {
            port.row(CheckName::Reachability, status, "why");
        }
        Report::new("mail.example.net".into(), 7500.0, 125.0, vec![port])
    }

    #[test]
    fn one_failure_fails_the_check_and_could_not_tell_does_not() {
        assert_eq!(
            report(&[CheckStatus::Pass, CheckStatus::Fail]).exit_code(),
            1
        );
        let unsure = report(&[CheckStatus::Pass, CheckStatus::CouldNotTell]);
        assert_eq!(unsure.result, CheckStatus::CouldNotTell);
        assert_eq!(unsure.exit_code(), 0);
        assert_eq!(report(&[CheckStatus::Pass]).exit_code(), 0);
    }

    #[test]
    fn long_details_wrap_under_their_column() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("", 5), [""]);
        let table = report(&[CheckStatus::Fail]).render();
        assert!(
            table.contains("143   reachability  FAIL            why"),
            "{table}"
        );
        assert!(table.contains("0 passed, 1 failed, 0 could not tell"));
    }
}
