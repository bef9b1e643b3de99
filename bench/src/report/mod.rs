//! The summary: one row per measurement, with idlecut's number, its baseline's, their ratio
//! (median and range over rounds), the target and whether it was met. Printed as a table and
//! kept in the JSON results.
//!
//! `sections` turns each measurement's results into its rows; `render` prints rows and the
//! kernel cost as text.

mod render;
mod sections;

use serde::Serialize;

pub use self::render::{kernel_detail, table};
use self::sections::{
    churn_rows, kernel_rows, latency_added_rows, scale_and_latency_rows, soak_rows, traffic_rows,
};
use crate::{kernel::HookKind, results::Results, stats::Spread};

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub unit: &'static str,
    /// idlecut's number (median over rounds).
    pub idlecut: f64,
    /// The baseline's number, measured in the same run.
    pub baseline: f64,
    pub baseline_is: String,
    /// idlecut / baseline, per round.
    pub ratio: Option<Spread>,
    pub target: String,
    /// None: no target, for information.
    pub met: Option<bool>,
}

impl Row {
    /// Whether the row holds numbers (what the smoke mode checks).
    pub fn is_measured(&self) -> bool {
        self.idlecut.is_finite()
            && self.baseline.is_finite()
            && self.ratio.is_none_or(|r| r.is_measured())
    }
}

fn row(
    section: &'static str,
    measure: impl Into<String>,
    unit: &'static str,
    idlecut: f64,
    (baseline, baseline_is): (f64, &str),
    ratio: Option<Spread>,
) -> Row {
    Row {
        section,
        measure: measure.into(),
        unit,
        idlecut,
        baseline,
        baseline_is: baseline_is.to_owned(),
        ratio,
        target: String::new(),
        met: None,
    }
}

impl Row {
    fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.target = note.into();
        self
    }
}

pub fn rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(Ok(k)) = &results.kernel_cost {
        kernel_rows(k, &mut rows);
    }
    if let Some(Ok(o)) = &results.overhead {
        latency_added_rows(o, &mut rows);
        traffic_rows(o, &mut rows);
    }
    if let Some(Ok(c)) = &results.churn {
        for hooks in HookKind::ALL {
            if let Some(of_kind) = c.by_hooks.get(hooks.label()) {
                churn_rows(c, hooks, of_kind, &mut rows);
            }
        }
    }
    scale_and_latency_rows(results, &mut rows);
    if let Some(Ok(s)) = &results.soak {
        soak_rows(s, &mut rows);
    }
    rows
}
