//! What the machine must offer before anything is loaded: privileges and kernel features.
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("missing capabilities {}", .missing.join(", "))]
    MissingCapabilities { missing: Vec<&'static str> },
    #[error("the kernel has no {feature} ({path} is missing)")]
    MissingKernelFeature { feature: &'static str, path: String },
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
/// reading another user's `/proc/PID/exe` needs CAP_SYS_PTRACE.
pub fn check_capabilities(effective: u64, need_ptrace: bool) -> Result<(), PreflightError> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || admin) {
        missing.push("CAP_PERFMON");
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
                missing: vec!["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
            })
        );
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert_eq!(check_capabilities(bpf_perfmon, false), Ok(()));
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
