//! The few IMAP and SMTP exchanges a check needs, line by line, each bounded in time and size:
//! the greeting, the capability list (IMAP CAPABILITY, SMTP EHLO), NOOP and STARTTLS. Nothing
//! here logs in: all of it works before authentication.

use std::{io, time::Duration};

use tokio::time::Instant;

use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};

/// Longest line accepted from a server (RFC 5321 allows 512 octets for a reply line, IMAP lines
/// are longer but a capability list is not): a peer that streams garbage cannot exhaust memory.
const MAX_LINE: u64 = 8192;
/// Lines accepted in one answer, for the same reason.
const MAX_LINES: usize = 200;

use idlecut_api::vocabulary::MailProtocol;

#[derive(Debug, thiserror::Error)]
pub enum DialogError {
    #[error("the server closed the connection")]
    Closed,
    #[error("no answer within {}", idlecut_core::duration_text::with_seconds(.0.as_secs_f64()))]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    MailProtocol(String),
}

/// One line-oriented conversation with a mail server, over plain TCP or TLS.
pub struct Dialog<S> {
    reader: BufReader<S>,
    pub protocol: MailProtocol,
    /// How long to wait for each answer, all its lines together: a server that trickles
    /// bytes cannot hold a check longer than that.
    pub timeout: Duration,
    /// When the answer being read is due.
    due: Instant,
    next_tag: u32,
}

/// A server's answer: its lines (without line ends) and whether it means success.
#[derive(Clone, Debug)]
pub struct Answer {
    pub lines: Vec<String>,
    pub ok: bool,
}

impl Answer {
    /// The final line, the one with the status.
    pub fn last(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Dialog<S> {
    /// Reads the greeting and tells the protocol from it.
    pub async fn greet(stream: S, timeout: Duration) -> Result<(Self, String), DialogError> {
        let mut reader = BufReader::new(stream);
        let due = Instant::now() + timeout;
        let first = read_line(&mut reader, timeout).await?;
        let protocol = MailProtocol::of_greeting(&first).ok_or_else(|| {
            DialogError::MailProtocol(format!(
                "the greeting is neither IMAP nor SMTP: {:?}",
                truncate(&first)
            ))
        })?;
        let mut dialog = Self {
            reader,
            protocol,
            timeout,
            due,
            next_tag: 1,
        };
        let mut greeting = first;
        // A multi-line SMTP greeting (220-...): the rest of it.
        let mut lines = 1;
        while protocol == MailProtocol::Smtp && greeting.as_bytes().get(3) == Some(&b'-') {
            greeting = dialog.line().await?;
            lines += 1;
            if lines > MAX_LINES {
                return Err(DialogError::MailProtocol("an endless greeting".to_owned()));
            }
        }
        if greeting.starts_with("* BYE")
            || (protocol == MailProtocol::Smtp && !greeting.starts_with("220"))
        {
            return Err(DialogError::MailProtocol(format!(
                "the server refuses the session: {}",
                truncate(&greeting)
            )));
        }
        Ok((dialog, greeting))
    }

    /// Continues a dialog over a new stream (after STARTTLS).
    pub fn resume(stream: S, protocol: MailProtocol, timeout: Duration, next_tag: u32) -> Self {
        Self {
            reader: BufReader::new(stream),
            protocol,
            timeout,
            due: Instant::now() + timeout,
            next_tag,
        }
    }

    /// The next line of the answer being read, if it comes before the answer is due.
    async fn line(&mut self) -> Result<String, DialogError> {
        let left = self.due.saturating_duration_since(Instant::now());
        read_line(&mut self.reader, left)
            .await
            .map_err(|err| match err {
                DialogError::Timeout(_) => DialogError::Timeout(self.timeout),
                other => other,
            })
    }

    /// Sends one command and reads its whole answer. IMAP commands get a tag here.
    pub async fn command(&mut self, command: &str) -> Result<Answer, DialogError> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        let wire = match self.protocol {
            MailProtocol::Imap => format!("{tag} {command}\r\n"),
            MailProtocol::Smtp => format!("{command}\r\n"),
        };
        self.reader.get_mut().write_all(wire.as_bytes()).await?;
        self.reader.get_mut().flush().await?;
        self.due = Instant::now() + self.timeout;
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let done = match self.protocol {
                MailProtocol::Imap => line.starts_with(&format!("{tag} ")),
                MailProtocol::Smtp => line.as_bytes().get(3) != Some(&b'-'),
            };
            let bye = self.protocol == MailProtocol::Imap && line.starts_with("* BYE");
            lines.push(line);
            if done {
                let last = lines.last().map_or("", String::as_str);
                let ok = match self.protocol {
                    MailProtocol::Imap => last[tag.len()..].trim_start().starts_with("OK"),
                    MailProtocol::Smtp => last.starts_with('2'),
                };
                return Ok(Answer { lines, ok });
            }
            if bye || lines.len() >= MAX_LINES {
                return Err(DialogError::MailProtocol(format!(
                    "unexpected answer to {command}: {}",
                    truncate(lines.last().map_or("", String::as_str))
                )));
            }
        }
    }

