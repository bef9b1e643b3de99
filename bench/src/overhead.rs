//! Overhead on unrelated traffic (measurement 2): loopback TCP bulk throughput and ping-pong rate
//! on ports idlecut does not watch, without the agent, with it under each hook kind (`--hooks
//! auto`: BTF tracepoints, `--hooks classic`), and with do-nothing programs of each kind on the
//! same tracepoints (what attaching anything there costs, apart from idlecut's programs). The
//! order of the conditions rotates every round so that drift cancels. The same rounds run the
//! added-latency measurements of `trigger`.

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
    kernel::{Baselines, HookKind},
    net::{self, join, spawn_in},
    stats::{Spread, ratio},
    trigger::{self, Timings, Trigger},
    workload,
};

pub struct Settings {
    pub rounds: usize,
    /// Throughputs and rates are the best of this many blocks of `window`.
    pub blocks: usize,
    pub window: Duration,
    pub trigger_iterations: u32,
}

/// The traffic conditions: nothing attached, the agent with each hook kind, do-nothing
/// programs of each kind (no agent).
pub const OFF: &str = "off";
pub const TRAFFIC_CONDITIONS: [&str; 4] = [
    "idlecut_tp_btf",
    "idlecut_classic",
    "nop_tp_btf",
    "nop_classic",
];

