//! Overhead on unrelated traffic (measurement 2): loopback TCP bulk throughput and ping-pong rate
//! on ports idlecut does not watch, with the agent running and without, alternating (off/on, then
//! on/off) so that drift cancels; and with do-nothing programs on the same tracepoints, which
//! separates the cost of attaching anything there from the cost of idlecut's programs. The same
//! rounds run the added-latency measurements of `trigger`.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    agent::Agent,
    kernel::{Baselines, NOPS},
    net::{self, join, spawn_in},
    stats::{Spread, ratio},
    trigger, workload,
};

pub struct Settings {
    pub rounds: usize,
    /// Throughputs and rates are the best of this many blocks of `window`.
    pub blocks: usize,
    pub window: Duration,
    pub trigger_iterations: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct Round {
    pub round: usize,
    pub agent_first: bool,
    /// The best of a few blocks of `window_seconds`, agent not running / running.
    pub bulk_gbit_s_off: f64,
    pub bulk_gbit_s_on: f64,
    /// Do-nothing programs on idlecut's seven tracepoints, agent not running.
    pub bulk_gbit_s_nop: f64,
    pub ping_pong_per_s_off: f64,
    pub ping_pong_per_s_on: f64,
    pub ping_pong_per_s_nop: f64,
    /// ns per refused send() with nothing attached to sock:sock_send_length (`none`), with
    /// each experiment program, and with idlecut's (`idlecut`).
    pub trigger_ns: BTreeMap<&'static str, f64>,
}

#[derive(Debug, Serialize)]
pub struct Overhead {
    pub rounds: Vec<Round>,
    pub window_seconds: f64,
    pub trigger_iterations: u32,
    pub bulk_gbit_s_off: Spread,
    pub bulk_gbit_s_on: Spread,
    /// on / off, per round.
    pub bulk_ratio: Spread,
    pub bulk_gbit_s_nop: Spread,
    /// do-nothing programs / off, per round: what attaching anything to these tracepoints costs.
    pub bulk_nop_ratio: Spread,
    pub ping_pong_per_s_off: Spread,
    pub ping_pong_per_s_on: Spread,
    pub ping_pong_ratio: Spread,
    pub ping_pong_per_s_nop: Spread,
    pub ping_pong_nop_ratio: Spread,
    pub trigger_ns_none: Spread,
    /// Added ns per refused send() over no program, per round: idlecut's and each
    /// experiment's (see `trigger::CONDITIONS`).
    pub added_ns: BTreeMap<&'static str, Spread>,
    /// Experiment programs this kernel would not run, and why.
    pub unavailable: BTreeMap<String, String>,
}

const BULK_PORT: u16 = 5201;
const PING_PORT: u16 = 5202;

pub fn run(settings: &Settings) -> anyhow::Result<Overhead> {
    let ns = net::netns("ovh");
    let name = ns.name.clone();
    let (bulk, ping) = join(spawn_in(&ns.name, || {
        let listen = |port| net::listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 128);
        Ok((listen(BULK_PORT)?, listen(PING_PORT)?))
    }))?;
    let mut baselines = Baselines::load()?;
    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let agent_first = round % 2 == 1;
        let mut r = Round {
            round,
            agent_first,
            ..Round::default()
        };
        for agent_on in [agent_first, !agent_first] {
            if agent_on {
                let agent = Agent::start(&[])?;
                agent.settle(Duration::from_secs(5));
                (r.bulk_gbit_s_on, r.ping_pong_per_s_on) =
                    best_traffic(&name, &bulk, &ping, settings)?;
                r.trigger_ns
                    .insert("idlecut", trigger::with_agent(settings.trigger_iterations)?);
                drop(agent);
            } else {
                (r.bulk_gbit_s_off, r.ping_pong_per_s_off) =
                    best_traffic(&name, &bulk, &ping, settings)?;
                // Any program on idlecut's tracepoints, doing nothing: what attaching costs.
                for nop in NOPS {
                    baselines.attach(nop)?;
                }
                let nop_traffic = best_traffic(&name, &bulk, &ping, settings);
                for (nop, _) in NOPS {
                    baselines.detach(nop)?;
                }
                (r.bulk_gbit_s_nop, r.ping_pong_per_s_nop) = nop_traffic?;
                r.trigger_ns.extend(trigger::without_agent(
                    &mut baselines,
                    settings.trigger_iterations,
                )?);
            }
        }
        rounds.push(r);
    }
    let of = |f: fn(&Round) -> f64| Spread::of(&rounds.iter().map(f).collect::<Vec<_>>());
    Ok(Overhead {
        window_seconds: settings.window.as_secs_f64(),
        trigger_iterations: settings.trigger_iterations,
        bulk_gbit_s_off: of(|r| r.bulk_gbit_s_off),
        bulk_gbit_s_on: of(|r| r.bulk_gbit_s_on),
        bulk_ratio: of(|r| ratio(r.bulk_gbit_s_on, r.bulk_gbit_s_off)),
        bulk_gbit_s_nop: of(|r| r.bulk_gbit_s_nop),
        bulk_nop_ratio: of(|r| ratio(r.bulk_gbit_s_nop, r.bulk_gbit_s_off)),
        ping_pong_per_s_nop: of(|r| r.ping_pong_per_s_nop),
        ping_pong_nop_ratio: of(|r| ratio(r.ping_pong_per_s_nop, r.ping_pong_per_s_off)),
        ping_pong_per_s_off: of(|r| r.ping_pong_per_s_off),
        ping_pong_per_s_on: of(|r| r.ping_pong_per_s_on),
        ping_pong_ratio: of(|r| ratio(r.ping_pong_per_s_on, r.ping_pong_per_s_off)),
        trigger_ns_none: of(|r| r.trigger_ns.get("none").copied().unwrap_or(f64::NAN)),
        added_ns: trigger::CONDITIONS
            .iter()
            .map(|&name| {
                let added: Vec<f64> = rounds
                    .iter()
                    .map(|r| {
                        let ns = |key| r.trigger_ns.get(key).copied().unwrap_or(f64::NAN);
                        ns(name) - ns("none")
                    })
                    .collect();
                (name, Spread::of(&added))
            })
            .collect(),
        unavailable: baselines
            .unavailable
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        rounds,
    })
}

