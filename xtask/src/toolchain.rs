//! The tools xtask needs, checked before use and installed when missing.
//!
//! Each tool is one [`Prerequisite`] row: a name, how to check for it, how to
//! install it. Supporting a new tool is adding a row to one of the tables.
//! Every install step is printed as `xtask: installing NAME: COMMAND` before it
//! runs; where xtask cannot run it (no root and no sudo, no apt-get) it stops
//! and prints the commands to run by hand.

use std::{fmt, path::Path};

use anyhow::{Result, bail};

use crate::process::{self, Cmd};

/// One tool xtask needs.
pub struct Prerequisite {
    pub name: &'static str,
    pub check: Check,
    pub install: Install,
}

/// How to tell that a prerequisite is present.
pub enum Check {
    /// This file exists.
    File(&'static str),
    /// This command exits 0 (a missing program counts as failure).
    Runs(&'static [&'static str]),
    /// This command exits 0 and one line of its stdout satisfies `matches`.
    StdoutLine {
        argv: &'static [&'static str],
        matches: fn(&str) -> bool,
    },
    /// This Debian package is installed.
    DebPackage(&'static str),
}

/// How to install a missing prerequisite.
pub enum Install {
    /// A command that installs into the user's home (rustup, `cargo
    /// install`): no root needed.
    Run {
        env: &'static [(&'static str, &'static str)],
        argv: &'static [&'static str],
    },
    /// Debian packages (root). Missing packages of adjacent rows share one
    /// `apt-get install`; `debconf` answers are preseeded first so the install
    /// never stops to ask.
    Apt {
        packages: &'static [&'static str],
        debconf: &'static [&'static str],
    },
}

/// What `build-ebpf` needs: nightly with rust-src for `-Z build-std=core`,
/// and bpf-linker built against the system's LLVM 22.
pub const EBPF_TOOLCHAIN: &[Prerequisite] = &[
    Prerequisite {
        name: "nightly toolchain",
        check: Check::StdoutLine {
            argv: &["rustup", "toolchain", "list"],
            matches: is_nightly_toolchain,
        },
        install: Install::Run {
            env: &[],
            argv: &[
                "rustup",
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ],
        },
    },
    Prerequisite {
        name: "rust-src for nightly",
        check: Check::StdoutLine {
            argv: &[
                "rustup",
                "component",
                "list",
                "--toolchain",
                "nightly",
                "--installed",
            ],
            matches: is_rust_src,
        },
        install: Install::Run {
            env: &[],
            argv: &[
                "rustup",
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ],
        },
    },
    Prerequisite {
        name: "LLVM 22 dev files",
        check: Check::File("/usr/lib/llvm-22/bin/llvm-config"),
        install: Install::Apt {
            packages: &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"],
            debconf: &[],
        },
    },
    // After LLVM: it links against /usr/lib/llvm-22.
    Prerequisite {
        name: "bpf-linker",
        check: Check::Runs(&["bpf-linker", "--version"]),
        install: Install::Run {
            env: &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
            argv: &[
                "cargo",
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ],
        },
    },
];

/// What `test` needs besides the eBPF toolchain: rustfmt and clippy for the
/// toolchain running xtask (a minimal rustup profile lacks them).
pub const LINT_TOOLS: &[Prerequisite] = &[
    Prerequisite {
        name: "rustfmt",
        check: Check::Runs(&["cargo", "fmt", "--version"]),
        install: Install::Run {
            env: &[],
            argv: &["rustup", "component", "add", "rustfmt"],
        },
    },
    Prerequisite {
        name: "clippy",
        check: Check::Runs(&["cargo", "clippy", "--version"]),
        install: Install::Run {
            env: &[],
            argv: &["rustup", "component", "add", "clippy"],
        },
    },
];

/// A Debian package that provides a program of the same purpose.
macro_rules! deb {
    ($package:literal) => {
        Prerequisite {
            name: $package,
            check: Check::DebPackage($package),
            install: Install::Apt {
                packages: &[$package],
                debconf: &[],
            },
        }
    };
}

