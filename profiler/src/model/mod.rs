//! Pure aggregation: what the collected events mean, with no I/O and no kernel in sight.
pub mod alloc;
pub mod governor;
pub mod histogram;
pub mod maps;
pub mod overhead;
pub mod pause;
pub mod reason;
pub mod sites;
pub mod spread;
pub mod vitals;
