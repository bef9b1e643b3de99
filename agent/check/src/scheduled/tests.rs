//! The scheduler with a stand-in runner, in paused time: when runs start, that one check
//! never runs twice at once, that failures and panics are recorded and survived, and that
//! shutdown stops a run under way.

use std::sync::Mutex;

use prometheus_client::registry::Registry;

use super::*;
use crate::PortReport;
use idlecut_api::vocabulary::{CheckName, CheckStatus};
use idlecut_core::settings::parse_ports;

fn check(target: &str, every: &str) -> ScheduledCheck {
    let table: toml::Table = toml::from_str(&format!(
        "target = \"{target}\"\nevery = \"{every}\"\nmax_idle = \"20s\""
    ))
    .expect("toml");
    ScheduledCheck::from_table(&table).expect("a check")
}

fn report(target: &str, idle_status: CheckStatus) -> Report {
    let mut port = PortReport::new("192.0.2.7:143".parse().expect("address"));
    port.row(CheckName::Reachability, CheckStatus::Pass, "accepted");
    port.row(CheckName::IdleCutoff, idle_status, "searched");
    Report::new(target.to_owned(), 20.0, 1.0, vec![port])
}

/// When each run of each target started and ended, in seconds since the test's start.
type Log = Arc<Mutex<Vec<(String, f64, f64)>>>;

/// A runner whose runs take `took(target, run number)`; a negative duration panics, NaN
/// fails.
fn runner(log: Log, start: Instant, took: fn(&str, usize) -> f64) -> Runner {
    Arc::new(move |args: Arc<CheckArgs>| {
        let log = log.clone();
        Box::pin(async move {
            let target = args.host().to_owned();
            let started = start.elapsed().as_secs_f64();
            let run = log
                .lock()
                .expect("log")
                .iter()
                .filter(|(t, _, _)| *t == target)
                .count();
            let seconds = took(&target, run);
            if seconds.is_nan() {
                log.lock()
                    .expect("log")
                    .push((target.clone(), started, started));
                return Err(format!("{target} does not resolve"));
            }
            tokio::time::sleep(Duration::from_secs_f64(seconds.abs())).await;
            log.lock()
                .expect("log")
                .push((target.clone(), started, start.elapsed().as_secs_f64()));
            assert!(seconds >= 0.0, "a bug in the check");
            Ok(report(&target, CheckStatus::Fail))
        })
    })
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    results: Results,
    registry: Arc<Registry>,
}