    /// The capability list: IMAP CAPABILITY words, or SMTP EHLO keywords with their
    /// parameters (`AUTH PLAIN LOGIN`), upper-cased.
    pub async fn capabilities(&mut self, ehlo_name: &str) -> Result<Vec<String>, DialogError> {
        let (command, answer) = match self.protocol {
            MailProtocol::Imap => ("CAPABILITY", self.command("CAPABILITY").await?),
            MailProtocol::Smtp => ("EHLO", self.command(&format!("EHLO {ehlo_name}")).await?),
        };
        if !answer.ok {
            return Err(DialogError::MailProtocol(format!(
                "{command} failed: {}",
                truncate(answer.last())
            )));
        }
        Ok(match self.protocol {
            MailProtocol::Imap => answer
                .lines
                .iter()
                .filter_map(|line| line.strip_prefix("* CAPABILITY "))
                .flat_map(str::split_whitespace)
                .map(str::to_ascii_uppercase)
                .collect(),
            // The first line names the server; each further one is a keyword and parameters.
            MailProtocol::Smtp => answer
                .lines
                .iter()
                .skip(1)
                .map(|line| {
                    line.get(4..)
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_uppercase()
                })
                .filter(|keyword| !keyword.is_empty())
                .collect(),
        })
    }

    /// NOOP: whether the server answered it.
    pub async fn noop(&mut self) -> Result<Answer, DialogError> {
        self.command("NOOP").await
    }

    /// Sends STARTTLS; on success returns the stream, ready for the TLS handshake, and the next
    /// IMAP tag to use after it.
    pub async fn starttls(mut self) -> Result<(S, u32), (Self, DialogError)> {
        let answer = match self.command("STARTTLS").await {
            Ok(answer) => answer,
            Err(err) => return Err((self, err)),
        };
        if !answer.ok {
            let refused = DialogError::MailProtocol(format!(
                "the server refused STARTTLS: {}",
                truncate(answer.last())
            ));
            return Err((self, refused));
        }
        // Bytes after the go-ahead and before the handshake would be a plaintext injection
        // (CVE-2011-0411 and its kin): never carry them into the TLS session.
        if !self.reader.buffer().is_empty() {
            let injected = DialogError::MailProtocol(
                "data followed the STARTTLS go-ahead before the TLS handshake (a plaintext \
                 injection)"
                    .to_owned(),
            );
            return Err((self, injected));
        }
        let next_tag = self.next_tag;
        Ok((self.reader.into_inner(), next_tag))
    }

    /// Waits for the server to say something on its own, up to `limit`: returns `None` if it
    /// stayed silent, the line if it spoke, or the error (a close, a reset) that ended the wait.
    pub async fn wait_silent(&mut self, limit: Duration) -> Option<Result<String, DialogError>> {
        tokio::time::timeout(limit, read_line_unbounded(&mut self.reader))
            .await
            .ok()
    }

    pub fn get_ref(&self) -> &S {
        self.reader.get_ref()
    }
}

async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    timeout: Duration,
) -> Result<String, DialogError> {
    tokio::time::timeout(timeout, read_line_unbounded(reader))
        .await
        .map_err(|_| DialogError::Timeout(timeout))?
}

async fn read_line_unbounded<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<String, DialogError> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(DialogError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(DialogError::MailProtocol(
            if u64::try_from(n).unwrap_or(u64::MAX) >= MAX_LINE {
                format!("a line longer than {MAX_LINE} bytes")
            } else {
                "the server closed the connection in the middle of a line".to_owned()
            },
        ));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// A server's line, shortened for a report.
pub fn truncate(line: &str) -> String {
    const MAX: usize = 120;
    if line.chars().count() <= MAX {
        line.to_owned()
    } else {
        format!("{}...", line.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scripted(server: &'static [u8]) -> Dialog<tokio::io::DuplexStream> {
        let (client, mut server_end) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            server_end.write_all(server).await.unwrap();
            // Keep the server end open for the test's duration.
            let mut sink = Vec::new();
            let _ = server_end.read_to_end(&mut sink).await;
        });
        Dialog::greet(client, Duration::from_secs(2))
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn imap_capabilities_are_read_up_to_the_tagged_answer() {
        let mut dialog = scripted(
            b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n* CAPABILITY IMAP4rev1 IDLE STARTTLS LOGINDISABLED\r\na1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
        )
        .await;
        assert_eq!(dialog.protocol, MailProtocol::Imap);
        assert_eq!(
            dialog.capabilities("x").await.unwrap(),
            ["IMAP4REV1", "IDLE", "STARTTLS", "LOGINDISABLED"]
        );
    }

    #[tokio::test]
    async fn smtp_ehlo_keywords_keep_their_parameters() {
        let mut dialog = scripted(
            b"220-mail.example.net ESMTP\r\n220 more greeting\r\n250-mail.example.net\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n",
        )
        .await;
        assert_eq!(dialog.protocol, MailProtocol::Smtp);
        assert_eq!(
            dialog.capabilities("[127.0.0.1]").await.unwrap(),
            ["PIPELINING", "AUTH PLAIN LOGIN", "STARTTLS"]
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_garbage_is_refused() {
        let mut dialog = scripted(b"* OK ready\r\n").await;
        dialog.timeout = Duration::from_millis(100);
        assert!(matches!(dialog.noop().await, Err(DialogError::Timeout(_))));
        let (client, mut server) = tokio::io::duplex(64);
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\n")
            .await
            .unwrap();
        assert!(matches!(
            Dialog::greet(client, Duration::from_secs(1)).await,
            Err(DialogError::MailProtocol(_))
        ));
    }
}
