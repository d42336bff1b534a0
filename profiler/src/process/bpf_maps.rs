//! The kernel memory a process's eBPF maps lock, as the kernel accounts it.

/// The sum of the `memlock` of every BPF map `pid` holds a descriptor of (what the kernel
/// charges for each map: for a table that allocates on demand, the entries it has so far);
/// `None` if its descriptors cannot be read.
pub fn locked_bytes(pid: u32) -> Option<u64> {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        descriptors
            .filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|link| link.to_string_lossy() == "anon_inode:bpf-map")
            })
            .filter_map(|fd| {
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .ok()?;
                info.lines()
                    .find_map(|line| line.strip_prefix("memlock:"))
                    .and_then(|value| value.trim().parse::<u64>().ok())
            })
            .sum(),
    )
}