fn start(checks: Vec<ScheduledCheck>, runner: Runner) -> Running {
    let mut registry = Registry::with_prefix("idlecut");
    let metrics = CheckMetrics::register(
        &mut registry,
        checks.iter().map(|check| Arc::from(check.label.as_str())),
    );
    let (results_tx, results) = results_channel();
    let (stop, stopped) = watch::channel(false);
    let scheduler = Scheduler {
        checks,
        runner,
        metrics,
        ports: parse_ports("143=imap,587=submission").expect("ports"),
        prefixes: Prefixes { ipv4: 24, ipv6: 48 },
        results: results_tx,
    };
    Running {
        task: tokio::spawn(scheduler.run(stopped)),
        stop,
        results,
        registry: Arc::new(registry),
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encoding");
    text
}

#[test]
fn next_starts_stay_on_the_grid_and_skip_what_was_missed() {
    let first = Instant::now();
    let every = Duration::from_secs(60);
    let at = |s: u64| first + Duration::from_secs(s);
    assert_eq!(next_start(first, every, at(0)), at(60));
    assert_eq!(next_start(first, every, at(10)), at(60));
    assert_eq!(next_start(first, every, at(60)), at(120));
    // A run that took 150 s: the starts at 60 and 120 are skipped.
    assert_eq!(next_start(first, every, at(150)), at(180));
    assert_eq!(first_run_delay(0), Duration::from_secs(5));
    assert_eq!(first_run_delay(2), Duration::from_secs(35));
}

#[tokio::test(start_paused = true)]
async fn checks_run_spread_out_on_their_schedule_and_never_twice_at_once() {
    let log: Log = Arc::default();
    let begin = Instant::now();
    // `fast` takes 10 s every minute; `slow` takes 90 s every minute, so it misses starts.
    let running = start(
        vec![check("fast", "1m"), check("slow", "1m")],
        runner(log.clone(), begin, |target, _| {
            if target == "slow" { 90.0 } else { 10.0 }
        }),
    );
    tokio::time::sleep(Duration::from_secs(300)).await;
    let runs = log.lock().expect("log").clone();
    let starts = |target: &str| -> Vec<f64> {
        runs.iter()
            .filter(|(t, _, _)| t == target)
            .map(|(_, started, _)| started.round())
            .collect()
    };
    assert_eq!(starts("fast"), [5.0, 65.0, 125.0, 185.0, 245.0]);
    // First at 5 + 15 s; it ends at 110, so the start at 80 is skipped for 140 (and the one
    // at 260 is still running).
    assert_eq!(starts("slow"), [20.0, 140.0]);
    for target in ["fast", "slow"] {
        let mine: Vec<_> = runs.iter().filter(|(t, _, _)| t == target).collect();
        for pair in mine.windows(2) {
            assert!(pair[0].2 <= pair[1].1, "{target} overlapped: {pair:?}");
        }
    }
    let results = running.results.borrow().clone();
    assert_eq!(results.ports.len(), 2, "{results:?}");
    let fast = &results.ports[0];
    assert_eq!(&*fast.target, "fast");
    assert_eq!(fast.idle_status, Some(CheckStatus::Fail));
    assert_eq!(
        fast.path,
        Some(PathKey {
            service: Arc::from("imap"),
            role: Role::Client,
            path: Arc::from("192.0.2.0/24"),
        }),
        "the checked address's path, as the path table names it"
    );
    let text = encode(&running.registry);
    for line in [
        r#"idlecut_check_runs_total{target="fast",result="fail"} 5"#,
        r#"idlecut_check_runs_total{target="fast",result="pass"} 0"#,
        r#"idlecut_check_status{target="fast",port="143",check="idle_cutoff"} 0"#,
        r#"idlecut_check_status{target="fast",port="143",check="reachability"} 1"#,
        r#"idlecut_check_duration_seconds{target="slow"} 90.0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        !text.contains(r#"check="identity""#),
        "rows not run are absent:\n{text}"
    );
    running.stop.send(true).expect("stop");
    running.task.await.expect("the scheduler stops");
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_panicking_check_is_recorded_and_the_schedule_goes_on() {
    let log: Log = Arc::default();
    let begin = Instant::now();
    let running = start(
        vec![check("flaky", "1m")],
        // Run 0 cannot start, run 1 panics, run 2 passes through.
        runner(log.clone(), begin, |_, run| match run {
            0 => f64::NAN,
            1 => -1.0,
            _ => 1.0,
        }),
    );
    tokio::time::sleep(Duration::from_secs(130)).await;
    let text = encode(&running.registry);
    assert!(
        text.contains(r#"idlecut_check_runs_total{target="flaky",result="error"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"idlecut_check_runs_total{target="flaky",result="fail"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"idlecut_check_status{target="flaky",port="143",check="reachability"} 1"#),
        "{text}"
    );
    running.stop.send(true).expect("stop");
    running.task.await.expect("the scheduler stops");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_a_run_under_way() {
    /// Set when the run's future is dropped: its sockets would close then.
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dropped.clone();
    let endless: Runner = Arc::new(move |_| {
        let guard = Dropped(flag.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Err("never".to_owned())
        })
    });
    let running = start(vec![check("endless", "1h")], endless);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !dropped.load(std::sync::atomic::Ordering::SeqCst),
        "still running"
    );
    running.stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(1), running.task)
        .await
        .expect("the scheduler stops at once")
        .expect("without a panic");
    // The run's task is aborted, and dropped at its next poll.
    tokio::task::yield_now().await;
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the run was dropped"
    );
}
