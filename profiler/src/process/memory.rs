//! Reading (never writing) a target's memory.
use std::io;

/// Read `buffer.len()` bytes at `address` in process `pid` (process_vm_readv: no ptrace stop,
/// no write access needed or used).
pub fn read(pid: u32, address: u64, buffer: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: buffer.len(),
    };
    // SAFETY: `local` describes our own writable buffer of exactly that length; the kernel
    // checks `remote` against the target's address space and fails cleanly if it is unmapped.
    let read = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    match usize::try_from(read) {
        Ok(count) if count == buffer.len() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short read of target memory",
        )),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// The kernel's limit on iovecs per `process_vm_readv` call (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// Read many (address, buffer) pieces in as few system calls as the kernel allows. Fails if any
/// piece cannot be read whole.
pub fn read_many(pid: u32, pieces: &mut [(u64, &mut [u8])]) -> io::Result<()> {
    for batch in pieces.chunks_mut(MAX_IOVECS) {
        let mut local = Vec::with_capacity(batch.len());
        let mut remote = Vec::with_capacity(batch.len());
        let mut wanted = 0usize;
        for (address, buffer) in batch.iter_mut() {
            wanted += buffer.len();
            remote.push(libc::iovec {
                iov_base: *address as *mut libc::c_void,
                iov_len: buffer.len(),
            });
            local.push(libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: buffer.len(),
            });
        }
        // SAFETY: every local iovec describes one of our own writable buffers of exactly that
        // length, borrowed for the call; the kernel checks the remote ones against the target's
        // address space and stops at the first it cannot read.
        let read = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        match usize::try_from(read) {
            Ok(count) if count == wanted => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short read of target memory",
                ));
            }
            Err(_) => return Err(io::Error::last_os_error()),
        }
    }
    Ok(())
}

pub fn read_i64(pid: u32, address: u64) -> io::Result<i64> {
    let mut bytes = [0u8; 8];
    read(pid, address, &mut bytes)?;
    Ok(i64::from_le_bytes(bytes))
}

/// Where the executable's first mapping starts in the target: the load bias of a PIE is this
/// minus the lowest loadable address of the file (0 for Go PIEs).
pub fn executable_base(pid: u32) -> io::Result<u64> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
    maps.lines()
        .find(|line| {
            line.trim_end()
                .trim_end_matches(" (deleted)")
                .ends_with(exe)
        })
        .and_then(|line| line.split('-').next())
        .and_then(|start| u64::from_str_radix(start, 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "executable not in /proc/PID/maps"))
}

/// Where `address` of process `pid` is in the process's executable file (its offset in the
/// file), from the mapping of `/proc/PID/maps` that holds it; an error if no mapping of the
/// executable does.
pub fn executable_offset(pid: u32, address: u64) -> io::Result<u64> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            let offset = u64::from_str_radix(fields.nth(1)?, 16).ok()?;
            let path = fields.nth(2)?;
            (start <= address && address < end && std::path::Path::new(path) == exe)
                .then(|| address - start + offset)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no mapping of PID {pid}'s executable holds {address:#x}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let value: i64 = 0x1122_3344_5566_7788;
        let address = &value as *const i64 as u64;
        assert_eq!(read_i64(std::process::id(), address).unwrap(), value);
        assert!(
            read_i64(std::process::id(), 8).is_err(),
            "page zero is never mapped"
        );
        assert!(executable_base(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn reads_many_pieces_across_batches() {
        let values: Vec<u64> = (0..3000).map(|i| i * 3 + 1).collect();
        let mut buffers = vec![[0u8; 8]; values.len()];
        let mut pieces: Vec<(u64, &mut [u8])> = buffers
            .iter_mut()
            .zip(&values)
            .map(|(buffer, value)| (value as *const u64 as u64, &mut buffer[..]))
            .collect();
        read_many(std::process::id(), &mut pieces).unwrap();
        for (buffer, value) in buffers.iter().zip(&values) {
            assert_eq!(u64::from_le_bytes(*buffer), *value);
        }
        let mut bad = [0u8; 8];
        let mut good = [0u8; 8];
        let mut pieces: Vec<(u64, &mut [u8])> =
            vec![(values.as_ptr() as u64, &mut good[..]), (8, &mut bad[..])];
        assert!(read_many(std::process::id(), &mut pieces).is_err());
    }
}
