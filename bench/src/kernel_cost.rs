//! Kernel cost per event (measurement 1): the kernel's own accounting of each program's run time
//! (`run_time_ns / run_cnt` with BPF statistics on) for idlecut's programs and for do-nothing
//! programs of the same hook kind attached to the same tracepoints at the same time, so that both
//! see exactly the same events. Each round runs the agent once per hook kind (`--hooks auto`: BTF
//! tracepoints; `--hooks classic`), their order swapped every round; under each, four phases
//! follow one another, one per class of ports and kind of load: traffic on open connections
//! (what the per-event targets are about) and connection churn (whose every open and end is an
//! event with state to create or drop), on ports idlecut does not watch and on mail ports; each
//! phase gives one ratio per tracepoint.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    agent::Agent,
    kernel::{self, Baselines, HookKind, NOPS, RunStats, Tracepoint},
    net::{self, join, spawn_in},
    stats::{Spread, ratio},
    workload::{self, Pair},
};

pub struct Settings {
    pub rounds: usize,
    pub phase: Duration,
    pub chatter_connections: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Ports idlecut does not watch.
    NonMail,
    /// IMAP (small exchanges) and Submission (bulk transfer, churn).
    Mail,
}

/// What a phase does on the ports of its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// Small request/answer exchanges on open connections and a bulk transfer: the segments
    /// and sends of connections that last, as a mail server's IMAP and Submission traffic.
    Traffic,
    /// Connections opened, given one message and closed (every eighth with a RST), as fast as
    /// the machine goes: about ten thousand a second here, each an open and an end on both of
    /// its sockets.
    Churn,
}

/// The four phases of an agent's run, in the order of even rounds (odd rounds reverse it).
const PHASES: [(Class, Load); 4] = [
    (Class::NonMail, Load::Traffic),
    (Class::Mail, Load::Traffic),
    (Class::NonMail, Load::Churn),
    (Class::Mail, Load::Churn),
];

#[derive(Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    /// The hook kind the agent was asked for (`--hooks auto` is `tp_btf`).
    pub hooks: HookKind,
    /// The kind of the agent's program on this tracepoint (and of the do-nothing program
    /// measured beside it): with `--hooks auto` a probe may fall back to a classic tracepoint.
    pub kind: HookKind,
    pub class: Class,
    pub load: Load,
    pub tracepoint: String,
    pub idlecut_runs: u64,
    pub idlecut_ns_per_run: f64,
    pub baseline_runs: u64,
    pub baseline_ns_per_run: f64,
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub hooks: HookKind,
    pub class: Class,
    pub load: Load,
    /// A tracepoint, or `all` for the run-weighted mean over all of them.
    pub tracepoint: String,
    pub idlecut_ns_per_run: Spread,
    pub baseline_ns_per_run: Spread,
    pub ratio: Spread,
    pub runs_per_phase: Spread,
}

#[derive(Debug, Serialize)]
pub struct KernelCost {
    /// Runs of idlecut's programs the kernel skipped during the phases (another BPF program
    /// was running on the CPU), per hook kind the agent was asked for.
    pub recursion_misses: BTreeMap<&'static str, u64>,
    pub rounds: usize,
    pub phase_seconds: f64,
    pub chatter_connections: usize,
    pub method: &'static str,
    pub samples: Vec<Sample>,
    pub summary: Vec<Summary>,
}

struct Workload {
    ns: String,
    /// Open while an agent runs (opened after it started, so that it sees them open).
    nonmail_chatter: Vec<Pair>,
    mail_chatter: Vec<Pair>,
    nonmail_listener: TcpListener,
    mail_listener: TcpListener,
    nonmail_bulk: TcpListener,
    nonmail_churn: TcpListener,
    /// Mail's bulk transfer and churn, one phase at a time.
    submission: TcpListener,
}

const NONMAIL_BULK_PORT: u16 = 5001;
const NONMAIL_CHATTER_PORT: u16 = 5002;
const NONMAIL_CHURN_PORT: u16 = 5003;
const MAIL_CHATTER_PORT: u16 = 143;
const SUBMISSION_PORT: u16 = 587;
/// Every this many churned connections ends with a RST (resets and error reports get events).
const ABORT_EVERY: u64 = 8;

