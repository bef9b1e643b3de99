//! One session through the negotiation a client does before logging in: the capability list,
//! STARTTLS, the TLS handshake, the capability list again over TLS. Then the judgments on it:
//! is the server the expected one (a middlebox that intercepts the port shows another
//! certificate or greeting), and did the extensions come through intact (a firewall MUST NOT
//! partially block extension negotiation, RFC 5383 §6)?

use std::collections::BTreeSet;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    args::CheckArgs,
    dialog::{Dialog, truncate},
    tls::{self, Certificate, Fingerprint},
};
use idlecut_api::vocabulary::{CheckStatus, MailProtocol};

/// What the negotiation showed.
#[derive(Debug, Default)]
pub struct Session {
    pub capabilities: Vec<String>,
    pub capabilities_tls: Vec<String>,
    /// The capability command itself failed: why.
    pub capability_error: Option<String>,
    pub certificate: Option<Certificate>,
    /// The TLS protocol version, or why STARTTLS did not lead to a TLS session.
    pub tls: Option<Result<String, String>>,
}

impl Session {
    fn offers_starttls(&self) -> bool {
        self.capabilities.iter().any(|c| keyword(c) == "STARTTLS")
    }
}

/// The name of a capability without its parameters: `AUTH PLAIN` and `AUTH=PLAIN` are
/// `AUTH`, `SIZE 1024` is `SIZE`.
fn keyword(capability: &str) -> &str {
    capability.split([' ', '=']).next().unwrap_or(capability)
}

pub async fn run(mut dialog: Dialog<TcpStream>, host: &str, ehlo_name: &str) -> Session {
    let mut session = Session::default();
    match dialog.capabilities(ehlo_name).await {
        Ok(capabilities) => session.capabilities = capabilities,
        Err(err) => {
            session.capability_error = Some(err.to_string());
            return session;
        }
    }
    let (protocol, timeout) = (dialog.protocol, dialog.timeout);
    // Tried even when the list lacks STARTTLS: a server that accepts it then shows that
    // something on the path stripped it from the list.
    let (stream, next_tag) = match dialog.starttls().await {
        Ok(ready) => ready,
        Err((dialog, err)) => {
            session.tls = Some(Err(err.to_string()));
            quit(dialog).await;
            return session;
        }
    };
    match tls::handshake(stream, host, timeout).await {
        Err(why) => session.tls = Some(Err(why)),
        Ok((stream, certificate)) => {
            session.tls = Some(Ok(certificate.protocol_version.clone()));
            session.certificate = Some(certificate);
            let mut dialog = Dialog::resume(stream, protocol, timeout, next_tag);
            match dialog.capabilities(ehlo_name).await {
                Ok(capabilities) => session.capabilities_tls = capabilities,
                Err(err) => {
                    session.capability_error = Some(format!("over TLS: {err}"));
                }
            }
            quit(dialog).await;
        }
    }
    session
}

/// Ends the session politely; the answer does not matter.
async fn quit<S: AsyncRead + AsyncWrite + Unpin>(mut dialog: Dialog<S>) {
    let command = match dialog.protocol {
        MailProtocol::Imap => "LOGOUT",
        MailProtocol::Smtp => "QUIT",
    };
    let _ = dialog.command(command).await;
}

/// Whether the server answering is the expected one.
pub fn identity(
    session: &Session,
    greeting: &str,
    args: &CheckArgs,
    recorded: Option<Fingerprint>,
) -> (CheckStatus, String) {
    let mut facts = vec![format!("greeting \"{}\"", truncate(greeting))];
    let mut problems = Vec::new();
    let mut unsure = Vec::new();
    if let Some(expected) = &args.expect_greeting {
        if greeting.contains(expected.as_str()) {
            facts.push(format!("it contains \"{expected}\""));
        } else {
            problems.push(format!(
                "the greeting lacks \"{expected}\": another server answers in its place \
                 (interception)"
            ));
        }
    }
    let no_tls = || match &session.tls {
        Some(Err(why)) => why.clone(),
        _ => "no TLS session".to_owned(),
    };
    // A pin given now wins over one recorded by an earlier run.
    let pinned = args
        .expect_cert
        .map(|pin| (pin, "the expected one", "--expect-cert".to_owned()))
        .or_else(|| {
            recorded.map(|pin| {
                (
                    pin,
                    "the one recorded on an earlier run",
                    known_certs_file(args),
                )
            })
        });
    match (pinned, &session.certificate) {
        (Some((pin, what, _)), Some(certificate)) if certificate.sha256 == pin => {
            facts.push(format!("certificate sha256 {pin} is {what}"));
        }
        (Some((pin, what, source)), Some(certificate)) => problems.push(format!(
            "the certificate presented has sha256 {}, not {what} ({pin}, from {source}): \
             something on the path answers in the server's place (interception), unless the \
             server changed its certificate",
            certificate.sha256
        )),
        (Some((_, _, source)), None) => unsure.push(format!(
            "no certificate to compare with {source}: {}",
            no_tls()
        )),
        (None, Some(certificate)) => {
            match &certificate.chain_problem {
                None => facts.push(format!(
                    "certificate valid for {} (sha256 {})",
                    args.target.host, certificate.sha256
                )),
                Some(why) => unsure.push(format!(
                    "certificate sha256 {} does not verify against this host's CAs ({why}); \
                     pin it with --expect-cert or --known-certs to check the server's identity",
                    certificate.sha256
                )),
            }
            if args.known_certs.is_some() {
                facts.push(format!(
                    "certificate recorded in {} for later runs",
                    known_certs_file(args)
                ));
            }
        }
        (None, None) => unsure.push(format!(
            "no certificate ({}), and a greeting alone proves nothing",
            no_tls()
        )),
    }
    let status = if !problems.is_empty() {
        CheckStatus::Fail
    } else if !unsure.is_empty() {
        CheckStatus::CouldNotTell
    } else {
        CheckStatus::Pass
    };
    facts.extend(problems);
    facts.extend(unsure);
    (status, sentences(&facts))
}

