//! The words and answers of idlecut's HTTP API and metrics, in one place for the agent that
//! gives them and for the tests and the benchmark that read them.

pub mod connections;
pub mod cuts;
pub mod paths;
pub mod vocabulary;
