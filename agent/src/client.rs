//! `idlecut connections`: asks a running agent for its per-connection view over HTTP and prints
//! it as a table. A plain HTTP/1.0 request over a socket (or TLS, with rustls): the agent is on
//! this host or one hop away, and this keeps the binary free of an HTTP client stack.
//!
//! Credentials come from files or the environment, never from a flag's value (which `ps` and
//! shell histories show): see `AgentArgs`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::pki_types::ServerName;

use crate::{
    ConnectionsArgs, CutsArgs, config,
    cuts::{self, CutsResponse},
    http::tls::{read_certificates, read_private_key},
    view::{self, ConnectionsResponse},
    vocabulary,
};

/// How to reach a running agent: its address, TLS, credentials. Secrets are read from files or
/// the environment: IDLECUT_BEARER_TOKEN or IDLECUT_BEARER_TOKEN_FILE (a token), or
/// IDLECUT_BASIC_AUTH_USER with IDLECUT_BASIC_AUTH_PASSWORD or IDLECUT_BASIC_AUTH_PASSWORD_FILE.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The running agent's HTTP address (its --listen); https://ADDR:PORT for TLS
    #[arg(long = "agent", value_name = "[https://]ADDR:PORT", default_value = config::DEFAULT_LISTEN, value_parser = parse_agent)]
    pub agent: AgentAddress,
    /// CA certificate(s) that signed the agent's TLS certificate (PEM)
    #[arg(long, value_name = "FILE", env = "IDLECUT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name the agent's certificate is checked against [default: the address's IP]
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Client certificate (PEM) for an agent that asks for one (mutual TLS)
    #[arg(
        long,
        value_name = "FILE",
        env = "IDLECUT_CERT_FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(
        long,
        value_name = "FILE",
        env = "IDLECUT_KEY_FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// File holding the bearer token the agent's web config expects (or the token itself in
    /// IDLECUT_BEARER_TOKEN; never as a flag's value)
    #[arg(long, value_name = "FILE", env = "IDLECUT_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// User for basic authentication (the password from IDLECUT_BASIC_AUTH_PASSWORD or
    /// --basic-auth-password-file)
    #[arg(long, value_name = "USER", env = "IDLECUT_BASIC_AUTH_USER")]
    pub basic_auth_user: Option<String>,
    /// File holding the basic-authentication password (or the password itself in
    /// IDLECUT_BASIC_AUTH_PASSWORD; never as a flag's value)
    #[arg(long, value_name = "FILE", env = "IDLECUT_BASIC_AUTH_PASSWORD_FILE")]
    pub basic_auth_password_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
pub struct AgentAddress {
    pub tls: bool,
    pub addr: SocketAddr,
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

fn parse_agent(value: &str) -> Result<AgentAddress, String> {
    let (tls, rest) = match value.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => return Err(format!("`{scheme}` is not http or https")),
        None => (false, value),
    };
    let addr = config::parse_listen(rest.trim_end_matches('/'))?;
    Ok(AgentAddress { tls, addr })
}

/// A client for one agent, built from `AgentArgs`.
pub struct AgentClient {
    address: AgentAddress,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    authorization: Option<String>,
}

impl AgentClient {
    pub fn new(args: &AgentArgs) -> anyhow::Result<Self> {
        let address = args.agent;
        let tls = if address.tls {
            Some(tls_config(args)?)
        } else {
            if args.ca_file.is_some() || args.cert_file.is_some() {
                bail!("--ca-file and --cert-file need an https:// agent address");
            }
            None
        };
        Ok(Self {
            address,
            tls,
            authorization: authorization(args)?,
        })
    }

    /// GETs `target` and returns the body of a 200 answer.
    pub fn get(&self, target: &str) -> anyhow::Result<String> {
        let agent = self.address;
        let addr = agent.addr;
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
                format!(
                    "cannot reach the agent at {agent} (is it running? set its address with --agent)"
                )
            })?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        let authorization = self
            .authorization
            .as_ref()
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{authorization}\r\n");
        let mut response = Vec::new();
        match &self.tls {
            None => {
                let mut stream = stream;
                stream.write_all(request.as_bytes())?;
                stream
                    .read_to_end(&mut response)
                    .with_context(|| format!("reading the answer of {agent}"))?;
            }
            Some((config, name)) => {
                let connection = rustls::ClientConnection::new(config.clone(), name.clone())
                    .context("starting TLS")?;
                let mut stream = rustls::StreamOwned::new(connection, stream);
                stream
                    .write_all(request.as_bytes())
                    .with_context(|| format!("TLS with {agent}"))?;
                match stream.read_to_end(&mut response) {
                    Ok(_) => {}
                    // A server that closes without close_notify has still answered.
                    Err(err)
                        if err.kind() == std::io::ErrorKind::UnexpectedEof
                            && !response.is_empty() => {}
                    Err(err) => {
                        return Err(err).with_context(|| format!("TLS with {agent}"));
                    }
                }
            }
        }
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("{agent} did not answer HTTP"))?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            bail!("the agent answered {status}: {}", body.trim());
        }
        Ok(body.to_owned())
    }
}