/// The programs the privileged tests (and benches) drive.
pub const TEST_TOOLS: &[Prerequisite] = &[
    deb!("iproute2"),
    deb!("iputils-ping"),
    deb!("iptables"),
    deb!("nftables"),
    deb!("ethtool"),
    deb!("conntrack"),
    deb!("iperf3"),
    deb!("curl"),
    deb!("python3"),
    deb!("util-linux"),
    // `sysctl`: the conformance suite turns ICMP rate limits off in its
    // namespaces, so every kernel answers every probe.
    deb!("procps"),
    // `dot` lays out `netlab graph --format svg` (and the README's picture).
    deb!("graphviz"),
    // The trace tests list the programs and maps the kernel holds.
    deb!("bpftool"),
    // The CNI plugin's tests: the runtimes that run it (containerd's
    // `ctr`, podman with its CNI backend), a busybox root filesystem for
    // their containers, and the reference plugins (delegated IPAM).
    deb!("containerd"),
    deb!("runc"),
    deb!("podman"),
    deb!("busybox-static"),
    deb!("containernetworking-plugins"),
    Prerequisite {
        name: "tshark",
        check: Check::DebPackage("tshark"),
        install: Install::Apt {
            packages: &["tshark"],
            // wireshark-common asks whether non-root users may capture.
            debconf: &["wireshark-common wireshark-common/install-setuid boolean false"],
        },
    },
];

/// What the README's walkthrough runs after `cargo xtask run -- up`:
/// `ip netns exec`, `ping`, `curl` and Python's `http.server`.
pub const WALKTHROUGH_TOOLS: &[Prerequisite] = &[
    deb!("iproute2"),
    deb!("iputils-ping"),
    deb!("curl"),
    deb!("python3"),
];

/// What `cargo xtask bench` drives inside its sandbox: `unshare` and
/// `taskset` (util-linux), `ip`, `ping -f` (the programs' cost under
/// ICMP echo), both iptables backends, `ethtool` for offloads,
/// `conntrack -F` between runs, and iperf3 for the bulk cross-check.
pub const BENCH_TOOLS: &[Prerequisite] = &[
    deb!("util-linux"),
    deb!("iproute2"),
    deb!("iputils-ping"),
    deb!("iptables"),
    deb!("ethtool"),
    deb!("conntrack"),
    deb!("iperf3"),
];

/// `rustup toolchain list` names the `nightly` channel `nightly-<host>`;
/// dated ones (`nightly-2025-01-01-<host>`) are not what `rustup run nightly` uses.
fn is_nightly_toolchain(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|name| name.strip_prefix("nightly"))
        .is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('-')
                    .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
        })
}

fn is_rust_src(line: &str) -> bool {
    line.split_whitespace().next() == Some("rust-src")
}

/// `dpkg-query -W -f='${Status}'` prints `install ok installed` for an
/// installed package (and e.g. `deinstall ok config-files` for a removed one).
fn is_deb_installed(status: &str) -> bool {
    status.split_whitespace().last() == Some("installed")
}

/// Whether `apt-cache policy PACKAGES` offers every package; on a machine
/// that never ran `apt-get update` it lists none, or `Candidate: (none)`.
fn apt_has_candidates(policy: &str, packages: &[&str]) -> bool {
    let mut offered = Vec::new();
    let mut current = None;
    for line in policy.lines() {
        if !line.starts_with(char::is_whitespace) {
            // A package header: `llvm-22-dev:` or `libzstd-dev:amd64:`.
            current = line.split(':').next().map(str::trim);
        } else if let Some(candidate) = line.trim().strip_prefix("Candidate:")
            && candidate.trim() != "(none)"
            && let Some(package) = current
        {
            offered.push(package);
        }
    }
    packages.iter().all(|package| offered.contains(package))
}

impl Check {
    fn passes(&self) -> bool {
        match self {
            Check::File(path) => Path::new(path).exists(),
            Check::Runs(argv) => Cmd::from_argv(argv).probe().is_some(),
            Check::StdoutLine { argv, matches } => Cmd::from_argv(argv)
                .probe()
                .is_some_and(|stdout| stdout.lines().any(matches)),
            Check::DebPackage(package) => Cmd::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .probe()
                .is_some_and(|status| is_deb_installed(&status)),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::File(path) => write!(f, "{path} exists"),
            Check::Runs(argv) => write!(f, "`{}` runs", Cmd::from_argv(argv)),
            Check::StdoutLine { argv, .. } => {
                write!(f, "`{}` lists it", Cmd::from_argv(argv))
            }
            Check::DebPackage(package) => write!(f, "dpkg reports {package} installed"),
        }
    }
}