pub fn run(settings: &Settings) -> anyhow::Result<KernelCost> {
    let ns = net::netns("kcost");
    // Churned connections skip TIME_WAIT, so that ports never run out.
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
    let mut baselines = Baselines::load()?;
    let name = ns.name.clone();
    let mut workload = net::join(spawn_in(&ns.name, move || {
        let listen = |port| net::listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 4096);
        Ok(Workload {
            nonmail_chatter: Vec::new(),
            mail_chatter: Vec::new(),
            nonmail_listener: listen(NONMAIL_CHATTER_PORT)?,
            mail_listener: listen(MAIL_CHATTER_PORT)?,
            nonmail_bulk: listen(NONMAIL_BULK_PORT)?,
            nonmail_churn: listen(NONMAIL_CHURN_PORT)?,
            submission: listen(SUBMISSION_PORT)?,
            ns: name,
        })
    }))?;

    let _stats = kernel::enable_run_stats()?;
    let mut recursion_misses: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut samples = Vec::new();
    for round in 0..settings.rounds {
        let kinds = if round.is_multiple_of(2) {
            HookKind::ALL
        } else {
            [HookKind::ALL[1], HookKind::ALL[0]]
        };
        for hooks in kinds {
            let (w, misses) = block(
                &mut baselines,
                workload,
                settings,
                round,
                hooks,
                &mut samples,
            )?;
            workload = w;
            *recursion_misses.entry(hooks.label()).or_default() += misses;
        }
    }
    Ok(KernelCost {
        recursion_misses,
        rounds: settings.rounds,
        phase_seconds: settings.phase.as_secs_f64(),
        chatter_connections: settings.chatter_connections,
        method: "BPF_ENABLE_STATS on; per round, the agent once with --hooks auto (BTF \
                 tracepoints) and once with --hooks classic, in alternating order; per phase, \
                 the change in run_time_ns / run_cnt of each idlecut program and of a \
                 do-nothing program of the same hook kind attached to the same tracepoint \
                 after it (both run on every event); four phases per agent (traffic on open \
                 connections, then connection churn, each on non-mail then mail ports), their \
                 order reversed every round",
        summary: summarize(&samples),
        samples,
    })
}

/// One agent run with `hooks`: both classes of traffic, a phase each. Returns the workload and
/// the runs the kernel skipped of the agent's programs.
fn block(
    baselines: &mut Baselines,
    mut workload: Workload,
    settings: &Settings,
    round: usize,
    hooks: HookKind,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<(Workload, u64)> {
    let agent = Agent::start(&hooks.agent_args())?;
    agent.settle(Duration::from_secs(5));
    // (tracepoint, kind, idlecut's program, the do-nothing program of the same kind).
    let mut pairs: Vec<(Tracepoint, HookKind, u32, u32)> = Vec::new();
    let mut attached = Vec::new();
    let agent_programs = kernel::run_stats(&agent.program_ids()?)?;
    for nop in NOPS {
        let Some((agent_id, kind)) = agent_programs.iter().find_map(|(id, (prog, _))| {
            match kernel::tracepoint_of_agent_program(prog) {
                Some((at, kind)) if at == nop.at => Some((*id, kind)),
                _ => None,
            }
        }) else {
            // An agent older than this tracepoint's probe: nothing to compare there.
            continue;
        };
        let same_kind = kind
            .nops()
            .iter()
            .find(|p| p.at == nop.at)
            .copied()
            .context("a do-nothing program for every tracepoint")?;
        baselines.attach(same_kind)?;
        attached.push(same_kind);
        pairs.push((nop.at, kind, agent_id, baselines.id(same_kind.name)?));
    }
    let ids: Vec<u32> = pairs.iter().flat_map(|&(_, _, a, b)| [a, b]).collect();
    let measured = (|| -> anyhow::Result<(Workload, u64)> {
        workload = open_chatter(workload, settings.chatter_connections)?;
        let misses_before = agent.recursion_misses()?;
        let mut order = PHASES;
        if !round.is_multiple_of(2) {
            order.reverse();
        }
        for (class, load) in order {
            let before = kernel::run_stats(&ids)?;
            workload = phase(workload, class, load, settings.phase)?;
            let after = kernel::run_stats(&ids)?;
            let delta = |id: u32| -> RunStats {
                match (after.get(&id), before.get(&id)) {
                    (Some((_, a)), Some((_, b))) => a.since(*b),
                    _ => RunStats::default(),
                }
            };
            for &(at, kind, agent_id, baseline_id) in &pairs {
                let (a, b) = (delta(agent_id), delta(baseline_id));
                samples.push(sample(round, hooks, kind, (class, load), at.label(), a, b));
            }
        }
        let misses = agent.recursion_misses()? - misses_before;
        // Closed while the agent still watches.
        workload.nonmail_chatter.clear();
        workload.mail_chatter.clear();
        Ok((workload, misses))
    })();
    baselines.detach_all(&attached)?;
    drop(agent);
    measured
}

/// Opens the chatter connections (inside the namespace).
fn open_chatter(mut w: Workload, n: usize) -> anyhow::Result<Workload> {
    let ns = w.ns.clone();
    let (nonmail, mail) = (
        w.nonmail_listener.try_clone()?,
        w.mail_listener.try_clone()?,
    );
    let (nonmail_pairs, mail_pairs) = net::join(spawn_in(&ns, move || {
        Ok((
            workload::open_pairs(&nonmail, n)?,
            workload::open_pairs(&mail, n)?,
        ))
    }))?;
    w.nonmail_chatter = nonmail_pairs;
    w.mail_chatter = mail_pairs;
    Ok(w)
}

fn sample(
    round: usize,
    hooks: HookKind,
    kind: HookKind,
    (class, load): (Class, Load),
    tracepoint: String,
    a: RunStats,
    b: RunStats,
) -> Sample {
    let per_run = |s: RunStats| ratio(s.time_ns as f64, s.count as f64);
    Sample {
        round,
        hooks,
        kind,
        class,
        load,
        tracepoint,
        idlecut_runs: a.count,
        idlecut_ns_per_run: per_run(a),
        baseline_runs: b.count,
        baseline_ns_per_run: per_run(b),
        ratio: ratio(per_run(a), per_run(b)),
    }
}

/// Per hook kind, class, load and tracepoint, and per hook kind, class and load over all
/// tracepoints (total time over total runs: the mean cost of an event of that phase, whatever
/// tracepoint it fires).
fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut summary = Vec::new();
    for hooks in HookKind::ALL {
        for (class, load) in PHASES {
            let of_class: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.class == class && s.load == load && s.hooks == hooks)
                .collect();
            summary.push(overall(hooks, (class, load), &of_class));
            for nop in NOPS {
                let label = nop.at.label();
                let of_tp: Vec<&Sample> = of_class
                    .iter()
                    .copied()
                    .filter(|s| s.tracepoint == label)
                    .collect();
                let pick = |f: fn(&Sample) -> f64| -> Spread {
                    Spread::of(&of_tp.iter().map(|s| f(s)).collect::<Vec<_>>())
                };
                summary.push(Summary {
                    hooks,
                    class,
                    load,
                    tracepoint: label,
                    idlecut_ns_per_run: pick(|s| s.idlecut_ns_per_run),
                    baseline_ns_per_run: pick(|s| s.baseline_ns_per_run),
                    ratio: pick(|s| s.ratio),
                    runs_per_phase: pick(|s| s.idlecut_runs as f64),
                });
            }
        }
    }
    summary
}

