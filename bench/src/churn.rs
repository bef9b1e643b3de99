//! Connection churn (measurement 3): IMAP connections opened and closed (FIN) as fast as asked, in
//! several namespaces at once (each with its own port space), the rate stepped up until the machine
//! cannot go faster, once with the agent on BTF tracepoints (`--hooks auto`) and once on classic
//! tracepoints (`--hooks classic`). At each step: the rate achieved, whether the agent lost events
//! (its kernel counter of ring buffer overflows, the runs the kernel skipped of its programs, and
//! whether it counted every open and close of both ends), and its CPU time. Then the machine's
//! maximum rate without the agent and with it under each hook kind, in rotating order.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use idlecut_integration_tests::{Netns, Scrape};
use serde::Serialize;

use crate::{
    agent::Agent,
    kernel::HookKind,
    net::{self, connect_from, drain_to_eof, join, spawn_in},
    stats::{Spread, ratio},
};

pub struct Settings {
    /// Target rates, connections per second, tried in order until the machine falls behind.
    pub rates: Vec<u32>,
    pub step: Duration,
    /// Rounds of (unpaced with the agent, unpaced without).
    pub max_rounds: usize,
    pub namespaces: usize,
}

#[derive(Debug, Serialize)]
pub struct Step {
    /// None: as fast as possible.
    pub target_per_s: Option<u32>,
    /// The agent's hook kind, None without the agent.
    pub hooks: Option<HookKind>,
    pub connections: u64,
    pub achieved_per_s: f64,
    /// The agent's `idlecut_events_lost_total` over the step: ring buffer overflows (and, since
    /// the agent counts them too, skipped program runs).
    pub events_lost: f64,
    /// Times the kernel skipped one of the agent's programs because another BPF program was
    /// running on the CPU (a softirq interrupting a program): events never seen.
    pub recursion_misses: f64,
    /// Connections the kernel could not start tracking, closes of connections the agent did not
    /// know, kernel states evicted: other ways to lose track, for diagnosis.
    pub insert_failures: f64,
    pub untracked_closes: f64,
    /// Of `opens_counted`, those the agent did not see open (the kernel skipped the open):
    /// counted as discovered, at their close or by a scan.
    pub opens_discovered: f64,
    pub evictions: f64,
    /// Records the agent read from the ring buffer and could not decode (dropped).
    pub events_malformed: f64,
    /// Opens (or discoveries at the close) and closes the agent counted (both ends of each
    /// connection: 2 per connection).
    pub opens_counted: f64,
    pub closes_counted: f64,
    /// IMAP opens counted on other paths than the rig's over the step, by path (other
    /// namespaces' connections; or the rig's, if the agent got their remote address wrong).
    pub other_paths_opens: BTreeMap<String, f64>,
    /// No event lost: no ring buffer overflow, no program run skipped, every open and close
    /// counted.
    pub no_event_lost: bool,
    /// Nothing lost at all: also every connection's kernel state inserted.
    pub lossless: bool,
    /// Agent CPU time over the step's duration: cores kept busy.
    pub agent_cpu_cores: f64,
    pub agent_cpu_us_per_connection: f64,
}

#[derive(Debug, Serialize)]
pub struct Churn {
    pub step_seconds: f64,
    pub namespaces: usize,
    pub steps: Vec<Step>,
    /// By the agent's hook kind (`tp_btf`, `tracepoint`).
    pub by_hooks: BTreeMap<&'static str, OfKind>,
    pub max_without_agent_per_s: Spread,
}

