//! The repository's Prometheus rules and Grafana dashboard, as the tests read them: where they
//! are, every panel of the dashboard, and its queries with Grafana's variables substituted.

use std::{fs, path::PathBuf};

use serde_json::Value;

/// The repository's root directory (the tests crate's parent).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

/// `dashboards/prometheus/`: the rules file and its promtool unit tests.
pub fn rules_dir() -> PathBuf {
    repo_root().join("dashboards/prometheus")
}

/// The Grafana overview dashboard (`dashboards/grafana/idlecut-overview.json`), parsed.
pub fn dashboard() -> Value {
    let path = repo_root().join("dashboards/grafana/idlecut-overview.json");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: bad JSON: {err}", path.display()))
}

/// Every panel, rows' nested panels included.
pub fn panels(dash: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Values for Grafana's variables in the live check.
pub struct Substitutions {
    pub instance: String,
    pub range_s: u64,
}

impl Substitutions {
    /// Any values: what a check that runs no query substitutes.
    pub fn placeholder() -> Self {
        Self {
            instance: "x".to_owned(),
            range_s: 60,
        }
    }
}

/// `expr` with the dashboard's variables replaced by `subs` ("All" where a variable
/// selects).
pub fn substitute(expr: &str, subs: &Substitutions) -> String {
    // Longest names first: $__rate_interval before $__interval and $__range_s before $__range.
    let range = format!("{}s", subs.range_s);
    let range_s = subs.range_s.to_string();
    let pairs: [(&str, &str); 11] = [
        ("$__rate_interval", "10s"),
        ("$__interval", "2s"),
        ("$__range_s", &range_s),
        ("$__range", &range),
        ("${instance}", &subs.instance),
        ("$instance", &subs.instance),
        // "All" of a variable is its allValue, `.*`.
        ("$service", ".*"),
        ("$role", ".*"),
        ("$path", ".*"),
        ("${datasource}", ""),
        ("$datasource", ""),
    ];
    let mut out = expr.to_owned();
    for (name, value) in pairs {
        out = out.replace(name, value);
    }
    out
}
