//! idlecut's core: what the agent knows and how it reasons, as pure code (no I/O, no async
//! runtime, no aya), so that every rule is unit-testable.
//!
//! Data flows one way through it: `events` (typed kernel facts, made by `idlecut-kernel`) and
//! `scan` (what a socket table scan found) -> `model` (the connection lifecycle) -> `paths`
//! (the path table) -> `inference` (cut-offs, verdicts), `metrics` (the Prometheus families),
//! `cuts` (the log of recent cuts) and `view` (the per-connection view).

pub mod cluster;
pub mod cuts;
pub mod duration_text;
pub mod events;
pub mod inference;
pub mod listing;
pub mod metrics;
pub mod model;
pub mod node;
pub mod own;
pub mod paths;
pub mod scan;
pub mod settings;
pub mod view;
