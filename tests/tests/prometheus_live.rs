//! The Prometheus rules and the Grafana dashboard, proved against the real thing: a live check
//! (root). A real Prometheus (the Debian package's binary, on a loopback port) scrapes the
//! agent every second, over TLS with a bearer token (README's scrape config; the agent answers
//! 401 without it), and evaluates the rules file while the namespaces play a middlebox that
//! black-holes IPv4 flows idle for more than 3 s and lets IPv6 through. The REQ-5 alert must
//! fire for the cut path and not for the compliant one, and every panel query of the dashboard
//! must return data, but for the short list below.
//!
//! What needs no agent (promtool on the rules, the dashboard's import contract) is
//! `prometheus.rs`'s part.

mod prometheus_server;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use idlecut_integration_tests::{
    Substitutions, Topology, abort,
    api::cuts::CutsResponse,
    close_gracefully, connect, dashboard, exchange, icmp_probe_attached, listen, panels,
    require_root, set_keepalive, set_user_timeout, substitute,
    web::{Launch, TestPki},
};
use prometheus_server::{Prometheus, now, url_encode};
use serde_json::Value;

/// Dashboard panels whose queries may return no data in the live scenario, and why. Any other
/// panel without data fails the test. Keep it short: each entry is a gap in the proof.
const PANELS_WITHOUT_DATA: [(&str, &str); 3] = [
    (
        // The scenario black-holes silently, so no ICMP error comes back (tests/tests/icmp.rs
        // proves the soft-error half of this panel's data on this kernel; its type and code
        // half needs fentry:tcp_v4_err, which the CI sandbox kernel refuses).
        "ICMP errors received",
        "the black hole sends no ICMP (see tests/tests/icmp.rs)",
    ),
    // This agent has no [[check]]; tests/tests/check_idle_cutoff.rs runs one and checks that
    // every idlecut_check_* series these panels query is exported. (The passive half of the
    // first panel has data here.)
    (
        "Cut-off: scheduled checks against the passive estimate of client paths",
        "no scheduled check in this scenario (see tests/tests/check_idle_cutoff.rs)",
    ),
    (
        "Scheduled checks: each row of the last run",
        "no scheduled check in this scenario (see tests/tests/check_idle_cutoff.rs)",
    ),
];

/// Dashboard panels whose queries may return only zeros: nothing the scenario does should
/// raise them.
const PANELS_OF_ZEROS: [(&str, &str); 1] = [(
    "Events lost and skipped",
    "a healthy agent loses, skips and evicts nothing",
)];

/// The router's conntrack idle timeout, and the silences before the client speaks again.
const TIMEOUT_S: u32 = 3;
const GAPS_MS: [u64; 2] = [4500, 5000];
/// How long a black-holed sender retransmits before its kernel gives up.
const USER_TIMEOUT_MS: u32 = 2000;

/// What a query returned: nothing a panel draws (no series, or only NaN, as
/// histogram_quantile gives over no observations), only zeros, or something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    None,
    Zeros,
    Values,
}