fn known_certs_file(args: &CheckArgs) -> String {
    args.known_certs
        .as_ref()
        .map_or_else(String::new, |path| path.display().to_string())
}

/// Whether extension negotiation came through intact.
pub fn extensions(
    session: &Session,
    protocol: MailProtocol,
    wanted: &[String],
) -> (CheckStatus, String) {
    let list = match protocol {
        MailProtocol::Imap => "CAPABILITY",
        MailProtocol::Smtp => "EHLO",
    };
    if let Some(err) = &session.capability_error {
        return (CheckStatus::Fail, format!("{list} failed: {err}"));
    }
    let mut facts = Vec::new();
    let mut problems = Vec::new();
    match (session.offers_starttls(), &session.tls) {
        (true, Some(Ok(version))) => facts.push(format!(
            "STARTTLS offered and the handshake completes ({version})"
        )),
        (false, Some(Ok(_))) => problems.push(format!(
            "STARTTLS is missing from the {list} list, yet the server accepts it: something on \
             the path strips it"
        )),
        (true, Some(Err(why))) => problems.push(format!("STARTTLS is offered, but {why}")),
        (false, Some(Err(why))) => problems.push(format!("STARTTLS is not offered ({why})")),
        (_, None) => problems.push("STARTTLS was not tried".to_owned()),
    }
    if !session.capabilities_tls.is_empty() {
        let before: BTreeSet<&str> = session.capabilities.iter().map(|c| keyword(c)).collect();
        // Over TLS a server adds its login mechanisms (and drops STARTTLS, LOGINDISABLED): any
        // other capability seen only over TLS was hidden from the plaintext list.
        let hidden: Vec<&str> = session
            .capabilities_tls
            .iter()
            .map(|c| keyword(c))
            .filter(|k| !before.contains(k) && !k.starts_with("AUTH"))
            .collect();
        if hidden.is_empty() {
            facts.push(format!(
                "{} capabilities before TLS, {} over TLS, differing only as TLS explains",
                session.capabilities.len(),
                session.capabilities_tls.len()
            ));
        } else {
            problems.push(format!(
                "offered over TLS but missing before it: {}: something on the path strips \
                 them from the plaintext list",
                hidden.join(", ")
            ));
        }
    }
    let offered: BTreeSet<&str> = session
        .capabilities
        .iter()
        .chain(&session.capabilities_tls)
        .flat_map(|c| [c.as_str(), keyword(c)])
        .collect();
    for name in wanted {
        let (applies, name) = match name.split_once(':') {
            Some((scope, name)) => (scope.eq_ignore_ascii_case(protocol_scope(protocol)), name),
            None => (true, name.as_str()),
        };
        if !applies {
            continue;
        }
        let name = name.to_ascii_uppercase();
        if offered.contains(name.as_str()) {
            facts.push(format!("{name} offered"));
        } else {
            problems.push(format!("{name} is not offered"));
        }
    }
    let status = if problems.is_empty() {
        CheckStatus::Pass
    } else {
        CheckStatus::Fail
    };
    facts.extend(problems);
    (status, sentences(&facts))
}

const fn protocol_scope(protocol: MailProtocol) -> &'static str {
    match protocol {
        MailProtocol::Imap => "imap",
        MailProtocol::Smtp => "smtp",
    }
}

fn sentences(parts: &[String]) -> String {
    let mut text = parts.join("; ");
    text.push('.');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(before: &[&str], after: &[&str]) -> Session {
        Session {
            capabilities: before.iter().map(|&c| c.to_owned()).collect(),
            capabilities_tls: after.iter().map(|&c| c.to_owned()).collect(),
            tls: Some(Ok("TLSv1_3".to_owned())),
            ..Session::default()
        }
    }

    #[test]
    fn the_changes_tls_explains_pass() {
        let dovecot = session(
            &["IMAP4REV1", "IDLE", "STARTTLS", "LOGINDISABLED"],
            &["IMAP4REV1", "IDLE", "AUTH=PLAIN"],
        );
        let (status, detail) = extensions(&dovecot, MailProtocol::Imap, &["imap:idle".into()]);
        assert_eq!(status, CheckStatus::Pass, "{detail}");
        assert!(detail.contains("IDLE offered"), "{detail}");
        // A capability named for the other protocol does not apply.
        let (status, _) = extensions(&dovecot, MailProtocol::Imap, &["smtp:CHUNKING".into()]);
        assert_eq!(status, CheckStatus::Pass);
    }

    #[test]
    fn stripped_starttls_and_hidden_capabilities_fail() {
        let stripped = session(&["PIPELINING", "SIZE 1000"], &["PIPELINING", "SIZE 1000"]);
        let (status, detail) = extensions(&stripped, MailProtocol::Smtp, &[]);
        assert_eq!(status, CheckStatus::Fail);
        assert!(detail.contains("strips it"), "{detail}");
        let hidden = session(&["STARTTLS"], &["CHUNKING", "AUTH PLAIN"]);
        let (status, detail) = extensions(&hidden, MailProtocol::Smtp, &["CHUNKING".into()]);
        assert_eq!(status, CheckStatus::Fail);
        assert!(detail.contains("missing before it: CHUNKING"), "{detail}");
    }
}
