//! Logged-in IMAP sessions for the idle search. A server ends a session that has not logged
//! in after a few minutes (Dovecot: 3), which bounds the silences a greeted session can test;
//! a logged-in one may stay silent for 30 minutes (RFC 3501's autologout minimum). The
//! credentials come from a file or the environment, never from a flag (the command line is
//! visible to every user of the host), and only ever travel over TLS.

use std::{fmt, path::Path};

use anyhow::{Context as _, bail};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    dialog::{Dialog, truncate},
    tls,
};

pub const USER_VARIABLE: &str = "IDLECUT_CHECK_USER";
pub const PASSWORD_VARIABLE: &str = "IDLECUT_CHECK_PASSWORD";

pub struct Credentials {
    pub user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"(hidden)")
            .finish()
    }
}

impl Credentials {
    /// From `file` (the user name on its first line, the password on its second), else from
    /// IDLECUT_CHECK_USER and IDLECUT_CHECK_PASSWORD, else none. Errors never repeat the
    /// file's path nor its contents (whoever wrote `user:password` where the path goes would
    /// find the password in the log): the caller names the flag or key.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let (user, password) = if let Some(file) = file {
            let text = std::fs::read_to_string(file).context("cannot read the file it names")?;
            let mut lines = text.lines();
            match (lines.next(), lines.next()) {
                (Some(user), Some(password)) => (user.to_owned(), password.to_owned()),
                _ => bail!(
                    "the file it names must hold the IMAP user name on its first line and the \
                     password on its second"
                ),
            }
        } else {
            match (
                std::env::var(USER_VARIABLE).ok(),
                std::env::var(PASSWORD_VARIABLE).ok(),
            ) {
                (Some(user), Some(password)) => (user, password),
                (None, None) => return Ok(None),
                _ => bail!("set both {USER_VARIABLE} and {PASSWORD_VARIABLE}, or neither"),
            }
        };
        if user.is_empty()
            || [&user, &password]
                .iter()
                .any(|s| s.contains(['\r', '\n', '\0']))
        {
            bail!(
                "the IMAP user name must not be empty, and neither it nor the password may hold a line break"
            );
        }
        Ok(Some(Self { user, password }))
    }
}

/// An IMAP quoted string.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// STARTTLS, then LOGIN over TLS: the session is then in the authenticated state.
pub async fn log_in(
    dialog: Dialog<TcpStream>,
    credentials: &Credentials,
    server_name: &str,
) -> Result<Dialog<TlsStream<TcpStream>>, String> {
    let (protocol, timeout) = (dialog.protocol, dialog.timeout);
    let (stream, next_tag) = dialog
        .starttls()
        .await
        .map_err(|(_, err)| format!("STARTTLS before LOGIN: {err}"))?;
    let (stream, _) = tls::handshake(stream, server_name, timeout).await?;
    let mut dialog = Dialog::resume(stream, protocol, timeout, next_tag);
    let command = format!(
        "LOGIN {} {}",
        quoted(&credentials.user),
        quoted(&credentials.password)
    );
    match dialog.command(&command).await {
        Ok(answer) if answer.ok => Ok(dialog),
        Ok(answer) => Err(format!(
            "LOGIN as {} failed: {}",
            credentials.user,
            truncate(answer.last())
        )),
        Err(err) => Err(format!("LOGIN as {}: {err}", credentials.user)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        assert_eq!(quoted(r#"pa"ss\word"#), r#""pa\"ss\\word""#);
    }

    #[test]
    fn credentials_come_from_a_file_of_two_lines() {
        let path = std::env::temp_dir().join(format!("idlecut-creds-{}", std::process::id()));
        std::fs::write(&path, "alice\ns3cret word\n").unwrap();
        let credentials = Credentials::load(Some(&path)).unwrap().unwrap();
        assert_eq!(credentials.user, "alice");
        assert_eq!(credentials.password, "s3cret word");
        assert!(!format!("{credentials:?}").contains("s3cret"));
        std::fs::write(&path, "alice\n").unwrap();
        let err = format!("{:#}", Credentials::load(Some(&path)).unwrap_err());
        assert!(
            !err.contains("alice") && !err.contains("idlecut-creds"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = format!(
            "{:#}",
            Credentials::load(Some(Path::new("bob:hunter2"))).unwrap_err()
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}
