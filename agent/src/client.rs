//! `idlecut connections` and `idlecut cuts`: ask a running agent (through `idlecut_web::client`)
//! for its per-connection view or its log of recent cuts, and print it as a table.

use anyhow::Context as _;
use idlecut_api::vocabulary;
use idlecut_core::{
    cuts::{self, CutsResponse},
    view::{self, ConnectionsResponse},
};
use idlecut_web::client::{AgentArgs, AgentClient, encode};

/// `idlecut cuts`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CutsArgs {
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    filter: ListingFilter,
    /// Only cuts of this signature
    #[arg(long, value_parser = vocabulary::Signature::ALL.map(vocabulary::Signature::as_str))]
    signature: Option<String>,
    /// Only cuts by a RST from this origin: peer, path or unknown
    #[arg(long, value_parser = ["peer", "path", "unknown"])]
    origin: Option<String>,
    /// At most this many rows (the agent caps it at its --recent-cuts)
    #[arg(long, default_value_t = cuts::DEFAULT_LIMIT)]
    limit: usize,
    /// Print the JSON the agent returned instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    filter: ListingFilter,
    /// Only open connections idle for at least this long, e.g. 10m
    #[arg(long, value_name = "DURATION", value_parser = idlecut_core::settings::parse_duration)]
    min_idle: Option<std::time::Duration>,
    /// At most this many rows (the agent caps it at 10000)
    #[arg(long, default_value_t = view::DEFAULT_LIMIT)]
    limit: usize,
    /// Print the JSON the agent returned instead of a table
    #[arg(long)]
    json: bool,
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
    /// Only processes in pods of this Kubernetes namespace
    #[arg(long)]
    namespace: Option<String>,
    /// Only processes of this pod (its name, or its UID)
    #[arg(long)]
    pod: Option<String>,
    /// Only pods of this workload: kind/name (deployment/imap-proxy) or a name of any kind
    /// (known with --cri-socket only)
    #[arg(long)]
    workload: Option<String>,
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
            ("namespace", self.namespace.as_deref()),
            ("pod", self.pod.as_deref()),
            ("workload", self.workload.as_deref()),
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
