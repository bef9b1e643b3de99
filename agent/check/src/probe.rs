//! One idle connection: greeted by the server, left silent, then asked NOOP; and how it ended,
//! from the answer or the error its socket returned.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::{
    dialog::{Dialog, DialogError},
    login::{self, Credentials},
    reach::{self, ConnectFailure},
};
use idlecut_api::vocabulary::{MailProtocol, Signature};
use std::sync::Arc;

use crate::registrar::Registrar;

/// How a check's connections are made and how long they may stay silent: every connection of
/// a check connects through `connect`.
#[derive(Clone, Debug)]
pub struct IdleSettings {
    pub max_idle: Duration,
    pub precision: Duration,
    /// Connections idle at once in one round.
    pub parallel: usize,
    /// Connections the whole search may use.
    pub budget: usize,
    pub connect_timeout: Duration,
    /// How long an answer (or the acknowledgement of sent data) may take.
    pub answer_timeout: Duration,
    pub req5_threshold: Duration,
    /// IMAP sessions log in with these, to be allowed longer silences.
    pub credentials: Option<Arc<Credentials>>,
    /// The name the TLS handshake asks for (the target).
    pub server_name: String,
    /// Where the agent's scheduled checks register their connections (none for
    /// `idlecut check`).
    pub own: Option<Registrar>,
}

impl IdleSettings {
    /// Connects to `addr` as every connection of a check does: within the connect timeout,
    /// sent data acknowledged within the answer timeout, and registered as the agent's own
    /// when the agent's schedule runs the check.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ConnectFailure> {
        reach::connect(
            addr,
            self.connect_timeout,
            self.answer_timeout,
            self.own.as_ref(),
        )
        .await
    }
}

/// How one idle connection ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// It answered NOOP after the silence.
    Survived,
    /// The path cut it: the silence, or the NOOP after it, met a RST, nothing, or an ICMP error.
    Cut { signature: Signature },
    /// The server broke the silence itself (a BYE or a close on its own idle timeout): the path
    /// carried that, so it survived this long, and longer silences cannot be tried this way.
    ServerSpoke { line: String },
    /// Nothing can be concluded (the connect or the greeting failed, the server did not answer
    /// though the path acknowledged the NOOP...).
    Inconclusive { reason: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// How long the connection stayed silent (until the cut, when the cut came first).
    pub idle_seconds: f64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Opens a connection, reads the greeting (and logs in, for IMAP with credentials), stays
/// silent for `idle` (with TCP keepalive every `keepalive` if given), then sends NOOP.
pub async fn probe(
    addr: SocketAddr,
    settings: &IdleSettings,
    idle: Duration,
    keepalive: Option<Duration>,
) -> Probe {
    let inconclusive = |reason: String| Probe {
        idle_seconds: 0.0,
        outcome: Outcome::Inconclusive { reason },
    };
    let stream = match settings.connect(addr).await {
        Ok(stream) => stream,
        Err(failure) => return inconclusive(failure.describe(settings.connect_timeout)),
    };
    if let Some(interval) = keepalive
        && let Err(err) = reach::set_keepalive(&stream, interval)
    {
        return inconclusive(format!("cannot turn TCP keepalive on: {err}"));
    }
    let dialog = match Dialog::greet(stream, settings.answer_timeout).await {
        Ok((dialog, _)) => dialog,
        Err(err) => return inconclusive(format!("no greeting: {err}")),
    };
    match &settings.credentials {
        Some(credentials) if dialog.protocol == MailProtocol::Imap => {
            match login::log_in(dialog, credentials, &settings.server_name).await {
                Ok(dialog) => silence_then_noop(dialog, settings, idle).await,
                Err(reason) => inconclusive(reason),
            }
        }
        _ => silence_then_noop(dialog, settings, idle).await,
    }
}

/// The socket under a session, plain or TLS: its kernel state tells a black hole.
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Stays silent for `idle`, unless the server or the path ends the silence first, then sends
/// NOOP.
async fn silence_then_noop<S: Socket>(
    mut dialog: Dialog<S>,
    settings: &IdleSettings,
    idle: Duration,
) -> Probe {
    let silent_since = Instant::now();
    let since = || silent_since.elapsed().as_secs_f64();
    if let Some(ended) = dialog.wait_silent(idle).await {
        let idle_seconds = since();
        let outcome = match ended {
            Ok(line) => Outcome::ServerSpoke { line },
            Err(DialogError::Closed) => Outcome::ServerSpoke {
                line: "(closed the connection)".to_owned(),
            },
            Err(err) => classify(&err, dialog.get_ref().tcp()),
        };
        return Probe {
            idle_seconds,
            outcome,
        };
    }
    let idle_seconds = since();
    // Leave the kernel's TCP_USER_TIMEOUT (set to the answer timeout) the first word on a
    // black hole: its ETIMEDOUT, or the soft ICMP error it saw, tells more than a read timeout.
    dialog.timeout = settings.answer_timeout + Duration::from_secs(2);
    let outcome = match dialog.noop().await {
        Ok(_) => Outcome::Survived,
        Err(DialogError::MailProtocol(line)) => Outcome::ServerSpoke { line },
        Err(err) => classify(&err, dialog.get_ref().tcp()),
    };
    Probe {
        idle_seconds,
        outcome,
    }
}

fn classify(err: &DialogError, stream: &TcpStream) -> Outcome {
    match err {
        DialogError::Io(io) => match reach::cut_signature(io) {
            Some(signature) => Outcome::Cut { signature },
            None => Outcome::Inconclusive {
                reason: io.to_string(),
            },
        },
        DialogError::Timeout(_) if reach::unacknowledged_segments(stream).is_ok_and(|n| n > 0) => {
            Outcome::Cut {
                signature: Signature::Blackhole,
            }
        }
        DialogError::Timeout(_) => Outcome::Inconclusive {
            reason: "the server did not answer NOOP, though the path delivered it".to_owned(),
        },
        DialogError::Closed => Outcome::Inconclusive {
            reason: "the connection was closed without an answer to NOOP".to_owned(),
        },
        DialogError::MailProtocol(what) => Outcome::Inconclusive {
            reason: what.clone(),
        },
    }
}

pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Survived => "answered NOOP".to_owned(),
        Outcome::Cut { signature } => format!("cut ({})", signature.as_str()),
        Outcome::ServerSpoke { line } => format!("the server ended the silence: {line}"),
        Outcome::Inconclusive { reason } => format!("inconclusive: {reason}"),
    }
}
