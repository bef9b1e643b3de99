//! The Prometheus rules and the Grafana dashboard, proved without an agent (no root):
//!
//! - `promtool check rules` and `promtool test rules` on `dashboards/prometheus/`.
//! - The dashboard JSON's import contract: `${datasource}` everywhere, the template
//!   variables, unique panel ids.
//!
//! The same rules and dashboard against a real Prometheus scraping the agent:
//! `prometheus_live.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use idlecut_integration_tests::{Substitutions, dashboard, panels, rules_dir, substitute};
use serde_json::Value;

/// Runs a Prometheus tool, panicking with its output unless it succeeds.
fn run_tool(program: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "running {program}: {err}; install Debian's `prometheus` package (`./x test` does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {} failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    text
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let dir = rules_dir();
    let check = run_tool("promtool", &["check", "rules", "idlecut-rules.yml"], &dir);
    eprintln!("{check}");
    let test = run_tool(
        "promtool",
        &["test", "rules", "idlecut-rules.test.yml"],
        &dir,
    );
    eprintln!("{test}");
    assert!(test.contains("SUCCESS"), "{test}");
}

/// Every alert of the rules file has a promtool case that expects it to fire (the cases also
/// hold look-alike series that must not fire, checked by promtool itself).
#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let dir = rules_dir();
    let rules = fs::read_to_string(dir.join("idlecut-rules.yml")).expect("rules file");
    let tests = fs::read_to_string(dir.join("idlecut-rules.test.yml")).expect("rules tests");
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        // A test case that expects the alert: its alertname line followed by a non-empty
        // exp_alerts list.
        let fired = tests
            .split("alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(&format!("{alert}\n")))
            .any(|case| case.contains("exp_labels:") && !case.contains("exp_alerts: []"));
        assert!(fired, "no promtool test case fires {alert}");
    }
}

#[test]
fn dashboard_imports_without_a_datasource_uid() {
    let dash = dashboard();
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        (36..=41).contains(&schema),
        "schemaVersion {schema} is not of the Grafana 10/11 era"
    );
    assert!(dash["id"].is_null(), "a shared dashboard has id null");
    assert!(dash["uid"].as_str().is_some_and(|uid| !uid.is_empty()));
    let variables: BTreeMap<&str, &Value> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|var| (var["name"].as_str().expect("variable name"), var))
        .collect();
    for name in ["datasource", "instance", "service", "role", "path"] {
        assert!(variables.contains_key(name), "no ${name} variable");
    }
    assert_eq!(variables["datasource"]["type"], "datasource");
    assert_eq!(variables["datasource"]["query"], "prometheus");
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dash) {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} ({title}) is used twice");
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            assert!(!expr.is_empty(), "{title}: empty query");
            // Only variables the live check knows how to substitute.
            let rest = substitute(expr, &Substitutions::placeholder());
            assert!(!rest.contains('$'), "{title}: unknown variable in {expr}");
            queries += 1;
        }
    }
    for var in variables.values() {
        if var["type"] == "query" {
            assert_eq!(var["datasource"]["uid"], "${datasource}");
        }
    }
    assert!(queries >= 20, "{queries} queries");
}
