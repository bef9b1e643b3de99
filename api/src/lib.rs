//! The words and answers of idlecut's HTTP API and metrics, in one place for the agent that
//! gives them and for the tests and the benchmark that read them.

pub mod connections;
pub mod cuts;
pub mod host;
pub mod paths;
pub mod pods;
pub mod vocabulary;