/// The ladder and the unpaced runs of the agent with one hook kind.
#[derive(Debug, Serialize)]
pub struct OfKind {
    /// The rate sustained with no event lost: the highest rate of the leading steps of the
    /// ladder that lost none (no ring buffer overflow, no program run skipped, every open and
    /// close counted); 0 when the first step already lost some.
    pub sustained_no_loss_per_s: f64,
    /// The first step of the ladder (or the unpaced runs) that lost events: its rate, and what
    /// was lost.
    pub first_loss_per_s: Option<f64>,
    pub first_loss: Option<String>,
    /// Connections whose kernel state could not be inserted (they are counted, but their idle
    /// gaps and retransmissions go unseen): the first rate where some were, and the share of
    /// connections at the target rate.
    pub first_insert_failure_per_s: Option<f64>,
    pub insert_failure_share_at_20k: f64,
    /// Program runs the kernel skipped per 10k connections at the target rate, and the first
    /// rate where any were.
    pub recursion_misses_per_10k_at_20k: f64,
    pub first_recursion_miss_per_s: Option<f64>,
    /// Opens and closes not counted at the target rate (of 2 per connection each).
    pub uncounted_opens_at_20k: f64,
    pub uncounted_closes_at_20k: f64,
    /// Agent CPU (cores) and per connection (us) at the 20k/s step, the target rate.
    pub agent_cpu_cores_at_20k: f64,
    pub agent_cpu_us_per_connection_at_20k: f64,
    pub max_with_agent_per_s: Spread,
    /// with / without, per round.
    pub max_ratio: Spread,
}

/// The rate the target is set at, connections per second.
pub const TARGET_RATE: u32 = 20_000;

/// Connections opened but not yet accepted at which connectors wait (keeps the accept queue
/// from overflowing, which would stall connects for a 1 s SYN retransmission).
const MAX_IN_FLIGHT: u64 = 1000;

struct Worker {
    ns: Netns,
    acceptor: JoinHandle<anyhow::Result<()>>,
    accepted: Arc<AtomicU64>,
}

struct Rig {
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
}

impl Rig {
    fn new(namespaces: usize) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for i in 0..namespaces {
            let ns = net::netns(&format!("churn{i}"));
            // Skip TIME_WAIT (it would hold ports for 60 s) and use most of the port range,
            // above every port idlecut watches by default: a client whose source port is a
            // watched port (4190, sieve, in 1024-65535) is taken for a server of that service
            // (the agent's roles follow the ports), and its IMAP open and close go uncounted.
            ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
            ns.sysctl("net.ipv4.ip_local_port_range", "10000 65535");
            let listener: TcpListener = join(spawn_in(&ns.name, || {
                net::listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 143), 4096)
            }))?;
            let accepted = Arc::new(AtomicU64::new(0));
            let acceptor = {
                let (stop, accepted) = (stop.clone(), accepted.clone());
                thread::spawn(move || accept_loop(&listener, &stop, &accepted))
            };
            workers.push(Worker {
                ns,
                acceptor,
                accepted,
            });
        }
        Ok(Self { workers, stop })
    }

    /// Opens and closes connections at `rate` per second in total (None: as fast as possible)
    /// for `duration`; returns how many and for how long.
    fn run(&self, rate: Option<u32>, duration: Duration) -> anyhow::Result<(u64, Duration)> {
        let started = Instant::now();
        let deadline = started + duration;
        let per_worker = rate.map(|r| f64::from(r) / self.workers.len() as f64);
        let connectors: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                let accepted = w.accepted.clone();
                let base = accepted.load(Ordering::Relaxed);
                spawn_in(&w.ns.name, move || {
                    connect_loop(per_worker, deadline, &accepted, base)
                })
            })
            .collect();
        let mut total = 0;
        for connector in connectors {
            total += join(connector)?;
        }
        let elapsed = started.elapsed();
        Ok((total, elapsed))
    }

    fn accepted(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.accepted.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until every connection opened so far has been accepted and closed.
    fn settle(&self, opened: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.accepted() < opened && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.acceptor
                .join()
                .map_err(|_| anyhow::anyhow!("an acceptor panicked"))??;
        }
        Ok(())
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    accepted: &AtomicU64,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // The client closes at once: read its FIN, then close ours.
                drain_to_eof(stream, Duration::from_secs(2));
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err).context("accepting"),
        }
    }
    Ok(())
}

