//! Detection latency (measurement 5): how long after a cut connection ends the cut shows in
//! /metrics. The integration tests' client / router / server namespaces, the router a NAT-like
//! middlebox that forgets idle flows after 1 s and answers what follows with a RST. Each sample: an
//! IMAP connection opens (the time until its open shows in /metrics is the baseline: no grace
//! period, the fastest the agent reports anything), exchanges a message, stays silent past the
//! router's timeout, then the client speaks, gets the RST, and its read fails: the end. Then
//! /metrics is polled back to back until `idlecut_cuts_total` counts it.

use std::{
    io::{Read as _, Write as _},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use idlecut_integration_tests::{Topology, abort, connect, exchange, listen};
use serde::Serialize;

use crate::{
    agent::Agent,
    stats::{Spread, ratio},
};

pub struct Settings {
    pub samples: usize,
}

#[derive(Debug, Serialize)]
pub struct Sample {
    pub open_visible_ms: f64,
    pub cut_visible_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: Vec<Sample>,
    pub cut_visible_ms: Spread,
    pub open_visible_ms: Spread,
    pub ratio: Spread,
    /// Time of one /metrics scrape while polling (the resolution of these measurements).
    pub scrape_ms: Spread,
}

const ROUTER_TIMEOUT_S: u32 = 1;
const SILENCE: Duration = Duration::from_millis(1600);

pub fn run(settings: &Settings) -> anyhow::Result<Latency> {
    let net = Topology::new();
    net.router_conntrack(ROUTER_TIMEOUT_S, false);
    net.router_rules("ct state invalid reject with tcp reset");
    let agent = Agent::start(&["--min-idle-gap", "1s"])?;
    let listener = listen(&net.server, "0.0.0.0:143");
    let target = format!("{}:143", net.server_v4());
    let path = net.server_path_v4();
    let opened = [
        ("service", "imap"),
        ("role", "client"),
        ("path", path.as_str()),
    ];
    let cut = [
        ("service", "imap"),
        ("role", "client"),
        ("path", path.as_str()),
        ("signature", "reset"),
    ];
    let mut samples = Vec::new();
    let mut scrape_ms = Vec::new();
    for i in 0..settings.samples {
        let n = (i + 1) as f64;
        let (mut client, mut server) = connect(&net.client, &listener, &target);
        let connected = Instant::now();
        let open_seen = poll(&agent, &mut scrape_ms, |s| {
            s.value("idlecut_connections_opened_total", &opened) >= n
        })?;
        exchange(&mut client, &mut server);
        thread::sleep(SILENCE);
        client
            .write_all(b"a2 NOOP\r\n")
            .context("the write itself is accepted locally")?;
        let mut buf = [0u8; 64];
        if let Ok(read) = client.read(&mut buf) {
            bail!("expected the router's RST, read {read} bytes");
        }
        let ended = Instant::now();
        let cut_seen = poll(&agent, &mut scrape_ms, |s| {
            s.value("idlecut_cuts_total", &cut) >= n
        })?;
        abort(client);
        abort(server);
        samples.push(Sample {
            open_visible_ms: (open_seen - connected).as_secs_f64() * 1e3,
            cut_visible_ms: (cut_seen - ended).as_secs_f64() * 1e3,
        });
    }
    let of = |f: fn(&Sample) -> f64| Spread::of(&samples.iter().map(f).collect::<Vec<_>>());
    Ok(Latency {
        cut_visible_ms: of(|s| s.cut_visible_ms),
        open_visible_ms: of(|s| s.open_visible_ms),
        ratio: of(|s| ratio(s.cut_visible_ms, s.open_visible_ms)),
        scrape_ms: Spread::of(&scrape_ms),
        samples,
    })
}

/// Scrapes back to back until `done`; returns when the first scrape that satisfied it was
/// answered.
fn poll(
    agent: &Agent,
    scrape_ms: &mut Vec<f64>,
    done: impl Fn(&idlecut_integration_tests::Scrape) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let scrape = agent.scrape()?;
        let answered = Instant::now();
        scrape_ms.push((answered - started).as_secs_f64() * 1e3);
        if done(&scrape) {
            return Ok(answered);
        }
        if answered > deadline {
            bail!(
                "not visible in /metrics within 10 s:\n{}\nagent log:\n{}",
                scrape.text,
                agent.log_text()
            );
        }
    }
}