/// The best bulk throughput and ping-pong rate of a few alternating blocks: the rest of the
/// machine (builds, other tenants of the host) only ever slows a block down.
fn best_traffic(
    ns: &str,
    bulk: &TcpListener,
    ping: &TcpListener,
    settings: &Settings,
) -> anyhow::Result<(f64, f64)> {
    let (mut gbit_s, mut per_s) = (0.0f64, 0.0f64);
    for _ in 0..settings.blocks {
        gbit_s = gbit_s.max(bulk_gbit_s(ns, bulk, settings.window)?);
        per_s = per_s.max(ping_pong_rate(ns, ping, settings.window)?);
    }
    Ok((gbit_s, per_s))
}

/// Sender and receiver each pinned to a CPU of their own.
fn bulk_gbit_s(ns: &str, listener: &TcpListener, window: Duration) -> anyhow::Result<f64> {
    let listener = listener.try_clone()?;
    let receiver = thread::spawn(move || {
        net::pin_to_cpu(1)?;
        workload::bulk_receive(&listener)
    });
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, BULK_PORT);
    let deadline = Instant::now() + window;
    let (_, elapsed) = join(spawn_in(ns, move || {
        net::pin_to_cpu(0)?;
        workload::bulk_send(to, deadline)
    }))?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the bulk receiver panicked"))?
        .context("bulk receiver")?;
    Ok(received as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// Client and server each pinned to a CPU of their own, like two hosts.
fn ping_pong_rate(ns: &str, listener: &TcpListener, window: Duration) -> anyhow::Result<f64> {
    let listener = listener.try_clone()?;
    let server = thread::spawn(move || {
        net::pin_to_cpu(1)?;
        workload::pong(&listener)
    });
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PING_PORT);
    let deadline = Instant::now() + window;
    let (round_trips, elapsed) = join(spawn_in(ns, move || {
        net::pin_to_cpu(0)?;
        workload::ping_pong(to, deadline)
    }))?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the ping-pong server panicked"))?
        .context("ping-pong server")?;
    Ok(round_trips as f64 / elapsed.as_secs_f64())
}
