//! The site the `idlecut check` tests (`check.rs`, `check_idle_cutoff.rs`) run against:
//! Dovecot (IMAP, 143) and Postfix (Submission, 587) in the server namespace, both with the
//! same certificate, the check run from the client namespace with short timeouts and that
//! certificate pinned; and the readers of the check's --json report.

use idlecut_integration_tests::{
    Topology,
    mail::{self, Certificate, CheckRun, Server, TempDir},
};
use serde_json::Value;

/// Short timeouts: every server here answers in milliseconds.
const FAST: [&str; 4] = ["--connect-timeout", "2s", "--answer-timeout", "2s"];

/// A topology with Dovecot and Postfix on the server, both with the same certificate.
pub struct Site {
    pub net: Topology,
    pub certs: TempDir,
    pub cert: Certificate,
    _imap: Server,
    _submission: Server,
}

impl Site {
    pub fn new() -> Self {
        Self::with_postfix("")
    }

    /// With `postfix_extra` lines in Postfix's main.cf.
    pub fn with_postfix(postfix_extra: &str) -> Self {
        let net = Topology::new();
        let certs = TempDir::new("certs");
        let cert = Certificate::generate(&certs, "mail.test");
        let (v4, v6) = (net.server_v4(), net.server_v6());
        let addresses = [v4.as_str(), v6.as_str()];
        let imap = mail::dovecot(&net.server, &addresses, &cert);
        let submission = mail::postfix(&net.server, &addresses, "mail.test", &cert, postfix_extra);
        Self {
            net,
            certs,
            cert,
            _imap: imap,
            _submission: submission,
        }
    }

    /// `idlecut check SERVER ARGS` from the client, with the short timeouts and the pinned
    /// certificate.
    pub fn check(&self, args: &[&str]) -> CheckRun {
        self.check_target(&self.net.server_v4(), args)
    }

    /// A credentials file for `idlecut check --credentials`: user `checker`, `password`.
    pub fn credentials(&self, password: &str) -> String {
        let path = self.certs.join(&format!("credentials-{password}"));
        std::fs::write(&path, format!("checker\n{password}\n")).expect("credentials file");
        path.to_str().expect("UTF-8 path").to_owned()
    }

    pub fn check_target(&self, target: &str, args: &[&str]) -> CheckRun {
        let mut all = vec![target, "--expect-cert", &self.cert.sha256];
        all.extend(FAST);
        all.extend(args);
        let run = mail::run_check(&self.net.client, &all);
        eprintln!(
            "idlecut check {}:\n{}\n{}",
            all.join(" "),
            run.stdout,
            run.stderr
        );
        run
    }
}

/// The row of `check` on `port` in a --json report.
fn row<'a>(report: &'a Value, port: u16, check: &str) -> &'a Value {
    report["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == port)
        .and_then(|p| {
            p["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .find(|r| r["check"] == check)
        })
        .unwrap_or_else(|| panic!("no {check} row for port {port} in {report:#}"))
}

pub fn status(report: &Value, port: u16, check: &str) -> String {
    row(report, port, check)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn detail(report: &Value, port: u16, check: &str) -> String {
    row(report, port, check)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn port_report(report: &Value, port: u16) -> &Value {
    report["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("no port {port} in {report:#}"))
}
