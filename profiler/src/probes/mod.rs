//! Which uprobes go where, and attaching them: checks that the machine can run them
//! (`preflight`), the plan computed from the binary (`stw`), and the loaded eBPF object.
pub mod alloc;
pub mod loaded;
pub mod maps;
pub mod preflight;
pub mod stw;
