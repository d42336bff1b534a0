//! Reading kernel maps and ring buffers into the model and the exporters.
pub mod alloc;
pub mod counters;
pub mod discovery;
pub mod governor;
pub mod maps;
pub mod native;
pub mod overhead;
pub mod stacks;
pub mod stw;
