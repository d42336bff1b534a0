//! What the machine must offer before anything is loaded: privileges and kernel features.
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error("missing capabilities {}", .missing.join(", "))]
    MissingCapabilities { missing: Vec<&'static str> },
    #[error("the kernel has no {feature} ({path} is missing)")]
    MissingKernelFeature { feature: &'static str, path: String },
    /// A real uprobe could not be created (on a function of mapscope's own).
    #[error(
        "the kernel refused to create a uprobe ({0}); kernels with the fix for CVE-2025-38466 \
         (6.16, and 6.15.7, 6.12.39, 6.6.99, 6.1.146, 5.15.189, 5.10.240 and later in their \
         lines) create uprobes for CAP_SYS_ADMIN only, whatever CAP_PERFMON says: grant \
         CAP_SYS_ADMIN"
    )]
    UprobeDenied(std::io::Error),
}

impl PartialEq for PreflightError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::MissingCapabilities { missing },
                Self::MissingCapabilities { missing: theirs },
            ) => missing == theirs,
            (
                Self::MissingKernelFeature { feature, path },
                Self::MissingKernelFeature {
                    feature: their_feature,
                    path: their_path,
                },
            ) => feature == their_feature && path == their_path,
            (Self::UprobeDenied(error), Self::UprobeDenied(theirs)) => {
                error.kind() == theirs.kind()
            }
            _ => false,
        }
    }
}

/// `PERF_FLAG_FD_CLOEXEC` (include/uapi/linux/perf_event.h).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A function of mapscope's own for the preflight's uprobe: never called, only probed.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn mapscope_preflight_probe_site() {
    // Something the optimizer keeps: a function of its own, at an instruction boundary.
    std::hint::black_box(());
}

/// The leading part of the kernel's `struct perf_event_attr` (include/uapi/linux/perf_event.h)
/// that a uprobe perf event uses; the kernel takes `size` bytes, the rest zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: `disabled`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// For the uprobe PMU: a pointer to the executable's path.
    config1: u64,
    /// For the uprobe PMU: the probed file offset.
    config2: u64,
    rest: [u64; 8],
}

/// Create, then remove, a real uprobe (disabled) on `mapscope_preflight_probe_site` in
/// mapscope's own executable, for this process only, the way aya attaches mapscope's probes
/// (the kernel's uprobe PMU): what the kernel really allows, where capability names mislead
/// (CAP_PERFMON no longer suffices since the CVE-2025-38466 fix). Nothing else is touched.
pub fn check_uprobe(sysfs: &Path) -> Result<(), PreflightError> {
    let kind: u32 = std::fs::read_to_string(sysfs.join("bus/event_source/devices/uprobe/type"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| PreflightError::MissingKernelFeature {
            feature: "uprobe support (CONFIG_UPROBE_EVENTS)",
            path: sysfs
                .join("bus/event_source/devices/uprobe/type")
                .display()
                .to_string(),
        })?;
    let address = mapscope_preflight_probe_site as *const () as usize as u64;
    // Where that code is in the file: from the mapping that holds it.
    let Ok(offset) = crate::process::memory::executable_offset(std::process::id(), address) else {
        // Cannot tell (an unusual /proc): the attach itself will say.
        return Ok(());
    };
    let path = c"/proc/self/exe";
    let attr = PerfEventAttr {
        kind,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        flags: 1,
        config1: path.as_ptr() as u64,
        config2: offset,
        ..PerfEventAttr::default()
    };
    // SAFETY: perf_event_open reads `attr` (valid, `size` bytes) and the NUL-terminated path
    // it points to; it returns a new file descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            libc::getpid(),
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => Err(PreflightError::UprobeDenied(error)),
            // Anything else is no verdict on privileges: the attach will say what it is.
            _ => Ok(()),
        };
    }
    // SAFETY: `fd` was just returned by the kernel and is owned here; closing removes the probe.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
    Ok(())
}

/// Where sysfs is mounted: `/sys`, or `MAPSCOPE_SYSFS_ROOT` (a container that mounts the
/// host's sysfs elsewhere).
pub fn sysfs_root() -> PathBuf {
    std::env::var_os("MAPSCOPE_SYSFS_ROOT").map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// The effective capability set of this process, from `/proc/self/status`.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Loading eBPF needs CAP_BPF, attaching uprobes CAP_PERFMON (CAP_SYS_ADMIN implies both);
/// reading another user's `/proc/PID/exe` needs CAP_SYS_PTRACE. Kernels with the fix for
/// CVE-2025-38466 also want CAP_SYS_ADMIN for the uprobes themselves: `check_uprobe` finds that
/// out for real.
pub fn check_capabilities(effective: u64, need_ptrace: bool) -> Result<(), PreflightError> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN is what works on every kernel (it stands for the other two); CAP_BPF with
    // CAP_PERFMON only where uprobes are not yet restricted to CAP_SYS_ADMIN, which
    // `check_uprobe` finds out.
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        missing.push("CAP_SYS_ADMIN");
    }
    if need_ptrace && !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities { missing })
    }
}

/// Uprobes need the kernel's uprobe PMU (CONFIG_UPROBE_EVENTS); mapscope's loader needs BTF.
pub fn check_kernel(sysfs: &Path) -> Result<(), PreflightError> {
    for (feature, relative) in [
        (
            "uprobe support (CONFIG_UPROBE_EVENTS)",
            "bus/event_source/devices/uprobe/type",
        ),
        (
            "BTF type information (CONFIG_DEBUG_INFO_BTF)",
            "kernel/btf/vmlinux",
        ),
    ] {
        let path = sysfs.join(relative);
        if !path.exists() {
            return Err(PreflightError::MissingKernelFeature {
                feature,
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_code_in_its_executable() {
        let address = mapscope_preflight_probe_site as *const () as usize as u64;
        let own = |address| crate::process::memory::executable_offset(std::process::id(), address);
        let offset = own(address).unwrap();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(offset < exe.len() as u64);
        assert!(own(0).is_err());
    }

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(
            check_capabilities(0, true),
            Err(PreflightError::MissingCapabilities {
                missing: vec!["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]
            })
        );
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert_eq!(check_capabilities(bpf_perfmon, false), Ok(()));
        assert_eq!(
            check_capabilities(1 << CAP_BPF, false),
            Err(PreflightError::MissingCapabilities {
                missing: vec!["CAP_SYS_ADMIN"]
            })
        );
        assert_eq!(
            check_capabilities(bpf_perfmon, true),
            Err(PreflightError::MissingCapabilities {
                missing: vec!["CAP_SYS_PTRACE"]
            })
        );
        assert_eq!(
            check_capabilities((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE), true),
            Ok(())
        );
    }

    #[test]
    fn kernel_features_are_looked_up_under_the_sysfs_root() {
        let root = tempfile::tempdir().unwrap();
        let error = check_kernel(root.path()).unwrap_err();
        assert!(error.to_string().contains("uprobe"), "{error}");
        std::fs::create_dir_all(root.path().join("bus/event_source/devices/uprobe")).unwrap();
        std::fs::write(
            root.path().join("bus/event_source/devices/uprobe/type"),
            "9\n",
        )
        .unwrap();
        let error = check_kernel(root.path()).unwrap_err();
        assert!(error.to_string().contains("BTF"), "{error}");
        std::fs::create_dir_all(root.path().join("kernel/btf")).unwrap();
        std::fs::write(root.path().join("kernel/btf/vmlinux"), "").unwrap();
        assert_eq!(check_kernel(root.path()), Ok(()));
    }
}
