//! Harness for idlecut's kernel integration tests: network namespaces that clean up after
//! themselves, a client / router / server topology joined by veth pairs, the real agent binary
//! running with its eBPF programs, and a scraper for its `/metrics`.
//!
//! Tests panic with context rather than return errors, so a failure says where it happened.
//! Everything is re-exported at the root: tests import `idlecut_integration_tests::{...}`.

mod agent;
mod containerd;
mod dashboards;
mod http;
pub mod mail;
mod pods;
mod prometheus;
mod sockets;
mod system;
mod topology;
/// The agent's HTTP side: TLS clients, a test PKI, agents with a web config or an open-files
/// limit (`web::Launch`).
pub mod web;

/// The agent's answer types and words, for typed reads of its API.
pub use idlecut_api as api;

pub use self::{
    agent::*, containerd::*, dashboards::*, http::*, pods::*, prometheus::*, sockets::*, system::*,
    topology::*,
};