fn connect_loop(
    rate: Option<f64>,
    deadline: Instant,
    accepted: &AtomicU64,
    base: u64,
) -> anyhow::Result<u64> {
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 143);
    let started = Instant::now();
    let mut opened = 0u64;
    while Instant::now() < deadline {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(opened as f64 / rate);
            let now = Instant::now();
            // Sleeping costs ~60 us more than asked: only when well ahead of schedule.
            if due > now + Duration::from_millis(1) {
                thread::sleep(due - now);
            }
        }
        while opened.saturating_sub(accepted.load(Ordering::Relaxed) - base) > MAX_IN_FLIGHT {
            thread::yield_now();
        }
        let stream = connect_from(Ipv4Addr::LOCALHOST, to).context("connecting")?;
        drop(stream);
        opened += 1;
    }
    Ok(opened)
}

/// What the agent has counted so far.
struct Counts {
    /// Opened, or discovered (met only at the close, when the kernel skipped the open).
    opens: f64,
    /// By path, every path but the rig's.
    other_opens: BTreeMap<String, f64>,
    closes: f64,
    lost: f64,
    insert_failures: f64,
    untracked_closes: f64,
    discovered: f64,
    evictions: f64,
    malformed: f64,
    recursion_misses: f64,
    cpu: f64,
}

/// The path of the rig's connections (both ends on 127.0.0.1): counting only it keeps out
/// IMAP connections elsewhere on the host (other namespaces' tests), which the agent also sees.
const RIG_PATH: &str = "127.0.0.0/24";

fn counts(agent: &Agent) -> anyhow::Result<Counts> {
    let scrape: Scrape = agent.scrape()?;
    let imap = [("service", "imap")];
    let rig = [RIG_PATH.to_owned()];
    let mut other_opens = BTreeMap::new();
    for labels in scrape.series("idlecut_connections_opened_total") {
        if let Some(path) = labels.get("path").filter(|p| p.as_str() != RIG_PATH)
            && labels.get("service").is_some_and(|s| s == "imap")
        {
            let paths = [path.clone()];
            let n = scrape.sum_in("idlecut_connections_opened_total", &imap, &paths);
            other_opens.insert(path.clone(), n);
        }
    }
    Ok(Counts {
        other_opens,
        // A connection whose open the kernel skipped is counted at its close, as discovered.
        opens: scrape.sum_in("idlecut_connections_opened_total", &imap, &rig)
            + scrape.sum_in("idlecut_connections_discovered_total", &imap, &rig),
        closes: scrape.sum_in("idlecut_connections_closed_total", &imap, &rig),
        lost: scrape.value("idlecut_events_lost_total", &[]),
        insert_failures: scrape.value("idlecut_kernel_state_insert_failures_total", &[]),
        untracked_closes: scrape.value("idlecut_untracked_closes_total", &[]),
        discovered: scrape.sum_in("idlecut_connections_discovered_total", &imap, &rig),
        evictions: scrape.value("idlecut_kernel_state_evictions_total", &[]),
        malformed: scrape.value("idlecut_events_malformed_total", &[]),
        recursion_misses: agent.recursion_misses()? as f64,
        cpu: agent.cpu_seconds()?,
    })
}

