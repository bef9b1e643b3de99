//! The harness's HTTP: every request goes through the agent's own client
//! (`idlecut_web::client::AgentClient`, the one `idlecut connections` uses), over plain HTTP, or
//! TLS with credentials (`WebClient`) for an agent started with a web config. Only requests
//! that must be malformed on purpose are written by hand (`web::raw_exchange`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Mutex, PoisonError},
};

use idlecut_web::client::{AgentClient, Answer};

/// A GET: status and body, whatever the status. An agent started with `web::Launch::client`
/// (TLS, credentials) is asked through that client.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    client_for(addr)
        .unwrap_or_else(WebClient::plain)
        .get(addr, path)
}

/// The agent's client, set up once and used for any agent's address: plain, or TLS trusting
/// a CA, optionally with a client certificate, and credentials.
#[derive(Clone)]
pub struct WebClient(AgentClient);

impl WebClient {
    pub fn plain() -> Self {
        Self(AgentClient::plain(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            0,
        ))))
    }

    /// TLS to `server_name`, trusting the CA in `ca_file`, presenting `client` (certificate
    /// and key files) if given.
    pub fn tls(ca_file: &Path, server_name: &str, client: Option<(&Path, &Path)>) -> Self {
        Self(
            Self::plain()
                .0
                .over_tls(ca_file, server_name, client)
                .unwrap_or_else(|err| panic!("a TLS client: {err:#}")),
        )
    }

    pub fn bearer(self, token: &str) -> Self {
        Self(self.0.bearer(token))
    }

    pub fn basic(self, user: &str, password: &str) -> Self {
        Self(self.0.basic(user, password))
    }

    /// A GET of the agent at `addr`: status and body. A refused handshake is an error.
    pub fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let Answer { status, body, .. } = self.0.at(addr).request(path)?;
        Ok((status, body))
    }

    /// The certificate the server presented (DER), after a request to /healthz.
    pub fn server_certificate(&self, addr: SocketAddr) -> anyhow::Result<Vec<u8>> {
        let answer = self.0.at(addr).request("/healthz")?;
        answer
            .peer_certificate
            .ok_or_else(|| anyhow::anyhow!("no TLS, no certificate"))
    }
}

/// Clients of agents started with `Launch::client`, by address: the harness's `http_get` (and
/// so `Agent::scrape`, `paths`...) speaks TLS with credentials to them.
pub(crate) static CLIENTS: Mutex<BTreeMap<SocketAddr, WebClient>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The client of the agent this thread is starting, before its address is known: the
    /// harness's start-up check (`/healthz`) goes through it.
    pub(crate) static STARTING: std::cell::RefCell<Option<WebClient>> = const { std::cell::RefCell::new(None) };
}

/// The client to reach `addr` with, if it is an agent started with `Launch::client`.
pub fn client_for(addr: SocketAddr) -> Option<WebClient> {
    let registered = CLIENTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&addr)
        .cloned();
    registered.or_else(|| STARTING.with(|starting| starting.borrow().clone()))
}
