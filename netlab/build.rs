//! Embeds the eBPF object that `cargo xtask` built.
//!
//! xtask builds `netlab-ebpf` with nightly and bpf-linker and passes the
//! object's path in `NETLAB_EBPF_OBJECT`. Without it (plain `cargo check`,
//! `cargo clippy`, unprivileged `cargo test`) an empty placeholder is embedded,
//! as aya does, and the loader refuses to start with a message that says how to
//! build the real thing. This keeps bpf-linker out of the everyday edit loop.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=NETLAB_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("netlab-ebpf.o");
    let object = env::var_os("NETLAB_EBPF_OBJECT").filter(|p| !p.is_empty());
    let bytes = match object {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    println!(
                        "cargo:warning=NETLAB_EBPF_OBJECT={}: {err}; embedding an empty placeholder",
                        PathBuf::from(&path).display()
                    );
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    if let Err(err) = fs::write(&out, bytes) {
        panic!("cannot write {}: {err}", out.display());
    }
}
