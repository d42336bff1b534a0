//! Target processes: finding them, holding on to them (pidfd, so a reused PID is never
//! mistaken for the target), launching them stopped, and noticing when they exit.
pub mod bpf_maps;
pub mod cpu;
pub mod gomap;
pub mod gotype;
pub mod launch;
pub mod memory;
pub mod pidfd;
pub mod vitals;
