//! Rendering what was collected: Prometheus metrics over HTTP and the terminal summary.
pub mod http;
pub mod metrics;
pub mod pprof;
pub mod summary;