/// One step with the agent watching: runs, lets the agent catch up (it classifies a close
/// after 100 ms and reads the kernel's loss counter every second), then compares.
fn step_with_agent(
    rig: &Rig,
    agent: &Agent,
    hooks: HookKind,
    rate: Option<u32>,
    duration: Duration,
) -> anyhow::Result<Step> {
    let before = counts(agent)?;
    let accepted_before = rig.accepted();
    let (n, elapsed) = rig.run(rate, duration)?;
    rig.settle(accepted_before + n);
    let expected = 2.0 * n as f64;
    let settle_deadline = Instant::now() + Duration::from_secs(5);
    let earliest = Instant::now() + Duration::from_millis(1200);
    // Closes that have not come within the grace period and the drain interval (150 ms) are
    // not coming: stop waiting once the count has not moved for this long past `earliest`.
    let still = Duration::from_millis(500);
    let mut last_change = (f64::NAN, Instant::now());
    let after = loop {
        let now = counts(agent)?;
        if now.closes != last_change.0 {
            last_change = (now.closes, Instant::now());
        }
        let all_in = now.closes - before.closes >= expected;
        let settled = all_in || last_change.1.elapsed() >= still;
        if (settled && Instant::now() >= earliest) || Instant::now() > settle_deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let (opens, closes, lost) = (
        after.opens - before.opens,
        after.closes - before.closes,
        after.lost - before.lost,
    );
    let cpu = after.cpu - before.cpu;
    Ok(Step {
        target_per_s: rate,
        hooks: Some(hooks),
        connections: n,
        achieved_per_s: n as f64 / elapsed.as_secs_f64(),
        events_lost: lost,
        recursion_misses: after.recursion_misses - before.recursion_misses,
        insert_failures: after.insert_failures - before.insert_failures,
        untracked_closes: after.untracked_closes - before.untracked_closes,
        opens_discovered: after.discovered - before.discovered,
        evictions: after.evictions - before.evictions,
        events_malformed: after.malformed - before.malformed,
        opens_counted: opens,
        other_paths_opens: after
            .other_opens
            .iter()
            .map(|(path, n)| {
                (
                    path.clone(),
                    n - before.other_opens.get(path).unwrap_or(&0.0),
                )
            })
            .filter(|(_, n)| *n != 0.0)
            .collect(),
        closes_counted: closes,
        no_event_lost: lost == 0.0
            && after.recursion_misses == before.recursion_misses
            && opens == expected
            && closes == expected,
        lossless: lost == 0.0
            && after.recursion_misses == before.recursion_misses
            && after.insert_failures == before.insert_failures
            && opens == expected
            && closes == expected,
        agent_cpu_cores: cpu / elapsed.as_secs_f64(),
        agent_cpu_us_per_connection: ratio(cpu * 1e6, n as f64),
    })
}

fn step_without_agent(rig: &Rig, duration: Duration) -> anyhow::Result<Step> {
    let accepted_before = rig.accepted();
    let (n, elapsed) = rig.run(None, duration)?;
    rig.settle(accepted_before + n);
    Ok(Step {
        target_per_s: None,
        hooks: None,
        connections: n,
        achieved_per_s: n as f64 / elapsed.as_secs_f64(),
        events_lost: f64::NAN,
        recursion_misses: f64::NAN,
        insert_failures: f64::NAN,
        untracked_closes: f64::NAN,
        opens_discovered: f64::NAN,
        evictions: f64::NAN,
        events_malformed: f64::NAN,
        opens_counted: f64::NAN,
        other_paths_opens: BTreeMap::new(),
        closes_counted: f64::NAN,
        no_event_lost: true,
        lossless: true,
        agent_cpu_cores: f64::NAN,
        agent_cpu_us_per_connection: f64::NAN,
    })
}

pub fn run(settings: &Settings) -> anyhow::Result<Churn> {
    let rig = Rig::new(settings.namespaces)?;
    let result = measure(&rig, settings);
    rig.stop()?;
    result
}

fn measure(rig: &Rig, settings: &Settings) -> anyhow::Result<Churn> {
    let mut steps = Vec::new();
    for hooks in HookKind::ALL {
        let agent = Agent::start(&hooks.agent_args())?;
        agent.settle(Duration::from_secs(5));
        for &rate in &settings.rates {
            let step = step_with_agent(rig, &agent, hooks, Some(rate), settings.step)?;
            let fell_behind = step.achieved_per_s < 0.9 * f64::from(rate);
            steps.push(step);
            if fell_behind {
                break;
            }
        }
    }
    // Unpaced: without the agent, with it on each hook kind, in rotating order.
    let mut units = [None, Some(HookKind::TpBtf), Some(HookKind::Classic)];
    // Per round: the rate without the agent, and with it by kind.
    let mut rounds: Vec<(f64, BTreeMap<&'static str, f64>)> = Vec::new();
    for round in 0..settings.max_rounds {
        if round > 0 {
            units.rotate_left(1);
        }
        let mut without = f64::NAN;
        let mut with = BTreeMap::new();
        for unit in units {
            let step = match unit {
                Some(hooks) => {
                    let agent = Agent::start(&hooks.agent_args())?;
                    agent.settle(Duration::from_secs(5));
                    step_with_agent(rig, &agent, hooks, None, settings.step)?
                }
                None => step_without_agent(rig, settings.step)?,
            };
            match unit {
                Some(hooks) => {
                    with.insert(hooks.label(), step.achieved_per_s);
                }
                None => without = step.achieved_per_s,
            }
            steps.push(step);
        }
        rounds.push((without, with));
    }
    let by_hooks = HookKind::ALL
        .iter()
        .map(|&hooks| (hooks.label(), of_kind(&steps, &rounds, hooks)))
        .collect();
    Ok(Churn {
        step_seconds: settings.step.as_secs_f64(),
        namespaces: settings.namespaces,
        by_hooks,
        max_without_agent_per_s: Spread::of(&rounds.iter().map(|r| r.0).collect::<Vec<_>>()),
        steps,
    })
}

fn of_kind(
    steps: &[Step],
    rounds: &[(f64, BTreeMap<&'static str, f64>)],
    hooks: HookKind,
) -> OfKind {
    // Ladder order, then the unpaced runs.
    let watched = || steps.iter().filter(|s| s.hooks == Some(hooks));
    let sustained = watched()
        .take_while(|s| s.no_event_lost)
        .map(|s| s.achieved_per_s)
        .max_by(f64::total_cmp);
    let first_loss = watched().find(|s| !s.no_event_lost);
    let first_insert_failure = watched().find(|s| s.insert_failures > 0.0);
    let at_20k = watched().find(|s| s.target_per_s == Some(TARGET_RATE));
    let at_20k_or_nan = |f: fn(&Step) -> f64| at_20k.map_or(f64::NAN, f);
    let with: Vec<f64> = rounds
        .iter()
        .map(|(_, with)| with.get(hooks.label()).copied().unwrap_or(f64::NAN))
        .collect();
    let ratios: Vec<f64> = rounds
        .iter()
        .zip(&with)
        .map(|((without, _), with)| ratio(*with, *without))
        .collect();
    OfKind {
        sustained_no_loss_per_s: sustained.unwrap_or(0.0),
        first_loss_per_s: first_loss.map(|s| s.achieved_per_s),
        first_loss: first_loss.map(|s| {
            let expected = 2.0 * s.connections as f64;
            format!(
                "{} program runs skipped, {} lost per idlecut_events_lost_total; {} opens and \
                 {} closes of {expected} not counted ({} opens counted without being seen)",
                s.recursion_misses,
                s.events_lost,
                expected - s.opens_counted,
                expected - s.closes_counted,
                s.opens_discovered,
            )
        }),
        first_insert_failure_per_s: first_insert_failure.map(|s| s.achieved_per_s),
        insert_failure_share_at_20k: at_20k_or_nan(|s| {
            ratio(s.insert_failures, 2.0 * s.connections as f64)
        }),
        recursion_misses_per_10k_at_20k: at_20k_or_nan(|s| {
            ratio(s.recursion_misses * 10_000.0, s.connections as f64)
        }),
        first_recursion_miss_per_s: watched()
            .find(|s| s.recursion_misses > 0.0)
            .map(|s| s.achieved_per_s),
        uncounted_opens_at_20k: at_20k_or_nan(|s| 2.0 * s.connections as f64 - s.opens_counted),
        uncounted_closes_at_20k: at_20k_or_nan(|s| 2.0 * s.connections as f64 - s.closes_counted),
        agent_cpu_cores_at_20k: at_20k_or_nan(|s| s.agent_cpu_cores),
        agent_cpu_us_per_connection_at_20k: at_20k_or_nan(|s| s.agent_cpu_us_per_connection),
        max_with_agent_per_s: Spread::of(&with),
        max_ratio: Spread::of(&ratios),
    }
}