/// The traffic condition of the agent, or of do-nothing programs, of a hook kind.
pub fn traffic_condition(hooks: HookKind, agent: bool) -> &'static str {
    match (hooks, agent) {
        (HookKind::TpBtf, true) => TRAFFIC_CONDITIONS[0],
        (HookKind::Classic, true) => TRAFFIC_CONDITIONS[1],
        (HookKind::TpBtf, false) => TRAFFIC_CONDITIONS[2],
        (HookKind::Classic, false) => TRAFFIC_CONDITIONS[3],
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Round {
    pub round: usize,
    /// The order the agent runs and the run without it took this round.
    pub order: Vec<&'static str>,
    /// The best of a few blocks of `window_seconds`, by condition (`off` and
    /// `TRAFFIC_CONDITIONS`).
    pub bulk_gbit_s: BTreeMap<&'static str, f64>,
    pub ping_pong_per_s: BTreeMap<&'static str, f64>,
    /// ns per event of each trigger loop with nothing attached (`none`), with each experiment
    /// program, and with idlecut's (`idlecut_tp_btf`, `idlecut_classic`).
    pub trigger_ns: Timings,
}

/// One traffic condition over the rounds, against no program attached.
#[derive(Debug, Serialize)]
pub struct Traffic {
    pub bulk_gbit_s: Spread,
    /// Against `off`, per round.
    pub bulk_ratio: Spread,
    pub ping_pong_per_s: Spread,
    pub ping_pong_ratio: Spread,
}

#[derive(Debug, Serialize)]
pub struct Overhead {
    pub rounds: Vec<Round>,
    pub window_seconds: f64,
    pub trigger_iterations: u32,
    pub bulk_gbit_s_off: Spread,
    pub ping_pong_per_s_off: Spread,
    /// By condition (`TRAFFIC_CONDITIONS`).
    pub traffic: BTreeMap<&'static str, Traffic>,
    /// ns per event with nothing attached, per trigger.
    pub trigger_ns_none: BTreeMap<&'static str, Spread>,
    /// Added ns per event over no program, per round, by trigger, then condition: idlecut's
    /// and each experiment's (see `trigger::CONDITIONS`).
    pub added_ns: BTreeMap<&'static str, BTreeMap<&'static str, Spread>>,
    /// Experiment programs this kernel would not run, and why.
    pub unavailable: BTreeMap<String, String>,
}

const BULK_PORT: u16 = 5201;
const PING_PORT: u16 = 5202;

/// What runs in a round, in an order that rotates.
#[derive(Clone, Copy)]
enum Unit {
    Agent(HookKind),
    /// Nothing, then do-nothing programs of each kind, then the trigger experiments.
    NoAgent,
}

pub fn run(settings: &Settings) -> anyhow::Result<Overhead> {
    let ns = net::netns("ovh");
    let name = ns.name.clone();
    let (bulk, ping) = join(spawn_in(&ns.name, || {
        let listen = |port| net::listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 128);
        Ok((listen(BULK_PORT)?, listen(PING_PORT)?))
    }))?;
    let mut baselines = Baselines::load()?;
    let mut rounds = Vec::new();
    let units = [
        Unit::NoAgent,
        Unit::Agent(HookKind::TpBtf),
        Unit::Agent(HookKind::Classic),
    ];
    for round in 0..settings.rounds {
        let mut r = Round {
            round,
            ..Round::default()
        };
        let mut order = units;
        order.rotate_left(round % units.len());
        for unit in order {
            match unit {
                Unit::Agent(hooks) => {
                    r.order.push(traffic_condition(hooks, true));
                    let agent = Agent::start(&hooks.agent_args())?;
                    agent.settle(Duration::from_secs(5));
                    let traffic = best_traffic(&name, &bulk, &ping, settings)?;
                    r.bulk_gbit_s
                        .insert(traffic_condition(hooks, true), traffic.0);
                    r.ping_pong_per_s
                        .insert(traffic_condition(hooks, true), traffic.1);
                    trigger::with_agent(hooks, settings.trigger_iterations, &mut r.trigger_ns)?;
                    drop(agent);
                }
                Unit::NoAgent => {
                    r.order.push(OFF);
                    let traffic = best_traffic(&name, &bulk, &ping, settings)?;
                    r.bulk_gbit_s.insert(OFF, traffic.0);
                    r.ping_pong_per_s.insert(OFF, traffic.1);
                    // Any program on idlecut's tracepoints, doing nothing: what attaching costs.
                    for hooks in HookKind::ALL {
                        baselines.attach_all(hooks.nops())?;
                        let nop_traffic = best_traffic(&name, &bulk, &ping, settings);
                        baselines.detach_all(hooks.nops())?;
                        let nop_traffic = nop_traffic?;
                        r.bulk_gbit_s
                            .insert(traffic_condition(hooks, false), nop_traffic.0);
                        r.ping_pong_per_s
                            .insert(traffic_condition(hooks, false), nop_traffic.1);
                    }
                    trigger::without_agent(
                        &mut baselines,
                        settings.trigger_iterations,
                        &mut r.trigger_ns,
                    )?;
                }
            }
        }
        rounds.push(r);
    }
    let of = |f: &dyn Fn(&Round) -> f64| Spread::of(&rounds.iter().map(f).collect::<Vec<_>>());
    let get = |map: &BTreeMap<&'static str, f64>, key: &str| -> f64 {
        map.get(key).copied().unwrap_or(f64::NAN)
    };
    let traffic = TRAFFIC_CONDITIONS
        .iter()
        .map(|&condition| {
            (
                condition,
                Traffic {
                    bulk_gbit_s: of(&|r| get(&r.bulk_gbit_s, condition)),
                    bulk_ratio: of(&|r| {
                        ratio(get(&r.bulk_gbit_s, condition), get(&r.bulk_gbit_s, OFF))
                    }),
                    ping_pong_per_s: of(&|r| get(&r.ping_pong_per_s, condition)),
                    ping_pong_ratio: of(&|r| {
                        ratio(
                            get(&r.ping_pong_per_s, condition),
                            get(&r.ping_pong_per_s, OFF),
                        )
                    }),
                },
            )
        })
        .collect();
    let trigger_ns = |r: &Round, trigger: Trigger, condition: &str| -> f64 {
        r.trigger_ns
            .get(trigger.label())
            .map_or(f64::NAN, |t| get(t, condition))
    };
    Ok(Overhead {
        window_seconds: settings.window.as_secs_f64(),
        trigger_iterations: settings.trigger_iterations,
        bulk_gbit_s_off: of(&|r| get(&r.bulk_gbit_s, OFF)),
        ping_pong_per_s_off: of(&|r| get(&r.ping_pong_per_s, OFF)),
        traffic,
        trigger_ns_none: Trigger::ALL
            .iter()
            .map(|&t| (t.label(), of(&|r| trigger_ns(r, t, "none"))))
            .collect(),
        added_ns: Trigger::ALL
            .iter()
            .map(|&t| {
                let by_condition = trigger::CONDITIONS
                    .iter()
                    .map(|&condition| {
                        (
                            condition,
                            of(&|r| trigger_ns(r, t, condition) - trigger_ns(r, t, "none")),
                        )
                    })
                    .collect();
                (t.label(), by_condition)
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
