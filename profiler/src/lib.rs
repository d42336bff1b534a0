//! mapscope's library: the data flows top to bottom through these modules.
//!
//! A Go binary is understood (`gobin`) and a native allocator found (`native`) → probes are
//! placed (`probes`) on a process (`process`) → the kernel counts and emits, events are read
//! (`collect`) → aggregated (`model`) → rendered (`export`). `session` strings one target
//! through all of it; `cli` is the front.
pub mod cli;
pub mod collect;
pub mod daemon;
pub mod duration;
pub mod error;
pub mod export;
mod fdwatch;
pub mod files;
pub mod gobin;
pub mod model;
pub mod native;
pub mod probes;
pub mod process;
pub mod session;
