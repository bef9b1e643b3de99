//! `idlecut connections`: asks a running agent for its per-connection view over HTTP and prints
//! it as a table. A plain HTTP/1.0 request over a socket: the agent is on this host or one
//! hop away, and this keeps the binary free of an HTTP client stack.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context as _, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::{
    ConnectionsArgs,
    view::{self, ConnectionsResponse},
};

pub fn connections(args: &ConnectionsArgs) -> anyhow::Result<()> {
    let mut query = vec![format!("limit={}", args.limit)];
    for (key, value) in [
        ("service", args.service.as_deref()),
        ("role", args.role.as_deref()),
        ("path", args.path.as_deref()),
    ] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    if let Some(min_idle) = args.min_idle {
        query.push(format!("min_idle={}ms", min_idle.as_millis()));
    }
    let target = format!("/api/v1/connections?{}", query.join("&"));
    let body = get(args.agent, &target)?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let response: ConnectionsResponse = serde_json::from_str(&body).with_context(|| {
        format!(
            "the agent at {} answered something else than a connection view",
            args.agent
        )
    })?;
    print!("{}", view::render_table(&response));
    Ok(())
}

fn get(agent: std::net::SocketAddr, target: &str) -> anyhow::Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&agent, Duration::from_secs(3)).with_context(|| {
            format!(
                "cannot reach the agent at {agent} (is it running? set its address with --agent)"
            )
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {agent}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the answer of {agent}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{agent} did not answer HTTP"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        bail!("the agent answered {status}: {}", body.trim());
    }
    Ok(body.to_owned())
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
    fn query_values_are_percent_encoded() {
        assert_eq!(super::encode("10.0.2.0/24"), "10.0.2.0%2F24");
        assert_eq!(super::encode("fd00:1::/48"), "fd00%3A1%3A%3A%2F48");
    }
}