fn tls_config(
    args: &AgentArgs,
) -> anyhow::Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    let ca_file = args
        .ca_file
        .as_deref()
        .context("an https:// agent needs --ca-file (or IDLECUT_CA_FILE): the CA that signed its certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots
            .add(cert)
            .with_context(|| format!("a certificate in {} is not valid", ca_file.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots);
    let config = match (&args.cert_file, &args.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let key = read_private_key(key_file)?;
            builder
                .with_client_auth_cert(read_certificates(cert_file)?, key)
                .with_context(|| {
                    format!(
                        "the key in {} does not fit the certificate in {}",
                        key_file.display(),
                        cert_file.display()
                    )
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = match &args.tls_server_name {
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|_| anyhow::anyhow!("`{name}` is not a DNS name or IP address"))?,
        None => ServerName::IpAddress(args.agent.addr.ip().into()),
    };
    Ok((Arc::new(config), name))
}

/// The Authorization header's value, from the files or environment variables given.
fn authorization(args: &AgentArgs) -> anyhow::Result<Option<String>> {
    let secret = |value_var: &str, file: Option<&Path>| -> anyhow::Result<Option<String>> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            return Ok(Some(text.trim().to_owned()));
        }
        Ok(std::env::var(value_var)
            .ok()
            .map(|value| value.trim().to_owned()))
    };
    if let Some(token) = secret("IDLECUT_BEARER_TOKEN", args.bearer_token_file.as_deref())? {
        return Ok(Some(format!("Bearer {token}")));
    }
    let Some(user) = &args.basic_auth_user else {
        return Ok(None);
    };
    let password = secret(
        "IDLECUT_BASIC_AUTH_PASSWORD",
        args.basic_auth_password_file.as_deref(),
    )?
    .context("IDLECUT_BASIC_AUTH_USER needs IDLECUT_BASIC_AUTH_PASSWORD or IDLECUT_BASIC_AUTH_PASSWORD_FILE")?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Ok(Some(format!("Basic {encoded}")))
}

/// The filters both listings take (`idlecut connections`, `idlecut cuts`).
#[derive(Debug, clap::Args)]
pub struct ListingFilter {
    /// Only this service (a name from --ports, such as imap)
    #[arg(long)]
    service: Option<String>,
    /// Only this role: server or client
    #[arg(long, value_parser = vocabulary::Role::ALL.map(vocabulary::Role::as_str))]
    role: Option<String>,
    /// Only this path (a prefix such as 192.0.2.0/24, or other)
    #[arg(long)]
    path: Option<String>,
}

pub fn connections(args: &ConnectionsArgs) -> anyhow::Result<()> {
    let mut query = args.filter.query(args.limit, &[]);
    if let Some(min_idle) = args.min_idle {
        query.push(format!("min_idle={}ms", min_idle.as_millis()));
    }
    let response: Option<ConnectionsResponse> = list(
        &args.agent,
        "/api/v1/connections",
        &query,
        args.json,
        "a connection view",
    )?;
    if let Some(response) = response {
        print!("{}", view::render_table(&response));
    }
    Ok(())
}

pub fn cuts(args: &CutsArgs) -> anyhow::Result<()> {
    let query = args.filter.query(
        args.limit,
        &[
            ("signature", args.signature.as_deref()),
            ("origin", args.origin.as_deref()),
        ],
    );
    let response: Option<CutsResponse> = list(
        &args.agent,
        "/api/v1/cuts",
        &query,
        args.json,
        "a log of cuts",
    )?;
    if let Some(response) = response {
        print!("{}", cuts::render_table(&response));
    }
    Ok(())
}

impl ListingFilter {
    /// The query string's pairs: the limit, these filters and `more`, values percent-encoded.
    fn query(&self, limit: usize, more: &[(&str, Option<&str>)]) -> Vec<String> {
        let mut query = vec![format!("limit={limit}")];
        let filters = [
            ("service", self.service.as_deref()),
            ("role", self.role.as_deref()),
            ("path", self.path.as_deref()),
        ];
        for &(key, value) in filters.iter().chain(more) {
            if let Some(value) = value {
                query.push(format!("{key}={}", encode(value)));
            }
        }
        query
    }
}

/// Asks the agent for a listing; with `json`, prints its answer as is and returns None,
/// otherwise returns it parsed for the caller to print as a table.
fn list<T: serde::de::DeserializeOwned>(
    agent: &AgentArgs,
    endpoint: &str,
    query: &[String],
    json: bool,
    what: &str,
) -> anyhow::Result<Option<T>> {
    let body = AgentClient::new(agent)?.get(&format!("{endpoint}?{}", query.join("&")))?;
    if json {
        println!("{body}");
        return Ok(None);
    }
    let response = serde_json::from_str(&body).with_context(|| {
        format!(
            "the agent at {} answered something else than {what}",
            agent.agent
        )
    })?;
    Ok(Some(response))
}

/// Percent-encodes a query value (service names and prefixes contain `/` and `:`): everything
/// but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(value, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_addresses_take_a_scheme() {
        let agent = super::parse_agent("https://127.0.0.1:9464/").unwrap();
        assert!(agent.tls);
        assert_eq!(agent.to_string(), "https://127.0.0.1:9464");
        assert!(!super::parse_agent("[::1]:9464").unwrap().tls);
        assert!(super::parse_agent("ftp://127.0.0.1:9464").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::encode("10.0.2.0/24"), "10.0.2.0%2F24");
        assert_eq!(super::encode("fd00:1::/48"), "fd00%3A1%3A%3A%2F48");
    }
}
