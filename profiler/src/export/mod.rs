//! Rendering what was collected: Prometheus metrics over HTTP and the terminal summary.
pub mod heatmap;
pub mod http;
pub mod map_metrics;
pub mod metrics;
pub mod native_metrics;
pub mod overhead;
pub mod pprof;
pub mod summary;
pub mod vitals;
pub mod webconfig;
