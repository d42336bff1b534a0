//! Registering file descriptors that mapscope owns (pidfds, ring buffers) with tokio.
use std::{io, os::fd::AsRawFd};

use tokio::io::{Interest, unix::AsyncFd};

/// Wait for `inner` to turn readable from async code. Needs a tokio runtime.
///
/// Only for types that own their file descriptor for their whole life and always report the
/// same one (`OwnedFd`, aya's `RingBuf<MapData>`, `EbpfLogger`): that is the contract tokio's
/// `register_with_interest` asks for.
pub fn readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: per this function's contract, `inner` owns its descriptor, keeps it open until it
    // is dropped (which the AsyncFd does first), and never swaps it for another.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}