/// Installs the missing prerequisites of each table, in order.
pub fn ensure(tables: &[&[Prerequisite]]) -> Result<()> {
    let mut installer = Installer { apt_updated: false };
    for table in tables {
        // Adjacent apt rows form one group (one apt-get call); others are alone.
        for group in table.chunk_by(|a, b| {
            matches!(a.install, Install::Apt { .. }) && matches!(b.install, Install::Apt { .. })
        }) {
            let missing: Vec<&Prerequisite> = group.iter().filter(|p| !p.check.passes()).collect();
            if missing.is_empty() {
                continue;
            }
            installer.install(&missing)?;
            if let Some(still) = missing.iter().find(|p| !p.check.passes()) {
                bail!(
                    "installed {}, yet it is still missing (check: {})",
                    still.name,
                    still.check
                );
            }
        }
    }
    Ok(())
}

struct Installer {
    /// `apt-get update` runs at most once per xtask run.
    apt_updated: bool,
}

impl Installer {
    fn install(&mut self, missing: &[&Prerequisite]) -> Result<()> {
        let name = missing
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ");
        match missing {
            [
                Prerequisite {
                    install: Install::Run { env, argv },
                    ..
                },
            ] => {
                let step = run_step(env, argv);
                if process::which(step.program()).is_none() {
                    bail!(
                        "cannot install {name}: `{}` is not on PATH; install it (rustup: \
                         https://rustup.rs), then run:\n  {step}",
                        step.program().to_string_lossy()
                    );
                }
                eprintln!("xtask: installing {name}: {step}");
                step.run()
            }
            _ => {
                let packages = apt_packages(missing);
                let update_first = !self.apt_updated && !apt_offers(&packages);
                let steps = apt_steps(missing, update_first);
                run_as_root(&name, &steps)?;
                self.apt_updated |= update_first;
                Ok(())
            }
        }
    }
}

fn run_step(env: &[(&str, &str)], argv: &[&str]) -> Cmd {
    env.iter().fold(Cmd::from_argv(argv), |cmd, (key, value)| {
        cmd.env(key, value)
    })
}