/// The run-weighted mean over all tracepoints, per round.
fn overall(hooks: HookKind, (class, load): (Class, Load), samples: &[&Sample]) -> Summary {
    let mut rounds: HashMap<usize, (f64, f64, f64, f64)> = HashMap::new();
    for s in samples {
        if s.idlecut_runs == 0 || s.baseline_runs == 0 {
            continue;
        }
        let entry = rounds.entry(s.round).or_default();
        entry.0 += s.idlecut_ns_per_run * s.idlecut_runs as f64;
        entry.1 += s.idlecut_runs as f64;
        entry.2 += s.baseline_ns_per_run * s.baseline_runs as f64;
        entry.3 += s.baseline_runs as f64;
    }
    let (mut a, mut b, mut r, mut n) = (vec![], vec![], vec![], vec![]);
    for (time_a, runs_a, time_b, runs_b) in rounds.values() {
        let (per_a, per_b) = (ratio(*time_a, *runs_a), ratio(*time_b, *runs_b));
        a.push(per_a);
        b.push(per_b);
        r.push(ratio(per_a, per_b));
        n.push(*runs_a);
    }
    Summary {
        hooks,
        class,
        load,
        tracepoint: "all".to_owned(),
        idlecut_ns_per_run: Spread::of(&a),
        baseline_ns_per_run: Spread::of(&b),
        ratio: Spread::of(&r),
        runs_per_phase: Spread::of(&n),
    }
}

/// Runs one phase of a load on the ports of a class for `duration`; returns the workload's
/// connections.
fn phase(
    mut w: Workload,
    class: Class,
    load: Load,
    duration: Duration,
) -> anyhow::Result<Workload> {
    let deadline = Instant::now() + duration;
    let ns = w.ns.clone();
    let (churn_listener, bulk_listener, bulk_port) = match class {
        Class::NonMail => (&w.nonmail_churn, &w.nonmail_bulk, NONMAIL_BULK_PORT),
        Class::Mail => (&w.submission, &w.submission, SUBMISSION_PORT),
    };
    match load {
        Load::Churn => {
            let listener = churn_listener.try_clone()?;
            join(spawn_in(&ns, move || {
                workload::churn(&listener, ABORT_EVERY, None, deadline)
            }))
            .context("churn")?;
        }
        Load::Traffic => {
            let pairs = match class {
                Class::NonMail => std::mem::take(&mut w.nonmail_chatter),
                Class::Mail => std::mem::take(&mut w.mail_chatter),
            };
            let chatter = spawn_in(&ns, move || workload::chatter(pairs, deadline));
            let listener = bulk_listener.try_clone()?;
            let receiver = std::thread::spawn(move || workload::bulk_receive(&listener));
            let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, bulk_port);
            let sender = spawn_in(&ns, move || workload::bulk_send(to, deadline));
            let (pairs, _) = join(chatter).context("chatter")?;
            join(sender).context("bulk sender")?;
            receiver
                .join()
                .map_err(|_| anyhow::anyhow!("the bulk receiver panicked"))?
                .context("bulk receiver")?;
            match class {
                Class::NonMail => w.nonmail_chatter = pairs,
                Class::Mail => w.mail_chatter = pairs,
            }
        }
    }
    Ok(w)
}
