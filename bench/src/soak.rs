//! Soak (measurement 6): the agent left running under a steady, mixed load, as on a mail host
//! for hours, scaled down: short connections opened and closed at a fixed rate (every tenth
//! aborted with a RST), a population of idle IMAP connections that is renewed all the time
//! (each speaks once after its silence, then closes), periodic scans, and a reader of
//! `/metrics` and `/api/v1/connections` every sample. Measured: the agent's resident memory
//! after a warm-up and at the end (it must not grow with time, only with what is open), its
//! CPU, and whether every connection was counted, opened and closed, with nothing lost.

use std::{
    collections::VecDeque,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use idlecut_integration_tests::http_get;
use serde::Serialize;

use crate::{
    agent::Agent,
    net::{self, connect_from, drain_to_eof, join, spawn_in},
    workload::{self, accept_patiently},
};

pub struct Settings {
    pub duration: Duration,
    /// Short connections opened and closed per second.
    pub churn_rate: u32,
    /// Idle connections open at any time.
    pub idle_population: usize,
    /// Idle connections renewed per second (so each lives about population / renewed s).
    pub idle_renewed_per_second: usize,
    pub sample_every: Duration,
}

#[derive(Debug, Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub open_connections: f64,
}

#[derive(Debug, Serialize)]
pub struct Soak {
    pub seconds: f64,
    pub churn_rate: u32,
    pub idle_population: usize,
    /// TCP connections the workload made (each is two tracked connections: both ends are on
    /// this host).
    pub connections_made: u64,
    pub tracked_opened: f64,
    pub tracked_closed: f64,
    /// Not seen opening (every connection is younger than the agent): found by a scan, or met
    /// only at its close, when the kernel skipped the run on its open. Counted with the opened.
    pub tracked_discovered: f64,
    pub events_lost: f64,
    pub kernel_state_insert_failures: f64,
    pub samples: Vec<Sample>,
    /// Resident memory at the end of the warm-up (the first quarter of the run).
    pub rss_after_warmup_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_max_bytes: u64,
    /// Agent CPU over the run, in percent of one CPU.
    pub cpu_percent: f64,
}

impl Soak {
    /// What the memory target allows at the end: 5 % (and 1 MiB of allocator slack) over the
    /// warm-up's.
    pub fn rss_allowed_bytes(&self) -> u64 {
        self.rss_after_warmup_bytes + self.rss_after_warmup_bytes / 20 + (1 << 20)
    }
}

/// Submission for the short connections, IMAP for the idle ones.
const CHURN_PORT: u16 = 587;
const IDLE_PORT: u16 = 143;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(settings: &Settings) -> anyhow::Result<Soak> {
    let ns = net::netns("soak");
    // As in churn: no TIME_WAIT holding ports, and sources above every watched port.
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
    ns.sysctl("net.ipv4.ip_local_port_range", "10000 65535");
    // One listener each, so that neither workload accepts the other's connections.
    let listen = |port| {
        join(spawn_in(&ns.name, move || {
            net::listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 4096)
        }))
    };
    let (churn_listener, idle_listener) = (listen(CHURN_PORT)?, listen(IDLE_PORT)?);
    let agent = Agent::start(&["--min-idle-gap", "1s", "--scan-interval", "10s"])?;
    agent.settle(Duration::from_secs(30));

    let started = Instant::now();
    let deadline = started + settings.duration;
    let churn = {
        let rate = settings.churn_rate;
        spawn_in(&ns.name, move || {
            workload::churn(&churn_listener, 10, Some(rate), deadline)
        })
    };
    let idle = {
        let (population, renewed) = (settings.idle_population, settings.idle_renewed_per_second);
        spawn_in(&ns.name, move || {
            idle_population(&idle_listener, population, renewed, deadline)
        })
    };

    let cpu_at_start = agent.cpu_seconds()?;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        thread::sleep(settings.sample_every);
        if churn.is_finished() || idle.is_finished() {
            break;
        }
        let scrape = agent.scrape()?;
        let (status, body) = http_get(agent.addr, "/api/v1/connections?limit=100")
            .context("reading /api/v1/connections")?;
        if status != 200 {
            bail!("/api/v1/connections answered {status}: {body}");
        }
        samples.push(Sample {
            seconds: started.elapsed().as_secs_f64(),
            rss_bytes: agent.rss_bytes()?,
            cpu_seconds: agent.cpu_seconds()? - cpu_at_start,
            open_connections: scrape.sum("idlecut_connections_open", &[]),
        });
    }
    let made = join(churn).context("churn")? + join(idle).context("idle population")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = agent.cpu_seconds()? - cpu_at_start;

    // Everything closed: wait until the agent has counted every end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let scrape = agent.scrape()?;
        let closed = scrape.sum("idlecut_connections_closed_total", &[]);
        if closed >= 2.0 * made as f64 || Instant::now() > deadline {
            break scrape;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let Some(last) = samples.last() else {
        bail!(
            "no sample: the workload stopped at once\n{}",
            agent.log_text()
        );
    };
    let warmup = samples
        .iter()
        .find(|s| s.seconds >= seconds / 4.0)
        .unwrap_or(last);
    Ok(Soak {
        seconds,
        churn_rate: settings.churn_rate,
        idle_population: settings.idle_population,
        connections_made: made,
        tracked_opened: scrape.sum("idlecut_connections_opened_total", &[]),
        tracked_closed: scrape.sum("idlecut_connections_closed_total", &[]),
        tracked_discovered: scrape.sum("idlecut_connections_discovered_total", &[]),
        events_lost: scrape.value("idlecut_events_lost_total", &[]),
        kernel_state_insert_failures: scrape
            .value("idlecut_kernel_state_insert_failures_total", &[]),
        rss_after_warmup_bytes: warmup.rss_bytes,
        rss_end_bytes: last.rss_bytes,
        rss_max_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        cpu_percent: 100.0 * cpu_seconds / seconds,
        samples,
    })
}

/// Keeps `population` idle connections open until the deadline, renewing `renewed` of them a
/// second: the oldest speaks after its silence (an idle gap the path lets through), then
/// closes. Returns the number of connections.
fn idle_population(
    listener: &TcpListener,
    population: usize,
    renewed: usize,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, IDLE_PORT);
    let open_one = || -> anyhow::Result<_> {
        let client = connect_from(Ipv4Addr::LOCALHOST, to).context("connecting")?;
        let (server, _) = accept_patiently(listener, IO_TIMEOUT)?;
        server.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok((client, server))
    };
    let mut open = VecDeque::with_capacity(population);
    for _ in 0..population {
        open.push_back(open_one()?);
    }
    let mut made = population as u64;
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    while Instant::now() < deadline {
        next += Duration::from_secs(1);
        if let Some(ahead) = next.checked_duration_since(Instant::now()) {
            thread::sleep(ahead);
        }
        for _ in 0..renewed {
            if let Some((mut client, mut server)) = open.pop_front() {
                client.write_all(b"a2 NOOP\r\n")?;
                server
                    .read_exact(&mut buf[..9])
                    .context("the server reading the idle client's line")?;
                drop(client);
                drain_to_eof(server, IO_TIMEOUT);
            }
            open.push_back(open_one()?);
            made += 1;
        }
    }
    Ok(made)
}