fn apt_packages<'a>(rows: &[&'a Prerequisite]) -> Vec<&'a str> {
    rows.iter()
        .filter_map(|row| match row.install {
            Install::Apt { packages, .. } => Some(packages),
            Install::Run { .. } => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn apt_offers(packages: &[&str]) -> bool {
    Cmd::new("apt-cache")
        .arg("policy")
        .args(packages)
        .probe()
        .is_some_and(|policy| apt_has_candidates(&policy, packages))
}

/// The commands that install the apt rows in `missing`.
fn apt_steps(missing: &[&Prerequisite], update_first: bool) -> Vec<Cmd> {
    let noninteractive = |cmd: Cmd| cmd.env("DEBIAN_FRONTEND", "noninteractive");
    let mut steps = Vec::new();
    if update_first {
        steps.push(noninteractive(Cmd::new("apt-get").arg("update")));
    }
    let debconf: Vec<&str> = missing
        .iter()
        .filter_map(|row| match row.install {
            Install::Apt { debconf, .. } => Some(debconf),
            Install::Run { .. } => None,
        })
        .flatten()
        .copied()
        .collect();
    if !debconf.is_empty() {
        steps.push(Cmd::new("debconf-set-selections").stdin(debconf.join("\n")));
    }
    steps.push(noninteractive(
        Cmd::new("apt-get")
            .args(["install", "-y"])
            .args(apt_packages(missing)),
    ));
    steps
}

fn run_as_root(name: &str, steps: &[Cmd]) -> Result<()> {
    let listing = || {
        steps
            .iter()
            .map(|step| format!("  {step}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if process::which("apt-get").is_none() {
        bail!(
            "cannot install {name}: apt-get not found (xtask installs with Debian's packages); \
             install the equivalent of:\n{}",
            listing()
        );
    }
    let steps: Vec<Cmd> = if process::is_root()? {
        steps.to_vec()
    } else if process::which("sudo").is_some() {
        steps.iter().map(Cmd::via_sudo).collect()
    } else {
        bail!(
            "cannot install {name}: this needs root and sudo is not installed; as root, run:\n{}\n\
             then rerun xtask",
            listing()
        );
    };
    for step in &steps {
        eprintln!("xtask: installing {name}: {step}");
        step.run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(table: &'a [Prerequisite], name: &str) -> &'a Prerequisite {
        table
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no prerequisite {name}"))
    }

    /// The install command as printed, with `$CARGO` (set under `cargo
    /// test`) shown as plain `cargo`.
    fn install_line(p: &Prerequisite) -> String {
        let cargo = format!("{} ", process::shell_quote(Cmd::cargo().program()));
        match p.install {
            Install::Run { env, argv } => run_step(env, argv).to_string().replace(&cargo, "cargo "),
            Install::Apt { .. } => apt_steps(&[p], false)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" && "),
        }
    }

    #[test]
    fn ebpf_toolchain_installs_with_the_documented_commands() {
        let lines: Vec<(&str, String)> = EBPF_TOOLCHAIN
            .iter()
            .map(|p| (p.name, install_line(p)))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "nightly toolchain",
                    "rustup toolchain install nightly --profile minimal".to_owned()
                ),
                (
                    "rust-src for nightly",
                    "rustup component add rust-src --toolchain nightly".to_owned()
                ),
                (
                    "LLVM 22 dev files",
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y llvm-22-dev \
                     libpolly-22-dev libzstd-dev"
                        .to_owned()
                ),
                (
                    "bpf-linker",
                    "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker \
                     --no-default-features --features llvm-22"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn missing_test_tools_share_one_apt_call_after_the_debconf_answer() {
        let missing = [row(TEST_TOOLS, "iperf3"), row(TEST_TOOLS, "tshark")];
        let steps: Vec<String> = apt_steps(&missing, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            steps,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get update",
                "echo 'wireshark-common wireshark-common/install-setuid boolean false' \
                 | debconf-set-selections",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 tshark",
            ]
        );
    }

    #[test]
    fn tables_are_well_formed() {
        for table in [EBPF_TOOLCHAIN, LINT_TOOLS, TEST_TOOLS, BENCH_TOOLS] {
            let mut names: Vec<&str> = table.iter().map(|p| p.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), table.len(), "duplicate names");
        }
        let position = |name| EBPF_TOOLCHAIN.iter().position(|p| p.name == name);
        assert!(position("LLVM 22 dev files") < position("bpf-linker"));
        assert!(position("nightly toolchain") < position("rust-src for nightly"));
        let packages = apt_packages(&TEST_TOOLS.iter().collect::<Vec<_>>());
        assert_eq!(
            packages,
            [
                "iproute2",
                "iputils-ping",
                "iptables",
                "nftables",
                "ethtool",
                "conntrack",
                "iperf3",
                "curl",
                "python3",
                "util-linux",
                "procps",
                "graphviz",
                "bpftool",
                "containerd",
                "runc",
                "podman",
                "busybox-static",
                "containernetworking-plugins",
                "tshark"
            ]
        );
    }

    #[test]
    fn parses_rustup_listings() {
        assert!(is_nightly_toolchain("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_nightly_toolchain(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(!is_nightly_toolchain(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_nightly_toolchain(
            "stable-x86_64-unknown-linux-gnu (default)"
        ));
        assert!(is_rust_src("rust-src"));
        assert!(!is_rust_src("rust-std-x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn parses_dpkg_and_apt_output() {
        assert!(is_deb_installed("install ok installed"));
        assert!(!is_deb_installed("deinstall ok config-files"));
        assert!(!is_deb_installed(""));
        let policy = "llvm-22-dev:\n  Installed: (none)\n  Candidate: 1:22.1.8-1~deb12u1\n  \
                      Version table:\nlibzstd-dev:\n  Installed: (none)\n  Candidate: (none)\n";
        assert!(apt_has_candidates(policy, &["llvm-22-dev"]));
        assert!(!apt_has_candidates(policy, &["llvm-22-dev", "libzstd-dev"]));
        assert!(!apt_has_candidates("", &["libpolly-22-dev"]));
    }
}