fn data_of(result: &[Value]) -> Data {
    let samples: Vec<f64> = result
        .iter()
        .flat_map(|series| match series["values"].as_array() {
            Some(values) => values.clone(),
            None => vec![series["value"].clone()],
        })
        .filter_map(|pair| pair[1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .filter(|v| v.is_finite())
        .collect();
    if samples.is_empty() {
        Data::None
    } else if samples.iter().all(|v| *v == 0.0) {
        Data::Zeros
    } else {
        Data::Values
    }
}

/// One connection: an exchange, a silence of `gap_ms`, then the client speaks. Through the
/// black hole the client's connection dies; through the compliant path the server hears it.
fn idle_then_client_speaks(mut client: TcpStream, mut server: TcpStream, gap_ms: u64, cut: bool) {
    thread::sleep(Duration::from_millis(gap_ms));
    client
        .write_all(b"* OK Still here\r\n")
        .expect("the write itself is accepted locally");
    let mut buf = [0u8; 64];
    if cut {
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        let result = client.read(&mut buf);
        assert!(
            result.is_err(),
            "after {gap_ms} ms through the black hole: expected the connection to die, read {result:?}"
        );
        abort(client);
        abort(server);
    } else {
        let n = server.read(&mut buf).expect("the server hears it");
        assert_eq!(&buf[..n], b"* OK Still here\r\n");
        thread::sleep(Duration::from_millis(100));
        close_gracefully(client, server);
    }
}

#[test]
fn live_prometheus_fires_req5_for_the_cut_path_only_and_every_panel_has_data() {
    require_root();
    let started = now();
    let net = Topology::new();
    // IPv4 through a middlebox that black-holes flows idle for more than 3 s; IPv6 through the
    // same conntrack, but its invalid packets are let through: a compliant path.
    net.router_conntrack(TIMEOUT_S, false);
    net.router_rules("meta nfproto ipv4 ct state invalid drop");
    // Socket tables read every second, so that the keepalive audit sees the idle connections.
    // The agent serves TLS and asks for a token (issue 14): Prometheus presents both.
    let pki = TestPki::new("prometheus-pki");
    pki.write("token", "prometheus-scrape-token\n");
    let web_config = pki.write(
        "web.toml",
        "bearer_token_file = \"token\"\n[tls_server_config]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n",
    );
    let agent = Launch::new(&[
        "--min-idle-gap",
        "1s",
        "--scan-interval",
        "1s",
        "--web-config",
        web_config.to_str().expect("utf-8 path"),
    ])
    .client(pki.client().bearer("prometheus-scrape-token"))
    .start();
    let (status, body) = pki
        .client()
        .get(agent.addr, "/metrics")
        .expect("GET /metrics without a token");
    assert_eq!(status, 401, "{body}");
    let prometheus = Prometheus::start(agent.addr, &pki);
    let instance = agent.addr.to_string();
    let context = |what: &str| {
        format!(
            "{what}\nprometheus log:\n{}\nagent log:\n{}",
            prometheus.log_text(),
            agent.log_text()
        )
    };

    // Scraping, and long enough before the cuts that the rules' new-series branch (`offset`
    // LIVE_WINDOW) sees this agent's earlier scrapes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus
        .query(&format!("up{{instance=\"{instance}\"}} == 1"), now())
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            context("prometheus never scraped the agent")
        );
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(8));

    let imap4 = listen(&net.server, "0.0.0.0:143");
    let imap6 = listen(&net.server, "[::]:993");
    let target4 = format!("{}:143", net.server_v4());
    let target6 = format!("[{}]:993", net.server_v6());
    let mut scripts = Vec::new();
    for (listener, target, cut) in [(&imap4, &target4, true), (&imap6, &target6, false)] {
        for gap in GAPS_MS {
            let (mut client, mut server) = connect(&net.client, listener, target);
            set_user_timeout(&client, USER_TIMEOUT_MS);
            set_user_timeout(&server, USER_TIMEOUT_MS);
            if !cut && gap == GAPS_MS[1] {
                // Keepalive after a minute: below RFC 1122's 2 hours, for the keepalive panel
                // (the audit sees it once a scan finds the connection idle).
                set_keepalive(&client, 60);
            }
            exchange(&mut client, &mut server);
            scripts.push((client, server, gap, cut));
        }
    }
    thread::scope(|scope| {
        for (client, server, gap, cut) in scripts {
            scope.spawn(move || idle_then_client_speaks(client, server, gap, cut));
        }
    });
    let (cut_path, ok_path) = (net.server_path_v4(), net.server_path_v6());
    agent.wait_for_path("imap", "client", &cut_path, "two blackhole cuts", |r| {
        r["cuts"]["blackhole"] == 2 && r["verdict"] == "violates_req5"
    });
    let ok = agent.wait_for_path("imaps", "client", &ok_path, "two survived gaps", |r| {
        r["survived_gaps"] == 2
    });
    assert_ne!(ok["verdict"], "violates_req5", "{ok:#}");

    // Each cut's exemplar in Prometheus names a connection that /api/v1/cuts lists: from a
    // bucket in Grafana to the cut, its process and its time.
    let log: CutsResponse = agent.api(&format!(
        "/api/v1/cuts?service=imap&role=client&path={}",
        url_encode(&cut_path)
    ));
    assert_eq!(log.total, 2, "{log:#?}");
    let logged: BTreeSet<(String, String)> = log
        .cuts
        .iter()
        .map(|cut| (cut.local.clone(), cut.remote.clone()))
        .collect();
    let selector = format!("idlecut_idle_before_cut_seconds_bucket{{path=\"{cut_path}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exemplars = loop {
        let data = prometheus.api(&format!(
            "/api/v1/query_exemplars?query={}&start={started:.3}&end={:.3}",
            url_encode(&selector),
            now() + 1.0
        ));
        let exemplars: Vec<Value> = data
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .collect();
        if !exemplars.is_empty() {
            break exemplars;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            context(&format!("no exemplars for {selector} within 20 s"))
        );
        thread::sleep(Duration::from_millis(500));
    };
    eprintln!("exemplars: {exemplars:#?}\n/api/v1/cuts: {logged:#?}");
    for exemplar in &exemplars {
        let labels = &exemplar["labels"];
        let connection = (
            labels["local"].as_str().unwrap_or_default().to_owned(),
            labels["remote"].as_str().unwrap_or_default().to_owned(),
        );
        assert!(
            logged.contains(&connection),
            "exemplar {exemplar} is not a cut /api/v1/cuts lists: {logged:#?}"
        );
    }

    // The REQ-5 alert fires for the cut path.
    let req5 = "IdlecutPathCutsIdleConnectionsBelowReq5";
    let deadline = Instant::now() + Duration::from_secs(30);
    let firing = loop {
        let alerts = prometheus.alerts();
        if let Some(alert) = alerts.iter().find(|a| {
            a["labels"]["alertname"] == req5
                && a["labels"]["path"] == cut_path.as_str()
                && a["state"] == "firing"
        }) {
            break alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            context(&format!(
                "{req5} did not fire for {cut_path} within 30 s; alerts: {alerts:#?}"
            ))
        );
        thread::sleep(Duration::from_millis(500));
    };
    eprintln!("firing: {firing:#}");
    assert_eq!(firing["labels"]["service"], "imap");
    assert_eq!(firing["labels"]["role"], "client");
    let description = firing["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains(&format!("Agents that see it: {instance}."))
            && !description.contains("error expanding"),
        "{description}"
    );
    // ... and not for the compliant path, whose verdict Prometheus did see.
    let ok_verdict = prometheus.query(
        &format!("idlecut_path_req5_violation{{path=\"{ok_path}\"}}"),
        now(),
    );
    assert!(
        !ok_verdict.is_empty() && ok_verdict.iter().all(|s| s["value"][1] == "0"),
        "{}",
        context(&format!("verdict of {ok_path}: {ok_verdict:?}"))
    );
    let compliant: Vec<Value> = prometheus
        .alerts()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == req5 && a["labels"]["path"] == ok_path.as_str())
        .collect();
    assert!(compliant.is_empty(), "{compliant:#?}");

    // Every panel query, with the dashboard's variables as a user would have them (this agent,
    // all services, roles and paths), over the test's time range.
    thread::sleep(Duration::from_secs(2));
    let end = now();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive number of seconds"
    )]
    let range_s = (end - started).ceil() as u64;
    let subs = Substitutions {
        instance: instance.clone(),
        range_s,
    };
    let dash = dashboard();
    let mut report = Vec::new();
    let mut missing = Vec::new();
    for panel in panels(&dash) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default();
        let excused = PANELS_WITHOUT_DATA
            .iter()
            .find(|(excused, _)| *excused == title);
        let zeros_ok = PANELS_OF_ZEROS.iter().find(|(panel, _)| *panel == title);
        for target in panel["targets"].as_array().expect("targets") {
            let expr = substitute(target["expr"].as_str().expect("expr"), &subs);
            let result = if target["instant"] == true {
                prometheus.query(&expr, end)
            } else {
                prometheus.query_range(&expr, started, end)
            };
            let refid = target["refId"].as_str().unwrap_or("?");
            let verdict = match (data_of(&result), excused, zeros_ok) {
                (Data::Values, None, _) => "data".to_owned(),
                (Data::Zeros, None, Some((_, why))) => format!("only zeros, expected: {why}"),
                (Data::Zeros, None, None) => {
                    missing.push(format!("{title} / {refid} (only zeros): {expr}"));
                    "ONLY ZEROS".to_owned()
                }
                (Data::Values | Data::Zeros, Some(_), _) => {
                    "data (listed in PANELS_WITHOUT_DATA: remove it from the list)".to_owned()
                }
                (Data::None, Some((_, why)), _) => format!("no data, expected: {why}"),
                (Data::None, None, _) => {
                    missing.push(format!("{title} / {refid}: {expr}"));
                    "NO DATA".to_owned()
                }
            };
            report.push(format!("{title} / {refid}: {verdict}"));
        }
    }
    // The template variables' own queries list this agent's values.
    for var in dash["templating"]["list"].as_array().expect("variables") {
        let Some(query) = var["query"].as_str().filter(|_| var["type"] == "query") else {
            continue;
        };
        let name = var["name"].as_str().unwrap_or_default();
        let inner = substitute(query, &subs);
        let (selector, label) = inner
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|rest| rest.rsplit_once(','))
            .unwrap_or_else(|| panic!("${name}: not a label_values() query: {query}"));
        let series = prometheus.api(&format!(
            "/api/v1/series?match[]={}&start={started:.3}&end={end:.3}",
            url_encode(selector.trim())
        ));
        let values: BTreeSet<&str> = series
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|s| s[label.trim()].as_str())
                    .collect()
            })
            .unwrap_or_default();
        report.push(format!("${name}: {values:?}"));
        if values.is_empty() {
            missing.push(format!("variable ${name}: {query}"));
        }
    }
    // Which alerts fired during the scenario.
    let fired: BTreeSet<String> = prometheus
        .query_range("ALERTS{alertstate=\"firing\"}", started, end)
        .iter()
        .map(|s| {
            let m = &s["metric"];
            format!(
                "{} {} {} {}",
                m["alertname"].as_str().unwrap_or_default(),
                m["service"].as_str().unwrap_or_default(),
                m["role"].as_str().unwrap_or_default(),
                m["path"].as_str().unwrap_or_default()
            )
        })
        .collect();
    eprintln!(
        "panel queries (instance {instance}, {range_s} s):\n  {}\nalerts that fired: {fired:#?}\nfentry ICMP probe attached: {}",
        report.join("\n  "),
        icmp_probe_attached(&agent.scrape())
    );
    assert!(
        missing.is_empty(),
        "{}",
        context(&format!(
            "queries without data (add a panel to PANELS_WITHOUT_DATA or PANELS_OF_ZEROS only with a reason):\n{}",
            missing.join("\n")
        ))
    );
    assert!(
        fired.contains(&format!("IdlecutBlackholeCuts imap client {cut_path}")),
        "{}",
        context(&format!(
            "the black-hole alert did not fire for {cut_path}: {fired:#?}"
        ))
    );
}
