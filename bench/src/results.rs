//! What a benchmark run measured, section by section, as the report and the JSON file read it.

use serde::{Serialize, Serializer};

use crate::{churn, kernel_cost, latency, overhead, scale, soak};

/// A section's result, or why it failed.
pub type Outcome<T> = Option<anyhow::Result<T>>;

#[derive(Serialize)]
pub struct Results {
    #[serde(serialize_with = "outcome")]
    pub kernel_cost: Outcome<kernel_cost::KernelCost>,
    #[serde(serialize_with = "outcome")]
    pub overhead: Outcome<overhead::Overhead>,
    #[serde(serialize_with = "outcome")]
    pub churn: Outcome<churn::Churn>,
    #[serde(serialize_with = "outcome")]
    pub scale: Outcome<scale::Scale>,
    #[serde(serialize_with = "outcome")]
    pub latency: Outcome<latency::Latency>,
    #[serde(serialize_with = "outcome")]
    pub soak: Outcome<soak::Soak>,
}

fn outcome<T: Serialize, S: Serializer>(value: &Outcome<T>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Failed {
        error: String,
    }
    match value {
        None => s.serialize_none(),
        Some(Ok(v)) => v.serialize(s),
        Some(Err(err)) => Failed {
            error: format!("{err:#}"),
        }
        .serialize(s),
    }
}
