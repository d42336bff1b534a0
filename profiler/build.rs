//! Builds the kernel programs (`profiler-ebpf`) with the nightly toolchain and bpf-linker, so
//! that `cargo build -p profiler` always embeds an eBPF object matching its sources.
//! `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const EBPF_PACKAGE: &str = "profiler-ebpf";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
