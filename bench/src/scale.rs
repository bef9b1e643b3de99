//! Scale (measurement 4): tens of thousands of idle IMAP connections open at once on a namespace's
//! loopback, both ends on this host (so each connection is two tracked connections: the server's
//! and the client's), the clients spread over one /24 per path so that the agent has 500 paths.
//! Measured: the agent's kernel map memory and resident memory per tracked connection, the time to
//! serve /metrics (against /healthz on the same server), and the time a freshly started agent takes
//! to finish its start-up scan (against an agent that watches a port nobody uses, so that it scans
//! the same socket tables but finds nothing to follow).

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use idlecut_integration_tests::http_get;
use serde::Serialize;

use crate::{
    agent::{Agent, MapUsage, SCAN_DONE},
    holder::{self, Holder},
    net,
    stats::{Spread, ratio},
};

pub struct Settings {
    /// Tracked connections to reach (half as many TCP connections).
    pub tracked: usize,
    /// Client prefixes (server-role paths); the client role adds one more path.
    pub prefixes: u32,
    pub http_requests: usize,
    pub startup_rounds: usize,
}

#[derive(Debug, Serialize)]
pub struct StartupRound {
    pub watching_imap: bool,
    /// From spawning the agent to its log line saying the start-up scan was taken in.
    pub seconds_to_first_scan: f64,
    pub connections_found: u64,
    pub rss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Scale {
    pub tcp_connections: usize,
    pub max_connections_flag: u32,
    pub seconds_to_open: f64,
    pub tracked_connections: f64,
    pub paths: f64,
    /// Ring buffer overflows and kernel state insert failures while opening.
    pub events_lost_or_insert_failures: f64,
    pub rss_before_bytes: u64,
    pub rss_tracking_bytes: u64,
    pub user_bytes_per_connection: f64,
    pub maps: Vec<MapUsage>,
    pub kernel_map_bytes_total: u64,
    /// The two per-connection maps (CONNECTIONS and SEEDS), per slot of --max-connections.
    pub kernel_bytes_per_slot: f64,
    /// All of the agent's map memory over the connections tracked.
    pub kernel_bytes_per_tracked_connection: f64,
    pub metrics_bytes: usize,
    pub metrics_series: usize,
    pub metrics_ms: Spread,
    pub healthz_ms: Spread,
    pub metrics_ratio: Spread,
    pub startup: Vec<StartupRound>,
    pub scan_seconds_imap: Spread,
    pub scan_seconds_nothing: Spread,
    pub scan_ratio: Spread,
    pub scan_connections_found: Spread,
    /// (RSS after the start-up scan watching IMAP - RSS watching nothing) / connections found.
    pub user_bytes_per_discovered_connection: Spread,
}

/// Connections per holder process: two descriptors each, under the usual 20000-descriptor limit.
const PER_HOLDER: u32 = 9000;

pub fn run(settings: &Settings) -> anyhow::Result<Scale> {
    let tcp_connections = settings.tracked / 2;
    let total = tcp_connections + settings.prefixes as usize;
    // Room for every tracked connection (the LRU map evicts past it), a power of two.
    let max_connections = u32::try_from(settings.tracked.next_power_of_two().max(4096))?;
    let max_flag = max_connections.to_string();
    let agent_args = ["--max-connections", max_flag.as_str()];

    let ns = net::netns("scale");
    let agent = Agent::start(&agent_args)?;
    agent.settle(Duration::from_secs(5));
    let rss_before = agent.rss_bytes()?;
    let lost_before = lost(&agent)?;

    // One connection per client prefix ends with FINs: every path gets closes and durations.
    let opening = Instant::now();
    let plans = holder::plan(
        u32::try_from(total)?,
        PER_HOLDER,
        settings.prefixes,
        settings.prefixes,
        &ns.name,
    );
    let mut holders = Vec::new();
    let mut held = 0u64;
    // Two at a time: one per CPU.
    for wave in plans.chunks(2) {
        let mut spawned = Vec::new();
        for plan in wave {
            spawned.push(Holder::spawn(plan)?);
        }
        for holder in &mut spawned {
            held += u64::from(holder.ready()?);
        }
        holders.extend(spawned);
    }
    let seconds_to_open = opening.elapsed().as_secs_f64();
    if held != tcp_connections as u64 {
        bail!("the holders hold {held} connections, not {tcp_connections}");
    }
    let expected = 2 * tcp_connections;
    let tracked = wait_for_tracked(&agent, expected as f64)?;
    thread::sleep(Duration::from_secs(1));
    let rss_tracking = agent.rss_bytes()?;
    let maps = agent.maps()?;
    let scrape = agent.scrape()?;
    let paths = scrape.value("idlecut_paths", &[]);
    let events_lost = lost(&agent)? - lost_before;

    let kernel_total: u64 = maps.iter().map(|m| m.memlock_bytes).sum();
    let per_connection_maps: Vec<&MapUsage> = maps
        .iter()
        .filter(|m| m.name == "CONNECTIONS" || m.name == "SEEDS")
        .collect();
    let per_slot: f64 = per_connection_maps
        .iter()
        .map(|m| ratio(m.memlock_bytes as f64, f64::from(m.max_entries)))
        .sum();

    let (metrics_ms, healthz_ms, metrics_ratio, metrics_bytes, metrics_series) =
        time_http(&agent, settings.http_requests)?;
    drop(agent);

    let mut startup = Vec::new();
    for round in 0..settings.startup_rounds {
        let imap_first = round % 2 == 0;
        for watching_imap in [imap_first, !imap_first] {
            startup.push(start_up(&agent_args, watching_imap)?);
        }
    }
    let of = |imap: bool, f: fn(&StartupRound) -> f64| -> Vec<f64> {
        startup
            .iter()
            .filter(|r| r.watching_imap == imap)
            .map(f)
            .collect()
    };
    let scan_imap = of(true, |r| r.seconds_to_first_scan);
    let scan_nothing = of(false, |r| r.seconds_to_first_scan);
    let found = of(true, |r| r.connections_found as f64);
    let rss_imap = of(true, |r| r.rss_bytes as f64);
    let rss_nothing = of(false, |r| r.rss_bytes as f64);
    let pairwise = |a: &[f64], b: &[f64], f: &dyn Fn(f64, f64, usize) -> f64| -> Vec<f64> {
        a.iter()
            .zip(b)
            .enumerate()
            .map(|(i, (x, y))| f(*x, *y, i))
            .collect()
    };

    // The connections close after the agents are gone: nothing to count.
    drop(holders);
    Ok(Scale {
        tcp_connections,
        max_connections_flag: max_connections,
        seconds_to_open,
        tracked_connections: tracked,
        paths,
        events_lost_or_insert_failures: events_lost,
        rss_before_bytes: rss_before,
        rss_tracking_bytes: rss_tracking,
        user_bytes_per_connection: ratio(rss_tracking as f64 - rss_before as f64, tracked),
        kernel_map_bytes_total: kernel_total,
        kernel_bytes_per_slot: per_slot,
        kernel_bytes_per_tracked_connection: ratio(kernel_total as f64, tracked),
        maps,
        metrics_bytes,
        metrics_series,
        metrics_ms,
        healthz_ms,
        metrics_ratio,
        scan_seconds_imap: Spread::of(&scan_imap),
        scan_seconds_nothing: Spread::of(&scan_nothing),
        scan_ratio: Spread::of(&pairwise(&scan_imap, &scan_nothing, &|a, b, _| ratio(a, b))),
        scan_connections_found: Spread::of(&found),
        user_bytes_per_discovered_connection: Spread::of(&pairwise(
            &rss_imap,
            &rss_nothing,
            &|a, b, i| ratio(a - b, found[i]),
        )),
        startup,
    })
}

fn lost(agent: &Agent) -> anyhow::Result<f64> {
    let scrape = agent.scrape()?;
    Ok(scrape.value("idlecut_events_lost_total", &[])
        + scrape.value("idlecut_kernel_state_insert_failures_total", &[]))
}

/// Waits until the agent tracks `expected` connections (or stops making progress); returns
/// how many it tracks.
fn wait_for_tracked(agent: &Agent, expected: f64) -> anyhow::Result<f64> {
    let mut last = (f64::NAN, Instant::now());
    loop {
        let tracked = agent.scrape()?.value("idlecut_tracked_connections", &[]);
        if tracked == expected {
            return Ok(tracked);
        }
        if tracked != last.0 {
            last = (tracked, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return Ok(tracked);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Times /metrics and /healthz alternately; returns their times (ms), the ratio per pair,
/// and the size and sample count of /metrics.
fn time_http(
    agent: &Agent,
    requests: usize,
) -> anyhow::Result<(Spread, Spread, Spread, usize, usize)> {
    let (mut metrics, mut healthz, mut ratios) = (vec![], vec![], vec![]);
    let mut size = (0, 0);
    for _ in 0..requests {
        let started = Instant::now();
        let (status, body) = http_get(agent.addr, "/metrics").context("GET /metrics")?;
        let m = started.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        size = (
            body.len(),
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .count(),
        );
        let started = Instant::now();
        let (status, _) = http_get(agent.addr, "/healthz").context("GET /healthz")?;
        let h = started.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            bail!("/healthz answered {status}");
        }
        metrics.push(m);
        healthz.push(h);
        ratios.push(ratio(m, h));
    }
    Ok((
        Spread::of(&metrics),
        Spread::of(&healthz),
        Spread::of(&ratios),
        size.0,
        size.1,
    ))
}

/// Starts an agent over the open connections and times its start-up scan.
fn start_up(agent_args: &[&str], watching_imap: bool) -> anyhow::Result<StartupRound> {
    let mut args = agent_args.to_vec();
    if !watching_imap {
        // A port nothing listens on: the same socket tables to read, nothing to follow.
        args.extend(["--ports", "9=discard"]);
    }
    let agent = Agent::start(&args)?;
    let (line, elapsed) = agent.wait_for_log(SCAN_DONE, Duration::from_secs(120))?;
    let found = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("connections="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no connections=N in `{line}`"))?;
    // Let the seeds and the model settle before reading memory.
    thread::sleep(Duration::from_millis(500));
    Ok(StartupRound {
        watching_imap,
        seconds_to_first_scan: elapsed.as_secs_f64(),
        connections_found: found,
        rss_bytes: agent.rss_bytes()?,
    })
}
