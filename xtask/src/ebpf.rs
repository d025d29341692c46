//! Builds the eBPF object the way aya-build 0.2 does from a build script
//! (`rustup run nightly cargo build ... -Z build-std=core` with BTF rustflags),
//! but from xtask, so everyday `cargo check` never needs nightly or bpf-linker.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use crate::{process::Cmd, toolchain};

const PACKAGE: &str = "netlab-ebpf";
/// The bin target of [`PACKAGE`]; the object file is named after it.
const BIN: &str = "netlab";
const TARGET: &str = "bpfel-unknown-none";

/// Where the object lands: `<workspace>/target/bpf/bpfel-unknown-none/release/netlab`.
pub fn object_path(workspace: &Path) -> PathBuf {
    target_dir(workspace).join(TARGET).join("release").join(BIN)
}

/// Installs what is missing, builds the object and returns its absolute path.
pub fn build(workspace: &Path) -> Result<PathBuf> {
    toolchain::ensure(&[toolchain::EBPF_TOOLCHAIN])?;
    let cmd = nightly_cargo(workspace, "build");
    eprintln!("xtask: building the eBPF object: {cmd}");
    cmd.run()?;
    let object = object_path(workspace);
    if !object.is_file() {
        bail!("`{cmd}` succeeded but did not produce {}", object.display());
    }
    Ok(object)
}

/// Lints the eBPF crate for the target it is built for (on the host it is
/// not a valid `no_std` binary, so `cargo clippy --workspace` skips it).
pub fn clippy(workspace: &Path) -> Result<()> {
    toolchain::ensure(&[toolchain::EBPF_TOOLCHAIN])?;
    let cmd = nightly_cargo(workspace, "clippy").args(["--", "-D", "warnings"]);
    eprintln!("xtask: linting the eBPF crate: {cmd}");
    cmd.run()
}

fn target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("bpf")
}

/// `rustup run nightly cargo SUBCOMMAND` for the BPF target, with aya-build's
/// flags and without the outer cargo's environment.
fn nightly_cargo(workspace: &Path, subcommand: &str) -> Cmd {
    let cmd = Cmd::new("rustup")
        .args(["run", "nightly", "cargo", subcommand])
        .args([
            "--package",
            PACKAGE,
            "--bins",
            "--release",
            "--target",
            TARGET,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(target_dir(workspace))
        .current_dir(workspace);
    let cmd = env::vars_os()
        .map(|(key, _)| key)
        .filter(|key| leaks_from_outer_cargo(key))
        .fold(cmd, Cmd::env_remove);
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        encoded_rustflags(bpf_target_arch()),
    )
}

/// The architecture whose kernel headers aya-ebpf targets (`bpf_target_arch`):
/// the host's, as aya-build derives it, since netlab loads on the machine it
/// was built on.
fn bpf_target_arch() -> &'static str {
    match env::consts::ARCH {
        arch if arch.starts_with("riscv64") => "riscv64",
        arch => arch,
    }
}

/// aya-build's rustflags, in cargo's encoding: separated by 0x1f, so a flag
/// may contain spaces. Plus one of netlab's own: bpf-linker's default
/// `--bpf-expand-memcpy-in-order` turns LLVM's inline expansion of memset
/// off (it keeps only memcpy's, in order), so every zeroed struct and
/// padding array became a call to a byte-by-byte `memset`, on every
/// packet; `--disable-expand-memcpy-in-order` lets LLVM expand both into
/// plain stores.
fn encoded_rustflags(bpf_target_arch: &str) -> String {
    [
        format!("--cfg=bpf_target_arch=\"{bpf_target_arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Clink-arg=--disable-expand-memcpy-in-order".to_owned(),
    ]
    .join("\x1f")
}

/// Variables `cargo xtask` (stable cargo, through rustup) leaves in our
/// environment that would steer the nightly build: rustup's toolchain choice,
/// the compiler and its wrapper (aya-build removes `RUSTC` and
/// `RUSTC_WORKSPACE_WRAPPER`), and the `CARGO_*` that cargo sets for the
/// process it runs or that override the build's target, flags or output.
/// The user's cargo settings for the network, registries and the terminal
/// stay.
fn leaks_from_outer_cargo(key: &OsStr) -> bool {
    const KEPT_CARGO_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_BUILD_JOBS",
    ];
    let Some(key) = key.to_str() else {
        return false;
    };
    match key {
        "RUSTUP_TOOLCHAIN"
        | "RUSTUP_TOOLCHAIN_SOURCE"
        | "RUSTC"
        | "RUSTC_WORKSPACE_WRAPPER"
        | "CARGO" => true,
        key if key.starts_with("CARGO_") => !KEPT_CARGO_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn removed(keys: &[&str]) -> Vec<OsString> {
        keys.iter()
            .map(OsString::from)
            .filter(|key| leaks_from_outer_cargo(key))
            .collect()
    }

    #[test]
    fn rustflags_match_aya_build() {
        assert_eq!(
            encoded_rustflags("x86_64"),
            "--cfg=bpf_target_arch=\"x86_64\"\u{1f}-Cdebuginfo=2\u{1f}-Clink-arg=--btf\u{1f}\
             -Clink-arg=--disable-expand-memcpy-in-order"
        );
    }

    #[test]
    fn strips_the_outer_cargo_but_keeps_user_settings() {
        assert_eq!(
            removed(&[
                "RUSTUP_TOOLCHAIN",
                "RUSTC",
                "RUSTC_WORKSPACE_WRAPPER",
                "CARGO",
                "CARGO_MANIFEST_DIR",
                "CARGO_PKG_NAME",
                "CARGO_TARGET_DIR",
                "CARGO_ENCODED_RUSTFLAGS",
                "CARGO_BUILD_TARGET",
                "CARGO_HOME",
                "CARGO_NET_OFFLINE",
                "CARGO_TERM_COLOR",
                "RUSTUP_HOME",
                "PATH",
                "HOME",
            ]),
            [
                "RUSTUP_TOOLCHAIN",
                "RUSTC",
                "RUSTC_WORKSPACE_WRAPPER",
                "CARGO",
                "CARGO_MANIFEST_DIR",
                "CARGO_PKG_NAME",
                "CARGO_TARGET_DIR",
                "CARGO_ENCODED_RUSTFLAGS",
                "CARGO_BUILD_TARGET",
            ]
        );
    }

    #[test]
    fn the_build_command_is_aya_builds() {
        let workspace = Path::new("/w");
        let line = nightly_cargo(workspace, "build").to_string();
        assert!(
            line.ends_with(
                "rustup run nightly cargo build --package netlab-ebpf --bins --release \
                 --target bpfel-unknown-none -Z build-std=core --target-dir /w/target/bpf"
            ),
            "{line}"
        );
        assert_eq!(
            object_path(workspace),
            Path::new("/w/target/bpf/bpfel-unknown-none/release/netlab")
        );
    }
}
